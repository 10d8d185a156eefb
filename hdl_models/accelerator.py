"""The accelerator's units wired together: PE array, PRNG, requantization, activation,
update, exponent, normalisation, error-projection and softmax units, the four on-chip
buffers and the DRAM port, and the memory traffic every task is charged for
(docs/hardware.md)."""

from __future__ import annotations

from . import activation_unit as act
from .accounting import Cost, nbytes
from .buffers import Buffer
from .dram import Dram
from .error_projection_unit import ErrorProjectionUnit
from .exponent_unit import ExponentUnit
from .hwconfig import HwConfig
from .mac_array import GemmStats, MacArray
from .norm_unit import NormUnit
from .prng_unit import PrngUnit
from .requant_unit import RequantUnit
from .softmax_unit import SoftmaxUnit
from .update_unit import UpdateUnit

KIB = 1024


class Accelerator:
    """Every unit, buffer and the DRAM port of one accelerator instance."""

    def __init__(self, hw: HwConfig):
        self.hw = hw
        self.array = MacArray(hw.rows, hw.cols, hw.pe_width)
        self.prng = PrngUnit(hw.lanes)
        self.requant = RequantUnit(hw.lanes)
        self.act = act.ActivationUnit(hw.lanes)
        self.update = UpdateUnit(hw.lanes, self.prng)
        self.exponent = ExponentUnit(hw.lanes)
        self.norm = NormUnit(hw.lanes)
        self.epu = ErrorProjectionUnit(self.array, self.prng, hw.lanes)
        self.softmax = SoftmaxUnit(hw.lanes)
        mk = lambda name, kib: Buffer(name, kib * KIB, hw.buffer_width_bits, hw.buffer_banks)  # noqa: E731
        self.buffers = {"weight": mk("weight", hw.weight_buffer_kib), "act": mk("act", hw.act_buffer_kib),
                        "err": mk("err", hw.err_buffer_kib), "feedback": mk("feedback", hw.feedback_buffer_kib)}
        self.dram = Dram(hw.dram_bytes_per_cycle)
        self.offchip_tensors: set = set()  # tensors that did not fit their buffer

    # ------------------------------------------------------------- memory traffic
    def read(self, cost: Cost, buf: str, n: int, tensor: str | None = None) -> None:
        """Read n bytes of a tensor: from its buffer, or over the DRAM port if it lives off-chip."""
        self._move(cost, buf, n, tensor, "read")

    def write(self, cost: Cost, buf: str, n: int, tensor: str | None = None) -> None:
        self._move(cost, buf, n, tensor, "write")

    def _move(self, cost: Cost, buf: str, n: int, tensor: str | None, way: str) -> None:
        if tensor is not None and tensor in self.offchip_tensors:
            cost.offchip += int(n)
            getattr(self.dram, way)(n)
        else:
            setattr(cost, f"onchip_{way}", getattr(cost, f"onchip_{way}") + int(n))
            getattr(self.buffers[buf], way)(n)

    def gemm_cost(self, st: GemmStats, a: tuple, b: tuple, out: tuple | None, requant_out=True) -> Cost:
        """Cost of a GEMM: array cycles, operand reads (buf, bits, tensor), output writes."""
        c = Cost().use("array", st.cycles)
        c.macs, c.pe_busy = st.macs, st.macs * st.passes
        self.read(c, a[0], st.a_reads * nbytes(a[1]), a[2] if len(a) > 2 else None)
        self.read(c, b[0], st.b_reads * nbytes(b[1]), b[2] if len(b) > 2 else None)
        if out is not None:
            self.write(c, out[0], st.c_writes * nbytes(out[1]), out[2] if len(out) > 2 else None)
        if requant_out:
            c.use("requant", self.requant.cycles(st.c_writes))
        return c

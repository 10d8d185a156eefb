"""The recurrent cells' time loops in compiled code (kernels/cells.py) and when they apply.

``COMPILED`` switches between them and the Python cells of ``recurrent.py``, which stay the
reference (as ``fixed.COMPILED`` does for the rounding): both give the same bits. The
compiled loop is not taken, and the reference runs, for stochastic activation rounding and
wherever a step's shifts leave what the loop covers (the kernel reports it).
"""

from __future__ import annotations

import numpy as np

from ..fixed import _OVERFLOW_CODE, _ROUNDING_CODE, Overflow, QTensor, Rounding, acc_format
from ..kernels.acc import EXACT, max_abs, register_mode
from ..lut import TANH_TABLE

COMPILED = True  # False: every cell runs in Python, one call per time step (the reference)


class StepRecords:
    """A direction's per-step records stacked as (T, N, H) arrays: ``recs[s]`` is the dict of
    QTensors the Python cell records for step s, ``recs.stack(key)`` all steps at once."""

    def __init__(self, steps: int, arrays: dict, fmts: dict):
        self.steps, self.arrays, self.fmts = steps, arrays, fmts

    @classmethod
    def of(cls, recs: list) -> "StepRecords":
        """Stack the dicts the Python cells returned (every step has the same formats)."""
        if not recs:
            return cls(0, {}, {})
        return cls(len(recs), {k: np.stack([r[k].codes for r in recs]) for k in recs[0]},
                   {k: t.fmt for k, t in recs[0].items()})

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, s: int) -> dict:
        if not -self.steps <= s < self.steps:
            raise IndexError(s)
        return {k: QTensor(a[s], self.fmts[k]) for k, a in self.arrays.items()}

    def stack(self, key: str) -> QTensor:
        return QTensor(self.arrays[key], self.fmts[key])


def covers(layer, steps: int) -> bool:
    """Whether the compiled forward loop applies to this layer's numerics."""
    return COMPILED and steps > 0 and layer.num.act_rounding is not Rounding.STOCHASTIC


def forward_formats(layer) -> np.ndarray:
    """kernels.cells' ``fmt`` row: the gate and state formats, activation rounding and overflow."""
    num, g, h = layer.num, layer.gate_fmt, layer.h_fmt
    h_lo = -h.max_code if num.act_overflow is Overflow.AP_SAT_SYM else h.min_code
    return np.array([g.frac_bits, g.min_code, g.max_code, g.width, h.frac_bits, h_lo, h.max_code, h.width,
                     _ROUNDING_CODE[num.act_rounding], _OVERFLOW_CODE[num.act_overflow]], np.int64)


def recurrent_register(layer, d, operand_fmt):
    """(R[d]^T in the GEMM's type, bias init, has bias, acc row, F_op + F_R) for the recurrent
    GEMM of an operand in ``operand_fmt``; None when a single product could reach 2^62 (the
    reference decides). The sum is exact, in int32 where it fits, when the bound
    ``H * max|operand| * max|R| + max|init|`` fits the register (as kernels/fast.py reasons)."""
    R = layer.params["R"]
    frac = operand_fmt.frac_bits + R.fmt.frac_bits
    init = layer._bias(d, 1, frac)
    amax, rmax = 1 << (operand_fmt.width - 1), max_abs(R.codes[d])
    if amax * rmax >= 1 << 62:
        return None
    bound = R.codes.shape[-1] * amax * rmax + (max_abs(init) if init is not None else 0)
    lo, hi, mode, bits = register_mode(layer.num.acc_bits, layer.num.acc_overflow, bound)
    dtype = np.int32 if mode == EXACT and bound < (1 << 31) else np.int64
    rt = np.ascontiguousarray(R.codes[d].T, dtype=dtype)
    rb = np.zeros(rt.shape[1], np.int64) if init is None else np.ascontiguousarray(init[0], np.int64)
    acc = np.array([lo, hi, mode, bits, mode == EXACT], np.int64)
    return rt, rb, init is not None, acc, frac


def gru_forward(layer, d, xg: QTensor, train: bool):
    """(h per step, final state, records) of one GRU direction, or None: the reference runs."""
    T, N, G3 = xg.codes.shape
    reg = recurrent_register(layer, d, layer.h_fmt) if covers(layer, T) else None
    if reg is None:
        return None
    from ..kernels import cells  # compiles on first use: models without a cell never pay for it

    rt, rb, has_bias, acc, fr = reg
    H = G3 // 3
    cut = G3 if layer.lbr else 2 * H  # lbr 0: the h rows multiply r*h, a GEMM of their own
    blocks = (np.ascontiguousarray(rt[:, :cut]), np.ascontiguousarray(rt[:, cut:]), rb[:cut].copy(), rb[cut:].copy())
    keys = ("h_prev", "h", "z", "r", "n", "hh" if layer.lbr else "rh")
    out = {k: np.empty((T, N, G3 // 3), np.int64) for k in keys}
    status = cells.gru_forward(np.ascontiguousarray(xg.codes), xg.fmt.frac_bits, *blocks, has_bias, acc, fr,
                               layer.lbr, forward_formats(layer), TANH_TABLE, *out.values())
    if status:
        return None
    hs = out.pop("h")
    g, h = layer.gate_fmt, layer.h_fmt
    fmts = {"h_prev": h, "z": g, "r": g, "n": g,
            "hh" if layer.lbr else "rh": acc_format(layer.num.acc_bits, fr) if layer.lbr else h}
    return hs, {"h": QTensor(hs[-1].copy(), h)}, (StepRecords(T, out, fmts) if train else None)

"""MAC array: ``rows x cols`` processing elements, output-stationary (§4, §8).

Dataflow (output-stationary): PE ``(r, c)`` owns one output ``C[m0 + r, n0 + c]`` of the
current tile and keeps its accumulator register for the whole reduction; operand ``A[m, k]``
enters row ``r`` from the left and ``B[k, n]`` column ``c`` from the top, skewed by one cycle
per row/column (a systolic wavefront), so ``k`` reaches every PE in ascending order — the
order §4 defines under a saturating accumulator. Tiling: the ``M x N`` output is cut into
``ceil(M/rows) x ceil(N/cols)`` tiles; ``K`` is never split (each output's reduction stays
in one register), so partial sums never leave a PE. Convolutions are tiled as the GEMM of
their im2col matrix (§8.2: ``k = (c, kh, kw)`` in C order, one row per ``(b, oh, ow)``).

Ports and widths per PE:
  ``a_width``, ``b_width``      operand widths (default 8: int8 PEs)
  ``prod_width = a_width + b_width``
  ``acc_width``                 accumulator register (``acc_bits``, default 32; <= 48, a DSP48)
  ``acc_overflow``              applied after every addition (§4)
An operand wider than the PE's ``pe_width`` takes ``ceil(a_width/pe_width) *
ceil(b_width/pe_width)`` passes (bit-sliced multiplication); the integers are unchanged.

Emulation is vectorised per GEMM (a superset of per tile: tiles partition the outputs and
never split ``k``, so all tiles computed in one numpy call give the tile-by-tile integers;
``tile_by_tile=True`` runs them one at a time for the tests). Saturating accumulators are
exact: outputs whose ``|init| + sum_k |a_k b_k|`` fits the register cannot saturate at any
step and take the exact sum; the others replay the per-k saturation loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat, Overflow

from .lanes import maxabs as _lanes_maxabs
from .requant_unit import saturate

F32_EXACT, F64_EXACT = 1 << 24, 1 << 53
MIN_F32_SLICE = 256  # shorter slices of k: one float64 product is cheaper than their conversions


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def acc_width_for(a_width: int, b_width: int, k: int) -> int:
    """Bits that hold a K-term dot product exactly: a_width + b_width + ceil(log2 K)."""
    return a_width + b_width + (max(int(k), 1) - 1).bit_length()


@dataclass
class GemmStats:
    """What one GEMM cost on the array."""

    m: int
    n: int
    k: int
    tiles: int
    passes: int
    cycles: int
    macs: int
    a_reads: int  # operand elements streamed from the buffers
    b_reads: int
    c_writes: int
    utilization: float
    saturating_outputs: int = 0  # outputs that needed the per-k replay


def operand_dtype(top: int):
    """The narrowest dtype that stores integers of magnitude <= top exactly: float32 below 2^24,
    float64 below 2^53, else int64 (operands in float go straight into the BLAS product)."""
    return np.float32 if top < F32_EXACT else np.float64 if top < F64_EXACT else np.int64


def _exact_product(a: np.ndarray, b: np.ndarray, term: int) -> np.ndarray:
    """A @ B exactly, int64, given |a_ik b_kj| <= term: float32 BLAS while every partial sum
    k * term < 2^24; else float32 over slices of k that each stay below 2^24 (their int64 sum
    is exact) when the slices are long; else float64 below 2^53 (sums of integers stay
    integers: no rounding); else int64 (mod 2^64)."""
    k = a.shape[1]
    chunk = (F32_EXACT - 1) // term if term else k
    if chunk >= min(k, MIN_F32_SLICE):
        a32, b32 = (np.ascontiguousarray(x, dtype=np.float32) for x in (a, b))  # BLAS: 3x on transposed B
        if chunk >= k:
            return (a32 @ b32).astype(np.int64)
        out = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
        for k0 in range(0, k, chunk):
            out += (a32[:, k0:k0 + chunk] @ b32[k0:k0 + chunk]).astype(np.int64)
        return out
    if k * term < F64_EXACT:
        return (a.astype(np.float64, copy=False) @ b.astype(np.float64, copy=False)).astype(np.int64)
    return a.astype(np.int64, copy=False) @ b.astype(np.int64, copy=False)


class MacArray:
    """The PE array; ``gemm`` returns the accumulator registers and records the cost."""

    def __init__(self, rows: int = 16, cols: int = 16, pe_width: int = 8):
        if rows < 1 or cols < 1:
            raise EdgeDFAError(f"MAC array {rows}x{cols}: both sides must be >= 1")
        self.rows, self.cols, self.pe_width = int(rows), int(cols), int(pe_width)

    # ---------------------------------------------------------------- cost
    def cost(self, m: int, n: int, k: int, a_width: int = 8, b_width: int = 8) -> GemmStats:
        tiles = ceil_div(m, self.rows) * ceil_div(n, self.cols)
        passes = ceil_div(a_width, self.pe_width) * ceil_div(b_width, self.pe_width)
        # tiles stream back to back; one fill + drain of the skewed wavefront per GEMM
        cycles = tiles * k * passes + (self.rows + self.cols - 2) if m * n * k else 0
        macs = m * n * k
        util = macs * passes / (cycles * self.rows * self.cols) if cycles else 0.0
        return GemmStats(m, n, k, tiles, passes, cycles, macs,
                         a_reads=ceil_div(n, self.cols) * m * k, b_reads=ceil_div(m, self.rows) * k * n,
                         c_writes=m * n, utilization=util)

    # ---------------------------------------------------------------- arithmetic
    def gemm(self, a, b, init=None, acc_width: int = 32, acc_overflow=Overflow.AP_SAT,
             a_width: int = 8, b_width: int = 8, tile_by_tile: bool = False, a_max=None, b_max=None):
        """(acc int64 [M, N], GemmStats) for ``C = init + A @ B`` through the registers.

        Operands hold integers: int arrays, or float arrays written exactly (``operand_dtype``);
        ``a_max`` / ``b_max``, when given, bound their magnitudes (as the gathers measure them)."""
        a, b = _operand(a), _operand(b)
        m, k = a.shape
        k2, n = b.shape
        if k != k2:
            raise EdgeDFAError(f"MAC array: GEMM shapes {a.shape} x {b.shape} do not chain")
        ovf = Overflow.parse(acc_overflow)
        fmt = _acc_format(acc_width)
        init = np.zeros((1, n), dtype=np.int64) if init is None else np.asarray(init, dtype=np.int64)
        if not 0 <= _maxabs(init) <= fmt.max_code:  # in range, every overflow mode leaves it as it is
            init = saturate(init, fmt, ovf)  # per output; broadcast over (M, N) where it is read
        tops = (_maxabs(a) if a_max is None else int(a_max), _maxabs(b) if b_max is None else int(b_max))
        stats = self.cost(m, n, k, a_width, b_width)
        if tile_by_tile:
            init = np.broadcast_to(init, (m, n))
            acc = np.empty((m, n), dtype=np.int64)
            for r0 in range(0, m, self.rows):
                for c0 in range(0, n, self.cols):
                    sl = (slice(r0, r0 + self.rows), slice(c0, c0 + self.cols))
                    acc[sl], _ = self._compute(a[sl[0]], b[:, sl[1]], init[sl], fmt, ovf, tops)
            sat = 0
        else:
            acc, sat = self._compute(a, b, init, fmt, ovf, tops)
        stats.saturating_outputs = sat
        return acc, stats

    def _compute(self, a, b, init, fmt: FixedFormat, ovf: Overflow, tops: tuple):
        """(acc, outputs replayed) of ``init + a @ b``; ``init`` is [1, N] (one value per
        column) or [M, N]."""
        m, k = a.shape
        n = b.shape[1]
        if m * n == 0:
            return np.broadcast_to(init, (m, n)).copy(), 0
        term = tops[0] * tops[1]
        init_top = _maxabs(init if init.strides[0] else init[:1])
        bound = k * term + init_top
        exact = _exact_product(a, b, term)  # a fresh array: the initial values are added in place
        if init_top:
            exact += init
        init = np.broadcast_to(init, (m, n))
        if ovf is Overflow.AP_WRAP:
            return saturate(exact, fmt, ovf), 0  # arithmetic modulo 2^acc_width: order-free
        hi = (1 << (fmt.width - 1)) - 1
        if bound <= hi:
            return exact, 0
        a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)  # the replay is in integers
        if bound < (1 << 62):
            absum = _exact_product(np.abs(a), np.abs(b), term) + np.abs(init)
            unsafe = np.nonzero(absum > hi)
        else:
            unsafe = np.nonzero(np.ones((m, n), dtype=bool))
        rows, cols = unsafe
        acc = init[rows, cols].copy()
        for kk in range(k):  # the per-step saturation order of §4, on the outputs that can saturate
            acc = saturate(acc + a[rows, kk] * b[kk, cols], fmt, ovf)
        out = exact.copy()
        out[rows, cols] = acc
        return out, len(rows)


@functools.lru_cache(maxsize=None)
def _acc_format(width: int) -> FixedFormat:
    """The accumulator register's format (all integer bits), one object per width."""
    return FixedFormat(width, width)


def _operand(x) -> np.ndarray:
    """An operand as it enters the array: float arrays as they are (exact integers), else int64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.int64, copy=False)


def _maxabs(x) -> int:
    """max |x| of an int or exactly-integer float operand."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        return int(np.max(np.abs(x))) if x.size else 0
    return _lanes_maxabs(x)

"""Error-projection unit (DFA, §10, §8.6): a source error to a module's output.

The source is the output error e (B, C) or, for a module fed from another tensor's error
(``error_from``), that tensor's error (B, *S): dense/channel/sparse read it flattened
(``n_classes`` = its elements per sample); dilated reads a map source (Cs, *S) per cell of
the source's spatial grid, at the cell's own position (a sparse 1x1 convolution over the
channels, then nearest upsampling to the target).

- dense / channel: ``d_wide = e @ B^T`` as MACs on the PE array (40-bit AP_WRAP registers);
- sparse (k per unit, Crafton et al.) and dilated (§8.6): index + value accumulation on
  ``lanes`` adders (binary/ternary: add/subtract only; uniform: a small multiplier);
- feedback values come from the feedback buffer (``regenerate = false``) or are
  regenerated on the fly by the PRNG unit (``regenerate = true``: no feedback memory).
Result: ``narrow(d_wide, err_width)`` with ``F = F_e + F_B`` (§10.2).
"""

from __future__ import annotations


import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import Overflow

from .mac_array import MacArray
from .prng_unit import P_FB_INDEX, P_FB_VALUE, PrngUnit, stream_of
from .requant_unit import narrow

FB_ACC_WIDTH = 40  # §10.2: dense projection accumulator, AP_WRAP


def ceil_log2(n: int) -> int:
    return (max(int(n), 1) - 1).bit_length()


def half_log2(n: int) -> int:
    """ceil(log2(n) / 2) == ceil(ceil(log2 n) / 2)."""
    return -(-ceil_log2(n) // 2)


def values_from_words(w: np.ndarray, kind: str, bits: int) -> np.ndarray:
    """§10.1 feedback values from 32-bit words."""
    w = np.asarray(w, dtype=np.int64)
    if kind == "binary":
        return np.where((w >> 31) & 1 == 1, 1, -1)
    if kind == "ternary":
        t = w >> 30
        return np.where(t == 3, 1, np.where(t == 0, -1, 0))
    if kind == "uniform":
        return (w >> (32 - bits)) - (1 << (bits - 1))
    raise EdgeDFAError(f"error-projection unit: unknown feedback values {kind!r}")


def value_bits(kind: str, bits: int) -> int:
    return bits if kind == "uniform" else 2 if kind == "ternary" else 1


def _scale(fb: dict) -> int:
    return fb["bits"] - 1 if fb["values"] == "uniform" else 0


class Feedback:
    """One module's projector as the hardware sees it: shape, kind, its words and its cost."""

    def __init__(self, fb: dict, layer_index: int, seed: int, target_shape, source_shape):
        self.fb = dict(fb)
        self.kind, self.values, self.bits = fb["kind"], fb["values"], int(fb.get("bits", 8))
        self.index, self.seed = int(layer_index), int(seed)
        self.gain_shift = 0  # §10.2: extra 2^-g on the projection (set by the controller)
        self.target_shape = tuple(int(s) for s in target_shape)
        # an int is the output error's classes; a tuple is a tensor's per-sample error shape
        self.source_shape = (int(source_shape),) if np.ndim(source_shape) == 0 else tuple(int(s) for s in source_shape)
        self.n_classes = int(np.prod(self.source_shape))  # source elements, read flattened
        self.n_target = int(np.prod(self.target_shape))
        opts = dict(fb.get("options", {}))
        if self.kind == "sparse":
            self.k = min(int(fb.get("k", 1)), self.n_classes)
        elif self.kind == "dilated":
            # taps index source channels; a map source's spatial grid is the coarse grid
            self.src_channels, self.src_spatial = self.source_shape[0], self.source_shape[1:]
            self.taps = int(opts.get("taps", fb.get("k", 1)))
            if not 1 <= self.taps <= self.src_channels:
                raise EdgeDFAError(f"error-projection unit: dilated taps {self.taps} outside 1..{self.src_channels}")
            self.dilation = int(opts.get("dilation", max(1, self.src_channels // self.taps)))
            if self.src_spatial:
                if opts.get("grid") is not None:
                    raise EdgeDFAError("error-projection unit: dilated feedback from an error map takes the "
                                       "source's spatial grid; a 'grid' option is not allowed")
                spatial = self.target_shape[1:]
                if len(spatial) != len(self.src_spatial) or any(not 1 <= c <= t for c, t in zip(self.src_spatial, spatial)):
                    raise EdgeDFAError(f"error-projection unit: dilated source map {self.source_shape} does not "
                                       f"upsample onto target {self.target_shape}")
                self.grid = self.src_spatial
            else:
                self.grid = self._grid(opts.get("grid"))
        elif self.kind not in ("dense", "channel"):
            raise EdgeDFAError(f"error-projection unit: feedback kind {self.kind!r} is not modelled")
        self.rows = self.target_shape[0] if self.kind == "channel" else self.n_target

    def _grid(self, option):
        spatial = self.target_shape[1:]
        if option is None:
            return (1,) * len(spatial)
        if isinstance(option, str):
            return tuple(spatial)
        g = tuple(int(v) for v in np.atleast_1d(option))
        return g * len(spatial) if len(g) == 1 and len(spatial) > 1 else g

    @property
    def cells(self) -> int:
        """Coarse cells per target channel (dilated)."""
        return int(np.prod(self.grid))

    def source_address(self, offs: np.ndarray, m: int) -> np.ndarray:
        """Dilated: flat address (into one sample's source error, C order) read by tap ``m``
        of every (channel, cell): channel ``(o + m*d) mod Cs`` at the cell's own position
        (the one cell 0 for a class vector)."""
        ch = (offs + m * self.dilation) % self.src_channels
        cell = np.arange(self.cells).reshape((1,) + self.grid) if self.src_spatial else 0
        return ch * (self.cells if self.src_spatial else 1) + cell

    # ------------------------------------------------------------------ words
    def frac_bits(self) -> int:
        n = {"dense": self.n_classes, "channel": self.n_classes}.get(self.kind)
        if self.kind == "sparse":
            n = self.k
        elif self.kind == "dilated":
            n = self.taps
        return _scale(self.fb) + half_log2(n)

    def matrix(self, prng: PrngUnit) -> np.ndarray:
        """Dense/channel feedback B[i, j] = value(word(i*C + j))."""
        w = prng.words(self.seed, stream_of(self.index, P_FB_VALUE), 0, (self.rows, self.n_classes))
        return values_from_words(w, self.values, self.bits)

    def sparse_table(self, prng: PrngUnit):
        c = self.n_classes
        j0 = (prng.words(self.seed, stream_of(self.index, P_FB_INDEX), 0, self.n_target) * c) >> 32
        idx = (j0[:, None] + np.arange(self.k)[None, :]) % c
        vals = values_from_words(prng.words(self.seed, stream_of(self.index, P_FB_VALUE), 0,
                                            (self.n_target, self.k)), self.values, self.bits)
        return idx, vals

    def dilated_table(self, prng: PrngUnit):
        cells = (self.target_shape[0],) + self.grid
        offs = (prng.words(self.seed, stream_of(self.index, P_FB_INDEX), 0, cells) * self.src_channels) >> 32
        kern = values_from_words(prng.words(self.seed, stream_of(self.index, P_FB_VALUE), 0,
                                            (self.target_shape[0], self.taps)), self.values, self.bits)
        return offs, kern

    # ------------------------------------------------------------------ cost figures
    def memory_bits(self) -> int:
        """Feedback storage when not regenerated."""
        vb = value_bits(self.values, self.bits)
        if self.kind in ("dense", "channel"):
            return self.rows * self.n_classes * vb
        if self.kind == "sparse":  # one start index (over the flattened source) per unit, k values
            return self.n_target * (max(1, ceil_log2(self.n_classes)) + self.k * vb)
        # one source-channel offset per (channel, cell), q values per channel
        return self.target_shape[0] * self.cells * max(1, ceil_log2(self.src_channels)) + self.target_shape[0] * self.taps * vb

    def words_per_projection(self) -> int:
        if self.kind in ("dense", "channel"):
            return self.rows * self.n_classes
        if self.kind == "sparse":
            return self.n_target * (1 + self.k)
        return self.target_shape[0] * (self.cells + self.taps)

    def ops_per_sample(self) -> int:
        if self.kind in ("dense", "channel"):
            return self.rows * self.n_classes
        if self.kind == "sparse":
            return self.n_target * self.k
        return self.target_shape[0] * self.cells * self.taps


class ErrorProjectionUnit:
    """Projects e for every DFA module; sparse/dilated on ``lanes`` adders, dense on the array."""

    def __init__(self, array: MacArray, prng: PrngUnit, lanes: int = 16):
        self.array, self.prng, self.lanes = array, prng, int(lanes)

    def project(self, f: Feedback, e: np.ndarray, f_e: int, err_width: int, rounding, stored=None):
        """e (B, *source_shape) -> (codes (B, *target_shape), FixedFormat, info dict with the
        GEMM stats if any)."""
        e = np.asarray(e, dtype=np.int64).reshape(len(e), -1)
        b = len(e)
        info = {"gemm": None}
        if f.kind in ("dense", "channel"):
            mat = stored if stored is not None else f.matrix(self.prng)
            wide, info["gemm"] = self.array.gemm(e, mat.T, None, FB_ACC_WIDTH, Overflow.AP_WRAP,
                                                 a_width=err_width, b_width=value_bits(f.values, f.bits))
        elif f.kind == "sparse":
            idx, vals = stored if stored is not None else f.sparse_table(self.prng)
            wide = np.zeros((b, f.n_target), dtype=np.int64)
            for m in range(f.k):  # one adder pass per tap, ascending m
                wide += e[:, idx[:, m]] * vals[None, :, m]
        else:
            offs, kern = stored if stored is not None else f.dilated_table(self.prng)
            wide = self._dilated(f, e, offs, kern)
        codes, fmt = narrow(wide, f_e + f.frac_bits() + f.gain_shift, err_width, rounding)
        if f.kind == "channel":
            spatial = (1,) * (len(f.target_shape) - 1)
            codes = np.broadcast_to(codes.reshape((b, f.target_shape[0]) + spatial), (b,) + f.target_shape)
        elif f.kind == "dilated":
            codes = self._fill(f, codes.reshape((b, f.target_shape[0]) + f.grid))
        return np.ascontiguousarray(codes.reshape((b,) + f.target_shape)), fmt, info

    @staticmethod
    def _dilated(f: Feedback, e, offs, kern):
        """Coarse map M (B, Cl*cells): narrowing on the coarse map equals narrowing the fill (onto).
        One adder pass per tap (ascending m); each (channel, cell) reads the flat source
        address of ``Feedback.source_address``."""
        acc = np.zeros((len(e),) + offs.shape, dtype=np.int64)
        bshape = (1, -1) + (1,) * len(f.grid)
        for m in range(f.taps):
            acc += e[:, f.source_address(offs, m)] * kern[:, m].reshape(bshape)
        return acc.reshape(len(e), -1)

    @staticmethod
    def _fill(f: Feedback, m):
        for axis in range(len(f.grid)):
            size = f.target_shape[1 + axis]
            m = np.take(m, (np.arange(size) * f.grid[axis]) // size, axis=2 + axis)
        return m

    # sparse (rtl/sparse_epu.v): a unit per lane; per group of lanes, fetch the index and the
    # k values (k + 1 requests, the PRNG's or the table's latency), then batch * k adds;
    # 2 more cycles: the start register and the error read before the last add
    SPARSE_LATENCY = 2

    def adder_cycles(self, f: Feedback, batch: int) -> int:
        if f.kind == "sparse":
            groups = -(-f.n_target // self.lanes)
            return groups * (f.k + 1 + PrngUnit.LATENCY + batch * f.k) + self.SPARSE_LATENCY
        return -(-batch * f.ops_per_sample() // self.lanes)

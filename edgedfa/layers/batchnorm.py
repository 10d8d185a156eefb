"""Batch normalization (docs/datapath.md §8.7): forward with the batch's statistics, backward,
running statistics and update side by side.

Channel axis 1; a channel's ``N = B·P`` values are its elements over the batch and the
positions. Per-channel scalars (sums, mean, variance, gains) are exact Python integers until
a rounding of §8.7; elements are int64 codes. Parameters: ``scale`` (γ) and ``B`` (β),
trained by the layer's update rule; ``mean`` and ``var``, the running statistics, are
parameters without gradients (written only here, never by the optimizer).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import (NARROW_TALLIES, FixedFormat, QTensor, acc_format, acc_step, apply_overflow, error_floor,
                     int_bits_for, requantize, round_shift)
from ..scaling import FLOOR, manage_param, observe, tally
from ..update import update_params
from .base import Layer, register
from .dense import calibrated_format, inside_range, quantize_param, weight_format_bits

GUARD = 8  # G: fraction bits of the mean below the input's LSB
RECIP_BITS = 32  # reciprocals of counts: r_n = round(2^(32+L) / n)
EPS_FRAC = 40  # epsilon as an integer of 2^-40
STAT_BITS = 32  # width of the running mean and variance
XHAT_INT = 6  # integer bits of x̂: |x̂| < 32
MANT = 23  # gains keep 24-bit mantissas: |m| <= 2^23
SHIFT_MAX = 36  # largest per-channel shift of the normaliser
MOMENTUM_MAX = 16


def _rsqrt_word(j: int) -> int:
    """round(2^20 / sqrt(1 + j/128)) exactly, from integers."""
    return (math.isqrt((1 << 49) // (128 + j)) + 1) >> 1


RSQRT_TABLE = tuple(_rsqrt_word(j) for j in range(385))  # 1/sqrt(m), m in [1, 4], steps of 2^-7


def reciprocal(n: int) -> tuple:
    """(r, L): 1/n ~ r·2^-(32+L), L = ceil(log2 n), r rounded half up (§8.5's rule, 32 bits)."""
    L = (n - 1).bit_length()
    return ((1 << (RECIP_BITS + L)) + n // 2) // n, L


def shift(v: int, s: int) -> int:
    """round_shift of one Python integer to nearest even (a negative ``s`` shifts left exactly)."""
    if s <= 0:
        return v << -s
    q, r, h = v >> s, v & ((1 << s) - 1), 1 << (s - 1)
    return q + (r > h or (r == h and q & 1))


def rsqrt(v: int, frac: int) -> tuple:
    """(t, f) with t·2^-f ~ (v·2^-frac)^(-1/2): leading-one normaliser, table, interpolation."""
    if v <= 0:
        return 0, 0
    e = v.bit_length() - 1 - frac
    k = e - (e % 2)
    s = frac + k - 16
    u = v >> s if s > 0 else v << -s  # m = value / 2^k in [1, 4) with 16 fraction bits, floor
    j, r = (u - (1 << 16)) >> 9, u & 511
    y = RSQRT_TABLE[j] * 512 - (RSQRT_TABLE[j] - RSQRT_TABLE[j + 1]) * r
    return shift(y, 6), MANT + k // 2


def group_statistics(s1: list, s2: list, n: int, eps_code: int, f_x: int) -> dict:
    """Per group of ``n`` values with exact sums S1, S2 (§8.7 steps 2-4): the mean μ (F_x + G),
    Q = N·S2 - S1², and the inverse standard deviation as a gain (v, φ). BatchNorm's groups are
    channels over the batch, LayerNorm's (§8.8) samples over the normalised axes."""
    r, L = reciprocal(n)
    eps = shift(eps_code * n * n, EPS_FRAC - 2 * f_x)
    mu, q, gains = [], [], []
    for a, b in zip(s1, s2):
        mu.append(shift(a * r, RECIP_BITS + L - GUARD))
        q.append(n * b - a * a)
        t, f = rsqrt(q[-1] + eps, 0)
        gains.append((n * t, f - f_x))
    return {"n": n, "mu": mu, "q": q, "gains": gains}


def scale_shift(g: QTensor, b: QTensor, xhat, f_xh: int, num, shape) -> QTensor:
    """acc = β' + γ·x̂ in the accumulator register (§8.7 step 6); γ and β broadcast as ``shape``
    (per channel for BatchNorm, per feature for LayerNorm)."""
    afmt = acc_format(num.acc_bits, g.fmt.frac_bits + f_xh)
    init = acc_step(requantize(b.codes.reshape(-1), b.fmt, afmt, num.act_rounding, num.acc_overflow), num.acc_bits,
                    num.acc_overflow)
    return QTensor(acc_step(init.reshape(shape) + g.codes.reshape(shape) * xhat, num.acc_bits, num.acc_overflow), afmt)


def normalise_groups(layer, x3, f_x: int, stats: dict, count: bool) -> tuple:
    """(x̂ codes like ``x3``, per-group (ι, F_ι)): §8.7 steps 4-5 on codes (B, G, P) whose
    groups (axis 1) have the means and gains of ``stats``; ``count`` tallies x̂'s clips."""
    units = [gain_unit(v, phi, f_x, layer.xhat_fmt.frac_bits) for v, phi in stats["gains"]]
    iota = np.array([u[0] for u in units], dtype=np.int64)
    k = np.array([u[1] for u in units], dtype=np.int64)
    d = (x3 << GUARD) - np.array(stats["mu"], dtype=np.int64)[None, :, None]
    wide = shift_channels(d * iota[None, :, None], k, layer.num.act_rounding)
    xhat = apply_overflow(wide, layer.xhat_fmt, "AP_SAT")
    if count:
        tally(layer, "xhat", xhat.size, int(np.count_nonzero(xhat != wide)),
              int(np.count_nonzero((xhat == 0) & (d != 0))))
    return xhat, [(u[0], u[2]) for u in units]


def one_block(pairs) -> tuple:
    """Exact (value, fraction) pairs aligned to the finest fraction and kept as one block of
    MANT bits (§8.7 backward step 4): (codes, fraction)."""
    f = max(fi for _, fi in pairs)
    aligned = [v << (f - fi) for v, fi in pairs]
    z = max(0, max(abs(v) for v in aligned).bit_length() - MANT)
    return np.array([shift(v, z) for v in aligned], dtype=np.int64), f - z


def input_error(e3, xhat, s1: list, s2: list, n: int, f_e: int, f_xh: int, scale: tuple, f_dy: int, num) -> tuple:
    """(codes, format) of dx = scale·(e − mean(e) − x̂·mean(e·x̂)) per group, the groups on axis 1
    of ``e3`` and ``xhat``, from the groups' exact sums s1 = Σe and s2 = Σe·x̂ over n values
    (§8.7 backward steps 2-5, then the error floor; all zero keeps dy's format)."""
    r, L = reciprocal(n)
    m1 = np.array([shift(v * r, RECIP_BITS + L - GUARD) for v in s1], dtype=np.int64)
    m2 = np.array([shift(v * r, RECIP_BITS + L + f_xh - GUARD) for v in s2], dtype=np.int64)
    c = (e3 << (GUARD + f_xh)) - (m1[None, :, None] << f_xh) - xhat * m2[None, :, None]
    c, f_c = narrow(c, f_e + GUARD + f_xh, num.err_bits + 8, num.err_rounding)
    s, f_s = scale
    codes, f_dx = narrow(c * s[None, :, None], f_c + f_s, num.err_bits, num.err_rounding)
    codes, f_dx = error_floor(codes, f_dx, num.err_bits, num.err_rounding)
    return codes, FixedFormat.with_frac(num.err_bits, f_dx if codes.any() else f_dy)


def momentum_shift(momentum: float) -> int:
    """k_m: the running statistics move 2^-k_m of the way per step (nearest power of two)."""
    rest = 1.0 - float(momentum)
    if rest <= 0:
        return MOMENTUM_MAX
    return int(min(MOMENTUM_MAX, max(0, round(-math.log2(rest)))))


def gain_unit(v: int, phi: int, f_x: int, f_xh: int) -> tuple:
    """(mantissa ι <= 2^23, right shift k in [0, 36], fraction F_ι) of a gain v·2^-phi."""
    if v == 0:
        return 0, 0, f_xh - f_x - GUARD  # k = 0
    f_i = phi - max(0, v.bit_length() - MANT)
    k = f_x + GUARD + f_i - f_xh
    if k > SHIFT_MAX or k < 0:
        k = min(max(k, 0), SHIFT_MAX)
        f_i = k + f_xh - f_x - GUARD
    return min(shift(v, phi - f_i), 1 << MANT), k, f_i


def ema(p: int, f_p: int, w: int, f_w: int, k: int) -> int:
    """p + (w - p)·2^-k, exact in the finer fraction, back to p's fraction (to nearest even)."""
    f = max(f_p, f_w)
    a, b = p << (f - f_p), w << (f - f_w)
    return shift(a + shift(b - a, k), f - f_p)


def narrow(codes, frac: int, bits: int, rounding) -> tuple:
    """(codes, frac): the top ``bits`` of a wide tensor (§7's narrow_dynamic, the fraction as a
    plain integer); counted by the narrowing tallies."""
    maxabs = int(np.abs(codes).max()) if codes.size else 0
    s = max(0, maxabs.bit_length() - (bits - 1))
    q = round_shift(codes, s, rounding)
    lim = (1 << (bits - 1)) - 1
    sat = np.clip(q, -lim - 1, lim)
    if NARROW_TALLIES:
        NARROW_TALLIES[-1](codes.size, np.count_nonzero(sat != q), np.count_nonzero((sat == 0) & (codes != 0)))
    return sat, frac - s


def shift_channels(x3, shifts, rounding) -> np.ndarray:
    """round_shift of (B, C, P) codes with one right shift per channel (a register per channel)."""
    out = np.empty_like(x3)
    for s in np.unique(shifts):
        sel = shifts == s
        out[:, sel] = round_shift(x3[:, sel], int(s), rounding)
    return out


@register("BatchNorm")
class BatchNorm(Layer):
    trainable = True
    changes_scale = True

    def __init__(self, node, spec):
        super().__init__(node, spec)
        where = f"node {node.name!r} (BatchNorm)"
        if not self.in_shapes[0]:
            raise EdgeDFAError(f"{where}: the input needs a channel axis")
        self.channels = int(self.in_shapes[0][0])
        for key in ("scale", "B", "mean", "var"):
            if np.shape(node.params.get(key, ())) != (self.channels,):
                raise EdgeDFAError(f"{where}: parameter {key} must hold {self.channels} values")
        eps = float(node.attrs.get("epsilon", 1e-5))
        if not math.isfinite(eps) or eps < 0 or eps >= 2 ** 20:
            raise EdgeDFAError(f"{where}: epsilon {eps} must be a finite number in [0, 2^20)")
        self.eps_code = int(np.rint(np.ldexp(eps, EPS_FRAC)))
        self.momentum_k = momentum_shift(node.attrs.get("momentum", 0.9))
        self.positions = int(np.prod(self.in_shapes[0][1:], dtype=np.int64))
        h = min(self.num.act_bits + 8, 24)
        self.xhat_fmt = FixedFormat(h, XHAT_INT)
        self._quantize_params(node)

    def _quantize_params(self, node, stats=None) -> None:
        """γ as a weight, β as a bias (§7); the running statistics in 32-bit formats with one spare
        bit over their imported value (and the calibration batch's statistic, when given)."""
        p = {k: np.asarray(node.params[k], dtype=np.float64) for k in ("scale", "B", "mean", "var")}
        if "scale" not in self.params:
            self.params["scale"] = quantize_param(p["scale"], self.num.weight_bits,
                                                  weight_format_bits(self.num, p["scale"]))
            ib = max(int_bits_for(float(np.abs(p["B"]).max()), 1), self.params["scale"].fmt.int_bits + 3)
            self.params["B"] = quantize_param(p["B"], self.num.bias_bits, ib)
        for key in ("mean", "var"):
            top = float(np.abs(p[key]).max())
            if stats is not None:
                top = max(top, float(np.abs(stats[key]).max()))
            self.params[key] = quantize_param(p[key], STAT_BITS, int_bits_for(top, 1))
            self.state[FLOOR + key] = np.array(self.params[key].fmt.frac_bits)

    # ------------------------------------------------------------------ statistics
    def _channels(self, x: QTensor):
        """(B, C, P) view of the codes."""
        return x.codes.reshape(x.codes.shape[0], self.channels, -1)

    def _check_width(self, n: int, x_fmt: FixedFormat) -> None:
        """The exact sums of §8.7 fit 62 bits: S2 over the activations, dγ over the errors."""
        top = max(2 * x_fmt.width - 2, self.num.err_bits + self.xhat_fmt.width - 2) + (n - 1).bit_length()
        if top > 62:
            raise EdgeDFAError(f"node {self.name!r} (BatchNorm): {n} values per channel at these widths need"
                               f" sums of {top} bits (at most 62); use a smaller batch or narrower words")

    def batch_statistics(self, x: QTensor) -> dict:
        """Per channel: the mean μ (F_x + G), Q = N·S2 - S1², the count N and the inverse
        standard deviation as a gain (§8.7 steps 1-4)."""
        x3 = self._channels(x)
        n = x3.shape[0] * x3.shape[2]
        self._check_width(n, x.fmt)
        s1, s2 = x3.sum(axis=(0, 2)), (x3 * x3).sum(axis=(0, 2))
        return group_statistics(s1.tolist(), s2.tolist(), n, self.eps_code, x.fmt.frac_bits)

    def running_statistics(self, x_fmt: FixedFormat) -> dict:
        """The same quantities from the running mean and variance (inference)."""
        mean, var = self.params["mean"], self.params["var"]
        lim = 1 << (x_fmt.width + GUARD)
        mu = [min(max(shift(m, mean.fmt.frac_bits - x_fmt.frac_bits - GUARD), -lim), lim - 1)
              for m in mean.codes.tolist()]
        f = max(var.fmt.frac_bits, EPS_FRAC)
        gains = [rsqrt((v << (f - var.fmt.frac_bits)) + (self.eps_code << (f - EPS_FRAC)), f)
                 for v in var.codes.tolist()]
        return {"mu": mu, "gains": gains}

    # ------------------------------------------------------------------ forward
    def normalise(self, x: QTensor, stats: dict, count: bool = True):
        """(x̂ codes (B, C, P), per-channel (ι, F_ι)): steps 4-5 of §8.7 (``count``: tally
        the values clipped at x̂'s rails)."""
        return normalise_groups(self, self._channels(x), x.fmt.frac_bits, stats, count)

    def affine(self, xhat) -> QTensor:
        """acc = β' + γ·x̂ per channel (§8.7 step 6)."""
        return scale_shift(self.params["scale"], self.params["B"], xhat, self.xhat_fmt.frac_bits, self.num,
                           (1, self.channels, 1))

    def _output(self, x: QTensor, stats: dict, count: bool = True):
        """(x̂, per-channel (ι, F_ι), acc, y codes) with y shaped (B, C, P) like acc."""
        if self.out_fmt is None:
            raise EdgeDFAError(f"node {self.name!r} (BatchNorm): forward before calibrate (no output format)")
        xhat, units = self.normalise(x, stats, count)
        acc = self.affine(xhat)
        y = requantize(acc.codes, acc.fmt, self.out_fmt, self.num.act_rounding, self.num.act_overflow)
        return xhat, units, acc, y

    def forward(self, xs, train=False):
        x = xs[0]
        if not train:
            y = self._output(x, self.running_statistics(x.fmt))[3]
            return QTensor(y.reshape(x.codes.shape), self.out_fmt), None
        stats = self.batch_statistics(x)
        xhat, units, acc, y = self._output(x, stats)
        observe(self, "out", acc, self.out_fmt, y)
        self.update_running(stats, x.fmt)
        cache = {"xhat": xhat, "live": inside_range(acc, self.out_fmt), "units": units, "n": stats["n"]}
        return QTensor(y.reshape(x.codes.shape), self.out_fmt), cache

    def update_running(self, stats: dict, x_fmt: FixedFormat) -> None:
        """mean and var move 2^-k_m towards the batch's mean and unbiased variance (§8.7 step 7)."""
        n, k = stats["n"], self.momentum_k
        mean = self.params["mean"]
        codes = [ema(p, mean.fmt.frac_bits, m, x_fmt.frac_bits + GUARD, k)
                 for p, m in zip(mean.codes.tolist(), stats["mu"])]
        self._store_stat("mean", codes)
        if n > 1:
            var = self.params["var"]
            r, L = reciprocal(n * (n - 1))
            f_w = 2 * x_fmt.frac_bits + RECIP_BITS + L
            self._store_stat("var", [ema(p, var.fmt.frac_bits, q * r, f_w, k)
                                     for p, q in zip(var.codes.tolist(), stats["q"])])

    def _store_stat(self, key: str, codes: list) -> None:
        fmt = self.params[key].fmt
        clipped = [min(max(c, fmt.min_code), fmt.max_code) for c in codes]
        self.params[key] = QTensor(np.array(clipped, dtype=np.int64), fmt)
        if self.num.adaptive:
            manage_param(self, key)

    def calibrate(self, xs):
        x = xs[0]
        stats = self.batch_statistics(x)
        n, f_x = stats["n"], x.fmt.frac_bits
        var = np.array(stats["q"], dtype=np.float64) / (n * max(n - 1, 1))
        self._quantize_params(self.node, {"mean": np.array(stats["mu"], dtype=np.float64) * 2.0 ** -(f_x + GUARD),
                                          "var": var * 2.0 ** (-2 * f_x)})
        xhat, _ = self.normalise(x, stats, count=False)
        self.out_fmt = calibrated_format(self.affine(xhat), self.num)

    def calibration_output(self, xs):
        """The training forward's output (batch statistics), without touching the running ones."""
        x = xs[0]
        y = self._output(x, self.batch_statistics(x), count=False)[3]
        return QTensor(y.reshape(x.codes.shape), self.out_fmt)

    # ------------------------------------------------------------------ backward
    def backward(self, cache, dy, need_dx):
        xhat, n = cache["xhat"], cache["n"]
        d3 = dy.codes.reshape(cache["live"].shape) * cache["live"]  # masked as activations.masked
        f_dy, f_xh, num = dy.fmt.frac_bits, self.xhat_fmt.frac_bits, self.num
        db, dg = d3.sum(axis=(0, 2)), (d3 * xhat).sum(axis=(0, 2))
        grads = {"B": QTensor(db, acc_format(num.acc_bits, f_dy)),
                 "scale": QTensor(dg, acc_format(num.acc_bits, f_dy + f_xh))}
        if not need_dx[0]:
            return [None], grads
        codes, fmt = input_error(d3, xhat, db.tolist(), dg.tolist(), n, f_dy, f_xh, self.channel_scale(cache["units"]),
                                 f_dy, num)
        return [QTensor(codes.reshape(dy.codes.shape), fmt)], grads

    def channel_scale(self, units) -> tuple:
        """γ·ι per channel as one block (§8.7 backward step 4): (codes, fraction)."""
        g = self.params["scale"]
        return one_block([(gc * i, g.fmt.frac_bits + fi) for gc, (i, fi) in zip(g.codes.tolist(), units)])

    def weight_update(self, grads, step, lr_shift):
        return update_params(self, grads, step, lr_shift)


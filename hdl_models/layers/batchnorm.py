"""Batch normalization on the accelerator (§8.7): the normalisation unit's statistics pass,
the per-channel scalars, the normalise-scale-shift pass; backward sums, bracket and channel
scale; the running statistics' moving averages and their exponents (§13)."""

from __future__ import annotations

import numpy as np

from edgedfa.errors import EdgeDFAError
from edgedfa.fixed import FixedFormat

from ..accounting import Cost, nbytes
from ..norm_unit import (BACKWARD_SCALAR_CYCLES, EPS_FRAC, GUARD, MANT, SCALAR_CYCLES, gain, leading_one,
                         momentum_steps, moving, rne, rsqrt)
from ..requant_unit import floor_error, requant, saturate, shift_round
from .base import HwLayer, T, acc_fmt, register
from .dense import live_mask

XH_INT = 6


def per_channel_shift(x3, shifts, rounding) -> np.ndarray:
    """Each channel through the shifter with its own amount (a register per channel)."""
    out = np.empty_like(x3)
    for c, s in enumerate(shifts):
        out[:, c] = shift_round(x3[:, c], int(s), rounding)
    return out


def top_bits(x, frac: int, width: int, rounding) -> tuple:
    """Block narrowing (§7) with the fraction as a plain integer: (codes, fraction)."""
    top = int(np.max(np.abs(x))) if x.size else 0
    s = max(0, leading_one(top) - (width - 1))
    lim = (1 << (width - 1)) - 1
    return np.minimum(np.maximum(shift_round(x, s, rounding), -lim - 1), lim), frac - s


def normalise_groups(x3, mean, gains, f_x: int, xh: FixedFormat, rounding) -> tuple:
    """(x̂ like ``x3``, per-group gain units): codes (B, G, P), a mean and a gain per group."""
    units = [gain(v, phi, f_x, xh.frac_bits) for v, phi in gains]
    d = (x3 << GUARD) - np.array(mean, dtype=np.int64)[None, :, None]
    prod = d * np.array([u[0] for u in units], dtype=np.int64)[None, :, None]
    return saturate(per_channel_shift(prod, [u[1] for u in units], rounding), xh, "AP_SAT"), units


def scale_shift(g: T, bias: T, xhat, f_xh: int, num, shape) -> tuple:
    """(acc, fraction): β' + γ·x̂ in the accumulator register, γ and β broadcast as ``shape``."""
    f_acc = g.fmt.frac_bits + f_xh
    fmt = acc_fmt(num.acc_bits, f_acc)
    init = saturate(requant(bias.codes.reshape(-1), bias.fmt.frac_bits, fmt, num.act_rounding, num.acc_overflow), fmt,
                    num.acc_overflow)
    return saturate(init.reshape(shape) + g.codes.reshape(shape) * xhat, fmt, num.acc_overflow), f_acc


def affine_pass(layer, acc, cost: Cost, x: T, xhat, shape, gamma_beta=None) -> tuple:
    """The normalise-scale-shift pass (§8.7 step 6, §8.8): (output T in the input's shape, the
    accumulator, its fraction); its cycles, MACs and traffic added to ``cost``. ``gamma_beta``:
    the (γ, β) registers when not the layer's parameters (§8.11's constant ones)."""
    num, n = layer.num, x.codes.size
    g, b = gamma_beta or (layer.params["scale"], layer.params["B"])
    a, f_acc = scale_shift(g, b, xhat, layer.xh.frac_bits, num, shape)
    y = requant(a, f_acc, layer.out_fmt, num.act_rounding, num.act_overflow)
    cost.use("norm", acc.norm.cycles(n))
    cost.macs += 2 * n
    cost.adds += 2 * n
    acc.read(cost, "act", n * nbytes(x.fmt.width))
    acc.write(cost, "act", n * nbytes(layer.out_fmt.width))
    return T(y.reshape(x.codes.shape), layer.out_fmt), a, f_acc


def one_block(pairs) -> tuple:
    """Exact (value, fraction) pairs aligned to one fraction, one 24-bit block: (codes, fraction)."""
    f = max(fr for _, fr in pairs)
    aligned = [v << (f - fr) for v, fr in pairs]
    z = max(0, leading_one(max(abs(v) for v in aligned)) - MANT)
    return np.array([rne(v, z) for v in aligned], dtype=np.int64), f - z


def input_error(e3, xhat, s1: list, s2: list, recip: tuple, f_e: int, f_xh: int, scale: tuple, f_dy: int,
                num) -> tuple:
    """(codes, format) of dx per group (axis 1 of ``e3``, ``xhat``) from the groups' sums s1 = Σe,
    s2 = Σe·x̂ and the divider's reciprocal (r, L) of their count: the bracket, narrowed, times
    the group scale, narrowed, floored (§8.7 backward); all zero keeps dy's format."""
    num_bits, rounding = num.err_bits, num.err_rounding
    r, L = recip
    m1 = np.array([rne(v * r, 32 + L - GUARD) for v in s1], dtype=np.int64)
    m2 = np.array([rne(v * r, 32 + L + f_xh - GUARD) for v in s2], dtype=np.int64)
    bracket = (e3 << (GUARD + f_xh)) - (m1[None, :, None] << f_xh) - xhat * m2[None, :, None]
    c, f_c = top_bits(bracket, f_e + GUARD + f_xh, num_bits + 8, rounding)
    s, f_s = scale
    codes, f_dx = top_bits(c * s[None, :, None], f_c + f_s, num_bits, rounding)
    codes, f_dx = floor_error(codes, f_dx, num_bits, rounding)
    return codes, FixedFormat.with_frac(num_bits, f_dx if codes.any() else f_dy)


def norm_constants(attrs, num):
    """(epsilon as a code of EPS_FRAC fraction bits, x-hat's format): a normalisation's constants."""
    eps = int(np.rint(np.ldexp(float(attrs.get("epsilon", 1e-5)), EPS_FRAC)))
    return eps, FixedFormat(min(num.act_bits + 8, 24), XH_INT)


@register("BatchNorm")
class BatchNormHw(HwLayer):
    trainable = True
    own_format = True

    def __init__(self, node, layer):
        super().__init__(node, layer)
        self.channels = int(self.in_shapes[0][0])
        self.eps, self.xh = norm_constants(self.attrs, self.num)
        self.k_m = momentum_steps(self.attrs.get("momentum", 0.9))

    # ------------------------------------------------------------------ scalar side
    def _batch_scalars(self, acc, x3, x_fmt):
        """Per channel: mean, Q and the inverse standard deviation as a gain; the divider's cycles."""
        n, f_x = x3.shape[0] * x3.shape[2], x_fmt.frac_bits
        if max(2 * x_fmt.width - 2, self.num.err_bits + self.xh.width - 2) + leading_one(n - 1) > 62:
            raise EdgeDFAError(f"hdl_models: node {self.name!r}: {n} values per channel need sums beyond 62 bits")
        r, L, div = acc.norm.reciprocal(n)
        s1, s2 = x3.sum(axis=(0, 2)).tolist(), (x3 * x3).sum(axis=(0, 2)).tolist()
        e = rne(self.eps * n * n, EPS_FRAC - 2 * f_x)
        mean, q, gains = [], [], []
        for a, b in zip(s1, s2):
            mean.append(rne(a * r, 32 + L - GUARD))
            q.append(n * b - a * a)
            t, f = rsqrt(q[-1] + e, 0)
            gains.append((n * t, f - f_x))
        return {"n": n, "mean": mean, "q": q, "gains": gains}, div

    def _running_scalars(self, x_fmt):
        m, v, f_x = self.params["mean"], self.params["var"], x_fmt.frac_bits
        lim = 1 << (x_fmt.width + GUARD)
        mean = [min(max(rne(c, m.fmt.frac_bits - f_x - GUARD), -lim), lim - 1) for c in m.codes.tolist()]
        f = max(v.fmt.frac_bits, EPS_FRAC)
        gains = [rsqrt((c << (f - v.fmt.frac_bits)) + (self.eps << (f - EPS_FRAC)), f) for c in v.codes.tolist()]
        return {"mean": mean, "gains": gains}

    # ------------------------------------------------------------------ element side
    def forward(self, acc, xs, train):
        x = xs[0]
        b = x.codes.shape[0]
        x3 = x.codes.reshape(b, self.channels, -1)
        n = x3.size
        cost = Cost()
        if train:
            sc, div = self._batch_scalars(acc, x3, x.fmt)
            cost.use("norm", acc.norm.cycles(n) + div + self.channels * SCALAR_CYCLES)
            cost.macs += n
            cost.adds += 2 * n
            acc.read(cost, "act", n * nbytes(x.fmt.width))
        else:
            sc = self._running_scalars(x.fmt)
            cost.use("norm", self.channels * SCALAR_CYCLES)
        xhat, units = normalise_groups(x3, sc["mean"], sc["gains"], x.fmt.frac_bits, self.xh, self.num.act_rounding)
        out, a, f_acc = affine_pass(self, acc, cost, x, xhat, (1, self.channels, 1))
        if not train:
            return out, None, cost
        acc.write(cost, "act", n * nbytes(self.xh.width))  # x̂ kept for the backward pass
        self.track("out", a, f_acc)
        cost.add(self._update_statistics(acc, sc, x.fmt.frac_bits))
        cache = {"xhat": xhat, "live": live_mask(a, f_acc, self.out_fmt), "units": units, "n": sc["n"]}
        return out, cache, cost

    def _update_statistics(self, acc, sc, f_x) -> Cost:
        """Moving averages of the mean and (unbiased, N > 1) variance; then their exponents."""
        cost = Cost()
        m = self.params["mean"]
        self._write_stat("mean", [moving(p, m.fmt.frac_bits, w, f_x + GUARD, self.k_m)
                                  for p, w in zip(m.codes.tolist(), sc["mean"])])
        n = sc["n"]
        if n > 1:
            v = self.params["var"]
            r, L, div = acc.norm.reciprocal(n * (n - 1))
            cost.use("norm", div)
            f_w = 2 * f_x + 32 + L
            self._write_stat("var", [moving(p, v.fmt.frac_bits, q * r, f_w, self.k_m)
                                     for p, q in zip(v.codes.tolist(), sc["q"])])
        for key in ("mean", "var"):
            acc.write(cost, "weight", self.channels * 4, f"param/{self.name}/{key}")
            if self.num.adaptive:
                cost.add(self._manage_param(acc, key))
        return cost

    def _write_stat(self, key: str, codes: list) -> None:
        fmt = self.params[key].fmt
        self.params[key] = T(np.array([min(max(c, fmt.min_code), fmt.max_code) for c in codes], dtype=np.int64), fmt)

    # ------------------------------------------------------------------ backward
    def backward(self, acc, cache, dy, need):
        xhat, n, num = cache["xhat"], cache["n"], self.num
        d = dy.codes.reshape(cache["live"].shape) * cache["live"]
        f_dy, f_xh = dy.fmt.frac_bits, self.xh.frac_bits
        dbeta, dgamma = d.sum(axis=(0, 2)), (d * xhat).sum(axis=(0, 2))
        grads = {"B": T(dbeta, acc_fmt(num.acc_bits, f_dy)), "scale": T(dgamma, acc_fmt(num.acc_bits, f_dy + f_xh))}
        size = d.size
        gcost = Cost().use("norm", acc.norm.cycles(size))
        gcost.adds, gcost.macs = size, size
        acc.read(gcost, "err", size * nbytes(dy.fmt.width))
        acc.read(gcost, "act", size * nbytes(self.xh.width))
        ecost = Cost()
        if not need[0]:
            return [None], grads, ecost, gcost
        r, L, div = acc.norm.reciprocal(n)
        codes, fmt = input_error(d, xhat, dbeta.tolist(), dgamma.tolist(), (r, L), f_dy, f_xh,
                                 self._channel_scale(cache["units"]), f_dy, num)
        ecost.use("norm", 2 * acc.norm.cycles(size) + div + BACKWARD_SCALAR_CYCLES * self.channels)
        ecost.use("requant", acc.requant.cycles(size))
        ecost.macs, ecost.adds = 2 * size, 2 * size
        acc.read(ecost, "err", size * nbytes(dy.fmt.width))
        acc.read(ecost, "act", size * nbytes(self.xh.width))
        acc.write(ecost, "err", size * nbytes(num.err_bits))
        return [T(codes.reshape(dy.codes.shape), fmt)], grads, ecost, gcost

    def _channel_scale(self, units) -> tuple:
        """γ·ι of every channel aligned to one fraction, one 24-bit block: (codes, fraction)."""
        g = self.params["scale"]
        return one_block([(gc * iota, g.fmt.frac_bits + f_i) for gc, (iota, _, f_i) in zip(g.codes.tolist(), units)])

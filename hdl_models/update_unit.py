"""Weight-update unit (§12): p <- ovf(p - round(g * 2^-(F_g - F_p + lr_shift_eff)), weight_ovf).

Ports: ``g`` (wide gradient, ``acc_width``), ``p`` (parameter, ``weight_width``), ``rand``
(32-bit word from the PRNG unit for STOCHASTIC) -> ``p_next``. ``lanes`` parameters per
cycle: a barrel shifter, a stochastic rounder (adder of the word's top bits), a
subtractor and a saturator per lane. The learning rate is a shift (``lr_shift_eff =
lr_shift + decays + log2(batch)``).
"""

from __future__ import annotations

import numpy as np

from edgedfa.fixed import FixedFormat, Rounding

from . import lanes
from .prng_unit import P_BIAS_UPDATE, P_WEIGHT_UPDATE, PrngUnit, key_register, stream_of
from .requant_unit import saturate, shift_round


def purpose_of(name: str, position: int) -> int:
    """§12: W purpose 1, B purpose 2, any other parameter 16 + its position among the sorted names."""
    if name == "W":
        return P_WEIGHT_UPDATE
    if name == "B":
        return P_BIAS_UPDATE
    return 16 + position


class UpdateUnit:
    # hold g for the PRNG | align | round, subtract | overflow (rtl/update_unit.v; with
    # momentum: align | round, decay | add | round, subtract | overflow)
    LATENCY = 5

    def __init__(self, lanes: int = 16, prng: PrngUnit | None = None):
        self.lanes = int(lanes)
        self.prng = prng or PrngUnit(lanes)
        self.peak = None  # max |code| written by the last ``adam`` through the lanes (None: not tracked)

    def apply(self, p: np.ndarray, p_fmt: FixedFormat, g: np.ndarray, f_g: int, lr_shift: int,
              rounding, weight_overflow, seed: int, layer_index: int, purpose: int, step: int,
              norm_bits: int | None = None, lr_base: int | None = None,
              momentum_shift: int | None = None, velocity: np.ndarray | None = None):
        """(new codes, number of saturated updates, new velocity or None). With ``norm_bits``
        the shift comes from the gradient's own magnitude (a leading-one detector on max|g|)
        plus the schedule's decay; with ``momentum_shift`` m a velocity register with 16 more
        fraction bits than p: v <- v - (v >> m) + round_conv(g >> (s - 16)), p <- p - round(v >> 16)."""
        rounding = Rounding.parse(rounding)
        if norm_bits is None:
            s = f_g - p_fmt.frac_bits + lr_shift
        else:
            top = int(np.max(np.abs(np.asarray(g, dtype=np.int64)))) if np.size(g) else 0
            s = top.bit_length() - int(norm_bits) + (lr_shift - (lr_shift if lr_base is None else lr_base))
        rand = None
        if rounding is Rounding.STOCHASTIC:
            rand = self.prng.words(seed, stream_of(layer_index, purpose), step, np.shape(g))
        vel = None
        if momentum_shift is None:
            delta = shift_round(g, s, rounding, rand)
        else:
            g = np.asarray(g, dtype=np.int64)
            v = np.zeros_like(g) if velocity is None else np.asarray(velocity, dtype=np.int64)
            vel = v - (v >> int(momentum_shift)) + shift_round(g, s - 16, Rounding.AP_RND_CONV, None)
            delta = shift_round(vel, 16, rounding, rand)
        raw = np.asarray(p, dtype=np.int64) - delta
        new = saturate(raw, p_fmt, weight_overflow)
        return new, int(np.count_nonzero(new != raw)), vel

    def adam(self, p: np.ndarray, p_fmt: FixedFormat, g: np.ndarray, f_g: int, lr: int, rounding,
             weight_overflow, seed: int, layer_index: int, purpose: int, step: int, num, moments: dict):
        """§12 Adam through the moment registers: (new codes, number saturated). ``moments``
        holds ``m``, ``v`` as (codes, fraction bits) and is updated in place; ``lr`` is the
        learning-rate shift with the schedule's decays. The lanes run compiled
        (``hdl_models.lanes``); a shift no 64-bit lane takes falls back to ``adam_reference``."""
        rounding = Rounding.parse(rounding)
        self.peak = None
        g = np.asarray(g, dtype=np.int64)
        width = num.moment_bits
        lim = (1 << (width - 1)) - 1
        g_top = leading_one(lanes.maxabs(g))
        d = max(0, g_top - (width - 1))  # top_bits, in the lanes
        warm = leading_one(step + 1) - 1
        m, f_m = _moment_plan(moments.get("m"), f_g - d, min(num.beta1_shift, warm))
        v, f_v = _moment_plan(moments.get("v"), 2 * (f_g - d), min(num.beta2_shift, warm))
        if not lanes.fits(m.a, m.b, m.k, v.a, v.b, v.k) or p_fmt.width > 62 \
                or not _aligned_fit(width, g_top - d, m, v):
            return self.adam_reference(p, p_fmt, g, f_g, lr, rounding, weight_overflow, seed, layer_index,
                                       purpose, step, num, moments)
        sums, top_m, top_v = lanes.moment_sums(g, d, lim, m, v)
        dm, dv = (max(0, leading_one(t) - (width - 1)) for t in (top_m, top_v))
        key = 0
        if rounding is Rounding.STOCHASTIC:
            key = key_register(seed, stream_of(layer_index, purpose), step)
            self.prng.words_generated += int(np.size(g))
        new, count, self.peak = lanes.adam_step(p, sums, lim, dm, dv, f_m - dm, f_v - dv, lr - p_fmt.frac_bits,
                                                lanes.ROUNDING[rounding], key, lanes.overflow_mode(p_fmt, weight_overflow))
        moments["m"], moments["v"] = (sums[0].reshape(np.shape(g)), f_m - dm), (sums[1].reshape(np.shape(g)), f_v - dv)
        return new, count

    def adam_reference(self, p: np.ndarray, p_fmt: FixedFormat, g: np.ndarray, f_g: int, lr: int, rounding,
                       weight_overflow, seed: int, layer_index: int, purpose: int, step: int, num,
                       moments: dict):
        """``adam`` in numpy, one operation per pass: the reference the compiled lanes match."""
        g_c, g_f = top_bits(g, f_g, num.moment_bits)
        warm = leading_one(step + 1) - 1  # the first 2^k steps average like a running mean
        m = moving(moments.get("m"), (g_c, g_f), min(num.beta1_shift, warm), num.moment_bits)
        v = moving(moments.get("v"), (g_c * g_c, 2 * g_f), min(num.beta2_shift, warm), num.moment_bits)
        moments["m"], moments["v"] = m, v
        # sqrt(v) ~ 2^e: a leading-one detector per lane on v, halved (e = floor((lod - F_v) / 2))
        lod = np.frexp(v[0].astype(np.float64))[1].astype(np.int64)  # exact: |v| < 2^53
        e = np.floor_divide(lod - v[1], 2)
        s = np.clip(lr + m[1] + e - p_fmt.frac_bits, -16, 62)
        rand = None
        if Rounding.parse(rounding) is Rounding.STOCHASTIC:
            rand = self.prng.words(seed, stream_of(layer_index, purpose), step, np.shape(m[0]))
        delta = np.where(v[0] > 0, lane_shift(m[0], s, rounding, rand), 0)
        raw = np.asarray(p, dtype=np.int64) - delta
        new = saturate(raw, p_fmt, weight_overflow)
        return new, int(np.count_nonzero(new != raw))

    def cycles(self, n_params: int) -> int:
        """One parameter per lane per cycle, plus the pipeline's fill once per tensor."""
        return -(-int(n_params) // self.lanes) + self.LATENCY - 1 if n_params else 0


def leading_one(n: int) -> int:
    return int(n).bit_length()


def top_bits(x, frac: int, width: int) -> tuple:
    """(codes, frac): ``width`` bits of a wide register kept under its max (to nearest even)."""
    x = np.asarray(x, dtype=np.int64)
    top = int(np.max(np.abs(x))) if x.size else 0
    d = max(0, leading_one(top) - (width - 1))
    lim = (1 << (width - 1)) - 1
    return np.minimum(np.maximum(shift_round(x, d, Rounding.AP_RND_CONV), -lim - 1), lim), frac - d


def _aligned_fit(width: int, g_bits: int, m: lanes.Moment, v: lanes.Moment) -> bool:
    """Whether a 64-bit lane holds every aligned operand of both moment sums: registers of
    ``width`` bits shifted by a, the narrowed gradient (at most ``g_bits`` + 1 bits, and
    ``width``) and its square shifted by b, all within 62 bits."""
    gb = min(g_bits + 1, width)
    return max(width + m.a * (m.old is not None), gb + m.b, width + v.a * (v.old is not None), 2 * gb + v.b) <= 62


def moving(old, new: tuple, k: int, width: int) -> tuple:
    """Moment register update old + (new - old) · 2^-k, exact then ``width`` bits kept. The
    aligned operands of a gradient far finer (or coarser) than the register pass 64 bits:
    then the sum is taken on Python integers, the value the wide adder would hold."""
    n_c, n_f = new
    if old is None or not np.any(old[0]):
        old = (np.zeros_like(n_c), n_f)
    o_c, o_f = old
    f = max(o_f, n_f)
    if max(_top(o_c) + f - o_f, _top(n_c) + f - n_f) <= 62:
        o_al = np.asarray(o_c, dtype=np.int64) << (f - o_f)
        n_al = np.asarray(n_c, dtype=np.int64) << (f - n_f)
        return top_bits(o_al + shift_round(n_al - o_al, k, Rounding.AP_RND_CONV), f, width)
    o_al = [int(x) << (f - o_f) for x in np.ravel(o_c)]
    n_al = [int(x) << (f - n_f) for x in np.ravel(n_c)]
    sums = [o + _conv(n - o, k) for o, n in zip(o_al, n_al)]
    drop = max(0, leading_one(max((abs(x) for x in sums), default=0)) - (width - 1))
    lim = (1 << (width - 1)) - 1
    codes = np.array([min(max(_conv(x, drop), -lim - 1), lim) for x in sums], np.int64)
    return codes.reshape(np.shape(n_c)), f - drop


def _top(codes) -> int:
    """Leading one of max |code| (a tensor's max tracker)."""
    c = np.asarray(codes, dtype=np.int64)
    return leading_one(max(int(c.max(initial=0)), -int(c.min(initial=0))))


def _conv(x: int, k: int) -> int:
    """x · 2^-k to nearest, ties to even, on an unbounded integer (the wide adder's shift)."""
    if k == 0:
        return x
    q, rest, half = x >> k, x & ((1 << k) - 1), 1 << (k - 1)
    return q + (1 if rest > half or (rest == half and q & 1) else 0)


def _moment_plan(old, n_f: int, k: int) -> tuple:
    """(lanes.Moment, F of the exact sum) of ``moving`` with the narrowed gradient term at
    fraction ``n_f``: an absent or all-zero register counts as zeros at ``n_f``."""
    if old is None or not lanes.any_nonzero(old[0]):
        return lanes.Moment(None, 0, 0, k), n_f
    o_c, o_f = old
    f = max(o_f, n_f)
    return lanes.Moment(o_c, f - o_f, f - n_f, k), f


def lane_shift(x, s, rounding, rand=None) -> np.ndarray:
    """Each lane's own barrel shift: round(x_i · 2^-s_i) (§2), stochastic from word i."""
    x, s = np.asarray(x, dtype=np.int64), np.asarray(s, dtype=np.int64)
    right = np.clip(s, 1, 62)
    q, r = x >> right, x & ((np.int64(1) << right) - 1)
    rounding = Rounding.parse(rounding)
    if rounding is Rounding.STOCHASTIC:
        w = np.asarray(rand, dtype=np.int64)
        u = np.where(right <= 32, w >> np.clip(32 - right, 0, 32), w << np.clip(right - 32, 0, 30))
        up = (r + u) >> right
    else:
        from .requant_unit import _up

        up = _up(q, r, np.int64(1) << (right - 1), x, rounding).astype(np.int64)
    return np.where(s <= 0, x << np.clip(-s, 0, 62), q + up)

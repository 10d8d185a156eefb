"""The update stage (§12): gradient codes to parameter codes, as ``hdl_models/update_unit.py``
does in hardware.

Two rules. **adam** (the default): moment registers ``m`` and ``v`` of ``moment_bits`` with
their own block exponents; the step of each parameter is ``lr · m / 2^k`` with ``2^k`` the
power of two nearest ``sqrt(v)`` (a leading-one detector and a barrel shifter per lane), so
it does not depend on the gradient's scale. **sgd**: the gradient shifted by the learning
rate (or, normalized, by its own magnitude), optionally through a momentum register kept
``MOMENTUM_FRAC`` bits below the parameter's LSB. Both round stochastically by default from
the parameter's own PRNG stream (§5) and saturate into the parameter's format; with adaptive
scaling the parameter's exponent is then managed (§13). Frozen parameters are never written.
"""

from __future__ import annotations

import numpy as np

from .fixed import QTensor, Rounding, apply_overflow, bit_length, round_shift
from .kernels.adam import adam_step
from .prng import PURPOSE_BIAS_UPDATE, PURPOSE_WEIGHT_UPDATE, Stream, stream_id
from .scaling import manage_param, tally

MOMENTUM_FRAC = 16  # velocity keeps 16 bits below the parameter's LSB (§12)
ADAM_LR_SHIFT = 9  # Adam's default step: 2^-9 per step in the parameter's units
SGD_LR_SHIFT = 5  # SGD's default learning rate 2^-5 on the batch-mean gradient


def default_lr_shift(num) -> int:
    """The default learning-rate shift of the numerics' update rule."""
    return ADAM_LR_SHIFT if num.rule == "adam" else SGD_LR_SHIFT


def update_shift(p: QTensor, g: QTensor, lr_shift: int, num, lr_base: int | None = None) -> int:
    """Right shift from gradient codes to parameter codes (§12): lr-scaled SGD, or normalized
    (the tensor's largest update has update_norm_bits bits, halved by every schedule decay)."""
    if num.update_norm_bits is None:
        return g.fmt.frac_bits - p.fmt.frac_bits + lr_shift
    maxabs = int(np.abs(g.codes).max()) if g.codes.size else 0
    decay = lr_shift - (lr_shift if lr_base is None else lr_base)
    return bit_length(maxabs) - num.update_norm_bits + decay


def sgd_update(p: QTensor, g: QTensor, lr_shift: int, num, stream: Stream, step: int,
               velocity: np.ndarray | None = None, lr_base: int | None = None):
    """p - round(lr * g) in p's format (stochastic by default), or with momentum
    v <- v - (v >> m) + lr * g, p <- p - round(v); returns (new p, #clipped, new v)."""
    new, clipped, velocity, _ = _sgd(p, g, lr_shift, num, stream, step, velocity, lr_base)
    return new, clipped, velocity


def _sgd(p, g, lr_shift, num, stream, step, velocity, lr_base):
    shift = update_shift(p, g, lr_shift, num, lr_base)
    if num.momentum_shift is None:
        delta = round_shift(g.codes, shift, num.update_rounding, stream, step)
    else:
        v = np.zeros_like(g.codes) if velocity is None else velocity
        v = v - (v >> num.momentum_shift) + round_shift(g.codes, shift - MOMENTUM_FRAC, "AP_RND_CONV")
        velocity = v
        delta = round_shift(v, MOMENTUM_FRAC, num.update_rounding, stream, step)
    new, clipped = _apply(p, delta, num)
    zeroed = int(np.count_nonzero((delta == 0) & (g.codes != 0)))
    return new, clipped, velocity, zeroed


def _apply(p: QTensor, delta, num):
    raw = p.codes - delta
    new = apply_overflow(raw, p.fmt, num.weight_overflow)
    return QTensor(new, p.fmt), int(np.count_nonzero(new != raw))


# --------------------------------------------------------------------------- adam

def warmup_shift(shift: int, step: int) -> int:
    """min(shift, floor(log2(step + 1))): the first moments average every step so far."""
    return min(int(shift), (int(step) + 1).bit_length() - 1)


def narrow_frac(codes, frac: int, bits: int):
    """(codes, frac): the top ``bits`` of a wide tensor, to nearest even (§7's block exponent,
    with the exponent as a plain integer: a squared moment may need more than 64 fraction bits)."""
    maxabs = int(np.abs(codes).max()) if codes.size else 0
    s = max(0, maxabs.bit_length() - (bits - 1))
    lim = (1 << (bits - 1)) - 1
    return np.clip(round_shift(codes, s, "AP_RND_CONV"), -lim - 1, lim), frac - s


def ema(old, new, shift: int, bits: int):
    """old + (new - old) >> shift for (codes, frac) pairs, exact in the finer fraction, then
    narrowed to ``bits``; an absent or all-zero ``old`` counts as zero. Where an operand
    aligned to the finer fraction would pass 62 bits (a gradient 2^47 finer than the register,
    or an all-zero one with a fine fraction), the same sum is taken on Python integers."""
    (nc, nf) = new
    if old is None or not old[0].any():
        old = (np.zeros_like(nc), nf)
    (oc, of) = old
    f = max(of, nf)
    if max(_maxabs(oc).bit_length() + f - of, _maxabs(nc).bit_length() + f - nf) > 62:
        return _ema_exact(oc, of, nc, nf, f, shift, bits)
    a, b = oc << (f - of), nc << (f - nf)
    return narrow_frac(a + round_shift(b - a, shift, "AP_RND_CONV"), f, bits)


def _maxabs(codes) -> int:
    return max(int(codes.max(initial=0)), -int(codes.min(initial=0)))


def _rne(x: int, k: int) -> int:
    """x · 2^-k rounded to nearest, ties to even (``AP_RND_CONV``), on a Python integer."""
    if k <= 0:
        return x << -k
    q, r = x >> k, x & ((1 << k) - 1)
    return q + int(r > 1 << (k - 1) or (r == 1 << (k - 1) and q & 1))


def _ema_exact(oc, of: int, nc, nf: int, f: int, shift: int, bits: int):
    """``ema`` past 64 bits: the exact sum of every element, then ``narrow_frac``'s top bits."""
    sums = [a + _rne(b - a, shift) for a, b in zip((int(x) << (f - of) for x in oc.flat),
                                                  (int(x) << (f - nf) for x in nc.flat))]
    d = max(0, max(map(abs, sums), default=0).bit_length() - (bits - 1))
    lim = (1 << (bits - 1)) - 1
    codes = [min(max(_rne(s, d), -lim - 1), lim) for s in sums]
    return np.array(codes, np.int64).reshape(np.shape(nc)), f - d


def shift_round_each(x, shifts, rounding, stream: Stream, step: int) -> np.ndarray:
    """round(x · 2^-s) with one shift per element (§2 modes; STOCHASTIC: the element's word)."""
    x, s = np.asarray(x, dtype=np.int64), np.asarray(shifts, dtype=np.int64)
    words = stream.words(step, x.shape) if Rounding.parse(rounding) is Rounding.STOCHASTIC else None
    out = np.empty_like(x)
    for v in np.unique(s):  # one barrel-shifter setting at a time; every element once
        sel = s == v
        out[sel] = round_shift(x[sel], int(v), rounding, None if words is None else words[sel], step)
    return out


def adam_update(p: QTensor, g: QTensor, lr_shift: int, num, stream: Stream, step: int, state: dict, name: str):
    """§12 Adam: (new p, #clipped, #rounded to zero); moments kept in ``state``. The compiled
    kernel computes it; inputs it does not model go through the reference below."""
    fast = adam_step(p.codes, p.fmt, g.codes, g.fmt.frac_bits, _moment(state, "m", name),
                     _moment(state, "v", name), lr_shift, num, stream, step)
    if fast is None:
        return adam_update_reference(p, g, lr_shift, num, stream, step, state, name)
    new, m, v, clipped, zeroed = fast
    _store(state, "m", name, m)
    _store(state, "v", name, v)
    return QTensor(new, p.fmt), clipped, zeroed


def adam_update_reference(p: QTensor, g: QTensor, lr_shift: int, num, stream: Stream, step: int, state: dict,
                          name: str):
    """§12 Adam in numpy passes, the specification ``adam_update``'s kernel is tested against."""
    gc, gf = narrow_frac(g.codes, g.fmt.frac_bits, num.moment_bits)
    m = ema(_moment(state, "m", name), (gc, gf), warmup_shift(num.beta1_shift, step), num.moment_bits)
    v = ema(_moment(state, "v", name), (gc * gc, 2 * gf), warmup_shift(num.beta2_shift, step), num.moment_bits)
    _store(state, "m", name, m)
    _store(state, "v", name, v)
    k = (bitlen_each(v[0]) - v[1]) >> 1  # 2^k: the power of two nearest sqrt(v)
    shifts = np.clip(lr_shift + m[1] + k - p.fmt.frac_bits, -16, 62)
    delta = np.where(v[0] > 0, shift_round_each(m[0], shifts, num.update_rounding, stream, step), 0)
    new, clipped = _apply(p, delta, num)
    return new, clipped, int(np.count_nonzero((delta == 0) & (m[0] != 0)))


def bitlen_each(v) -> np.ndarray:
    """Bit length of every non-negative element (0 for 0), exactly."""
    v = np.asarray(v, dtype=np.int64)
    n = np.zeros(v.shape, dtype=np.int64)
    for b in range(62, -1, -1):  # leading-one detector: the highest set bit wins
        hit = (n == 0) & ((v >> b) != 0)
        n[hit] = b + 1
    return n


def _moment(state, which, name):
    codes = state.get(f"adam_{which}:{name}")
    return None if codes is None else (np.asarray(codes, dtype=np.int64), int(state[f"adam_{which}_frac:{name}"]))


def _store(state, which, name, t):
    state[f"adam_{which}:{name}"] = t[0]
    state[f"adam_{which}_frac:{name}"] = np.array(t[1])


# --------------------------------------------------------------------------- per layer

def adam_shift(layer, lr_shift: int) -> int:
    """Adam's step shift: the run's base shift plus the schedule's decays (a trainer sets
    both on the layer); without a trainer, ``lr_shift`` itself."""
    if layer.lr_shift0 is None or layer.lr_base is None:
        return lr_shift
    return layer.lr_shift0 + lr_shift - layer.lr_base


def update_params(layer, grads: dict, step: int, lr_shift: int) -> dict:
    """Update every parameter with a gradient; each has its own PRNG stream (§5). Parameters
    named in ``layer.frozen`` (a plan's layer option, e.g. ``frozen = ["B"]``) are not updated."""
    clipped = {}
    frozen = set(getattr(layer, "frozen", ()) or ())
    num = layer.num
    for i, (name, g) in enumerate(sorted(grads.items())):
        if name in frozen:  # a frozen parameter keeps its value (and its stream position)
            continue
        purpose = PURPOSE_WEIGHT_UPDATE if name == "W" else PURPOSE_BIAS_UPDATE
        if name not in ("W", "B"):
            purpose = 16 + i  # further parameters (recurrent R, ...) get their own streams
        stream = Stream(layer.seed, stream_id(layer.index, purpose))
        p = layer.params[name]
        if num.rule == "adam":
            new, clipped[name], zeroed = adam_update(p, g, adam_shift(layer, lr_shift), num, stream, step,
                                                     layer.state, name)
        else:
            new, clipped[name], v, zeroed = _sgd(p, g, lr_shift, num, stream, step,
                                                 layer.state.get(f"velocity_{name}"), layer.lr_base)
            if v is not None:
                layer.state[f"velocity_{name}"] = v
        layer.params[name] = new
        tally(layer, f"update:{name}", p.codes.size, clipped[name], zeroed)
        if num.adaptive:
            manage_param(layer, name)
    return clipped

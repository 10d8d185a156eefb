"""The output error in integers: base-2 LUT softmax minus one-hot (§11)."""

from __future__ import annotations

import numpy as np

from .fixed import FixedFormat, Overflow, QTensor, apply_overflow, round_shift

LOG2E_Q14 = 23637  # round(log2(e) * 2^14)
EXP2_FRAC_BITS = 8  # exponent resolution: 1/256
EXP2_LUT = np.round(np.ldexp(2.0 ** (-np.arange(256) / 256.0), 15)).astype(np.int64)  # 2^15 * 2^(-f/256)
MAX_EXP_SHIFT = 31


def exp2_codes(z: np.ndarray, frac: int, axis: int = 1) -> np.ndarray:
    """§11 steps 1-2: e^(z - max z) along ``axis`` as 16-bit codes of 2^-15 (base 2, a LUT and a
    shifter), for codes ``z`` with ``frac`` fraction bits."""
    d = (z - z.max(axis=axis, keepdims=True)) * LOG2E_Q14  # <= 0
    shift = frac + 14 - EXP2_FRAC_BITS
    if shift < 0:  # a coarse logit format: any t <= -2^13 gives 0, as t = -2^13 does: clamp first
        d = np.maximum(d, -(1 << max(13 + shift, 0)))
    t = round_shift(d, shift, "AP_RND")
    n = np.minimum((-t) >> EXP2_FRAC_BITS, MAX_EXP_SHIFT)
    frac_t = (-t) & ((1 << EXP2_FRAC_BITS) - 1)
    return EXP2_LUT[frac_t] >> n


def softmax_codes(logits: QTensor, prob_bits: int) -> np.ndarray:
    """Integer softmax: probabilities as codes with ``prob_bits`` fraction bits (0..2^prob_bits)."""
    num = exp2_codes(logits.codes, logits.fmt.frac_bits)
    total = num.sum(axis=1, keepdims=True)
    return (num * (1 << prob_bits) + total // 2) // total


def output_error(logits: QTensor, labels: np.ndarray, err_bits: int) -> QTensor:
    """e = softmax(z) - onehot(y) in ap_fixed<err_bits,1>, per sample (not averaged)."""
    e_frac = err_bits - 1
    p = softmax_codes(logits, e_frac)
    p[np.arange(len(labels)), labels] -= 1 << e_frac
    fmt = FixedFormat(err_bits, 1)
    return QTensor(apply_overflow(p, fmt, Overflow.AP_SAT), fmt)


def cross_entropy(logits_float: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of float logits (reporting only)."""
    z = logits_float - logits_float.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())

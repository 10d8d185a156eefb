"""The update stage (§12): gradient codes to parameter codes, as ``hdl_models/update_unit.py``
does in hardware.

Plain SGD shifts the gradient by the learning rate (or, normalized, by its own magnitude),
rounds (stochastic by default, from the parameter's own PRNG stream, §5) and saturates into
the parameter's format; with momentum a velocity register keeps ``MOMENTUM_FRAC`` bits
below the parameter's LSB. Parameters a plan freezes are never written.
"""

from __future__ import annotations

import numpy as np

from .fixed import QTensor, apply_overflow, bit_length, round_shift
from .prng import PURPOSE_BIAS_UPDATE, PURPOSE_WEIGHT_UPDATE, Stream, stream_id


MOMENTUM_FRAC = 16  # velocity keeps 16 bits below the parameter's LSB (§12)


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
    shift = update_shift(p, g, lr_shift, num, lr_base)
    if num.momentum_shift is None:
        delta = round_shift(g.codes, shift, num.update_rounding, stream, step)
    else:
        v = np.zeros_like(g.codes) if velocity is None else velocity
        v = v - (v >> num.momentum_shift) + round_shift(g.codes, shift - MOMENTUM_FRAC, "AP_RND_CONV")
        velocity = v
        delta = round_shift(v, MOMENTUM_FRAC, num.update_rounding, stream, step)
    raw = p.codes - delta
    new = apply_overflow(raw, p.fmt, num.weight_overflow)
    return QTensor(new, p.fmt), int(np.count_nonzero(new != raw)), velocity


def update_params(layer, grads: dict, step: int, lr_shift: int) -> dict:
    """SGD on every parameter with a gradient; each has its own PRNG stream (§5). Parameters
    named in ``layer.frozen`` (a plan's layer option, e.g. ``frozen = ["B"]``) are not updated."""
    clipped = {}
    frozen = set(getattr(layer, "frozen", ()) or ())
    for i, (name, g) in enumerate(sorted(grads.items())):
        if name in frozen:  # a frozen parameter keeps its value (and its stream position)
            continue
        purpose = PURPOSE_WEIGHT_UPDATE if name == "W" else PURPOSE_BIAS_UPDATE
        if name not in ("W", "B"):
            purpose = 16 + i  # further parameters (recurrent R, ...) get their own streams
        stream = Stream(layer.seed, stream_id(layer.index, purpose))
        layer.params[name], clipped[name], v = sgd_update(layer.params[name], g, lr_shift, layer.num,
                                                          stream, step, layer.state.get(f"velocity_{name}"),
                                                          layer.lr_base)
        if v is not None:
            layer.state[f"velocity_{name}"] = v
    return clipped

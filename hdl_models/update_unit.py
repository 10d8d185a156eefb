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

from .prng_unit import P_BIAS_UPDATE, P_WEIGHT_UPDATE, PrngUnit, stream_of
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

    def cycles(self, n_params: int) -> int:
        """One parameter per lane per cycle, plus the pipeline's fill once per tensor."""
        return -(-int(n_params) // self.lanes) + self.LATENCY - 1 if n_params else 0

"""Output-error unit (§11): base-2 LUT softmax minus one-hot, per sample.

Ports: ``z`` (logit codes, ``F_z``), ``label`` -> ``e`` (``ap_fixed<err_width,1>``).
Per class: one 16x16 multiplier (by log2(e) in Q14), a shifter, a 256 x 16-bit EXP2 ROM;
per sample one adder tree and one divider (``err_width - 1`` quotient bits).
"""

from __future__ import annotations

import numpy as np

from edgedfa.fixed import FixedFormat, Overflow, Rounding

from .requant_unit import saturate, shift_round

LOG2E_Q14 = 23637  # round(log2(e) * 2^14)
EXP_FRAC_BITS = 8
MAX_SHIFT = 31
EXP2_ROM = np.array([int(round(2.0 ** 15 * 2.0 ** (-f / 256.0))) for f in range(256)], dtype=np.int64)


class SoftmaxUnit:
    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)

    def output_error(self, z: np.ndarray, f_z: int, labels: np.ndarray, err_width: int):
        """(e codes, FixedFormat ap_fixed<err_width, 1>)."""
        z = np.asarray(z, dtype=np.int64)
        x = (z - z.max(axis=1, keepdims=True)) * LOG2E_Q14
        s = f_z + 14 - EXP_FRAC_BITS
        if s < 0:  # a left shift: the shifter saturates at -2^13 (a 0 from the ROM path either way)
            x = np.maximum(x, -((1 << 13) >> -s) if -s <= 13 else -1)
        t = shift_round(x, s, Rounding.AP_RND)
        n = np.minimum((-t) >> EXP_FRAC_BITS, MAX_SHIFT)
        num = EXP2_ROM[(-t) & 255] >> n
        s = num.sum(axis=1, keepdims=True)
        e_frac = err_width - 1
        p = (num * (1 << e_frac) + s // 2) // s
        p[np.arange(len(labels)), np.asarray(labels)] -= 1 << e_frac
        fmt = FixedFormat(err_width, 1)
        return saturate(p, fmt, Overflow.AP_SAT), fmt

    def cycles(self, batch: int, classes: int) -> int:
        # per sample: classes / lanes exp lookups, a log2(classes) adder tree, one divider
        # of err_width cycles shared by the lanes (pipelined); modelled as below
        return batch * (-(-classes // self.lanes) + max(classes - 1, 1).bit_length() + 8)

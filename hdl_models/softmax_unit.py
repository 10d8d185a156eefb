"""Softmax unit: the output error (§11, base-2 LUT softmax minus one-hot, per sample) and the
softmax layer inside the graph (§8.10).

Ports: ``z`` (logit codes, ``F_z``), ``label`` -> ``e`` (``ap_fixed<err_width,1>``).
Per class: one 16x16 multiplier (by log2(e) in Q14), a shifter, a 256 x 16-bit EXP2 ROM;
per sample one adder tree and one divider (``err_width - 1`` quotient bits; the layer's
reciprocal takes ``RECIP_FRAC + 1`` quotient bits, one per cycle).
"""

from __future__ import annotations

import numpy as np

from edgedfa.fixed import FixedFormat, Overflow, Rounding

from .requant_unit import saturate, shift_round

LOG2E_Q14 = 23637  # round(log2(e) * 2^14)
EXP_FRAC_BITS = 8
MAX_SHIFT = 31
RECIP_FRAC = 46  # §8.10: r = round(2^46 / S)
DIV_CYCLES = RECIP_FRAC + 1  # a restoring divider, one quotient bit per cycle, one per row
EXP2_ROM = np.array([int(round(2.0 ** 15 * 2.0 ** (-f / 256.0))) for f in range(256)], dtype=np.int64)


class SoftmaxUnit:
    def __init__(self, lanes: int = 16):
        self.lanes = int(lanes)

    def exp2(self, z: np.ndarray, f_z: int, axis: int = 1) -> np.ndarray:
        """e^(z - max z) along ``axis``: 16-bit ROM words of 2^-15 (§11 steps 1-2)."""
        z = np.asarray(z, dtype=np.int64)
        x = (z - z.max(axis=axis, keepdims=True)) * LOG2E_Q14
        s = f_z + 14 - EXP_FRAC_BITS
        if s < 0:  # a left shift: the shifter saturates at -2^13 (a 0 from the ROM path either way)
            x = np.maximum(x, -((1 << 13) >> -s) if -s <= 13 else -1)
        t = shift_round(x, s, Rounding.AP_RND)
        n = np.minimum((-t) >> EXP_FRAC_BITS, MAX_SHIFT)
        return EXP2_ROM[(-t) & 255] >> n

    def output_error(self, z: np.ndarray, f_z: int, labels: np.ndarray, err_width: int):
        """(e codes, FixedFormat ap_fixed<err_width, 1>)."""
        num = self.exp2(z, f_z)
        s = num.sum(axis=1, keepdims=True)
        e_frac = err_width - 1
        p = (num * (1 << e_frac) + s // 2) // s
        p[np.arange(len(labels)), np.asarray(labels)] -= 1 << e_frac
        fmt = FixedFormat(err_width, 1)
        return saturate(p, fmt, Overflow.AP_SAT), fmt

    @staticmethod
    def reciprocal(s: np.ndarray, frac: int) -> np.ndarray:
        """The divider: 2^frac / s rounded half up, one quotient per row."""
        return ((1 << frac) + s // 2) // s

    def cycles(self, batch: int, classes: int) -> int:
        # per sample: classes / lanes exp lookups, a log2(classes) adder tree, one divider
        # of err_width cycles shared by the lanes (pipelined); modelled as below
        return batch * (-(-classes // self.lanes) + max(classes - 1, 1).bit_length() + 8)

    def layer_cycles(self, n: int, rows: int, passes: int, divides: bool) -> int:
        """§8.10: ``passes`` over n elements, ``lanes`` per cycle (the max, the exponent and sum,
        the product by the reciprocal; backward the products and row sums, then y·c), plus the
        divider once per row, not overlapped."""
        return passes * -(-int(n) // self.lanes) + (rows * DIV_CYCLES if divides else 0)

"""Numeric settings of one layer: word widths, rounding and overflow modes (docs/datapath.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral

from .errors import EdgeDFAError
from .fixed import MAX_WIDTH, Overflow, Rounding
from .schema import check_value, entry, setting

WORD_BITS_MAX = 24  # weights, activations, errors: the widest word the layers are specified for


@dataclass(frozen=True)
class Numerics:
    """Word widths, rounding and overflow for one layer (defaults from ``--bits``)."""

    weight_bits: int = setting(8, "word width of weights", lo=2, hi=WORD_BITS_MAX)
    act_bits: int = setting(8, "word width of activations (and of the input)", lo=2, hi=WORD_BITS_MAX)
    err_bits: int = setting(8, "word width of errors (dynamic exponent per batch)", lo=2, hi=WORD_BITS_MAX)
    bias_bits: int = setting(16, "word width of biases", lo=2, hi=MAX_WIDTH)
    acc_bits: int = setting(32, "accumulator register width; at least weight_bits + act_bits"
                            " and err_bits + weight_bits", lo=2, hi=MAX_WIDTH)
    acc_overflow: Overflow = setting(Overflow.AP_SAT, "accumulator overflow mode")
    act_rounding: Rounding = setting(Rounding.AP_RND, "rounding of activations")
    act_overflow: Overflow = setting(Overflow.AP_SAT, "overflow mode of activations")
    err_rounding: Rounding = setting(Rounding.AP_RND, "rounding of errors")
    update_rounding: Rounding = setting(Rounding.STOCHASTIC, "rounding of weight updates")
    weight_overflow: Overflow = setting(Overflow.AP_SAT, "overflow mode of weights")
    weight_headroom: int = setting(1, "spare integer bits above the initial |w| max", lo=0, hi=16)
    weight_int_bits: int | None = setting(None, "integer bits I of the weight format", lo=-16, hi=24,
                                          none="from the initial weights and weight_headroom")
    act_int_bits: int | None = setting(None, "integer bits I of the activation format", lo=-16, hi=24,
                                       none="calibrated from the training data")
    momentum_shift: int | None = setting(None, "momentum 1 - 2^-m", lo=1, hi=16, none="plain SGD")
    logit_headroom: int = setting(3, "extra integer bits of the output layer's format", lo=0, hi=16)
    update_norm_bits: int | None = setting(None, "normalized update: the largest step of a tensor has"
                                           " this many bits (2^(m-1)..2^m-1 LSBs)", lo=1, hi=WORD_BITS_MAX,
                                           none="plain lr-scaled SGD")

    @classmethod
    def from_bits(cls, bits: int, **kw) -> "Numerics":
        """Weights, activations and errors of ``bits`` bits, biases of twice as many (up to 32)."""
        spec = entry(cls, "weight_bits").spec
        if isinstance(bits, bool) or not isinstance(bits, Integral) or not spec.lo <= bits <= spec.hi:
            raise EdgeDFAError(f"--bits {bits!r}: supported word widths are {spec.lo:g}..{spec.hi:g}")
        bits = int(bits)
        return cls(weight_bits=bits, act_bits=bits, err_bits=bits, bias_bits=min(2 * bits, 32), **kw)

    def with_overrides(self, overrides: dict, where: str = "config") -> "Numerics":
        """Copy with keys from a config table; unknown keys or bad values name the key."""
        return replace(self, **{k: check_value(Numerics, k, v, where) for k, v in overrides.items()})

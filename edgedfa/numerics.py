"""Numeric settings of one layer: word widths, rounding and overflow modes (docs/datapath.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import EdgeDFAError
from .fixed import Overflow, Rounding


@dataclass(frozen=True)
class Numerics:
    """Word widths, rounding and overflow for one layer (defaults from ``--bits``)."""

    weight_bits: int = 8
    act_bits: int = 8
    err_bits: int = 8
    bias_bits: int = 16
    acc_bits: int = 32
    acc_overflow: Overflow = Overflow.AP_SAT
    act_rounding: Rounding = Rounding.AP_RND
    act_overflow: Overflow = Overflow.AP_SAT
    err_rounding: Rounding = Rounding.AP_RND
    update_rounding: Rounding = Rounding.STOCHASTIC
    weight_overflow: Overflow = Overflow.AP_SAT
    weight_headroom: int = 1  # spare integer bits above the initial |w| max
    weight_int_bits: int | None = None  # fixed I of the weight format (None: from init)
    act_int_bits: int | None = None  # fixed I of the activation format (None: calibrate)
    momentum_shift: int | None = None  # momentum 1 - 2^-m (None: plain SGD)
    logit_headroom: int = 3  # extra integer bits of the output layer's format
    update_norm_bits: int | None = None  # normalized update: largest step 2^(m-1)..2^m-1 LSBs

    @classmethod
    def from_bits(cls, bits: int, **kw) -> "Numerics":
        if not 2 <= int(bits) <= 24:
            raise EdgeDFAError(f"--bits {bits}: supported word widths are 2..24")
        b = int(bits)
        return cls(weight_bits=b, act_bits=b, err_bits=b, bias_bits=min(2 * b, 32), **kw)

    def with_overrides(self, overrides: dict, where: str = "config") -> "Numerics":
        """Copy with keys from a config table; unknown keys or bad values name the key."""
        kw = {}
        for key, val in overrides.items():
            if key not in self.__dataclass_fields__:
                valid = ", ".join(self.__dataclass_fields__)
                raise EdgeDFAError(f"{where}: unknown key {key!r}; expected one of {valid}")
            cur = getattr(self, key)
            if isinstance(cur, Rounding):
                val = Rounding.parse(val)
            elif isinstance(cur, Overflow):
                val = Overflow.parse(val)
            elif not isinstance(val, int) or isinstance(val, bool):
                if not (val is None and (key.endswith("int_bits") or key in ("momentum_shift", "update_norm_bits"))):
                    raise EdgeDFAError(f"{where}: {key} must be an integer, got {val!r}")
            kw[key] = val
        return replace(self, **kw)

"""Numeric settings of one layer: word widths, rounding and overflow modes, how formats move
while training and how parameters are updated (docs/datapath.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral

from .errors import EdgeDFAError
from .fixed import MAX_WIDTH, Overflow, Rounding
from .schema import check_value, entry, setting

WORD_BITS_MAX = 24  # weights, activations, errors: the widest word the layers are specified for
SCALINGS = ("adaptive", "static")
ADAPTIVE_MIN_BITS = 8  # the default scaling policy is adaptive from this width of weights and activations up
UPDATE_RULES = ("adam", "sgd")
BATCHNORM_MODES = ("train", "fold")
# activations and errors round deterministically: the datapath draws random words for the
# update unit only (§5), so STOCHASTIC is a value of update_rounding alone
DETERMINISTIC_ROUNDINGS = tuple(r.name for r in Rounding if r is not Rounding.STOCHASTIC)

# What a checkpoint written before a field existed meant by its absence (§6): static formats,
# SGD, recurrent gates and errors carried through time at the layer's own widths.
LEGACY = {"scaling": "static", "update_rule": "sgd", "gate_bits": "act_bits", "state_err_bits": "err_bits"}


@dataclass(frozen=True)
class Numerics:
    """Word widths, rounding and overflow for one layer (defaults from ``--bits``)."""

    weight_bits: int = setting(8, "word width of weights", lo=2, hi=WORD_BITS_MAX)
    act_bits: int = setting(8, "word width of activations (and of the input)", lo=2, hi=WORD_BITS_MAX)
    err_bits: int = setting(8, "word width of errors (dynamic exponent per batch)", lo=2, hi=WORD_BITS_MAX)
    bias_bits: int = setting(16, "word width of biases", lo=2, hi=MAX_WIDTH)
    acc_bits: int = setting(32, "accumulator register width; at least weight_bits + act_bits"
                            " and err_bits + weight_bits (--bits N sets max(32, min(48, 2N + 16)))",
                            lo=2, hi=MAX_WIDTH)
    acc_overflow: Overflow = setting(Overflow.AP_SAT, "accumulator overflow mode")
    act_rounding: Rounding = setting(Rounding.AP_RND, "rounding of activations (STOCHASTIC: updates only)",
                                     choices=DETERMINISTIC_ROUNDINGS)
    act_overflow: Overflow = setting(Overflow.AP_SAT, "overflow mode of activations")
    err_rounding: Rounding = setting(Rounding.AP_RND, "rounding of errors (STOCHASTIC: updates only)",
                                     choices=DETERMINISTIC_ROUNDINGS)
    update_rounding: Rounding = setting(Rounding.STOCHASTIC, "rounding of weight updates")
    weight_overflow: Overflow = setting(Overflow.AP_SAT, "overflow mode of weights")
    weight_headroom: int = setting(1, "spare integer bits above the initial |w| max", lo=0, hi=16)
    weight_int_bits: int | None = setting(None, "integer bits I of the initial weight format", lo=-16, hi=24,
                                          none="from the initial weights and weight_headroom")
    act_int_bits: int | None = setting(None, "integer bits I of the initial activation format", lo=-16, hi=24,
                                       none="calibrated from the training data")
    momentum_shift: int | None = setting(None, "SGD momentum 1 - 2^-m", lo=1, hi=16, none="plain SGD")
    logit_headroom: int = setting(3, "extra integer bits of the output layer's initial format", lo=0, hi=16)
    update_norm_bits: int | None = setting(None, "SGD normalized update: the largest step of a tensor has"
                                           " this many bits (2^(m-1)..2^m-1 LSBs)", lo=1, hi=WORD_BITS_MAX,
                                           none="plain lr-scaled SGD")
    scaling: str | None = setting(None, "adaptive: the exponents of weights, biases and activation formats"
                                  " move while training (datapath §13); static: fixed after calibration",
                                  choices=SCALINGS, none="adaptive when the layer's weights and activations"
                                  " have 8 bits or more, static below")
    exp_patience: int = setting(16, "steps with the top two bits of a format unused before its exponent"
                                " shrinks by one (§13)", lo=1, hi=1 << 20)
    update_rule: str | None = setting(None, "adam: per-parameter step lr * m / sqrt(v) in integers;"
                                      " sgd: lr-scaled gradient (momentum, normalized) (§12)",
                                      choices=UPDATE_RULES, none="sgd when momentum_shift or update_norm_bits"
                                      " is set, else adam")
    moment_bits: int = setting(16, "width of Adam's moment registers m and v", lo=4, hi=32)
    beta1_shift: int = setting(3, "Adam: m moves 2^-b of the way to g per step (beta1 = 1 - 2^-b)", lo=1, hi=16)
    beta2_shift: int = setting(10, "Adam: v moves 2^-b of the way to g^2 per step (beta2 = 1 - 2^-b)",
                               lo=1, hi=24)
    gate_bits: int | None = setting(None, "width of recurrent gates (GRU z, r, n; LSTM i, o, f, g, tanh c)",
                                    lo=2, hi=16, none="max(16, act_bits)")
    state_err_bits: int | None = setting(None, "width of the errors a recurrent cell carries through time",
                                         lo=2, hi=WORD_BITS_MAX, none="max(16, err_bits)")
    batchnorm: str = setting("train", "train: an ONNX BatchNormalization is a layer that normalises with the"
                             " batch's statistics and trains scale and bias (datapath §8.7); fold: folded into"
                             " the Conv/Dense before it (a per-channel affine layer when there is none)",
                             choices=BATCHNORM_MODES)

    @classmethod
    def from_bits(cls, bits: int, **kw) -> "Numerics":
        """Weights, activations and errors of ``bits`` bits, biases of twice as many (up to 32),
        accumulators of two operand widths and 16 bits of sum (at least 32, at most 48)."""
        spec = entry(cls, "weight_bits").spec
        if isinstance(bits, bool) or not isinstance(bits, Integral) or not spec.lo <= bits <= spec.hi:
            raise EdgeDFAError(f"--bits {bits!r}: supported word widths are {spec.lo:g}..{spec.hi:g}")
        bits = int(bits)
        kw.setdefault("acc_bits", max(32, min(MAX_WIDTH, 2 * bits + 16)))
        return cls(weight_bits=bits, act_bits=bits, err_bits=bits, bias_bits=min(2 * bits, 32), **kw)

    def with_overrides(self, overrides: dict, where: str = "config") -> "Numerics":
        """Copy with keys from a config table; unknown keys or bad values name the key."""
        return replace(self, **{k: check_value(Numerics, k, v, where) for k, v in overrides.items()})

    # ---- values derived from the fields: engine, hdl_models and exports read these
    @property
    def rule(self) -> str:
        """The update rule in force: the field, or SGD when an SGD option is set."""
        if self.update_rule is not None:
            return self.update_rule
        return "sgd" if self.momentum_shift is not None or self.update_norm_bits is not None else "adam"

    @property
    def policy(self) -> str:
        """The scaling policy in force: the field, or the default by width. Below 8 bits a
        peak-following exponent ratchets up on the noise of stochastic updates (a format with
        3 magnitude bits grows whenever any of thousands of weights random-walks to code 4,
        and never finds the quiet steps to shrink): measured at 4 bits, the built-in MLP
        trains to 0.10 adaptive and 0.95 static, at 6 bits 0.961 and 0.978
        (docs/benchmarks.md, "Design space")."""
        if self.scaling is not None:
            return self.scaling
        return "adaptive" if min(self.weight_bits, self.act_bits) >= ADAPTIVE_MIN_BITS else "static"

    @property
    def adaptive(self) -> bool:
        return self.policy == "adaptive"

    @property
    def gate_width(self) -> int:
        """Width of a recurrent cell's gates (as TFLite's integer LSTM keeps 16-bit gates)."""
        return self.gate_bits if self.gate_bits is not None else max(16, self.act_bits)

    @property
    def state_err_width(self) -> int:
        """Width of the errors a recurrent cell carries back through time (§9.7)."""
        return self.state_err_bits if self.state_err_bits is not None else max(16, self.err_bits)


def legacy_fields(stored: dict) -> dict:
    """Numerics fields a stored dict lacks, as the release that wrote it meant them."""
    out = {}
    for key, meaning in LEGACY.items():
        if key not in stored:
            out[key] = stored.get(meaning, 8) if meaning in ("act_bits", "err_bits") else meaning
    return out

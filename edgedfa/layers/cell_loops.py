"""The recurrent cells' time loops in compiled code (kernels/cells.py) and when they apply.

``COMPILED`` switches between them and the Python cells of ``recurrent.py``, which stay the
reference (as ``fixed.COMPILED`` does for the rounding): both give the same bits. The
compiled loop is not taken, and the reference runs, for stochastic activation rounding and
wherever a step's shifts leave what the loop covers (the kernel reports it).
"""

from __future__ import annotations

import functools

import numpy as np

from .. import fixed
from ..fixed import _OVERFLOW_CODE, _ROUNDING_CODE, FixedFormat, Overflow, QTensor, Rounding, acc_format
from ..kernels.acc import EXACT, max_abs, register_mode
from ..lut import TANH_TABLE
from ..scaling import in_range, observed

COMPILED = True  # False: every cell runs in Python, one call per time step (the reference)


class StepRecords:
    """A direction's per-step records stacked as (T, N, H) arrays: ``recs[s]`` is the dict of
    QTensors the Python cell records for step s, ``recs.stack(key)`` all steps at once."""

    def __init__(self, steps: int, arrays: dict, fmts: dict):
        self.steps, self.arrays, self.fmts = steps, arrays, fmts

    @classmethod
    def of(cls, recs: list) -> "StepRecords":
        """Stack the dicts the Python cells returned (every step has the same formats)."""
        if not recs:
            return cls(0, {}, {})
        return cls(len(recs), {k: np.stack([r[k].codes for r in recs]) for k in recs[0]},
                   {k: t.fmt for k, t in recs[0].items()})

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, s: int) -> dict:
        if not -self.steps <= s < self.steps:
            raise IndexError(s)
        return {k: QTensor(a[s], self.fmts[k]) for k, a in self.arrays.items()}

    def stack(self, key: str) -> QTensor:
        return QTensor(self.arrays[key], self.fmts[key])


def requantize_into(out: np.ndarray, t: QTensor, fmt: FixedFormat, rounding, overflow) -> None:
    """out[...] = fixed.requantize(t.codes, t.fmt, fmt, rounding, overflow): one compiled pass
    (any shift up to 62 bits, none included) for a 2-D block and a deterministic rounding."""
    shift = t.fmt.frac_bits - fmt.frac_bits
    if not (COMPILED and rounding is not Rounding.STOCHASTIC and shift <= 62 and out.ndim == 2
            and out.flags.c_contiguous and t.codes.flags.c_contiguous):
        out[...] = fixed.requantize(t.codes, t.fmt, fmt, rounding, overflow)
        return
    from ..kernels import cells

    lo = -fmt.max_code if overflow is Overflow.AP_SAT_SYM and fmt.signed else fmt.min_code
    cells.requantize_block(t.codes, shift, _ROUNDING_CODE[rounding], lo, fmt.max_code, _OVERFLOW_CODE[overflow],
                           fmt.width, out)


def covers(layer, steps: int) -> bool:
    """Whether the compiled forward loop applies to this layer's numerics."""
    return COMPILED and steps > 0 and layer.num.act_rounding is not Rounding.STOCHASTIC


def forward_formats(layer) -> np.ndarray:
    """kernels.cells' ``fmt`` row: the gate and state formats, activation rounding and overflow."""
    num, g, h = layer.num, layer.gate_fmt, layer.h_fmt
    h_lo = -h.max_code if num.act_overflow is Overflow.AP_SAT_SYM else h.min_code
    return np.array([g.frac_bits, g.min_code, g.max_code, g.width, h.frac_bits, h_lo, h.max_code, h.width,
                     _ROUNDING_CODE[num.act_rounding], _OVERFLOW_CODE[num.act_overflow]], np.int64)


def recurrent_register(layer, d, operand_fmt):
    """(R[d]^T in the GEMM's type, bias init, has bias, acc row, F_op + F_R) for the recurrent
    GEMM of an operand in ``operand_fmt``; None when a single product could reach 2^62 (the
    reference decides). The sum is exact, in int32 where it fits, when the bound
    ``H * max|operand| * max|R| + max|init|`` fits the register (as kernels/fast.py reasons)."""
    R = layer.params["R"]
    frac = operand_fmt.frac_bits + R.fmt.frac_bits
    if not -64 <= frac <= 64:  # the accumulator's format would not exist: the reference raises
        return None
    init = layer._bias(d, 1, frac)
    amax, rmax = 1 << (operand_fmt.width - 1), max_abs(R.codes[d])
    if amax * rmax >= 1 << 62:
        return None
    bound = R.codes.shape[-1] * amax * rmax + (max_abs(init) if init is not None else 0)
    lo, hi, mode, bits = register_mode(layer.num.acc_bits, layer.num.acc_overflow, bound)
    dtype = np.int32 if mode == EXACT and bound < (1 << 31) else np.int64
    rt = np.ascontiguousarray(R.codes[d].T, dtype=dtype)
    rb = np.zeros(rt.shape[1], np.int64) if init is None else np.ascontiguousarray(init[0], np.int64)
    acc = np.array([lo, hi, mode, bits, mode == EXACT], np.int64)
    return rt, rb, init is not None, acc, frac


def gru_forward(layer, d, xg: QTensor, train: bool):
    """(h per step, final state, records) of one GRU direction, or None: the reference runs."""
    T, N, G3 = xg.codes.shape
    reg = recurrent_register(layer, d, layer.h_fmt) if covers(layer, T) else None
    if reg is None:
        return None
    from ..kernels import cells  # compiles on first use: models without a cell never pay for it

    rt, rb, has_bias, acc, fr = reg
    H = G3 // 3
    cut = G3 if layer.lbr else 2 * H  # lbr 0: the h rows multiply r*h, a GEMM of their own
    blocks = (np.ascontiguousarray(rt[:, :cut]), np.ascontiguousarray(rt[:, cut:]), rb[:cut].copy(), rb[cut:].copy())
    keys = ("h_prev", "h", "z", "r", "n", "hh" if layer.lbr else "rh")
    out = {k: np.empty((T, N, G3 // 3), np.int64) for k in keys}
    status = cells.gru_forward(np.ascontiguousarray(xg.codes), xg.fmt.frac_bits, *blocks, has_bias, acc, fr,
                               layer.lbr, forward_formats(layer), TANH_TABLE, *out.values())
    if status:
        return None
    hs = out.pop("h")
    g, h = layer.gate_fmt, layer.h_fmt
    fmts = {"h_prev": h, "z": g, "r": g, "n": g,
            "hh" if layer.lbr else "rh": acc_format(layer.num.acc_bits, fr) if layer.lbr else h}
    return hs, {"h": QTensor(hs[-1].copy(), h)}, (StepRecords(T, out, fmts) if train else None)


def error_register(layer, d, acc_bits: int):
    """(R[d] in the GEMM's type, acc row) for the backward GEMMs of the cell's errors by R[d]
    (``acc_bits``: ``recurrent.grad_acc_bits``): errors have state_err_width bits, so
    ``G·H · 2^(E-1) · max|R|`` bounds every partial sum; None past 62-bit products."""
    R, E = layer.params["R"].codes[d], layer.num.state_err_width
    amax, rmax = 1 << (E - 1), max_abs(R)
    if amax * rmax >= 1 << 62:
        return None
    bound = R.shape[0] * amax * rmax
    lo, hi, mode, bits = register_mode(acc_bits, layer.num.acc_overflow, bound)
    dtype = np.int32 if mode == EXACT and bound < (1 << 31) else np.int64
    return np.ascontiguousarray(R, dtype=dtype), np.array([lo, hi, mode, bits, mode == EXACT], np.int64)


def chain_covers(layer, recs) -> bool:
    """Whether the compiled BPTT chain applies (deterministic error rounding, stacked records)."""
    return COMPILED and isinstance(recs, StepRecords) and len(recs) > 0 \
        and layer.num.err_rounding is not Rounding.STOCHASTIC


def injections(recs, chain, inj_h):
    """The errors a chain injects at h as (T, N, H) codes and per-step fractions (NONE: none)."""
    from ..kernels import cells

    T, N, H = recs.arrays["h_prev"].shape
    inj, frac = np.zeros((T, N, H), np.int64), np.full(T, cells.NONE, np.int64)
    for s in chain[2]:
        e = inj_h.get(s)
        if e is not None:
            inj[s], frac[s] = e.codes, e.fmt.frac_bits
    return inj, frac


def run_chain(layer, d, recs, chain, acc_bits: int, frac_max: int, width: int, kernel, separate: bool = False):
    """A compiled BPTT chain (``Recurrent._run_chain``): the backward register, the outputs,
    ``kernel(rt, acc, err, reached, dA, fa, dR, fr, tallies)``, the narrowings tallied as the
    reference tallies them; {step: (dA, dR)} for the steps an error reaches (dR the same
    object as dA unless ``separate``), or None: the reference runs."""
    reg = error_register(layer, d, acc_bits) if chain_covers(layer, recs) else None
    if reg is None:
        return None
    from ..kernels import cells

    T, N, _ = recs.arrays["h_prev"].shape
    num = layer.num
    err = np.array([num.state_err_width, _ROUNDING_CODE[num.err_rounding], frac_max], np.int64)
    reached, tallies = np.zeros(T, np.int64), np.zeros(3, np.int64)
    dA, dR = np.zeros((T, N, width), np.int64), np.zeros((T, N, width), np.int64)
    fa, fr = np.full(T, cells.NONE, np.int64), np.full(T, cells.NONE, np.int64)
    if kernel(*reg, err, reached, dA, fa, dR, fr, tallies):
        return None
    if tallies[0] and fixed.NARROW_TALLIES:
        fixed.NARROW_TALLIES[-1](int(tallies[0]), int(tallies[1]), int(tallies[2]))
    E, out = num.state_err_width, {}
    for s in np.flatnonzero(reached):
        da = QTensor(dA[s], FixedFormat.with_frac(E, int(fa[s]))) if fa[s] != cells.NONE else None
        dr = QTensor(dR[s], FixedFormat.with_frac(E, int(fr[s]))) if fr[s] != cells.NONE else None
        out[int(s)] = (da, dr if separate else da)
    return out


def gru_chain(layer, d, recs, chain, inj_h, acc_bits: int, frac_max: int):
    """``Recurrent._run_chain`` of a GRU (``GRU.cell_back``) in compiled code, or None."""
    from ..kernels import cells

    a, (start, stop, _, carry) = recs.arrays, chain
    T, N, H = a["z"].shape
    inj, inj_frac = injections(recs, chain, inj_h)
    hh = a["hh"] if layer.lbr else np.zeros((T, N, H), np.int64)
    hh_frac = recs.fmts["hh"].frac_bits if layer.lbr else 0

    def kernel(rt, acc, err, reached, dA, fa, dR, fr, tallies):
        return cells.gru_chain(start, stop, carry, layer.lbr, inj, inj_frac, a["z"], a["r"], a["n"], a["h_prev"], hh,
                               hh_frac, rt, np.ascontiguousarray(rt[:2 * H]), np.ascontiguousarray(rt[2 * H:]),
                               layer.params["R"].fmt.frac_bits, acc, forward_formats(layer), err, reached, dA, fa,
                               dR, fr, tallies)

    return run_chain(layer, d, recs, chain, acc_bits, frac_max, 3 * H, kernel, separate=bool(layer.lbr))


def lstm_chain(layer, d, recs, chain, inj_h, inj_c, acc_bits: int, frac_max: int):
    """``Recurrent._run_chain`` of an LSTM (``LSTM.cell_back``) in compiled code, or None."""
    from ..kernels import cells

    a, (start, stop, _, carry) = recs.arrays, chain
    inj, inj_frac = injections(recs, chain, inj_h)
    injc, injc_frac = injections(recs, chain, inj_c)

    def kernel(rt, acc, err, reached, dA, fa, dR, fr, tallies):
        return cells.lstm_chain(start, stop, carry, inj, inj_frac, injc, injc_frac, a["i"], a["o"], a["f"], a["g"],
                                a["tc"], a["c_prev"], recs.fmts["c_prev"].frac_bits, rt,
                                layer.params["R"].fmt.frac_bits, acc, forward_formats(layer), err, reached, dA, fa,
                                tallies)

    return run_chain(layer, d, recs, chain, acc_bits, frac_max, 4 * a["i"].shape[-1], kernel)


def rnn_chain(layer, d, recs, chain, inj_h, acc_bits: int, frac_max: int):
    """``Recurrent._run_chain`` of an Elman RNN (``RNN.cell_back``) in compiled code, or None."""
    from ..kernels import cells

    a, (start, stop, _, carry), h = recs.arrays, chain, recs.fmts["h"]
    inj, inj_frac = injections(recs, chain, inj_h)
    act = ACTIVATIONS[layer.activations[d][0]]

    def kernel(rt, acc, err, reached, dA, fa, dR, fr, tallies):
        return cells.rnn_chain(start, stop, carry, inj, inj_frac, a["h"], h.frac_bits, h.width, act, rt,
                               layer.params["R"].fmt.frac_bits, acc, err, reached, dA, fa, tallies)

    return run_chain(layer, d, recs, chain, acc_bits, frac_max, a["h"].shape[-1], kernel)


# --------------------------------------------------------------------------- LSTM and RNN forward

ACTIVATIONS = {"Tanh": 0, "Sigmoid": 1, "Relu": 2}  # kernels.cells' TANH, SIGMOID, RELU


@functools.lru_cache(maxsize=64)
def observe_limits(out_fmt: FixedFormat):
    """scaling.in_range of ``out_fmt`` for every wide fraction -64..64 (the compiled loops
    index it by fraction + 64)."""
    rows = np.array([in_range(f, out_fmt) for f in range(-64, 65)], np.int64)
    return np.ascontiguousarray(rows[:, 0]), np.ascontiguousarray(rows[:, 1])


def record_observations(layer, key: str, obs: np.ndarray, count: int) -> None:
    """The compiled loop's per-step figures [min, max, clipped, zeroed, fraction] into the
    exponent unit, step by step as ``scaling.observe`` records them."""
    for mn, mx, clipped, zeroed, frac in obs.tolist():
        observed(layer, key, max(-mn, mx), frac, count, clipped, zeroed)


def lstm_forward(layer, d, xg: QTensor, train: bool, stats):
    """(h per step, final h and c, records) of one LSTM direction, or None: the reference runs
    (also for calibration, whose statistics the Python cells collect)."""
    T, N, G4 = xg.codes.shape
    reg = recurrent_register(layer, d, layer.h_fmt) if covers(layer, T) and stats is None else None
    if reg is None:
        return None
    from ..kernels import cells

    rt, rb, has_bias, acc, fr = reg
    cell, num, H = layer.cell_fmt, layer.num, G4 // 4
    c_lo = -cell.max_code if num.act_overflow is Overflow.AP_SAT_SYM else cell.min_code
    cfmt = np.array([cell.frac_bits, c_lo, cell.max_code, cell.width], np.int64)
    out = {k: np.empty((T, N, H), np.int64) for k in ("h_prev", "c_prev", "h", "c", "i", "o", "f", "g", "tc")}
    obs = np.zeros((T, 5), np.int64)
    if cells.lstm_forward(np.ascontiguousarray(xg.codes), xg.fmt.frac_bits, rt, rb, has_bias, acc, fr,
                          forward_formats(layer), cfmt, TANH_TABLE, bool(layer._observing), *observe_limits(cell),
                          *out.values(), obs):
        return None
    if layer._observing:
        record_observations(layer, "c", obs, N * H)
    hs, cs = out.pop("h"), out.pop("c")
    g, h = layer.gate_fmt, layer.h_fmt
    fmts = {"h_prev": h, "c_prev": cell, "i": g, "o": g, "f": g, "g": g, "tc": g}
    final = {"h": QTensor(hs[-1].copy(), h), "c": QTensor(cs[-1].copy(), cell)}
    return hs, final, (StepRecords(T, out, fmts) if train else None)


def rnn_forward(layer, d, xg: QTensor, train: bool, stats):
    """(h per step, final h, records) of one Elman RNN direction, or None: the reference runs
    (calibration; a tanh / sigmoid direction beside a relu one, whose h changes format)."""
    T, N, H = xg.codes.shape
    act = layer.activations[d][0]
    mixed = act != "Relu" and layer.gate_fmt != layer.h_fmt
    reg = recurrent_register(layer, d, layer.h_fmt) if covers(layer, T) and stats is None and not mixed else None
    if reg is None:
        return None
    from ..kernels import cells

    rt, rb, has_bias, acc, fr = reg
    observing = bool(layer._observing) and act == "Relu"
    out = {k: np.empty((T, N, H), np.int64) for k in ("h_prev", "h")}
    obs = np.zeros((T, 5), np.int64)
    if cells.rnn_forward(np.ascontiguousarray(xg.codes), xg.fmt.frac_bits, rt, rb, has_bias, acc, fr,
                         ACTIVATIONS[act], forward_formats(layer), TANH_TABLE, observing,
                         *observe_limits(layer.h_fmt), *out.values(), obs):
        return None
    if observing:
        record_observations(layer, "out", obs, N * H)
    h = layer.h_fmt
    recs = StepRecords(T, out, {"h_prev": h, "h": h}) if train else None
    return out["h"], {"h": QTensor(out["h"][-1].copy(), h)}, recs

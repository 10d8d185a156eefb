"""One training step of ``edgedfa emulate`` replayed through the RTL units.

``recording()`` wraps the hdl_models units while ``emulate`` runs a step and keeps every call's inputs
and outputs: requantizations, block-exponent narrowings, GEMMs, error projections and
parameter updates. ``replay()`` drives the same inputs through the RTL (the per-unit
testbenches' check functions, which compare every output with hdl_models cycle by cycle),
checks that hdl_models' outputs are the ones the step produced, and narrowings go through
the RTL chain max tracker -> shift (§7) -> requant. A mismatch raises AssertionError.
"""

from __future__ import annotations

import contextlib
import inspect
import sys

import numpy as np

import test_rtl_mac_array as mac
import test_rtl_requant as rq
import test_rtl_sparse_epu as epu
import test_rtl_update as upd
from rtlsim import Stream, lanes_of, pack
from edgedfa.fixed import FixedFormat, Overflow, Rounding
from hdl_models import requant_unit
from hdl_models.error_projection_unit import ErrorProjectionUnit
from hdl_models.mac_array import MacArray
from hdl_models.requant_unit import MAX_TRACKER_LATENCY
from hdl_models.rtl import MODE_PORT
from hdl_models.update_unit import UpdateUnit

from edgedfa.cosim import emulate

LANES = 4
SH_W = 8


def _codes(x) -> np.ndarray:
    return np.array(x, dtype=np.int64).ravel()


def _bits(x) -> int:
    """Signed width that holds every code of x."""
    return int(np.abs(_codes(x)).max(initial=0)).bit_length() + 1


@contextlib.contextmanager
def recording():
    """Every requant / narrow / GEMM / projection / update call hdl_models makes meanwhile."""
    calls = {k: [] for k in ("requant", "narrow", "gemm", "project", "update")}
    orig_requant, orig_narrow = requant_unit.requant, requant_unit.narrow

    def rec_requant(x, f_src, dst, rounding, overflow, rand=None):
        out = orig_requant(x, f_src, dst, rounding, overflow, rand)
        calls["requant"].append(dict(x=_codes(x), f_src=int(f_src), dst=dst, rounding=Rounding.parse(rounding),
                                     overflow=Overflow.parse(overflow), rand=None if rand is None else _codes(rand),
                                     out=_codes(out)))
        return out

    def rec_narrow(x, f_src, err_width, rounding):
        codes, fmt = orig_narrow(x, f_src, err_width, rounding)
        calls["narrow"].append(dict(x=_codes(x), f_src=int(f_src), err_width=int(err_width),
                                    rounding=Rounding.parse(rounding), out=_codes(codes), fmt=fmt))
        return codes, fmt

    def recorder(kind, method):
        sig = inspect.signature(method)

        def wrapped(self, *args, **kwargs):
            out = method(self, *args, **kwargs)
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            calls[kind].append(dict(bound.arguments, out=out))
            return out
        return wrapped

    patched = [(m, a, getattr(m, a)) for name, m in list(sys.modules.items())
               if name == "hdl_models" or name.startswith("hdl_models.")
               for a, orig in (("requant", orig_requant), ("narrow", orig_narrow)) if getattr(m, a, None) is orig]
    patched += [(MacArray, "gemm", MacArray.gemm), (UpdateUnit, "apply", UpdateUnit.apply),
                (ErrorProjectionUnit, "project", ErrorProjectionUnit.project)]
    wrappers = {"requant": rec_requant, "narrow": rec_narrow}
    for owner, attr, orig in patched:
        kind = {"apply": "update"}.get(attr, attr)
        setattr(owner, attr, wrappers.get(attr) or recorder(kind, orig))
    try:
        yield calls
    finally:
        for owner, attr, orig in patched:
            setattr(owner, attr, orig)


def _groups(items, key) -> dict:
    out: dict = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def replay_requant(units, calls) -> int:
    def case(c):
        s = c["f_src"] - c["dst"].frac_bits
        assert -(1 << (SH_W - 1)) <= s < (1 << (SH_W - 1)), f"shift {s} beyond the {SH_W}-bit port"
        rand = c["rand"] if c["rand"] is not None else np.zeros(len(c["x"]), dtype=np.int64)
        return dict(s=s, x=[int(v) for v in c["x"]], rand=[int(v) for v in rand], rounding=c["rounding"],
                    overflow=c["overflow"], f_dst=c["dst"].frac_bits, gap=0)

    by_fmt = _groups(calls, lambda c: (c["dst"].width, c["dst"].signed, 48 if _bits(c["x"]) <= 48 else 64))
    for (out_w, signed, in_w), group in by_fmt.items():
        cases = [case(c) for c in group]
        for c, ex in zip(group, cases):  # hdl_models recomputes exactly what the step produced
            assert rq.expected(ex, out_w, signed)[1] == [int(v) for v in c["out"]]
        rq.check(units, dict(LANES=LANES, IN_W=in_w, OUT_W=out_w, OUT_SIGNED=int(signed)), cases)
    return sum(len(c["x"]) for c in calls)


def rtl_bitlen(units, tensors: list) -> list:
    """bitlen(max|x|) of each tensor from the RTL max tracker (one simulation)."""
    in_w = max(48, max(_bits(x) for x in tensors))
    unit = units.get("max_tracker", LANES=LANES, IN_W=in_w)
    prog = Stream(dict(clear=0, in_valid=0, din=0, flag=0))
    ends = []
    for x in tensors:
        for r, row in enumerate(lanes_of(x, LANES)):
            t = prog.cycle(clear=int(r == 0), in_valid=1, din=pack(row, in_w))
        ends.append(t + MAX_TRACKER_LATENCY - 1)
    trace = prog.run(unit, ["out_valid", "bitlen"])
    assert all(trace[c]["out_valid"] == 1 for c in ends)
    return [trace[c]["bitlen"] for c in ends]


def replay_narrow(units, calls) -> int:
    """§7 in RTL: the tracker's bitlen gives s = max(0, bitlen - (E - 1)); the requant unit
    shifts, rounds and saturates to ap_fixed<E>. The shift must give the step's format."""
    cases = []
    for c, bl in zip(calls, rtl_bitlen(units, [c["x"] for c in calls])):
        s = max(0, bl - (c["err_width"] - 1))
        assert c["f_src"] - s == c["fmt"].frac_bits, "the max tracker's shift is not the step's block exponent"
        cases.append(dict(x=c["x"], f_src=c["f_src"], dst=FixedFormat.with_frac(c["err_width"], c["f_src"] - s),
                          rounding=c["rounding"], overflow=Overflow.AP_SAT, rand=None, out=c["out"]))
    return replay_requant(units, cases)


def replay_gemm(units, calls) -> int:
    def case(c):
        a, b, init = np.asarray(c["a"], dtype=np.int64), np.asarray(c["b"], dtype=np.int64), c["init"]
        if init is not None:
            init = np.broadcast_to(np.asarray(init, dtype=np.int64), (len(a), b.shape[1]))
            assert (init == init[:1]).all(), "the RTL array takes one initial value per column"
            init = init[:1].copy()
        return dict(a=a, b=b, init=init, overflow=Overflow.parse(c["acc_overflow"]), gap=0)

    # binary feedback is 1 bit in the model's traffic count but +-1 needs 2 signed bits in a PE
    key = lambda c: (c["self"].rows, c["self"].cols, max(c["a_width"], _bits(c["a"])),  # noqa: E731
                     max(c["b_width"], _bits(c["b"])), c["acc_width"])
    for (rows, cols, a_w, b_w, acc_w), group in _groups(calls, key).items():
        cases = [case(c) for c in group]
        for c, g in zip(group, cases):
            assert (np.asarray(c["out"][0]) == MacArray(rows, cols).gemm(
                g["a"], g["b"], g["init"], acc_w, g["overflow"], a_w, b_w)[0]).all()
        mac.check_array(units, dict(ROWS=rows, COLS=cols, A_W=a_w, B_W=b_w, ACC_W=acc_w, OVF=MODE_PORT), cases)
    return sum(int(np.size(c["out"][0])) for c in calls)


def replay_project(units, calls) -> int:
    cases = []
    for c in (c for c in calls if c["f"].kind == "sparse"):  # dense / channel: replayed as GEMMs
        f, e = c["f"], np.asarray(c["e"], dtype=np.int64).reshape(len(c["e"]), -1)
        cases.append((c["stored"] is None, dict(fb=f.fb, layer=f.index, seed=f.seed, c=f.n_classes,
                                                n_target=f.n_target, batch=len(e), e=e, f_e=int(c["f_e"]), gap=0)))
    for regen, group in _groups(cases, lambda t: t[0]).items():
        exs = [ex for _, ex in group]
        for values, same in _groups(exs, lambda ex: (ex["fb"]["values"], int(ex["fb"].get("bits", 8)))).items():
            kind, vb = values
            p = dict(LANES=LANES, E_W=max(_bits(ex["e"]) for ex in same), VALUES=epu.KIND[kind], VB=vb,
                     K_MAX=max(4, max(ex["fb"].get("k", 1) for ex in same)), C_W=12, N_W=16, BB_W=8, A_W=20,
                     REGEN=int(regen))
            epu.check_projections(units, p, same)
    return sum(np.size(c["e"]) for c in calls if c["f"].kind == "sparse")


def replay_update(units, calls) -> int:
    cases = []
    for a in calls:
        ex = dict(p=[int(v) for v in _codes(a["p"])], g=[int(v) for v in _codes(a["g"])], f_p=a["p_fmt"].frac_bits,
                  f_g=int(a["f_g"]), lr=int(a["lr_shift"]), rounding=Rounding.parse(a["rounding"]),
                  overflow=Overflow.parse(a["weight_overflow"]), seed=int(a["seed"]), layer=int(a["layer_index"]),
                  purpose=int(a["purpose"]), step=int(a["step"]), gap=0, p_w=a["p_fmt"].width)
        if a.get("norm_bits") is not None:
            ex.update(norm_bits=int(a["norm_bits"]), lr_base=a.get("lr_base"))
        if a.get("momentum_shift") is not None:
            v = a.get("velocity")
            ex.update(m=int(a["momentum_shift"]), v=[int(x) for x in (_codes(v) if v is not None else [0] * len(ex["p"]))])
        cases.append((a, ex))
    norm = [ex for _, ex in cases if "norm_bits" in ex]
    for ex, bl in zip(norm, rtl_bitlen(units, [ex["g"] for ex in norm]) if norm else []):
        base = ex["lr"] if ex["lr_base"] is None else ex["lr_base"]
        ex["s"] = bl - ex["norm_bits"] + (ex["lr"] - base)  # §12: the normalized shift from the tracker
    for c, ex in cases:
        ex.setdefault("s", ex["f_g"] - ex["f_p"] + ex["lr"])
        new, n_sat, vel = upd.model_update(ex, dict(P_W=ex["p_w"], LANES=LANES))
        assert (_codes(new) == _codes(c["out"][0])).all() and n_sat == c["out"][1]
    groups = _groups([ex for _, ex in cases], lambda ex: (ex["p_w"], "m" in ex, max(32, _bits(ex["g"]))))
    for (p_w, momentum, g_w), group in groups.items():
        upd.check_updates(units, dict(LANES=LANES, G_W=g_w, P_W=p_w, MOMENTUM=int(momentum)), group)
    return sum(len(ex["p"]) for _, ex in cases)


__all__ = ["REPLAYS", "emulate", "recording", "replay"]

REPLAYS = {"requant": replay_requant, "narrow": replay_narrow, "gemm": replay_gemm, "project": replay_project,
           "update": replay_update}


def replay(units, calls: dict) -> list:
    """(kind, calls, elements) per kind, every one bit-exact (else AssertionError)."""
    return [(kind, len(calls[kind]), REPLAYS[kind](units, calls[kind])) for kind in REPLAYS if calls[kind]]

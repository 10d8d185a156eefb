"""Exponent management (docs/datapath.md §13): per-tensor exponents that move while training.

A managed format (a parameter's, a layer output's, an LSTM cell's) keeps the largest value
of its tensor in the top half of the code range but one: after every step, the exponent
unit reads ``b = bitlen(max|x|)`` in the format's LSBs (a max tracker and a leading-one
detector) and

- grows the format at once when ``b >= W - 1`` (the top bit is in use: one step from
  saturating), by ``b - (W - 2)`` bits, so the largest value again has ``W - 2`` bits;
- shrinks it by one bit when ``b <= W - 3`` has held for ``exp_patience`` steps in a row,
  never finer than its floor (a parameter's initial format; for an output, the fraction of
  the wide value it is requantized from).

Parameters are stored codes: a change rescales them (right shift rounded to nearest even,
or an exact left shift). Outputs are recomputed every step, so a change takes effect in
the next forward pass. Besides the peaks, the layers tally per tensor how many values
were clipped at the rails and how many non-zero values were rounded to zero (metrics).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from . import fixed
from .fixed import NARROW_TALLIES, FixedFormat, QTensor, round_shift

LOW = "exp_low:"  # layer.state key prefix: consecutive low steps of a managed format
FLOOR = "exp_floor:"  # layer.state key prefix: the finest fraction a parameter may take


def decide(b: int, width: int, low: int, patience: int) -> tuple:
    """(change of the integer bits, new low count) for a peak of ``b`` bits."""
    if b >= width - 1:
        return b - (width - 2), 0
    if b <= width - 3:
        low += 1
        return (-1, 0) if low >= patience else (0, low)
    return 0, 0


def peak_bits(maxabs: int, src_frac: int, fmt: FixedFormat) -> int:
    """bitlen of a wide magnitude (``src_frac`` fraction bits) in ``fmt``'s LSBs (floor)."""
    s = src_frac - fmt.frac_bits
    return int(maxabs >> s if s >= 0 else maxabs << -s).bit_length()


def moved(fmt: FixedFormat, delta: int) -> FixedFormat:
    return FixedFormat(fmt.width, fmt.int_bits + delta, fmt.signed)


# --------------------------------------------------------------------------- tallies

TALLY = "tally:"  # layer.state key prefix: [values seen, clipped at a rail, rounded to zero]
MOVES = "moves:"  # layer.state key prefix: exponent moves of a managed format


def tally(layer, key: str, count: int, clipped: int = 0, zeroed: int = 0) -> None:
    """Add to the layer's per-tensor counters (kept in its state: a resumed run goes on counting;
    a state key holds no "/")."""
    t = layer.state.get(TALLY + key)
    layer.state[TALLY + key] = np.array([count, clipped, zeroed], np.int64) + (0 if t is None else t)


def _moved(layer, key: str) -> None:
    layer.state[MOVES + key] = np.array(int(layer.state.get(MOVES + key, 0)) + 1)


@contextmanager
def tallying(layer, key: str):
    """Count every narrowing done inside the block (a layer's errors) under ``key``."""
    NARROW_TALLIES.append(lambda n, clipped, zeroed: tally(layer, key, n, clipped, zeroed))
    try:
        yield
    finally:
        NARROW_TALLIES.pop()


def observe(layer, key: str, wide: QTensor, out_fmt: FixedFormat, out_codes=None) -> None:
    """A wide value about to be requantized into ``out_fmt`` (forward, training): its peak
    for the exponent unit, and the clipped / rounded-to-zero counts."""
    c = wide.codes
    if not c.size:
        return
    lo, hi = in_range(wide.fmt.frac_bits, out_fmt)
    if fixed.COMPILED and c.dtype == np.int64:
        from .rounding import observe_counts

        flat = np.ascontiguousarray(c).reshape(-1)
        has_out = out_codes is not None
        outs = np.ascontiguousarray(out_codes, dtype=np.int64).reshape(-1) if has_out else flat
        mn, mx, clipped, zeroed = observe_counts(flat, lo, hi, outs, has_out)
    else:
        mn, mx = c.min(), c.max()
        clipped = np.count_nonzero((c < lo) | (c > hi))
        zeroed = 0 if out_codes is None else np.count_nonzero((out_codes == 0) & (c != 0))
    observed(layer, key, max(-int(mn), int(mx)), wide.fmt.frac_bits, c.size, clipped, zeroed)


def in_range(frac: int, out_fmt: FixedFormat) -> tuple:
    """(lo, hi): the wide codes with ``frac`` fraction bits that land inside ``out_fmt``'s range,
    clamped to int64 (a bound beyond it excludes no int64 code either way)."""
    s = frac - out_fmt.frac_bits
    lo, hi = ((out_fmt.min_code << s, ((out_fmt.max_code + 1) << s) - 1) if s >= 0 else
              (-((-out_fmt.min_code) >> -s), out_fmt.max_code >> -s))
    return max(lo, -(1 << 63)), min(hi, (1 << 63) - 1)


def observed(layer, key: str, maxabs: int, frac: int, count: int, clipped: int, zeroed: int) -> None:
    """One observation's figures (``observe``'s, or a compiled cell loop's per time step): the
    peak for the exponent unit and the tallies."""
    old = layer.peaks.get(key)
    if old is not None:  # several observations in one step (every time step of a cell)
        f = max(old[1], frac)
        maxabs = max(old[0] << (f - old[1]), maxabs << (f - frac))
        layer.peaks[key] = (maxabs, f)
    else:
        layer.peaks[key] = (maxabs, frac)
    tally(layer, key, count, clipped, zeroed)


# --------------------------------------------------------------------------- management

def remember_floors(layer) -> None:
    """A parameter never takes a finer format than the one it started in."""
    for name, p in layer.params.items():
        layer.state.setdefault(FLOOR + name, np.array(p.fmt.frac_bits))


def manage_param(layer, name: str) -> int:
    """Grow or shrink a parameter's exponent after its update; returns the change."""
    p = layer.params[name]
    b = _peak(p.codes).bit_length() if p.codes.size else 0
    delta, low = decide(b, p.fmt.width, int(layer.state.get(LOW + name, 0)), layer.num.exp_patience)
    if delta < 0 and p.fmt.frac_bits + 1 > int(layer.state.get(FLOOR + name, p.fmt.frac_bits)):
        delta, low = 0, 0
    layer.state[LOW + name] = np.array(low)
    if delta:
        _moved(layer, name)
        layer.params[name] = QTensor(round_shift(p.codes, delta, "AP_RND_CONV"), moved(p.fmt, delta))
        v = layer.state.get(f"velocity_{name}")
        if v is not None:  # SGD momentum is kept in the parameter's LSBs: it moves with them
            layer.state[f"velocity_{name}"] = round_shift(v, delta, "AP_RND_CONV")
    return delta


def _peak(codes) -> int:
    """``np.abs(codes).max()`` of a non-empty tensor; one compiled pass for int64 codes."""
    if fixed.COMPILED and codes.dtype == np.int64:
        from .rounding import max_abs

        return int(max_abs(np.ascontiguousarray(codes).reshape(-1)))
    return int(np.abs(codes).max())


def manage_outputs(layer) -> dict:
    """Move the layer's managed output formats by this step's peaks; {key: change}."""
    changes = {}
    for key, fmt in layer.managed_formats().items():
        peak = layer.peaks.get(key)
        if peak is None or fmt is None:
            continue
        maxabs, src_frac = peak
        delta, low = decide(peak_bits(maxabs, src_frac, fmt), fmt.width,
                            int(layer.state.get(LOW + key, 0)), layer.num.exp_patience)
        if delta < 0 and fmt.frac_bits + 1 > src_frac:
            delta, low = 0, 0  # finer than the value it comes from would add nothing
        layer.state[LOW + key] = np.array(low)
        if delta:
            layer.set_managed_format(key, moved(fmt, delta))
            _moved(layer, key)
            changes[key] = delta
    layer.peaks.clear()
    return changes


def epoch_report(layers) -> dict:
    """Per layer and tensor: the fractions clipped at a rail and rounded to zero, and the
    exponent moves, since the last report; the counters start again."""
    out = {}
    for layer in layers:
        entry = {}
        for k in sorted(k for k in layer.state if k.startswith(TALLY)):
            n, c, z = (int(v) for v in layer.state.pop(k))
            entry[k[len(TALLY):]] = {"values": n, "clipped": c / n if n else 0.0, "zeroed": z / n if n else 0.0}
        for k in sorted(k for k in layer.state if k.startswith(MOVES)):
            entry.setdefault(k[len(MOVES):], {})["exponent_moves"] = int(layer.state.pop(k))
        if entry:
            out[layer.name] = entry
    return out


def refresh_formats(model) -> None:
    """Every layer's output format from its inputs' (pass-through layers follow a change)."""
    fmts = {model.graph.input_name: model.in_fmt}
    for node, layer in zip(model.graph.nodes, model.layers):
        layer.refresh_format([fmts.get(i) for i in node.inputs if i])
        outs = layer.out_fmts if getattr(layer, "n_outputs", 1) > 1 else [layer.out_fmt]
        for name, f in zip(node.outputs, outs):
            if name:
                fmts[name] = f

"""Feedback from a tensor's error (``error_from``) and DFA inside a module (``inside = "dfa"``).

docs/algorithms.md, "Where a module's error comes from": a DFA module may project the error
of any tensor above it instead of the output error; ``inside = "dfa"`` splits a module so
that its lower layers take the module's output error through fixed random feedback.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgedfa import EdgeDFAError, FixedFormat, arch
from edgedfa.api import build_model, make_trainer
from edgedfa.credit import plan_from_config
from edgedfa.feedback import FeedbackSpec, make_projector, map_gain_shift
from edgedfa.fixed import QTensor, narrow_dynamic
from edgedfa.numerics import Numerics
from edgedfa.train import TrainConfig

CNN_NODES = ["conv1", "relu2", "maxpool3", "conv4", "relu5", "maxpool6", "flatten7", "dense8"]


def dilated(values="binary", k=3, regenerate=True, **options):
    return FeedbackSpec("dilated", values, k, 8, regenerate, tuple(sorted(options.items())))


@st.composite
def map_cases(draw):
    cs = draw(st.integers(1, 9))
    taps = draw(st.integers(1, cs))
    nd = draw(st.sampled_from([1, 2]))
    src_sp = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    tgt_sp = tuple(s * draw(st.integers(1, 3)) for s in src_sp)
    ct = draw(st.integers(1, 6))
    opts = {"dilation": draw(st.integers(1, 4))} if draw(st.booleans()) else {}
    values = draw(st.sampled_from(["binary", "ternary", "uniform"]))
    return dilated(values, taps, **opts), draw(st.integers(0, 2**32 - 1)), (cs,) + src_sp, (ct,) + tgt_sp


@given(map_cases())
def test_dilated_from_a_map_is_a_sparse_1x1_conv_then_nearest_upsampling(case):
    """out[c, p] = sum_m R[c, m] * E[(o[c, cell(p)] + m*d) mod Cs, cell(p)], by explicit loops."""
    fs, seed, src, tgt = case
    proj = make_projector(fs, 3, seed, tgt, src)
    stored = make_projector(dilated(fs.values, fs.k, False, **dict(fs.options)), 3, seed, tgt, src)
    rng = np.random.default_rng(seed % 997)
    e = QTensor(rng.integers(-128, 128, size=(3,) + src), FixedFormat(8, 1))
    got = proj.project(e, 8, "AP_RND")
    np.testing.assert_array_equal(got.codes, stored.project(e, 8, "AP_RND").codes)
    offsets, kernel = proj.stored_matrix()
    assert offsets.shape == (tgt[0],) + src[1:]
    wide = np.zeros((3,) + tgt, dtype=np.int64)
    for b in range(3):
        for c in range(tgt[0]):
            for p in np.ndindex(*tgt[1:]):
                cell = tuple(pi * si // ti for pi, si, ti in zip(p, src[1:], tgt[1:]))
                for m in range(proj.taps):
                    ch = (offsets[(c,) + cell] + m * proj.dilation) % src[0]
                    wide[(b, c) + p] += kernel[c, m] * e.codes[(b, ch) + cell]
    fmt = FixedFormat.with_frac(32, e.fmt.frac_bits + proj.frac_bits())
    expect = narrow_dynamic(wide.reshape(3, -1), fmt, 8, "AP_RND")
    np.testing.assert_array_equal(got.codes.reshape(3, -1), expect.codes)
    assert got.fmt == expect.fmt
    dense = proj.dense_matrix()
    assert dense.shape == (int(np.prod(tgt)), int(np.prod(src)))
    assert ((dense != 0).sum(axis=1) <= proj.taps).all()


def test_dilated_from_a_map_rejects_a_grid_and_a_rank_mismatch():
    with pytest.raises(EdgeDFAError, match="grid"):
        make_projector(dilated(grid=(2, 2)), 1, 0, (4, 8, 8), (6, 4, 4))
    with pytest.raises(EdgeDFAError, match="spatial rank"):
        make_projector(dilated(), 1, 0, (4, 8, 8), (6, 4))


@pytest.mark.parametrize("kind", ["dense", "sparse", "channel"])
def test_vector_kinds_read_a_map_source_flattened(kind):
    proj = make_projector(FeedbackSpec(kind, "binary", 2), 1, 5, (4, 6, 6), (8, 3, 3))
    assert proj.n_classes == 72
    e = QTensor(np.random.default_rng(0).integers(-100, 100, (2, 8, 3, 3)), FixedFormat(8, 2))
    assert proj.project(e, 8, "AP_RND").codes.shape == (2, 4, 6, 6)


def test_gain_shift_counts_units_per_source_cell():
    # max(0, ceil(log2(channels x positions per source cell) / 2) - 1)
    assert map_gain_shift((16, 8, 8)) == 4  # output error: all 1,024 units share it
    assert map_gain_shift((16, 8, 8), (10,)) == 4
    assert map_gain_shift((16, 8, 8), (32, 4, 4)) == 2  # 16 x 4 units per source cell
    assert map_gain_shift((16, 8, 8), (32, 8, 8)) == 1  # 16 x 1
    assert map_gain_shift((64,), (10,)) == 0  # not a map
    assert map_gain_shift((32, 4, 4)) == 4 and map_gain_shift((64, 4, 4)) == 4  # 512, 1,024 units
    assert map_gain_shift((64, 2, 2)) == 3
    assert map_gain_shift((1, 2, 2)) == 0  # never a gain above 1


def _cnn(seed=0):
    model = build_model(arch.build("cnn", seed, (1, 8, 8)), Numerics.from_bits(8), seed)
    x = np.random.default_rng(seed).uniform(0, 1, (16, 1, 8, 8))
    model.calibrate(x)
    return model, model.quantize_input(x), np.arange(16) % 10


def _record(trainer):
    """Wrap every layer's backward and every projector to record what they receive."""
    seen = {}
    for name, (node, layer) in trainer.nodes.items():
        def bwd(cache, dy, need, _f=layer.backward, _n=name):
            seen[("dy", _n)] = dy
            seen[("need", _n)] = list(need)
            return _f(cache, dy, need)
        layer.backward = bwd
    for mname, (target, proj) in trainer.projectors.items():
        def project(e, *a, _f=proj.project, _m=mname, **k):
            seen[("src", _m)] = e
            out = _f(e, *a, **k)
            seen[("proj", _m)] = out
            return out
        proj.project = project
    return seen


def _one_step(seed, source, feedback):
    """One hybrid-shaped step: block 1 by DFA from ``source``'s error, the rest by BP."""
    model, xq, y = _cnn(seed)
    table = [{"nodes": CNN_NODES[:3], "source": "dfa", "error_from": source, "feedback": feedback},
             {"nodes": CNN_NODES[3:]}]
    tr = make_trainer(model, TrainConfig(algo="hybrid"), table)
    seen = _record(tr)
    tr.step(xq, y, 0, 10)
    return tr, seen, y


def test_error_from_projects_the_bp_error_at_that_tensor():
    """Block 1 by DFA from the error at conv4's output: the projector receives exactly the
    error conv4's backward receives, and block 1's own error is its projection."""
    tr, seen, y = _one_step(0, "conv4_out", {"kind": "dilated", "values": "binary", "k": 3})
    src, conv4_dy = seen[("src", "m0")], seen[("dy", "conv4")]
    np.testing.assert_array_equal(src.codes, conv4_dy.codes)
    assert src.fmt == conv4_dy.fmt
    np.testing.assert_array_equal(seen[("dy", "maxpool3")].codes, seen[("proj", "m0")].codes)
    assert seen[("need", "conv4")] == [False]  # conv4 never reads its weights backwards


def test_error_from_matches_the_float_projection():
    """The integer projection of a map error is the float product with the dense-equivalent
    feedback, scaled by 2^-(frac + gain), within the rounding of the 8-bit result."""
    tr, seen, y = _one_step(1, "maxpool6_out", {"kind": "dilated", "values": "ternary", "k": 4})
    _, proj = tr.projectors["m0"]
    src, out = seen[("src", "m0")], seen[("proj", "m0")]
    assert proj.gain_shift == 3  # (32, 4, 4) target, (64, 2, 2) source: 32 x 4 units per cell
    scale = 2.0 ** -(proj.frac_bits() + proj.gain_shift)
    f = (src.value().reshape(len(y), -1) @ proj.dense_matrix().T.astype(float)) * scale
    lsb = 2.0 ** -out.fmt.frac_bits
    assert np.abs(out.value().reshape(len(y), -1) - np.clip(f, out.fmt.min_value, out.fmt.max_value)).max() <= lsb


def test_inside_dfa_splits_a_module_into_feedback_fed_layers():
    """inside = "dfa" on blocks 1-2: conv4 takes the module's BP error from the head, block 1
    takes that same error (at maxpool6_out) through its own feedback; no error crosses conv4."""
    model, xq, y = _cnn(2)
    table = [{"name": "body", "nodes": CNN_NODES[:6], "source": "bp", "inside": "dfa",
              "inside_feedback": {"kind": "dense", "values": "binary"}},
             {"nodes": CNN_NODES[6:]}]
    plan = plan_from_config(model.graph, table)
    assert [(m.name, m.nodes, m.source, m.error_from) for m in plan.modules] == [
        ("body.0", CNN_NODES[:3], "dfa", "maxpool6_out"),
        ("body", CNN_NODES[3:6], "bp", None),
        ("m1", CNN_NODES[6:], "output", None)]
    tr = make_trainer(model, TrainConfig(algo="custom"), table)
    seen = _record(tr)
    tr.step(xq, y, 0, 10)
    np.testing.assert_array_equal(seen[("src", "body.0")].codes, seen[("dy", "maxpool6")].codes)
    assert seen[("need", "conv4")] == [False]
    assert tr.plan.describe()[0]["error_from"] == "maxpool6_out"
    unnamed = plan_from_config(model.graph, [{k: v for k, v in table[0].items() if k != "name"}, table[1]])
    assert [m.name for m in unnamed.modules] == ["m0.0", "m0", "m1"]


@pytest.mark.parametrize("entry, match", [
    ({"error_from": "nope"}, "no tensor"),
    ({"error_from": "relu2_out"}, "not above"),
    ({"error_from": "input"}, "no tensor"),
    ({"inside": "sideways"}, "inside"),
    ({"eror_from": "conv4_out"}, "unknown key.*eror_from"),
    ({"error_from": "conv4_out", "source": "bp"}, "needs source"),
    ({"inside": "dfa", "inside_feedback": {"kind": "dense", "k": "x"}}, "inside_feedback: k = 'x'"),
])
def test_bad_error_sources_name_the_module_and_tensor(entry, match):
    model, _, _ = _cnn()
    table = [{"nodes": CNN_NODES[:3], "source": "dfa", **entry}, {"nodes": CNN_NODES[3:]}]
    with pytest.raises(EdgeDFAError, match=match):
        plan_from_config(model.graph, table)


def test_frozen_parameters_keep_their_values_and_the_rest_is_unchanged():
    """layer_options {conv1 = {frozen = ["B"]}}: conv1's bias never moves; in the first step
    (same forward pass) its W and every other parameter take exactly the updates of the run
    without the option (same PRNG streams)."""
    runs = {}
    for frozen in (False, True):
        model, xq, y = _cnn(4)
        b0 = model.layers[0].params["B"].codes.copy()
        opts = {"layer_options": {"conv1": {"frozen": ["B"]}}} if frozen else {}
        table = [{"nodes": CNN_NODES[:3], "source": "dfa", "feedback": {"kind": "channel"}, **opts},
                 {"nodes": CNN_NODES[3:]}]
        tr = make_trainer(model, TrainConfig(algo="hybrid"), table)
        tr.step(xq, y, 0, 6)
        runs[frozen] = {(l.name, k): v.codes.copy() for l in model.layers for k, v in l.params.items()}
        for step in range(1, 3):
            tr.step(xq, y, step, 6)
        runs[frozen]["B_end"] = model.layers[0].params["B"].codes.copy()
    np.testing.assert_array_equal(runs[True]["B_end"], b0)
    assert not np.array_equal(runs[False]["B_end"], b0)
    for key in runs[False]:
        if key not in (("conv1", "B"), "B_end"):
            np.testing.assert_array_equal(runs[True][key], runs[False][key])


@pytest.mark.parametrize("opts, match", [
    ({"conv1": {"frozen": ["Q"]}}, "frozen.*parameters are"),
    ({"conv1": {"bptt_steps": 2}}, "recurrent layers only"),
    ({"relu2": {"backward_groups": 2}}, "Conv layers only"),
    ({"conv1": {"backward": "group"}}, "unknown option"),
])
def test_bad_layer_options_are_named(opts, match):
    model, _, _ = _cnn()
    table = [{"nodes": CNN_NODES[:3], "source": "dfa", "layer_options": opts}, {"nodes": CNN_NODES[3:]}]
    with pytest.raises(EdgeDFAError, match=match):
        make_trainer(model, TrainConfig(algo="hybrid"), table)


def _error_rms_at_block2(channels, algo):
    """RMS of the error reaching block 2's output (maxpool6_out) in one step at init: BP's
    error through the head's weights, or DFA's projected output error."""
    graph = arch.cnn(3, (1, 8, 8), channels=channels)
    model = build_model(graph, Numerics.from_bits(16), 3)
    x = np.random.default_rng(3).uniform(0, 1, (32, 1, 8, 8))
    model.calibrate(x)
    tr = make_trainer(model, TrainConfig(algo=algo))
    seen = _record(tr)
    tr.step(model.quantize_input(x), np.arange(32) % 10, 0, 10)
    err = seen[("dy", "maxpool6")] if algo == "bp" else seen[("proj", "m1")]
    return float(np.sqrt(np.mean(err.value() ** 2)))


def test_default_feedback_gain_tracks_bp_error_size_across_widths():
    """BP's error at a map shrinks like 1/sqrt(units) (fan-in-scaled weights above it); the
    default gain makes DFA's projected error follow it, so the DFA/BP size ratio stays put as
    the CNN widens 8x (a positions-only gain would let it grow like sqrt(8) = 2.8x)."""
    widths = [(8, 16), (16, 32), (32, 64), (64, 128)]
    ratios = [_error_rms_at_block2(w, "dfa") / _error_rms_at_block2(w, "bp") for w in widths]
    assert max(ratios) / min(ratios) <= 2.0, ratios

"""Graph rewrites on the light ONNX graph; each returns ``(graph, changed)``."""

from ..ir import OGraph
from .batch import generalise_batch
from .batch_first import batch_first
from .cleanup import dead_code, remove_noops
from .fold_constants import fold_constants
from .gelu import fuse_normal_cdf
from .groupnorm import fuse_group_norm
from .merged_batch import unmerge_batch_transpose
from .pad import fold_pad_into_conv, pads_over_every_axis
from .rmsnorm import fuse_rms_norm
from .rnn import drop_zero_initial_state, gather_single, last_step_to_hidden
from .softmax import absorb_output_softmax
from .softplus import fuse_softplus
from .unrolled import reject_unrolled_rnn, reroll_rnn

PASSES = [fold_constants, remove_noops, fuse_normal_cdf, fuse_softplus, fuse_group_norm, fuse_rms_norm, drop_zero_initial_state, dead_code,
          absorb_output_softmax, unmerge_batch_transpose, generalise_batch, reroll_rnn, gather_single,
          last_step_to_hidden, pads_over_every_axis, fold_pad_into_conv]
FINAL_PASSES = [batch_first]  # run once the others settle, then they run again
MAX_ROUNDS = 1000


def run_passes(og: OGraph, passes=None, final=None) -> OGraph:
    """Apply every pass until none changes the graph, then the final ones, until neither does."""
    passes = PASSES if passes is None else passes
    final = FINAL_PASSES if final is None else final
    for _ in range(MAX_ROUNDS):
        changed = False
        for p in passes:
            og, did = p(og)
            changed = changed or did
        if changed:
            continue
        reject_unrolled_rnn(og)  # before the final passes, which would trip on it
        for p in final:
            og, did = p(og)
            changed = changed or did
        if not changed:
            return og
    og.fail(f"the import passes did not settle after {MAX_ROUNDS} rounds")


__all__ = ["PASSES", "FINAL_PASSES", "run_passes"] + [p.__name__ for p in PASSES + FINAL_PASSES]

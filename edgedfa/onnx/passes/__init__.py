"""Graph rewrites on the light ONNX graph; each returns ``(graph, changed)``."""

from ..ir import OGraph
from .batch import generalise_batch
from .batchnorm import fold_batchnorm
from .cleanup import dead_code, remove_noops
from .fold_constants import fold_constants
from .pad import fold_pad_into_conv
from .rnn import drop_zero_initial_state, gather_single, last_step_to_hidden
from .softmax import absorb_output_softmax
from .unrolled import reject_unrolled_rnn, reroll_rnn

PASSES = [fold_constants, remove_noops, drop_zero_initial_state, dead_code,
          absorb_output_softmax, generalise_batch, reroll_rnn, gather_single,
          last_step_to_hidden, fold_batchnorm, fold_pad_into_conv]
MAX_ROUNDS = 1000


def run_passes(og: OGraph, passes=None) -> OGraph:
    """Apply every pass until none changes the graph."""
    passes = PASSES if passes is None else passes
    for _ in range(MAX_ROUNDS):
        changed = False
        for p in passes:
            og, did = p(og)
            changed = changed or did
        if not changed:
            reject_unrolled_rnn(og)
            return og
    og.fail(f"the import passes did not settle after {MAX_ROUNDS} rounds")


__all__ = ["PASSES", "run_passes"] + [p.__name__ for p in PASSES]

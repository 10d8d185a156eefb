"""Fixed random feedback (§10): projectors from a source error to a module's output.

``base`` holds the settings (FeedbackSpec), the values and the projector registry; ``dense``
the dense, k-sparse and per-channel kinds; ``dilated`` the structured sparse kind for conv
maps; ``gain`` the default gain rule for conv maps. Importing the package registers every kind.
"""

from . import dense, dilated  # noqa: F401  (each registers its kinds)
from .base import (VALUE_KINDS, FeedbackSpec, Projector, as_shape, feedback_values, half_log2, make_projector,
                   projector_kinds, register_projector, value_bits, value_frac)
from .dense import ChannelProjector, DenseProjector, SparseProjector
from .dilated import DilatedProjector
from .gain import GAIN_REFERENCE_SHIFT, map_gain_shift

__all__ = ["VALUE_KINDS", "FeedbackSpec", "Projector", "as_shape", "feedback_values", "half_log2", "make_projector",
           "projector_kinds", "register_projector", "value_bits", "value_frac", "ChannelProjector", "DenseProjector",
           "SparseProjector", "DilatedProjector", "GAIN_REFERENCE_SHIFT", "map_gain_shift"]

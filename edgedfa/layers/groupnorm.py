"""Group normalization (docs/datapath.md §8.9): LayerNorm's arithmetic (§8.8) with a row per
sample and group of ``C/G`` channels over all positions, γ and β per channel as BatchNorm's.
PyTorch's ``nn.GroupNorm``; ``nn.InstanceNorm1d/2d(affine=True)`` is ``G = C``.

Channel axis 1; the codes (B, C, P) are viewed as (B·G, C/G·P) rows for the statistics and the
bracket, as (B, C, P) for the per-channel affine. No running statistics: training and inference
normalise alike. Parameters ``scale`` (γ) and ``B`` (β), (C,) each.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from .base import register
from .layernorm import LayerNorm


@register("GroupNorm")
class GroupNorm(LayerNorm):
    def _geometry(self, node) -> None:
        """Rows of ``C/G`` channels × the positions; the affine's view per channel."""
        shape = tuple(self.in_shapes[0])
        groups = int(node.attrs.get("groups", 0))
        if not shape:
            raise EdgeDFAError(f"{self.where}: the input needs a channel axis")
        if groups < 1 or shape[0] % groups:
            raise EdgeDFAError(f"{self.where}: groups {groups} must divide the {shape[0]} channels")
        self.groups, self.channels = groups, int(shape[0])
        self.positions = int(np.prod(shape[1:], dtype=np.int64))
        self.param_shape = (self.channels,)
        self.features = self.channels // groups * self.positions

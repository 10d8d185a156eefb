"""RMS normalization (docs/datapath.md §8.11): LayerNorm's arithmetic (§8.8) without the mean,
x̂ = x / sqrt(mean(x²) + ε) per row. PyTorch's ``nn.RMSNorm`` (γ, ε inside the root) and
``F.normalize`` (no γ; its constant 1/sqrt(D) folded into the next Dense or Conv at import).

The normalised axes are one contiguous block ``axes`` of the batched shape (never the batch):
the codes (B, pre..., D..., post...) are viewed as (M, D, P) with M = B·Π pre and P = Π post,
a row is one (sample, pre, position)'s D values (strided by P in memory when P > 1: F.normalize
over the channels of a Conv map). γ (``scale``) and β (``B``) are optional, one per normalised
feature (shaped like the normalised axes); absent γ multiplies by 1 (a code of fraction 0),
absent β adds nothing. No running statistics.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..fixed import FixedFormat, QTensor
from .base import register
from .layernorm import LayerNorm

UNIT_GAMMA = FixedFormat(2, 2)  # γ = 1 as a code of fraction 0 when the graph has none


def contiguous_axes(in_shape, axes) -> tuple:
    """(pre, D, P, normalised shape) of one sample's shape ``in_shape`` normalised over the batched
    axes ``axes`` (consecutive, >= 1), or an error string."""
    axes = sorted(int(a) for a in axes)
    rank = len(in_shape) + 1
    if not axes or axes[0] < 1 or axes[-1] >= rank or axes != list(range(axes[0], axes[-1] + 1)):
        return f"axes {axes} must be consecutive axes of the {rank - 1} after the batch"
    lo, hi = axes[0] - 1, axes[-1]
    shape = tuple(int(d) for d in in_shape)
    prod = lambda dims: int(np.prod(dims, dtype=np.int64))  # noqa: E731
    return prod(shape[:lo]), prod(shape[lo:hi]), prod(shape[hi:]), shape[lo:hi]


@register("RMSNorm")
class RMSNorm(LayerNorm):
    centred = False

    def affine_keys(self, node) -> tuple:
        return tuple(k for k in ("B", "scale") if k in node.params)

    def _geometry(self, node) -> None:
        """Rows of the D values over ``axes`` at each (sample, pre, position); the affine's view
        (M, D, P) with a parameter per feature."""
        got = contiguous_axes(self.in_shapes[0], node.attrs.get("axes", ()))
        if isinstance(got, str):
            raise EdgeDFAError(f"{self.where}: {got}")
        _, self.features, self.positions, self.param_shape = got
        self.channels = self.features

    def _rows(self, codes):
        """(M·P, D): the affine's view with the feature axis last."""
        return self._view(codes).transpose(0, 2, 1).reshape(-1, self.features)

    def _rows_view(self, rows):
        return rows.reshape(-1, self.positions, self.features).transpose(0, 2, 1)

    def gamma(self) -> QTensor:
        if "scale" in self.params:
            return self.params["scale"]
        return QTensor(np.ones(self.features, dtype=np.int64), UNIT_GAMMA)

    def beta(self) -> QTensor:
        if "B" in self.params:
            return self.params["B"]
        return QTensor(np.zeros(self.features, dtype=np.int64), UNIT_GAMMA)

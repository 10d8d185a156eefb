"""Structured sparse feedback for convolutional maps (Han & Yoo 2020, our reading; §8.5).

Kind ``dilated``: the output error e (B, C) reaches a (Cl, *spatial) map through a
circular **dilated convolution over the class axis** with a small random kernel per
channel, sampled at a random offset per coarse spatial cell, then copied (nearest) to the
positions of that cell::

    M[b, c, u, v] = sum_{m < q} R[c, m] * e[b, (o[c, u, v] + m * d) mod C]    (m ascending)
    out[b, c, h, w] = M[b, c, (h * Hc) // H, (w * Wc) // W]

R (Cl, q) are binary/ternary (adders only) or uniform values, o (Cl, Hc, Wc) offsets; both
are regenerated from the PRNG (§5) or stored. With the default grid 1x1 every position of
a channel shares one error (per-channel feedback, docs/algorithms.md); a larger
grid gives position-dependent, still structured, feedback. Options (FeedbackSpec.options):
``taps`` q (default spec.k), ``dilation`` d (default max(1, C // q)), ``grid`` (Hc, Wc).
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from ..prng import PURPOSE_FEEDBACK_INDEX, words
from .base import Projector, as_shape, feedback_values, half_log2, register_projector, value_bits, value_frac


def _grid(option, spatial) -> tuple:
    """Coarse grid from an option: None (all 1), "full" (one cell per position) or sizes."""
    if option is None:
        return (1,) * len(spatial)
    if isinstance(option, str):
        if option.lower() != "full":
            raise EdgeDFAError(f"dilated feedback: grid {option!r}; expected 'full' or sizes")
        return tuple(spatial)
    g = tuple(int(v) for v in np.atleast_1d(option))
    if len(g) == 1 and len(spatial) > 1:
        g = g * len(spatial)
    if len(g) != len(spatial) or any(not 1 <= a <= s for a, s in zip(g, spatial)):
        raise EdgeDFAError(f"dilated feedback: grid {list(g)} must give 1..size cells per spatial dim of {spatial}")
    return g


@register_projector("dilated")
class DilatedProjector(Projector):
    """Sparse structured feedback: q taps at dilation d over the source channels, per
    channel/cell of the target.

    The source is the output error (C classes: one "channel" per class, one cell) or, for a
    module fed from another tensor's error (``error_from``), an error map (Cs, *S): then the
    grid is the source's spatial grid, each cell reads the source at its own position, and
    the projection is a 1x1 convolution over channels with a sparse dilated kernel followed
    by a nearest-neighbour upsampling to the target's positions.
    """

    def __init__(self, spec, layer_index, seed, target_shape, source_shape):
        target_shape = tuple(int(s) for s in target_shape)
        if len(target_shape) < 1:
            raise EdgeDFAError("dilated feedback needs a (channels, *spatial) target")
        source_shape = as_shape(source_shape)
        c = source_shape[0]
        self.taps = int(spec.option("taps", spec.k))
        if not 1 <= self.taps <= c:
            raise EdgeDFAError(f"dilated feedback: taps {self.taps} must be in 1..{c} (the source channels)")
        self.dilation = int(spec.option("dilation", max(1, c // self.taps)))
        if self.dilation < 1:
            raise EdgeDFAError(f"dilated feedback: dilation {self.dilation} must be >= 1")
        self.src_channels, self.src_spatial = c, source_shape[1:]
        if self.src_spatial:
            if spec.option("grid") is not None:
                raise EdgeDFAError("dilated feedback from an error map: the grid is the source's "
                                   f"spatial grid {list(self.src_spatial)}; drop the 'grid' option")
            if len(self.src_spatial) != len(target_shape) - 1:
                raise EdgeDFAError(f"dilated feedback: source map {source_shape} and target {target_shape} "
                                   "differ in spatial rank")
            self.grid = _grid(list(self.src_spatial), target_shape[1:])
        else:
            self.grid = _grid(spec.option("grid"), target_shape[1:])
        super().__init__(spec, layer_index, seed, target_shape, source_shape)

    @property
    def channels(self) -> int:
        return self.target_shape[0]

    def generate(self):
        """(offsets o (Cl, *grid), kernel R (Cl, q)) from the index and value streams."""
        cells = (self.channels,) + self.grid
        w0 = words(self.seed, self.stream(PURPOSE_FEEDBACK_INDEX), 0, cells).astype(np.int64)
        offsets = (w0 * self.src_channels) >> 32
        kernel = feedback_values(words(self.seed, self.stream(), 0, (self.channels, self.taps)),
                                 self.spec.values, self.spec.bits)
        return offsets, kernel

    def frac_bits(self):
        return value_frac(self.spec) + half_log2(self.taps)

    def coarse(self, e_codes, fb) -> np.ndarray:
        """M (B, Cl, *grid): the dilated convolution of each sample's error, exact int64."""
        offsets, kernel = fb
        ec = np.asarray(e_codes, dtype=np.int64).reshape((len(e_codes), self.src_channels) + self.src_spatial)
        cells = tuple(np.indices(self.grid)) if self.src_spatial else ()
        acc = np.zeros((len(ec),) + offsets.shape, dtype=np.int64)
        shape = (1, -1) + (1,) * len(self.grid)
        for m in range(self.taps):
            idx = (offsets + m * self.dilation) % self.src_channels
            acc += ec[(slice(None), idx) + tuple(np.broadcast_to(c, idx.shape) for c in cells)] * kernel[:, m].reshape(shape)
        return acc

    def cell_index(self, axis: int) -> np.ndarray:
        """Coarse cell of every position along spatial ``axis``: (p * cells) // size."""
        size = self.target_shape[1 + axis]
        return (np.arange(size) * self.grid[axis]) // size

    def project_wide(self, e, fb):
        return self.fill(self.coarse(e.codes, fb))

    def fill(self, m) -> np.ndarray:
        """(B, Cl, *grid) -> (B, n_target): every position takes its cell's value."""
        for axis in range(len(self.grid)):
            m = np.take(m, self.cell_index(axis), axis=2 + axis)
        return m.reshape(len(m), -1)

    def dense_matrix(self, fb=None) -> np.ndarray:
        """The equivalent dense feedback (n_target, n_source): for tests and the hardware model."""
        fb = self.stored_matrix() if fb is None else fb
        return self.fill(self.coarse(np.eye(self.n_classes, dtype=np.int64), fb)).T

    def memory_bits(self):
        cells = self.channels * int(np.prod(self.grid))
        return cells * max(1, (self.src_channels - 1).bit_length()) + self.channels * self.taps * value_bits(self.spec)

    def macs_per_sample(self):
        """Additions (binary/ternary) or MACs (uniform) of the coarse map; the fill is a copy."""
        return self.channels * int(np.prod(self.grid)) * self.taps

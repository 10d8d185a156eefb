"""Dense, k-sparse and per-channel feedback (§10.2): the source error through a random matrix."""

from __future__ import annotations

import numpy as np

from ..kernels import gemm
from ..fixed import Overflow
from ..prng import PURPOSE_FEEDBACK_INDEX, words
from .base import Projector, feedback_values, half_log2, register_projector, value_bits, value_frac


@register_projector("dense")
class DenseProjector(Projector):
    """B (n_target, C): every unit sees every output error (Nøkland 2016)."""

    def generate(self):
        w = words(self.seed, self.stream(), 0, (self.n_target, self.n_classes))
        return feedback_values(w, self.spec.values, self.spec.bits)

    def frac_bits(self):
        return value_frac(self.spec) + half_log2(self.n_classes)

    def project_wide(self, e, fb):
        return gemm(e.codes.reshape(len(e.codes), -1), fb.T, 40, Overflow.AP_WRAP)

    def memory_bits(self):
        return self.n_target * self.n_classes * value_bits(self.spec)

    def macs_per_sample(self):
        return self.n_target * self.n_classes


@register_projector("sparse")
class SparseProjector(Projector):
    """k non-zeros per target unit (Crafton et al. 2019): index + sign, adders only.

    Unit i reads outputs j_m = (j_0 + m) mod C, m < k, with j_0 = (word * C) >> 32.
    """

    def generate(self):
        c, k = self.n_classes, min(self.spec.k, self.n_classes)
        w0 = words(self.seed, self.stream(PURPOSE_FEEDBACK_INDEX), 0, self.n_target).astype(np.int64)
        j0 = (w0 * c) >> 32
        idx = (j0[:, None] + np.arange(k)[None, :]) % c
        vals = feedback_values(words(self.seed, self.stream(), 0, (self.n_target, k)),
                               self.spec.values, self.spec.bits)
        return idx, vals

    def frac_bits(self):
        return value_frac(self.spec) + half_log2(min(self.spec.k, self.n_classes))

    def project_wide(self, e, fb):
        idx, vals = fb
        ec = e.codes.reshape(len(e.codes), -1)
        return (ec[:, idx] * vals[None, :, :]).sum(axis=2)

    def memory_bits(self):
        k = min(self.spec.k, self.n_classes)
        per = self.spec.bits if self.spec.values == "uniform" else 1
        return self.n_target * k * (per + max(1, (self.n_classes - 1).bit_length()))

    def macs_per_sample(self):
        return self.n_target * min(self.spec.k, self.n_classes)


@register_projector("channel")
class ChannelProjector(DenseProjector):
    """One feedback column per channel, shared by every position of a (C, ...) map."""

    def __init__(self, spec, layer_index, seed, target_shape, source_shape):
        self.full_shape = tuple(target_shape)
        super().__init__(spec, layer_index, seed, target_shape[:1], source_shape)
        self.target_shape = self.full_shape

    def spread(self, codes):
        spatial = (1,) * (len(self.full_shape) - 1)
        out = np.broadcast_to(codes.reshape((-1, self.full_shape[0]) + spatial), (len(codes),) + self.full_shape)
        return np.ascontiguousarray(out)

"""Export the small PyTorch models under tests/fixtures/onnx/ (TorchScript and dynamo exporters).

Needs torch (and onnxscript for the dynamo exporter): ``pip install torch==2.13.0 onnxscript``.
torch is never a dependency of edgedfa or of its tests; the tests read the committed files.
Run: ``python tools/make_onnx_fixtures.py [OUT_DIR [CASE ...]]`` (cases given: only those are
written and the manifest keeps the others).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "onnx")


class MLP(nn.Module):
    def __init__(self, softmax=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Dropout(0.2), nn.Linear(32, 16), nn.Tanh(),
                                 nn.Linear(16, 5))
        self.softmax = softmax

    def forward(self, x):
        y = self.net(x)
        return torch.log_softmax(y, dim=-1) if self.softmax else y


class CNN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(1, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, groups=2, dilation=2)
        self.fc = nn.Linear(8 * 8, 5)

    def forward(self, x):
        x = nn.functional.max_pool1d(torch.relu(self.bn(self.c1(x))), 2)
        x = nn.functional.avg_pool1d(nn.functional.leaky_relu(self.c2(x), 0.1), 2)
        return self.fc(x.flatten(1))


class CNN2d(nn.Module):
    """Residual add, a branch joined by Concat, ReLU6, sigmoid, global average pooling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b2 = nn.Conv2d(6, 4, 3, stride=1, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.c1(x))), 2)
        x = nn.functional.relu6(self.c2(x)) + x
        x = torch.cat([torch.sigmoid(self.b1(x)), torch.tanh(self.b2(x))], dim=1)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.c3(x)), 1)
        return self.fc(x.view(x.size(0), -1))


class LastStep(nn.Module):
    """A recurrent layer (batch first) read at its last step, then a linear classifier."""

    def __init__(self, kind, layers=1, **kw):
        super().__init__()
        self.rnn = getattr(nn, kind)(6, 10, num_layers=layers, batch_first=True, **kw)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1, :])


class FinalHidden(nn.Module):
    """Uses h_n of the last layer."""

    def __init__(self, kind, **kw):
        super().__init__()
        self.rnn = getattr(nn, kind)(6, 10, batch_first=True, **kw)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(h[-1])


class WholeSequence(nn.Module):
    """A bidirectional layer whose whole output sequence feeds the classifier."""

    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(nn, kind)(6, 5, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(8 * 10, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out.reshape(out.shape[0], -1))


class BidirectionalRead(nn.Module):
    """A bidirectional layer read the two ways PyTorch users classify with: the last step of
    its output sequence (out[:, -1]: Gather of a time step), or the last layer's two final
    states (cat(h_n[-2], h_n[-1]): Gathers of h_n)."""

    def __init__(self, kind, layers=1, read="last"):
        super().__init__()
        self.rnn = getattr(nn, kind)(6, 10, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(20, 4)
        self.read = read

    def forward(self, x):
        out, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(out[:, -1, :] if self.read == "last" else torch.cat([h[-2], h[-1]], dim=1))


class BNNet(nn.Module):
    """BatchNorm2d after a Conv2d and BatchNorm1d on (N, C) after a Linear (momentum 0.2, eps 1e-3)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8, eps=1e-3, momentum=0.2),
                                 nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class BN1dNet(nn.Module):
    """BatchNorm1d on (N, C, L) after a Conv1d."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
                                 nn.Flatten(), nn.Linear(4 * 8, 3))

    def forward(self, x):
        return self.net(x)


class GeluNet(nn.Module):
    """Both forms of GELU: the exact one after a Conv2d, the tanh approximation after a Linear."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8),
                                 nn.GELU(approximate="tanh"), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class EluNet(nn.Module):
    """ELU after a Conv2d, SELU and CELU (its default alpha 1, ELU's) after Linears."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ELU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8),
                                 nn.SELU(), nn.Linear(8, 6), nn.CELU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.net(x)


class SoftplusNet(nn.Module):
    """An MLP with two of ``act`` (nn.Softplus at its defaults, or nn.Mish)."""

    def __init__(self, act=nn.Softplus):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 6), act(), nn.Linear(6, 3))

    def forward(self, x):
        return self.net(x)


class LayerNormNet(nn.Module):
    """nn.LayerNorm over the last axis of [N, T, F] (a row per sample and position), over the
    two trailing axes, and over a Linear's features; non-trivial weight and bias."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.ln1 = nn.LayerNorm(8)
        self.ln2 = nn.LayerNorm([3, 8])
        self.fc2 = nn.Linear(24, 6)
        self.ln3 = nn.LayerNorm(6)
        self.fc3 = nn.Linear(6, 3)
        for ln in (self.ln1, self.ln2, self.ln3):
            ln.weight.data.uniform_(0.5, 1.5)
            ln.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.ln2(torch.relu(self.ln1(self.fc1(x))))
        return self.fc3(torch.relu(self.ln3(self.fc2(x.flatten(1)))))


class GroupNormNet(nn.Module):
    """nn.GroupNorm(2, 4) in a small CNN and over a Linear's features; non-trivial weight and bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.gn2 = nn.GroupNorm(3, 6)
        self.fc2 = nn.Linear(6, 3)
        for gn in (self.gn, self.gn2):
            gn.weight.data.uniform_(0.5, 1.5)
            gn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.gn(self.c1(x))), 2)
        return self.fc2(torch.relu(self.gn2(self.fc1(h.flatten(1)))))


class InstanceNormNet(nn.Module):
    """nn.InstanceNorm1d(C, affine=True) after a Conv1d; non-trivial weight and bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=1)
        self.inorm = nn.InstanceNorm1d(4, affine=True)
        self.fc = nn.Linear(4 * 6, 3)
        self.inorm.weight.data.uniform_(0.5, 1.5)
        self.inorm.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.fc(torch.relu(self.inorm(self.c1(x))).flatten(1))


class InputNormNet(nn.Module):
    """A CNN that normalises its own input per channel ((x - mean) / std, buffers), then an
    unpadded Conv2d, and a Linear head whose input is scaled by a constant."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, -0.25]).reshape(2, 1, 1))
        self.register_buffer("std", torch.tensor([2.0, 0.5]).reshape(2, 1, 1))
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv((x - self.mean) / self.std))
        return self.fc(x.flatten(1) / 4.0)


class InputStageCNN(nn.Module):
    """``transforms.Normalize`` inside the model before a zero-padded Conv2d, over a flat input
    viewed as an image, with a per-pixel mean: no Conv can take the offset (the padding would not
    see it), so it becomes the input stage."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.linspace(-0.5, 1.0, 72).reshape(2, 6, 6))
        self.register_buffer("std", torch.tensor([2.0, 0.5]).reshape(2, 1, 1))
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 3 * 3, 3)

    def forward(self, x):
        x = (x.view(-1, 2, 6, 6) - self.mean) / self.std
        return self.fc(torch.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class InputStageGRU(nn.Module):
    """A sequence model that standardises its own input per feature before a batch-first GRU."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1.0, 1.0, SEQ[1]))
        self.register_buffer("std", torch.linspace(0.5, 3.0, SEQ[1]))
        self.rnn, self.fc = nn.GRU(SEQ[1], 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        y, _ = self.rnn((x - self.mean) / self.std)
        return self.fc(y[:, -1])


class ScaledResidualNet(nn.Module):
    """x + 0.5 * relu(fc(x)): a residual branch scaled by a constant."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(h + 0.5 * torch.relu(self.fc2(h)))


class PReluNet(nn.Module):
    """nn.PReLU after Linears: one slope per feature, then one shared; non-trivial slopes."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.PReLU(8), nn.Linear(8, 5), nn.PReLU(), nn.Linear(5, 3))
        for m in self.net:
            if isinstance(m, nn.PReLU):
                m.weight.data.uniform_(-0.3, 0.6)

    def forward(self, x):
        return self.net(x)


class PRelu1dNet(PReluNet):
    """nn.PReLU per channel after a Conv1d ((C, 1) or (1, C, 1) slopes), shared after another."""

    def __init__(self):
        nn.Module.__init__(self)
        self.net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.PReLU(4), nn.Conv1d(4, 3, 3), nn.PReLU(),
                                 nn.Flatten(), nn.Linear(3 * 6, 3))
        for m in self.net:
            if isinstance(m, nn.PReLU):
                m.weight.data.uniform_(-0.3, 0.6)


class PRelu2dNet(PReluNet):
    """nn.PReLU per channel after a Conv2d ((C, 1, 1) or (1, C, 1, 1) slopes), per feature after a Linear."""

    def __init__(self):
        nn.Module.__init__(self)
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.PReLU(3), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(12, 5), nn.PReLU(5), nn.Linear(5, 3))
        for m in self.net:
            if isinstance(m, nn.PReLU):
                m.weight.data.uniform_(-0.3, 0.6)


class Reductions(nn.Module):
    """The reductions PyTorch users write: ``torch.max(x, dim)[0]`` over a Conv1d's length, a sum
    over a GRU's time steps, and an adaptive max pooling to one after a Conv2d (ReduceMax,
    ReduceSum; dynamo writes the adaptive pooling as a ReduceMax too)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        if kind == "max_time":
            self.body, self.fc = nn.Conv1d(2, 5, 3, padding=1), nn.Linear(5, 3)
        elif kind == "sum_time":
            self.body, self.fc = nn.GRU(6, 5, batch_first=True), nn.Linear(5, 3)
        else:
            self.body, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveMaxPool2d(1), nn.Linear(4, 3)

    def forward(self, x):
        if self.kind == "max_time":
            return self.fc(torch.max(torch.relu(self.body(x)), dim=2)[0])
        if self.kind == "sum_time":
            return self.fc(self.body(x)[0].sum(dim=1))
        return self.fc(torch.flatten(self.pool(torch.relu(self.body(x))), 1))


class SeqFirstReader(nn.Module):
    """A recurrent layer in PyTorch's default layout (sequence first), read by a LayerNorm (or
    F.normalize over the features) and its last step, or by a maximum over time (``amax(dim=0)``)."""

    def __init__(self, kind, read):
        super().__init__()
        self.read = read
        self.rnn = getattr(nn, kind)(6, 10)
        self.ln = nn.LayerNorm(10)
        self.fc = nn.Linear(10, 4)
        self.ln.weight.data.uniform_(0.5, 1.5)
        self.ln.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        y = self.rnn(x.transpose(0, 1))[0]
        if self.read == "l2norm":
            return self.fc(nn.functional.normalize(y, dim=-1)[-1])
        return self.fc(self.ln(y)[-1] if self.read == "layernorm" else y.amax(dim=0))


class GatedNet(nn.Module):
    """``nn.GLU`` after a Linear, and a gated Conv1d: ``torch.chunk`` over channels, one half
    gating the other, then a slice of the length (``x[..., 1:-1]``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 3, padding=1)
        self.fc1 = nn.Linear(4 * 6, 12)
        self.glu = nn.GLU(dim=1)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        h = (a * torch.sigmoid(b))[..., 1:-1]
        return self.fc2(self.glu(self.fc1(h.flatten(1))))


SEQ = (8, 6)
# name -> (model factory, per-sample input shape, exporters, fixed batch or None)
class LinearAttention(nn.Module):
    """Two-head attention without a softmax over 5 tokens: q, k, v Linear, split into heads
    (Reshape, Transpose), ``q @ k^T / sqrt(d)`` and ``s @ v`` (MatMuls of two activations)."""

    def __init__(self, f=4, d=6, heads=2):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(f, d), nn.Linear(f, d), nn.Linear(f, d)
        self.fc = nn.Linear(d, 3)
        self.heads, self.d = heads, d

    def forward(self, x):
        n, t, _ = x.shape
        split = lambda z: z.reshape(n, t, self.heads, self.d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        s = q @ k.transpose(-1, -2) / (self.d // self.heads) ** 0.5
        return self.fc((s @ v).transpose(1, 2).reshape(n, t, self.d).mean(1))


class BilinearPool(nn.Module):
    """Second-order pooling: ``h^T @ h`` of a tanh projection over 5 tokens, flattened."""

    def __init__(self):
        super().__init__()
        self.p, self.fc = nn.Linear(4, 3), nn.Linear(9, 3)

    def forward(self, x):
        h = torch.tanh(self.p(x))
        return self.fc((h.transpose(1, 2) @ h).flatten(1))


class TimmAttention(nn.Module):
    """timm's Attention block without the softmax over 5 tokens of 4 features: one qkv Linear,
    ``reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)`` (the batch moved to axis 1 and
    back), ``(q * scale) @ k^T``, ``@ v``, a projection and a residual."""

    def __init__(self, dim=4, heads=2):
        super().__init__()
        self.qkv, self.proj, self.fc = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 3)
        self.heads, self.hd = heads, dim // heads

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = ((q * self.hd ** -0.5) @ k.transpose(-2, -1)) @ v
        return self.fc((x + self.proj(o.transpose(1, 2).reshape(b, n, c))).mean(1))


class SDPAttention(nn.Module):
    """Two-head self-attention by ``F.scaled_dot_product_attention`` over 5 tokens (dynamo
    decomposes it: the k transpose on the batch merged with the heads, the softmax inside)."""

    def __init__(self, f=4, d=4, heads=2):
        super().__init__()
        self.q, self.k, self.v, self.fc = nn.Linear(f, d), nn.Linear(f, d), nn.Linear(f, d), nn.Linear(d, 3)
        self.heads = heads

    def forward(self, x):
        b, n, _ = x.shape
        split = lambda z: z.reshape(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        o = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.fc(o.transpose(1, 2).reshape(b, n, -1).mean(1))


class ReflectCNN(nn.Module):
    """Conv2d with ``padding_mode="reflect"`` twice (a Pad node before each unpadded Conv)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(6 * 3 * 3, 3)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.fc(torch.relu(self.c2(h)).flatten(1))


class ReplicationPad1dNet(nn.Module):
    """nn.ReplicationPad1d before a Conv1d (the edge mode of ONNX Pad)."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ReplicationPad1d((2, 1))
        self.c = nn.Conv1d(2, 4, 4)
        self.fc = nn.Linear(4 * 10, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.c(self.pad(x))).flatten(1))


class AttnPool(nn.Module):
    """Attention pooling over a sequence: softmax over time (dim 1, not the last axis) of a score
    per step, the steps summed with those weights."""

    def __init__(self, features=2, hidden=6):
        super().__init__()
        self.proj, self.score, self.fc = nn.Linear(features, hidden), nn.Linear(hidden, 1), nn.Linear(hidden, 3)

    def forward(self, x):
        h = torch.tanh(self.proj(x))
        w = torch.softmax(self.score(h), dim=1)
        return self.fc((w * h).sum(1))


class SoftmaxConv1d(nn.Module):
    """A softmax over a Conv1d map's positions (dim 2) weighting that map, summed over positions."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.c(x))
        return self.fc((torch.softmax(h, dim=2) * h).sum(2))


class GRUAttnPool(nn.Module):
    """Attention pooling over a GRU's states, the scores divided by a temperature (folded into the
    score's Dense)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.score, self.fc = nn.GRU(6, 5, batch_first=True), nn.Linear(5, 1), nn.Linear(5, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        w = torch.softmax(self.score(y) / 2.0, dim=1)
        return self.fc((w * y).sum(1))


class L2NormNet(nn.Module):
    """F.normalize over the features of a Linear ([N, H], dim=1), of a sequence ([N, T, H],
    dim=-1, then the mean over time) or over the channels of a Conv1d map ([N, C, L], dim=1)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.f1 = nn.Conv1d(2, 4, 3, padding=1) if kind == "conv1d" else nn.Linear(6, 8)
        self.f2 = nn.Linear(4 * 6 if kind == "conv1d" else 8, 3)

    def forward(self, x):
        h = nn.functional.normalize(torch.relu(self.f1(x)), dim=-1 if self.kind == "seq" else 1)
        y = self.f2(h.flatten(1) if self.kind == "conv1d" else h)
        return y.mean(dim=1) if self.kind == "seq" else y


class RMSNormNet(nn.Module):
    """Linear -> nn.RMSNorm (or the hand-written x * rsqrt(mean(x²) + eps) * w) -> ReLU -> Linear."""

    def __init__(self, hand=False):
        super().__init__()
        self.hand = hand
        self.f1, self.f2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.norm = nn.RMSNorm(8)
        self.norm.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.f1(x)
        if self.hand:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm.weight
        else:
            h = self.norm(h)
        return self.f2(torch.relu(h))


CASES = {
    "mlp": (lambda: MLP(), (20,), ("ts", "dynamo"), None),
    "mlp_logsoftmax": (lambda: MLP(softmax=True), (20,), ("ts",), None),
    "mlp_fixed_batch": (lambda: MLP(), (20,), ("ts",), 3),
    "cnn1d": (CNN1d, (1, 40), ("ts", "dynamo"), None),
    "cnn2d": (CNN2d, (1, 12, 12), ("ts", "dynamo"), None),
    "cnn2d_fixed_batch": (CNN2d, (1, 12, 12), ("ts",), 2),
    "rnn": (lambda: LastStep("RNN"), SEQ, ("ts", "dynamo"), None),
    "rnn_relu_hn": (lambda: FinalHidden("RNN", nonlinearity="relu"), SEQ, ("ts", "dynamo"),
                    None),
    "rnn_2layer": (lambda: LastStep("RNN", layers=2), SEQ, ("ts", "dynamo"), None),
    # from an example batch of one, dynamo folds the zero state's first step to a constant
    "rnn_relu_batch1": (lambda: LastStep("RNN", nonlinearity="relu"), SEQ, ("dynamo",), 1),
    "rnn_bidir_seq": (lambda: WholeSequence("RNN"), SEQ, ("ts", "dynamo"), None),
    "gru": (lambda: LastStep("GRU"), SEQ, ("ts", "dynamo"), None),
    "gru_bidir_seq": (lambda: WholeSequence("GRU"), SEQ, ("ts", "dynamo"), None),
    "lstm": (lambda: LastStep("LSTM"), SEQ, ("ts", "dynamo"), None),
    "lstm_2layer": (lambda: LastStep("LSTM", layers=2), SEQ, ("ts", "dynamo"), None),
    "lstm_hn": (lambda: FinalHidden("LSTM"), SEQ, ("ts",), None),
    "gru_bidir_last": (lambda: BidirectionalRead("GRU"), SEQ, ("ts", "dynamo"), None),
    "lstm_bidir2_hn": (lambda: BidirectionalRead("LSTM", layers=2, read="hn"), SEQ, ("ts", "dynamo"), None),
    "bn_cnn2d": (BNNet, (1, 8, 8), ("ts", "dynamo"), None),
    "bn_cnn1d": (BN1dNet, (2, 16), ("ts", "dynamo"), None),
    "bn_cnn1d_training": (BN1dNet, (2, 16), ("ts",), None),
    "gelu": (GeluNet, (1, 4, 4), ("ts", "dynamo"), None),
    "gelu_decomposed": (GeluNet, (1, 4, 4), ("ts", "dynamo"), None),
    "elu": (EluNet, (1, 4, 4), ("ts", "dynamo"), None),
    "layernorm": (LayerNormNet, (3, 4), ("ts", "dynamo"), None),
    "groupnorm": (GroupNormNet, (1, 8, 8), ("ts", "dynamo"), None),
    "instancenorm": (InstanceNormNet, (2, 6), ("ts", "dynamo"), None),
    "lstm_seq_layernorm": (lambda: SeqFirstReader("LSTM", "layernorm"), SEQ, ("ts", "dynamo"), None),
    "gru_seq_max": (lambda: SeqFirstReader("GRU", "max"), SEQ, ("ts", "dynamo"), None),
    "gru_seq_l2norm": (lambda: SeqFirstReader("GRU", "l2norm"), SEQ, ("ts", "dynamo"), None),
    "gated": (GatedNet, (2, 8), ("ts", "dynamo"), None),
    "reduce_max_time": (lambda: Reductions("max_time"), (2, 12), ("ts", "dynamo"), None),
    "reduce_sum_time": (lambda: Reductions("sum_time"), SEQ, ("ts", "dynamo"), None),
    "reduce_adaptive_max": (lambda: Reductions("adaptive_max"), (1, 6, 6), ("ts", "dynamo"), None),
    "input_norm": (InputNormNet, (2, 6, 6), ("ts", "dynamo"), None),
    "scaled_residual": (ScaledResidualNet, (6,), ("ts", "dynamo"), None),
    "input_stage_cnn": (InputStageCNN, (72,), ("ts", "dynamo"), None),
    "input_stage_gru": (InputStageGRU, SEQ, ("ts", "dynamo"), None),
    "prelu": (PReluNet, (6,), ("ts", "dynamo"), None),
    "prelu_cnn1d": (PRelu1dNet, (2, 8), ("ts", "dynamo"), None),
    "prelu_cnn2d": (PRelu2dNet, (1, 4, 4), ("ts", "dynamo"), None),
    "softplus": (SoftplusNet, (6,), ("ts", "dynamo"), None),
    "mish": (lambda: SoftplusNet(nn.Mish), (6,), ("ts", "dynamo"), None),
    "reflect_cnn": (ReflectCNN, (1, 6, 6), ("ts", "dynamo"), None),
    "replication_pad1d": (ReplicationPad1dNet, (2, 10), ("ts", "dynamo"), None),
    "attn_pool": (AttnPool, (8, 2), ("ts", "dynamo"), None),
    "attn_pool_opset11": (AttnPool, (8, 2), ("ts",), None),
    "softmax_conv1d": (SoftmaxConv1d, (2, 8), ("ts", "dynamo"), None),
    "gru_attn_pool": (GRUAttnPool, SEQ, ("ts", "dynamo"), None),
    "linear_attention": (LinearAttention, (5, 4), ("ts", "dynamo"), None),
    "bilinear_pool": (BilinearPool, (5, 4), ("ts", "dynamo"), None),
    "timm_attention": (TimmAttention, (5, 4), ("ts", "dynamo"), None),
    "sdpa_attention": (SDPAttention, (5, 4), ("ts", "dynamo"), None),
    "l2norm": (lambda: L2NormNet("mlp"), (6,), ("ts", "dynamo"), None),
    "l2norm_seq": (lambda: L2NormNet("seq"), SEQ, ("ts", "dynamo"), None),
    "l2norm_conv1d": (lambda: L2NormNet("conv1d"), (2, 6), ("ts", "dynamo"), None),
    # TorchScript has no aten::rms_norm at any opset: nn.RMSNorm is dynamo's only
    "rmsnorm": (RMSNormNet, (6,), ("dynamo",), None),
    "rmsnorm_opset23": (RMSNormNet, (6,), ("dynamo",), None),
    "rmsnorm_hand": (lambda: RMSNormNet(hand=True), (6,), ("ts", "dynamo"), None),
}
# Both exporters fold a BatchNorm into the convolution before it by default; these cases keep
# their BatchNormalization nodes (eval mode), or export them in training mode.
KEEP_BN = {"ts": {"do_constant_folding": False}, "dynamo": {"optimize": False}}
EXPORT_OPTIONS = {"bn_cnn2d": KEEP_BN, "bn_cnn1d": KEEP_BN,
                  "bn_cnn1d_training": {"ts": {"training": torch.onnx.TrainingMode.TRAINING}},
                  # GELU is one Gelu node from opset 20 (both exporters' default), a decomposition before
                  "gelu_decomposed": {"ts": {"opset_version": 17}, "dynamo": {"opset_version": 18}},
                  # before opset 13 Softmax flattens from its axis: TorchScript transposes time last around it
                  "attn_pool_opset11": {"ts": {"opset_version": 11}},
                  # nn.RMSNorm is one RMSNormalization node from opset 23, a decomposition before
                  "rmsnorm_opset23": {"dynamo": {"opset_version": 23}}}


def export(name, factory, shape, exporter, fixed, out_dir):
    torch.manual_seed(sum(map(ord, name)))
    model = factory()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    batch = fixed or 3
    x = torch.randn((batch,) + shape)
    path = os.path.join(out_dir, f"{name}_{exporter}.onnx")
    kw = dict(input_names=["x"], output_names=["y"], **EXPORT_OPTIONS.get(name, {}).get(exporter, {}))
    if exporter == "ts":
        if fixed is None:
            kw["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
        torch.onnx.export(model, (x,), path, dynamo=False, **kw)
    else:
        if fixed is None:
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, **kw)
    return os.path.basename(path)


def main(out_dir=OUT, *names):
    """Export every case (or the ``names`` given) and update the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    warnings.filterwarnings("ignore")
    path = os.path.join(out_dir, "manifest.json")
    manifest = json.load(open(path)) if names and os.path.exists(path) else {}
    for name, (factory, shape, exporters, fixed) in CASES.items():
        if names and name not in names:
            continue
        for exporter in exporters:
            fname = export(name, factory, shape, exporter, fixed, out_dir)
            manifest[fname] = {"input_shape": list(shape), "exporter": exporter,
                               "fixed_batch": fixed, "torch": torch.__version__}
            if "training" in EXPORT_OPTIONS.get(name, {}).get(exporter, {}):
                manifest[fname]["training_mode"] = True  # onnxruntime normalises with the batch's statistics
            print("wrote", fname, os.path.getsize(os.path.join(out_dir, fname)), "bytes")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

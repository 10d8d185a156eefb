"""The zoo's PyTorch modules, PyTorch's default initialisation (benchmark only: needs torch)."""

from __future__ import annotations

import torch
from torch import nn


class LastStep(nn.Module):
    """A recurrent layer (batch first, 64 units) read at its last step, then a linear classifier."""

    def __init__(self, kind, n_in, n_classes, hidden=64):
        super().__init__()
        self.rnn = getattr(nn, kind)(n_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1, :])


def torch_module(model: str, shape: tuple, n_classes: int, seed: int) -> nn.Module:
    """The zoo module for a per-sample input shape, PyTorch's default initialisation at ``seed``."""
    torch.manual_seed(seed)
    if model == "mlp":
        n = 1
        for s in shape:
            n *= s
        return nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, n_classes))
    if model == "cnn1d":
        layers, c = [], 1
        for co in (16, 32, 32):
            layers += [nn.Conv1d(c, co, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2)]
            c = co
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * (shape[-1] // 8), n_classes))
    if model == "cnn2d":
        layers, c = [], 1
        for co in (16, 32):
            layers += [nn.Conv2d(c, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(), nn.MaxPool2d(2)]
            c = co
        side = shape[-1] // 4
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * side * side, n_classes))
    return LastStep({"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}[model], shape[-1], n_classes)

"""The PyTorch training loop shared by the float baselines (benchmark only): the engine's sample
order (datapath §12), batch-mean loss, the learning rate halved at the decay epochs."""

from __future__ import annotations

import time

from edgedfa.train import batch_order  # first: edgedfa pins BLAS threads

import torch  # noqa: E402


def fit_and_score(net, opt, x, y, xt, y_test, seed, epochs, decay=(), batch=32):
    """Train ``net`` in place (train mode), score it in eval mode (BatchNorm's running
    statistics); (test accuracy, training samples per second)."""
    t0 = time.perf_counter()
    net.train()
    for ep in range(epochs):
        if ep in decay:
            for grp in opt.param_groups:
                grp["lr"] /= 2
        order = torch.tensor(batch_order(seed, ep, len(x)))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    secs = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        acc = float((net(xt).argmax(1).numpy() == y_test).mean())
    return acc, len(x) * epochs / secs

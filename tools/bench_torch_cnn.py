"""PyTorch float32 BP baseline of the built-in `--arch cnn` (benchmark only; torch is never a
dependency of edgedfa): same layers, same init (the engine's float init from the PRNG), same
data, batch, epochs, learning rate and schedule as the integer run.

    python tools/bench_torch_cnn.py --dataset digits --seeds 0 1 2 --epochs 20 --threads 1
    python tools/bench_torch_cnn.py --dataset shifted-digits --optim adam --lr 1e-3

SGD by default with lr 2^-lr_shift on the batch mean, momentum 1 - 2^-m if --momentum-shift,
and the lr halved at each --decay epoch: the float analogue of the engine's update (§12).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from edgedfa import arch, data  # first: pins BLAS threads like the engine

sys.path.insert(0, os.path.dirname(__file__))
from torch_fit import fit_and_score  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, graph):
        super().__init__()
        convs = [n for n in graph.nodes if n.op == "Conv"]
        dense = [n for n in graph.nodes if n.op == "Dense"][0]
        self.convs = torch.nn.ModuleList()
        for n in convs:
            w = n.params["W"]
            c = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=n.attrs["pads"][0])
            c.weight.data = torch.tensor(w, dtype=torch.float32)
            c.bias.data = torch.tensor(n.params["B"], dtype=torch.float32)
            self.convs.append(c)
        self.fc = torch.nn.Linear(dense.params["W"].shape[1], dense.params["W"].shape[0])
        self.fc.weight.data = torch.tensor(dense.params["W"], dtype=torch.float32)
        self.fc.bias.data = torch.tensor(dense.params["B"], dtype=torch.float32)

    def forward(self, x):
        for c in self.convs:
            x = torch.nn.functional.max_pool2d(torch.relu(c(x)), 2)
        return self.fc(x.flatten(1))


def run(dataset, seed, epochs, optim, lr, momentum, decay, threads, batch=32):
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    ds = data.BUILTIN[dataset]()
    side = int(round(np.sqrt(np.prod(ds.sample_shape))))
    x = torch.tensor(ds.x_train.reshape(-1, 1, side, side), dtype=torch.float32)
    y = torch.tensor(ds.y_train)
    xt = torch.tensor(ds.x_test.reshape(-1, 1, side, side), dtype=torch.float32)
    net = Net(arch.build("cnn", seed, (1, side, side), ds.n_classes))
    if optim == "adam":
        opt = torch.optim.Adam(net.parameters(), lr)
    else:
        opt = torch.optim.SGD(net.parameters(), lr, momentum=momentum)
    return fit_and_score(net, opt, x, y, xt, ds.y_test, seed, epochs, decay, batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--optim", choices=("adam", "sgd"), default="sgd")
    ap.add_argument("--lr-shift", type=int, default=4, help="SGD lr 2^-N (ignored with --lr)")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--momentum-shift", type=int, help="SGD momentum 1 - 2^-m")
    ap.add_argument("--decay", nargs="*", type=int, help="epochs that halve the lr (default: 0.7 * epochs)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    lr = a.lr if a.lr is not None else (1e-3 if a.optim == "adam" else 2.0 ** -a.lr_shift)
    mom = 0.0 if a.momentum_shift is None else 1.0 - 2.0 ** -a.momentum_shift
    decay = set(a.decay) if a.decay is not None else {int(a.epochs * 0.7)}
    res = [run(a.dataset, s, a.epochs, a.optim, lr, mom, decay, a.threads) for s in a.seeds]
    accs = [r[0] for r in res]
    print(f"| torch float32 cnn ({a.dataset}, {a.optim} lr {lr:g}, momentum {mom:g}, {a.threads} thread) | "
          f"{statistics.median(accs):.3f} | {', '.join(f'{v:.3f}' for v in accs)} | "
          f"{statistics.median(r[1] for r in res):.0f} |")


if __name__ == "__main__":
    main()

"""PyTorch float32 BPTT baseline of the built-in recurrent models on the digits (benchmark only;
torch is never a dependency of edgedfa).

    python tools/bench_torch_rnn.py --kind gru --seeds 0 1 2 --epochs 30 --optim adam
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from edgedfa import data  # first: pins BLAS threads like the engine

sys.path.insert(0, os.path.dirname(__file__))
from torch_fit import fit_and_score  # noqa: E402

import torch  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, kind, hidden=64, n_in=8, n_classes=10):
        super().__init__()
        cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[kind]
        self.rnn = cls(n_in, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def run(kind, seed, epochs, optim, lr, threads):
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    ds = data.digits()
    x = torch.tensor(ds.x_train.reshape(-1, 8, 8), dtype=torch.float32)
    y = torch.tensor(ds.y_train)
    xt = torch.tensor(ds.x_test.reshape(-1, 8, 8), dtype=torch.float32)
    net = Net(kind)
    opt = torch.optim.Adam(net.parameters(), lr) if optim == "adam" else torch.optim.SGD(net.parameters(), lr)
    return fit_and_score(net, opt, x, y, xt, ds.y_test, seed, epochs, {int(epochs * 0.7)} if optim == "sgd" else ())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="gru")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--optim", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    res = [run(a.kind, s, a.epochs, a.optim, a.lr, a.threads) for s in a.seeds]
    accs = [r[0] for r in res]
    print(f"| torch float32 {a.kind} ({a.optim} {a.lr}, {a.threads} thread) | {statistics.median(accs):.3f} | "
          f"{', '.join(f'{v:.3f}' for v in accs)} | {statistics.median(r[1] for r in res):.0f} |")


if __name__ == "__main__":
    main()

"""The zoo's DFA plans in float32 PyTorch: how much of a gap between edgedfa's DFA variants and
BP belongs to the algorithm, and how much to the integers (benchmark only: needs torch).

    python tools/zoo_float_dfa.py -o zoo/ --pairs mlp-signal cnn1d-signal rnn-digits-seq

For each pair and seed the zoo module (``tools/zoo_torch.py``, PyTorch's default
initialisation) trains in float32 with BP and with the plan edgedfa's defaults give the
graph: ``sdfa`` and ``dfa`` for an MLP (every hidden layer takes the output error through a
fixed random matrix: k = 1 uniform non-zero per unit, or dense uniform), ``hybrid`` for a CNN
or RNN (``credit.make_plan``: DFA to the output of every module but the top one, BP inside
each module and in the top one; conv blocks take k = 1 sparse per-element feedback with their
biases frozen, a recurrent module dense feedback at its last step). Same data, sample order,
epochs, batch size and learning-rate schedule as edgedfa's defaults, Adam (1e-3) and SGD
(0.01, momentum 0.9); the better median of three seeds is reported. Results are JSON lines in
``OUT/float_dfa.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from edgedfa.data import BUILTIN  # first: edgedfa pins BLAS threads
from edgedfa.train import TrainConfig, batch_order, default_decay_epochs

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo import PAIRS, pair_name  # noqa: E402
from zoo_torch import torch_module  # noqa: E402

PLAN = {"mlp": ("sdfa", "dfa"), "cnn1d": ("hybrid",), "cnn2d": ("hybrid",), "gru": ("hybrid",),
        "lstm": ("hybrid",), "rnn": ("hybrid",)}


class LastStep(nn.Module):
    """A batch-first recurrent layer read at its last step (the recurrent module's output)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0][:, -1, :]


def modules(model: str, net) -> list:
    """The module split edgedfa's plan makes of the zoo module, bottom first."""
    if model == "mlp":
        lins = [m for m in net if isinstance(m, nn.Linear)]
        return [nn.Sequential(net[0], lins[0], nn.ReLU())] + [nn.Sequential(lin, nn.ReLU()) for lin in lins[1:-1]] \
            + [lins[-1]]
    if model == "cnn1d":  # three conv blocks; the top block and the head merge into one BP module
        return [net[0:3], net[3:6], net[6:]]
    if model == "cnn2d":
        return [net[0:4], net[4:]]
    return [LastStep(net.rnn), net.fc]


def feedback(algo: str, n: int, classes: int, gen) -> torch.Tensor:
    """A fixed random (n, classes) matrix: one uniform non-zero per row (sparse), or dense."""
    if algo == "dfa":
        return torch.rand(n, classes, generator=gen) * 2 - 1
    b = torch.zeros(n, classes)
    b[torch.arange(n), torch.randint(0, classes, (n,), generator=gen)] = torch.rand(n, generator=gen) * 2 - 1
    return b


def fit(model: str, dataset: str, shape: tuple, seed: int, algo: str, optimizer: str) -> float:
    """Test accuracy of the module trained with ``algo`` (bp | dfa | sdfa | hybrid)."""
    ds = BUILTIN[dataset]()
    cfg = TrainConfig()
    net = torch_module(model, shape, ds.n_classes, seed)
    parts = modules(model, net)
    gen = torch.Generator().manual_seed(1000 + seed)
    fbs = []
    if algo != "bp":
        with torch.no_grad():
            h = torch.zeros((1,) + tuple(shape))
            for part in parts[:-1]:
                h = part(h)
                conv = [m for m in part.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
                kind = "sdfa" if algo == "sdfa" or conv else "dfa"
                fbs.append(feedback(kind, h[0].numel(), ds.n_classes, gen))
                for m in conv:  # hybrid: a DFA conv block trains its kernels only
                    if m.bias is not None:
                        m.bias.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-3) if optimizer == "adam" else torch.optim.SGD(params, 0.01, momentum=0.9)
    x = torch.tensor(ds.x_train.reshape((-1,) + tuple(shape)), dtype=torch.float32)
    y = torch.tensor(ds.y_train)
    decay = default_decay_epochs(cfg.epochs)
    net.train()
    for ep in range(cfg.epochs):
        if ep in decay:
            for grp in opt.param_groups:
                grp["lr"] /= 2
        order = torch.tensor(batch_order(seed, ep, len(x)))
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            if algo == "bp":
                nn.functional.cross_entropy(net(xb), yb).backward()
            else:  # each module's input detached: no error crosses a module boundary by BP
                outs, h = [], xb
                for part in parts[:-1]:
                    outs.append(part(h))
                    h = outs[-1].detach()
                logits = parts[-1](h)
                nn.functional.cross_entropy(logits, yb).backward()
                with torch.no_grad():
                    e = torch.softmax(logits, 1)
                    e[torch.arange(len(yb)), yb] -= 1
                    e /= len(yb)
                for out, b in zip(outs, fbs):
                    out.backward((e @ b.T).reshape(out.shape))
            opt.step()
    net.eval()
    with torch.no_grad():
        xt = torch.tensor(ds.x_test.reshape((-1,) + tuple(shape)), dtype=torch.float32)
        return float((net(xt).argmax(1).numpy() == ds.y_test).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default="zoo")
    ap.add_argument("--pairs", nargs="*", help="model-dataset names (default: all)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "float_dfa.jsonl"), "a") as fh:
        for model, dataset, shape in PAIRS:
            if args.pairs and pair_name(model, dataset) not in args.pairs:
                continue
            for algo in ("bp",) + PLAN[model]:
                for optimizer in ("adam", "sgd"):
                    accs = [fit(model, dataset, shape, s, algo, optimizer) for s in args.seeds]
                    row = {"model": model, "dataset": dataset, "algo": algo, "optimizer": optimizer,
                           "seeds": args.seeds, "test_accuracy": accs, "median": statistics.median(accs)}
                    print(json.dumps(row), flush=True)
                    fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

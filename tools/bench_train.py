"""Training benchmarks: accuracy (median of seeds) per arch, algorithm and bit width.

    python tools/bench_train.py --arch mlp --algos bp dfa sdfa --seeds 0 1 2 --out bench.json
    python tools/bench_train.py --arch mlp --algos bp dfa sdfa --bits 4 6 8 12 16 --seeds 0
    python tools/bench_train.py --float --arch mlp          # float64 BP reference of the same model
    python tools/bench_train.py --arch cnn --algos plan --config plan.toml   # a [[modules]] plan
    python tools/bench_train.py --arch cnn --algos bp hybrid --holdout      # choose settings here

--holdout trains on 80% of the training split and reports the accuracy on the other 20%
(edgedfa.data.holdout, a fixed stratified split): settings are chosen on it, never on the
test split; rows then name the data set `<name>-holdout`.

Prints one markdown row per configuration; --out appends JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from edgedfa import arch, data, float_mlp  # noqa: E402  (first: edgedfa pins BLAS to one thread)
import numpy as np  # noqa: E402,F401
from edgedfa.api import build_model, fit  # noqa: E402
from edgedfa.numerics import Numerics  # noqa: E402
from edgedfa.train import TrainConfig, batch_order  # noqa: E402


def run_int(arch_name, algo, bits, seed, ds, epochs=None, lr_shift=None, extra=None, modules=None):
    g = arch.build(arch_name, seed, ds.sample_shape, ds.n_classes)
    kw = dict(extra or {})
    if bits >= 12:
        kw.setdefault("acc_bits", 48)
    model = build_model(g, Numerics.from_bits(bits, **kw), seed)
    d = {}
    if epochs:
        d["epochs"] = epochs
        d["lr_decay_epochs"] = [int(epochs * 0.7)]
    if lr_shift is not None:
        d["lr_shift"] = lr_shift
    t = time.perf_counter()
    met = fit(model, ds, TrainConfig(algo=algo, seed=seed, **d), quiet=True, modules_table=modules)
    return {"test_accuracy": met["test_accuracy"], "train_accuracy": met["train_accuracy"],
            "samples_per_second": met["samples_per_second"], "seconds": time.perf_counter() - t,
            "saturated_weights": sum(v["W"]["at_limit"] for v in met["saturation"].values() if "W" in v)}


def run_float_mlp(seed, ds, epochs, lr):
    g = arch.build("mlp", seed, ds.sample_shape, ds.n_classes)
    Ws = [n.params["W"] for n in g.nodes if n.op == "Dense"]
    Bs = [n.params["B"] for n in g.nodes if n.op == "Dense"]
    x = ds.x_train.reshape(len(ds.x_train), -1)
    Ws, Bs = float_mlp.train(Ws, Bs, x, ds.y_train, epochs, lr, 32, lambda ep: batch_order(seed, ep, len(x)))
    return {"test_accuracy": float_mlp.accuracy(Ws, Bs, ds.x_test.reshape(len(ds.x_test), -1), ds.y_test)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--algos", nargs="+", default=["bp", "dfa", "sdfa"])
    ap.add_argument("--bits", nargs="+", type=int, default=[8])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr-shift", type=int)
    ap.add_argument("--float", action="store_true", help="float64 BP of the MLP instead")
    ap.add_argument("--config", help="TOML file whose [[modules]] plan replaces the preset (algo name 'plan')")
    ap.add_argument("--holdout", action="store_true",
                    help="train on 80%% of the training split, report accuracy on the held-out 20%%")
    ap.add_argument("--out")
    args = ap.parse_args()
    modules = None
    if args.config:
        from edgedfa.config import load_config

        modules = load_config(args.config).get("modules")
        if not modules:
            ap.error(f"--config {args.config}: no [[modules]] plan in it")
    ds = data.select_dataset(name=args.dataset)
    if args.holdout:
        ds = data.holdout(ds)
    rows = []
    if args.float:
        res = [run_float_mlp(s, ds, args.epochs or 30, 2.0 ** -(args.lr_shift or 4)) for s in args.seeds]
        accs = [r["test_accuracy"] for r in res]
        print(f"| float64 {args.arch} | bp | 64 | {statistics.median(accs):.3f} | {', '.join(f'{a:.3f}' for a in accs)} | |")
        return
    for bits in args.bits:
        for algo in args.algos:
            res = [run_int(args.arch, algo, bits, s, ds, args.epochs, args.lr_shift, modules=modules) for s in args.seeds]
            accs = [r["test_accuracy"] for r in res]
            sps = statistics.median(r["samples_per_second"] for r in res)
            row = {"arch": args.arch, "dataset": ds.name, "algo": algo, "bits": bits, "seeds": args.seeds,
                   "config": args.config,
                   "median_test_accuracy": statistics.median(accs), "test_accuracies": accs,
                   "samples_per_second": sps, "saturated_weights": [r["saturated_weights"] for r in res]}
            rows.append(row)
            print(f"| {args.arch} ({ds.name}) | {algo} | {bits} | {row['median_test_accuracy']:.3f} | "
                  f"{', '.join(f'{a:.3f}' for a in accs)} | {sps:.0f} |", flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

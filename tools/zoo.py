"""The model zoo: PyTorch modules as users write them, trained by edgedfa from their ONNX exports
with defaults only, next to PyTorch float32 BP of the same module on the same data.

    pip install torch==2.13.0 onnxscript          # benchmark only: never an edgedfa dependency
    python tools/zoo.py export -o zoo/            # ONNX files (TorchScript and dynamo) per seed
    python tools/zoo.py torch -o zoo/             # PyTorch float32 baselines (better of SGD+momentum, Adam)
    python tools/zoo.py train -o zoo/ --algos bp hybrid sdfa --bits 8 16
    python tools/zoo.py table -o zoo/             # the markdown table for docs/benchmarks.md

Every module keeps PyTorch's default initialisation (``torch.manual_seed(seed)``): seed s of a
pair is the ONNX file exported at seed s, trained by ``edgedfa train --model F --dataset D
--algo A --seed s`` and nothing else. The PyTorch baseline trains the same module for the
same epochs and batch size as edgedfa's defaults, in edgedfa's sample order, with SGD
(lr 0.01, momentum 0.9) and with Adam (lr 1e-3), and reports the better. Results are JSON
lines in ``OUT/results.jsonl`` (a rerun skips what is there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from edgedfa.data import BUILTIN  # first: edgedfa pins BLAS threads
from edgedfa.train import TrainConfig

# (module, dataset, per-sample input shape): the pairs of the zoo
PAIRS = [("mlp", "digits-std", (64,)), ("mlp", "shifted-digits", (256,)), ("mlp", "signal", (128,)),
         ("cnn2d", "digits-std", (1, 8, 8)), ("cnn2d", "shifted-digits", (1, 16, 16)),
         ("cnn1d", "signal", (1, 128)), ("cnn1d", "digits-seq", (1, 64)),
         ("gru", "digits-seq", (64, 1)), ("gru", "signal", (32, 4)),
         ("lstm", "digits-seq", (64, 1)), ("lstm", "signal", (32, 4)),
         ("rnn", "digits-seq", (64, 1)), ("rnn", "signal", (32, 4))]
EXPORTERS = ("ts", "dynamo")
FAST = [("mlp", "digits-std"), ("cnn1d", "signal"), ("gru", "digits-seq")]  # the CI subset


def pair_name(model: str, dataset: str) -> str:
    return f"{model}-{dataset}"


def onnx_path(out: str, model: str, dataset: str, seed: int, exporter: str = "ts") -> str:
    return os.path.join(out, "onnx", f"{pair_name(model, dataset)}-s{seed}-{exporter}.onnx")


# --------------------------------------------------------------------------- PyTorch side

def export(out: str, model: str, dataset: str, shape: tuple, seed: int) -> None:
    """Both exporters' ONNX files of the module at ``seed`` (eval mode). Both exporters fold a
    BatchNorm into the convolution before it unless told not to: a module with BatchNorm is
    exported with its BatchNormalization nodes kept, for edgedfa to train them."""
    import torch
    from zoo_torch import torch_module

    ds = BUILTIN[dataset]()
    net = torch_module(model, shape, ds.n_classes, seed).eval()
    keep_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    x = torch.zeros((2,) + tuple(shape))
    os.makedirs(os.path.join(out, "onnx"), exist_ok=True)
    torch.onnx.export(net, x, onnx_path(out, model, dataset, seed, "ts"), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=not keep_bn)
    torch.onnx.export(net, (x,), onnx_path(out, model, dataset, seed, "dynamo"), dynamo=True, input_names=["x"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                      external_data=False, optimize=not keep_bn)


def torch_baseline(model: str, dataset: str, shape: tuple, seed: int, epochs: int, batch: int) -> dict:
    """Test accuracy of PyTorch float32 BP: SGD (0.01, momentum 0.9) and Adam (1e-3)."""
    import torch
    from torch_fit import fit_and_score
    from zoo_torch import torch_module

    torch.set_num_threads(1)
    ds = BUILTIN[dataset]()
    x = torch.tensor(ds.x_train.reshape((-1,) + tuple(shape)), dtype=torch.float32)
    xt = torch.tensor(ds.x_test.reshape((-1,) + tuple(shape)), dtype=torch.float32)
    res = {}
    for name, make in (("sgd", lambda p: torch.optim.SGD(p, 0.01, momentum=0.9)),
                       ("adam", lambda p: torch.optim.Adam(p, 1e-3))):
        net = torch_module(model, shape, ds.n_classes, seed)
        res[name], res[f"{name}_samples_per_second"] = fit_and_score(
            net, make(net.parameters()), x, torch.tensor(ds.y_train), xt, ds.y_test, seed, epochs, batch=batch)
    res["test_accuracy"] = max(res["sgd"], res["adam"])
    return res


# --------------------------------------------------------------------------- edgedfa side

def edgedfa_run(out: str, model: str, dataset: str, seed: int, algo: str, bits: int, exporter: str = "ts") -> dict:
    """``edgedfa train`` with defaults only on the exported file; its metrics."""
    run_dir = os.path.join(out, "runs", f"{pair_name(model, dataset)}-s{seed}-{exporter}-{algo}-{bits}")
    if os.path.exists(os.path.join(run_dir, "metrics.json")):
        os.rename(run_dir, run_dir + f".old-{int(time.time())}")
    cmd = ["edgedfa", "train", "--model", onnx_path(out, model, dataset, seed, exporter), "--dataset", dataset,
           "--algo", algo, "--seed", str(seed), "--quiet", "--out", run_dir]
    if bits != 8:
        cmd += ["--bits", str(bits)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip()[-400:]}
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        m = json.load(fh)
    sat = max((v["fraction_at_limit"] for layer in m["saturation"].values() for v in layer.values()), default=0.0)
    return {"test_accuracy": m["test_accuracy"], "train_accuracy": m["train_accuracy"], "epochs": m["epochs"],
            "seconds": time.perf_counter() - t0, "samples_per_second": m["samples_per_second"],
            "max_fraction_at_limit": sat, "run": run_dir}


# --------------------------------------------------------------------------- driver

def _done(path: str) -> dict:
    rows = {}
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                r = json.loads(line)
                rows[r["key"]] = r
    return rows


def _job(job):
    kind, out, model, dataset, shape, seed, extra = job
    if kind == "torch":
        return torch_baseline(model, dataset, shape, seed, extra["epochs"], extra["batch"])
    return edgedfa_run(out, model, dataset, seed, extra["algo"], extra["bits"], extra["exporter"])


def run_jobs(out: str, jobs: list, workers: int) -> None:
    """Run the jobs not yet in results.jsonl, ``workers`` at a time; append each row as it ends."""
    path = os.path.join(out, "results.jsonl")
    done = _done(path)
    todo = [(key, job) for key, job in jobs if key not in done]
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(_job, job): (key, job) for key, job in todo}
        for fut in futures:
            key, job = futures[fut]
            row = {"key": key, "kind": job[0], "model": job[2], "dataset": job[3], "seed": job[5], **job[6],
                   **fut.result()}
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{key}: {row.get('test_accuracy', row.get('error'))}", flush=True)


def selected(args) -> list:
    pairs = [(m, d, s) for m, d, s in PAIRS if not args.pairs or pair_name(m, d) in args.pairs]
    if args.fast:
        pairs = [p for p in pairs if (p[0], p[1]) in FAST]
    return pairs


def table(out: str) -> str:
    """Median over seeds per pair: PyTorch, and edgedfa per algorithm and width."""
    rows = _done(os.path.join(out, "results.jsonl")).values()
    cols = sorted({(r["algo"], r["bits"]) for r in rows if r["kind"] == "edgedfa" and r.get("exporter") == "ts"},
                  key=lambda c: (c[1], ["bp", "hybrid", "sdfa", "dfa", "modular"].index(c[0])))
    head = "| model | dataset | PyTorch float32 BP | " + " | ".join(f"int{b} `{a}`" for a, b in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for model, dataset, _ in PAIRS:
        def med(pred):
            v = [r["test_accuracy"] for r in rows if pred(r) and r.get("test_accuracy") is not None]
            return (f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else
                    f"{v[0]:.3f}" if v else "—")
        same = lambda r: r["model"] == model and r["dataset"] == dataset  # noqa: E731
        cells = [med(lambda r: same(r) and r["kind"] == "torch")]
        cells += [med(lambda r, a=a, b=b: same(r) and r["kind"] == "edgedfa" and r["algo"] == a
                      and r["bits"] == b and r.get("exporter") == "ts") for a, b in cols]
        lines.append(f"| {model} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("export", "torch", "train", "table"))
    ap.add_argument("-o", "--out", default="zoo")
    ap.add_argument("--pairs", nargs="*", help="model-dataset names (default: all)")
    ap.add_argument("--fast", action="store_true", help="the CI subset of pairs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--algos", nargs="+", default=["bp"])
    ap.add_argument("--bits", nargs="+", type=int, default=[8])
    ap.add_argument("--exporters", nargs="+", default=["ts"], choices=EXPORTERS)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.what == "table":
        print(table(args.out))
        return 0
    pairs = selected(args)
    if args.what == "export":
        for model, dataset, shape in pairs:
            for seed in args.seeds:
                export(args.out, model, dataset, shape, seed)
        return 0
    cfg = TrainConfig()  # the defaults edgedfa trains with: PyTorch gets the same epochs and batch
    jobs = []
    for model, dataset, shape in pairs:
        for seed in args.seeds:
            if args.what == "torch":
                jobs.append((f"torch/{pair_name(model, dataset)}/{seed}",
                             ("torch", args.out, model, dataset, shape, seed,
                              {"epochs": cfg.epochs, "batch": cfg.batch_size})))
                continue
            for algo in args.algos:
                for bits in args.bits:
                    for exp in args.exporters:
                        jobs.append((f"edgedfa/{pair_name(model, dataset)}/{seed}/{algo}/{bits}/{exp}",
                                     ("edgedfa", args.out, model, dataset, shape, seed,
                                      {"algo": algo, "bits": bits, "exporter": exp})))
    run_jobs(args.out, jobs, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

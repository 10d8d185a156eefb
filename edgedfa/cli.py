"""Command line: parses arguments, calls library functions, prints (docs/ names the commands)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import EdgeDFAError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise EdgeDFAError(f"{self.prog}: {message}")


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    from .arch import ARCHS
    from .credit import ALGOS
    from .data import BUILTIN

    datasets = tuple(BUILTIN)
    ap = _Parser(prog="edgedfa", description="Fixed-point on-device training with direct feedback alignment.")
    _add_common(ap)
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model in integer arithmetic")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="FILE.onnx", help="train the network an ONNX file defines")
    src.add_argument("--arch", choices=ARCHS, help="a built-in architecture (default: mlp)")
    t.add_argument("--data", metavar="FILE.npz", help="x_train, y_train, x_test, y_test (default: embedded digits)")
    t.add_argument("--dataset", choices=datasets, help="a built-in dataset instead of --data (default: digits)")
    t.add_argument("--algo", choices=ALGOS, help="credit assignment (default: sdfa)")
    t.add_argument("--feedback-sparsity", type=int, metavar="K", help="non-zeros per neuron for sdfa (default 1)")
    t.add_argument("--feedback-kind", choices=("dense", "sparse", "channel", "dilated"),
                   help="feedback projector for DFA modules (channel/dilated apply to conv maps)")
    t.add_argument("--feedback-values", choices=("uniform", "binary", "ternary"), help="feedback value kind")
    t.add_argument("--stored-feedback", action="store_true",
                   help="keep feedback matrices in memory instead of regenerating them (same bits)")
    t.add_argument("--bits", type=int, metavar="N", help="word width of weights, activations, errors (default 8)")
    t.add_argument("--config", metavar="FILE.toml", help="formats, rounding, per-layer settings, modules, hardware")
    t.add_argument("--epochs", type=int, metavar="N")
    t.add_argument("--batch-size", type=int, metavar="B")
    t.add_argument("--lr-shift", type=int, metavar="S", help="learning rate 2^-S (default from the config)")
    t.add_argument("--seed", type=int, metavar="S")
    t.add_argument("--backend", choices=("fast", "reference"), help="integer kernel backend (same bits)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR bit-exactly")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(t)

    e = sub.add_parser("eval", help="accuracy of a checkpoint")
    e.add_argument("checkpoint", metavar="CHECKPOINT")
    e.add_argument("--data", metavar="FILE.npz")
    e.add_argument("--dataset", choices=datasets)
    e.add_argument("--json", metavar="FILE")
    _add_common(e)

    x = sub.add_parser("export", help="write a checkpoint as ONNX")
    x.add_argument("checkpoint", metavar="CHECKPOINT")
    x.add_argument("--format", choices=("float", "qdq", "int"), required=True)
    x.add_argument("-o", "--output", metavar="FILE.onnx", required=True)
    _add_common(x)

    m = sub.add_parser("emulate", help="run training steps through the FPGA datapath model")
    m.add_argument("checkpoint", metavar="CHECKPOINT")
    m.add_argument("--data", metavar="FILE.npz")
    m.add_argument("--dataset", choices=datasets)
    m.add_argument("--steps", type=int, default=1)
    m.add_argument("--array", metavar="RxC", help="PE array shape (default from config, 16x16)")
    m.add_argument("--clock-mhz", type=float)
    m.add_argument("--config", metavar="FILE.toml")
    m.add_argument("--json", metavar="FILE")
    _add_common(m)

    bn = sub.add_parser("bench", help="training and kernel speed, against PyTorch float32 when installed")
    bn.add_argument("--workloads", nargs="+", metavar="NAME", help="training workloads (default: all; see --list)")
    bn.add_argument("--algos", nargs="+", choices=ALGOS, metavar="ALGO",
                    help="algorithms of the engine columns (default: bp dfa sdfa hybrid)")
    bn.add_argument("--only", nargs="+", metavar="SECTION",
                    help="sections to run: train, gemm, emulate, cold-start (default: all)")
    bn.add_argument("--repeats", type=int, metavar="N", help="timed repeats per figure, median reported (default 5)")
    bn.add_argument("--seconds", type=float, metavar="S", help="length of one timed repeat (default 0.4)")
    bn.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (two small workloads)")
    bn.add_argument("--no-torch", action="store_true", help="skip the PyTorch column even when it is installed")
    bn.add_argument("--no-int8-route", action="store_true",
                    help="train without the int8 dot-product route (the kernels as before it; same bits)")
    bn.add_argument("--json", metavar="FILE", default="bench.json", help="report as JSON (default bench.json)")
    bn.add_argument("--markdown", metavar="FILE", default="bench.md",
                    help="tables for docs/benchmarks.md (default bench.md)")
    bn.add_argument("--list", action="store_true", help="name the workloads and exit")
    _add_common(bn)

    i = sub.add_parser("info", help="describe an ONNX file or a checkpoint")
    i.add_argument("path", metavar="FILE.onnx|CHECKPOINT")
    _add_common(i)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if not args.command:
            build_parser().print_help()
            return 0
        return {"train": cmd_train, "eval": cmd_eval, "export": cmd_export,
                "emulate": cmd_emulate, "info": cmd_info, "bench": cmd_bench}[args.command](args)
    except EdgeDFAError as exc:
        if debug:
            raise
        print(f"edgedfa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgedfa: error: interrupted", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"edgedfa: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        print(f"edgedfa: error: internal error {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- train

def _dataset(args, recorded=None):
    from .data import select_dataset

    return select_dataset(args.data, args.dataset, recorded)


def cmd_train(args) -> int:
    from .config import load_config
    from .api import build_model, fit, load_onnx

    if args.resume:
        return _resume(args)
    cfg_file = load_config(args.config) if args.config else None
    from .config import resolve_run

    run = resolve_run(cfg_file, args)
    ds = _dataset(args)
    if args.model:
        model = load_onnx(args.model, numerics=run.numerics, seed=run.train.seed,
                          layer_numerics=run.layer_numerics, backend=args.backend)
    else:
        from .arch import build

        graph = build(args.arch or "mlp", run.train.seed, ds.sample_shape, ds.n_classes)
        model = build_model(graph, run.numerics, run.train.seed, run.layer_numerics, args.backend)
    model.graph.meta["dataset"] = ds.name if not args.data else os.path.abspath(args.data)
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    _check_out_dir(out)
    metrics = fit(model, ds, run.train, out, args.quiet, run.modules)
    _finish(out, model, metrics)
    return 0


def _check_out_dir(out):
    if os.path.exists(os.path.join(out, "checkpoint.npz")):
        raise EdgeDFAError(f"--out {out}: already holds a run; use --resume {out} or another --out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise EdgeDFAError(f"--out {out}: cannot create ({exc.strerror})") from exc


def _finish(out, model, metrics):
    note = ""
    try:
        from .onnx.export import export_model

        export_model(model, "float", os.path.join(out, "model.onnx"))
    except ImportError:
        note = " (model.onnx not written: ONNX export is not available in this build)"
    acc = metrics["test_accuracy"]
    print(f"test accuracy {acc:.4f}  (train {metrics['train_accuracy']:.4f}, algo {metrics['algo']},"
          f" {metrics['samples_per_second']:.0f} samples/s) -> {out}{note}")


def _resume(args) -> int:
    from .api import fit
    from .checkpoint import model_from_checkpoint, read_checkpoint, train_config_from_meta
    from dataclasses import replace

    ck = read_checkpoint(args.resume)
    model = model_from_checkpoint(ck, args.backend)
    cfg = train_config_from_meta(ck["meta"])
    fixed = {"algo": args.algo, "bits": args.bits, "model": args.model, "arch": args.arch, "seed": args.seed,
             "batch_size": args.batch_size, "config": args.config, "feedback_sparsity": args.feedback_sparsity}
    clash = [k for k, v in fixed.items() if v is not None and (k not in cfg.__dataclass_fields__ or getattr(cfg, k) != v)]
    if clash:
        raise EdgeDFAError(f"--resume {args.resume}: cannot change {', '.join('--' + c.replace('_', '-') for c in clash)} of a run")
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    recorded = model.graph.meta.get("dataset")
    if not args.data and recorded and os.path.isabs(str(recorded)):
        args.data = recorded
    ds = _dataset(args, recorded=None if args.data else recorded)
    progress = ck["meta"]["progress"]
    out = args.out or os.path.dirname(ck["path"])
    metrics = fit(model, ds, cfg, out, args.quiet, ck["modules"], start=progress)
    _finish(out, model, metrics)
    return 0


# --------------------------------------------------------------------------- eval / info

def cmd_eval(args) -> int:
    from .api import evaluate
    from .checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    ds = _dataset(args, recorded=model.graph.meta.get("dataset") if not args.data else None)
    res = evaluate(model, ds)
    print(f"test accuracy {res['test_accuracy']:.4f}  train accuracy {res['train_accuracy']:.4f}  ({ds.name})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


def cmd_export(args) -> int:
    from .checkpoint import load_checkpoint

    try:
        from .onnx.export import export_model
    except ImportError as exc:
        raise EdgeDFAError("ONNX export is not available in this build") from exc
    model = load_checkpoint(args.checkpoint)
    report = export_model(model, args.format, args.output)
    print(f"wrote {args.output} ({args.format})" + (f": {report}" if report else ""))
    return 0


def cmd_emulate(args) -> int:
    try:
        from hdl_models.hwconfig import hw_config

        from .cosim import emulate, report_json, table
    except ImportError as exc:
        raise EdgeDFAError("the datapath model (hdl_models) is not available in this build") from exc
    from .checkpoint import read_checkpoint
    from .config import load_config

    table_cfg = load_config(args.config).get("hardware", {}) if args.config else {}
    hw = hw_config(table_cfg, args.array, args.clock_mhz)
    ck = read_checkpoint(args.checkpoint)
    ds = _dataset(args, recorded=ck["meta"].get("dataset"))
    report = emulate(args.checkpoint, ds.x_train, ds.y_train, args.steps, hw)
    print(table(report))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(report_json(report))
    return 0


def cmd_bench(args) -> int:
    from .bench import run as bench

    if args.list:
        print(bench.describe_workloads())
        return 0
    opts = bench.options(args.workloads, args.algos, args.only, args.repeats, args.seconds, not args.no_torch,
                         args.quick, not args.no_int8_route)
    report = bench.run(opts, progress=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True),
                       command=" ".join(["edgedfa", *sys.argv[1:]]))
    print(bench.write(report, args.json, args.markdown), end="")
    return 0


def cmd_info(args) -> int:
    path = args.path
    if path.endswith(".onnx"):
        return _info_onnx(path)
    from .checkpoint import load_checkpoint

    model = load_checkpoint(path)
    meta = model.checkpoint_meta
    print(f"checkpoint {path}: {model.graph.meta.get('arch', model.graph.name)}, algo {meta['train']['algo']},"
          f" epoch {meta['progress']['epoch']}, step {meta['progress']['step']}, seed {meta['seed']}")
    for name, f in model.formats().items():
        print(f"  {name}: {f}")
    return 0


def _info_onnx(path) -> int:
    """Layers and shapes, the integer formats at the default 8 bits, or every unsupported op."""
    from .onnx.describe import describe, describe_onnx, inspect_onnx
    from .numerics import Numerics
    from .model import IntModel

    report = inspect_onnx(path)
    if not report["ok"]:
        print(describe_onnx(path))
        raise EdgeDFAError(report["error"])
    print(describe(report["graph"]))
    model = IntModel(report["graph"], Numerics.from_bits(8), 0)
    print("integer formats at --bits 8 (activation formats are calibrated from the training data):")
    for layer in model.layers:
        fmts = ", ".join(f"{k} {v}" for k, v in layer.param_formats().items())
        if fmts:
            print(f"  {layer.name}: {fmts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: parses arguments, calls library functions, prints (docs/ names the commands).

The flags that set a run's settings are made from the settings' own declarations (a field
declared with ``flag="--name"`` in ``edgedfa.schema`` terms), so the flag, its help, its type
and the config key never disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import memory
from .errors import EdgeDFAError
from .version import __version__

KERNEL_BACKENDS = ("fast", "int8", "reference")  # kernels.BACKENDS, without importing numpy for --help

INTERRUPTED = 130  # 128 + SIGINT, as shells report a run stopped by Ctrl-C
BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader went away (e.g. `| head`)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise EdgeDFAError(f"{self.prog}: {message}")


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _sections():
    from . import session  # noqa: F401  (fills in the [hardware] section)
    from .config import SECTIONS

    return SECTIONS


def _add_settings(p, section: str, only=None, group=None):
    """One flag per setting of ``section`` that names one (``only``: these settings only)."""
    from .schema import entries

    for cls in _sections()[section].classes:
        for e in entries(cls):
            s = e.spec
            if not s.flag or (only is not None and e.name not in only):
                continue
            default = s.none if e.default is None else e.default
            kw = {"dest": e.name, "default": None, "help": f"{s.doc} (default: {_word(default)})"}
            if e.kind is bool:
                kw.update(action="store_const", const=True if s.const is None else s.const)
            else:
                kw["metavar"] = s.metavar
                if s.options():
                    kw["choices"] = s.options()
                else:
                    kw["type"] = {int: int, float: float}.get(e.kind, str)
            (group or p).add_argument(s.flag, **kw)


def _word(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]" if v else "none"
    return str(getattr(v, "name", v))


def flag_settings(args, sections=("model", "data", "numerics", "train")) -> dict:
    """The settings document the flags given on the command line make."""
    from .schema import entries

    doc = {}
    for name in sections:
        for cls in _sections()[name].classes:
            for e in entries(cls):
                if e.spec.flag and getattr(args, e.name, None) is not None:
                    doc.setdefault(name, {})[e.name] = getattr(args, e.name)
    return doc


def build_parser() -> argparse.ArgumentParser:
    from .arch import ARCHS
    from .credit import ALGOS

    ap = _Parser(prog="edgedfa", description="Fixed-point on-device training with direct feedback alignment.")
    ap.add_argument("--version", action="version", version=f"edgedfa {__version__}")
    _add_common(ap)
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model in integer arithmetic",
                       description="Train a model in integer arithmetic. Every flag below that sets a"
                       " setting has a --config key of the same name (docs/config.md).")
    _add_settings(t, "model", group=t.add_mutually_exclusive_group())
    _add_settings(t, "data")
    _add_settings(t, "numerics")
    _add_settings(t, "train")
    t.add_argument("--config", metavar="FILE.toml", help="settings of every kind (docs/config.md); flags win")
    t.add_argument("--backend", choices=KERNEL_BACKENDS,
                   help="integer kernel backend, every one giving the same bits: fast (default: the int8"
                   " dot-product units where they pay), int8 (those units at any size), reference (numpy)")
    t.add_argument("--out", metavar="DIR", help="run directory (default: a new runs/<timestamp>)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR bit-exactly, up to --epochs in all")
    t.add_argument("--force", action="store_true", help="train into a non-empty --out (a run there is replaced)")
    t.add_argument("--print-config", action="store_true",
                   help="print the effective settings as TOML (what the run's config.toml holds) and stop")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    _add_common(t)

    e = sub.add_parser("eval", help="accuracy of a checkpoint")
    e.add_argument("checkpoint", metavar="CHECKPOINT")
    _add_settings(e, "data", only=("path", "dataset"))
    e.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress line")
    _add_common(e)

    x = sub.add_parser("export", help="write a checkpoint as ONNX")
    x.add_argument("checkpoint", metavar="CHECKPOINT")
    x.add_argument("--format", choices=("float", "qdq", "int"), required=True)
    x.add_argument("-o", "--output", metavar="FILE.onnx", required=True)
    x.add_argument("--force", action="store_true", help="replace an existing ONNX file")
    _add_common(x)

    m = sub.add_parser("emulate", help="run training steps through the FPGA datapath model")
    m.add_argument("checkpoint", metavar="CHECKPOINT")
    _add_settings(m, "data", only=("path", "dataset"))
    m.add_argument("--steps", type=int, default=1, help="training steps (default 1)")
    _add_settings(m, "hardware")
    m.add_argument("--config", metavar="FILE.toml", help="its [hardware] section sets the accelerator")
    m.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    m.add_argument("--quiet", action="store_true", help="no progress line")
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
    bn.add_argument("--compare-int8-route", action="store_true",
                    help="also time every algorithm without the int8 route, interleaved (same bits)")
    bn.add_argument("--json", metavar="FILE", default="bench.json", help="report as JSON (default bench.json)")
    bn.add_argument("--markdown", metavar="FILE", default="bench.md",
                    help="tables for docs/benchmarks.md (default bench.md)")
    bn.add_argument("--list", action="store_true", help="name the workloads and exit")
    _add_common(bn)

    i = sub.add_parser("info", help="describe an ONNX file, a checkpoint or a built-in architecture")
    i.add_argument("path", metavar="FILE.onnx|CHECKPOINT", nargs="?")
    i.add_argument("--arch", choices=ARCHS, help="preview a built-in architecture instead of a file")
    _add_settings(i, "numerics")
    _add_settings(i, "data", only=("dataset",))
    _add_common(i)
    _add_report(sub)
    _add_sweep(sub)
    return ap


def _add_report(sub):
    r = sub.add_parser("report", help="plots and a summary of runs, or the Pareto report of a sweep",
                       description="Curves, per-layer statistics, saturation and emulation plots (PNG and SVG) and"
                                   " summary.md of one or several run directories; for a sweep directory, Pareto"
                                   " plots, configurations.csv and summary.md. Plots need the plot extra:"
                                   ' pip install "edgedfa[plot]".')
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or one sweep directory")
    r.add_argument("-o", "--output", metavar="DIR", required=True, help="directory for the plots and the summary")
    _add_common(r)


def _add_sweep(sub):
    w = sub.add_parser("sweep", help="train and emulate a grid or a search of configurations",
                       description="Runs every trial of SPEC.toml (docs/sweeps.md) that DIR does not hold yet,"
                                   " one line per finished trial in DIR/results.jsonl, then writes the Pareto"
                                   " report to DIR/report. Rerunning the same command resumes.")
    w.add_argument("spec", metavar="SPEC.toml")
    w.add_argument("-o", "--output", metavar="DIR", required=True, help="sweep directory (rerun to resume)")
    where = w.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run the trials on this Dask cluster")
    where.add_argument("--dask-local", type=int, metavar="N", help="start a Dask LocalCluster of N workers")
    where.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core)")
    w.add_argument("--no-report", action="store_true", help="do not write DIR/report")
    w.add_argument("--quiet", action="store_true", help="no line per finished trial")
    _add_common(w)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    memory.hold_freed_memory()
    try:
        return _run(argv)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:
        _quiet_stdout()
        return BROKEN_PIPE
    except KeyboardInterrupt:
        print("edgedfa: interrupted", file=sys.stderr)
        return INTERRUPTED
    except EdgeDFAError as exc:
        if debug:
            raise
        return _error(str(exc))
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        return _error(str(exc) or type(exc).__name__)
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        return _error(f"internal error {type(exc).__name__}: {exc} (rerun with --debug)")


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    if not args.command:
        build_parser().print_help()
        return 0
    return {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "emulate": cmd_emulate,
            "info": cmd_info, "bench": cmd_bench, "report": cmd_report, "sweep": cmd_sweep}[args.command](args)


def _error(text: str) -> int:
    print(f"edgedfa: error: {' '.join(text.split())}", file=sys.stderr)
    return 2


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that the exit flush says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class _Warnings:
    """Each warning once, on stderr."""

    def __init__(self):
        self.seen = set()

    def __call__(self, text: str) -> None:
        if text not in self.seen:
            self.seen.add(text)
            print(f"edgedfa: warning: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- train

def cmd_train(args) -> int:
    from . import session

    warn = _Warnings()
    if args.path and args.dataset:
        warn(f"--dataset {args.dataset} does not apply: --data {args.path} gives the data")
    req = session.Request(flag_settings(args), args.config, args.out, args.resume, args.force, args.quiet,
                          args.backend, command=args.argv, warn=warn)
    if args.print_config:
        sys.stdout.write(session.print_config(req))
        return 0
    with _StopOnSignal() as stop:
        req.should_stop = stop
        try:
            outcome = session.train(req)
        except session.Interrupted:
            print("edgedfa: interrupted before training started; nothing was saved", file=sys.stderr)
            return INTERRUPTED
    return _report(outcome, session)


def _report(outcome, session) -> int:
    lines = session.describe_outcome(outcome)
    if outcome.status == "interrupted":
        for line in lines:
            print(f"edgedfa: {line}", file=sys.stderr)
        return INTERRUPTED
    if outcome.status == "done":
        m = outcome.metrics
        acc = "n/a (no test samples)" if m["test_accuracy"] is None else f"{m['test_accuracy']:.4f}"
        print(f"test accuracy {acc}  (train {m['train_accuracy']:.4f}, algo {m['algo']},"
              f" {m['samples_per_second'] or 0:.0f} samples/s) -> {outcome.out}")
        if m.get("best_epoch") is not None:
            test = "n/a" if m["best_test_accuracy"] is None else f"{m['best_test_accuracy']:.4f}"
            print(f"best epoch {m['best_epoch']} by validation accuracy {m['best_val_accuracy']:.4f}"
                  f" (its test accuracy {test}) -> {os.path.join(outcome.out, 'best.npz')}")
    for line in lines:
        print(line)
    return 0


class _StopOnSignal:
    """SIGINT/SIGTERM ask the run to stop after its current batch; a second one stops at once."""

    def __init__(self):
        self.requested = False
        self.old = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nedgedfa: {signal.Signals(signum).name}: stopping after this batch (again to stop at once)",
              file=sys.stderr)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


# --------------------------------------------------------------------------- eval / export / emulate / info

def _dataset(args, recorded=None):
    from .data import select_dataset

    return select_dataset(args.path, args.dataset, recorded)


def cmd_eval(args) -> int:
    from .api import evaluate
    from .checkpoint import load_checkpoint
    from .rundir import check_output_file

    if args.json:
        check_output_file(args.json, "--json", "json")
    model = load_checkpoint(args.checkpoint)
    ds = _dataset(args, recorded=model.graph.meta.get("dataset") if not args.path else None)
    res = evaluate(model, ds, quiet=args.quiet)
    test = "n/a" if res["test_accuracy"] is None else f"{res['test_accuracy']:.4f}"
    print(f"test accuracy {test}  train accuracy {res['train_accuracy']:.4f}  ({ds.name})")
    if args.json:
        _write_json(args.json, json.dumps(res, indent=2))
    return 0


def _write_json(path: str, text: str) -> None:
    from .checkpoint import atomic_write

    atomic_write(path, text)


def cmd_export(args) -> int:
    from .checkpoint import load_checkpoint
    from .rundir import check_output_file

    try:
        from .onnx.export import export_model
    except ImportError as exc:
        raise EdgeDFAError("ONNX export is not available in this build") from exc
    check_output_file(args.output, "-o", "onnx", args.force)
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
    from .checkpoint import graph_meta, read_checkpoint
    from .config import load_config
    from .rundir import check_output_file

    if args.steps < 1:
        raise EdgeDFAError(f"--steps {args.steps}: must be >= 1")
    if args.json:
        check_output_file(args.json, "--json", "json")
    table_cfg = load_config(args.config).get("hardware", {}) if args.config else {}
    hw = hw_config(table_cfg, args.array, args.clock_mhz)
    ck = read_checkpoint(args.checkpoint)
    ds = _dataset(args, recorded=graph_meta(ck).get("dataset") if not args.path else None)
    report = emulate(ck["path"], ds.x_train, ds.y_train, args.steps, hw, quiet=args.quiet)
    print(table(report))
    if args.json:
        _write_json(args.json, report_json(report))
    return 0


def cmd_bench(args) -> int:
    from .bench import run as bench

    if args.list:
        print(bench.describe_workloads())
        return 0
    opts = bench.options(args.workloads, args.algos, args.only, args.repeats, args.seconds, not args.no_torch,
                         args.quick, not args.no_int8_route, args.compare_int8_route)
    report = bench.run(opts, progress=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True),
                       command=" ".join(["edgedfa", *args.argv]))
    print(bench.write(report, args.json, args.markdown), end="")
    return 0


def cmd_info(args) -> int:
    from .api import describe_arch

    if args.arch:
        if args.path:
            raise EdgeDFAError("info: give a file or --arch, not both")
        print(describe_arch(args.arch, args.bits or 8, args.dataset or "digits"))
        return 0
    if not args.path:
        raise EdgeDFAError("info: give an ONNX file, a checkpoint, or --arch NAME")
    if args.path.endswith(".onnx"):
        return _info_onnx(args.path, args.bits or 8)
    from .checkpoint import load_checkpoint
    from .graph import input_stage

    model = load_checkpoint(args.path)
    meta = model.checkpoint_meta
    progress = meta.get("progress", {})
    print(f"checkpoint {args.path}: {model.graph.meta.get('arch', model.graph.name)},"
          f" algo {meta['train'].get('algo', '?')}, epoch {progress.get('epoch')}, step {progress.get('step')},"
          f" seed {meta['seed']}")
    stage = input_stage(model.graph)
    if stage is not None:
        print(f"  input stage: x * scale{list(stage[0].shape)} + offset{list(stage[1].shape)} before the input format")
    for name, f in model.formats().items():
        print(f"  {name}: {f}")
    return 0


def _info_onnx(path, bits: int) -> int:
    """An edgedfa export as it was exported; another file's layers, shapes and integer formats
    at ``--bits``; or every unsupported op."""
    from .onnx.describe import describe_export, describe_import

    text = describe_export(path)
    if text is None:
        text, error = describe_import(path, bits)
        if error:
            print(text)
            raise EdgeDFAError(error)
    print(text)
    return 0


# --------------------------------------------------------------------------- report / sweep

def cmd_report(args) -> int:
    from .report import write_report

    result = write_report(args.runs, args.output)
    print(f"wrote {result['summary']} and the plots beside it")
    return 0


def cmd_sweep(args) -> int:
    from .sweep.run import terminate_as_interrupt

    with terminate_as_interrupt():  # SIGTERM anywhere in the command: one line and 130, never a kill mid-write
        return _sweep(args)


def _sweep(args) -> int:
    from .sweep.executors import make_executor
    from .sweep.run import ERRORS, run_sweep

    executor = make_executor(args.scheduler, args.dask_local, args.workers)
    result = run_sweep(args.spec, args.output, executor, log=_quiet if args.quiet else print)
    print(f"{result.ran} trial(s) run, {result.reused} already done, {len(result.failed)} failed,"
          f" of {result.planned}, in {result.seconds:.1f} s on {result.executor} -> {args.output}")
    if not args.no_report and result.rows:
        from .report import write_report

        report = write_report([args.output], os.path.join(args.output, "report"), require_plots=False)
        print(report["note"] or f"report: {report['summary']}")
    if result.failed:
        raise EdgeDFAError(f"{len(result.failed)} trial(s) failed, the first: {result.failed[0][0]}:"
                           f" {result.failed[0][1]} (all in {os.path.join(args.output, ERRORS)};"
                           f" rerun the command to retry them)")
    return 0


def _quiet(_line):
    pass


if __name__ == "__main__":
    sys.exit(main())

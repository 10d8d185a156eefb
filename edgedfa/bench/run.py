"""``edgedfa bench``: every figure in one run, so that ratios compare sides measured under
the same machine load; the report as a dict (written as JSON and as markdown)."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field

from ..errors import EdgeDFAError
from ..version import __version__
from . import coldstart, gemm, torch_ref, training
from .workloads import QUICK, WORKLOADS

SECTIONS = ("train", "gemm", "emulate", "cold-start")
ALGOS = ("bp", "dfa", "sdfa", "hybrid")
COLD_START = (["--epochs", "1"], ["--arch", "cnn", "--epochs", "1"], ["--arch", "gru", "--epochs", "1"])


@dataclass
class Options:
    """What to measure and how long."""

    workloads: list = field(default_factory=lambda: list(WORKLOADS))
    algos: list = field(default_factory=lambda: list(ALGOS))
    sections: list = field(default_factory=lambda: list(SECTIONS))
    repeats: int = 5
    seconds: float = 0.4  # target length of one timed repeat
    torch: bool = True
    gemm_threads: list = field(default_factory=lambda: list(gemm.THREADS))
    quick: bool = False
    int8_route: bool = True  # False: the engine as it ran before the int8 route (comparisons)
    compare_route: bool = False  # also time each algorithm without the int8 route, interleaved

    @classmethod
    def quick_run(cls, **kw) -> "Options":
        """A smoke run in seconds: two small workloads, two algorithms, short repeats."""
        base = {"workloads": list(QUICK), "algos": ["bp", "sdfa"], "repeats": 2, "seconds": 0.02,
                "gemm_threads": [1], "quick": True}
        return cls(**{**base, **{k: v for k, v in kw.items() if v is not None}})

    def check(self) -> None:
        bad = [w for w in self.workloads if w not in WORKLOADS]
        if bad:
            raise EdgeDFAError(f"bench: unknown workload(s) {bad}; expected some of {', '.join(WORKLOADS)}")
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise EdgeDFAError(f"bench: unknown section(s) {bad}; expected some of {', '.join(SECTIONS)}")
        if self.repeats < 1 or self.seconds <= 0:
            raise EdgeDFAError(f"bench: repeats {self.repeats} and seconds {self.seconds} must be positive")


def options(workloads=None, algos=None, sections=None, repeats=None, seconds=None, torch=True,
            quick=False, int8_route=True, compare_route=False) -> Options:
    """Options from command-line values (None: the default, or the quick run's)."""
    given = {"workloads": workloads, "algos": algos, "sections": sections, "repeats": repeats, "seconds": seconds}
    flags = {"torch": torch, "int8_route": int8_route, "compare_route": compare_route}
    if quick:
        return Options.quick_run(**flags, **given)
    return Options(**flags, **{k: v for k, v in given.items() if v is not None})


def write(report: dict, json_path: str | None, markdown_path: str | None) -> str:
    """Write the report's JSON and markdown (each atomically); the markdown."""
    from ..checkpoint import atomic_write
    from .report import markdown, to_json

    text = markdown(report)
    for path, data in ((json_path, to_json(report)), (markdown_path, text)):
        if path:
            try:
                atomic_write(path, data)
            except OSError as exc:
                raise EdgeDFAError(f"bench: cannot write {path} ({exc.strerror})") from exc
    return text


def describe_workloads() -> str:
    """One line per workload: its name and what it trains."""
    return "\n".join(f"{name:<12} {w.title}" for name, w in WORKLOADS.items())


INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpu() -> tuple:
    """(model name, the int8-relevant instruction-set flags) from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = [f for f in INT8_FLAGS if f in line.split(":", 1)[1].split()]
                    break
    except OSError:
        pass
    return name, flags


def machine() -> dict:
    """What the figures were measured on."""
    import numba
    import numpy
    import onnxruntime

    from ..kernels import onnxrt

    cpu, flags = _cpu()
    package = _package_dir()
    return {"cpu": cpu, "cpu_int8_flags": flags, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "torch": torch_ref.version(), "edgedfa": __version__,
            "edgedfa_path": package, "edgedfa_commit": _commit(package),
            "int8_route": onnxrt.status(), "int8_route_threads": onnxrt.threads()}


def _package_dir() -> str:
    """Where the measured ``edgedfa`` was imported from (an old editable install measures old code)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commit(path: str) -> str | None:
    """The git commit of the checkout holding ``path`` ("+" when it has local changes), or None."""
    import subprocess

    try:
        git = lambda *a: subprocess.run(["git", "-C", path, *a], capture_output=True, text=True, timeout=10)  # noqa: E731
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--", ".").stdout.strip()
        return head.stdout.strip() + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run(opts: Options, progress=None, command: str = "edgedfa bench") -> dict:
    """Measure the selected sections; the report (``progress(text)`` hears of each part)."""
    from ..kernels import onnxrt

    opts.check()
    say = progress or (lambda text: None)
    t0 = time.perf_counter()
    onnxrt.enable(opts.int8_route)
    try:
        report = {"command": command, "options": asdict(opts), "machine": machine(),
                  "load_average_before": list(os.getloadavg())}
        if "train" in opts.sections or "emulate" in opts.sections:
            with _torch_child(opts) as child:
                report["training"] = [_training(name, opts, say, child) for name in opts.workloads]
    finally:
        onnxrt.enable(True)
    if "gemm" in opts.sections:
        say("integer GEMM")
        report["gemm"] = gemm.rows(opts.repeats, opts.seconds, opts.gemm_threads)
    if "cold-start" in opts.sections:
        report["cold_start"] = []
        for args in COLD_START[:1] if opts.quick else COLD_START:
            say("cold start: edgedfa train " + " ".join(args))
            report["cold_start"].append(coldstart.cold_start(args))
    report["load_average_after"] = list(os.getloadavg())
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report["seconds"] = time.perf_counter() - t0
    return report


def _torch_child(opts: Options):
    """The process that times the PyTorch column (started on first use), or no column."""
    if opts.torch and "train" in opts.sections:
        return torch_ref.Child()
    return contextlib.nullcontext()


def _training(name: str, opts: Options, say, child) -> dict:
    say(f"training: {name}")
    train = "train" in opts.sections
    return training.workload_row(WORKLOADS[name], opts.algos if train else opts.algos[:1], opts.repeats,
                                 opts.seconds, child, "emulate" in opts.sections, opts.int8_route,
                                 opts.compare_route and train)

"""The bench's PyTorch float32 BP column, timed in a process of its own (``torch_child``).

PyTorch's thread pool in the bench's process slows the engine's and the emulator's own steps
(docs/benchmarks.md), so ``torch`` is never imported here: one child process for the bench
run loads each workload (the Graph's description, its data through a temporary .npz) and
times its steps itself, interleaved with the engine's repeats as any other side.

PyTorch is never a dependency: without it the column reads "not installed" and the rest still
runs. A child that fails, exits or gives no answer in ``TIMEOUT`` seconds gives the column a
one-line reason (``ChildError``); the next workload starts a new child.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeDFAError

TIMEOUT = 300.0  # seconds one answer may take (the first load imports torch)
COMMAND = (sys.executable, "-m", "edgedfa.bench.torch_child")
WAIT_SECONDS = 10.0  # for a child to quit, or to end once its output has


class ChildError(EdgeDFAError):
    """The PyTorch child failed a request, exited or hung: the column's one-line reason."""


def version() -> str | None:
    """PyTorch's installed version (without importing it), or None when it is not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _plain(value):
    """JSON for numpy values in a Graph's attributes."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def describe(graph) -> dict:
    """What the child needs of a Graph to mirror it: ops, names, attributes, parameter shapes."""
    return {"input_name": graph.input_name, "output_name": graph.output_name,
            "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                       "attrs": json.loads(json.dumps(n.attrs, default=_plain)),
                       "params": {k: list(np.shape(v)) for k, v in n.params.items()}} for n in graph.nodes]}


@dataclass
class ChildSide:
    """A side of ``timing.interleaved`` that runs in the child and is timed there (the child
    sets its thread count before each run, untimed)."""

    child: "Child"
    name: str

    def setup(self) -> None:
        pass

    def timed(self, n: int, i: int) -> float:
        return self.child.run(self.name, n, i)


def _pump(stream, replies: queue.Queue) -> None:
    """Pass the child's reply lines on, then None at the end of its output."""
    try:
        with stream:
            for line in stream:
                replies.put(line)
    except (OSError, ValueError):
        pass
    replies.put(None)


class Child:
    """The PyTorch child of one bench run: started on first use, kept across workloads,
    restarted after a failure. ``close()`` (or leaving a ``with`` block) ends it and removes
    its temporary directory."""

    def __init__(self, command=None, timeout: float | None = None):
        self.command = list(command or COMMAND)
        self.timeout = TIMEOUT if timeout is None else timeout
        self.version = None  # PyTorch's version as the child imported it
        self._tmp = tempfile.TemporaryDirectory(prefix="edgedfa-bench-torch-")
        self._stderr = os.path.join(self._tmp.name, "stderr.txt")
        self._proc = None
        self._replies = None

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sides(self, graph, x: np.ndarray, y: np.ndarray, batch: int) -> dict:
        """The workload's PyTorch sides (1 and 2 threads), loaded into the child."""
        path = os.path.join(self._tmp.name, "data.npz")
        try:
            self._start()
            np.savez(path, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
        except OSError as exc:
            raise ChildError(f"PyTorch child could not be started ({exc})") from exc
        try:
            reply = self._ask({"op": "load", "graph": describe(graph), "data": path, "batch": int(batch)})
        finally:
            os.remove(path)
        self.version = reply.get("version")
        return {name: ChildSide(self, name) for name in reply["sides"]}

    def run(self, side: str, n: int, i: int) -> float:
        """Seconds of ``n`` steps of ``side`` from step ``i``, timed in the child."""
        return float(self._ask({"op": "run", "side": side, "n": int(n), "i": int(i)})["seconds"])

    def close(self) -> None:
        """Ask the child to quit (kill it when it does not), then remove the temporary files."""
        self._stop(polite=True)
        self._tmp.cleanup()

    def _start(self) -> None:
        if self._proc is not None:
            return
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        with open(self._stderr, "wb") as err:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          env=dict(os.environ, PYTHONPATH=path))
        self._replies = queue.Queue()
        threading.Thread(target=_pump, args=(self._proc.stdout, self._replies), daemon=True).start()

    def _ask(self, request: dict) -> dict:
        if self._proc is None:
            raise ChildError("PyTorch child is not running")
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._replies.get(timeout=self.timeout)
        except OSError:
            line = None
        except queue.Empty:
            self._fail(f"gave no answer in {self.timeout:g} s (killed)")
        if line is None:
            self._fail(self._exit_reason())
        try:
            reply = json.loads(line)
        except ValueError:
            self._fail(f"answered {line[:80].decode(errors='replace')!r}, not JSON")
        if "error" in reply:
            raise ChildError(reply["error"])
        return reply

    def _fail(self, why: str):
        self._stop(polite=False)
        raise ChildError(f"PyTorch child {why}")

    def _exit_reason(self) -> str:
        try:
            rc = self._proc.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        with open(self._stderr, "rb") as fh:
            lines = [s.strip() for s in fh.read().decode(errors="replace").splitlines() if s.strip()]
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        return how + (f": {lines[-1][:200]}" if lines else "")

    def _stop(self, polite: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if polite and proc.poll() is None:
                proc.stdin.write(b'{"op": "quit"}\n')
                proc.stdin.close()
                proc.wait(WAIT_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            proc.stdin.close()
        except OSError:
            pass

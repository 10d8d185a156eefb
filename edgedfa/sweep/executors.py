"""Where trials run: a pool of local processes (default) or a Dask distributed cluster.

Both give ``run(trials)``: an iterator of ``(trial, result, error)`` in the order trials
finish, ``result`` the dict ``run_trial`` returned or ``error`` a one-line message. A trial
whose worker dies is run again on another worker (the local pool requeues it; Dask's
scheduler reschedules it), up to ``MAX_ATTEMPTS`` times. Dask also reruns a finished trial
whose worker died before its result was fetched; either way each trial is yielded once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
import uuid
from collections import deque
from multiprocessing import resource_tracker
from multiprocessing.connection import wait

from ..errors import EdgeDFAError
from .trial import run_trial

MAX_ATTEMPTS = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INSTALL_DASK = 'Dask is not installed: pip install "edgedfa[dask]"'


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, EdgeDFAError):
        return str(exc)
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
    return f"internal error {type(exc).__name__}: {exc}{where}"


@contextlib.contextmanager
def stop_signals_held():
    """SIGINT and SIGTERM held back in this thread until the block ends, then delivered."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _serve(conn) -> None:
    """A pool process: run the trials it is sent until it is sent None or the driver is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops the pool on Ctrl-C
    if hasattr(signal, "pthread_sigmask"):  # held since the driver started this process (ignored SIGINTs dropped)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    while True:
        try:
            trial = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if trial is None:
            return
        try:
            reply = (run_trial(trial), None)
        except Exception as exc:  # the trial failed: the driver records it, the worker goes on
            reply = (None, _describe_error(exc))
        try:
            conn.send(reply)
        except OSError:  # the driver stopped while reading it: nobody to tell
            return


class LocalPool:
    """``workers`` spawned processes (default: one per core), each running one trial at a time."""

    def __init__(self, workers: int | None = None):
        if workers is not None and workers < 1:
            raise EdgeDFAError(f"--workers {workers}: must be >= 1")
        self.workers = workers or available_cores()
        self._ctx = multiprocessing.get_context("spawn")
        self._idle, self._busy = [], {}  # busy: connection -> (process, trial)

    def describe(self) -> str:
        return f"a local pool of {self.workers} process(es)"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _dispatch(self, trial: dict) -> None:
        """``trial`` to an idle worker or a new one, in the books before a stop can land."""
        while True:
            reused = bool(self._idle)
            if not reused:
                resource_tracker.ensure_running()  # starting, it unblocks SIGINT/SIGTERM: not while they are held
            with stop_signals_held():  # a new worker inherits them held, until _serve ignores SIGINT
                proc, conn = self._idle.pop() if reused else self._spawn()
                self._busy[conn] = (proc, trial)
            try:
                conn.send(trial)
                return
            except OSError:  # it died: a new one is seen dead by run() (an attempt); an idle one since its last reply
                if not reused:
                    return
                del self._busy[conn]
                proc.join()
                conn.close()

    def _spawn(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child,), daemon=True, name="edgedfa-sweep-worker")
        proc.start()
        child.close()
        return proc, parent

    def pids(self) -> list:
        """Process ids of the busy workers (tests kill one)."""
        return [p.pid for p, _ in self._busy.values()]

    def run(self, trials):
        queue, attempts = deque(trials), {}
        while queue or self._busy:
            while queue and len(self._busy) < self.workers:
                self._dispatch(queue.popleft())
            ready = wait(list(self._busy) + [p.sentinel for p, _ in self._busy.values()])
            for conn in [c for c in list(self._busy) if c in ready or not self._busy[c][0].is_alive()]:
                proc, trial = self._busy[conn]  # busy until its reply is read whole: a stop mid-read stops it
                try:
                    result, error = conn.recv()
                except (EOFError, OSError):  # the worker died mid-trial
                    del self._busy[conn]
                    proc.join()
                    conn.close()
                    fp = trial["fingerprint"]
                    attempts[fp] = attempts.get(fp, 0) + 1
                    if attempts[fp] < MAX_ATTEMPTS:
                        queue.appendleft(trial)
                    else:
                        yield trial, None, f"its worker process died {MAX_ATTEMPTS} times running it"
                    continue
                del self._busy[conn]
                self._idle.append((proc, conn))
                yield trial, result, error

    def close(self) -> None:
        with stop_signals_held():  # a stop now lands once every worker is gone
            self._stop_workers()

    def _stop_workers(self) -> None:
        for proc, conn in self._idle:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn in self._idle:
            proc.join(timeout=5)
        for proc, _ in list(self._busy.values()) + self._idle:
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self._idle, self._busy = [], {}


class DaskCluster:
    """A Dask distributed client: to a running scheduler, or to a LocalCluster it starts."""

    def __init__(self, scheduler: str | None = None, local_workers: int | None = None):
        try:
            import distributed
        except ImportError:
            raise EdgeDFAError(INSTALL_DASK) from None
        self.cluster = None
        if local_workers is not None:
            if local_workers < 1:
                raise EdgeDFAError(f"--dask-local {local_workers}: must be >= 1")
            self.cluster = distributed.LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True,
                                                    dashboard_address=None)
            self.client = distributed.Client(self.cluster)
        else:
            try:
                self.client = distributed.Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise EdgeDFAError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None
        self.address = self.client.scheduler.address

    def describe(self) -> str:
        n = len(self.client.scheduler_info(n_workers=-1)["workers"])
        return f"the Dask cluster at {self.address} ({n} worker(s))"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, trials):
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]  # keys unique to this run: a shared scheduler may hold older ones
        futures = {self.client.submit(run_trial, t, key=f"edgedfa-trial-{t['fingerprint']}-{token}", pure=False,
                                      retries=0): t for t in trials}
        for fut in as_completed(futures):  # each future once, even if its result is lost and recomputed
            trial = futures[fut]
            result, error = _settle(fut, trial)
            fut.release()  # before it is recorded: its worker dying now must not run it again
            yield trial, result, error

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _settle(fut, trial: dict) -> tuple:
    """``(result, None)`` or ``(None, error)`` of a trial's future; a result lost with its worker
    before it was fetched (status 'lost') is waited for while Dask's scheduler runs the trial again."""
    from asyncio import CancelledError

    try:
        return fut.result(), None
    except CancelledError:
        raise EdgeDFAError(f"the Dask cluster cancelled trial {trial['label']!r}") from None
    except Exception as exc:
        if fut.status != "error":  # not the trial's failure but the client's own
            raise
        return None, _dask_error(exc)  # the trial raised, or its workers kept dying (KilledWorker)


def _dask_error(exc: BaseException) -> str:
    if type(exc).__name__ == "KilledWorker":
        return f"its Dask worker died {MAX_ATTEMPTS} times running it"
    return _describe_error(exc)


def make_executor(scheduler: str | None = None, dask_local: int | None = None, workers: int | None = None):
    """The executor the command line names: a Dask scheduler, a Dask LocalCluster, or the local pool."""
    if scheduler:
        return DaskCluster(scheduler=scheduler)
    if dask_local is not None:
        return DaskCluster(local_workers=dask_local)
    return LocalPool(workers)

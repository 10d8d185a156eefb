"""Run directories owned by one run, and output files that never replace a file of another kind.

A run directory is claimed before any work: created exclusively (default names never
collide), or found empty, or taken over with ``force``; then locked with ``flock`` on the
directory itself, so a second process is refused while the first runs and a crashed run
leaves no stale lock (the kernel drops it with the process). Nothing is written into a
directory that is not claimed, and a run that fails before its first checkpoint takes away
what it wrote.
"""

from __future__ import annotations

import os
import tempfile
import time

from .errors import EdgeDFAError

try:
    import fcntl
except ImportError:  # pragma: no cover (no flock: directories are not locked)
    fcntl = None

RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.json", "model.onnx", "config.toml")
CHECKPOINT = "checkpoint.npz"


# --------------------------------------------------------------------------- checks without side effects

def check_new_run_dir(path: str, force: bool = False) -> None:
    """Refuse, before any work, an ``--out`` that cannot hold a new run."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise EdgeDFAError(f"--out {path}: is a file, not a directory")
    if os.path.isdir(path):
        check_not_in_use(path)
        _check_empty(path, force)
    _check_writable_parent(path, "--out")


def _check_empty(path: str, force: bool) -> None:
    held = sorted(os.listdir(path))
    if held and not force:
        hint = f"use --resume {path} to continue its run, " if CHECKPOINT in held else ""
        raise EdgeDFAError(f"--out {path}: not empty ({_listing(held)}); {hint}--force to train into it"
                           " anyway, or another --out")


def _listing(names: list) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _check_writable_parent(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise EdgeDFAError(f"{what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeDFAError(f"{what} {path}: cannot create it ({parent} is not writable)")


def check_not_in_use(path: str) -> None:
    """EdgeDFAError when another process holds the run directory (changes nothing)."""
    fd = _lock(path)
    if fd is not None:
        os.close(fd)


def check_output_file(path: str, what: str, kind: str, force: bool = False) -> None:
    """Refuse, before any work, an output file that would replace a run's file, a file of
    another kind, or (without ``force``) any existing file of a kind that is not a report."""
    if os.path.isdir(path):
        raise EdgeDFAError(f"{what} {path}: is a directory")
    _check_writable_parent(path, what)
    if not os.path.exists(path):
        return
    folder, name = os.path.split(os.path.abspath(path))
    if name in RUN_FILES and os.path.exists(os.path.join(folder, CHECKPOINT)):
        raise EdgeDFAError(f"{what} {path}: belongs to the run in {folder}; write it elsewhere")
    found = sniff(path)
    if found not in (kind, "empty", "other"):
        raise EdgeDFAError(f"{what} {path}: exists and holds {_KIND_WORDS[found]}; it is never replaced"
                           f" by {_KIND_WORDS[kind]}")
    if kind != "json" and not force:
        raise EdgeDFAError(f"{what} {path}: exists; pass --force to replace it")


_KIND_WORDS = {"npz": "an .npz archive (a checkpoint or data)", "json": "JSON", "onnx": "an ONNX model",
               "empty": "nothing", "other": "other data"}


def sniff(path: str) -> str:
    """The kind of an existing file: npz, json, onnx (by its name), empty or other."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "onnx" if path.lower().endswith(".onnx") else "other"


# --------------------------------------------------------------------------- claiming

def default_run_dir(base: str = "runs") -> str:
    """A new ``runs/<timestamp>`` directory, created exclusively (``-2``, ``-3``, ... when taken)."""
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as exc:
        raise EdgeDFAError(f"{base}: cannot create the runs directory ({exc.strerror or exc})") from exc
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10000):
        path = os.path.join(base, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise EdgeDFAError(f"{base}: no free run directory name for {stamp}")


class RunDir:
    """A run directory this process holds: locked until ``release``; it knows what it wrote."""

    def __init__(self, path: str, fd, created: bool):
        self.path, self.fd, self.created = path, fd, created
        self.written: list = []

    @classmethod
    def claim(cls, path: str, new: bool = True, force: bool = False, created: bool = False) -> "RunDir":
        """Lock ``path`` for this run: a new run's directory is made (or must be empty unless
        ``force``); a resumed one must exist. ``created``: the caller already made it."""
        if new and not created:
            created = _make(path)
        fd = _lock(path)
        rd = cls(path, fd, created)
        try:
            if new:
                _check_empty(path, force)
                for name in RUN_FILES if force else ():  # the run that was there is replaced
                    if os.path.exists(os.path.join(path, name)):
                        os.unlink(os.path.join(path, name))
            probe, tmp = tempfile.mkstemp(prefix=".probe-", dir=path)
            os.close(probe)
            os.unlink(tmp)
        except OSError as exc:
            rd.release()
            raise EdgeDFAError(f"--out {path}: cannot write into it ({exc.strerror or exc})") from exc
        except EdgeDFAError:
            rd.release()
            raise
        return rd

    def file(self, name: str) -> str:
        """The path of ``name`` in the run, remembered as written by this run."""
        path = os.path.join(self.path, name)
        if path not in self.written:
            self.written.append(path)
        return path

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """A run that failed before its first checkpoint: remove what it wrote, and the
        directory when this run made it; then release it."""
        for path in self.written:
            if os.path.exists(path):
                os.unlink(path)
        if self.created and os.path.isdir(self.path) and not os.listdir(self.path):
            os.rmdir(self.path)
        self.release()


def _make(path: str) -> bool:
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        os.mkdir(path)
        return True
    except FileExistsError:
        if not os.path.isdir(path):
            raise EdgeDFAError(f"--out {path}: is a file, not a directory") from None
        return False
    except OSError as exc:
        raise EdgeDFAError(f"--out {path}: cannot create it ({exc.strerror or exc})") from exc


def _lock(path: str):
    """An fd holding an exclusive flock on the directory, or EdgeDFAError when another has it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise EdgeDFAError(f"{path}: cannot open the run directory ({exc.strerror or exc})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EdgeDFAError(f"{path}: in use by another edgedfa run (it holds the directory's lock);"
                           " wait for it or choose another --out") from None
    return fd

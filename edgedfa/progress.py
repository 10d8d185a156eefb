"""A progress line on stderr: a bar, the rate and the time left (train, eval, emulate)."""

from __future__ import annotations

import sys
import time

PIPE_INTERVAL = 30.0  # seconds between progress lines when stderr is no terminal


class Progress:
    """One status line, rewritten in place on a terminal; elsewhere a line now and then and
    the final ones; nothing when quiet."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = time.monotonic()

    def update(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final or now - self.last >= PIPE_INTERVAL:
            self.stream.write(text + "\n")
            self.last = now
        self.stream.flush()


class Rate:
    """Units done per second since ``start`` and the time left for ``total`` units."""

    def __init__(self, total: int, unit: str = "samples", done: int = 0):
        self.total, self.unit, self.first = int(total), unit, int(done)
        self.t0 = time.perf_counter()

    def text(self, done: int) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else None
        return f"{rate:,.0f} {self.unit}/s, ETA {clock(left)}"


def clock(seconds) -> str:
    """``1h02m03s``, ``2m05s``, ``7s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, m = s // 3600, s // 60 % 60
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else (f"{m}m{s % 60:02d}s" if m else f"{s}s")


def bar(frac: float, width: int = 24) -> str:
    n = int(round(min(max(frac, 0.0), 1.0) * width))
    return "[" + "#" * n + "." * (width - n) + "]"

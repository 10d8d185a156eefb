"""Timing rules shared by every figure of ``edgedfa bench``: warm up, size the repeats so
each lasts about the same time, and interleave the sides of a comparison (each repeat
times every side once, in rotating order) so that a ratio compares sides measured under
the same machine load; medians of the repeats are reported."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

WARMUP_CALLS = 2
MAX_CALLS = 1000


@dataclass
class Side:
    """One side of a comparison: ``fn(i)`` does one call (a step, a product); ``setup()``
    runs untimed before each of its timed repeats (e.g. to set a thread count).

    A side that runs elsewhere (PyTorch's, in a process of its own) is any object with
    ``setup()`` and ``timed(n, i)``, timing its calls where they run."""

    fn: Callable[[int], object]
    setup: Callable[[], object] = lambda: None

    def timed(self, n: int, i: int) -> float:
        """Seconds taken by the ``n`` calls ``fn(i)``, ``fn(i + 1)``, ..."""
        t0 = time.perf_counter()
        for k in range(i, i + n):
            self.fn(k)
        return time.perf_counter() - t0


def calls_per_repeat(side, target_seconds: float) -> int:
    """Warm ``side`` up, then time one call: how many calls last about ``target_seconds``."""
    side.timed(WARMUP_CALLS, 0)
    once = max(side.timed(1, WARMUP_CALLS), 1e-7)
    return max(1, min(MAX_CALLS, round(target_seconds / once)))


def interleaved(sides: dict, repeats: int, target_seconds: float) -> dict:
    """Seconds per call of every side: {name: {seconds (median), repeats, calls_per_repeat}}."""
    names = list(sides)
    calls = {}
    for name in names:
        sides[name].setup()
        calls[name] = calls_per_repeat(sides[name], target_seconds)
    per_call = {name: [] for name in names}
    i = WARMUP_CALLS + 1
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            side, n = sides[name], calls[name]
            side.setup()
            per_call[name].append(side.timed(n, i) / n)
            i += n
    return {name: {"seconds": statistics.median(ts), "repeats": ts, "calls_per_repeat": calls[name]}
            for name, ts in per_call.items()}


def speedup(faster: dict, slower: dict) -> float:
    """Median over the repeats of slower / faster time: how many times faster ``faster`` ran."""
    return statistics.median(s / f for f, s in zip(faster["repeats"], slower["repeats"]))


def throughput(t: dict, batch: int) -> dict:
    """Samples/s figures of a side that trains one batch per call."""
    return {"samples_per_second": batch / t["seconds"], "step_seconds": t["seconds"],
            "repeats_samples_per_second": [batch / s for s in t["repeats"]], "steps_per_repeat": t["calls_per_repeat"]}

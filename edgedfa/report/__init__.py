"""Reports (``edgedfa report``): pictures and a one-page summary of runs or of a sweep.

``runs`` reads run directories, ``run_report`` and ``sweep_report`` assemble the two kinds
of report, ``plots`` draws (matplotlib, the optional ``plot`` extra), ``markdown`` writes.
"""

from __future__ import annotations

import os

from ..errors import EdgeDFAError
from . import plots
from .run_report import run_report
from .sweep_report import is_sweep_dir, sweep_report


def write_report(paths: list, out_dir: str, require_plots: bool = True) -> dict:
    """The report of one sweep directory or of run directories into ``out_dir``.

    Without matplotlib the summary is still written; then an error says how to install it
    (or, with ``require_plots=False``, the result's ``note`` does).
    """
    if not paths:
        raise EdgeDFAError("report: name at least one run or sweep directory")
    for p in paths:
        if not os.path.exists(p):
            raise EdgeDFAError(f"{p}: no such run or sweep directory")
    sweeps = [p for p in paths if is_sweep_dir(p)]
    if sweeps and len(paths) > 1:
        raise EdgeDFAError(f"{sweeps[0]}: a sweep directory is reported alone, not with other directories")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise EdgeDFAError(f"-o {out_dir}: cannot create ({exc.strerror})") from None
    draw = plots.available()
    result = sweep_report(paths[0], out_dir, draw) if sweeps else run_report(paths, out_dir, draw)
    result["note"] = None if draw else plots.INSTALL + f" (the summary {result['summary']} was written)"
    if result["note"] and require_plots:
        raise EdgeDFAError(result["note"])
    return result

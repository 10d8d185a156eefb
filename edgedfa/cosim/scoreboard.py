"""Scoreboard: the accelerator's tensors against the engine's, in the order it produced them."""

from __future__ import annotations

import numpy as np


def _same(a, b) -> tuple:
    """(equal, detail) of two tensors: codes, fraction bits."""
    ca, cb = np.asarray(a.codes), np.asarray(b.codes)
    if ca.shape != cb.shape:
        return False, {"reason": "shape", "hdl": list(ca.shape), "engine": list(cb.shape)}
    if a.fmt.frac_bits != b.fmt.frac_bits:
        return False, {"reason": "format", "hdl": str(a.fmt), "engine": str(b.fmt)}
    diff = np.argwhere(ca != cb)
    if len(diff):
        i = tuple(int(v) for v in diff[0])
        return False, {"reason": "value", "index": list(i), "hdl": int(ca[i]), "engine": int(cb[i]),
                       "mismatches": int(len(diff))}
    return True, {}


def compare(hdl: dict, eng: dict) -> dict:
    """Walk the accelerator's tensors in the order it produced them; first mismatch wins."""
    checked = 0
    for key, t in hdl.items():
        if key.endswith("error/e") and key not in eng:
            continue  # a trace without e: e is still compared as the last layer's dy
        if key not in eng:
            return {"bit_exact": False, "checked": checked, "first_mismatch": {"tensor": key, "reason": "not produced by the engine"}}
        ok, detail = _same(t, eng[key])
        checked += 1
        if not ok:
            parts = key.split("/")
            return {"bit_exact": False, "checked": checked,
                    "first_mismatch": {"tensor": key, "step": parts[0], "kind": parts[1],
                                       "layer": parts[2] if len(parts) > 2 else None, **detail}}
    return {"bit_exact": True, "checked": checked, "first_mismatch": None}

"""Convolution kernel speed: the backends of edgedfa.kernels.conv side by side.

Usage: python tools/bench_conv.py  (prints a markdown table for docs/benchmarks.md)
       python tools/bench_conv.py --cases mnist --backends fast int8 im2col numba
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from edgedfa.kernels import conv as K
from edgedfa.kernels import onnxrt

BEFORE = "fast-without-int8"  # the fast backend as it was before the int8 route

CASES = [
    # name, batch, C_in, (H, W), C_out, kernel, pads, group
    ("digits conv1 1->16 3x3 8x8", 64, 1, (8, 8), 16, (3, 3), 1, 1),
    ("digits conv2 16->32 3x3 4x4", 64, 16, (4, 4), 32, (3, 3), 1, 1),
    ("shifted conv1 1->16 3x3 16x16", 64, 1, (16, 16), 16, (3, 3), 1, 1),
    ("shifted conv2 16->32 3x3 8x8", 64, 16, (8, 8), 32, (3, 3), 1, 1),
    ("depthwise 32 3x3 8x8", 64, 32, (8, 8), 32, (3, 3), 1, 32),
    ("1-d 8->16 k5 L=64", 64, 8, (64,), 16, (5,), 2, 1),
]
MNIST = [  # the CNN of `edgedfa bench` (cnn-b64)
    ("mnist conv1 1->32 3x3 28x28", 64, 1, (28, 28), 32, (3, 3), 1, 1),
    ("mnist conv2 32->64 3x3 14x14", 64, 32, (14, 14), 64, (3, 3), 1, 1),
]


def _time(fn, repeat=9):
    fn()  # warm-up (numba compile, caches)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(backends=("fast", "im2col", "numba", "reference"), acc=(32, "AP_SAT"), cases=CASES):
    rng = np.random.default_rng(0)
    rows = []
    for name, b, cin, hw, cout, k, p, g in cases:
        geo = K.make_geometry(hw, k, pads=(p,) * (2 * len(hw)), groups=g)
        x = rng.integers(0, 128, size=(b, cin) + hw)
        w = rng.integers(-128, 128, size=(cout, cin // g) + k)
        dy = rng.integers(-128, 128, size=(b, cout) + geo.out_spatial())
        for label in backends:
            be = "fast" if label == BEFORE else label
            onnxrt.enable(label != BEFORE)
            f = _time(lambda: K.conv_forward(x, w, geo, *acc, None, be))
            dw = _time(lambda: K.conv_weight_grad(x, dy, geo, *acc, be))
            dx = _time(lambda: K.conv_input_grad(dy, w, geo, *acc, be))
            onnxrt.enable(True)
            rows.append((name, label, f, dw, dx, K.conv_macs(geo, b, cin, cout)))
    return rows


def table(rows) -> str:
    out = ["| case (batch 64) | backend | forward ms | dW ms | dx ms | fwd GMAC/s |", "|---|---|---|---|---|---|"]
    for name, be, f, dw, dx, macs in rows:
        out.append(f"| {name} | {be} | {f * 1e3:.2f} | {dw * 1e3:.2f} | {dx * 1e3:.2f} | {macs / f / 1e9:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="convolution backends side by side")
    ap.add_argument("--cases", choices=("digits", "mnist", "all"), default="digits")
    ap.add_argument("--backends", nargs="+", choices=K.CONV_BACKENDS + (BEFORE,),
                    default=["fast", BEFORE, "im2col", "numba", "reference"])
    args = ap.parse_args()
    cases = {"digits": CASES, "mnist": MNIST, "all": CASES + MNIST}[args.cases]
    print(f"<!-- {platform.processor() or platform.machine()}, numpy {np.__version__} -->")
    print(table(run(tuple(args.backends), cases=cases)))

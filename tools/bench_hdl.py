"""Speed of the accelerator model: one training step of the default MLP (64-256-256-10,
batch 32, 8 bits) through hdl_models vs the engine's Trainer.step for the same step.

    python tools/bench_hdl.py [--algo sdfa] [--repeat 7]

Best of ``repeat`` process-CPU-time measurements each (warm: one untimed step first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from edgedfa import arch  # noqa: E402
from edgedfa.cosim import CoSim  # noqa: E402
from edgedfa.data import digits  # noqa: E402
from edgedfa.model import IntModel  # noqa: E402
from edgedfa.numerics import Numerics  # noqa: E402
from edgedfa.train import TrainConfig  # noqa: E402


def best(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", default="sdfa")
    ap.add_argument("--arch", default="mlp", choices=("mlp", "cnn"))
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    ds = digits()
    x = ds.x_train[:256] if a.arch == "mlp" else ds.x_train[:256].reshape(-1, 1, 8, 8)
    model = IntModel(arch.mlp(0) if a.arch == "mlp" else arch.cnn(0), Numerics.from_bits(8), 0)
    model.calibrate(x)
    cfg = TrainConfig(algo=a.algo, batch_size=32)
    xb, yb = x[:32], ds.y_train[:32]
    sim = CoSim(model, cfg)
    cfg = sim.cfg  # resolved for the numerics
    xq, xh = sim.engine_model.quantize_input(xb), sim.hdl_input(xb)
    t_eng = best(lambda: sim.trainer.step(xq, yb, 0, cfg.shift_at(0)), a.repeat)
    t_hdl = best(lambda: sim.ctl.step(xh, yb, 0, cfg.shift_at(0)), a.repeat)
    print(f"{a.arch} {a.algo}: engine {t_eng * 1e3:.2f} ms/step, hdl_models {t_hdl * 1e3:.2f} ms/step,"
          f" ratio {t_hdl / t_eng:.2f}x (limit 10x)")


if __name__ == "__main__":
    main()

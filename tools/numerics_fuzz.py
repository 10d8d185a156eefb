"""Train graphs under numerics settings far from the defaults; report every outcome that is
neither a finished run nor a one-line refusal.

    python tools/numerics_fuzz.py -o /tmp/nf                    # every setting, 2 epochs
    python tools/numerics_fuzz.py -o /tmp/nf --settings bits2 err16 --models gru rnn
    python tools/numerics_fuzz.py -o /tmp/nf --zoo zoo/onnx      # the zoo's own exports too

Each run is `edgedfa train ... --config SETTING.toml` in a process of its own. An outcome is
`trained` (the command printed its test accuracy), `refused` (one `edgedfa: error:` line,
exit 2), or a defect: a traceback, another exit status, a timeout. The graphs are the
committed zoo fixtures (an MLP, a Conv1d CNN, a GRU; PyTorch exports) and the built-in CNN,
LSTM and RNN, so nothing needs PyTorch; `--zoo DIR` adds the zoo's exports of `tools/zoo.py`.
Exit status 1 when any run was a defect. Short runs find the settings the arithmetic cannot
take; settings that fail only late in a run need `--epochs 30`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "zoo")

# name -> (config TOML, graph source, dataset, the DFA algorithm tried next to bp)
GRAPHS = {
    "mlp": ("--model", os.path.join(FIXTURES, "mlp-digits-std-s0-ts.onnx"), "digits-std", "sdfa"),
    "cnn1d": ("--model", os.path.join(FIXTURES, "cnn1d-signal-s0-ts.onnx"), "signal", "hybrid"),
    "gru": ("--model", os.path.join(FIXTURES, "gru-digits-seq-s0-ts.onnx"), "digits-seq", "hybrid"),
    "cnn": ("--arch", "cnn", "digits", "hybrid"),
    "lstm": ("--arch", "lstm", "digits", "hybrid"),
    "rnn": ("--arch", "rnn", "digits", "bp"),
}
ZOO = {"cnn2d": ("cnn2d-shifted-digits-s0-ts.onnx", "shifted-digits", "hybrid"),
       "mlp-signal": ("mlp-signal-s0-ts.onnx", "signal", "sdfa"),
       "lstm-signal": ("lstm-signal-s0-ts.onnx", "signal", "bp"),
       "rnn-signal": ("rnn-signal-s0-ts.onnx", "signal", "bp")}

NUMERICS = {
    "bits2": "bits = 2", "bits3": "bits = 3", "bits4": "bits = 4", "bits6": "bits = 6", "bits12": "bits = 12",
    "bits16": "bits = 16", "bits24": "bits = 24",
    "err4": "err_bits = 4", "err16": "err_bits = 16", "err24": "err_bits = 24",
    "act4": "act_bits = 4", "act16": "act_bits = 16", "w16": "weight_bits = 16",
    "acc16": "acc_bits = 16", "acc48": "acc_bits = 48",
    "accwrap": 'acc_overflow = "AP_WRAP"', "actwrap": 'act_overflow = "AP_WRAP"', "wwrap": 'weight_overflow = "AP_WRAP"',
    "errtrn": 'err_rounding = "AP_TRN"', "updrnd": 'update_rounding = "AP_RND"',
    "static": 'scaling = "static"', "sgd": 'update_rule = "sgd"', "momentum": "momentum_shift = 3",
    "normalized": "update_norm_bits = 8", "moments4": "moment_bits = 4", "moments32": "moment_bits = 32",
    "gate2": "gate_bits = 2", "serr2": "state_err_bits = 2", "serr24": "state_err_bits = 24",
    "wint": "weight_int_bits = -4", "aint": "act_int_bits = 0",
}
TRAIN = {"batch1": "batch_size = 1", "batch7": "batch_size = 7", "lr0": "lr_shift = 0", "lr30": "lr_shift = 30"}
SETTINGS = {**{k: f"[numerics]\n{v}\n" for k, v in NUMERICS.items()}, **{k: f"[train]\n{v}\n" for k, v in TRAIN.items()}}


def outcome(done: subprocess.CompletedProcess) -> tuple:
    """(kind, last line) of a finished command."""
    lines = (done.stdout + done.stderr).strip().splitlines()
    last = lines[-1] if lines else ""
    if done.returncode == 0 and last.startswith("test accuracy"):
        return "trained", last
    if "Traceback" in done.stderr:
        return "DEFECT: traceback", last
    if done.returncode == 2 and last.startswith("edgedfa: error:") and len(done.stderr.strip().splitlines()) == 1:
        return "refused", last
    return f"DEFECT: exit {done.returncode}", last


def run_one(out: str, setting: str, graph: str, spec: tuple, algo: str, epochs: int, timeout: float) -> dict:
    flag, src, dataset, _ = spec
    cfg = os.path.join(out, "settings", f"{setting}.toml")
    cmd = [sys.executable, "-m", "edgedfa.cli", "train", flag, src, "--dataset", dataset, "--algo", algo,
           "--epochs", str(epochs), "--config", cfg, "--quiet", "--force", "--out",
           os.path.join(out, "runs", f"{setting}-{graph}-{algo}")]
    try:
        kind, last = outcome(subprocess.run(cmd, capture_output=True, text=True, timeout=timeout))
    except subprocess.TimeoutExpired:
        kind, last = "DEFECT: timeout", ""
    return {"setting": setting, "graph": graph, "algo": algo, "outcome": kind, "message": last}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", required=True, help="directory for the settings, runs and results.jsonl")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS))
    ap.add_argument("--models", nargs="+", default=None, help="graphs to train (default: all; per-layer keys such"
                    " as bptt_steps need a layer's name and are not swept)")
    ap.add_argument("--zoo", help="a directory of tools/zoo.py exports: adds " + ", ".join(ZOO))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = ap.parse_args(argv)
    graphs = dict(GRAPHS)
    if args.zoo:
        for name, (file, dataset, algo) in ZOO.items():
            graphs[name] = ("--model", os.path.join(args.zoo, file), dataset, algo)
    models = args.models or list(graphs)
    unknown = sorted(set(models) - set(graphs))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(graphs)}")
    os.makedirs(os.path.join(args.out, "settings"), exist_ok=True)
    for name in args.settings:
        with open(os.path.join(args.out, "settings", f"{name}.toml"), "w") as f:
            f.write(SETTINGS[name])
    defects = 0
    with open(os.path.join(args.out, "results.jsonl"), "a") as log:
        for setting, graph in itertools.product(args.settings, models):
            for algo in dict.fromkeys(["bp", graphs[graph][3]]):
                r = run_one(args.out, setting, graph, graphs[graph], algo, args.epochs, args.timeout)
                defects += r["outcome"].startswith("DEFECT")
                print(f"{r['outcome']:18s} {setting}-{graph}-{algo}: {r['message'][:200]}", flush=True)
                log.write(json.dumps(r) + "\n")
    print(f"{defects} defect(s)")
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())

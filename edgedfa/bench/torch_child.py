"""The process that times the bench's PyTorch column: ``python -m edgedfa.bench.torch_child``.

PyTorch float32 BP of a workload's Graph, mirrored from the Graph's description (same
layers, widths, batch and data) with PyTorch's own initialisation (speed only); plain SGD on
the batch-mean cross-entropy, at 1 and at 2 threads. ``torch_ref`` starts this process and
speaks to it; only here is ``torch`` imported.

Protocol: one JSON request a line on stdin, one JSON reply a line on the stdout the process
started with (anything else written to stdout, by PyTorch or a C library, goes to stderr):

- ``{"op": "load", "graph": torch_ref.describe(g), "data": "F.npz", "batch": B}``: the
  workload to time (``F.npz`` holds ``x`` float32, batch first in the Graph's input shape,
  and ``y`` int64); reply ``{"sides": ["torch-1", "torch-2"], "version": "2.x"}``.
- ``{"op": "run", "side": "torch-1", "n": N, "i": I}``: set the side's thread count
  (untimed), then time steps ``I .. I+N-1``; reply ``{"seconds": S}``.
- ``{"op": "quit"}``, or the end of stdin: exit.

A request that fails replies ``{"error": "one line"}`` and the process carries on.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from ..errors import EdgeDFAError
from . import timing

THREADS = (1, 2)


def _recurrent(torch, node):
    w = node["params"]["W"]
    a = node["attrs"]
    cls = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM, "RNN": torch.nn.RNN}[node["op"]]
    if int(a.get("layout", 0)) != 1 or a.get("direction", "forward") != "forward":
        raise EdgeDFAError(f"{node['name']}: only forward batch-first recurrent layers are mirrored")
    return cls(int(w[2]), int(a["hidden_size"]), batch_first=True)


def _conv(torch, node):
    w = node["params"]["W"]
    a = node["attrs"]
    nd = len(w) - 2
    pads = list(a.get("pads", [0] * 2 * nd))
    if pads[:nd] != pads[nd:]:
        raise EdgeDFAError(f"{node['name']}: asymmetric padding is not mirrored")
    cls = torch.nn.Conv2d if nd == 2 else torch.nn.Conv1d
    g = int(a.get("group", 1))
    return cls(int(w[1]) * g, int(w[0]), tuple(w[2:]), stride=tuple(a.get("strides", [1] * nd)),
               padding=tuple(pads[:nd]), dilation=tuple(a.get("dilations", [1] * nd)), groups=g,
               bias="B" in node["params"])


def _module(torch, node):
    op, a = node["op"], node["attrs"]
    if op == "Dense":
        w = node["params"]["W"]
        return torch.nn.Linear(int(w[1]), int(w[0]), bias="B" in node["params"])
    if op == "Conv":
        return _conv(torch, node)
    if op in ("GRU", "LSTM", "RNN"):
        return _recurrent(torch, node)
    if op == "Relu":
        return torch.nn.ReLU()
    if op == "Flatten":
        return torch.nn.Flatten(int(a.get("axis", 1)))
    if op == "MaxPool":
        nd = len(a["kernel_shape"])
        cls = torch.nn.MaxPool2d if nd == 2 else torch.nn.MaxPool1d
        return cls(tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])),
                   tuple(a.get("pads", [0] * 2 * nd)[:nd]))
    raise EdgeDFAError(f"{node['name']}: op {op} is not mirrored in PyTorch")


def network(graph: dict):
    """A torch.nn.Module computing the described Graph (chain or DAG of the ops above)."""
    import torch

    class GraphNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = torch.nn.ModuleDict({n["name"]: _module(torch, n) for n in graph["nodes"]})

        def forward(self, x):
            env = {graph["input_name"]: x}
            for node in graph["nodes"]:
                out = self.mods[node["name"]](env[node["inputs"][0]])
                if node["op"] in ("GRU", "LSTM", "RNN"):
                    y, h = out
                    states = h if isinstance(h, tuple) else (h,)
                    outs = [y[:, :, None]] + [s.transpose(0, 1) for s in states]  # ONNX layout 1
                else:
                    outs = [out]
                env.update({name: t for name, t in zip(node["outputs"], outs) if name})
            return env[graph["output_name"]]

    return GraphNet()


def sides(graph: dict, x: np.ndarray, y: np.ndarray, batch: int) -> dict:
    """Float32 BP training steps at 1 and at 2 threads, as sides of a comparison."""
    import torch

    xt = torch.tensor(np.asarray(x, dtype=np.float32))
    yt = torch.tensor(np.asarray(y, dtype=np.int64))
    net = network(graph)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    n = len(yt) - batch + 1

    def step(i):
        lo = (i * batch) % n
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt[lo:lo + batch]), yt[lo:lo + batch]).backward()
        opt.step()

    return {f"torch-{t}": timing.Side(step, lambda t=t: torch.set_num_threads(t)) for t in THREADS}


def torch_version() -> str:
    import torch

    return torch.__version__


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, EdgeDFAError) else f"{type(exc).__name__}: {exc}"
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def _answer(request: dict, loaded: dict, build, version) -> dict:
    op = request.get("op")
    if op == "load":
        with np.load(request["data"]) as data:
            x, y = data["x"], data["y"]
        loaded.clear()
        loaded.update(build(request["graph"], x, y, int(request["batch"])))
        return {"sides": list(loaded), "version": version()}
    if op == "run":
        side = loaded[request["side"]]
        side.setup()
        return {"seconds": side.timed(int(request["n"]), int(request["i"]))}
    raise EdgeDFAError(f"unknown request {op!r}")


def serve(inp, out, build=sides, version=torch_version) -> None:
    """Answer requests from ``inp`` on ``out`` until ``quit`` or the end of ``inp``
    (``build`` and ``version``: the PyTorch sides of a workload and PyTorch's version)."""
    loaded = {}
    for line in inp:
        request = json.loads(line)
        if request.get("op") == "quit":
            return
        try:
            reply = _answer(request, loaded, build, version)
        except Exception as exc:  # noqa: BLE001 -- any failure is the column's one-line reason
            reply = {"error": _one_line(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(build=sides, version=torch_version) -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray output never mixes with the replies
    serve(sys.stdin, out, build, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PyTorch float32 BP of a workload's Graph, for the bench's comparison column. PyTorch is
never a dependency: without it the column reads "not installed" and the rest still runs.

The network is the same Graph (same layers, widths, batch and data) with PyTorch's own
initialisation (speed only); plain SGD on the batch-mean cross-entropy.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeDFAError
from . import timing

THREADS = (1, 2)


def version() -> str | None:
    """PyTorch's version, or None when it cannot be imported."""
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def _recurrent(torch, node):
    w = np.shape(node.params["W"])
    hidden = int(node.attrs["hidden_size"])
    cls = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM, "RNN": torch.nn.RNN}[node.op]
    if int(node.attrs.get("layout", 0)) != 1 or node.attrs.get("direction", "forward") != "forward":
        raise EdgeDFAError(f"{node.name}: only forward batch-first recurrent layers are mirrored")
    return cls(int(w[2]), hidden, batch_first=True)


def _conv(torch, node):
    w = np.shape(node.params["W"])
    a = node.attrs
    nd = len(w) - 2
    pads = list(a.get("pads", [0] * 2 * nd))
    if pads[:nd] != pads[nd:]:
        raise EdgeDFAError(f"{node.name}: asymmetric padding is not mirrored")
    cls = torch.nn.Conv2d if nd == 2 else torch.nn.Conv1d
    g = int(a.get("group", 1))
    return cls(int(w[1]) * g, int(w[0]), tuple(w[2:]), stride=tuple(a.get("strides", [1] * nd)),
               padding=tuple(pads[:nd]), dilation=tuple(a.get("dilations", [1] * nd)), groups=g,
               bias="B" in node.params)


def _module(torch, node):
    if node.op == "Dense":
        w = np.shape(node.params["W"])
        return torch.nn.Linear(int(w[1]), int(w[0]), bias="B" in node.params)
    if node.op == "Conv":
        return _conv(torch, node)
    if node.op in ("GRU", "LSTM", "RNN"):
        return _recurrent(torch, node)
    if node.op == "Relu":
        return torch.nn.ReLU()
    if node.op == "Flatten":
        return torch.nn.Flatten(int(node.attrs.get("axis", 1)))
    if node.op == "MaxPool":
        a = node.attrs
        nd = len(a["kernel_shape"])
        cls = torch.nn.MaxPool2d if nd == 2 else torch.nn.MaxPool1d
        return cls(tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])),
                   tuple(a.get("pads", [0] * 2 * nd)[:nd]))
    raise EdgeDFAError(f"{node.name}: op {node.op} is not mirrored in PyTorch")


def network(graph):
    """A torch.nn.Module computing the Graph (chain or DAG of the ops above)."""
    import torch

    class GraphNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = torch.nn.ModuleDict({n.name: _module(torch, n) for n in graph.nodes})

        def forward(self, x):
            env = {graph.input_name: x}
            for node in graph.nodes:
                out = self.mods[node.name](env[node.inputs[0]])
                if node.op in ("GRU", "LSTM", "RNN"):
                    y, h = out
                    states = h if isinstance(h, tuple) else (h,)
                    outs = [y[:, :, None]] + [s.transpose(0, 1) for s in states]  # ONNX layout 1
                else:
                    outs = [out]
                env.update({name: t for name, t in zip(node.outputs, outs) if name})
            return env[graph.output_name]

    return GraphNet()


def sides(graph, x: np.ndarray, y: np.ndarray, batch: int) -> dict:
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


def thread_count() -> int:
    import torch

    return torch.get_num_threads()


def set_thread_count(n: int) -> None:
    import torch

    torch.set_num_threads(n)

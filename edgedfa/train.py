"""The training loop: integer forward, output error, credit assignment by plan, updates."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from .credit import ALGOS, Plan
from .errors import EdgeDFAError
from .feedback import VALUE_KINDS, make_projector, map_gain_shift, projector_kinds
from .fixed import QTensor, align_add, narrow_dynamic
from .loss import output_error
from .model import IntModel
from .prng import PURPOSE_SHUFFLE, stream_id, words
from .scaling import manage_outputs, refresh_formats, tallying
from .schema import setting
from .update import default_lr_shift


def default_decay_epochs(epochs: int) -> list[int]:
    """The default schedule: the step halves at 2/3 and again at 5/6 of the run's epochs in all
    (rounded to the nearest epoch; [20, 25] of 30), the same rule for every graph. Without it
    the last epochs of a run swing by several points (a recurrent net on the zoo's signal task
    lost up to 25 points in an epoch); with it they settle (docs/benchmarks.md, the zoo). It
    follows the total: a run resumed with more epochs continues on the longer run's schedule."""
    return sorted({e for e in ((2 * epochs + 1) // 3, (5 * epochs + 3) // 6) if 1 <= e < epochs})


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (all integers: the learning rate is 2^-lr_shift)."""

    algo: str = setting("sdfa", "credit assignment (docs/algorithms.md)", choices=ALGOS, flag="--algo")
    epochs: int = setting(30, "epochs in all (a resumed run trains up to this total)", lo=1, hi=1_000_000,
                          resume=True, flag="--epochs", metavar="N")
    batch_size: int = setting(32, "samples per training step", lo=1, hi=1 << 20, flag="--batch-size",
                              metavar="B")
    lr_shift: int | None = setting(None, "learning rate 2^-lr_shift (Adam: the step of every parameter;"
                                   " SGD: of the batch-mean gradient)", lo=0, hi=30, resume=True,
                                   flag="--lr-shift", metavar="S", none="9 for Adam, 5 for SGD")
    lr_decay_epochs: list[int] | None = setting(None, "epochs at which lr_shift grows by one (the step halves)",
                                                lo=1, hi=1_000_000, increasing=True, resume=True,
                                                none="at 2/3 and 5/6 of the epochs ([20, 25] of 30)")
    feedback_sparsity: int = setting(1, "non-zeros per neuron of sparse feedback (sdfa)", lo=1, hi=1 << 16,
                                     flag="--feedback-sparsity", metavar="K")
    feedback_values: str = setting("uniform", "values of the feedback matrices", choices=VALUE_KINDS,
                                   flag="--feedback-values")
    feedback_kind: str | None = setting(None, "feedback projector of the DFA modules (channel and dilated"
                                        " apply to conv maps)", choices=projector_kinds,
                                        none="the algorithm's choice", flag="--feedback-kind")
    feedback_regenerate: bool = setting(True, "regenerate feedback matrices from the PRNG instead of"
                                        " storing them (same bits)", flag="--stored-feedback", const=False)
    seed: int = setting(0, "seed of the initial weights, the sample order and every random stream", lo=0,
                        hi=(1 << 32) - 1, flag="--seed", metavar="S")

    def shift_at(self, epoch: int) -> int:
        """Learning-rate shift in ``epoch`` plus log2 of the batch (SGD updates use the batch
        sum; Adam takes the decays only, its step does not depend on the gradient's scale)."""
        if self.lr_shift is None:
            raise EdgeDFAError("TrainConfig.lr_shift is unresolved: use resolved(numerics)")
        decay = sum(1 for e in self.decay_epochs() if epoch >= e)
        return self.lr_shift + decay + int(round(math.log2(max(self.batch_size, 1))))

    def decay_epochs(self) -> list[int]:
        """The epochs at which the step halves: the setting, or the default schedule."""
        return default_decay_epochs(self.epochs) if self.lr_decay_epochs is None else list(self.lr_decay_epochs)

    def resolved(self, numerics) -> "TrainConfig":
        """This configuration with every default filled in for the model's numerics."""
        if self.lr_shift is not None:
            return self
        return replace(self, lr_shift=default_lr_shift(numerics))


class Trainer:
    """Runs one training step at a time over an IntModel and a Plan."""

    def __init__(self, model: IntModel, plan: Plan, cfg: TrainConfig):
        cfg = cfg.resolved(model.numerics)
        self.model, self.plan, self.cfg = model, plan, cfg
        self.nodes = {n.name: (n, l) for n, l in zip(model.graph.nodes, model.layers)}
        self.projectors, self._sources = {}, {}
        for m in plan.modules:
            for name, opts in m.layer_options.items():
                apply_layer_options(self.nodes[name][1], opts, m.name)
            if m.source == "dfa":
                node, layer = self.nodes[m.output_node]
                target = m.target or node.outputs[0]
                source = m.error_from or model.graph.output_name
                proj = make_projector(m.feedback, layer.index, model.seed, model.shapes[target],
                                      model.shapes[source])
                if m.feedback.option("gain_shift") is None and self._is_map(m):
                    proj.gain_shift = map_gain_shift(model.shapes[target], model.shapes[source])
                self.projectors[m.name] = (target, proj)
                self._sources[m.name] = source
        for layer in model.layers:
            layer.lr_base = cfg.shift_at(0)  # normalized updates scale by the schedule's decay only
            layer.lr_shift0 = cfg.lr_shift  # Adam's step: the base shift plus the decays
        self._needs = self._error_needed()
        self.saturation = {l.name: {k: 0 for k in l.params} for l in model.layers if l.trainable}

    def state_arrays(self) -> dict:
        """The trainer's own state as named arrays (checkpointed beside the model's)."""
        return {f"trainer/saturation/{layer}/{p}": np.array(n, dtype=np.int64)
                for layer, counts in self.saturation.items() for p, n in counts.items()}

    def load_state(self, arrays: dict) -> None:
        """Restore what ``state_arrays`` wrote (missing entries keep their start values)."""
        for key, arr in arrays.items():
            if key.startswith("trainer/saturation/"):
                layer, p = key[len("trainer/saturation/"):].rsplit("/", 1)
                if layer in self.saturation and p in self.saturation[layer]:
                    self.saturation[layer][p] = int(arr)

    def _is_map(self, module) -> bool:
        return any(self.nodes[n][0].op == "Conv" for n in module.nodes)

    def _error_needed(self) -> dict:
        """Tensor -> whether an error must be computed for it (a trainable layer upstream
        in the same module or in a BP-sourced module)."""
        g, prod = self.model.graph, self.model.graph.producers()
        upstream = {g.input_name: False}
        for node, layer in zip(g.nodes, self.model.layers):
            up = layer.trainable or any(upstream.get(i, False) for i in node.inputs if i)
            for o in node.outputs:
                upstream[o] = up
        targets = {t for t, _ in self.projectors.values()}
        sources = {t for t in self._sources.values() if t not in targets}
        needs = {}
        for node in g.nodes:
            mod = self.plan.module_of[node.name]
            for t in node.inputs:
                if not t or t not in prod:
                    needs[(node.name, t)] = False
                    continue
                pmod = self.plan.module_of[prod[t].name]
                needs[(node.name, t)] = t in sources or (upstream.get(t, False) and (pmod is mod or pmod.source == "bp"))
        return needs

    def step(self, xq: QTensor, labels: np.ndarray, step: int, lr_shift: int):
        """One training step; returns (logits QTensor, output error QTensor)."""
        model = self.model
        logits, caches, _ = model.forward(xq, train=True)
        e = output_error(logits, labels, model.numerics.err_bits)
        errors = {model.graph.output_name: e}
        grads = {}
        for node, layer in reversed(list(zip(model.graph.nodes, model.layers))):
            mod = self.plan.module_of[node.name]
            if mod.source == "dfa" and node.name == mod.output_node:
                target, proj = self.projectors[mod.name]
                src = errors.get(self._sources[mod.name])
                if src is not None:  # None: no error reached the source tensor (nothing to learn)
                    with tallying(layer, "feedback"):
                        errors[target] = proj.project(src, layer.num.err_bits, layer.num.err_rounding)
            dys = [errors.get(o) for o in node.outputs]
            if all(d is None for d in dys):
                continue
            need = [self._needs[(node.name, t)] for t in node.inputs if t]
            dy = dys if getattr(layer, "n_outputs", 1) > 1 else dys[0]
            with tallying(layer, "error"), named(node, "backward"):
                dxs, g = layer.backward(caches[node.name], dy, need)
            if g:
                grads[node.name] = g
            for t, dx in zip([t for t in node.inputs if t], dxs):
                if dx is not None and need[[u for u in node.inputs if u].index(t)]:
                    with tallying(layer, "error"):
                        self._accumulate(errors, t, dx, layer.num)
        for name, g in grads.items():
            node, layer = self.nodes[name]
            with named(node, "update"):
                clipped = layer.weight_update(g, step, lr_shift)
            for k, v in clipped.items():
                self.saturation[name][k] += v
        self.manage_formats()
        return logits, e

    def manage_formats(self) -> None:
        """§13 after the updates: output exponents move by this step's peaks, in node order;
        layers that keep their input's format follow."""
        for node, layer in zip(self.model.graph.nodes, self.model.layers):
            with named(node, "exponent unit"):
                manage_outputs(layer)
        refresh_formats(self.model)

    @staticmethod
    def _accumulate(errors, t, dx, num):
        if t not in errors:
            errors[t] = dx
            return
        wide = align_add(errors[t], dx)
        errors[t] = narrow_dynamic(wide.codes, wide.fmt, num.err_bits, num.err_rounding)


@contextmanager
def named(node, stage: str):
    """A refusal inside a layer's arithmetic names the layer and the stage it came from."""
    try:
        yield
    except EdgeDFAError as exc:
        raise EdgeDFAError(f"{node.name} ({node.op}), {stage}: {exc}") from None


def apply_layer_options(layer, opts: dict, module: str) -> None:
    """A plan's per-layer options: ``bptt_steps`` (recurrent), ``frozen`` (parameter names
    never updated), ``backward_mode``/``backward_groups`` (Conv error propagation)."""
    where = f"module {module}: layer_options.{layer.name}"
    for key, val in opts.items():
        if key == "frozen":
            names = [val] if isinstance(val, str) else list(val)
            bad = [v for v in names if v not in layer.params]
            if bad:
                raise EdgeDFAError(f"{where}: frozen {bad}; the layer's parameters are {sorted(layer.params)}")
            val = tuple(names)
        elif key in ("backward_mode", "backward_groups") and not hasattr(layer, "configure_backward"):
            raise EdgeDFAError(f"{where}: {key} applies to Conv layers only ({layer.name} is {layer.op})")
        elif key == "bptt_steps" and not hasattr(layer, "bptt_steps"):
            raise EdgeDFAError(f"{where}: bptt_steps applies to recurrent layers only ({layer.name} is {layer.op})")
        setattr(layer, key, val)
    if "backward_mode" in opts or "backward_groups" in opts:
        layer.configure_backward(getattr(layer, "backward_mode", "full"), getattr(layer, "backward_groups", None))


def batch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Sample order of an epoch: argsort of PRNG words (shuffle stream, step = epoch)."""
    return np.argsort(words(seed, stream_id(0, PURPOSE_SHUFFLE), epoch, n), kind="stable")

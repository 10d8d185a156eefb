"""Credit assignment as data: modules, where each module's error comes from (docs/algorithms.md).

A plan splits the graph into modules. The module holding the graph output takes the true
output error; every other module takes the error at its output tensor either from the next
modules by backpropagation (``source="bp"``) or from the output error through a fixed
random feedback projector (``source="dfa"``). Inside a module errors travel by BP through
each layer's own backward (which may itself be approximate, e.g. grouped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EdgeDFAError
from .feedback import VALUE_KINDS, FeedbackSpec, projector_kinds
from .graph import MODULE_LEADERS, POOLS, RECURRENT, Graph
from .model import LayerOptions
from .schema import check_table, names, setting

ALGOS = ("bp", "dfa", "sdfa", "modular", "hybrid")
MODULE_STARTS = ("Flatten", "Reshape", "Squeeze")  # after a pooled map they begin the next module


@dataclass
class Module:
    name: str
    nodes: list
    source: str = "dfa"  # output | bp | dfa
    feedback: FeedbackSpec | None = None
    target: str | None = None  # tensor that receives the feedback (default: the module output)
    layer_options: dict = field(default_factory=dict)  # node -> {attribute: value}, e.g. bptt_steps
    error_from: str | None = None  # DFA: the tensor whose error is projected (default: the output error)

    @property
    def output_node(self) -> str:
        return self.nodes[-1]


@dataclass
class Plan:
    algo: str
    modules: list
    module_of: dict = field(default_factory=dict)

    def __post_init__(self):
        self.module_of = {n: m for m in self.modules for n in m.nodes}

    def describe(self) -> list:
        return [{"module": m.name, "nodes": list(m.nodes), "source": m.source,
                 "target": m.target, "error_from": m.error_from, "layer_options": m.layer_options,
                 "feedback": None if m.feedback is None else
                 {"kind": m.feedback.kind, "values": m.feedback.values, "k": m.feedback.k,
                  "bits": m.feedback.bits, "regenerate": m.feedback.regenerate}} for m in self.modules]


def _is_trainable(node) -> bool:
    """A layer a module is built around; a BatchNorm trains but belongs to the layer before it."""
    return node.op in MODULE_LEADERS


def _pads_next(graph: Graph, i: int) -> bool:
    """Node ``i`` is a Pad read by the trainable node after it: that layer's own padding."""
    node, nxt = graph.nodes[i], graph.nodes[i + 1] if i + 1 < len(graph.nodes) else None
    return node.op == "Pad" and nxt is not None and _is_trainable(nxt) and node.outputs[0] in nxt.inputs


def per_layer_modules(graph: Graph) -> list:
    """A module starts at every trainable node (but BatchNorm), or at the Pad before it; the
    others join the current one."""
    groups = []
    for i, node in enumerate(graph.nodes):
        has_trainable = bool(groups) and any(_is_trainable(graph.node(n)) for n in groups[-1])
        starts = _is_trainable(node) or _pads_next(graph, i) or \
            (node.op in MODULE_STARTS and bool(groups) and graph.node(groups[-1][-1]).op in POOLS)
        if not groups or (starts and has_trainable):
            groups.append([])
        groups[-1].append(node.name)
    return groups


def per_block_modules(graph: Graph) -> list:
    """Conv blocks (convs + activations up to a pooling node) and one module per other layer."""
    groups, open_block, closed = [], False, False
    for i, node in enumerate(graph.nodes):
        start = not groups
        if (node.op == "Conv" and not open_block) or closed:
            start = True  # a closed block's successors (flatten, head) begin the next module
        if node.op == "Conv" and not closed and groups and graph.node(groups[-1][-1]).op == "Pad" \
                and _pads_next(graph, i - 1):
            start = False  # the Conv's own padding opened its block
        elif _pads_next(graph, i) and not open_block:
            start = True
        if node.op in ("Dense",) + RECURRENT and groups and any(_is_trainable(graph.node(n)) for n in groups[-1]):
            start = True
        if start:
            groups.append([])
        groups[-1].append(node.name)
        closed = open_block and node.op in POOLS
        open_block = node.op == "Conv" or (open_block and node.op not in POOLS)
    return groups


def _conv_like(graph: Graph, names) -> bool:
    return any(graph.node(n).op == "Conv" for n in names)


def make_plan(graph: Graph, algo: str, k: int = 1, values: str = "uniform",
              regenerate: bool = True, kind: str | None = None) -> Plan:
    """The named preset ``algo`` for this graph (docs/algorithms.md states each)."""
    if algo not in ALGOS:
        raise EdgeDFAError(f"unknown --algo {algo!r}; expected one of {', '.join(ALGOS)}")
    if algo == "bp":
        return Plan(algo, [Module("all", [n.name for n in graph.nodes], "output")])
    groups = per_layer_modules(graph) if algo in ("dfa", "sdfa") else per_block_modules(graph)
    if algo == "hybrid" and len(groups) > 2:
        groups = groups[:-2] + [groups[-2] + groups[-1]]  # BP for the top two modules
    # with two modules, merging would leave plain BP: hybrid then keeps DFA below the head
    modules = []
    for i, names in enumerate(groups):
        if i == len(groups) - 1:
            modules.append(Module(f"m{i}", names, "output"))
            continue
        if kind is not None and (kind not in ("channel", "dilated") or _conv_like(graph, names)):
            fb = FeedbackSpec(kind, values, k, regenerate=regenerate)
        elif algo == "sdfa":
            fb = FeedbackSpec("sparse", values, k, regenerate=regenerate)
        elif algo == "hybrid" and _conv_like(graph, names):
            fb = FeedbackSpec("sparse", values, k, regenerate=regenerate)
        elif algo == "modular" and _conv_like(graph, names):
            fb = FeedbackSpec("channel", values, regenerate=regenerate)
        else:
            fb = FeedbackSpec("dense", values, regenerate=regenerate)
        module = Module(f"m{i}", names, "dfa", fb)
        if algo == "hybrid" and _conv_like(graph, names):
            # a DFA error on a conv map reaches each bias summed over every position with
            # one sign and drives it (docs/benchmarks.md): the block trains its kernels only
            module.layer_options = {n: {"frozen": ["B"]} for n in names
                                    if graph.node(n).op == "Conv" and "B" in graph.node(n).params}
        rec = [n for n in names if graph.node(n).op in RECURRENT]
        if rec and algo in ("dfa", "sdfa"):
            # per-step DFA (Nøkland): the error reaches every step's hidden state, no BPTT
            module.target = graph.node(rec[-1]).outputs[0]
            module.layer_options = {rec[-1]: {"bptt_steps": 0}}
        modules.append(module)
    return Plan(algo, modules)


def _feedback_spec(table, where: str) -> FeedbackSpec:
    f = check_table(FeedbackSettings, table or {}, where)
    base = {k: f.pop(k) for k in ("kind", "values", "k", "bits", "regenerate") if k in f}
    options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in f.items() if v is not None))
    return FeedbackSpec(**base, options=options)


def _split_inside(graph: Graph, entry: dict, nodes: list, name: str, where: str) -> list:
    """``inside = "dfa"``: one sub-module per trainable layer of the module; every one but the
    top takes the module's output error through its own fixed random feedback."""
    groups = []
    for n in nodes:
        if not groups or (_is_trainable(graph.node(n)) and any(_is_trainable(graph.node(m)) for m in groups[-1])):
            groups.append([])
        groups[-1].append(n)
    out_t = entry.get("target") or graph.node(nodes[-1]).outputs[0]
    fb = _feedback_spec(entry.get("inside_feedback"), where + " inside_feedback")
    return [Module(f"{name}.{j}", g, "dfa", fb, None, {}, out_t) for j, g in enumerate(groups[:-1])] + [groups[-1]]


@dataclass
class FeedbackSettings:
    """Keys of a module's ``feedback`` and ``inside_feedback`` tables."""

    kind: str = setting("dense", "projector kind (channel and dilated apply to conv maps)", choices=projector_kinds)
    values: str = setting("uniform", "values of the feedback matrix", choices=VALUE_KINDS)
    k: int = setting(1, "non-zeros per target unit (sparse); taps (dilated)", lo=1, hi=1 << 16)
    bits: int = setting(8, "width of uniform values", lo=2, hi=16)
    regenerate: bool = setting(True, "regenerate the matrix from the PRNG instead of storing it (same bits)")
    gain_shift: int | None = setting(None, "extra 2^-s on the projection", lo=0, hi=62,
                                     none="the conv-map gain rule of docs/datapath.md")
    taps: int | None = setting(None, "dilated: taps over the source channels", lo=1, hi=1 << 16, none="k")
    dilation: int | None = setting(None, "dilated: channel distance between taps", lo=1, hi=1 << 16,
                                   none="source channels // taps")
    grid: object = setting(None, "dilated: coarse cells per spatial axis of the target (one error per cell)",
                           words='"full" (a cell per position), a count, or a list of counts (default: one cell)')


@dataclass
class PlanLayerOptions(LayerOptions):
    """Keys of a module's ``layer_options.<layer>`` tables."""

    frozen: list[str] = setting(factory=list, doc="parameters never updated, e.g. [\"B\"]")


@dataclass
class ModuleSettings:
    """Keys of one ``[[modules]]`` entry (docs/algorithms.md)."""

    nodes: list[str] = setting(factory=list, doc="the module's layers (graph order)")
    name: str | None = setting(None, "module name", none="m<index>")
    source: str = setting("dfa", "where the module's error comes from: the true output error, BP from the"
                          " modules above, or DFA (a fixed random projection)", choices=("output", "bp", "dfa"))
    feedback: dict = setting(factory=dict, doc="the DFA projector (keys: [modules.feedback])")
    target: str | None = setting(None, "tensor that receives the feedback", none="the module's output")
    error_from: str | None = setting(None, "DFA: the tensor whose error is projected", none="the output error")
    inside: str = setting("bp", "errors inside the module: BP, or DFA per trainable layer", choices=("bp", "dfa"))
    inside_feedback: dict = setting(factory=dict, doc="the projector of inside = \"dfa\" (keys: [modules.feedback])")
    layer_options: dict = setting(factory=dict, doc="layer name -> options (keys: [modules.layer_options])")


LAYER_OPTION_KEYS = frozenset(names(PlanLayerOptions))
MODULE_KEYS = frozenset(names(ModuleSettings))


def plan_from_config(graph: Graph, table: list, default_algo: str = "custom") -> Plan:
    """A plan from a config list of {nodes, source, feedback = {kind, values, k, ...},
    error_from, inside, inside_feedback, target, layer_options} (docs/algorithms.md)."""
    known = {n.name for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    modules, seen = [], set()
    for i, entry in enumerate(table):
        where = f"config [[modules]] entry {i}"
        if not isinstance(entry, dict):
            raise EdgeDFAError(f"{where}: expected a table, got {type(entry).__name__}")
        unknown = sorted(set(entry) - MODULE_KEYS)
        if unknown:
            raise EdgeDFAError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(MODULE_KEYS)}")
        check_table(ModuleSettings, {k: v for k, v in entry.items() if k != "nodes"}, where)
        nodes = entry.get("nodes")
        if not nodes or not isinstance(nodes, list):
            raise EdgeDFAError(f"{where}: 'nodes' must be a non-empty list of layer names")
        bad = [n for n in nodes if n not in known]
        if bad:
            raise EdgeDFAError(f"{where}: unknown layer(s) {bad}; layers are {sorted(known)}")
        nodes = sorted(nodes, key=order.__getitem__)
        seen.update(nodes)
        source = entry.get("source", "dfa")
        if source not in ("output", "bp", "dfa"):
            raise EdgeDFAError(f"{where}: source {source!r}; expected output, bp or dfa")
        inside = entry.get("inside", "bp")
        if inside not in ("bp", "dfa"):
            raise EdgeDFAError(f"{where}: inside {inside!r}; expected bp or dfa")
        fb = _feedback_spec(entry.get("feedback"), where) if source == "dfa" else None
        opts = entry.get("layer_options", {})
        if not isinstance(opts, dict) or any(n not in nodes or not isinstance(v, dict) for n, v in opts.items()):
            raise EdgeDFAError(f"{where}: layer_options must map layers of this module to tables")
        for n, v in opts.items():
            bad = sorted(set(v) - LAYER_OPTION_KEYS)
            if bad:
                raise EdgeDFAError(f"{where}: layer_options.{n}: unknown option(s) {bad}; "
                                   f"known options are {sorted(LAYER_OPTION_KEYS)}")
            check_table(PlanLayerOptions, {k: x for k, x in v.items() if k != "frozen"}, f"{where}: layer_options.{n}")
        name = entry.get("name", f"m{i}")
        subs = _split_inside(graph, entry, nodes, name, where) if inside == "dfa" else [nodes]
        modules.extend(subs[:-1])
        modules.append(Module(name, subs[-1], source, fb, entry.get("target"), opts, entry.get("error_from")))
    missing = known - seen
    if missing:
        raise EdgeDFAError(f"config [[modules]]: layer(s) {sorted(missing)} belong to no module")
    last = graph.producers()[graph.output_name].name
    for m in modules:
        if last in m.nodes:
            m.source = "output"
    check_error_sources(graph, modules)
    return Plan(default_algo, modules)


def check_error_sources(graph: Graph, modules: list) -> None:
    """A DFA module's ``error_from`` tensor must exist and be complete before the module's
    feedback runs: every consumer of it lies above the module's output (graph order)."""
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    tensors = {o: n.name for n in graph.nodes for o in n.outputs if o}
    for m in modules:
        t = m.error_from
        if t is None:
            continue
        if m.source != "dfa":
            raise EdgeDFAError(f"module {m.name}: error_from {t!r} needs source = \"dfa\" (the module's "
                               f"error comes from {m.source!r}: {'the output' if m.source == 'output' else 'BP'})")
        if t not in tensors:
            raise EdgeDFAError(f"module {m.name}: error_from {t!r} is no tensor of the graph; "
                               f"tensors are {sorted(tensors)}")
        if order[tensors[t]] <= order[m.output_node]:
            raise EdgeDFAError(f"module {m.name}: error_from {t!r} is produced by {tensors[t]}, which is not "
                               f"above the module's output {m.output_node}: its error would not exist yet")

"""Control flow with a static trip count, unrolled: ``Loop`` and ``Scan`` bodies inlined.

Backends lower straight-line graphs; a Loop or Scan whose trip count is known once the input
shapes are bound (a constant ``M``, or the length of the scanned axis) is replaced by that many
copies of its body. ``If`` with a constant condition needs no pass of its own: onnxscript's
constant folder (``fold-constants``) inlines the taken branch, and this pass runs it after
unrolling, since a condition computed from the iteration number becomes constant only then.
"""

from __future__ import annotations

import copy
from dataclasses import field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from optc.onnx_utils import attr, infer_shapes
from optc.onnx_utils import constants as _constants
from optc.pipeline import Pass, PassResult, register_pass

from .cleanup import _replace_graph

_DEFAULT = ("", "ai.onnx")


class _Keep(Exception):
    """A Loop/Scan left as it is, and why (the pass records it; the backend check refuses it)."""


@register_pass("unroll-loops")
class UnrollLoops(Pass):
    """Unroll Loop and Scan nodes whose trip count is static (at most ``max-iterations``).

    Assumes: input shapes are bound and constants folded (the trip count ``M`` of a Loop is an
    initializer or a Constant; a Scan's length is the static size of its scanned axis).
    Guarantees: outputs unchanged. Iteration ``k`` is the body with its inputs bound to the
    values of iteration ``k - 1`` (Loop: iteration number ``k`` as an int64 constant, condition
    ``true``; Scan: slice ``k`` of each scanned input, ``Gather`` on its axis, from the end for
    reverse directions); every name the body defines is made unique (``<node>_<k>_<name>``),
    body initializers become the graph's (once per node). Loop-carried values / Scan states
    thread from copy to copy; scan outputs are each copy's value, ``Unsqueeze``d on the output
    axis and ``Concat``enated in iteration order (reversed for reverse directions).
    Left as they are, with the reason in ``details["kept"]`` (a backend that cannot lower
    them refuses them by name after the passes): a trip count computed at run time, a loop
    whose body computes its own termination condition, more than ``max-iterations``
    iterations, zero iterations with scan outputs, opset-8 (batched) Scan; an unnamed one is
    named ``<op>_<k>`` so the refusal can name it. Nested loops are
    unrolled outside in, in up to ``rounds`` rounds; after a round that unrolled something,
    onnxscript's constant folder runs (which also inlines Ifs whose condition became constant).
    """

    max_iterations: int = field(default=256, metadata={"doc": "unroll bound: longer loops are kept"})
    rounds: int = field(default=4, metadata={"doc": "nesting depth unrolled (one level per round)"})

    eliminates = frozenset({"Loop", "Scan"})

    def call(self, model: ir.Model) -> PassResult:
        loops = [n for n in model.graph if n.op_type in ("Loop", "Scan") and n.domain in _DEFAULT]
        if not loops:
            return PassResult(model, False, {"unrolled": 0})
        taken = {n.name for n in model.graph}
        named = 0
        for k, node in enumerate(loops):  # a node kept is refused by name: give it one
            if not node.name:
                candidates = (f"{node.op_type}_{k}" + (f"_{j}" if j else "") for j in range(len(taken) + 1))
                node.name = next(c for c in candidates if c not in taken)
                taken.add(node.name)
                named += 1
        proto, unrolled, kept = unroll_model(ir.serde.serialize_model(model), self.max_iterations, self.rounds)
        details = {"unrolled": unrolled}
        if kept:
            details["kept"] = [{"name": name, "op": op, "reason": why} for name, (op, why) in kept.items()]
        if not unrolled:
            return PassResult(model, bool(named), details)
        _replace_graph(model, ir.serde.deserialize_model(proto))
        return PassResult(model, True, details)


def unroll_model(proto: onnx.ModelProto, limit: int = 256, rounds: int = 4) -> tuple[onnx.ModelProto, int, dict]:
    """The unrolling of :class:`UnrollLoops` on a ModelProto: (model, nodes unrolled, kept
    ``{name: (op, reason)}``). Also used where a Loop or Scan appears only after the passes:
    a function op whose body has one (LinearAttention's Scan), expanded just before the
    backend's import (``optc.backends.tvm.lower.import_onnx``)."""
    unrolled, kept = 0, {}
    for _ in range(max(1, rounds)):
        count, kept = _unroll_round(proto, limit)
        if not count:
            break
        unrolled += count
        proto = _fold(proto)
    return proto, unrolled, kept


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


def _has_loops(graph: onnx.GraphProto) -> bool:
    return any(n.op_type in ("Loop", "Scan") and n.domain in _DEFAULT for n in graph.node)


def _fold(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxscript's constant folder and dead-node removal (constant Ifs are inlined)."""
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants

    model = ir.serde.deserialize_model(proto)
    fold_constants(model, onnx_shape_inference=True)
    common.RemoveUnusedNodesPass()(model)
    return ir.serde.serialize_model(model)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT), 1)


class _Builder:
    """Names and constants for the nodes a round adds to the main graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.opset = _opset(model)
        self.taken: set[str] = set()
        for g in _graphs(model.graph):
            self.taken |= {v.name for v in [*g.input, *g.output, *g.value_info]}
            self.taken |= {t.name for t in g.initializer}
            for n in g.node:
                self.taken |= {*n.input, *n.output, n.name}
        self.consts: dict[tuple, str] = {}

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, value: np.ndarray, base: str) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self.consts:
            name = self.unique(base)
            self.model.graph.initializer.append(numpy_helper.from_array(value, name))
            self.consts[key] = name
        return self.consts[key]

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> tuple[onnx.NodeProto, str]:
        out = self.unique(base)
        return helper.make_node(op, inputs, [out], name=self.unique(f"{base}_node"), **attrs), out

    def unsqueeze(self, x: str, axis: int, base: str) -> tuple[onnx.NodeProto, str]:
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.const(np.array([axis], np.int64), "unroll_axes")], base)
        return self.node("Unsqueeze", [x], base, axes=[axis])


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Static shapes of the main graph's values (None for dynamic dims) after shape inference."""
    inferred = infer_shapes(model, data_prop=True)  # a best effort: an unknown shape keeps the node
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _unroll_round(model: onnx.ModelProto, limit: int) -> tuple[int, dict]:
    """Unroll the main graph's Loop/Scan nodes that qualify; returns (count, kept by name)."""
    graph = model.graph
    if not _has_loops(graph):
        return 0, {}
    b = _Builder(model)
    consts, shapes = _constants(graph), _shapes(model)
    new_nodes: list[onnx.NodeProto] = []
    count, kept = 0, {}
    for i, node in enumerate(graph.node):
        if node.op_type not in ("Loop", "Scan") or node.domain not in _DEFAULT:
            new_nodes.append(node)
            continue
        name = node.name or f"{node.op_type}_{i}"
        try:
            unroll = _unroll_loop if node.op_type == "Loop" else _unroll_scan
            nodes, inits = unroll(node, name, b, consts, shapes, limit)
        except _Keep as why:
            kept[name] = (node.op_type, str(why))
            new_nodes.append(node)
            continue
        new_nodes.extend(nodes)
        graph.initializer.extend(inits)
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return count, kept


def _defined(graph: onnx.GraphProto, top: bool = True) -> set[str]:
    """Every name a body defines: node outputs (nested graphs too), nested graph inputs and
    initializers (the body's own inputs are bound by the caller, its initializers hoisted)."""
    names = set() if top else {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        names |= {o for o in n.output if o}
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs):
                names |= _defined(g, top=False)
    return names


def _rename_graph(graph: onnx.GraphProto, names: dict[str, str], b: _Builder, prefix: str) -> None:
    """Rename, in place, value names by ``names`` and node names by ``prefix`` (nested graphs)."""
    for v in [*graph.input, *graph.output, *graph.value_info]:
        v.name = names.get(v.name, v.name)
    for t in graph.initializer:
        t.name = names.get(t.name, t.name)
    for n in graph.node:
        _rename_node(n, names, b, prefix)


def _rename_node(n: onnx.NodeProto, names: dict[str, str], b: _Builder, prefix: str) -> None:
    n.input[:] = [names.get(x, x) for x in n.input]
    n.output[:] = [names.get(x, x) for x in n.output]
    n.name = b.unique(f"{prefix}_{n.name or n.op_type}")
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            _rename_graph(a.g, names, b, prefix)
        for g in a.graphs:
            _rename_graph(g, names, b, prefix)


class _Body:
    """A Loop/Scan body, copied once per iteration with fresh names."""

    def __init__(self, body: onnx.GraphProto, name: str, b: _Builder):
        self.body, self.name, self.b = body, name, b
        self.defined = _defined(body) - {t.name for t in body.initializer}
        # initializers: hoisted to the main graph once for all iterations
        self.inits = {t.name: b.unique(f"{name}_{t.name}") for t in body.initializer}
        self.init_protos = []
        for t in body.initializer:
            t2 = copy.deepcopy(t)
            t2.name = self.inits[t.name]
            self.init_protos.append(t2)

    def copy(self, k: int, bound: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
        """Iteration ``k`` with body input j bound to the name ``bound[j]``; returns the nodes
        and the names of the body outputs."""
        names = dict(self.inits)
        names.update({v.name: x for v, x in zip(self.body.input, bound)})
        for d in sorted(self.defined):
            names[d] = self.b.unique(f"{self.name}_{k}_{d}")
        nodes = []
        for n in self.body.node:
            n2 = copy.deepcopy(n)
            _rename_node(n2, names, self.b, f"{self.name}_{k}")
            nodes.append(n2)
        return nodes, [names.get(v.name, v.name) for v in self.body.output]


def _true_condition(body: onnx.GraphProto, consts: dict) -> bool:
    """Whether the body's condition output is always true given a true condition input:
    the input passed through (directly or by Identity) or a constant true."""
    out, cond_in = body.output[0].name, body.input[1].name
    producers = {o: n for n in body.node for o in n.output}
    while out in producers and producers[out].op_type == "Identity":
        out = producers[out].input[0]
    if out == cond_in:
        return True
    return out in consts and consts[out].size == 1 and bool(consts[out].reshape(-1)[0])


def _unroll_loop(node, name, b: _Builder, consts, shapes, limit):
    body = attr(node, "body")
    m = node.input[0] if len(node.input) > 0 else ""
    cond = node.input[1] if len(node.input) > 1 else ""
    carried = list(node.input[2:])
    if not m:
        raise _Keep("no trip count: the loop runs until its condition is false (a dynamic trip count)")
    if m not in consts:
        raise _Keep("the trip count is computed at run time (not a constant after shape binding and constant "
                    "folding): a dynamic trip count")
    n = int(consts[m].reshape(-1)[0])
    if cond:
        if cond not in consts:
            raise _Keep("the loop condition is computed at run time (a dynamic trip count)")
        if not bool(consts[cond].reshape(-1)[0]):
            n = 0
    # without a condition input the body's condition output is ignored (ONNX Loop)
    if n > 0 and cond and not _true_condition(body, _constants(body)):
        raise _Keep("the body computes its own termination condition (a dynamic trip count)")
    if n > limit:
        raise _Keep(f"{n} iterations exceed the unroll bound ({limit}; unroll-loops<max-iterations=N> raises it)")
    n_scan = len(body.output) - 1 - len(carried)
    if n == 0 and n_scan and any(node.output[len(carried):]):
        raise _Keep("zero iterations with scan outputs (their shape is not known)")
    nodes: list[onnx.NodeProto] = []
    inits = []
    parts: list[list[str]] = [[] for _ in range(n_scan)]
    if n:
        cb = _Body(body, name, b)
        inits = cb.init_protos
        true = b.const(np.array(True), "unroll_true")
        for k in range(n):
            it = b.const(np.array(k, np.int64), f"{name}_iter{k}")
            copied, outs = cb.copy(k, [it, true, *carried])
            nodes += copied
            carried = outs[1:1 + len(carried)]
            for j in range(n_scan):
                parts[j].append(outs[1 + len(carried) + j])
    for final, out in zip(carried, node.output[:len(carried)]):
        if out:
            nodes.append(helper.make_node("Identity", [final], [out], name=b.unique(f"{name}_{out}")))
    for j, out in enumerate(node.output[len(carried):]):
        if out:
            nodes += _stack(parts[j], 0, out, name, b)
    return nodes, inits


def _stack(parts: list[str], axis: int, out: str, name: str, b: _Builder) -> list[onnx.NodeProto]:
    """``out`` = the ``parts`` stacked on a new ``axis`` (Unsqueeze each, Concat)."""
    nodes, items = [], []
    for p in parts:
        u, x = b.unsqueeze(p, axis, f"{name}_{p}_stacked")
        nodes.append(u)
        items.append(x)
    nodes.append(helper.make_node("Concat", items, [out], name=b.unique(f"{name}_{out}"), axis=axis))
    return nodes


def _unroll_scan(node, name, b: _Builder, consts, shapes, limit):
    if b.opset < 9:
        raise _Keep("opset-8 Scan (batched, with sequence_lens) is not unrolled")
    body = attr(node, "body")
    n_in = int(attr(node, "num_scan_inputs"))
    states, scanned = list(node.input[:len(node.input) - n_in]), list(node.input[len(node.input) - n_in:])
    in_axes = list(attr(node, "scan_input_axes", [0] * n_in))
    in_dirs = list(attr(node, "scan_input_directions", [0] * n_in))
    n_out = len(body.output) - len(states)
    out_axes = list(attr(node, "scan_output_axes", [0] * n_out))
    out_dirs = list(attr(node, "scan_output_directions", [0] * n_out))
    lengths = set()
    for x, ax in zip(scanned, in_axes):
        shape = shapes.get(x)
        if shape is None:
            raise _Keep(f"the shape of scanned input {x!r} is not known: a dynamic trip count")
        ax = ax + len(shape) if ax < 0 else ax
        if shape[ax] is None:
            raise _Keep(f"the scanned axis of {x!r} has a dynamic length: a dynamic trip count")
        lengths.add(shape[ax])
    if len(lengths) != 1:
        raise _Keep(f"scanned inputs of different lengths {sorted(lengths)}")
    n = lengths.pop()
    if n > limit:
        raise _Keep(f"{n} iterations exceed the unroll bound ({limit}; unroll-loops<max-iterations=N> raises it)")
    if n == 0 and n_out:
        raise _Keep("zero iterations with scan outputs (their shape is not known)")
    ranks = []
    for j, v in enumerate(body.output[len(states):]):
        t = v.type.tensor_type
        ranks.append(len(t.shape.dim) if t.HasField("shape") else None)
        if out_axes[j] < 0 and ranks[-1] is None:
            raise _Keep(f"scan output {v.name!r} has a negative axis and an unknown rank")
    nodes: list[onnx.NodeProto] = []
    parts: list[list[str]] = [[] for _ in range(n_out)]
    cb = _Body(body, name, b)
    for k in range(n):
        slices = []
        for x, ax, rev in zip(scanned, in_axes, in_dirs):
            idx = b.const(np.array(n - 1 - k if rev else k, np.int64), f"{name}_index{k}")
            g, s = b.node("Gather", [x, idx], f"{name}_{k}_{x}_slice", axis=ax)
            nodes.append(g)
            slices.append(s)
        copied, outs = cb.copy(k, [*states, *slices])
        nodes += copied
        states = outs[:len(states)]
        for j in range(n_out):
            parts[j].append(outs[len(states) + j])
    for final, out in zip(states, node.output[:len(states)]):
        if out:
            nodes.append(helper.make_node("Identity", [final], [out], name=b.unique(f"{name}_{out}")))
    for j, out in enumerate(node.output[len(states):]):
        if out:
            axis = out_axes[j] + ranks[j] + 1 if out_axes[j] < 0 else out_axes[j]
            nodes += _stack(parts[j][::-1] if out_dirs[j] else parts[j], axis, out, name, b)
    return nodes, cb.init_protos

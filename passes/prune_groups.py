"""Channel dependency analysis for structured pruning: which tensors' channel axes are tied.

Removing output channel ``c`` of a Conv/Gemm/MatMul (a *producer*) changes every tensor that
carries that channel downstream, up to the layers that *consume* it (whose weights lose the
matching input slice). Channels of several producers can be tied: a residual ``Add`` makes
its two operands' channel ``c`` one channel, so they must be removed together or not at all.

:func:`analyze` walks the graph once, in topological order, and returns a
:class:`ChannelAnalysis`:

* **groups** (:class:`ChannelGroup`): sets of producers whose output channels are tied
  (union-find over ``Add``/``Mul``/... of two tracked tensors). A group has one channel count
  and is pruned with one set of kept indices. A group is *frozen* (never pruned) when any
  tensor carrying it reaches something the rules below do not understand; the reasons are
  recorded, so a model is never rewritten wrongly, only pruned less.
* **layouts**: the channel axis of every tracked tensor is a concatenation of groups
  (``Concat`` along the channel axis concatenates layouts; channel ``i`` of the tensor is
  channel ``i - offset`` of the group at that offset).
* **edits** (:class:`Edit`): every constant that must be sliced when a group loses channels
  (producer weights and biases, BatchNorm parameters, per-channel constants of elementwise
  ops, consumer weights, ``group`` attributes of depthwise convolutions, the shape constant of
  a flattening ``Reshape``), recorded with the layout it follows.
* **steps** (:class:`Step`): what each node does to tracked tensors, for analyses that follow
  values through the graph (``prune-zero`` propagates constant channels along them).

Rules (a node that matches none freezes the groups of every tracked tensor it reads):

=============================================  =================================================
Conv, group 1 / Gemm (transA=0) / MatMul with   consumer: slice weight input axis (Conv W axis 1,
a constant weight                               Gemm B axis K, MatMul B axis 0); producer: a new
                                                group of its output channels (W axis 0 / B axis N,
                                                bias sliced alike)
Flatten (axis 1) / Reshape to ``[N, C*H*W]``    the C*H*W axis holds channel blocks of H*W rows;
feeding Gemm/MatMul                             the consumer's weight loses whole row blocks
depthwise Conv (group = C_in = C_out)           ties output channels to input channels (weight
                                                axis 0 and bias sliced, ``group`` set to the new
                                                count)
grouped Conv (1 < group < C_in)                 input and output groups must keep the same count
                                                per convolution group (``blocks`` constraint);
                                                weight sliced group by group
BatchNormalization, unary elementwise ops,      channels pass through (per-channel parameters
pooling, Squeeze/Unsqueeze of trailing axes     sliced)
Add/Sub/Mul/Div/Max/Min/Sum/Mean/Pow/PRelu      two tracked operands: their groups are tied;
                                                a constant operand must broadcast on the channel
                                                axis (size 1) or have the full channel count
                                                (then it is sliced)
Concat                                          along the channel axis: layouts concatenate;
                                                along another axis: the inputs are tied
graph outputs, anything else                    frozen (the graph's interface never changes)
=============================================  =================================================

Shapes come from ONNX shape inference on a serialized copy; rules that need a rank or static
spatial dims (Flatten, Reshape, broadcasting) freeze when it is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Union

import numpy as np
import onnx_ir as ir

from optc.onnx_utils import attr, value_shapes

__all__ = [
    "Chan",
    "Flat",
    "ChannelGroup",
    "Producer",
    "Edit",
    "Step",
    "ChannelAnalysis",
    "analyze",
    "const_array",
    "UNARY_OPS",
    "POOL_OPS",
    "ELEMENTWISE_OPS",
]

#: Elementwise unary ops: channel c of the output depends on channel c of the input only.
UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Erf",
    "Gelu", "Mish", "Identity", "Dropout", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu",
    "Cast",
})
#: Pooling over spatial axes (the channel axis 1 is kept).
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                      "GlobalLpPool"})
#: Broadcasting elementwise ops with any number of inputs.
ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"})


# ---------------------------------------------------------------------------------------------
# Tracked tensor states


@dataclass(frozen=True)
class Chan:
    """A tensor whose axis ``axis`` (non-negative, rank ``rank``) is the concatenation of the
    channels of the groups in ``layout`` (ids; resolve with :meth:`ChannelAnalysis.find`)."""

    layout: tuple[int, ...]
    axis: int
    rank: int


@dataclass(frozen=True)
class Flat:
    """A ``[N, C*spatial]`` tensor made by flattening a ``Chan`` tensor with channels on axis 1:
    channel ``c`` owns rows ``c*spatial .. (c+1)*spatial - 1`` of axis 1."""

    layout: tuple[int, ...]
    spatial: int


State = Union[Chan, Flat]


@dataclass
class Producer:
    """A node whose output channels are new: Conv (W axis 0), Gemm (B axis N) or MatMul (B axis 1)."""

    node: ir.Node
    kind: str  # "conv" | "gemm" | "matmul"
    weight: int  # input index of the weight
    axis: int  # the weight's output-channel axis
    bias: int | None  # input index of the bias (Conv B, Gemm C) if the node may have one
    order: int  # topological position of the node


@dataclass
class ChannelGroup:
    """Producers whose output channels are tied; pruned together with one set of kept indices."""

    id: int
    channels: int
    name: str
    producers: list[Producer] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    blocks: int = 1  # kept channels must be spread evenly over this many contiguous blocks

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.channels > 1

    @property
    def names(self) -> list[str]:
        """Names a user may refer to this group by: producer nodes and their weight tensors."""
        out = []
        for p in self.producers:
            out.append(p.node.name or "")
            w = p.node.inputs[p.weight]
            if w is not None and w.name:
                out.append(w.name)
        return [n for n in dict.fromkeys(out) if n]


@dataclass
class Edit:
    """Slice a constant (or fix an attribute) of ``node`` when the groups in ``layout`` lose
    channels.

    kinds: ``slice`` (input ``index`` along ``axis``; ``spatial`` > 1 expands each channel to
    a block of rows; ``optional``: skip when the input is absent or broadcasts with size 1),
    ``grouped`` (a grouped Conv's weight axis 1, per convolution group), ``group-attr`` (set
    ``group`` to the kept count), ``reshape`` (the ``[N, C*spatial]`` shape constant).
    """

    kind: str
    node: ir.Node
    layout: tuple[int, ...]
    index: int = 0
    axis: int = 0
    spatial: int = 1
    optional: bool = False
    groups: int = 1


@dataclass
class Step:
    """What ``node`` does to tracked tensors: ``role`` (producer, depthwise, bn, unary, pool,
    eltwise, concat, reshape, consumer) with the input states and output state."""

    node: ir.Node
    role: str
    inputs: tuple[State | None, ...]
    output: State | None
    producer: Producer | None = None


# ---------------------------------------------------------------------------------------------
# Constants and shapes


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of an initializer or Constant-node output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy())
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        value = node.attributes.get("value")
        if value is not None and value.type == ir.AttributeType.TENSOR:
            return np.asarray(value.as_tensor().numpy())
    if node.op_type == "Identity":  # exporters share equal initializers through Identity nodes
        return const_array(node.inputs[0])
    return None


# ---------------------------------------------------------------------------------------------
# The analysis


class ChannelAnalysis:
    """Groups, layouts, edits and steps of one model (see the module docstring).

    ``apply(kept)`` rewrites the model in place: ``kept`` maps a group id (a root, see
    :meth:`roots`) to the sorted channel indices it keeps; groups not in ``kept`` keep all.
    """

    def __init__(self, model: ir.Model):
        self.model = model
        self.groups: list[ChannelGroup] = []
        self._parent: list[int] = []
        self.edits: list[Edit] = []
        self.steps: list[Step] = []
        self.state: dict[ir.Value, State] = {}

    # union-find ---------------------------------------------------------------------------
    def find(self, gid: int) -> int:
        while self._parent[gid] != gid:
            self._parent[gid] = self._parent[self._parent[gid]]
            gid = self._parent[gid]
        return gid

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[self.find(gid)]

    def roots(self) -> list[ChannelGroup]:
        """One :class:`ChannelGroup` per set of tied producers, in topological order."""
        return [g for g in self.groups if self.find(g.id) == g.id]

    def layout_channels(self, layout: Iterable[int]) -> int:
        return sum(self.group(g).channels for g in layout)

    def freeze(self, layout: Iterable[int], reason: str) -> None:
        for g in layout:
            grp = self.group(g)
            if reason not in grp.frozen:
                grp.frozen.append(reason)

    def _union(self, a: int, b: int) -> str | None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.channels != gb.channels:
            return f"ties {ga.channels} channels to {gb.channels}"
        blocks = math.lcm(ga.blocks, gb.blocks)
        keep, gone = (ga, gb) if ra < rb else (gb, ga)
        self._parent[gone.id] = keep.id
        keep.producers = sorted(keep.producers + gone.producers, key=lambda p: p.order)
        keep.frozen += [r for r in gone.frozen if r not in keep.frozen]
        keep.blocks = blocks
        if keep.channels % blocks:
            keep.frozen.append(f"grouped convolutions with incompatible group counts ({ga.blocks}, {gb.blocks})")
        return None

    def tie(self, la: tuple[int, ...], lb: tuple[int, ...]) -> str | None:
        """Tie two layouts position by position; a reason if their structures differ."""
        la_r = tuple(self.find(g) for g in la)
        lb_r = tuple(self.find(g) for g in lb)
        if la_r == lb_r:
            return None
        if len(la_r) != len(lb_r) or any(self.groups[a].channels != self.groups[b].channels
                                          for a, b in zip(la_r, lb_r)):
            return "ties tensors whose channels are concatenated differently"
        for a, b in zip(la_r, lb_r):
            reason = self._union(a, b)
            if reason:
                return reason
        return None

    # rewriting ------------------------------------------------------------------------------
    def indices(self, layout: Iterable[int], kept: dict[int, np.ndarray]) -> tuple[np.ndarray, int]:
        """Kept positions along a tensor with ``layout`` and its full channel count."""
        parts, off = [], 0
        for g in layout:
            r = self.find(g)
            c = self.groups[r].channels
            k = kept.get(r)
            parts.append((np.arange(c) if k is None else np.asarray(k, dtype=np.int64)) + off)
            off += c
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), off

    def apply(self, kept: dict[int, np.ndarray]) -> int:
        """Slice every recorded constant for ``kept``; returns the number of tensors changed.

        Assumes ``kept`` respects each group's ``blocks`` constraint and keeps at least one
        channel per group. Shapes of intermediate values are re-inferred afterwards.
        """
        kept = {self.find(g): np.asarray(sorted(set(int(i) for i in k)), np.int64) for g, k in kept.items()}
        writer = _ConstWriter(self.model.graph)
        changed = 0
        for e in self.edits:
            idx, full = self.indices(e.layout, kept)
            if len(idx) == full:
                continue
            changed += _apply_edit(e, idx, full, writer)
        if changed:
            writer.drop_unused()
            refresh_shapes(self.model)
        return changed


class _ConstWriter:
    """Replace a node's constant input by a new array: the initializer itself when this node
    is its only user (name kept), else a fresh initializer for this node."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.replaced: list[ir.Value] = []
        self._names = set(graph.initializers)
        for node in graph:
            self._names.update(v.name for v in node.outputs if v.name)
        self._names.update(v.name for v in graph.inputs if v.name)

    def read(self, node: ir.Node, index: int) -> np.ndarray | None:
        if index >= len(node.inputs):
            return None
        return const_array(node.inputs[index])

    def write(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        old = node.inputs[index] if index < len(node.inputs) else None
        array = np.ascontiguousarray(array)
        if (old is not None and old.is_initializer() and not old.is_graph_input()
                and len(old.uses()) == 1):
            old.const_value = ir.tensor(array, name=old.name)
            old.shape = ir.Shape(array.shape)
            return
        base = (old.name if old is not None and old.name else f"{node.name or node.op_type}_in{index}")
        name, i = f"{base}_pruned", 1
        while name in self._names:
            i += 1
            name = f"{base}_pruned{i}"
        self._names.add(name)
        new = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                       type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        self.graph.register_initializer(new)
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, new)
        if old is not None:
            self.replaced.append(old)

    def drop_unused(self) -> None:
        todo = list(self.replaced)
        while todo:
            v = todo.pop()
            if v is None or v.uses() or v.is_graph_output() or v.is_graph_input():
                continue
            node = v.producer()
            if v.is_initializer():
                self.graph.initializers.pop(v.name, None)
            elif node is not None and node.op_type in ("Constant", "Identity") and node.graph is self.graph:
                inputs = list(node.inputs)  # removal detaches them
                self.graph.remove(node, safe=True)
                todo += inputs


def _apply_edit(e: Edit, idx: np.ndarray, full: int, w: _ConstWriter) -> int:
    node = e.node
    if e.kind == "group-attr":
        node.attributes["group"] = ir.AttrInt64("group", int(len(idx)))
        return 1
    arr = w.read(node, e.index)
    if arr is None:
        if e.optional:
            return 0
        raise RuntimeError(f"prune: {node.name}: input {e.index} is not a constant")  # analysis bug
    if e.kind == "slice":
        axis = e.axis % arr.ndim if arr.ndim else 0
        want = full * e.spatial
        if arr.ndim == 0 or arr.shape[axis] != want:
            if e.optional and (arr.ndim == 0 or arr.shape[axis] == 1):
                return 0
            raise RuntimeError(f"prune: {node.name}: input {e.index} has {arr.shape} on axis {axis}, "
                               f"expected {want}")
        rows = idx if e.spatial == 1 else (idx[:, None] * e.spatial + np.arange(e.spatial)).reshape(-1)
        w.write(node, e.index, np.take(arr, rows, axis=axis))
        return 1
    if e.kind == "grouped":
        g = e.groups
        cin_g = full // g
        rows_g = arr.shape[0] // g
        parts = []
        for j in range(g):
            local = idx[(idx >= j * cin_g) & (idx < (j + 1) * cin_g)] - j * cin_g
            parts.append(arr[j * rows_g:(j + 1) * rows_g][:, local])
        if len({p.shape[1] for p in parts}) != 1:
            raise RuntimeError(f"prune: {node.name}: uneven channels per convolution group")
        w.write(node, e.index, np.concatenate(parts, axis=0))
        return 1
    if e.kind == "reshape":
        shape = arr.astype(np.int64).copy()
        if shape[1] != -1:
            shape[1] = len(idx) * e.spatial
        w.write(node, e.index, shape)
        return 1
    raise ValueError(e.kind)


def refresh_shapes(model: ir.Model) -> None:
    """Forget the shapes of intermediate values and infer them again (after a rewrite)."""
    import onnx_ir.passes.common as common

    for node in model.graph:
        for v in node.outputs:
            if not v.is_graph_output():
                v.shape = None
    try:
        common.ShapeInferencePass()(model)
    except Exception:  # shapes are optional in ONNX; the checker still validates the graph
        pass


# ---------------------------------------------------------------------------------------------
# The rules


class _Analyzer:
    def __init__(self, model: ir.Model):
        self.a = ChannelAnalysis(model)
        # value name -> dims (None where unknown); what the model declares if inference fails
        self.shapes = value_shapes(ir.serde.serialize_model(model), data_prop=True)
        self.order = 0

    # helpers
    def rank(self, v: ir.Value | None) -> int | None:
        if v is None:
            return None
        dims = self.shapes.get(v.name)
        if dims is None and v.shape is not None:
            return len(v.shape)
        return None if dims is None else len(dims)

    def dims(self, v: ir.Value) -> tuple[int | None, ...] | None:
        return self.shapes.get(v.name)

    def new_group(self, node: ir.Node, out: ir.Value, channels: int, producer: Producer,
                  axis: int, rank: int, blocks: int = 1) -> int:
        a = self.a
        gid = len(a.groups)
        grp = ChannelGroup(gid, int(channels), node.name or f"{node.op_type}_{producer.order}", [producer],
                           blocks=blocks)
        if channels % blocks:
            grp.frozen.append("channel count not divisible by the convolution groups")
        a.groups.append(grp)
        a._parent.append(gid)
        a.state[out] = Chan((gid,), axis, rank)
        a.edits.append(Edit("slice", node, (gid,), producer.weight, producer.axis))
        if producer.bias is not None:
            a.edits.append(Edit("slice", node, (gid,), producer.bias, -1 if producer.kind == "gemm" else 0,
                                optional=True))
        return gid

    def tracked(self, node: ir.Node) -> list[tuple[int, State]]:
        return [(i, self.a.state[v]) for i, v in enumerate(node.inputs) if v is not None and v in self.a.state]

    def run(self) -> ChannelAnalysis:
        a = self.a
        graph = a.model.graph
        seen: set[int] = set()
        for node in graph:
            seen.add(id(node))
            self.order += 1
            tracked = self.tracked(node)
            rule = _RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rule is None:
                if tracked:
                    self.freeze_inputs(node, tracked, f"unsupported op {node.op_type}")
                continue
            if node.op_type not in _MULTI_INPUT and any(i != 0 for i, _ in tracked):
                self.freeze_inputs(node, tracked, "a channel tensor feeds a parameter input")
                continue
            reason = rule(self, node)
            if reason:
                self.freeze_inputs(node, tracked, reason)
        for v, st in a.state.items():
            if v.is_graph_output():
                a.freeze(st.layout, f"graph output {v.name!r}")
            for user, _ in v.uses():
                if id(user) not in seen:
                    a.freeze(st.layout, f"used inside a subgraph ({user.op_type} {user.name})")
        return a

    def freeze_inputs(self, node: ir.Node, tracked, reason: str) -> None:
        for _, st in tracked:
            self.a.freeze(st.layout, f"{node.op_type} {node.name!r}: {reason}")
        for out in node.outputs:
            self.a.state.pop(out, None)

    def extra_outputs_used(self, node: ir.Node) -> bool:
        return any(o.uses() or o.is_graph_output() for o in node.outputs[1:])

    # rules ----------------------------------------------------------------------------------
    def conv(self, node: ir.Node) -> str | None:
        x, wv = node.inputs[0], node.inputs[1]
        w = const_array(wv)
        if w is None:
            return "weight is not a constant"
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        if has_bias and const_array(node.inputs[2]) is None:
            return "bias is not a constant"
        g = int(attr(node, "group", 1))
        cout, cin_g = int(w.shape[0]), int(w.shape[1])
        st = self.a.state.get(x)
        out = node.outputs[0]
        rank = w.ndim
        if st is not None and not (isinstance(st, Chan) and st.axis == 1):
            return "input channels are not on axis 1"
        producer = Producer(node, "conv", 1, 0, 2, self.order)
        if g == 1:
            if st is not None:
                self.a.edits.append(Edit("slice", node, st.layout, 1, 1))
            self.new_group(node, out, cout, producer, 1, rank)
            self.a.steps.append(Step(node, "producer", (st,), self.a.state[out], producer))
            return None
        if cin_g == 1 and cout == g:  # depthwise: output channel c = filter c over input channel c
            if st is None:
                return None
            self.a.edits += [Edit("slice", node, st.layout, 1, 0), Edit("slice", node, st.layout, 2, 0, optional=True),
                             Edit("group-attr", node, st.layout)]
            self.a.state[out] = Chan(st.layout, 1, rank)
            self.a.steps.append(Step(node, "depthwise", (st,), self.a.state[out]))
            return None
        if cin_g == 1:
            return f"depthwise convolution with channel multiplier {cout // g} is not supported"
        if cout % g:
            return "output channels not divisible by group"
        if st is not None:
            if len(st.layout) != 1:
                return "grouped convolution of a concatenation"
            grp = self.a.group(st.layout[0])
            blocks = math.lcm(grp.blocks, g)
            if grp.channels % blocks:
                return "grouped convolutions with incompatible group counts"
            grp.blocks = blocks
            self.a.edits.append(Edit("grouped", node, st.layout, 1, 1, groups=g))
        self.new_group(node, out, cout, producer, 1, rank, blocks=g)
        self.a.steps.append(Step(node, "producer", (st,), self.a.state[out], producer))
        return None

    def gemm(self, node: ir.Node) -> str | None:
        b = const_array(node.inputs[1])
        if b is None or b.ndim != 2:
            return "B is not a constant matrix"
        if int(attr(node, "transA", 0)):
            return "transA=1 is not supported"
        has_c = len(node.inputs) > 2 and node.inputs[2] is not None
        if has_c and const_array(node.inputs[2]) is None:
            return "C is not a constant"
        trans_b = int(attr(node, "transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        st = self.a.state.get(node.inputs[0])
        if isinstance(st, Chan):
            if st.axis != 1 or st.rank != 2:
                return "input channels are not on axis 1 of a matrix"
            self.a.edits.append(Edit("slice", node, st.layout, 1, k_axis))
        elif isinstance(st, Flat):
            self.a.edits.append(Edit("slice", node, st.layout, 1, k_axis, spatial=st.spatial))
        producer = Producer(node, "gemm", 1, n_axis, 2, self.order)
        self.new_group(node, node.outputs[0], b.shape[n_axis], producer, 1, 2)
        self.a.steps.append(Step(node, "producer", (st,), self.a.state[node.outputs[0]], producer))
        return None

    def matmul(self, node: ir.Node) -> str | None:
        b = const_array(node.inputs[1])
        if b is None or b.ndim != 2:
            return "second input is not a constant matrix"
        st = self.a.state.get(node.inputs[0])
        if isinstance(st, Chan):
            if st.axis != st.rank - 1:
                return "input channels are not on the last axis"
            self.a.edits.append(Edit("slice", node, st.layout, 1, 0))
        elif isinstance(st, Flat):
            self.a.edits.append(Edit("slice", node, st.layout, 1, 0, spatial=st.spatial))
        rank = self.rank(node.outputs[0]) or self.rank(node.inputs[0])
        if rank is None:
            return "unknown rank"
        producer = Producer(node, "matmul", 1, 1, None, self.order)
        self.new_group(node, node.outputs[0], b.shape[1], producer, rank - 1, rank)
        self.a.steps.append(Step(node, "producer", (st,), self.a.state[node.outputs[0]], producer))
        return None

    def _follow(self, node: ir.Node, kind: str, st, out) -> None:
        """Record that ``node`` carries the channel state ``st`` of its input through to its
        output as ``out`` (a ``kind`` step); None: no reason to stop."""
        self.a.state[node.outputs[0]] = out
        self.a.steps.append(Step(node, kind, (st,), out))
        return None

    def batchnorm(self, node: ir.Node) -> str | None:
        st = self.a.state.get(node.inputs[0])
        if st is None:
            return None
        if not isinstance(st, Chan) or st.axis != 1:
            return "channels are not on axis 1"
        if self.extra_outputs_used(node):
            return "training-mode outputs are used"
        if any(const_array(v) is None for v in node.inputs[1:5]):
            return "parameters are not constants"
        self.a.edits += [Edit("slice", node, st.layout, i, 0) for i in range(1, 5)]
        return self._follow(node, "bn", st, st)

    def unary(self, node: ir.Node) -> str | None:
        st = self.a.state.get(node.inputs[0])
        if st is None:
            return None
        if self.extra_outputs_used(node):
            return "a second output is used"
        return self._follow(node, "unary", st, st)

    def pool(self, node: ir.Node) -> str | None:
        st = self.a.state.get(node.inputs[0])
        if st is None:
            return None
        if not isinstance(st, Chan) or st.axis != 1 or st.rank < 3:
            return "channels are not on axis 1 of an image tensor"
        if self.extra_outputs_used(node):
            return "the indices output is used"
        return self._follow(node, "pool", st, st)

    def elementwise(self, node: ir.Node) -> str | None:
        tracked = self.tracked(node)
        if not tracked:
            return None
        out_rank = self.rank(node.outputs[0])
        states = list(dict.fromkeys(st for _, st in tracked))
        if any(isinstance(s, Flat) for s in states):
            return "elementwise op on a flattened tensor"
        first = states[0]
        if out_rank is None:
            return "unknown output rank"
        if any(s.rank != out_rank or s.axis != first.axis for s in states):
            return "operands broadcast over their channel axis"
        channels = self.a.layout_channels(first.layout)
        slices = []
        for i, v in enumerate(node.inputs):
            if v is None or v in self.a.state:
                continue
            c = const_array(v)
            if c is None:
                return "operand whose channels are not tracked"
            axis = first.axis - (out_rank - c.ndim)
            if node.op_type == "PRelu" and i == 1 and c.ndim == 1 and out_rank > 2 and c.shape[0] == channels:
                return "PRelu slope of shape [C] broadcasts over the last axis"
            if axis < 0 or c.shape[axis] == 1:
                continue
            if c.shape[axis] != channels:
                return "constant does not broadcast on the channel axis"
            slices.append(Edit("slice", node, first.layout, i, axis))
        for s in states[1:]:
            reason = self.a.tie(first.layout, s.layout)
            if reason:
                return reason
        # a tied layout's slices must follow the same groups for every operand
        for e in slices:
            e.layout = first.layout
        self.a.edits += slices
        self.a.state[node.outputs[0]] = first
        self.a.steps.append(Step(node, "eltwise", tuple(self.a.state.get(v) for v in node.inputs), first))
        return None

    def concat(self, node: ir.Node) -> str | None:
        tracked = self.tracked(node)
        if not tracked:
            return None
        if len(tracked) != len(node.inputs):
            return "an input's channels are not tracked"
        states = [st for _, st in tracked]
        if any(not isinstance(s, Chan) for s in states):
            return "concatenation of flattened tensors"
        first = states[0]
        if any(s.rank != first.rank or s.axis != first.axis for s in states):
            return "inputs disagree on the channel axis"
        axis = int(attr(node, "axis", 0)) % first.rank
        if axis == first.axis:
            out = Chan(tuple(g for s in states for g in s.layout), first.axis, first.rank)
        else:
            for s in states[1:]:
                reason = self.a.tie(first.layout, s.layout)
                if reason:
                    return reason
            out = first
        self.a.state[node.outputs[0]] = out
        self.a.steps.append(Step(node, "concat", tuple(states), out))
        return None

    def _flatten_state(self, node: ir.Node, st: State) -> State | str:
        if not isinstance(st, Chan) or st.axis != 1:
            return "channels are not on axis 1"
        dims = self.dims(node.inputs[0])
        if dims is None or any(d is None for d in dims[2:]):
            return "spatial dims are not static"
        spatial = int(np.prod(dims[2:], dtype=np.int64)) if len(dims) > 2 else 1
        if spatial == 1:
            return Chan(st.layout, 1, 2)
        return Flat(st.layout, spatial)

    def flatten(self, node: ir.Node) -> str | None:
        st = self.a.state.get(node.inputs[0])
        if st is None:
            return None
        if int(attr(node, "axis", 1)) != 1:
            return "Flatten axis is not 1"
        out = self._flatten_state(node, st)
        if isinstance(out, str):
            return out
        return self._follow(node, "reshape", st, out)

    def reshape(self, node: ir.Node) -> str | None:
        st = self.a.state.get(node.inputs[0])
        if st is None:
            return None
        shape = const_array(node.inputs[1])
        if shape is None or shape.ndim != 1 or len(shape) != 2:
            return "only a constant reshape to [N, C*H*W] is followed"
        if int(attr(node, "allowzero", 0)):
            return "allowzero=1"
        out = self._flatten_state(node, st)
        if isinstance(out, str):
            return out
        dims = self.dims(node.inputs[0])
        spatial = out.spatial if isinstance(out, Flat) else 1
        width = self.a.layout_channels(st.layout) * spatial
        s0, s1 = int(shape[0]), int(shape[1])
        batch_ok = s0 == 0 or (dims[0] is not None and s0 == dims[0]) or (s0 == -1 and s1 == width)
        if not batch_ok or s1 not in (-1, width):
            return f"reshape to {list(shape)} is not a flatten to [N, C*H*W]"
        if s1 != -1:
            self.a.edits.append(Edit("reshape", node, st.layout, 1, spatial=spatial))
        return self._follow(node, "reshape", st, out)

    def squeeze(self, node: ir.Node) -> str | None:
        st = self.a.state.get(node.inputs[0])
        if st is None:
            return None
        if not isinstance(st, Chan):
            return "flattened input"
        axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None:
            axes = attr(node, "axes", None)
        if axes is None:
            return "axes are not constant"
        out_rank = self.rank(node.outputs[0])
        if out_rank is None:
            return "unknown output rank"
        axes = [int(x) for x in np.asarray(axes).reshape(-1)]
        ref_rank = st.rank if node.op_type == "Squeeze" else out_rank
        if any(ax % ref_rank <= st.axis for ax in axes):
            return "squeezes/unsqueezes an axis before the channel axis"
        out = Chan(st.layout, st.axis, out_rank)
        return self._follow(node, "reshape", st, out)


_RULES = {
    "Conv": _Analyzer.conv,
    "Gemm": _Analyzer.gemm,
    "MatMul": _Analyzer.matmul,
    "BatchNormalization": _Analyzer.batchnorm,
    "Concat": _Analyzer.concat,
    "Flatten": _Analyzer.flatten,
    "Reshape": _Analyzer.reshape,
    "Squeeze": _Analyzer.squeeze,
    "Unsqueeze": _Analyzer.squeeze,
    **{op: _Analyzer.unary for op in UNARY_OPS},
    **{op: _Analyzer.pool for op in POOL_OPS},
    **{op: _Analyzer.elementwise for op in ELEMENTWISE_OPS},
}


_MULTI_INPUT = ELEMENTWISE_OPS | {"Concat"}


def analyze(model: ir.Model) -> ChannelAnalysis:
    """Channel groups, layouts, edits and steps of ``model`` (read only; see the module doc)."""
    return _Analyzer(model).run()

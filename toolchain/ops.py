"""optc's own ONNX operators (domain ``ai.optc``): one registry, one definition per op.

An op is declared once, in its own module of :mod:`optc.passes.ops` (the package
:data:`OP_MODULES` names), by the :func:`define` decorator on its numpy reference (an
``onnx.reference.op_run.OpRun`` subclass), which states together:

* **schema**: inputs and outputs (:class:`Operand`: name, element types, optional) and
  attributes (:class:`Attr`); the output *shape* is that of the op's cost surrogate (below),
  which the generic tests compare with the reference's output;
* **reference**: the decorated class, the semantics every kernel must match (its docstring is
  the op's contract);
* **cost** (:class:`Cost`): the arithmetic its MACs are charged at (energy model and modeled
  latency), a *surrogate* (standard ONNX ops with the op's output shape and MAC count, through
  which ONNX shape inference and :func:`optc.analysis.layer_costs` see), bit operations per MAC,
  the int8 kernel it runs on, and its work outside the MACs;
* **lowering**: per backend, the function that lowers one node, defined in the op's module
  (TVM: ``lower_tvm(bb, inputs, attr, params) -> relax.Expr``, the Relax glue that calls the
  kernel builders of ``optc.backends.tvm.bitserial`` / ``int8``; ``optc.backends.tvm.lower``
  registers it as ``"ai.optc::<name>"`` for every registered op). The function imports TVM and
  the backend inside its body only, so neither the op module nor this one imports a backend;
* **example**: a small instance (inputs, attributes) that the generic tests
  (``tests/test_ops.py``) run through the reference, the schema, the cost model and the lowering.

This module is toolchain core (onnx and numpy only). It names the package that defines the
ops (:data:`OP_MODULES`; the package imports each of its op modules) and imports it on the
first lookup, as the targets table names backends, so the cost models (:mod:`optc.analysis`,
:mod:`optc.energy`, :mod:`optc.latency_model`) see every op without importing passes themselves.

Adding an op touches one module plus its test (e.g. ``IntGlobalAveragePool``,
``passes/ops/int_global_average_pool.py``):

1. a new module in ``passes/ops/`` holding an ``OpRun`` subclass with ``op_domain = DOMAIN``,
   its contract as docstring, ``_run(self, <inputs>, **attrs)`` reading ``attrs`` through
   :func:`attributes` (a record with every declared attribute, None where absent), decorated with
   ``@define(inputs=..., attributes=..., outputs=..., cost=Cost(...), lowering={"tvm":
   lower_tvm}, example=...)``, and ``lower_tvm`` beside it; the cost's surrogate usually is
   :func:`conv_surrogate`, :func:`dense_surrogate` or a one-liner with :meth:`Surrogate.main`;
   a new kind of kernel goes into the backend's kernel library (TE compute and schedule), which
   ``lower_tvm`` calls;
2. a test of the op's own numerics (edge cases); ``tests/test_ops.py`` checks the rest for
   every registered op: reference vs schema, surrogate shape vs reference, cost, lowering
   defined in the op's module and registered, and the compiled kernel against the reference.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from types import MappingProxyType
from typing import Any

import onnx
from onnx import helper

from .onnx_utils import attr, int_attr

DOMAIN = "ai.optc"
VERSION = 1

# Modules whose import registers ops (each op's ``define``), imported on the first lookup: the
# package of op modules, which imports every one of them.
OP_MODULES: tuple[str, ...] = ("optc.passes.ops",)

ARITHS = ("fp32", "int8", "binary")
ATTR_TYPES = {"int": onnx.AttributeProto.INT, "ints": onnx.AttributeProto.INTS,
              "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}

# Marker in the names of a surrogate's helper nodes (costed with their layer, not as layers).
AUX = "__optc_cost_aux"


# ---------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True)
class Operand:
    """An input or output: name (as in the reference's ``_run``), numpy element types."""

    name: str
    types: tuple[str, ...]
    optional: bool = False


@dataclass(frozen=True)
class Attr:
    """An attribute: name (a field of the reference's :func:`attributes` record), type (a key of
    :data:`ATTR_TYPES`)."""

    name: str
    type: str
    required: bool = False


# ---------------------------------------------------------------------------------------------
# cost


def operand_bits(node: onnx.NodeProto) -> int:
    """1-bit operations per MAC of a packed layer: weight bits x activation bits (1 if unstated)."""
    return (int_attr(node, "weight_bits", "wbits") or 1) * (int_attr(node, "act_bits", "activation_bits", "abits") or 1)


def _never(node: onnx.NodeProto, weight_shape: list[int] | None) -> bool:  # noqa: ARG001
    return False


@dataclass(frozen=True)
class Cost:
    """How the cost models charge one node of an op.

    ``surrogate(s)`` adds, through the :class:`Surrogate` builder ``s``, standard ONNX nodes with
    the op's output shape and MAC count (exactly one main node, any number of helper nodes),
    or returns False where it cannot (weights of unknown shape): the node is then left as is.
    """

    arith: str  # "fp32" | "int8" | "binary": the MACs' arithmetic (energy per MAC, latency kernel class)
    surrogate: Callable[[Surrogate], bool]
    bits_per_mac: Callable[[onnx.NodeProto], int] = operand_bits  # binary: 1-bit operations per MAC
    dot_product: bool = False  # int8: runs on the int8 dot-product kernel where the core has one (latency)
    depthwise: Callable[[onnx.NodeProto, list[int] | None], bool] = _never  # (node, weight shape): no dot product fits
    binarize_and_scale: bool = False  # energy: a compare per input element, an fp32 mult + add per output
    requantize: bool = False  # energy: an int32 mult + add per output element (fixed-point requantization)
    ops_per_output: int = 0  # energy: other operations of ``arith`` per output element (a threshold compare)

    def __post_init__(self):
        if self.arith not in ARITHS:
            raise ValueError(f"Cost.arith {self.arith!r}: one of {ARITHS}")


class Surrogate:
    """What an op's ``Cost.surrogate`` builds with: the node, the static shapes of weights and
    graph inputs (:meth:`dims`), and standard nodes (:meth:`main`, :meth:`aux`) on shape-only
    dummy weights (:meth:`weight`). Tensor and helper-node names are unique per node index."""

    def __init__(self, node: onnx.NodeProto, index: int, dims: Mapping[str, list[int]]):
        self.node = node
        self._index = index
        self._dims = dims
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, list[int]] = {}
        self.has_main = False

    def dims(self, name: str) -> list[int] | None:
        return self._dims.get(name)

    def input_dims(self, i: int) -> list[int] | None:
        """Shape of the node's input ``i`` where it is a weight or graph input, else None."""
        return self.dims(self.node.input[i]) if len(self.node.input) > i and self.node.input[i] else None

    def attr_ints(self, name: str, default: list[int]) -> list[int]:
        return [int(v) for v in attr(self.node, name, default)]

    def attr_int(self, name: str) -> int | None:
        return int_attr(self.node, name)

    def attr_str(self, name: str) -> str | None:
        v = attr(self.node, name)
        return v.decode() if isinstance(v, bytes) else v

    def input_nchw(self, nhwc: bool) -> str:
        """The node's input 0 in NCHW: itself, or (``nhwc``) a Transpose of it."""
        if not nhwc:
            return self.node.input[0]
        x = self.tensor("nchw_in")
        self.aux("nchw_in", "Transpose", [self.node.input[0]], [x], perm=[0, 3, 1, 2])
        return x

    def tensor(self, role: str) -> str:
        """A fresh intermediate tensor name."""
        return f"__optc_cost_{role}_{self._index}"

    def weight(self, shape: list[int]) -> str:
        """A shape-only dummy weight (a graph input, no data)."""
        name = f"__optc_cost_shape_{self._index}" + (f"_{len(self.weights)}" if self.weights else "")
        self.weights[name] = [int(v) for v in shape]
        return name

    def main(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        """The node that carries the op's MACs (keeps the op node's name)."""
        if self.has_main:
            raise ValueError(f"surrogate of {self.node.op_type}: one main node only")
        self.has_main = True
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.node.name, **attrs))

    def aux(self, role: str, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        """A helper node (layout change, fused pooling), costed with the main node."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{self.node.name}{AUX}_{role}", **attrs))


def conv_surrogate(s: Surrogate, weight_shape: list[int], *, group: int = 1, pool: list[int] | None = None,
                   x_nhwc: bool = False, y_nhwc: bool = False) -> bool:
    """A standard Conv on a dummy ``weight_shape`` [N, C/group, KH, KW] with the node's
    ``kernel_shape``/``pads``/``strides``/``dilations``; ``pool`` [PH, PW] adds a MaxPool after it
    (a fused max-pool), ``x_nhwc``/``y_nhwc`` Transposes around it (NHWC activations)."""
    n = s.node
    pooled = pool is not None and list(pool) != [1, 1]
    conv_in, conv_out = s.input_nchw(x_nhwc), s.tensor("conv") if pooled else n.output[0]
    if y_nhwc:
        conv_out = s.tensor("nchw_out")
    s.main("Conv", [conv_in, s.weight(weight_shape)], [conv_out], kernel_shape=s.attr_ints("kernel_shape", [1, 1]),
           pads=s.attr_ints("pads", [0, 0, 0, 0]), strides=s.attr_ints("strides", [1, 1]), group=group,
           dilations=s.attr_ints("dilations", [1, 1]))
    if y_nhwc:
        s.aux("nhwc_out", "Transpose", [conv_out], [n.output[0]], perm=[0, 2, 3, 1])
    if pooled:
        s.aux("pool", "MaxPool", [conv_out], [n.output[0]], kernel_shape=list(pool), strides=list(pool))
    return True


def dense_surrogate(s: Surrogate, k: int, n_out: int) -> bool:
    """A standard MatMul ``X [M, k] @ dummy [k, n_out]``."""
    s.main("MatMul", [s.node.input[0], s.weight([k, n_out])], [s.node.output[0]])
    return True


def elementwise_surrogate(s: Surrogate) -> bool:
    """An Identity: output shaped as input 0, no MACs."""
    s.main("Identity", [s.node.input[0]], [s.node.output[0]])
    return True


# ---------------------------------------------------------------------------------------------
# definitions and the registry


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[Operand, ...]
    attributes: tuple[Attr, ...]
    outputs: tuple[Operand, ...]
    reference: type
    cost: Cost
    lowering: Mapping[str, Callable]  # backend -> the function lowering one node (TVM: lower_tvm)
    example: Callable[[Any], tuple[list, dict]] | None = None  # rng -> (inputs, attributes)
    domain: str = DOMAIN
    version: int = VERSION
    doc: str = field(default="", compare=False)
    record: type | None = field(default=None, compare=False, repr=False)  # the attribute record (:meth:`attrs`)

    def attrs(self, given: Mapping[str, Any]) -> Any:
        """The attributes a node sets (as the evaluator passes them to ``_run``) as one frozen
        record with a field per declared attribute, None where the node leaves it out.
        Raises TypeError for an undeclared one, as an unexpected keyword argument would."""
        unknown = sorted(set(given) - {a.name for a in self.attributes})
        if unknown:
            raise TypeError(f"{self.name}: unknown attribute(s) {unknown}")
        return self.record(**given)

    def check(self, node: onnx.NodeProto) -> list[str]:
        """What is wrong with ``node`` as an instance of this op (empty: nothing)."""
        out = []
        if node.domain != self.domain or node.op_type != self.name:
            out.append(f"{node.domain}::{node.op_type} is not {self.domain}::{self.name}")
        given = list(node.input)
        if len(given) > len(self.inputs):
            out.append(f"{len(given)} inputs, at most {len(self.inputs)}")
        for spec, name in zip(self.inputs, given + [""] * (len(self.inputs) - len(given))):
            if not name and not spec.optional:
                out.append(f"input {spec.name} is required")
        if len(node.output) != len(self.outputs):
            out.append(f"{len(node.output)} outputs, not {len(self.outputs)}")
        attrs = {a.name: a for a in node.attribute}
        for spec in self.attributes:
            a = attrs.pop(spec.name, None)
            if a is None:
                if spec.required:
                    out.append(f"attribute {spec.name} is required")
            elif a.type != ATTR_TYPES[spec.type]:
                out.append(f"attribute {spec.name} must be {spec.type}")
        out += [f"unknown attribute {name}" for name in attrs]
        return out


_REGISTRY: dict[str, OpDef] = {}
_loaded = False


def define(*, inputs, attributes=(), outputs, cost: Cost, lowering: Mapping[str, Callable], example=None):
    """Class decorator: register the ``OpRun`` subclass it decorates as the reference of
    ``ai.optc::<class name>`` with its schema, cost and lowering functions (see the module
    docstring). Raises ValueError for a second definition of a name, a ``_run`` whose
    parameters differ from the schema (:func:`_run_params`), or a lowering that is not a
    function."""
    not_callable = sorted(backend for backend, fn in lowering.items() if not callable(fn))
    if not_callable:
        raise ValueError(f"lowering for {not_callable}: a function lowering one node, not {lowering!r}")

    def wrap(cls):
        name = cls.__name__
        old = _REGISTRY.get(name)
        where = (cls.__module__, cls.__qualname__)
        if old is not None and (old.reference.__module__, old.reference.__qualname__) != where:
            raise ValueError(f"ai.optc op {name} is defined twice")
        params = _run_params(cls)
        declared = [o.name for o in inputs] + (["**attrs"] if attributes else [])
        if params != declared:
            raise ValueError(f"{name}: _run takes {params}, the schema declares {declared}")
        record = make_dataclass(f"{name}Attributes", [(a.name, Any, field(default=None)) for a in attributes],
                                frozen=True)
        _REGISTRY[name] = OpDef(name, tuple(inputs), tuple(attributes), tuple(outputs), cls, cost,
                                MappingProxyType(dict(lowering)), example, getattr(cls, "op_domain", DOMAIN),
                                doc=inspect.cleandoc(cls.__doc__ or ""), record=record)
        return cls

    return wrap


def _run_params(cls: type) -> list[str]:
    """A reference's ``_run`` parameters after ``self``: the input names, then ``"**attrs"``
    for its keyword catch-all. The schema's form is ``_run(self, <inputs>, **attrs)`` with
    ``attrs`` read through :func:`attributes`: onnx's evaluator passes the attributes a node
    sets as keyword arguments, and one parameter each would make long signatures."""
    out = []
    for p in list(inspect.signature(cls._run).parameters.values())[1:]:
        out.append(f"**{p.name}" if p.kind is p.VAR_KEYWORD else f"*{p.name}" if p.kind is p.VAR_POSITIONAL else p.name)
    return out


def attributes(op: Any, given: Mapping[str, Any]) -> Any:
    """Inside a registered reference's ``_run(self, <inputs>, **attrs)``: ``attrs`` as the op's
    attribute record (:meth:`OpDef.attrs`: every declared attribute, None where absent)."""
    d = _REGISTRY.get(type(op).__name__)
    if d is None or d.reference is not type(op):
        raise TypeError(f"{type(op).__name__} is not a registered ai.optc op reference")
    return d.attrs(given)


def registry() -> Mapping[str, OpDef]:
    """Every registered op by name (the op modules are imported on the first call)."""
    global _loaded
    if not _loaded:
        for module in OP_MODULES:
            importlib.import_module(module)
        _loaded = True
    return MappingProxyType(_REGISTRY)


def get(op_type: str) -> OpDef | None:
    """The definition of ``ai.optc::op_type``, or None."""
    return registry().get(op_type)


def lookup(node: onnx.NodeProto) -> OpDef | None:
    """The definition of a node's op where it is a registered ``ai.optc`` op, else None."""
    return get(node.op_type) if node.domain.startswith(DOMAIN) else None


def references() -> list[type]:
    """The ``OpRun`` references of all registered ops (for ``ReferenceEvaluator(new_ops=...)``)."""
    return [d.reference for d in registry().values()]


def surrogate_for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every registered ``ai.optc`` node is replaced by its cost surrogate
    (:class:`Cost`), with shape-only dummy weights (graph inputs, no data), so that ONNX shape
    inference and :func:`optc.analysis.layer_costs` see through them. Tensor names are kept;
    helper nodes carry :data:`AUX` in their names. Unregistered nodes stay as they are.

    The element types declared for a replaced node's outputs (graph outputs, value_info) are
    dropped: a standard op infers its output type from its input (a Conv on uint8 codes gives
    uint8, where an IntConv2d may declare int8), and a conflict would stop shape inference for
    the whole graph. Every registered op's output has the width of its input 0, so byte counts
    stay right (``tests/test_ops.py`` checks it)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    for vi in g.input:
        dims.setdefault(vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim])
    nodes, retyped = [], set()
    for k, n in enumerate(g.node):
        d = lookup(n)
        s = Surrogate(n, k, dims)
        if d is None or not d.cost.surrogate(s):
            nodes.append(n)
            continue
        if not s.has_main:  # the costs of the surrogate's nodes map back to the graph's by their main nodes
            raise ValueError(f"the cost surrogate of {n.op_type} added no main node")
        nodes.extend(s.nodes)
        retyped.update(n.output)
        g.input.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
                       for name, shape in s.weights.items())
    del g.node[:]
    g.node.extend(nodes)
    for vi in [*g.output, *g.value_info]:
        if vi.name in retyped:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    return m

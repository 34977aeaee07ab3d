"""Small ONNX helpers shared by the passes, the analysis and the backends: attribute readers
and shape inference with a fallback.

It imports nothing at module level (``onnx`` is imported by the functions that need it), so
any optc module may use it without slowing ``import optc`` down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

__all__ = ["attr", "int_attr", "infer_shapes", "value_shapes", "FreshNames", "unit_dynamic_dims", "node_reads",
           "graph_reads"]


def unit_dynamic_dims(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy of ``model`` whose graph inputs have every dynamic dimension set to 1 and whose
    ``value_info`` is cleared (re-inferred from those shapes): what static cost counting
    (:mod:`optc.analysis`) needs for a model whose batch is left open."""
    import onnx

    out = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in out.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = 1
    out.graph.ClearField("value_info")
    return out


class FreshNames:
    """Tensor/node names not yet used in a model: ``fresh("x")`` gives ``x``, then ``x_1``, ...
    (every tensor and node name of the main graph counts as used, and so does every name
    handed out)."""

    def __init__(self, model: "onnx.ModelProto"):
        g = model.graph
        self.used = {o for n in g.node for o in (*n.input, *n.output)} | {t.name for t in g.initializer} \
            | {v.name for v in (*g.input, *g.output)} | {n.name for n in g.node if n.name}

    @classmethod
    def of_graph(cls, graph: "ir.Graph") -> "FreshNames":
        """The same for an onnx-ir graph: its inputs, outputs, initializers, node outputs and node
        names count as used."""
        fresh = cls.__new__(cls)
        values = (*graph.inputs, *graph.outputs, *graph.initializers.values(), *(o for n in graph for o in n.outputs))
        fresh.used = {v.name for v in values if v.name} | {n.name for n in graph if n.name}
        return fresh

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def attr(node: onnx.NodeProto | ir.Node, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node``, or ``default`` if it has none.

    ``node`` is an ONNX ``NodeProto`` (the value is ``onnx.helper.get_attribute_value``'s:
    strings are ``bytes``, repeated fields lists) or an onnx-ir ``Node`` (``ir.Attr.value``:
    strings are ``str``).
    """
    if hasattr(node, "attributes"):  # onnx-ir
        a = node.attributes.get(name)
        return default if a is None else a.value
    for a in node.attribute:
        if a.name == name:
            from onnx.helper import get_attribute_value

            return get_attribute_value(a)
    return default


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """All attributes of ``node`` by name, valued as :func:`attr` values them."""
    from onnx.helper import get_attribute_value

    return {a.name: get_attribute_value(a) for a in node.attribute}


def int_attr(node: onnx.NodeProto, *names: str) -> int | None:
    """The first integer attribute of ``node`` among ``names`` (aliases, e.g. ``"act_bits",
    "abits"``), or None if there is none."""
    from onnx import AttributeProto

    for a in node.attribute:
        if a.name in names and a.type == AttributeProto.INT:
            return int(a.i)
    return None


def infer_shapes(model: onnx.ModelProto, *, data_prop: bool = False,
                 fallback: bool = True) -> onnx.ModelProto | None:
    """A copy of ``model`` with ONNX shape inference applied (``data_prop``: also propagate
    shape values through Shape/Gather/Concat chains).

    Where inference fails (ops of a custom domain in a position it cannot see through,
    inconsistent declared shapes), ``model`` itself is returned, with the shapes it declares
    (``fallback=True``), or None (``fallback=False``, for callers that must know inference
    failed).
    """
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except Exception:
        return model if fallback else None


def value_shapes(model: onnx.ModelProto, *, data_prop: bool = False) -> dict[str, tuple[int | None, ...]]:
    """Tensor name -> dims (None where unknown) for every graph input, inferred value, graph
    output and initializer of ``model`` (see :func:`infer_shapes`; a tensor of unknown rank is
    left out)."""
    inferred = infer_shapes(model, data_prop=data_prop)
    g = inferred.graph
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(init.dims)
    return out


def subgraphs(node: "onnx.NodeProto") -> list:
    """The graphs held by ``node``'s attributes (If branches, Loop/Scan bodies)."""
    import onnx

    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs)]


def all_nodes(graph: "onnx.GraphProto"):
    """The nodes of ``graph`` and, recursively, of its subgraphs (a quantized If branch holds
    ``ai.optc`` ops too)."""
    for n in graph.node:
        yield n
        for g in subgraphs(n):
            yield from all_nodes(g)


def has_op(model: "onnx.ModelProto", op_type: str) -> bool:
    """Whether a node of ``op_type`` (default domain) is in ``model``, subgraphs included."""
    return any(n.op_type == op_type and n.domain in ("", "ai.onnx") for n in all_nodes(model.graph))


def node_reads(node: "onnx.NodeProto") -> set[str]:
    """Every value name ``node`` reads: its inputs and, recursively, the names read inside its
    subgraphs (If branches, Loop/Scan bodies), which include outer-scope values that appear in no
    node's input list of the enclosing graph. A superset (names a subgraph defines itself are
    included too): right for deciding what must be kept."""
    names = {i for i in node.input if i}
    for g in subgraphs(node):
        names |= graph_reads(g)
    return names


def graph_reads(graph: "onnx.GraphProto") -> set[str]:
    """The names read by the nodes of ``graph`` (:func:`node_reads`) and its outputs."""
    names = {o.name for o in graph.output}
    for n in graph.node:
        names |= node_reads(n)
    return names


def constants(graph: "onnx.GraphProto") -> dict:
    """Initializers and Constant outputs of ``graph`` as numpy arrays (tensor ``value`` and
    the scalar / list forms)."""
    import numpy as np
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1:
            a = n.attribute[0]
            value = {"value": lambda: numpy_helper.to_array(a.t), "value_int": lambda: np.array(a.i, np.int64),
                     "value_ints": lambda: np.array(a.ints, np.int64), "value_float": lambda: np.array(a.f, np.float32),
                     "value_floats": lambda: np.array(a.floats, np.float32)}.get(a.name)
            if value is not None:
                out[n.output[0]] = value()
    return out


def uses_float16(model: onnx.ModelProto) -> bool:
    """Whether float16 tensors appear in ``model``'s main graph: an initializer, an input, a
    Constant or a Cast to float16 (the model computes some values in float16: the TVM backend
    sums its float16 contractions in float32, verification allows float16 rounding)."""
    import onnx

    half = onnx.TensorProto.FLOAT16
    return (any(t.data_type == half for t in model.graph.initializer)
            or any(i.type.tensor_type.elem_type == half for i in model.graph.input)
            or any((n.op_type == "Cast" and a.name == "to" and a.i == half)
                   or (n.op_type == "Constant" and a.name == "value" and a.t.data_type == half)
                   for n in model.graph.node for a in n.attribute))

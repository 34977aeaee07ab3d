"""Zero-size tensors before the TVM import: a node whose outputs all have no elements is
replaced by an empty tensor of their static shapes, made from a run-time value.

A 0 in a static shape is a real size (an empty past-key-value cache, a detector's zero boxes,
``Trilu`` / ``Reshape(allowzero)`` of an empty matrix): ONNX shape inference gives such an
output's shape exactly, and a tensor with no elements has no values to compute, so the node's
result is known before it runs. TVM's importer builds some converters from the operands'
shapes (Trilu's mask from ``arange(0, rows)``), which fails for a zero extent; an empty
tensor of the inferred shape and element type is the same tensor without that code. It is
cut from one of the node's run-time operands (the first zero elements of it, cast and
reshaped), not stored as a constant: TVM folds a tensor made of constants into one, and TVM
0.27 cannot load a compiled library holding a zero-size constant whose first dimension is
not the zero one (``Tensor::Load``: "Invalid DLTensor file format"); a node that reads only
constants is left as it is (:func:`check_constants` refuses such a library by name). The
rewrite is exact by construction (there is nothing in an empty tensor to get wrong) and
optc's verification still compares the outputs' shapes and types with onnxruntime's.

Only nodes of the main graph are replaced, only where every output's shape is fully static
with a zero extent and its element type is one numpy holds; nodes with any non-empty output
(``ReduceSum`` over an empty axis gives zeros, ``Concat`` of an empty and a full tensor,
``Shape`` of an empty tensor) keep their converters.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optc.onnx_utils import infer_shapes


def _tensors(model: onnx.ModelProto) -> dict[str, tuple[tuple[int | None, ...], int]]:
    """Value name -> (inferred dims, None where unknown; element type) for every tensor value
    of the main graph whose element type numpy holds (inputs, inferred values, outputs)."""
    g = infer_shapes(model).graph
    found = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape") and _numpy_type(t.elem_type):
            found[vi.name] = (tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim),
                              t.elem_type)
    return found


def _numpy_type(elem_type: int) -> bool:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).kind in "biuf"
    except Exception:  # undefined, string, float8/int4 (no numpy type of their own)
        return False


def replace_empty_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` (a copy, if anything changes) with each main-graph node whose outputs are all
    empty and which reads a run-time value replaced by the chain of :func:`_empty_from`
    (models of opset 10 and later); returns it and the number of nodes replaced."""
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0])
    tensors = _tensors(model) if opset >= 10 else {}  # Slice takes its bounds as inputs from 10
    empty = {k: (dims, elem) for k, (dims, elem) in tensors.items() if dims and None not in dims and 0 in dims}
    if not empty:
        return model, 0
    fixed = {t.name for t in model.graph.initializer}
    fixed |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    nodes, count = [], 0
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        runtime = [i for i in node.input if i and i not in fixed and i in tensors]  # numeric tensors
        if node.op_type == "Constant" or not outs or not runtime or any(o not in empty for o in outs):
            nodes.append(node)
            continue
        count += 1
        for o in outs:
            nodes.extend(_empty_from(runtime[0], o, *empty[o], f"{node.name or node.op_type}_empty_{o}"))
    if not count:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, count


def _empty_from(source: str, out: str, shape: tuple[int, ...], elem: int, name: str) -> list[onnx.NodeProto]:
    """Nodes computing the empty tensor ``out`` (``shape``, element type ``elem``) from the
    run-time value ``source``: its first zero elements (``[0]``), cast, reshaped to
    ``[0, 1, ..., 1]``, the 0 moved to the first zero axis ``k`` of ``shape``, expanded to
    ``shape`` (1 broadcasts to any size, 0 only to 0). Every shape is a constant that means
    what it says at every opset (no 0 in a Reshape target beyond the input's rank)."""
    k, rank = shape.index(0), len(shape)
    perm = list(range(1, k + 1)) + [0] + list(range(k + 1, rank))  # axis 0 -> axis k

    def const(suffix: str, values) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [f"{name}_{suffix}"], name=f"{name}_{suffix}",
                                value=numpy_helper.from_array(np.array(values, np.int64)))

    return [
        const("flat_shape", [-1]), const("zero", [0]), const("ones", [0] + [1] * (rank - 1)),
        const("shape", list(shape)),
        helper.make_node("Reshape", [source, f"{name}_flat_shape"], [f"{name}_flat"], name=f"{name}_flat"),
        helper.make_node("Slice", [f"{name}_flat", f"{name}_zero", f"{name}_zero", f"{name}_zero"],
                         [f"{name}_none"], name=f"{name}_none"),
        helper.make_node("Cast", [f"{name}_none"], [f"{name}_cast"], name=f"{name}_cast", to=elem),
        helper.make_node("Reshape", [f"{name}_cast", f"{name}_ones"], [f"{name}_ones_t"], name=f"{name}_ones_t"),
        helper.make_node("Transpose", [f"{name}_ones_t"], [f"{name}_moved"], name=f"{name}_moved", perm=perm),
        helper.make_node("Expand", [f"{name}_moved", f"{name}_shape"], [out], name=name),
    ]


def check_constants(mod) -> None:
    """Refuse (``UnsupportedModelError``) a lowered Relax module holding a zero-size constant
    whose first dimension is not 0: TVM 0.27 writes such a constant into the library but
    cannot load it back (``Tensor::Load`` checks the data it read unless the first dimension
    is 0), so the package would fail when opened. Such constants come from nodes that read only
    constants and give an empty tensor (:func:`replace_empty_nodes` leaves those)."""
    import tvm
    from tvm import relax

    from optc.errors import UnsupportedModelError

    shapes: list[tuple[int, ...]] = []

    def visit(expr) -> None:
        value = getattr(expr, "value", None) if isinstance(expr, tvm.ir.GenericConst) else None
        if isinstance(value, tvm.runtime.Tensor):  # a Relax tensor constant
            shape = tuple(int(d) for d in value.shape)
            if shape and 0 in shape and shape[0] != 0:
                shapes.append(shape)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    if shapes:
        raise UnsupportedModelError(
            f"the compiled model holds zero-size constant(s) of shape {', '.join(map(str, sorted(set(shapes))))}, which "
            "TVM 0.27 cannot load back from the library (its loader takes only a leading zero dimension); "
            "give the node computing it a run-time input, or remove it")

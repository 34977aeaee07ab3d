"""Operands TVM's importer needs as constants, and which graph inputs feed them.

TVM's Relax importer builds static shapes: the ``axes`` of Reduce*/Squeeze/Unsqueeze, the
``shape`` of Reshape/Expand/ConstantOfShape, Resize/Upsample ``scales``/``sizes``, TopK's ``k``,
Pad's ``pads``, Split's ``split``, OneHot's ``depth``/``values``, CumSum's ``axis``, Slice's
bounds, Tile's ``repeats``, AffineGrid's ``size``, CenterCropPad's ``shape``, the window ops'
``size``, MaxUnpool's ``output_shape`` must be constants
(and a Loop's trip count, for optc's ``unroll-loops``). A model that takes one of them as a graph input (a run-time value)
cannot be imported; :func:`hint` names those inputs so the refusal says what to change
(``optc compile --const-input NAME`` freezes such an input to the value given in ``--inputs``:
``optc.const_inputs``); :func:`runtime_static_inputs` lists their names.
"""

from __future__ import annotations

import onnx

from optc.onnx_utils import node_reads

# op type -> indices of operands that must be constant
STATIC_OPERANDS: dict[str, tuple[int, ...]] = {
    **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze",
                           "Unsqueeze", "Reshape", "Expand", "TopK", "Split", "CumSum", "CumProd", "Tile",
                           "Upsample")},
    "ConstantOfShape": (0,), "OneHot": (1, 2), "Resize": (1, 2, 3), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4),
    "Range": (0, 1, 2), "AffineGrid": (1,), "CenterCropPad": (1,), "MaxUnpool": (2,),
    "HannWindow": (0,), "HammingWindow": (0,), "BlackmanWindow": (0,),
    "DFT": (1, 2), "STFT": (1, 3), "Col2Im": (1, 2), "MelWeightMatrix": (0, 1, 2, 3, 4),  # optc's signal_ops.py
    "Loop": (0,),  # a trip count must be static for unroll-loops (optc.passes.control_flow)
}


# op type -> operands a converter reads as a constant where they are one (a run-time value
# works too): Pow's exponent (x ** 2 / 3 / 4 as multiplies, onnx_ops.Pow)
CONSTANT_IF_POSSIBLE: dict[str, tuple[int, ...]] = {"Pow": (1,)}


def runtime_static_operands(model: onnx.ModelProto) -> list[str]:
    """``"input 'axes' (ReduceSum operand 1)"`` for each graph input whose value decides an
    operand the importer needs constant: directly, or through other nodes (``"input 'size'
    (through Gather, ..., to ConstantOfShape operand 0)"``, as in function bodies that compute
    shapes). Shape and Size nodes end a path: their outputs depend on shapes only, which are
    bound before the import."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name for vi in model.graph.input} - inits
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        for k in STATIC_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if k >= len(node.input) or not node.input[k]:
                continue
            if node.input[k] in inputs:
                found.append(f"input {node.input[k]!r} ({node.op_type} operand {k})")
                continue
            for name in _inputs_upstream(node.input[k], producer, inputs):
                found.append(f"input {name!r} (through other nodes, {node.op_type} operand {k})")
    return list(dict.fromkeys(found))


def _inputs_upstream(value: str, producer: dict, inputs: set) -> list[str]:
    """Graph inputs whose values reach ``value`` (not through Shape/Size), in graph order."""
    seen, stack, found = set(), [value], []
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in inputs:
            found.append(v)
        node = producer.get(v)
        if node is not None and node.op_type not in SHAPE_ONLY:
            stack.extend(sorted(node_reads(node)))  # subgraph reads too (If branches)
    return found


SHAPE_ONLY = frozenset({"Shape", "Size"})  # outputs depend on the input's shape alone


def runtime_static_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs :func:`runtime_static_operands` lists."""
    return list(dict.fromkeys(s.split("'")[1] for s in runtime_static_operands(model)))


def hint(model: onnx.ModelProto) -> str:
    """A sentence for an import refusal, or "" when no graph input feeds such an operand."""
    found = runtime_static_operands(model)
    if not found:
        return ""
    return (f"; TVM needs these operands as constants but they are graph inputs (run-time values): "
            f"{', '.join(dict.fromkeys(found))}: store them as initializers or Constant nodes, or freeze them to "
            f"given values with --const-input NAME and --inputs, to compile the model")


def constants_for_static_operands(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the initializers that feed such operands turned into Constant nodes.

    The importer keeps initializers as function parameters (``keep_params_in_input``), and
    several converters (Expand, ...) then read a shape from a parameter as a run-time value:
    the build fails on dimensions "not computed". A Constant node is a compile-time constant
    to every converter. (``simplify`` leaves folded shapes as initializers.)"""
    operands = lambda op: STATIC_OPERANDS.get(op, ()) + CONSTANT_IF_POSSIBLE.get(op, ())  # noqa: E731
    wanted = {node.input[k] for node in model.graph.node if node.domain in ("", "ai.onnx")
              for k in operands(node.op_type) if k < len(node.input) and node.input[k]}
    moved = [t for t in model.graph.initializer if t.name in wanted]
    if not moved:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {t.name for t in moved}
    kept = [t for t in out.graph.initializer if t.name not in names]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    inputs = [vi for vi in out.graph.input if vi.name not in names]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    consts = [onnx.helper.make_node("Constant", [], [t.name], name=f"_static_{t.name}", value=t) for t in moved]
    nodes = consts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out

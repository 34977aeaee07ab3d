"""Operands TVM's importer needs as constants, and which graph inputs feed them.

TVM's Relax importer builds static shapes: the ``axes`` of Reduce*/Squeeze/Unsqueeze, the
``shape`` of Reshape/Expand/ConstantOfShape, Resize/Upsample ``scales``/``sizes``, TopK's ``k``,
Pad's ``pads``, Split's ``split``, OneHot's ``depth``, CumSum's ``axis``, Slice's bounds, Tile's
``repeats`` must be constants. A model that takes one of them as a graph input (a run-time value)
cannot be imported; :func:`hint` names those inputs so the refusal says what to change.
"""

from __future__ import annotations

import onnx

# op type -> indices of operands that must be constant
STATIC_OPERANDS: dict[str, tuple[int, ...]] = {
    **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze",
                           "Unsqueeze", "Reshape", "Expand", "TopK", "Split", "OneHot", "CumSum", "Tile",
                           "Upsample")},
    "ConstantOfShape": (0,), "Resize": (1, 2, 3), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4),
    "Range": (0, 1, 2),
}


def runtime_static_operands(model: onnx.ModelProto) -> list[str]:
    """``"input 'axes' (ReduceSum operand 1)"`` for each graph input that feeds an operand the
    importer needs constant."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name for vi in model.graph.input} - inits
    found = []
    for node in model.graph.node:
        for k in STATIC_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if k < len(node.input) and node.input[k] in inputs:
                found.append(f"input {node.input[k]!r} ({node.op_type} operand {k})")
    return found


def hint(model: onnx.ModelProto) -> str:
    """A sentence for an import refusal, or "" when no graph input feeds such an operand."""
    found = runtime_static_operands(model)
    if not found:
        return ""
    return (f"; TVM needs these operands as constants but they are graph inputs (run-time values): "
            f"{', '.join(dict.fromkeys(found))}: store them as initializers or Constant nodes to compile the model")

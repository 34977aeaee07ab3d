"""Constant weights behind a DequantizeLinear, folded before the TVM import.

A QDQ model keeps its weights as integer initializers behind ``DequantizeLinear``. Where
``integerize`` turns a layer into an integer op, the op reads the codes directly; the layers it
leaves in float (a ConvTranspose, a layer with uint8 weights, any op without an integer
kernel) keep ``DequantizeLinear(constant)`` as their weight. TVM's importer sees that as a
run-time expression, so optc's converters that need a constant weight fall back to a slow form:
a ConvTranspose becomes TVM's ``conv2d_transpose`` over a zero-dilated input (a QDQ UNet's two
up-convolutions ran at 8-12 GFLOP/s, 41 % of the model) instead of one convolution of its
output phases (``onnx_ops._conv_transpose_as_shuffle``).

:func:`fold_constant_dequantize` replaces every main-graph ``DequantizeLinear`` whose operands
are all initializers by its float result, computed by onnx's ``ReferenceEvaluator`` (the spec's
arithmetic: ``(x - zero_point) * scale``, per tensor, axis or block), in the model handed to TVM
only: the package's ONNX model keeps its integer weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# integer code types whose dequantization is exact arithmetic in float32 (others: left alone)
CODE_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
              onnx.TensorProto.INT32)


def fold_constant_dequantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` (a copy, if anything changes) with each main-graph DequantizeLinear on
    initializers replaced by an initializer holding its output; and how many were folded."""
    inits = {t.name: t for t in model.graph.initializer}
    found = [n for n in model.graph.node if _foldable(n, inits)]
    if not found:
        return model, 0
    from onnx.reference import ReferenceEvaluator

    out = onnx.ModelProto()
    out.CopyFrom(model)
    # DequantizeLinear 10/13 are 19 without its float8 types (the reference implements 19 and later)
    opsets = {o.domain: o.version for o in model.opset_import}
    for node in found:
        result = helper.make_tensor_value_info(node.output[0], inits[node.input[1]].data_type, None)
        sub = helper.make_model(helper.make_graph([node], "dq", [], [result], [inits[i] for i in node.input if i]),
                                opset_imports=[helper.make_opsetid("", max(19, opsets.get("", opsets.get("ai.onnx", 13))))])
        value = ReferenceEvaluator(sub).run(None, {})[0]
        out.graph.initializer.append(numpy_helper.from_array(np.asarray(value), node.output[0]))
    folded = {node.output[0] for node in found}
    kept = [n for n in out.graph.node if n.output[0] not in folded or n.op_type != "DequantizeLinear"]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out, len(found)


def _foldable(node: onnx.NodeProto, inits: dict) -> bool:
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return False
    names = [i for i in node.input if i]
    return bool(names) and all(i in inits for i in names) and inits[node.input[0]].data_type in CODE_TYPES

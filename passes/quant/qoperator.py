"""QOperator -> QDQ: the ``expand-qoperator`` pass.

onnxruntime's ``quantize_static(..., quant_format=QuantFormat.QOperator)`` and int8 models from
model zoos hold fused quantized ops (``QLinearConv``, ``QLinearMatMul``, com.microsoft
``QGemm``, ``QLinearAdd``, ...) that TVM's importer does not know. Each is the composition
``Q(op(DQ(a), DQ(b), ...))`` of the float op between DequantizeLinear on its quantized inputs
and QuantizeLinear on its output; this pass writes that composition out, so the result is an
ordinary QDQ graph (what ``quantize`` emits and ``integerize`` matches). The rewrite is one
onnxscript rewrite rule per op kind (:mod:`.qoperator_rules`: pattern, a check that says why a
node is not expanded, rewrite); this module holds the op table and the pass.
"""

from __future__ import annotations

from typing import ClassVar

import onnx
import onnx_ir as ir

from optc.pipeline import Pass, PassResult, register_pass

MS = "com.microsoft"


def _key(node: onnx.NodeProto | ir.Node) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


# (domain, op) of the QOperator ops this pass expands -> the float op it wraps
EXPANDED: dict[tuple[str, str], str] = {
    ("", "QLinearConv"): "Conv",
    ("", "QLinearMatMul"): "MatMul",
    (MS, "QGemm"): "Gemm",
    (MS, "QLinearAdd"): "Add",
    (MS, "QLinearMul"): "Mul",
    (MS, "QLinearConcat"): "Concat",
    (MS, "QLinearGlobalAveragePool"): "GlobalAveragePool",
    (MS, "QLinearAveragePool"): "AveragePool",
    (MS, "QLinearLeakyRelu"): "LeakyRelu",
    (MS, "QLinearSigmoid"): "Sigmoid",
    (MS, "QLinearSoftmax"): "Softmax",
    (MS, "QLinearWhere"): "Where",
}


def qoperator_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of ``model``'s main graph that :class:`ExpandQOperator` expands."""
    return [n.name or n.output[0] for n in model.graph.node if _key(n) in EXPANDED]


def expand_qoperator_ir(model: ir.Model) -> dict:
    """Expand, in place, every QOperator node of ``model``'s main graph with the rewrite rules
    of :mod:`.qoperator_rules`; details: ``expanded`` (op type -> count) and ``skipped``
    (node -> why). The com.microsoft opset is dropped where no such node is left."""
    from .qoperator_rules import rules

    skipped: dict[str, str] = {}
    expanded: dict[str, int] = {}
    rules(model, skipped, expanded).apply_to_model(model)
    if expanded and not any(n.domain == MS for n in model.graph):
        model.graph.opset_imports.pop(MS, None)
        model.opset_imports.pop(MS, None)
    return {"expanded": expanded, "skipped": skipped}


def expand_qoperator(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy) with every QOperator node of its main graph expanded to QDQ form
    (:func:`expand_qoperator_ir`), at opset 13 or later (DequantizeLinear's ``axis``); and the
    details. Shapes are inferred first (QLinearSoftmax's plan reads its input's rank)."""
    from optc.onnx_utils import infer_shapes

    irm = ir.serde.deserialize_model(infer_shapes(onnx.ModelProto.FromString(model.SerializeToString())))
    details = expand_qoperator_ir(irm)
    out = ir.serde.serialize_model(irm)
    if details["expanded"] and any(op.domain in ("", "ai.onnx") and op.version < 13 for op in out.opset_import):
        out = onnx.version_converter.convert_version(out, 13)
    return out, details


@register_pass("expand-qoperator")
class ExpandQOperator(Pass):
    """QOperator ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...) -> the QDQ graph they compute.

    Assumes the quantization parameters are inputs of each node (scales per tensor, except
    per-channel weight scales, which must be constants). Guarantees: each ``QLinearX(a, s_a,
    z_a, ..., s_y, z_y)`` of :data:`EXPANDED` becomes ``QuantizeLinear(X(DQ(a, s_a, z_a), ...),
    s_y, z_y)`` writing the same output: per-channel weight scales keep their axis (0 for
    QLinearConv weights, the columns of B for QLinearMatMul/QGemm), the int32 bias of
    QLinearConv becomes ``DQ(bias, s_x * s_w, 0)`` (QGemm: ``alpha * s_a * s_b``), a QGemm
    without ``y_scale`` keeps its float output. Other attributes are copied (``channels_last``
    pools are skipped, with the reason in the details). Math: onnxruntime's kernels
    requantize the int32 accumulator with the float multiplier ``s_x s_w / s_y``; the QDQ
    form computes the same real value in float and rounds once, so codes agree up to rounding
    flips at .5 ties (lossy by rounding only). Running it again finds nothing to expand.
    """

    lossy: ClassVar[bool] = True

    def call(self, model: ir.Model) -> PassResult:
        proto = ir.serde.serialize_model(model)
        if not qoperator_nodes(proto):
            return PassResult(model, False, {"expanded": {}, "skipped": {}})
        out, details = expand_qoperator(proto)
        if not details["expanded"]:
            return PassResult(model, False, details)
        new = ir.serde.deserialize_model(out)
        model.graph = new.graph
        model.ir_version = max(model.ir_version, new.ir_version)
        return PassResult(model, True, details)

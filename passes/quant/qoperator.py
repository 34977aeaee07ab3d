"""QOperator -> QDQ: the ``expand-qoperator`` pass.

onnxruntime's ``quantize_static(..., quant_format=QuantFormat.QOperator)`` and int8 models from
model zoos hold fused quantized ops (``QLinearConv``, ``QLinearMatMul``, com.microsoft
``QGemm``, ``QLinearAdd``, ...) that TVM's importer does not know. Each is the composition
``Q(op(DQ(a), DQ(b), ...))`` of the float op between DequantizeLinear on its quantized inputs
and QuantizeLinear on its output; this pass writes that composition out, so the result is an
ordinary QDQ graph (what ``quantize`` emits and ``integerize`` matches).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from optc.onnx_utils import FreshNames
from optc.pipeline import Pass, PassResult, register_pass

MS = "com.microsoft"


def _key(node: onnx.NodeProto) -> tuple[str, str]:
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
}


def qoperator_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of ``model``'s main graph that :class:`ExpandQOperator` expands."""
    return [n.name or n.output[0] for n in model.graph.node if _key(n) in EXPANDED]


class _Graph:
    """Constants and fresh names of one graph, and the nodes that replace one QOperator node."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.fresh = FreshNames(model)
        self.fresh.used |= set(self.consts)
        self.new_inits: list[onnx.TensorProto] = []

    def size(self, name: str) -> int | None:
        """Number of elements of a constant, or of a graph input with a static shape (a scale
        given at run time is per-tensor when its shape says so); None when not known."""
        if name in self.consts:
            return int(self.consts[name].size)
        for v in self.model.graph.input:
            dims = v.type.tensor_type.shape.dim if v.name == name and v.type.HasField("tensor_type") else None
            if dims is not None and v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                return int(np.prod([d.dim_value for d in dims]))
        return None

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.consts[name] = value
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name


def _float32_scale(g: _Graph, out: list, scale: str, base: str) -> str:
    """A float16 / bfloat16 scale cast to float32: the expanded ops compute in float32 as
    onnxruntime's integer kernels do (float16 arithmetic rounds results one step off)."""
    if scale in g.consts:
        low = g.consts[scale].dtype == np.float16
    else:
        v = next((v for v in g.model.graph.input if v.name == scale), None)
        low = v is not None and v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if not low:
        return scale
    y = g.fresh(f"{base}_scale_f32")
    out.append(helper.make_node("Cast", [scale], [y], name=g.fresh(f"{base}_Cast"), to=onnx.TensorProto.FLOAT))
    return y


def _dq(g: _Graph, out: list, x: str, scale: str, zp: str, axis: int | None, base: str) -> str:
    scale = _float32_scale(g, out, scale, base)
    y = g.fresh(f"{base}_dq")
    attrs = {} if axis is None else {"axis": axis}
    out.append(helper.make_node("DequantizeLinear", [x, scale] + ([zp] if zp else []), [y],
                                name=g.fresh(f"{base}_DequantizeLinear"), **attrs))
    return y


def _q(g: _Graph, out: list, x: str, scale: str, zp: str, y: str, base: str) -> None:
    scale = _float32_scale(g, out, scale, base)
    out.append(helper.make_node("QuantizeLinear", [x, scale] + ([zp] if zp else []), [y],
                                name=g.fresh(f"{base}_QuantizeLinear")))


def _per_tensor(g: _Graph, *scales: str) -> str | None:
    """Why a scale that must be one number is not (None: all are)."""
    for s in scales:
        n = g.size(s)
        if n is not None and n != 1:
            return f"scale {s!r} has {n} values where one is expected"
    return None


def _attrs(node: onnx.NodeProto, drop: tuple[str, ...] = ()) -> list[onnx.AttributeProto]:
    return [a for a in node.attribute if a.name not in drop]


def _expand(g: _Graph, node: onnx.NodeProto) -> tuple[list[onnx.NodeProto] | None, str]:
    """The QDQ nodes equivalent to ``node``, or (None, why not)."""
    key, ins = _key(node), list(node.input) + [""] * 12
    base = node.name or node.output[0]
    fop = EXPANDED[key]
    out: list[onnx.NodeProto] = []

    def finish(float_inputs: list[str], attrs: list, y_scale: str, y_zp: str) -> list:
        y = g.fresh(f"{base}_float")
        f = helper.make_node(fop, float_inputs, [y], name=g.fresh(f"{base}_{fop}"))
        f.attribute.extend(attrs)
        out.append(f)
        _q(g, out, y, y_scale, y_zp, node.output[0], base)
        return out

    if key == ("", "QLinearConv"):
        x, xs, xz, w, ws, wz, ys, yz, b = ins[:9]
        if why := _per_tensor(g, xs, ys):
            return None, why
        nw = g.size(ws)
        if nw is None:
            return None, f"weight scale {ws!r} is not a constant"
        fx = _dq(g, out, x, xs, xz, None, f"{base}_x")
        fw = _dq(g, out, w, ws, wz, 0 if nw > 1 else None, f"{base}_w")
        inputs = [fx, fw]
        if b:
            if xs not in g.consts or ws not in g.consts:
                return None, f"input scale {xs!r} is not a constant (the bias scale is x_scale * w_scale)"
            scale = g.consts[xs].astype(np.float32).reshape(-1)[0] * g.consts[ws].astype(np.float32)
            bs = g.const(f"{base}_bias_scale", scale.reshape(-1 if nw > 1 else ()).astype(np.float32))
            inputs.append(_dq(g, out, b, bs, "", 0 if nw > 1 else None, f"{base}_b"))
        return finish(inputs, _attrs(node), ys, yz), ""

    if key == ("", "QLinearMatMul"):
        a, as_, az, b, bs, bz, ys, yz = ins[:8]
        if why := _per_tensor(g, as_, ys):
            return None, why
        nb = g.size(bs)
        if nb is None:
            return None, f"B scale {bs!r} is not a constant"
        axis = None
        if nb > 1:
            if b not in g.consts:
                return None, f"per-column scale of a B that is not a constant ({b!r})"
            axis = g.consts[b].ndim - 1  # one scale per column of B
        fa = _dq(g, out, a, as_, az, None, f"{base}_a")
        fb = _dq(g, out, b, bs, bz, axis, f"{base}_b")
        return finish([fa, fb], [], ys, yz), ""

    if key == (MS, "QGemm"):
        a, as_, az, b, bs, bz, c, ys, yz = ins[:9]
        if why := _per_tensor(g, as_, *([ys] if ys else [])):
            return None, why
        nb = g.size(bs)
        if nb is None:
            return None, f"B scale {bs!r} is not a constant"
        trans_b = next((a_.i for a_ in node.attribute if a_.name == "transB"), 0)
        alpha = next((a_.f for a_ in node.attribute if a_.name == "alpha"), 1.0)
        axis = None if nb == 1 else (0 if trans_b else 1)  # per column of op(B): rows of B when transposed
        fa = _dq(g, out, a, as_, az, None, f"{base}_a")
        fb = _dq(g, out, b, bs, bz, axis, f"{base}_b")
        inputs = [fa, fb]
        if c:  # int32, zero point 0, scale alpha * a_scale * b_scale
            if as_ not in g.consts or bs not in g.consts:
                return None, f"A scale {as_!r} is not a constant (the bias scale is alpha * a_scale * b_scale)"
            scale = np.float32(alpha) * g.consts[as_].astype(np.float32).reshape(-1)[0] * g.consts[bs].astype(np.float32)
            cs = g.const(f"{base}_bias_scale", scale.reshape(-1 if nb > 1 else ()).astype(np.float32))
            inputs.append(_dq(g, out, c, cs, "", None if nb == 1 else 0, f"{base}_c"))
        attrs = _attrs(node)
        if not ys:  # float output: the Gemm writes the node's output itself
            f = helper.make_node("Gemm", inputs, [node.output[0]], name=g.fresh(f"{base}_Gemm"))
            f.attribute.extend(attrs)
            return out + [f], ""
        return finish(inputs, attrs, ys, yz), ""

    if key in ((MS, "QLinearAdd"), (MS, "QLinearMul")):
        a, as_, az, b, bs, bz, ys, yz = ins[:8]
        if why := _per_tensor(g, as_, bs, ys):
            return None, why
        return finish([_dq(g, out, a, as_, az, None, f"{base}_a"), _dq(g, out, b, bs, bz, None, f"{base}_b")],
                      [], ys, yz), ""

    if key == (MS, "QLinearConcat"):
        ys, yz, rest = node.input[0], node.input[1], list(node.input[2:])
        if len(rest) % 3:
            return None, "inputs are not (X, scale, zero point) triples"
        if why := _per_tensor(g, ys, *rest[1::3]):
            return None, why
        fins = [_dq(g, out, rest[k], rest[k + 1], rest[k + 2], None, f"{base}_x{k // 3}")
                for k in range(0, len(rest), 3)]
        return finish(fins, _attrs(node), ys, yz), ""

    # unary: (X, X_scale, X_zp, Y_scale, Y_zp)
    x, xs, xz, ys, yz = ins[:5]
    if why := _per_tensor(g, xs, ys):
        return None, why
    if any(a.name == "channels_last" and a.i for a in node.attribute):
        return None, "channels_last=1 (NHWC) is not expanded"
    return finish([_dq(g, out, x, xs, xz, None, f"{base}_x")], _attrs(node, ("channels_last",)), ys, yz), ""


def expand_qoperator(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy) with every QOperator node of its main graph expanded to QDQ form;
    details: ``expanded`` (op type -> count) and ``skipped`` (node -> why)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    nodes: list[onnx.NodeProto] = []
    expanded: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for node in model.graph.node:
        if _key(node) not in EXPANDED:
            nodes.append(node)
            continue
        new, why = _expand(g, node)
        if new is None:
            skipped[node.name or node.output[0]] = f"{node.op_type}: {why}"
            nodes.append(node)
            continue
        nodes.extend(new)
        expanded[node.op_type] = expanded.get(node.op_type, 0) + 1
    if expanded:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(g.new_inits)
        for op in model.opset_import:  # DequantizeLinear with axis needs opset 13
            if op.domain in ("", "ai.onnx") and op.version < 13:
                model = onnx.version_converter.convert_version(model, 13)
                break
        still = {d for n in model.graph.node for d in [n.domain] if d not in ("", "ai.onnx")}
        kept = [op for op in model.opset_import if op.domain != MS or MS in still]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model, {"expanded": expanded, "skipped": skipped}


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

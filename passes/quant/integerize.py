"""The ``integerize`` pass: QDQ layers -> optc integer ops (``IntConv2d`` / ``IntDense`` /
``IntMatMul``).

Pattern (what the ``quantize`` pass writes, :mod:`.qdq`), per Conv / Gemm / MatMul node L::

    DQ(x_q; s_x, zp_x) -> L(., DQ(w_q int8; s_w, 0), [DQ(b_q int32; s_x*s_w, 0)]) [-> Relu | Clip] -> Q(.; s_y, zp_y)

becomes ``y_q = IntConv2d|IntDense(x_q, w_q, B, multiplier, shift)`` writing the tensor the
QuantizeLinear wrote, so chains of layers (``DQ(y_q)`` feeding the next layer) match one after
the other and the float DQ/Q pairs between integer layers disappear (DCE). A 1-D Conv (audio
front-ends, Whisper-style stems) becomes an ``IntConv2d`` over one row: ``Unsqueeze`` of
``x_q [B, C, L]`` to ``[B, C, 1, L]``, kernel ``[1, k]``, ``Squeeze`` back (exact: a reshape of
the codes). Ops between layers
that the pattern does not cover (Add of a residual, pooling, ...) keep reading ``DQ(y_q)``
and compute in float, as in the QDQ graph, except ``DQ(x_q) -> MaxPool -> Q`` with the same
scale, zero point and type on both sides: it becomes ``MaxPool(x_q)`` on the codes (exact: max
commutes with the monotone DQ/Q), and ``DQ(x_q) -> GlobalAveragePool -> Q`` into
``IntGlobalAveragePool`` (sum of the codes, fixed-point requantization; one step from the QDQ
graph at .5 boundaries); ``details["integer_pools"]`` lists both kinds.

A MatMul of two activations (attention's ``Q @ K^T`` and ``softmax(.) @ V``; ``quantize
<activation-matmul>`` or onnxruntime's ``quantize_static`` put Q/DQ on both operands)::

    DQ(a_q; s_a, zp_a), DQ(b_q; s_b, zp_b) -> MatMul [-> Relu | Clip] -> Q(.; s_y, zp_y)

becomes ``y_q = IntMatMul(a_q, b_q, multiplier, shift)`` (zero points as attributes, per-tensor
scales only, ranks 2-4 with broadcast batch dimensions, static shapes):
``acc = sum_k (a_q - zp_a)(b_q - zp_b)`` in int32 (refused where ``K * max|a - zp_a| *
max|b - zp_b|`` could reach 2^31), ``multiplier * 2^-shift = s_a * s_b / s_y``, the same
rounding and clamp as IntDense.

Math (per output channel n; contract in :mod:`.int_ops`):
``B[n] = b_q[n] - zp_x * sum(w_q[n])`` (zero point folded into the int32 bias, exact; padding
reads zp_x), ``multiplier * 2^-shift = s_x * s_w[n] / s_y`` (31-bit fixed point), rounding
half up, clamp to the output type, a fused Relu/Clip as the clamp bounds in the output's codes.

Layout: activations that only travel between group-1 and depthwise integer convs (through elementwise ops
such as a residual Add) are kept in NHWC, the layout the int8 kernels compute in, with a
Transpose where such a group meets another op (:func:`_assign_layouts`; ``nhwc=false`` keeps
NCHW everywhere). On ResNet-18 this leaves 2 Transposes and saves each conv its input
re-layout and output scatter.

Assumes a QDQ graph from ``quantize`` or any QDQ graph of that form, e.g. onnxruntime's
``quantize_static`` (QDQ format): the weight may also be a float constant behind a
QuantizeLinear with an int8 zero point (``AddQDQPairToWeight``; the codes are computed here as
onnxruntime's QuantizeLinear does), and the bias a float constant (``QuantizeBias=False``,
``quantize<quantize-bias=false>``): it is rounded to int32 on the accumulator grid
``s_x * s_w[n]``, which moves the layer's result by at most half an accumulator step (a
fraction ``m / 2`` of an output step, ``m = s_x * s_w / s_y``), a rounding flip like those
below. A fused Relu that the quantizer removed (onnxruntime drops it when the output
quantizer's range starts at 0) needs nothing: the clamp to the output type is the Relu.

Guarantees: every rewritten layer computes in integers; weights stay int8 initializers (int4:
int8 in [-7, 7]; asymmetric MatMul/Gemm weights - uint8 with a zero point, as onnxruntime's
``weight_type=QUInt8`` writes them, or int8 with a zero point - become int8 ``w - 128`` codes
and IntDense's ``W_zero_point`` input, the bias folding ``zp_x * sum(w - zp_w)``); a layer that does not match stays in float QDQ and
``details["float_layers"]`` says why (non-constant or non-8-bit weight, a Conv with a weight
zero point != 0 or uint8 weights, grouped conv other than depthwise, no output QuantizeLinear (``output-qdq=false`` on the last
layer), a weight MatMul of rank > 2, an activation MatMul with a per-channel operand scale, an
operand of rank outside 2-4 or not read through DequantizeLinear, non-constant parameters,
multiplier out of range, an int32
accumulator that could overflow, ...). Running it twice changes nothing the second time.

Numbers: the integer ops equal their numpy references bit for bit; against the QDQ graph
(float32 math, round half to even) an output code differs by one step where ``acc * m`` is
within float rounding of a .5 boundary, and such flips propagate through later layers.
Verification compares the artifact with this pass's output model (the numpy reference for
the integer ops), at the QDQ tolerance of :mod:`.tolerance` for the float parts in between.

How users get it: ``optc compile`` appends ``integerize`` to a pipeline that holds
``quantize``, and to any pipeline when the input model is already quantized (QDQ layers,
:func:`qdq_layers`), when the target's backend lowers these ops (CPU and ARM); write
``integerize<enabled=false>`` in the pipeline to keep the float QDQ graph. A pre-quantized
model's artifact is verified against this pass's output and against onnxruntime on the
original QDQ model (:func:`.tolerance.compare_to_original_qdq`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optc.onnx_utils import attr, graph_reads
from optc.passes.optc_ops import DOMAIN, VERSION
from optc.pipeline import Pass, PassResult, register_pass

from . import int_ops, qparams

__all__ = ["Integerize", "integerize_model", "INTEGER_OPS", "auto_integerize", "qdq_layers"]

INTEGER_OPS = tuple(f"{DOMAIN}::{t}" for t in int_ops.OP_TYPES)
_QTYPES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}  # code range per type


@dataclass
class _Graph:
    model: onnx.ModelProto
    inits: dict = field(default_factory=dict)
    producers: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)
    outputs: set = field(default_factory=set)

    @classmethod
    def of(cls, model):
        g = model.graph
        cons: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    cons.setdefault(i, []).append(n)
        return cls(model, {t.name: t for t in g.initializer}, {o: n for n in g.node for o in n.output if o}, cons,
                   {o.name for o in g.output})

    def const(self, name: str):
        if not name:
            return None
        t = self.inits.get(name)
        if t is not None:
            return numpy_helper.to_array(t)
        p = self.producers.get(name)
        if p is not None and p.op_type == "Constant" and len(p.attribute) == 1 and p.attribute[0].name == "value":
            return numpy_helper.to_array(p.attribute[0].t)
        return None


class _NoMatch(Exception):
    pass


def _dq(g: _Graph, name: str, what: str):
    """(quantized input name, scale array, zero point array, axis, node) of the DequantizeLinear
    producing ``name``."""
    node = g.producers.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        raise _NoMatch(f"{what} is not read through DequantizeLinear")
    scale = g.const(node.input[1])
    zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None:
        raise _NoMatch(f"{what}: DequantizeLinear scale is not a constant")
    return node.input[0], np.asarray(scale, np.float64), zp, attr(node, "axis", 1), node


def _match(g: _Graph, node) -> dict:
    """The rewrite of layer ``node``, or _NoMatch with the reason."""
    op = node.op_type
    if op == "Gemm":
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            raise _NoMatch("Gemm with transA or alpha/beta != 1")
    x_q, s_x, zp_x, _, _ = _dq(g, node.input[0], "activation")
    if s_x.size != 1:
        raise _NoMatch("per-channel activation scale")
    x_qt = zp_x.dtype if zp_x is not None else np.dtype(np.uint8)
    if x_qt not in (np.uint8, np.int8):
        raise _NoMatch(f"activation type {x_qt} (uint8/int8 only)")
    zx = int(np.asarray(zp_x).reshape(-1)[0]) if zp_x is not None else 0
    w_name, s_w, zp_w, w_axis, _ = _dq(g, node.input[1], "weight")
    w = g.const(w_name)
    if w is None:
        w = _folded_quantize(g, w_name)  # float weight -> QuantizeLinear (onnxruntime's AddQDQPairToWeight)
    if w is None or w.dtype not in (np.int8, np.uint8):
        raise _NoMatch("weight is not an 8-bit constant")
    asymmetric = w.dtype == np.uint8 or (zp_w is not None and np.any(zp_w != 0))
    if asymmetric and op == "Conv":
        raise _NoMatch("weight zero point != 0 or uint8 weight on a Conv (asymmetric weights: MatMul/Gemm only)")
    # canonical weight: Conv [N, C/g, KH, KW]; dense [N, K]
    if op == "Conv":
        n_axis = 0
        wk = w if w.ndim == 4 else w[:, :, None, :]  # a 1-D conv is a 2-D one over a single row
        if w.ndim not in (3, 4):
            raise _NoMatch("Conv that is not 1-D or 2-D")
    else:
        if w.ndim != 2:
            raise _NoMatch("MatMul/Gemm weight of rank != 2")
        trans_b = op == "Gemm" and bool(attr(node, "transB", 0))
        n_axis = 0 if trans_b else 1
        wk = w if trans_b else w.T
    n = wk.shape[0]
    if s_w.size == 1:
        s_w = np.full(n, float(s_w.reshape(-1)[0]))
    elif s_w.size != n or (w_axis % w.ndim) != n_axis:
        raise _NoMatch("weight scale is not per output channel")
    s_w = s_w.reshape(-1)
    wk, w_zp = _weight_zero_point(wk, zp_w, n) if asymmetric else (wk, None)
    bias, bias_from = None, None
    if len(node.input) > 2 and node.input[2] and _is_float_const(g, node.input[2]):
        # a float bias (onnxruntime's QuantizeBias=False, quantize<quantize-bias=false>): rounded
        # onto the accumulator grid s_x * s_w, as an int32 bias DequantizeLinear would hold it
        bf = np.asarray(g.const(node.input[2]), np.float32).reshape(-1)
        if bf.size == 1 and n > 1:
            bf = np.full(n, bf[0], np.float32)
        if bf.size != n:
            raise _NoMatch("bias shape")
        bq, _, fits = qparams.bias_qparams(bf, np.float32(s_x.reshape(-1)[0]), s_w.astype(np.float32))
        if not fits:
            raise _NoMatch("float bias does not fit int32 on the accumulator grid s_x * s_w")
        bias, bias_from = bq.astype(np.int64), "float bias rounded to int32 (step s_x * s_w)"
    elif len(node.input) > 2 and node.input[2]:
        b_name, s_b, zp_b, _, _ = _dq(g, node.input[2], "bias")
        bias = g.const(b_name)
        if bias is None or bias.dtype != np.int32:
            raise _NoMatch("bias is not an int32 constant")
        bias = bias.reshape(-1).astype(np.int64)
        if bias.size == 1 and n > 1:
            bias = np.full(n, bias[0])
        if bias.size != n:
            raise _NoMatch("bias shape")
        if zp_b is not None and np.any(zp_b != 0):
            raise _NoMatch("bias zero point != 0")
        s_b = np.broadcast_to(s_b.reshape(-1), (n,))
        if not np.allclose(s_b, np.float32(s_x.reshape(-1)[0]) * s_w.astype(np.float32), rtol=1e-5, atol=0):
            raise _NoMatch("bias scale != s_x * s_w")
    chain, nxt, s_y, zy, qmin, qmax, ttype = _output_quantizer(g, node)
    # requantization and the folded bias
    try:
        mult, shift = int_ops.fixed_point(float(s_x.reshape(-1)[0]) * s_w / s_y)
    except ValueError as err:
        raise _NoMatch(str(err)) from None
    wd = wk.reshape(n, -1).astype(np.int64) - (0 if w_zp is None else w_zp.astype(np.int64).reshape(-1, 1))
    b = (bias if bias is not None else np.zeros(n, np.int64)) - zx * wd.sum(1)
    k = int(np.prod(wk.shape[1:]))
    x_range = 255 if x_qt == np.uint8 else 128
    bound = k * x_range * int(np.abs(wd).max(initial=127)) + np.abs(b).max(initial=0)
    if bound > int_ops.ACC_LIMIT:  # bound includes max|b|
        raise _NoMatch("the int32 accumulator could overflow")
    attrs = {"x_zero_point": zx, "y_zero_point": zy, "out_min": int(qmin), "out_max": int(qmax), "to": int(ttype)}
    if op == "Conv":
        group = int(attr(node, "group", 1))
        c_in = wk.shape[1] * group
        if group != 1 and not (group == c_in == n and wk.shape[1] == 1):
            raise _NoMatch(f"grouped Conv (group {group}) other than depthwise")
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise _NoMatch("Conv with auto_pad")
        attrs.update(_conv_attrs(node, w.shape[2:]), group=group)
        op_type = "IntConv2d"
    else:
        op_type = "IntDense"
    return {"op_type": op_type, "x_q": x_q, "w": np.ascontiguousarray(wk.astype(np.int8)), "b": b.astype(np.int32),
            "mult": mult, "shift": shift, "attrs": attrs, "x_dtype": str(np.dtype(x_qt)), "out": nxt.output[0],
            "chain": chain, "bias_from": bias_from, "w_zp": w_zp, "one_d": op == "Conv" and w.ndim == 3}


def _output_quantizer(g: _Graph, node) -> tuple:
    """``node``'s output path ``[Relu | Clip] -> QuantizeLinear`` (per-tensor constant
    parameters): (nodes from ``node`` to the QuantizeLinear, the QuantizeLinear, s_y, zp_y, the
    clamp range in output codes (a fused Relu/Clip), the output TensorProto type), or _NoMatch."""
    out = node.output[0]
    users = g.consumers.get(out, [])
    lo, hi = -np.inf, np.inf
    chain = [node]
    if out in g.outputs or len(users) != 1:
        raise _NoMatch("layer output has no single QuantizeLinear reader (output-qdq=false?)")
    nxt = users[0]
    if nxt.op_type in ("Relu", "Clip"):
        if nxt.op_type == "Relu":
            lo = 0.0
        else:
            cmin = g.const(nxt.input[1]) if len(nxt.input) > 1 else None
            cmax = g.const(nxt.input[2]) if len(nxt.input) > 2 else None
            if (len(nxt.input) > 1 and nxt.input[1] and cmin is None) or (len(nxt.input) > 2 and nxt.input[2] and cmax is None):
                raise _NoMatch("Clip bounds are not constants")
            lo = float(cmin) if cmin is not None else attr(nxt, "min", -np.inf)
            hi = float(cmax) if cmax is not None else attr(nxt, "max", np.inf)
        chain.append(nxt)
        out = nxt.output[0]
        users = g.consumers.get(out, [])
        if out in g.outputs or len(users) != 1:
            raise _NoMatch("activation output has no single QuantizeLinear reader")
        nxt = users[0]
    if nxt.op_type != "QuantizeLinear":
        raise _NoMatch(f"layer output goes to {nxt.op_type}, not QuantizeLinear (output-qdq=false?)")
    s_y = g.const(nxt.input[1])
    zp_y = g.const(nxt.input[2]) if len(nxt.input) > 2 and nxt.input[2] else None
    if s_y is None or np.asarray(s_y).size != 1 or (zp_y is not None and np.asarray(zp_y).size != 1):
        raise _NoMatch("output QuantizeLinear parameters are not per-tensor constants")
    if len(nxt.input) > 2 and nxt.input[2] and zp_y is None:
        raise _NoMatch("output zero point is not a constant")
    y_dtype = np.asarray(zp_y).dtype if zp_y is not None else np.dtype(np.uint8)
    ttype = helper.np_dtype_to_tensor_dtype(y_dtype)
    if ttype not in _QTYPES:
        raise _NoMatch(f"output type {y_dtype}")
    qmin, qmax = _QTYPES[ttype]
    s_y = float(np.asarray(s_y).reshape(-1)[0])
    zy = int(np.asarray(zp_y).reshape(-1)[0]) if zp_y is not None else 0
    if np.isfinite(lo):
        qmin = max(qmin, zy + int(np.round(lo / s_y)))
    if np.isfinite(hi):
        qmax = min(qmax, zy + int(np.round(hi / s_y)))
    if qmin > qmax:
        raise _NoMatch("empty clamp range")
    chain.append(nxt)
    return chain, nxt, s_y, zy, qmin, qmax, ttype


def _is_activation_matmul(g: _Graph, node) -> bool:
    """A MatMul whose second operand is an activation too: neither a constant nor the
    dequantized codes of one (attention's ``Q @ K^T``, ``softmax(.) @ V``)."""
    if node.op_type != "MatMul" or len(node.input) != 2 or g.const(node.input[1]) is not None:
        return False
    p = g.producers.get(node.input[1])
    if p is None or p.op_type != "DequantizeLinear":
        return True
    return g.const(p.input[0]) is None and _folded_quantize(g, p.input[0]) is None


def _activation_operand(g: _Graph, name: str, what: str) -> tuple[str, float, int, np.dtype]:
    """(codes, scale, zero point, codes' dtype) of an activation MatMul operand read through a
    per-tensor DequantizeLinear of 8-bit codes, or _NoMatch."""
    q, scale, zp, _, _ = _dq(g, name, what)
    if scale.size != 1 or (zp is not None and np.asarray(zp).size != 1):
        raise _NoMatch(f"{what}: per-channel scale or zero point")
    dtype = np.asarray(zp).dtype if zp is not None else np.dtype(np.uint8)
    if dtype not in (np.uint8, np.int8):
        raise _NoMatch(f"{what}: codes of type {dtype} (uint8/int8 only)")
    return q, float(scale.reshape(-1)[0]), int(np.asarray(zp).reshape(-1)[0]) if zp is not None else 0, dtype


def _match_activation_matmul(g: _Graph, node, shapes: dict) -> dict:
    """The ``IntMatMul`` of ``DQ(a_q), DQ(b_q) -> MatMul [-> Relu|Clip] -> Q`` (ranks 2-4,
    static shapes, an int32 accumulator that cannot overflow), or _NoMatch with the reason."""
    a_q, s_a, z_a, a_dt = _activation_operand(g, node.input[0], "operand A")
    b_q, s_b, z_b, b_dt = _activation_operand(g, node.input[1], "operand B")
    sa, sb = shapes.get(a_q), shapes.get(b_q)
    if sa is None or sb is None:
        raise _NoMatch("activation MatMul operand shapes are not static")
    if not (2 <= len(sa) <= 4 and 2 <= len(sb) <= 4):
        raise _NoMatch("activation MatMul operand of rank outside 2-4")
    if int_ops.matmul_acc_bound(sa[-1], a_dt, z_a, b_dt, z_b) > int_ops.ACC_LIMIT:
        raise _NoMatch("the int32 accumulator could overflow")
    chain, nxt, s_y, zy, qmin, qmax, ttype = _output_quantizer(g, node)
    try:
        mult, shift = int_ops.fixed_point([s_a * s_b / s_y])
    except ValueError as err:
        raise _NoMatch(str(err)) from None
    attrs = {"a_zero_point": z_a, "b_zero_point": z_b, "y_zero_point": zy, "out_min": int(qmin),
             "out_max": int(qmax), "to": int(ttype)}
    return {"a_q": a_q, "b_q": b_q, "mult": mult, "shift": shift, "attrs": attrs, "out": nxt.output[0],
            "chain": chain, "dtypes": [str(np.dtype(a_dt)), str(np.dtype(b_dt))]}


def _rewrite_activation_matmul(g: _Graph, node, shapes: dict, fresh, replaced: dict, new_inits: list) -> dict:
    """Put the ``IntMatMul`` of ``node`` (:func:`_match_activation_matmul`) in ``replaced``,
    its multiplier and shift in ``new_inits``; returns the layer record."""
    m = _match_activation_matmul(g, node, shapes)
    lname = node.name or node.output[0]
    base = lname.replace("/", "_").strip("_") or "matmul"
    ins = [m["a_q"], m["b_q"]]
    for suffix, key in (("multiplier", "mult"), ("shift", "shift")):
        ins.append(fresh(f"{base}__int_{suffix}"))
        new_inits.append(numpy_helper.from_array(m[key], ins[-1]))
    for c in m["chain"]:
        replaced[id(c)] = None
    replaced[id(m["chain"][-1])] = helper.make_node("IntMatMul", ins, [m["out"]], name=fresh(f"{lname}/IntMatMul"),
                                                    domain=DOMAIN, **m["attrs"])
    return {"name": lname, "op": "IntMatMul", "operands": "activations",
            "fused_activation": m["chain"][1].op_type if len(m["chain"]) == 3 else None,
            "activation": m["dtypes"][0], "b_activation": m["dtypes"][1]}


def _conv_attrs(node, kernel: tuple) -> dict:
    """IntConv2d's geometry attributes of a 1-D or 2-D ONNX Conv (a 1-D one as one row: kernel
    ``[1, k]``, no padding, stride or dilation along the added height axis)."""
    ks = [int(v) for v in attr(node, "kernel_shape", kernel)]
    pads = [int(v) for v in attr(node, "pads", [0] * 2 * len(ks))]
    strides = [int(v) for v in attr(node, "strides", [1] * len(ks))]
    dilations = [int(v) for v in attr(node, "dilations", [1] * len(ks))]
    if len(ks) == 1:
        ks, pads, strides, dilations = [1, ks[0]], [0, pads[0], 0, pads[1]], [1, strides[0]], [1, dilations[0]]
    return {"kernel_shape": ks, "pads": pads, "strides": strides, "dilations": dilations}


def _one_row(model: onnx.ModelProto, x: str, y: str, fresh) -> tuple[list, str, str, onnx.TensorProto]:
    """Unsqueeze ``x [B, C, L]`` to ``[B, C, 1, L]`` and Squeeze the result back to ``y``: the
    nodes around the IntConv2d of a 1-D Conv, the names it reads and writes, and the axes
    initializer (an input from opset 13, an attribute before)."""
    x4, y4 = fresh(f"{x}__row"), fresh(f"{y}__row")
    axes = numpy_helper.from_array(np.array([2], np.int64), fresh(f"{y}__row_axes"))
    if _opset(model) >= 13:
        return [helper.make_node("Unsqueeze", [x, axes.name], [x4], name=fresh(f"{x4}/Unsqueeze")),
                helper.make_node("Squeeze", [y4, axes.name], [y], name=fresh(f"{y4}/Squeeze"))], x4, y4, axes
    return [helper.make_node("Unsqueeze", [x], [x4], name=fresh(f"{x4}/Unsqueeze"), axes=[2]),
            helper.make_node("Squeeze", [y4], [y], name=fresh(f"{y4}/Squeeze"), axes=[2])], x4, y4, None


def _weight_zero_point(wk: np.ndarray, zp_w, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric dense weights ``wk [N, K]`` (uint8, or int8 with a zero point; per tensor or
    per output feature) -> (int8 codes, int32 zero point ``[N]``) with the same differences
    ``w - zp``: uint8 codes and their zero point both move by -128 (IntDense's
    ``W_zero_point``)."""
    zp = np.zeros(n, np.int64) if zp_w is None else np.asarray(zp_w, np.int64).reshape(-1)
    if zp.size == 1:
        zp = np.full(n, zp[0])
    if zp.size != n:
        raise _NoMatch("weight zero point is not per tensor or per output feature")
    if wk.dtype == np.uint8:
        return (wk.astype(np.int16) - 128).astype(np.int8), (zp - 128).astype(np.int32)
    return wk, zp.astype(np.int32)


def _is_float_const(g: _Graph, name: str) -> bool:
    v = g.const(name)
    return v is not None and np.asarray(v).dtype.kind == "f"


def _folded_quantize(g: _Graph, name: str):
    """The int8 codes of ``name`` when a QuantizeLinear of constants writes it (a float weight
    quantized in the graph), computed as onnxruntime does (:func:`.qparams.quantize`); else None."""
    node = g.producers.get(name)
    if node is None or node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    x, s = g.const(node.input[0]), g.const(node.input[1])
    zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if x is None or s is None or np.asarray(x).dtype.kind != "f":
        return None
    if zp is None or np.asarray(zp).dtype != np.int8 or attr(node, "saturate", 1) != 1:
        return None  # uint8 (default) or float8 codes: not an int8 weight
    if any(a.name == "block_size" and a.i for a in node.attribute):
        return None
    axis = attr(node, "axis", 1) if np.asarray(s).size > 1 else None
    return qparams.quantize(x, s, zp, qparams.QType(8, True, -128, 127), axis)


_LAYER_OPS = ("Conv", "Gemm", "MatMul")


def integerize_model(model: onnx.ModelProto, nhwc: bool = True,
                     activation_matmul: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Rewrite every matching layer (see the module docstring); with ``nhwc``, keep activations
    between integer convolutions in NHWC (:func:`_assign_layouts`); without
    ``activation_matmul``, MatMuls of two activations stay QDQ (float). Returns (model, details)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    shapes = _static_shapes(model) if nhwc else {}
    g = _Graph.of(model)
    graph = model.graph
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}

    def fresh(base):
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        return name

    replaced, layers, float_layers = {}, [], []
    new_inits, int_bytes = [], 0
    for node in graph.node:
        if node.op_type not in _LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        lname = node.name or node.output[0]
        if _is_activation_matmul(g, node) and not activation_matmul:
            float_layers.append({"name": lname, "op": node.op_type, "reason": "activation MatMul "
                                 "(integerize<activation-matmul=false>)"})
            continue
        if _is_activation_matmul(g, node):
            shapes = shapes or _static_shapes(model)
            try:
                layers.append(_rewrite_activation_matmul(g, node, shapes, fresh, replaced, new_inits))
            except _NoMatch as why:
                float_layers.append({"name": lname, "op": node.op_type, "reason": str(why)})
            continue
        try:
            m = _match(g, node)
        except _NoMatch as why:
            float_layers.append({"name": lname, "op": node.op_type, "reason": str(why)})
            continue
        base = lname.replace("/", "_").strip("_") or "layer"
        ins = [m["x_q"]]
        params = [("w", m["w"]), ("bias", m["b"]), ("multiplier", m["mult"]), ("shift", m["shift"])]
        if m["w_zp"] is not None:
            params.append(("w_zero_point", m["w_zp"]))
        for suffix, arr in params:
            nm = fresh(f"{base}__int_{suffix}")
            new_inits.append(numpy_helper.from_array(arr, nm))
            int_bytes += arr.nbytes
            ins.append(nm)
        out = m["out"]
        if m["one_d"]:
            around, ins[0], out, axes = _one_row(model, ins[0], out, fresh)
            new_inits.extend([axes] if axes is not None else [])
        new = helper.make_node(m["op_type"], ins, [out], name=fresh(f"{lname}/{m['op_type']}"), domain=DOMAIN,
                               **m["attrs"])
        for c in m["chain"]:
            replaced[id(c)] = None
        replaced[id(m["chain"][-1])] = [around[0], new, around[1]] if m["one_d"] else new
        layers.append({"name": lname, "op": m["op_type"], "fused_activation": (m["chain"][1].op_type
                       if len(m["chain"]) == 3 else None),
                       "activation": m["x_dtype"],
                       "weight_range": [int(m["w"].min()), int(m["w"].max())],
                       **({"weight_zero_point": "per output feature (asymmetric weights)"} if m["w_zp"] is not None
                          else {}),
                       **({"bias": m["bias_from"]} if m["bias_from"] else {})})
    pools = _integer_pools(g, replaced, fresh)
    pools += _integer_gaps(g, replaced, fresh, new_inits)
    if not layers and not pools:
        return model, {"layers": [], "float_layers": float_layers}
    nodes = []
    for n in graph.node:
        if id(n) in replaced:
            r = replaced[id(n)]
            nodes.extend(r if isinstance(r, list) else [] if r is None else [r])
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    _dce(model)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    nhwc_tensors = _assign_layouts(model, shapes, fresh) if nhwc else []
    # value_info of removed intermediate float tensors (and of tensors now in NHWC) is stale:
    # keep only what still holds
    written = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    keep = [vi for vi in graph.value_info if vi.name in written and vi.name not in set(nhwc_tensors)]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return model, {"layers": layers, "float_layers": float_layers, "integer_layer_bytes": int_bytes,
                   "integer_pools": pools, "nhwc_tensors": len(nhwc_tensors),
                   "layout_transposes": sum(1 for n in graph.node if _TRANSPOSE_TAG in n.name)}


# Ops that compute each element from the elements at the same index (given same-shaped or
# scalar operands): the layout of their 4-D operands is theirs to follow.
_ELEMENTWISE = {"DequantizeLinear", "QuantizeLinear", "Relu", "Clip", "Add", "Sub", "Mul", "Div", "Max", "Min",
                "Identity", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Neg", "Abs"}
_TRANSPOSE_TAG = "/optc_layout"
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Fully static tensor shapes (ONNX shape inference through ``optc.analysis``)."""
    from optc.analysis import tensor_info

    return {name: tuple(shape) for name, (shape, _) in tensor_info(model).items()}


def _assign_layouts(model: onnx.ModelProto, shapes: dict, fresh) -> list[str]:
    """Keep activations between integer convolutions in NHWC, the layout optc's int8 kernels
    compute in, so a layer neither re-lays its input out nor scatters its output back.

    Tensors joined by elementwise ops (DQ/Q per tensor, Add of a residual, Relu, ...; every
    operand 4-D of the output's shape or a scalar) form a group that must share one layout.
    A group is switched to NHWC when the edges that read or write it natively (group-1 and
    depthwise ``IntConv2d`` inputs and outputs: attributes ``x_layout``/``y_layout``) outnumber
    twice the edges that need a ``Transpose`` (any other producer or consumer: MaxPool, a
    float op, ...). Groups touching a graph input or output stay NCHW. Returns
    the names of the tensors now in NHWC."""
    graph = model.graph
    g = _Graph.of(model)
    inits, producer, consumers = g.inits, g.producers, g.consumers
    io = {v.name for v in graph.input} | g.outputs

    def flexible(n) -> list[str] | None:
        """The 4-D operands (inputs and output) of an elementwise node, or None."""
        if n.domain not in ("", "ai.onnx") or n.op_type not in _ELEMENTWISE or len(n.output) != 1:
            return None
        out_shape = shapes.get(n.output[0])
        if out_shape is None or len(out_shape) != 4:
            return None
        data = []
        for i in n.input:
            if not i:
                continue
            constant = i in inits or getattr(producer.get(i), "op_type", "") == "Constant"
            if constant and shapes.get(i) is not None and int(np.prod(shapes[i])) == 1:
                continue  # scalar parameter (scale, zero point, Clip bound, constant)
            if shapes.get(i) != out_shape or i in inits:
                return None
            data.append(i)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and (not data or data[0] != n.input[0]):
            return None
        return [*data, n.output[0]]

    def conv(n) -> bool:
        """An IntConv2d whose kernels read and write either layout: group 1, or depthwise (one
        input channel per group: the channels-last depthwise kernel)."""
        if n.domain != DOMAIN or n.op_type != "IntConv2d":
            return False
        group = int(attr(n, "group", 1))
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        return group == 1 or (w is not None and len(w.dims) == 4 and w.dims[0] == group and w.dims[1] == 1)

    def reads_nhwc(n, t) -> bool:
        """``n`` reads tensor ``t`` in either layout (group-1 IntConv2d, IntGlobalAveragePool)."""
        return bool(n.input) and n.input[0] == t and (conv(n) or (n.domain == DOMAIN and n.op_type == "IntGlobalAveragePool"))

    parent: dict[str, str] = {}

    def find(t):
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for n in graph.node:
        ops = flexible(n)
        if ops:
            for t in ops[1:]:
                parent[find(t)] = find(ops[0])
        elif conv(n):
            find(n.input[0])
            find(n.output[0])
    groups: dict[str, list[str]] = {}
    for t in list(parent):
        groups.setdefault(find(t), []).append(t)
    flex = {id(n) for n in graph.node if flexible(n)}
    nhwc: set[str] = set()
    for members in groups.values():
        if any(t in io for t in members):
            continue
        good = bad = 0
        for t in members:
            p = producer.get(t)
            if p is None or id(p) in flex:
                pass
            elif conv(p):
                good += 1
            else:
                bad += 1
            for c in consumers.get(t, []):
                if id(c) in flex:
                    continue
                if reads_nhwc(c, t):
                    good += 1
                else:
                    bad += 1
        if good > 2 * bad:
            nhwc.update(members)
    if not nhwc:
        return []
    nodes = []
    to_nchw: dict[str, str] = {}
    for n in graph.node:
        if n.input and reads_nhwc(n, n.input[0]) and n.input[0] in nhwc:
            n.attribute.append(helper.make_attribute("x_layout", "NHWC"))
        if conv(n):
            if n.output[0] in nhwc:
                n.attribute.append(helper.make_attribute("y_layout", "NHWC"))
        # a reader of an NHWC tensor that is not part of its group reads an NCHW copy
        if id(n) not in flex and not conv(n):
            for k, i in enumerate(n.input):
                if i in nhwc and not (k == 0 and reads_nhwc(n, i)):
                    n.input[k] = to_nchw[i]
        elif conv(n):
            for k, i in enumerate(n.input[1:], 1):
                if i in nhwc:
                    n.input[k] = to_nchw[i]
        # a writer of an NHWC tensor that is not part of its group writes NCHW, then transposes
        outs = list(n.output)
        nodes.append(n)
        if id(n) not in flex and not conv(n):
            for k, o in enumerate(outs):
                if o in nhwc:
                    n.output[k] = to_nchw[o] = fresh(f"{o}__nchw")  # other readers take the NCHW original
                    nodes.append(helper.make_node("Transpose", [to_nchw[o]], [o], perm=_TO_NHWC,
                                                  name=fresh(f"{o}{_TRANSPOSE_TAG}")))
        for o in outs:
            if o in nhwc and o not in to_nchw and any(id(c) not in flex and not reads_nhwc(c, o)
                                                      for c in consumers.get(o, [])):
                to_nchw[o] = fresh(f"{o}__nchw")
                nodes.append(helper.make_node("Transpose", [o], [to_nchw[o]], perm=_TO_NCHW,
                                              name=fresh(f"{o}{_TRANSPOSE_TAG}")))
    del graph.node[:]
    graph.node.extend(nodes)
    return sorted(nhwc)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _integer_pools(g: _Graph, replaced: dict, fresh) -> list[str]:
    """``DQ(x_q; s, zp) -> MaxPool -> Q(s, zp)`` (same scale, zero point and type) becomes
    ``MaxPool(x_q)`` on the codes, writing the tensor Q wrote. Exact: DQ and Q are monotone and
    Q(DQ(c)) = c, so the max of the codes is the code of the max; a window always holds at
    least one real element (pads < kernel, no ceil_mode), so padding never wins. Returns the
    names of the rewritten pools (``replaced`` gets the new nodes)."""
    if _opset(g.model) < 12:  # MaxPool on uint8/int8 since opset 12
        return []
    done = []
    for node in g.model.graph.node:
        if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx") or id(node) in replaced:
            continue
        if len(node.output) != 1 or attr(node, "ceil_mode", 0) or attr(node, "storage_order", 0):
            continue
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        ks = list(attr(node, "kernel_shape", []))
        pads = list(attr(node, "pads", [0] * (2 * len(ks))))
        if not ks or any(p >= k for p, k in zip(pads, ks + ks)):
            continue
        try:
            x_q, s_x, zp_x, _, _ = _dq(g, node.input[0], "pool input")
        except _NoMatch:
            continue
        users = g.consumers.get(node.output[0], [])
        if node.output[0] in g.outputs or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        qn = users[0]
        s_y = g.const(qn.input[1])
        zp_y = g.const(qn.input[2]) if len(qn.input) > 2 and qn.input[2] else None
        if s_x.size != 1 or s_y is None or np.asarray(s_y).size != 1 or \
                np.float32(s_x.reshape(-1)[0]) != np.float32(np.asarray(s_y).reshape(-1)[0]):
            continue
        if zp_x is None or zp_y is None:  # the codes' type is then not known here: leave it
            continue
        zx, zy = np.asarray(zp_x).reshape(-1), np.asarray(zp_y).reshape(-1)
        if zx.size != 1 or zy.size != 1 or zx.dtype != zy.dtype or zx[0] != zy[0] or \
                zx.dtype not in (np.uint8, np.int8):
            continue
        new = helper.make_node("MaxPool", [x_q], [qn.output[0]], name=fresh(f"{node.name or node.output[0]}/int"))
        new.attribute.extend(a for a in node.attribute if a.name != "storage_order")
        replaced[id(node)] = None
        replaced[id(qn)] = new
        done.append(node.name or node.output[0])
    return done


def _integer_gaps(g: _Graph, replaced: dict, fresh, new_inits: list) -> list[str]:
    """``DQ(x_q; s_x, zp_x) -> GlobalAveragePool -> Q(s_y, zp_y)`` (per-tensor, static H x W)
    becomes ``IntGlobalAveragePool(x_q)``: the sum of the codes minus ``H*W*zp_x`` in int32,
    requantized by the fixed point of ``s_x / (s_y * H * W)`` (:mod:`.int_ops`) - no float
    island between integer layers. Against the QDQ graph an output may differ by one step where
    the mean lands on a .5 boundary (half up here, half to even in QuantizeLinear)."""
    shapes = None
    done = []
    for node in g.model.graph.node:
        if node.op_type != "GlobalAveragePool" or node.domain not in ("", "ai.onnx") or id(node) in replaced:
            continue
        try:
            x_q, s_x, zp_x, _, _ = _dq(g, node.input[0], "pool input")
        except _NoMatch:
            continue
        chain, qn = _to_quantize(g, node.output[0])  # reshapes between the pool and its Q
        if qn is None:
            continue
        s_y = g.const(qn.input[1])
        zp_y = g.const(qn.input[2]) if len(qn.input) > 2 and qn.input[2] else None
        if s_x.size != 1 or s_y is None or np.asarray(s_y).size != 1 or zp_y is None or \
                np.asarray(zp_y).dtype not in (np.uint8, np.int8) or (zp_x is not None and np.asarray(zp_x).size != 1):
            continue
        shapes = shapes if shapes is not None else _static_shapes(g.model)
        shape = shapes.get(x_q)
        if shape is None or len(shape) != 4:
            continue
        try:
            mult, shift = int_ops.fixed_point([float(s_x.reshape(-1)[0]) /
                                               (float(np.asarray(s_y).reshape(-1)[0]) * shape[2] * shape[3])])
        except ValueError:
            continue
        base = (node.name or node.output[0]).replace("/", "_").strip("_") or "gap"
        ins = [x_q]
        for suffix, arr in (("multiplier", mult), ("shift", shift)):
            ins.append(fresh(f"{base}__int_{suffix}"))
            new_inits.append(numpy_helper.from_array(arr, ins[-1]))
        out_dtype = np.asarray(zp_y).dtype
        info = np.iinfo(out_dtype)
        codes = qn.output[0] if not chain else fresh(f"{node.output[0]}__codes")
        new = helper.make_node("IntGlobalAveragePool", ins, [codes], name=fresh(f"{base}/int"), domain=DOMAIN,
                               x_zero_point=int(np.asarray(zp_x).reshape(-1)[0]) if zp_x is not None else 0,
                               y_zero_point=int(np.asarray(zp_y).reshape(-1)[0]), out_min=int(info.min),
                               out_max=int(info.max),
                               to=TensorProto.UINT8 if out_dtype == np.uint8 else TensorProto.INT8)
        replaced[id(node)] = new
        replaced[id(qn)] = None
        for k, c in enumerate(chain):  # the reshapes now carry codes: fresh tensor names
            out = qn.output[0] if k == len(chain) - 1 else fresh(f"{c.output[0]}__codes")
            moved = helper.make_node(c.op_type, [codes, *c.input[1:]], [out], name=c.name, domain=c.domain)
            moved.attribute.extend(c.attribute)
            replaced[id(c)] = moved
            codes = out
        done.append(node.name or node.output[0])
    return done


def _to_quantize(g: _Graph, tensor: str, limit: int = 4):
    """(value-preserving single-reader reshapes after ``tensor``, the QuantizeLinear they end
    in), or ([], None) when the path does not end in one."""
    from .qdq import VALUE_PRESERVING

    chain = []
    for _ in range(limit + 1):
        users = g.consumers.get(tensor, [])
        if tensor in g.outputs or len(users) != 1:
            return [], None
        user = users[0]
        if user.op_type == "QuantizeLinear":
            return chain, user
        if user.op_type not in VALUE_PRESERVING or user.op_type == "MaxPool" or user.input[0] != tensor or \
                len(user.output) != 1:
            return [], None
        chain.append(user)
        tensor = user.output[0]
    return [], None


def _dce(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads, then unread initializers (bounded: one sweep per
    node at most). Reads inside subgraphs (an If branch reading an outer-scope value) count."""
    graph = model.graph
    for _ in range(len(graph.node) + 1):
        used = graph_reads(graph)
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = graph_reads(graph)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def qdq_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of ``model`` that read both their activation and
    their weight through DequantizeLinear: the layers of a QDQ graph, whichever tool wrote it
    (optc's ``quantize``, onnxruntime's ``quantize_static``, ...)."""
    producers = {o: n for n in model.graph.node for o in n.output if o}

    def dq(name: str) -> bool:
        p = producers.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx")

    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type in _LAYER_OPS and n.domain in ("", "ai.onnx") and len(n.input) > 1
            and dq(n.input[0]) and dq(n.input[1])]


def auto_integerize(specs: list, target, backend, model: onnx.ModelProto | None = None) -> list:
    """``optc compile``'s rule: ``specs`` with ``integerize`` appended when the pipeline
    quantizes or the input ``model`` is already quantized (QDQ pairs around its layers:
    :func:`qdq_layers`), the pipeline does not name integerize itself, the target is an LLVM
    CPU (x86 or ARM: the integer kernels are CPU kernels) and its backend lowers the integer
    ops. ``compile`` applies it before loading (pipeline) and again once the model is loaded;
    the recorded pipeline then names it, so the build replays as is."""
    from optc.pipeline import PassSpec

    names = [s.name for s in specs]
    wanted = "quantize" in names or (model is not None and bool(qdq_layers(model)))
    if not wanted or "integerize" in names or (target.tvm or {}).get("kind") != "llvm":
        return specs
    if not all(op in set(backend.supported_ops()) for op in INTEGER_OPS):
        return specs
    return [*specs, PassSpec("integerize")]


@register_pass("integerize")
class Integerize(Pass):
    """QDQ Conv/Gemm/MatMul layers -> int8 x int8 -> int32 ops with fixed-point requantization.

    Assumes a QDQ graph (``quantize`` first). Guarantees: matched ``DQ -> layer [-> Relu|Clip]
    -> Q`` chains become ``ai.optc`` ``IntConv2d``/``IntDense`` (integer arithmetic, int8
    weights, int32 bias with the input zero point folded in, rounding half up), MatMuls of two
    dequantized activations (attention) ``IntMatMul``; other layers
    stay QDQ (the details say why); activations between integer convs are kept NHWC
    (``nhwc=false``: NCHW). Lossy against the QDQ graph by rounding only: codes differ
    by one step at .5 ties (see ``optc.passes.quant.integerize``). ``optc compile`` appends it
    after ``quantize``, or to any pipeline for an input model that is already QDQ, for CPU/ARM
    targets; ``integerize<enabled=false>`` keeps float QDQ.
    """

    lossy: ClassVar[bool] = True

    enabled: bool = field(default=True, metadata={"doc": "false: leave the QDQ graph as is (float compute in TVM)"})
    nhwc: bool = field(default=True, metadata={"doc": "keep activations between integer convs in NHWC (the "
                                                      "kernels' layout; Transposes only at group edges); "
                                                      "false: NCHW everywhere"})
    activation_matmul: bool = field(default=True, metadata={"doc": "MatMuls of two dequantized activations "
                                                                   "(attention) -> IntMatMul; false: they "
                                                                   "stay QDQ (float)"})

    def call(self, model: ir.Model) -> PassResult:
        if not self.enabled:
            return PassResult(model, False, {"enabled": False})
        proto = ir.serde.serialize_model(model)
        out, details = integerize_model(proto, nhwc=self.nhwc, activation_matmul=self.activation_matmul)
        from .subgraphs import integerize_branches  # layers inside If branches
        out, details = integerize_branches(out, details, lambda m: integerize_model(m, nhwc=self.nhwc))
        if not details["layers"] and not details.get("integer_pools") and not details.get("branches"):
            return PassResult(model, False, details)
        new = ir.serde.deserialize_model(out)
        model.graph = new.graph  # opset imports live on the graph in onnx-ir
        return PassResult(model, True, details)

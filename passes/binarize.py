"""Binarization passes: BatchNorm+Sign -> thresholds, then binary / k-bit layers -> packed
bit-serial operators in the ``ai.optc`` domain (see :mod:`optc.passes.optc_ops` for the op
contract and the numpy references).

Two separate, checkable steps (FINN's ``ConvertSignToThres`` then
``ConvertBipolarMatMulToXnorPopcount``); the local rewrites of ``sign-to-threshold`` and
``fuse-binary-threshold`` are onnxscript rewrite rules (:mod:`optc.passes.binary_rules`):

``sign-to-threshold``
    ``Sign(BatchNormalization(x))`` -> ``ai.optc::SignThreshold(x, T, D)``. Per channel c, with
    sigma = sqrt(var + eps): BN(x) = gamma (x - mean) / sigma + beta, so for gamma > 0,
    Sign(BN(x)) = +1 iff x > T = mean - beta * sigma / gamma, and for gamma < 0 iff x < T
    (D = sign(gamma) flips the comparison). A channel with gamma = 0 is constant: T = -inf
    (beta > 0) or +inf (beta < 0). Exact except where BN(x) is 0 or within fp32 rounding of
    0 (Sign gives 0 there; the threshold gives +-1).

``binarize``
    ``Gemm`` / ``MatMul`` / ``Conv`` whose weight is a constant and whose activation input is
    known to be binary or k-bit are replaced by one op computing the same numbers with
    xor/and + popcount on packed words:

    * **binary** (bipolar activations and weights with two values +-alpha_n per output
      channel n): ``BinaryDense`` / ``BinaryConv2d``. The activation is bipolar when it comes
      from ``Sign`` or ``SignThreshold``, possibly through MaxPool/Flatten/Reshape/Transpose.
      sum_k a_k w_nk = alpha_n (K - 2 popcount(abits xor wbits_n)), exact in integers.
    * **k-bit** (activations from a uniform fake-quantizer with codes in [0, 2^ab - 1]:
      ``Mul(Round(Div(Clip(x, 0, hi), s)), s)``, ``Mul(Clip(Round(Div(x, s)), 0, qmax), s)``
      or ``DequantizeLinear(QuantizeLinear(x, s, 0), s, 0)``; weights on a uniform grid per
      output channel, ``w = scale_n q + offset_n`` with q in [0, 2^wb - 1]):
      ``BitserialDense`` / ``BitserialConv2d`` (sum over bit planes of 2^(i+j) popcount(A_i and
      W_j)). Binary weights with k-bit activations are the wb = 1 case.

    The rewrite keeps every number: the integer part is exact, the float scaling is one
    multiply-add per output (same result up to fp32 rounding). A layer that does not match
    is left alone and ``details["skipped"]`` says why.

    Then (``fold-scales``, default on) a binary op whose output is read only by thresholds
    (SignThreshold, or Sign, possibly through MaxPool) loses its ``alpha`` and bias: with
    y = alpha x + b and alpha > 0, D y >= D T  <=>  D x >= D ceil/floor((T - b) / alpha), so the
    op outputs the exact integer dot and the threshold becomes an integer (FINN's integer
    thresholds; an FPGA needs no multiplier there). A Sign read this way becomes a
    SignThreshold with the same tie caveat as ``sign-to-threshold`` (Sign(0) = 0).

``fuse-binary-threshold`` (for code generators: the TVM CPU/ARM builds)
    ``BinaryConv2d -> SignThreshold [-> MaxPool]`` -> ``BinaryConv2dThreshold`` (FINN's MVTU
    with thresholds): the comparison with the integer thresholds and a following
    non-overlapping max-pool move into the conv's epilogue. Exact: MaxPool of +-1 values is the
    OR of the comparisons. Needs fold-scales (no alpha/bias on the conv). Kept separate from
    ``binarize`` so backends that want the unfused ops (the FPGA generator) still get them.

``binarize<post-training>`` (lossy)
    First turns a float model into a binary one: every Conv/Gemm/MatMul with constant weights
    (except the first and last, unless ``keep-first-last=false``) gets weights
    alpha_n sign(w) with alpha_n = mean |w_n|, and a ``Sign`` on its input (placed before a
    feeding ReLU: Sign(z) instead of Sign(ReLU(z))); then the rewrite above. This changes the
    model's outputs: the pass is marked lossy; measure the cost with ``optc compile --eval``.
"""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from optc.onnx_utils import attr
from optc.pipeline import Pass, PassResult, register_pass

from . import optc_ops as ops

PASS_THROUGH = {"MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze"}
BIPOLAR_SOURCES = {("", "Sign"), (ops.DOMAIN, "SignThreshold")}
LAYER_OPS = {"Conv", "Gemm", "MatMul"}


# ---------------------------------------------------------------------------------------------
# small IR helpers


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    t = value.const_value
    if t is None:
        t = ir.convenience.get_const_tensor(value)
    return None if t is None else np.asarray(t.numpy())


def _key(node: ir.Node) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                 const_value=ir.tensor(array, name=name))
    graph.register_initializer(v)
    return v


def _ensure_opset(graph: ir.Graph) -> None:
    graph.opset_imports.setdefault(ops.DOMAIN, ops.VERSION)


def _replace(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node]) -> None:
    """Insert ``new_nodes`` after ``old``; the last one's output takes over old's output."""
    ir.convenience.replace_nodes_and_values(graph, old, [old], new_nodes, [old.outputs[0]],
                                            [new_nodes[-1].outputs[0]])


def _trace_through(value: ir.Value) -> tuple[ir.Node | None, list[ir.Node]]:
    """The first producer of ``value`` that is not a pass-through op, and the pass-through chain."""
    chain = []
    node = value.producer()
    while node is not None and _key(node) in {("", op) for op in PASS_THROUGH}:
        chain.append(node)
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    return node, chain


def is_bipolar(value: ir.Value) -> bool:
    """True if every element of ``value`` is +-1 (Sign: also 0 for an exact-0 input)."""
    node, _ = _trace_through(value)
    return node is not None and _key(node) in BIPOLAR_SOURCES


def act_quantizer(value: ir.Value) -> tuple[float, int] | str:
    """``(scale, max code)`` if ``value`` is the output of a recognised unsigned uniform
    fake-quantizer (through pass-through ops), else the reason it is not."""
    node, _ = _trace_through(value)
    if node is None:
        return "activation is a graph input"
    op = _key(node)
    if op == ("", "DequantizeLinear"):
        return _qdq_quantizer(node)
    if op != ("", "Mul"):
        return f"activation comes from {node.op_type}, not Sign/SignThreshold or a fake-quantizer"
    a, b = node.inputs[0], node.inputs[1]
    s = _const(b)
    inner = a
    if s is None:
        s, inner = _const(a), b
    if s is None or s.size != 1 or not float(s.reshape(-1)[0]) > 0:
        return "Mul is not a multiplication by a positive scalar constant"
    s = np.float32(s.reshape(-1)[0])
    p = inner.producer()
    if p is None:
        return "Mul input is not computed"
    if _key(p) == ("", "Round"):  # Mul(Round(Div(Clip(x, lo, hi), s)), s)
        d = p.inputs[0].producer()
        if d is None or _key(d) != ("", "Div") or _scalar(d.inputs[1]) != s:
            return "Round input is not a division by the same scale"
        c = d.inputs[0].producer()
        lo, hi = _clip_bounds(c)
        if lo is None or lo < 0 or hi is None:
            return "quantizer input is not clipped to [lo >= 0, hi]"
        qmax = int(np.round(np.float32(hi) / s))
        return float(s), qmax
    if _key(p) == ("", "Clip"):  # Mul(Clip(Round(Div(x, s)), lo, hi), s)
        lo, hi = _clip_bounds(p)
        r = p.inputs[0].producer()
        if r is None or _key(r) != ("", "Round"):
            return "Clip input is not Round"
        d = r.inputs[0].producer()
        if d is None or _key(d) != ("", "Div") or _scalar(d.inputs[1]) != s:
            return "Round input is not a division by the same scale"
        if lo is None or lo < 0 or hi is None or hi != np.floor(hi) or lo != np.floor(lo):
            return "code clip bounds are not integers >= 0"
        return float(s), int(hi)
    return f"Mul input comes from {p.op_type}, not a recognised quantizer"


def _scalar(value: ir.Value | None) -> np.float32 | None:
    c = _const(value)
    return None if c is None or c.size != 1 else np.float32(c.reshape(-1)[0])


def _clip_bounds(node: ir.Node | None) -> tuple[float | None, float | None]:
    if node is None:
        return None, None
    if _key(node) == ("", "Relu"):
        return 0.0, None
    if _key(node) != ("", "Clip"):
        return None, None
    if len(node.inputs) > 1 or "min" in node.attributes:  # opset >= 11 inputs, older attributes
        lo = _scalar(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else attr(node, "min")
        hi = _scalar(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else attr(node, "max")
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))
    return None, None


def _qdq_quantizer(dq: ir.Node) -> tuple[float, int] | str:
    q = dq.inputs[0].producer()
    if q is None or _key(q) != ("", "QuantizeLinear"):
        return "DequantizeLinear input is not QuantizeLinear"
    s1, s2 = _scalar(q.inputs[1]), _scalar(dq.inputs[1])
    z1 = _const(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else np.zeros((), np.uint8)
    z2 = _const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros((), np.uint8)
    if s1 is None or s1 != s2 or not s1 > 0:
        return "QuantizeLinear/DequantizeLinear scales differ or are not positive scalars"
    if z1 is None or z2 is None or z1.size != 1 or z2.size != 1 or int(z1.reshape(-1)[0]) or int(z2.reshape(-1)[0]):
        return "zero point is not 0"
    if z1.dtype != np.uint8:
        return f"quantized type is {z1.dtype}, not uint8"
    qmax = 255
    lo, hi = _clip_bounds(q.inputs[0].producer())
    if hi is not None:
        qmax = min(qmax, int(np.round(np.float32(hi) / s1)))
    return float(s1), qmax


def binary_weights(w2: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """``(signs >= 0 as bool [N, K], alpha [N])`` if every row of ``w2`` takes only the values
    +-alpha_n, else the reason."""
    a = np.abs(w2)
    alpha = a.max(axis=1)
    bad = np.flatnonzero(np.any(a != alpha[:, None], axis=1))
    if bad.size:
        n = int(bad[0])
        k = len(np.unique(w2[n]))
        return f"weights are not two values +-alpha per output channel (channel {n} has {k} distinct values)"
    return w2 >= 0, alpha.astype(np.float32)


def uniform_grid(w2: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | str:
    """``(codes int64 [N, K], scale [N], offset [N], bits)`` with ``w = scale_n * q + offset_n``
    (to fp32 precision) and ``q < 2^bits <= 2^max_bits``, else the reason."""
    n_rows = w2.shape[0]
    codes = np.zeros(w2.shape, np.int64)
    scale = np.ones(n_rows, np.float64)
    offset = np.zeros(n_rows, np.float64)
    top = 0
    limit = (1 << max_bits) - 1
    for n in range(n_rows):
        row = w2[n].astype(np.float64)
        u = np.unique(row)
        if len(u) > limit + 1:
            return f"channel {n} has {len(u)} distinct weight values (> 2^{max_bits})"
        offset[n] = u[0]
        if len(u) == 1:
            continue
        step0 = np.diff(u).min()
        lv = np.round((u - u[0]) / step0)
        if np.max(np.abs(u - u[0] - lv * step0)) > 1e-3 * step0:
            return f"channel {n}: weights are not on a uniform grid"
        step = float(np.sum((u - u[0]) * lv) / np.sum(lv * lv))
        q = np.round((row - u[0]) / step).astype(np.int64)
        if q.max() > limit:
            return f"channel {n} needs {int(q.max()).bit_length()} bits (> {max_bits})"
        err = np.max(np.abs(step * q + u[0] - row))
        if err > 1e-5 * max(np.max(np.abs(row)), 1e-30):
            return f"channel {n}: weights are not on a uniform grid (error {err:.3g})"
        scale[n] = step
        codes[n] = q
        top = max(top, int(q.max()))
    bits = max(1, top.bit_length())
    return codes, scale.astype(np.float32), offset.astype(np.float32), bits


# ---------------------------------------------------------------------------------------------
# sign-to-threshold


def bn_thresholds(gamma, beta, mean, var, eps) -> tuple[np.ndarray, np.ndarray] | str:
    """Per-channel (T, D) with Sign(BN(x)) == +1 iff D x >= D T (up to ties), float32."""
    g, b, m, v = (np.asarray(a, np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    sigma = np.sqrt(v + float(eps))
    both_zero = (g == 0) & (b == 0)
    if both_zero.any():
        return f"channel {int(np.flatnonzero(both_zero)[0])} has gamma = beta = 0 (Sign is 0 there)"
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(g != 0, m - b * sigma / np.where(g != 0, g, 1.0), np.where(b > 0, -np.inf, np.inf))
    d = np.where(g < 0, -1.0, 1.0)
    return t.astype(np.float32), d.astype(np.float32)


@register_pass("sign-to-threshold")
class SignToThreshold(Pass):
    """Fold BatchNormalization followed by Sign into a per-channel threshold (SignThreshold).

    Assumes: inference-mode BatchNormalization with constant parameters. Guarantees: the
    output is +-1 where the original is +-1, except for inputs within fp32 rounding of the
    threshold (there Sign gives 0 or may round the other way). A BatchNormalization left without
    consumers is removed. Math: see the module docstring.
    """

    compression: ClassVar[bool] = True
    # it folds the BatchNorms into thresholds itself: fuse-bn must not fold them into the convs
    cleanup_conflicts: ClassVar[frozenset[str]] = frozenset({"fuse-bn"})

    def call(self, model: ir.Model) -> PassResult:
        from .binary_rules import remove_unread, sign_to_threshold_rules

        skipped: list[str] = []
        batchnorms: list[ir.Node] = []
        count = sign_to_threshold_rules(skipped, batchnorms).apply_to_model(model)
        remove_unread(batchnorms)
        if count:
            _ensure_opset(model.graph)
        return PassResult(model, bool(count), {"rewrites": count, "skipped": skipped})


# ---------------------------------------------------------------------------------------------
# binarize


def _layer_weight(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | str:
    """Effective weight as [N, K...] (output channel first) and bias [N] (or None)."""
    op = node.op_type
    w = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "weight is not a constant"
    w = w.astype(np.float32)
    bias = None
    if op == "Conv":
        if w.ndim != 4:
            return f"{w.ndim - 2}-D convolution (only 2-D)"
        if attr(node, "group", 1) != 1:
            return "grouped convolution"
        if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "auto_pad SAME_* (run simplify first or use explicit pads)"
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = _const(node.inputs[2])
            if bias is None:
                return "bias is not a constant"
        return w, None if bias is None else bias.astype(np.float32).reshape(-1)
    if op == "MatMul":
        if w.ndim != 2:
            return "MatMul weight is not 2-D"
        return np.ascontiguousarray(w.T), None
    # Gemm
    if attr(node, "transA", 0):
        return "Gemm with transA"
    if w.ndim != 2:
        return "Gemm weight is not 2-D"
    w = w if attr(node, "transB", 0) else w.T
    w = np.float32(attr(node, "alpha", 1.0)) * w
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = _const(node.inputs[2])
        if c is None:
            return "Gemm C is not a constant"
        c = np.float32(attr(node, "beta", 1.0)) * c.astype(np.float32)
        if c.size == 1:
            bias = np.full(w.shape[0], c.reshape(-1)[0], np.float32)
        elif c.size == w.shape[0] and (c.ndim == 1 or c.shape[0] == 1):
            bias = c.reshape(-1)
        else:
            return f"Gemm C of shape {list(c.shape)} is not a per-output bias"
    return np.ascontiguousarray(w), bias


def _input_rank_ok(node: ir.Node) -> str | None:
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if node.op_type in ("Gemm", "MatMul") and rank not in (2, None):
        return f"input of rank {rank} (only 2-D)"
    return None


def _conv_attrs(node: ir.Node, w: np.ndarray) -> dict:
    kh, kw = int(w.shape[2]), int(w.shape[3])
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if attr(node, "auto_pad", "NOTSET") == "VALID":
        pads = [0, 0, 0, 0]
    # ONNX pads are [h_begin, w_begin, h_end, w_end]: the same order the ops use.
    return {"kernel_shape": [kh, kw], "pads": [int(p) for p in pads],
            "strides": [int(s) for s in attr(node, "strides", [1, 1])],
            "dilations": [int(d) for d in attr(node, "dilations", [1, 1])]}


def rewrite_layer(graph: ir.Graph, node: ir.Node, max_act_bits: int,
                  max_weight_bits: int) -> tuple[str | None, str | None]:
    """Replace one Conv/Gemm/MatMul by an ai.optc op: ``(new op type, None)``, or
    ``(None, reason)`` when it does not match."""
    op_type, reason = None, _input_rank_ok(node)
    if reason is None:
        res = _layer_weight(node)
        if isinstance(res, str):
            reason = res
        else:
            op_type, reason = _rewrite(graph, node, *res, max_act_bits, max_weight_bits)
    return op_type, reason


def _rewrite(graph, node, w, bias, max_act_bits, max_weight_bits) -> tuple[str | None, str | None]:
    n_out = w.shape[0]
    x = node.inputs[0]
    is_conv = node.op_type == "Conv"
    base = (node.name or node.outputs[0].name or "layer").replace("/", "_").strip("_")
    w2 = w.reshape(n_out, -1)
    if is_bipolar(x):
        bw = binary_weights(w2)
        if isinstance(bw, str):
            return None, f"binary activation, but {bw}"
        signs, alpha = bw
        if is_conv:
            signs4 = signs.reshape(w.shape).transpose(0, 2, 3, 1)  # [N, KH, KW, C]
            packed = ops.pack_bits(signs4.reshape(n_out, -1), axis=-1)  # (kh, kw, c) order
            attrs = {"in_channels": int(w.shape[1]), **_conv_attrs(node, w)}
            op_type = "BinaryConv2d"
        else:
            packed = ops.pack_bits(signs, axis=-1)
            attrs = {"in_features": int(w.shape[1])}
            op_type = "BinaryDense"
        inputs = [x, _initializer(graph, f"{base}_wbits", packed), _initializer(graph, f"{base}_alpha", alpha)]
    else:
        aq = act_quantizer(x)
        if isinstance(aq, str):
            return None, aq
        act_scale, qmax = aq
        act_bits = max(1, qmax.bit_length())
        if act_bits > max_act_bits:
            return None, f"activation needs {act_bits} bits (> act-bits={max_act_bits})"
        grid = uniform_grid(w2, max_weight_bits)
        if isinstance(grid, str):
            return None, f"k-bit activation, but {grid}"
        codes, wscale, woffset, wbits = grid
        if is_conv:
            codes4 = codes.reshape(w.shape).transpose(0, 2, 3, 1)  # [N, KH, KW, C]
            packed = ops.planes(codes4.reshape(n_out, -1), wbits)  # [N, wb, words], (kh, kw, c)
            attrs = {"in_channels": int(w.shape[1]), **_conv_attrs(node, w)}
            op_type = "BitserialConv2d"
        else:
            packed = ops.planes(codes, wbits)  # [N, wb, KW]
            attrs = {"in_features": int(w.shape[1])}
            op_type = "BitserialDense"
        attrs |= {"act_bits": act_bits, "weight_bits": wbits, "act_scale": float(act_scale)}
        inputs = [x, _initializer(graph, f"{base}_wplanes", packed),
                  _initializer(graph, f"{base}_wscale", wscale), _initializer(graph, f"{base}_woffset", woffset)]
    if bias is not None:
        inputs.append(_initializer(graph, f"{base}_bias", bias.astype(np.float32)))
    _ensure_opset(graph)
    new = ir.node(op_type, inputs, attrs, domain=ops.DOMAIN, name=f"{base}_{op_type}")
    _replace(graph, node, [new])
    return op_type, None


def _threshold_uses(value: ir.Value) -> list[ir.Node] | None:
    """The SignThreshold / Sign nodes that read ``value`` (directly or through MaxPool, which
    commutes with a per-channel increasing affine map), or None if anything else reads it."""
    if value.is_graph_output():
        return None
    found: list[ir.Node] = []
    for use in value.uses():
        node, idx = use
        if idx == 0 and _key(node) in {(ops.DOMAIN, "SignThreshold"), ("", "Sign")}:
            found.append(node)
        elif idx == 0 and _key(node) == ("", "MaxPool") and len(node.outputs) == 1:
            sub = _threshold_uses(node.outputs[0])
            if sub is None:
                return None
            found += sub
        else:
            return None
    return found or None


def integer_thresholds(t, d, alpha, bias) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds on the integer dot x of ``y = alpha * x + bias``: D y >= D T  <=>
    D x >= D T' with T' = ceil((T - bias) / alpha) for D = +1, floor(...) for D = -1
    (alpha > 0). A channel with alpha = 0 is constant: T' = -inf or +inf, direction +1."""
    t, d, a, b = (np.asarray(v, np.float64) for v in (t, d, alpha, bias))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (t - b) / np.where(a > 0, a, 1.0)
        q = np.where(d > 0, np.ceil(q), np.floor(q))
    const_on = d * (b - t) >= 0  # alpha = 0: y = bias everywhere
    q = np.where(a > 0, q, np.where(const_on, -np.inf, np.inf))
    d = np.where(a > 0, d, 1.0)
    return q.astype(np.float32), d.astype(np.float32)


def fold_scales(graph: ir.Graph, node: ir.Node) -> int:
    """If the output of a BinaryDense/BinaryConv2d is read only by thresholds (SignThreshold or
    Sign, possibly through MaxPool), fold its ``alpha`` and ``B`` into them (FINN-style integer
    thresholds) and drop both inputs: the op then outputs the exact integer dot. Returns the
    number of thresholds rewritten (0: left alone)."""
    ins = list(node.inputs)
    alpha = _const(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    bias = _const(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    if (alpha is None and len(ins) > 2 and ins[2] is not None) or (bias is None and len(ins) > 3 and ins[3] is not None):
        return 0  # not constant
    if alpha is None and bias is None:
        return 0
    users = _threshold_uses(node.outputs[0])
    if not users:
        return 0
    n = int(ins[1].shape[0]) if ins[1].shape is not None else len(alpha if alpha is not None else bias)
    a = alpha if alpha is not None else np.ones(n, np.float32)
    b = bias if bias is not None else np.zeros(n, np.float32)

    def threshold_of(user):
        if _key(user) == ("", "Sign"):  # Sign(y) = +1 iff y >= 0 (ties aside): T = 0, D = +1
            return np.zeros(n, np.float32), np.ones(n, np.float32)
        t = _const(user.inputs[1])
        d = _const(user.inputs[2]) if len(user.inputs) > 2 and user.inputs[2] is not None else np.ones(n, np.float32)
        return t, d

    thresholds = [threshold_of(u) for u in users]
    if any(t is None or d is None for t, d in thresholds):
        return 0  # a threshold that is not constant: leave everything as it is
    for user, (t, d) in zip(users, thresholds):
        t2, d2 = integer_thresholds(t, d, a, b)
        base = (user.name or "threshold").replace("/", "_").strip("_")
        new_ins = [user.inputs[0], _initializer(graph, f"{base}_int_threshold", t2)]
        if np.any(d2 < 0):
            new_ins.append(_initializer(graph, f"{base}_direction", d2))
        _ensure_opset(graph)
        _replace(graph, user, [ir.node("SignThreshold", new_ins, domain=ops.DOMAIN, name=f"{base}_int")])
    attrs = {k: v.value for k, v in node.attributes.items()}
    _replace(graph, node, [ir.node(node.op_type, ins[:2], attrs, domain=ops.DOMAIN, name=node.name)])
    return len(users)


def _layers(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if _key(n) in {("", op) for op in LAYER_OPS}
            and len(n.inputs) > 1 and _const(n.inputs[1]) is not None]


def _post_training(graph: ir.Graph, keep_first_last: bool) -> tuple[int, list[str]]:
    """Binarize weights (alpha = mean|w| per output channel) and insert Sign on the inputs of
    every eligible layer. Returns (layers changed, notes)."""
    layers = _layers(graph)
    if keep_first_last:
        layers = layers[1:-1]
    changed, notes = 0, []
    for node in layers:
        res = _layer_weight(node)
        why = res if isinstance(res, str) else _input_rank_ok(node)
        if why:
            notes.append(f"{node.name}: left in float ({why})")
            continue
        w = _const(node.inputs[1]).astype(np.float32)
        if node.op_type == "Conv":
            alpha = np.abs(w).reshape(w.shape[0], -1).mean(1).reshape(-1, 1, 1, 1)
        elif node.op_type == "Gemm" and attr(node, "transB", 0):
            alpha = np.abs(w).mean(1, keepdims=True)
        else:  # [K, N]
            alpha = np.abs(w).mean(0, keepdims=True)
        wb = np.where(w >= 0, alpha, -alpha).astype(np.float32)
        node.replace_input_with(1, _initializer(graph, f"{node.inputs[1].name}_binarized", wb))
        if not is_bipolar(node.inputs[0]):
            node.replace_input_with(0, _sign_of(graph, node, node.inputs[0]))
        changed += 1
    return changed, notes


def _sign_of(graph: ir.Graph, before: ir.Node, x: ir.Value) -> ir.Value:
    """A Sign of ``x`` inserted before ``before``; Sign(ReLU(z)) is taken as Sign(z) (cloning a
    pass-through chain between them) since Sign(ReLU(z)) would be 0 wherever z <= 0."""
    src, chain = _trace_through(x)
    new_nodes = []
    if src is not None and _key(src) == ("", "Relu"):
        cur = ir.node("Sign", [src.inputs[0]], name=f"{src.name}_sign")
        new_nodes.append(cur)
        for link in reversed(chain):
            clone = ir.Node(link.domain, link.op_type, [cur.outputs[0], *link.inputs[1:]],
                            attributes=list(link.attributes.values()), name=f"{link.name}_bin")
            new_nodes.append(clone)
            cur = clone
    else:
        cur = ir.node("Sign", [x], name=f"{before.name}_input_sign")
        new_nodes.append(cur)
    graph.insert_before(before, new_nodes)
    return cur.outputs[0]


@register_pass("binarize")
class Binarize(Pass):
    """Rewrite binary and k-bit Conv/Gemm/MatMul layers into packed bit-serial ai.optc ops.

    Assumes: constant weights; activations produced by Sign/SignThreshold (binary) or by a
    uniform fake-quantizer (k-bit). Guarantees: same outputs up to fp32 rounding (integer
    parts exact) except with ``post-training``, which first binarizes a float model (lossy).
    See the module docstring for the patterns and the math.
    """

    lossy: ClassVar[bool] = False
    compression: ClassVar[bool] = True
    # BatchNorm + Sign become thresholds (sign-to-threshold, fold-scales), not conv weights
    cleanup_conflicts: ClassVar[frozenset[str]] = frozenset({"fuse-bn"})

    act_bits: int = field(default=8, metadata={"doc": "most activation bits a k-bit layer may have"})
    weight_bits: int = field(default=8, metadata={"doc": "most weight bits a k-bit layer may have"})
    post_training: bool = field(default=False, metadata={
        "doc": "binarize a float model first (sign(w) * mean|w|, Sign on inputs): LOSSY"})
    keep_first_last: bool = field(default=True, metadata={
        "doc": "post-training: leave the first and last layer in float"})
    fold_scales: bool = field(default=True, metadata={
        "doc": "fold alpha/bias of binary ops into the thresholds that read them (integer thresholds)"})

    def __post_init__(self) -> None:
        if not 1 <= self.act_bits <= 16 or not 1 <= self.weight_bits <= 16:
            raise ValueError("act-bits and weight-bits must be in 1..16")
        self.lossy = bool(self.post_training)  # instance value: this configuration is lossy

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        details: dict = {}
        modified = False
        if self.post_training:
            changed, notes = _post_training(graph, self.keep_first_last)
            details["post_training"] = {"layers_binarized": changed, "notes": notes,
                                        "lossy": True, "note": "outputs change; measure with --eval"}
            modified = changed > 0
        counts: dict[str, int] = {}
        skipped = []
        for node in _layers(graph):
            name = node.name or node.op_type
            new_op, reason = rewrite_layer(graph, node, self.act_bits, self.weight_bits)
            if new_op is not None:
                key = f"{node.op_type}->{new_op}"
                counts[key] = counts.get(key, 0) + 1
            else:
                skipped.append(f"{name}: {reason}")
        for node in graph:  # layers _layers leaves out: their weight is computed in the graph
            if _key(node) in {("", op) for op in LAYER_OPS} and len(node.inputs) > 1 and _const(node.inputs[1]) is None:
                skipped.append(f"{node.name or node.op_type}: weight is not a constant (computed in the graph, "
                               "e.g. an exported sign(w) * alpha: fold-constants makes it one)")
        if modified or counts:
            # drop what the rewrites left unread (the ReLU a post-training Sign(z) bypasses) first:
            # fold-scales needs a binary op's output read by thresholds only, and a dead reader
            # would leave the fold to a second run
            common.RemoveUnusedNodesPass()(model)
        folded = 0
        if self.fold_scales:
            for node in list(graph):
                if _key(node) in {(ops.DOMAIN, "BinaryDense"), (ops.DOMAIN, "BinaryConv2d")}:
                    folded += fold_scales(graph, node)
        if folded:
            common.RemoveUnusedNodesPass()(model)
        details |= {"rewrites": sum(counts.values()), "by_op": counts, "thresholds_folded": folded,
                    "skipped": skipped}
        return PassResult(model, modified or bool(counts) or bool(folded), details)


# ---------------------------------------------------------------------------------------------
# fuse-binary-threshold


def _pool_shape(pool: ir.Node) -> tuple[int, int] | str:
    """(PH, PW) of a MaxPool that is a plain non-overlapping window (floor mode), else why not."""
    ks = [int(v) for v in attr(pool, "kernel_shape", ())]
    strides = [int(v) for v in (attr(pool, "strides", None) or ks)]
    pads = [int(v) for v in (attr(pool, "pads", None) or (0, 0, 0, 0))]
    dil = [int(v) for v in (attr(pool, "dilations", None) or (1, 1))]
    if (len(ks) != 2 or strides != ks or any(pads) or dil != [1, 1] or attr(pool, "ceil_mode", 0)
            or attr(pool, "auto_pad", "NOTSET") != "NOTSET"):
        return "MaxPool is not a non-overlapping window without padding (floor mode)"
    if len(pool.outputs) > 1 and pool.outputs[1].uses():
        return "MaxPool indices are used"
    return ks[0], ks[1]


@register_pass("fuse-binary-threshold")
class FuseBinaryThreshold(Pass):
    """Fuse each binary convolution with the threshold activation that reads it and a following
    non-overlapping MaxPool into one ``BinaryConv2dThreshold`` (FINN's MVTU with thresholds).

    Assumes: ``binarize`` ran with fold-scales (the conv outputs the exact integer dot and the
    threshold is an integer comparator). Guarantees: identical outputs (+-1): MaxPool of +-1
    values is the OR of the threshold bits, so pooling after the comparison is exact. Kernels
    then compare and pool in the conv's epilogue: no float conv output, no separate threshold
    or pooling kernel. Idempotent (the fused op is not matched again).
    """

    def call(self, model: ir.Model) -> PassResult:
        from .binary_rules import conv_threshold_rules, unmatched_conv_reason

        skipped: list[str] = []
        count = conv_threshold_rules(skipped).apply_to_model(model)
        graph, pooled = model.graph, 0
        for node in graph:
            if _key(node) == (ops.DOMAIN, "BinaryConv2dThreshold") and list(attr(node, "pool_shape", [1, 1])) != [1, 1]:
                pooled += 1
            elif _key(node) == (ops.DOMAIN, "BinaryConv2d") and not any(s.startswith(f"{node.name or node.op_type}: ")
                                                                        for s in skipped):
                skipped.append(f"{node.name or node.op_type}: {unmatched_conv_reason(node)}")
        return PassResult(model, bool(count), {"rewrites": count, "with_pool": pooled, "skipped": skipped})

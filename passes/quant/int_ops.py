"""optc's integer ops (domain ``ai.optc``, version 1): contract, fixed-point requantization
math, and the numpy references the TVM kernels must match bit for bit.

The ``integerize`` pass (:mod:`optc.passes.quant.integerize`) emits IntConv2d/IntDense in place
of ``DequantizeLinear -> Conv/Gemm/MatMul [-> Relu|Clip] -> QuantizeLinear`` chains
(IntGlobalAveragePool, for ``DQ -> GlobalAveragePool -> Q``, is not wired in yet); the TVM
backend lowers them to int8 kernels (:mod:`optc.backends.tvm.int8`).

Ops
---
Each op's contract is its reference class's docstring below; its schema, cost and lowering are
declared on the class with :func:`optc.ops.define` (the ``ai.optc`` registry, :mod:`optc.ops`):
``IntConv2d``, ``IntDense`` and ``IntGlobalAveragePool``. All requantize their int32
accumulators the same way (:func:`requantize`).

Why it is exact: |acc| < 2^31 is checked when the ops are made (K * 255 * 127 plus the bias),
``acc * multiplier`` fits in int64, and every step is integer arithmetic. The QDQ graph
computes the same layer in float32 and rounds half to even at QuantizeLinear; the two agree
except where ``acc * m`` lands within float rounding of a .5 boundary: then the codes differ
by one step (see :mod:`optc.passes.quant.integerize` for what this means for verification).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx.reference.op_run import OpRun

from optc.onnx_utils import int_attr
from optc.ops import DOMAIN, Attr, Cost, Operand, Surrogate, conv_surrogate, define, dense_surrogate
from optc.passes.optc_ops import ConvGeometry

__all__ = ["OPS", "OP_TYPES", "STANDARD_OPS", "Requant", "fixed_point", "requantize", "int_conv2d", "int_dense",
           "ACC_LIMIT", "LAYOUTS", "layout_of"]

ACC_LIMIT = 2 ** 31 - 1


@dataclass(frozen=True, kw_only=True)
class Requant:
    """The constant quantization parameters of an integer op (its attributes ``x_zero_point``,
    ``y_zero_point``, ``out_min``, ``out_max`` and ``to`` as ``out_dtype``, "uint8" or "int8");
    ``multiplier`` and ``shift`` are the op's inputs. The kernels of
    :mod:`optc.backends.tvm.int8` take one of these."""

    x_zero_point: int = 0
    y_zero_point: int = 0
    out_min: int
    out_max: int
    out_dtype: str


def fixed_point(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers ``m`` (> 0) -> (int32 multiplier in [2^30, 2^31), int32 shift) with
    ``m ~= multiplier * 2^-shift`` (relative error <= 2^-31). Raises ValueError when a shift
    falls outside [1, 62] (a multiplier >= 2^30 or < 2^-31)."""
    m = np.asarray(m, np.float64).reshape(-1)
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise ValueError("requantization multipliers must be finite and > 0")
    f, e = np.frexp(m)  # m = f * 2^e, f in [0.5, 1)
    mult = np.round(f * 2.0 ** 31).astype(np.int64)
    carry = mult >= 2 ** 31
    mult = np.where(carry, mult // 2, mult)
    e = e + carry
    shift = 31 - e
    if np.any(shift < 1) or np.any(shift > 62):
        raise ValueError(f"requantization multiplier out of range ({m.min():.3g} .. {m.max():.3g})")
    return mult.astype(np.int32), shift.astype(np.int32)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, axis: int, y_zero_point: int,
               out_min: int, out_max: int, dtype) -> np.ndarray:
    """The op contract's requantization of int accumulators (per-channel ``axis``)."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    m = np.asarray(multiplier, np.int64).reshape(shape)
    s = np.asarray(shift, np.int64).reshape(shape)
    y = (np.asarray(acc, np.int64) * m + (np.int64(1) << (s - 1))) >> s
    return np.clip(y + int(y_zero_point), int(out_min), int(out_max)).astype(dtype)


def _out_dtype(to: int | None, out_min: int, out_max: int):
    if to is not None:
        return {2: np.uint8, 3: np.int8}[int(to)]
    return np.uint8 if out_min >= 0 and out_max > 127 else np.int8


def _matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul through float64 BLAS: exact while |sums| < 2^53 (int8 x uint8 sums with
    K < 2^37 terms)."""
    return np.rint(np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.int64)


def int_conv2d(x, w, b, geometry: ConvGeometry, x_zero_point: int = 0):
    """int64 accumulators ``[N_b, N, OH, OW]`` of IntConv2d (before requantization); ``x`` NCHW
    (the layouts of ``geometry`` are not read)."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    kh, kw = geometry.kernel_shape
    pt, pl, pb, pr = geometry.pads
    sh, sw = geometry.strides
    dh, dw = geometry.dilations
    group = geometry.group
    nb, c, h, wd = x.shape
    n = w.shape[0]
    xp = np.full((nb, c, h + pt + pb, wd + pl + pr), int(x_zero_point), np.int64)
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    # im2col: [nb, c, kh, kw, oh, ow]
    cols = np.empty((nb, c, kh, kw, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
    if group == 1:
        acc = _matmul_exact(w.reshape(n, -1), cols.transpose(1, 2, 3, 0, 4, 5).reshape(c * kh * kw, -1))
        acc = acc.reshape(n, nb, oh, ow).transpose(1, 0, 2, 3)
    elif group == c and n == c and w.shape[1] == 1:  # depthwise
        acc = np.einsum("bcijxy,cij->bcxy", cols, w[:, 0])
    else:
        raise ValueError(f"IntConv2d: group {group} not supported (1 or depthwise)")
    if b is not None:
        acc = acc + np.asarray(b, np.int64).reshape(1, -1, 1, 1)
    return acc


def int_dense(x, w, b):
    """int64 accumulators ``[..., M, N]`` of IntDense (before requantization)."""
    acc = _matmul_exact(np.asarray(x), np.asarray(w).T)
    if b is not None:
        acc = acc + np.asarray(b, np.int64).reshape(1, -1)
    return acc


def _check_acc(acc: np.ndarray, op: str) -> None:
    if acc.size and np.abs(acc).max() > ACC_LIMIT:
        raise ValueError(f"{op}: int32 accumulator overflow (the op contract forbids it)")


LAYOUTS = ("NCHW", "NHWC")


def layout_of(value) -> str:
    """An ``x_layout``/``y_layout`` attribute value (str, bytes or None) -> "NCHW" | "NHWC"."""
    v = value.decode() if isinstance(value, bytes) else (value or "NCHW")
    if v not in LAYOUTS:
        raise ValueError(f"IntConv2d layout {v!r} (NCHW or NHWC)")
    return v


# ---------------------------------------------------------------------------------------------
# the ops: contract (docstring), schema, cost and lowering (optc.ops.define), numpy reference

_CODES, _I32 = ("uint8", "int8"), ("int32",)
_TVM = {"tvm": "optc.backends.tvm.int8"}
_REQUANT_OPERANDS = (Operand("multiplier", _I32), Operand("shift", _I32))
_REQUANT_ATTRS = (Attr("x_zero_point", "int"), Attr("y_zero_point", "int"), Attr("out_min", "int", required=True),
                  Attr("out_max", "int", required=True), Attr("to", "int"))


def _is_nhwc(s: Surrogate, attr: str) -> bool:
    return layout_of(s.attr_str(attr)) == "NHWC"


def _int_conv_cost(s: Surrogate) -> bool:
    """Conv on the op's own weight shape and group, Transposes around it for NHWC activations."""
    w = s.input_dims(1)
    return bool(w) and conv_surrogate(s, w, group=s.attr_int("group") or 1, x_nhwc=_is_nhwc(s, "x_layout"),
                                      y_nhwc=_is_nhwc(s, "y_layout"))


def _int_conv_depthwise(node, weight_shape) -> bool:
    """One input channel per group: KH * KW products per output, no dot product fits."""
    return bool(weight_shape) and len(weight_shape) == 4 and weight_shape[1] == 1 and (int_attr(node, "group") or 1) > 1


def _example_int_layer(rng, x_shape, w_shape, **attrs) -> tuple[list, dict]:
    """uint8 codes ``x_shape``, int8 weights ``w_shape``, int8 output codes of some spread."""
    x = rng.integers(0, 256, x_shape).astype(np.uint8)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    b = rng.integers(-3000, 3000, w_shape[0]).astype(np.int32)
    mult, shift = fixed_point(rng.uniform(0.3, 3.0, w_shape[0]) / (np.prod(w_shape[1:]) * 128))
    return [x, w, b, mult, shift], {"x_zero_point": 7, "y_zero_point": 3, "out_min": -120, "out_max": 127, "to": 3,
                                    **attrs}


@define(inputs=(Operand("X", _CODES), Operand("W", ("int8",)), Operand("B", _I32), *_REQUANT_OPERANDS),
        attributes=(Attr("kernel_shape", "ints", required=True), Attr("pads", "ints"), Attr("strides", "ints"),
                    Attr("dilations", "ints"), Attr("group", "int"), *_REQUANT_ATTRS, Attr("x_layout", "string"),
                    Attr("y_layout", "string")),
        outputs=(Operand("Y", _CODES),),
        cost=Cost("int8", _int_conv_cost, dot_product=True, depthwise=_int_conv_depthwise, requantize=True),
        lowering=_TVM,
        example=lambda rng: _example_int_layer(rng, (1, 7, 9, 5), (20, 5, 3, 3), kernel_shape=[3, 3],
                                               pads=[1, 1, 1, 1], strides=[2, 1], x_layout="NHWC"))
class IntConv2d(OpRun):
    """``IntConv2d(X, W, B, multiplier, shift) -> Y``  (attributes ``kernel_shape`` [KH, KW],
    ``pads`` [top, left, bottom, right], ``strides`` [2], ``dilations`` [2], ``group`` (1, or C
    for a depthwise conv with one filter per channel), ``x_zero_point``, ``y_zero_point``,
    ``out_min``, ``out_max``, ``to``, ``x_layout``, ``y_layout``)

    ``X`` uint8 or int8 ``[N_b, C, H, W]`` (``x_layout = "NCHW"``, the default) or
    ``[N_b, H, W, C]`` (``"NHWC"``): quantized activation codes; ``Y`` likewise per
    ``y_layout``. The layouts change where values sit, never the arithmetic below (written for
    NCHW): ``integerize`` keeps the activations between integer convolutions in NHWC, the
    layout the kernels compute in, so that no layer re-lays its input out. ``W`` int8
    ``[N, C / group, KH, KW]`` (ONNX Conv layout; int4 weights are int8 values in [-7, 7]).
    ``B`` int32 ``[N]``: the bias *with the input zero point folded in*,
    ``B[n] = b_q[n] - x_zero_point * sum(W[n])``. ``multiplier`` int32 ``[N]`` in
    [2^30, 2^31), ``shift`` int32 ``[N]`` in [1, 62]. Padding reads ``x_zero_point`` (the code
    of real 0), so with ``Xp`` the padded input::

        acc[b, n, oh, ow] = sum_{c, kh, kw} Xp[b, c, oh*sh + kh*dh, ow*sw + kw*dw] * W[n, c, kh, kw] + B[n]
                          = sum (x - x_zero_point) * w + b_q            (exact, in int32)
        Y = clamp(((acc * multiplier[n] + 2^(shift[n] - 1)) >> shift[n]) + y_zero_point,
                  out_min, out_max)

    ``>>`` is an arithmetic shift of the 64-bit product, i.e. ``floor``: the requantization
    rounds **half up** (towards +inf) - ``round(acc * m)`` with ``m = multiplier * 2^-shift``.
    ``Y`` has the dtype of the ``out_min``/``out_max`` range: uint8 when ``out_min >= 0``
    and ``out_max > 127``, else int8 (attribute ``to``: the ONNX TensorProto type, 2 = uint8,
    3 = int8). A fused ReLU is ``out_min = y_zero_point``; a fused Clip(lo, hi) clamps at
    the codes of lo and hi.
    """

    op_domain = DOMAIN

    def _run(self, X, W, B, multiplier, shift, kernel_shape=None, pads=None, strides=None,  # noqa: N803
             dilations=None, group=None, x_zero_point=None, y_zero_point=None, out_min=None,
             out_max=None, to=None, x_layout=None, y_layout=None):
        if layout_of(x_layout) == "NHWC":
            X = np.transpose(X, (0, 3, 1, 2))
        acc = int_conv2d(X, W, B, ConvGeometry(kernel_shape, pads, strides, dilations, group or 1), x_zero_point or 0)
        _check_acc(acc, "IntConv2d")
        y = requantize(acc, multiplier, shift, 1, y_zero_point or 0, out_min, out_max, _out_dtype(to, out_min, out_max))
        return (np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if layout_of(y_layout) == "NHWC" else y,)


def _int_dense_cost(s: Surrogate) -> bool:
    w = s.input_dims(1)  # [N, K]
    return bool(w) and dense_surrogate(s, w[1], w[0])


@define(inputs=(Operand("X", _CODES), Operand("W", ("int8",)), Operand("B", _I32), *_REQUANT_OPERANDS,
                Operand("W_zero_point", _I32, optional=True)),
        attributes=_REQUANT_ATTRS, outputs=(Operand("Y", _CODES),),
        cost=Cost("int8", _int_dense_cost, dot_product=True, requantize=True), lowering=_TVM,
        example=lambda rng: _example_int_layer(rng, (3, 37), (21, 37)))
class IntDense(OpRun):
    """``IntDense(X, W, B, multiplier, shift) -> Y``  (attributes ``x_zero_point``,
    ``y_zero_point``, ``out_min``, ``out_max``, ``to``)

    ``X`` uint8/int8 ``[..., M, K]`` (any leading dimensions, e.g. ``[batch, seq, hidden]``
    activations of a transformer or a 1-d conv model), ``W`` int8 ``[N, K]`` (rows are output
    features), ``B``, ``multiplier``, ``shift`` as for IntConv2d.
    ``acc[..., m, n] = sum_k X[..., m, k] * W[n, k] + B[n]``, then the same requantization
    (per output feature, the last axis); ``Y`` ``[..., M, N]``.

    Optional ``W_zero_point`` int32 ``[N]`` (asymmetric weights, e.g. onnxruntime's uint8
    weights stored as ``W = w_u8 - 128`` with ``W_zero_point = zp_u8 - 128``)::

        acc[..., m, n] = sum_k X[..., m, k] * (W[n, k] - W_zero_point[n]) + B[n]
        B[n] = b_q[n] - x_zero_point * sum_k (W[n, k] - W_zero_point[n])

    i.e. ``sum (x - x_zero_point)(w - w_zero_point) + b_q``, exact in int32.
    """

    op_domain = DOMAIN

    def _run(self, X, W, B, multiplier, shift, W_zero_point=None, x_zero_point=None,  # noqa: N803
             y_zero_point=None, out_min=None, out_max=None, to=None):
        if W_zero_point is not None:
            W = np.asarray(W, np.int64) - np.asarray(W_zero_point, np.int64).reshape(-1, 1)
        acc = int_dense(X, W, B)
        _check_acc(acc, "IntDense")
        return (requantize(acc, multiplier, shift, -1, y_zero_point or 0, out_min, out_max,
                           _out_dtype(to, out_min, out_max)),)


def _int_gap_cost(s: Surrogate) -> bool:
    """GlobalAveragePool (an add per input element), after a Transpose for NHWC input."""
    s.main("GlobalAveragePool", [s.input_nchw(_is_nhwc(s, "x_layout"))], [s.node.output[0]])
    return True


def _example_int_gap(rng) -> tuple[list, dict]:
    x = rng.integers(0, 256, (2, 5, 7, 6)).astype(np.uint8)  # NHWC
    mult, shift = fixed_point([rng.uniform(0.5, 2.0) / 35])
    return [x, mult, shift], {"x_zero_point": 9, "y_zero_point": -4, "out_min": -128, "out_max": 127, "to": 3,
                              "x_layout": "NHWC"}


@define(inputs=(Operand("X", _CODES), *_REQUANT_OPERANDS),
        attributes=(*_REQUANT_ATTRS, Attr("x_layout", "string")), outputs=(Operand("Y", _CODES),),
        cost=Cost("int8", _int_gap_cost, requantize=True), lowering=_TVM, example=_example_int_gap)
class IntGlobalAveragePool(OpRun):
    """``IntGlobalAveragePool(X, multiplier, shift) -> Y``  (attributes ``x_zero_point``,
    ``y_zero_point``, ``out_min``, ``out_max``, ``to``, ``x_layout``)

    ``DequantizeLinear -> GlobalAveragePool -> QuantizeLinear`` on the codes. ``X`` uint8/int8
    ``[N_b, C, H, W]`` (``x_layout = "NCHW"``, the default) or ``[N_b, H, W, C]`` (``"NHWC"``);
    ``Y`` ``[N_b, C, 1, 1]`` (GlobalAveragePool's shape; its memory order is that of either
    layout). ``multiplier``, ``shift`` int32 ``[1]`` (or ``[C]``) as for IntConv2d, the fixed
    point of ``s_x / (s_y * H * W)`` (input scale over output scale times the window)::

        acc[b, c] = sum_{h, w} X[b, c, h, w] - H * W * x_zero_point     (exact, in int32)
        Y = clamp(((acc * multiplier + 2^(shift - 1)) >> shift) + y_zero_point, out_min, out_max)

    i.e. the requantization of IntConv2d (rounding half up) applied to the sum of the codes: the
    average is never formed in float.
    """

    op_domain = DOMAIN

    def _run(self, X, multiplier, shift, x_zero_point=None, y_zero_point=None, out_min=None,  # noqa: N803
             out_max=None, to=None, x_layout=None):
        x = np.asarray(X, np.int64)
        if layout_of(x_layout) == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        acc = x.sum(axis=(2, 3)) - x.shape[2] * x.shape[3] * int(x_zero_point or 0)
        _check_acc(acc, "IntGlobalAveragePool")
        y = requantize(acc, multiplier, shift, 1, y_zero_point or 0, out_min, out_max, _out_dtype(to, out_min, out_max))
        return (y[:, :, None, None],)


def _per_axis(v, ndim: int, axis: int | None):
    v = np.asarray(v)
    if v.size == 1 or v.ndim == 0:
        return v.reshape(())
    shape = [1] * ndim
    shape[(axis if axis is not None else 1) % ndim] = -1
    return v.reshape(shape)


class QuantizeLinear(OpRun):
    """ONNX QuantizeLinear (opset 13+, per-tensor or per-axis, uint8/int8/int32 outputs):
    ``saturate(round_half_even(x / scale) + zero_point)`` in float32, as onnxruntime computes
    it. onnx's reference evaluator has no implementation below opset 19, and graphs rewritten by
    ``integerize`` keep the quantize pass's opset (13+): this one serves all of them."""

    op_domain = ""

    def _run(self, x, y_scale, y_zero_point=None, axis=None, saturate=None, block_size=None,  # noqa: ARG002
             output_dtype=None, precision=None):
        if block_size:
            raise NotImplementedError("blocked QuantizeLinear")
        dtype = np.asarray(y_zero_point).dtype if y_zero_point is not None else np.dtype(np.uint8)
        info = np.iinfo(dtype)
        s = _per_axis(np.asarray(y_scale, np.float32), np.ndim(x), axis)
        zp = _per_axis(np.asarray(y_zero_point if y_zero_point is not None else 0, np.float32), np.ndim(x), axis)
        q = np.rint(np.asarray(x, np.float32) / s) + zp
        return (np.clip(q, info.min, info.max).astype(dtype),)


class DequantizeLinear(OpRun):
    """ONNX DequantizeLinear (opset 13+): ``(x - zero_point) * scale`` in float32."""

    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis=None, block_size=None, output_dtype=None):  # noqa: ARG002
        if block_size:
            raise NotImplementedError("blocked DequantizeLinear")
        s = _per_axis(np.asarray(x_scale, np.float32), np.ndim(x), axis)
        zp = _per_axis(np.asarray(x_zero_point if x_zero_point is not None else 0, np.int64), np.ndim(x), axis)
        return (((np.asarray(x, np.int64) - zp).astype(np.float32) * s).astype(np.float32),)


STANDARD_OPS = [QuantizeLinear, DequantizeLinear]  # ONNX's own ops, for ReferenceEvaluator below opset 19
OPS = [IntConv2d, IntDense, IntGlobalAveragePool, *STANDARD_OPS]
OP_TYPES = ("IntConv2d", "IntDense", "IntGlobalAveragePool")  # what ``integerize`` writes (and requires of a backend)

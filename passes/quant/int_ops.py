"""What optc's integer ``ai.optc`` ops share: fixed-point requantization math, the exact
integer layer cores their numpy references compute, and reference implementations of ONNX
QuantizeLinear/DequantizeLinear for opsets onnx's evaluator lacks.

The ops themselves (contract, schema, reference, cost, TVM lowering) are one module each in
:mod:`optc.passes.ops`: ``IntConv2d``, ``IntDense``, ``IntMatMul`` and ``IntGlobalAveragePool``.
The ``integerize`` pass (:mod:`optc.passes.quant.integerize`) emits IntConv2d/IntDense in place of
``DequantizeLinear -> Conv/Gemm/MatMul [-> Relu|Clip] -> QuantizeLinear`` chains (IntMatMul for
a MatMul of two dequantized activations, IntGlobalAveragePool for ``DQ -> GlobalAveragePool ->
Q``); their TVM kernels are :mod:`optc.backends.tvm.int8` and :mod:`optc.backends.tvm.int8_matmul`. All requantize their int32 accumulators the same
way (:func:`requantize`).

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

from optc.passes.optc_ops import ConvGeometry

__all__ = ["OP_TYPES", "STANDARD_OPS", "Requant", "fixed_point", "requantize", "int_conv2d", "int_dense",
           "int_matmul", "matmul_acc_bound",
           "check_acc", "out_dtype", "ACC_LIMIT", "LAYOUTS", "layout_of"]

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


def out_dtype(to: int | None, out_min: int, out_max: int):
    """The output dtype of an integer op: attribute ``to`` (2 = uint8, 3 = int8), or where it
    is absent the dtype of the ``out_min``/``out_max`` range."""
    if to is not None:
        return {2: np.uint8, 3: np.int8}[int(to)]
    return np.uint8 if out_min >= 0 and out_max > 127 else np.int8


def _matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul through float BLAS: float32 where every partial sum stays below 2^24 in
    magnitude (:func:`_sum_bound`: each one is then an exact float32 integer, in any summation
    order; float32 vectors hold twice the lanes, and a transformer's verification spent 7 of
    its 16 s in float64 matmuls), else float64 (exact while |sums| < 2^53)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size and b.size and _sum_bound(a, b) < 2 ** 24:
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def _sum_bound(a: np.ndarray, b: np.ndarray) -> int:
    """A bound on every partial sum of ``a @ b``: ``sum_k |a[m, k]| * |b[k, n]|`` is at most
    the largest row sum of ``|a|`` times ``max|b|`` (activations near their zero point keep it
    far below ``K * max|a| * max|b|``), and at most ``max|a|`` times the largest column sum
    of ``|b|``."""
    abs_a, abs_b = np.abs(a.astype(np.int64)), np.abs(b.astype(np.int64))
    return min(int(abs_a.sum(axis=-1).max()) * int(abs_b.max()), int(abs_a.max()) * int(abs_b.sum(axis=-2).max()))


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


def int_matmul(a, b, a_zero_point: int = 0, b_zero_point: int = 0) -> np.ndarray:
    """int64 accumulators ``[..., M, N]`` of IntMatMul (before requantization):
    ``(a - a_zero_point) @ (b - b_zero_point)`` with numpy's MatMul broadcasting of the batch
    dimensions (``a [..., M, K]``, ``b [..., K, N]``, ranks >= 2)."""
    a = np.asarray(a, np.int64) - int(a_zero_point)
    b = np.asarray(b, np.int64) - int(b_zero_point)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError("IntMatMul: operands of rank >= 2 only")
    return _matmul_exact(a, b)


def matmul_acc_bound(k: int, a_dtype, a_zero_point: int, b_dtype, b_zero_point: int) -> int:
    """The largest ``|acc|`` IntMatMul can reach over ``k`` terms: ``k * max|a - zp_a| *
    max|b - zp_b|`` over the codes' ranges (the op contract requires it below 2^31)."""
    def spread(dtype, zp: int) -> int:
        info = np.iinfo(dtype)
        return max(abs(int(info.min) - int(zp)), abs(int(info.max) - int(zp)))

    return int(k) * spread(a_dtype, a_zero_point) * spread(b_dtype, b_zero_point)


def check_acc(acc: np.ndarray, op: str) -> None:
    """Refuse int32 accumulators that overflowed (the op contract forbids it)."""
    if acc.size and np.abs(acc).max() > ACC_LIMIT:
        raise ValueError(f"{op}: int32 accumulator overflow (the op contract forbids it)")


LAYOUTS = ("NCHW", "NHWC")


def layout_of(value) -> str:
    """An ``x_layout``/``y_layout`` attribute value (str, bytes or None) -> "NCHW" | "NHWC"."""
    v = value.decode() if isinstance(value, bytes) else (value or "NCHW")
    if v not in LAYOUTS:
        raise ValueError(f"IntConv2d layout {v!r} (NCHW or NHWC)")
    return v


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

    def _run(self, x, y_scale, y_zero_point=None, **attrs):
        """``attrs``: the schema's attributes (``axis``, ``saturate``, ``block_size``,
        ``output_dtype``, ``precision``, as the evaluator passes them); only ``axis`` matters here."""
        if attrs.get("block_size"):
            raise NotImplementedError("blocked QuantizeLinear")
        axis = attrs.get("axis")
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


class GlobalMaxPool(OpRun):
    """ONNX GlobalMaxPool: the max over every axis after the channel axis, kept as size 1.
    onnx's reference reduces axes ``(ndim - 2, ndim - 1)``, which is right for 4-D inputs only
    (a 1-d conv model's ``[N, C, L]`` lost its channel axis; found on Magika's byte classifier)."""

    op_domain = ""

    def _run(self, x):
        return (np.asarray(x).max(axis=tuple(range(2, np.ndim(x))), keepdims=True),)


class BatchNormalization(OpRun):
    """ONNX BatchNormalization in inference mode (every opset): ``(x - mean) / sqrt(var +
    epsilon) * scale + bias`` per channel (axis 1), in the input's type. onnx's reference for opsets
    9-13 takes the schema's default ``momentum`` as a request for training mode and normalizes
    with the batch's own statistics (a BatchNormalization after a ReLU, which ``fuse-bn`` cannot
    fold, came out wrong by up to 60 %: openWakeWord's embedding model). Training mode, which
    inference graphs do not use, is refused."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, **attrs):
        if attrs.get("training_mode"):
            raise NotImplementedError("BatchNormalization with training_mode=1")
        eps = attrs.get("epsilon")
        shape = (-1, *([1] * (np.ndim(x) - 2)))
        x = np.asarray(x)
        dt = x.dtype

        def per_channel(v):
            return np.asarray(v, dt).reshape(shape)

        inv = dt.type(1) / np.sqrt(per_channel(var) + dt.type(1e-5 if eps is None else eps))
        return (((x - per_channel(mean)) * inv * per_channel(scale) + per_channel(bias)).astype(dt),)


class Erf(OpRun):
    """ONNX Erf, vectorized: onnx's reference maps ``math.erf`` over the elements one Python
    call at a time (6 of a QDQ transformer's 26 s of verification: GELU in every layer). Here
    float32 / float16 data go through ``scipy.special.erf`` in float64 and are cast back (the
    same values bit for bit: the two float64 results differ in the last bit at most), where
    scipy is installed (it comes with optc's ``torch`` extra); float64 data, or no scipy, keep
    onnx's ``math.erf`` loop."""

    op_domain = ""

    def _run(self, x):
        import math

        x = np.asarray(x)
        try:
            from scipy.special import erf
        except ImportError:  # pragma: no cover - optc's extras install scipy
            erf = None
        if erf is None or x.dtype == np.float64:
            return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)
        return (erf(x.astype(np.float64)).astype(x.dtype),)


# ONNX's own ops for ReferenceEvaluator: the quantizers below opset 19; GlobalMaxPool on any
# rank and BatchNormalization in inference mode, which onnx's reference gets wrong; Erf
# vectorized
STANDARD_OPS = [QuantizeLinear, DequantizeLinear, GlobalMaxPool, BatchNormalization, Erf]
OP_TYPES = ("IntConv2d", "IntDense", "IntGlobalAveragePool", "IntMatMul")  # what ``integerize`` writes (and requires of a backend)

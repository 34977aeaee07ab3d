"""What optc's integer ``ai.optc`` ops share: fixed-point requantization math, the exact
integer layer cores their numpy references compute, reference implementations of ONNX
QuantizeLinear/DequantizeLinear for opsets onnx's evaluator lacks, and fast ones of the ONNX
ops whose onnx references are wrong or slow (:data:`STANDARD_OPS`).

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
           "int_matmul", "matmul_acc_bound", "conv_pads", "conv_float64", "conv_transpose_float64",
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


_COLS_BUDGET = 2 ** 25  # float64 elements of one im2col chunk (256 MiB)


def conv_pads(spatial, kernel_shape, auto_pad, pads, strides, dilations) -> list[int]:
    """ONNX Conv's pads ``[begin..., end...]`` for an input of spatial shape ``spatial``:
    ``auto_pad`` SAME_UPPER / SAME_LOWER pads so that each output size is ``ceil(size /
    stride)``, over the dilated kernel ``(k - 1) * d + 1``, the odd one at the end / at the
    beginning; VALID pads nothing; NOTSET (or None) takes ``pads`` (None: zeros)."""
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel_shape, strides, dilations):
            need = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            head = (need + 1) // 2 if mode == "SAME_LOWER" else need // 2
            begin.append(head)
            end.append(need - head)
        return begin + end
    if mode == "VALID" or not pads:
        return [0] * (2 * len(spatial))
    return [int(p) for p in pads]


def conv_float64(x, w, *, group=1, auto_pad=None, pads=None, strides=None, dilations=None) -> np.ndarray:
    """ONNX Conv of ``x`` [N, C, *S] with ``w`` [M, C / group, *K] (N-d, no bias) in float64:
    pad with zeros, take the strided, dilated windows as a view (``sliding_window_view``), and
    per chunk of output rows copy them into an im2col buffer of at most ``_COLS_BUDGET``
    elements for one batched matmul over the groups (``[G, M/G, C/G*K] @ [N, G, C/G*K, P]``).
    Returns float64 [N, M, *O]. The dilated kernel is never materialized: onnx's reference
    inflates a kernel of 3 taps at dilation 4096 to 8193 taps and multiplies the zeros."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    n, c, m, kernel = x.shape[0], x.shape[1], w.shape[0], w.shape[2:]
    group = int(group or 1)
    if nd < 1 or w.ndim != x.ndim or c != w.shape[1] * group or m % group:
        raise ValueError(f"Conv: input {x.shape}, weight {w.shape} and group {group} do not agree")
    strides, dilations = list(strides or [1] * nd), list(dilations or [1] * nd)
    pads = conv_pads(x.shape[2:], kernel, auto_pad, pads, strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0), *zip(pads[:nd], pads[nd:])])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
               *(slice(None, None, d) for d in dilations))]  # [N, C, *O, *K], a view
    out = win.shape[2:2 + nd]
    win = np.moveaxis(win.reshape(n, group, c // group, *out, *kernel), 2, 2 + nd)  # [N, G, *O, C/G, *K]
    wg = w.reshape(group, m // group, -1)
    y = np.empty((n, group, m // group, *out))
    rows = max(1, _COLS_BUDGET // max(1, n * c * int(np.prod(kernel)) * int(np.prod(out[1:]))))
    for i in range(0, out[0], rows):
        cols = win[:, :, i:i + rows].reshape(n, group, -1, wg.shape[-1])  # the im2col copy [N, G, P, C/G*K]
        y[:, :, :, i:i + rows] = (wg @ cols.transpose(0, 1, 3, 2)).reshape(n, group, m // group, -1, *out[1:])
    return y.reshape(n, m, *out)


class ConvInteger(OpRun):
    """ONNX ConvInteger (N-d, every attribute; per-tensor ``x_zero_point``, per-tensor or
    per-output-channel ``w_zero_point``): :func:`conv_float64` of ``x - x_zero_point`` and ``w -
    w_zero_point``. Exact: each product is below 2^16 in magnitude (8-bit codes minus 8-bit zero
    points), so sums of fewer than 2^37 of them are float64 integers in any order (checked); an
    int32 overflow wraps, as in onnx's reference. That one computes the same in int32, with
    numpy's int32 matmul (no BLAS) over a dilated kernel inflated with zeros: 80 s for one
    128-channel conv1d at dilation 64 over 7500 steps, more than 15 minutes and 4 GB, unfinished,
    for an EEG U-Net with dilations up to 4096; and it fails on per-channel ``w_zero_point``
    for other than 2-d convs."""

    op_domain = ""

    def _run(self, x, w, x_zero_point=None, w_zero_point=None, **attrs):
        w = np.asarray(w)
        if w.size and w.size // w.shape[0] >= 2 ** 37:
            raise ValueError("ConvInteger: too many terms per output for an exact float64 sum")
        xz = 0 if x_zero_point is None else np.asarray(x_zero_point, np.int64).reshape(())
        wz = 0 if w_zero_point is None else _per_axis(np.asarray(w_zero_point, np.int64), w.ndim, 0)
        y = conv_float64(np.asarray(x, np.int64) - xz, w.astype(np.int64) - wz, **_geometry(attrs))
        return (y.astype(np.int64).astype(np.int32),)


def _geometry(attrs: dict) -> dict:
    """The attributes of an ONNX Conv that :func:`conv_float64` reads (the kernel shape is the
    weight's)."""
    return {k: attrs.get(k) for k in ("group", "auto_pad", "pads", "strides", "dilations")}


class Conv(OpRun):
    """ONNX Conv (N-d, every attribute, optional bias): :func:`conv_float64` plus the bias,
    rounded once to the input's type. More accurate than onnx's reference, which sums in the
    input's type (float32 BLAS): the two differ by float32 rounding of the sums."""

    op_domain = ""

    def _run(self, x, w, b=None, **attrs):
        y = conv_float64(x, w, **_geometry(attrs))
        if b is not None:
            y += np.asarray(b, np.float64).reshape(1, -1, *([1] * (y.ndim - 2)))
        return (y.astype(np.asarray(x).dtype),)


def conv_transpose_float64(x, w, **attrs) -> np.ndarray:
    """ONNX ConvTranspose of ``x`` [N, C, *I] with ``w`` [C, M / group, *K] (N-d, no bias; the
    ONNX attributes ``group``, ``auto_pad``, ``pads``, ``strides``, ``dilations``,
    ``output_padding`` and ``output_shape`` as keywords, others ignored) in float64, by the
    spec's equations: input step ``i`` and kernel tap ``t`` land on step ``i *
    stride + t * dilation`` of the full output (length ``stride * (I - 1) + (K - 1) * dilation +
    1 + output_padding``), which ``pads`` then crop. ``output_shape`` (or auto_pad SAME_*:
    ``I * stride``) sets the pads instead: their total split with the odd one at the beginning,
    or at the end for SAME_UPPER; a negative total widens the output with zeros. One batched
    matmul per kernel tap (``[G, M/G, C/G] @ [N, G, C/G, I]``), added into a strided view: no
    buffer beyond the output. Returns float64 [N, M, *O]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    n, c, size, kernel = x.shape[0], x.shape[1], x.shape[2:], w.shape[2:]
    group, auto_pad, pads, output_shape = int(attrs.get("group") or 1), attrs.get("auto_pad"), attrs.get("pads"), \
        attrs.get("output_shape")
    strides, dilations, output_padding = attrs.get("strides"), attrs.get("dilations"), attrs.get("output_padding")
    if nd < 1 or w.ndim != x.ndim or c != w.shape[0] or c % group:
        raise ValueError(f"ConvTranspose: input {x.shape}, weight {w.shape} and group {group} do not agree")
    m = w.shape[1] * group
    strides, dilations = list(strides or [1] * nd), list(dilations or [1] * nd)
    full = [s * (i - 1) + (k - 1) * d + 1 + p
            for i, k, s, d, p in zip(size, kernel, strides, dilations, output_padding or [0] * nd)]
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    if output_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
        out = list(output_shape)[-nd:] if output_shape else [i * s for i, s in zip(size, strides)]
        begin = [(f - o) // 2 if mode == "SAME_UPPER" else (f - o) - (f - o) // 2 for f, o in zip(full, out)]
    else:
        pads = list(pads or [0] * (2 * nd))
        begin, out = pads[:nd], [f - b - e for f, b, e in zip(full, pads[:nd], pads[nd:])]
    pre = [max(0, -b) for b in begin]  # room for a negative pad before step 0
    buf = np.zeros((n, m, *(p + max(f, b + o) for p, f, b, o in zip(pre, full, begin, out))))
    xg = x.reshape(n, group, c // group, -1)
    for tap in np.ndindex(*kernel):
        wt = w[(slice(None), slice(None), *tap)].reshape(group, c // group, -1).transpose(0, 2, 1)  # [G, M/G, C/G]
        at = tuple(slice(p + t * d, p + t * d + s * (i - 1) + 1, s)
                   for p, t, d, s, i in zip(pre, tap, dilations, strides, size))
        buf[(slice(None), slice(None), *at)] += (wt @ xg).reshape(n, m, *size)
    return buf[(slice(None), slice(None), *(slice(p + b, p + b + o) for p, b, o in zip(pre, begin, out)))]


class ConvTranspose(OpRun):
    """ONNX ConvTranspose (N-d, every attribute, optional bias): :func:`conv_transpose_float64`
    plus the bias, rounded once to the input's type. onnx's reference scatters through a Python
    loop per output channel and position (1.2 of the 2.2 s a call of an EEG U-Net's reference
    took, for four 1-d upsamplings), and gets ``group`` > 1 wrong: it fails on several output
    channels per group and adds the first channel's bias to every group."""

    op_domain = ""

    def _run(self, x, w, b=None, **attrs):
        y = conv_transpose_float64(x, w, **attrs)
        if b is not None:
            y += np.asarray(b, np.float64).reshape(1, -1, *([1] * (y.ndim - 2)))
        return (y.astype(np.asarray(x).dtype),)


# ONNX's own ops for ReferenceEvaluator: the quantizers below opset 19; GlobalMaxPool on any
# rank and BatchNormalization in inference mode, which onnx's reference gets wrong; Erf
# vectorized; ConvInteger / Conv / ConvTranspose in float64 through BLAS (onnx's take minutes on
# dilated 1-d convs, and its ConvTranspose gets groups wrong)
STANDARD_OPS = [QuantizeLinear, DequantizeLinear, GlobalMaxPool, BatchNormalization, Erf, ConvInteger, Conv,
                ConvTranspose]
OP_TYPES = ("IntConv2d", "IntDense", "IntGlobalAveragePool", "IntMatMul")  # what ``integerize`` writes (and requires of a backend)

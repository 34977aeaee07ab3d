"""Converters for standard ONNX ops that TVM's Relax ONNX importer lacks or gets wrong.

Registered in the default domain (``lower.register_converter("", op)``), they replace or add
to the importer's table for optc's imports only (``lower._from_onnx``). Each is a few
Relax ops with the ONNX definition in its docstring; each is checked against onnxruntime by
the ONNX node tests (``tests/test_node_tests.py``).

- LpNormalization (missing): ``x / ||x||_p`` along ``axis`` (p = 1 or 2; 0 where the norm is 0).
- Swish (missing, opset 24): ``x * sigmoid(alpha * x)``.
- Cosh, Sinh: TVM's ``tirx.cosh`` / ``sinh`` intrinsics have no LLVM lowering (the build
  failed); ``(e^x +- e^-x) / 2`` instead.
- IsInf: TVM ignored ``detect_positive`` / ``detect_negative``.
- SpaceToDepth: TVM ignored ``mode`` (CRD, opset 25: channels ``c * bs * bs + by * bs + bx``).
- LayerNormalization: TVM returned 0-d placeholders for the optional ``Mean`` / ``InvStdDev``
  outputs; they are computed (shape of X with the normalized axes 1, in the stash type).
- ``optc.lowering::LayerNorm`` (not an ONNX op): a layer norm written out in elementary ops that
  :mod:`.norm_fusion` found in the model handed to the importer; LayerNormalization-17's lowering.
- RMSNormalization: ``X / sqrt(mean(X^2 over axes >= axis) + epsilon) * scale`` in plain ops
  (TVM's fused ``rms_norm`` failed to build when ``axis`` is 0).
- Elu: TVM's constants were float32 whatever the input (float16 models failed to import).
- ConvTranspose: TVM ignored ``output_shape``; the pads it implies are computed (ONNX:
  ``total = stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - out``, split
  ``total - total // 2`` first unless ``auto_pad`` is SAME_UPPER; a negative total becomes
  extra ``output_padding``). A 1-D or 2-D one (group 1, dilation 1, constant weight) is then
  one convolution of its ``s`` / ``s x s`` output phases, a pixel shuffle and a crop
  (:func:`_conv_transpose_as_shuffle`; TVM's form convolved a zero-dilated input: s*s times
  the work, 1 GFLOP/s); other ones go to TVM's converter.
- Split: a zero-size part (``split`` with a 0): one ``strided_slice`` per part (TVM's ``split``
  build failed).
- Conv: a 3-D convolution that is 2-D per depth slice (kernel depth 1, depth stride 1, no depth
  padding: RivaGAN's 1 x 11 x 11 kernels on ``[N, 3, 1, H, W]`` frames) is a 2-D convolution
  with the depth folded into the batch (:func:`_conv3d_as_2d`), so the CPU conv2d schedules
  apply (TVM's conv3d has none: 14 GFLOP/s, 18 % of peak); other Convs are TVM's.
- Pow: integer bases (TVM's ``power`` takes floats only) through float64, rounded back; an
  exponent of another type than the base is cast to it (the output has the base's type).
- Constant: TVM read only ``value``; ``value_float(s)`` / ``value_int(s)`` become tensors.
- ConstantOfShape: TVM failed on a shape input that is a Relax shape (``Shape``'s output).
- BitCast (missing, opset 26): ``topi.reinterpret`` between types of the same width.
- ReduceMax / ReduceMin of floats: TVM's reduction starts at the lowest / highest finite
  value, so a row of only -inf / +inf gave -FLT_MAX / FLT_MAX; it gives the infinity now.
  The empty set (a zero-size input) gives -inf / +inf (TVM's kernel failed at run time).
  Bool inputs (TVM's build failed: no initial value) through uint8.
- Resize: an empty constant roi / scales / sizes is absent (torch's opset-11 exports); TVM
  ignored ``axes`` and ``keep_aspect_ratio_policy``; roi/scales/sizes for those
  axes are spread to every axis, and sizes under not_larger / not_smaller become
  ``round(scale * in)`` with the min / max ratio as the one scale.
- CumProd (missing, opset 26): ``relax.op.cumprod`` along the constant ``axis``, with
  ``exclusive`` and ``reverse`` (flip, scan, flip) as CumSum.
- OneHot: TVM asserted an integer ``depth`` and gave float64 values; depth of any numeric type,
  output in the values' dtype, negative indices + depth, out-of-range indices all ``off``.
- ReverseSequence (missing): one ``gather_elements`` along the time axis with index
  ``L[b] - 1 - t`` for ``t < L[b]``, else ``t``.
"""

from __future__ import annotations

from . import norm_fusion
from .lower import register_converter, register_if_available


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _rank(expr) -> int:
    return len(expr.ty.shape)


def register() -> None:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op

    def const(value, like):
        return relax.const(value, _dtype(like))

    @register_converter("", "LpNormalization")
    class LpNormalization(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            axis, p = int(attr.get("axis", -1)), int(attr.get("p", 2))
            if p not in (1, 2):
                raise ValueError(f"LpNormalization p must be 1 or 2, not {p}")
            norm = (op.sum(op.abs(x), axis=[axis], keepdims=True) if p == 1
                    else op.sqrt(op.sum(op.multiply(x, x), axis=[axis], keepdims=True)))
            zero = const(0.0, x)
            safe = op.where(op.equal(norm, zero), const(1.0, x), norm)
            return op.where(op.equal(norm, zero), op.zeros_like(x), op.divide(x, safe))

    @register_converter("", "Swish")
    def swish(bb, inputs, attr, params):
        x = inputs[0]
        alpha = float(attr.get("alpha", 1.0))
        return op.multiply(x, op.sigmoid(op.multiply(x, const(alpha, x))))

    def _half_exp_pair(name: str, combine):
        """Cosh / Sinh: (exp(x) combine exp(-x)) / 2."""

        @register_converter("", name)
        class _HalfExpPair(OnnxOpConverter):
            @classmethod
            def _impl_v9(cls, bb, inputs, attr, params):
                x = inputs[0]
                return op.multiply(combine(op.exp(x), op.exp(op.negative(x))), const(0.5, x))

        _HalfExpPair.__name__ = _HalfExpPair.__qualname__ = name
        return _HalfExpPair

    _half_exp_pair("Cosh", op.add)
    _half_exp_pair("Sinh", op.subtract)

    def _pairwise(base):
        """Max / Min / Sum / Mean of non-constant inputs folded pairwise with the broadcasting
        binary op (``maximum``, ``add``, ...), the form TVM's importer keeps for unknown shapes.
        Its static-shape form (``broadcast_to`` every input, ``stack``, reduce over the new axis)
        copies every input into a stacked tensor, and Relax's ``ConvertLayout`` aborts on that
        ``stack`` ("Invalid SLayout"), which left every convolution of the model in NCHW
        (Keras-exported LeakyReLU is ``Max(x, alpha x)``)."""

        @register_converter("", base.__name__)
        class _Pairwise(base):
            @classmethod
            def _impl_v1(cls, bb, inputs, attr, params):
                if all(isinstance(x, tvm.ir.GenericConst) for x in inputs):
                    return super()._impl_v1(bb, inputs, attr, params)
                return cls._impl_dynamic(bb, inputs)

        _Pairwise.__name__ = _Pairwise.__qualname__ = base.__name__
        return _Pairwise

    for _base in (tvm_onnx.Max, tvm_onnx.Min, tvm_onnx.Sum, tvm_onnx.Mean):
        _pairwise(_base)

    @register_converter("", "IsInf")
    class IsInf(OnnxOpConverter):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x = inputs[0]
            pos, neg = int(attr.get("detect_positive", 1)), int(attr.get("detect_negative", 1))
            inf = op.isinf(x)
            if pos and neg:
                return inf
            if not pos and not neg:
                return op.zeros(x.ty.shape, "bool")
            sign = op.greater(x, const(0.0, x)) if pos else op.less(x, const(0.0, x))
            return op.logical_and(inf, sign)

    @register_converter("", "SpaceToDepth")
    class SpaceToDepth(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            bs = int(attr["blocksize"])
            mode = attr.get("mode", b"DCR")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            b, c, h, w = inputs[0].ty.shape
            x = op.reshape(inputs[0], (b, c, h // bs, bs, w // bs, bs))
            perm = [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4]
            return op.reshape(op.permute_dims(x, perm), (b, c * bs * bs, h // bs, w // bs))

    base_layer_norm = tvm_onnx.LayerNormalization

    @register_converter("", "LayerNormalization")
    class LayerNormalization(OnnxOpConverter):
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):
            out = base_layer_norm._impl_v17(bb, inputs, attr, params)
            out = out.fields[0] if isinstance(out, relax.Tuple) else out
            if attr.get("tvm_custom", {}).get("num_outputs", 3) == 1:
                return out
            x = inputs[0]
            rank = _rank(x)
            axis = int(attr.get("axis", -1)) % rank
            axes = list(range(axis, rank))
            stash = "float32" if int(attr.get("stash_type", 1)) == 1 else _dtype(x)
            xs = op.astype(x, stash) if stash != _dtype(x) else x
            mean = op.mean(xs, axis=axes, keepdims=True)
            centered = op.subtract(xs, mean)
            var = op.mean(op.multiply(centered, centered), axis=axes, keepdims=True)
            eps = relax.const(float(attr.get("epsilon", 1e-5)), stash)
            inv = op.divide(relax.const(1.0, stash), op.sqrt(op.add(var, eps)))
            return relax.Tuple([out, mean, inv])

    @register_converter(norm_fusion.DOMAIN, norm_fusion.OP)
    def fused_layer_norm(bb, inputs, attr, params):
        """A layer norm ``norm_fusion`` found written out (any opset): LayerNormalization-17's."""
        return LayerNormalization._impl_v17(bb, inputs, attr, params)

    @register_converter("", "RMSNormalization")
    class RMSNormalization(OnnxOpConverter):
        @classmethod
        def _impl_v23(cls, bb, inputs, attr, params):
            x, scale = inputs[0], inputs[1]
            rank = _rank(x)
            axes = list(range(int(attr.get("axis", -1)) % rank, rank))
            stash = "float32" if int(attr.get("stash_type", 1)) == 1 else _dtype(x)
            xs = op.astype(x, stash) if stash != _dtype(x) else x
            ss = op.astype(scale, stash) if stash != _dtype(scale) else scale
            ms = op.mean(op.multiply(xs, xs), axis=axes, keepdims=True)
            eps = relax.const(float(attr.get("epsilon", 1e-5)), stash)
            y = op.multiply(op.divide(xs, op.sqrt(op.add(ms, eps))), ss)
            return op.astype(y, _dtype(x)) if stash != _dtype(x) else y

    @register_converter("", "Elu")
    def elu(bb, inputs, attr, params):
        x = inputs[0]
        alpha = float(attr.get("alpha", 1.0))
        neg = op.multiply(const(alpha, x), op.subtract(op.exp(x), const(1.0, x)))
        return op.where(op.greater(x, const(0.0, x)), x, neg)

    base_conv_transpose = tvm_onnx.ConvTranspose

    @register_converter("", "ConvTranspose")
    class ConvTranspose(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if "output_shape" in attr:
                attr = dict(attr)
                spatial = _rank(inputs[0]) - 2
                out = [int(v) for v in attr.pop("output_shape")][-spatial:]
                size = [int(v) for v in inputs[0].ty.shape][2:]
                kernel = list(attr.get("kernel_shape") or [int(v) for v in inputs[1].ty.shape][2:])
                strides = list(attr.get("strides", [1] * spatial))
                dil = list(attr.get("dilations", [1] * spatial))
                opad = list(attr.get("output_padding", [0] * spatial))
                mode = attr.pop("auto_pad", b"NOTSET")
                mode = mode.decode() if isinstance(mode, bytes) else str(mode)
                begin, end = [], []
                for i in range(spatial):
                    total = strides[i] * (size[i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - out[i]
                    if total < 0:
                        opad[i] -= total
                        total = 0
                    first = total // 2 if mode == "SAME_UPPER" else total - total // 2
                    begin.append(first)
                    end.append(total - first)
                attr["pads"], attr["output_padding"] = begin + end, opad
            shuffled = _conv_transpose_as_shuffle(bb, relax, inputs, attr, params)
            if shuffled is not None:
                return shuffled
            return base_conv_transpose._impl_v1(bb, inputs, attr, params)

    base_conv = tvm_onnx.Conv

    @register_converter("", "Conv")
    class Conv(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            folded = _conv3d_as_2d(bb, relax, inputs, attr, lambda xs, a: base_conv._impl_v11(bb, xs, a, params))
            return folded if folded is not None else base_conv._impl_v11(bb, inputs, attr, params)

        _impl_v11 = _impl_v1

    base_split = tvm_onnx.Split

    @register_converter("", "Split")
    class Split(OnnxOpConverter):
        """A split with a zero-size part is one ``strided_slice`` per part (TVM's ``split``
        needs increasing indices, its build failed); others are TVM's."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            sizes = [int(v) for v in attr.get("split", [])]
            if 0 in sizes:
                return cls._slices(bb, inputs[0], sizes, int(attr.get("axis", 0)))
            return base_split._impl_v1(bb, inputs, attr, params)

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            if len(inputs) > 1 and inputs[1] is not None:
                sizes = [int(v) for v in _constant_array(inputs[1], params, "Split split").reshape(-1)]
                if 0 in sizes:
                    return cls._slices(bb, inputs[0], sizes, int(attr.get("axis", 0)))
            return base_split._impl_v13(bb, inputs, attr, params)

        @staticmethod
        def _slices(bb, x, sizes: list[int], axis: int):
            axis = axis % _rank(x)
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            return relax.Tuple([bb.normalize(op.strided_slice(x, axes=[axis], begin=[b], end=[b + n]))
                                for b, n in zip(starts, sizes)])

    base_pow = tvm_onnx.Pow

    @register_converter("", "Pow")
    class Pow(OnnxOpConverter):
        """Integer bases in float64, rounded back; a float base with a constant scalar exponent
        2, 3 or 4 as multiplies and 0.5 as a square root, as onnxruntime does (TOPI's
        ``power`` is a scalar libm call per element: a tanh-GELU's ``x ** 3`` took 18x
        onnxruntime's time; the exponent is a constant here by ``static_operands``)."""

        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):
            x, y = inputs
            if isinstance(getattr(x, "ty", None), relax.TensorType) and isinstance(y, tvm.ir.GenericConst) \
                    and _dtype(x) in ("float16", "float32", "float64"):
                value = y.value.numpy()
                if value.size == 1 and value.ndim <= len(x.ty.shape):
                    e = float(value.reshape(-1)[0])
                    if e == 0.5:
                        return op.sqrt(x)
                    if e in (2.0, 3.0, 4.0):
                        sq = bb.emit(op.multiply(x, x))
                        return {2.0: sq, 3.0: op.multiply(sq, x), 4.0: op.multiply(sq, sq)}[e]
            if not all(isinstance(getattr(v, "ty", None), relax.TensorType) for v in (x, y)):
                return base_pow._impl_v7(bb, inputs, attr, params)
            dx, dy = _dtype(x), _dtype(y)
            if dx.startswith(("int", "uint")):
                r = op.power(op.astype(x, "float64"), op.astype(y, "float64") if dy != "float64" else y)
                return op.astype(op.round(r), dx)
            if dy != dx:
                y = op.astype(y, dx)
            return op.power(x, y)

    _register_gaps(relax, tvm_onnx, OnnxOpConverter)


def _conv3d_as_2d(bb, relax, inputs, attr: dict, conv2d):
    """A 5-D Conv whose kernel depth is 1 with depth stride 1 and no depth padding, as the 2-D
    convolution of every depth slice: ``x [N, C, D, H, W]`` -> ``[N * D, C, H, W]`` (depth
    next to the batch), weights ``[K, C/g, 1, kh, kw]`` -> ``[K, C/g, kh, kw]``, ``conv2d`` (TVM's
    2-D converter with the height/width attributes), back to ``[N, K, D, H', W']``. Returns
    None for any other Conv (static shapes and explicit pads only)."""
    op = relax.op
    x, w = inputs[0], inputs[1]
    shape, wshape = getattr(x.ty, "shape", None), getattr(w.ty, "shape", None)
    if shape is None or wshape is None or len(shape) != 5 or len(wshape) != 5:
        return None
    try:
        n, c, d, h, wd = (int(v) for v in shape)
        k_out, c_in, kd, kh, kw = (int(v) for v in wshape)
    except TypeError:  # a symbolic dimension
        return None
    mode = attr.get("auto_pad", b"NOTSET")
    strides, pads = list(attr.get("strides", [1, 1, 1])), list(attr.get("pads", [0] * 6))
    dil = list(attr.get("dilations", [1, 1, 1]))
    explicit = (mode.decode() if isinstance(mode, bytes) else str(mode)) == "NOTSET"
    if kd != 1 or strides[0] != 1 or pads[0] or pads[3] or not explicit:
        return None
    x2 = op.reshape(op.permute_dims(x, [0, 2, 1, 3, 4]) if d > 1 else x, [n * d, c, h, wd])
    a2 = {"kernel_shape": [kh, kw], "strides": strides[1:], "pads": [pads[1], pads[2], pads[4], pads[5]],
          "dilations": dil[1:], "group": int(attr.get("group", 1))}
    bias = inputs[2] if len(inputs) > 2 else None
    y = bb.normalize(conv2d([bb.normalize(x2), bb.normalize(op.reshape(w, [k_out, c_in, kh, kw])), bias], a2))
    oh, ow = int(y.ty.shape[2]), int(y.ty.shape[3])
    if d == 1:
        return op.reshape(y, [n, k_out, 1, oh, ow])
    return op.permute_dims(op.reshape(y, [n, d, k_out, oh, ow]), [0, 2, 1, 3, 4])


def _conv_transpose_as_shuffle(bb, relax, inputs, attr: dict, params):
    """A 1-D or 2-D ConvTranspose (group 1, dilation 1, constant weight) as one convolution of
    its ``s`` (1-D) or ``s x s`` (2-D) output phases plus a pixel shuffle and a crop (the
    polyphase form).

    Output row ``Y = q * s + r`` of the uncropped result sums ``x[q - t] * W[r + t * s]`` over
    the taps ``t < T = ceil(k / s)``: for every phase a ``T``-tap convolution of the input
    padded by ``T - 1``. All phases are one convolution to ``Cout * s (* s)`` channels (taps
    past the kernel are 0); the pixel shuffle interleaves them; the pads and
    ``output_padding`` are a crop of that (rows past the last input term get the bias only,
    as ONNX defines). ``k == s`` (the 2x2 / stride-2 upsampling of U-Nets, FPNs and
    text-detector heads) is a 1x1 convolution with no crop. TVM's own form dilates the input
    with zeros and runs a dense ``k``-tap convolution over it (``s`` times the work per
    spatial axis, gathers; and in 1-D no channels-last form at all): 28.5 of PP-OCR det's 48 ms
    at 1 thread; an EEG U-Net's four 1-D ones (k = s = 5 and 2), 6.5 ms at 1 thread against
    onnxruntime's 1.0.
    Returns None for any other ConvTranspose (it goes to TVM's converter)."""
    import itertools

    import numpy as np

    x, w = inputs[0], inputs[1]
    if _rank(x) not in (3, 4) or len(inputs) > 3 or not all(hasattr(v, "value") for v in x.ty.shape):
        return None
    d = _rank(x) - 2
    k = [int(v) for v in w.ty.shape][2:]
    s = list(attr.get("strides", [1] * d))
    pads = list(attr.get("pads", [0] * (2 * d)))
    opad = list(attr.get("output_padding", [0] * d))
    mode = attr.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if (list(attr.get("kernel_shape") or k) != k or int(attr.get("group", 1)) != 1 or mode not in ("NOTSET", "VALID")
            or any(v != 1 for v in attr.get("dilations", [1] * d)) or min(pads) < 0 or len(s) != d or len(k) != d):
        return None
    try:
        weight = _constant_array(w, params, "weight")
        bias = _constant_array(inputs[2], params, "bias") if len(inputs) > 2 and inputs[2] is not None else None
    except ValueError:
        return None
    n, _, *size = (int(v) for v in x.ty.shape)
    cin, cout = weight.shape[:2]
    taps = [-(-k[i] // s[i]) for i in range(d)]
    full = [(size[i] - 1) * s[i] + k[i] + opad[i] for i in range(d)]  # uncropped output
    extra = [max(0, -(-(full[i] - (size[i] + taps[i] - 1) * s[i]) // s[i])) for i in range(d)]
    w2 = np.zeros((cout, *s, cin, *taps), weight.dtype)
    for r in itertools.product(*(range(v) for v in s)):
        for a in itertools.product(*(range(v) for v in taps)):
            kk = tuple(r[i] + (taps[i] - 1 - a[i]) * s[i] for i in range(d))  # tap a reads kernel row kk
            if all(kk[i] < k[i] for i in range(d)):
                w2[(slice(None), *r, slice(None), *a)] = weight[(slice(None), slice(None), *kk)].T
    phases = int(np.prod(s))
    w2 = w2.reshape(cout * phases, cin, *taps)
    op = relax.op
    conv_pad = [t - 1 for t in taps] + [taps[i] - 1 + extra[i] for i in range(d)]
    conv = op.nn.conv2d if d == 2 else op.nn.conv1d
    # the dtype named: relax.const alone makes float64 float32 (and int64 int32)
    y = bb.normalize(conv(x, relax.const(w2, str(w2.dtype)), padding=conv_pad, out_dtype=_dtype(x)))
    if bias is not None:
        b1 = np.repeat(bias.astype(weight.dtype), phases).reshape(1, -1, *[1] * d)
        y = bb.normalize(op.add(y, relax.const(b1, str(b1.dtype))))
    q = [size[i] + taps[i] - 1 + extra[i] for i in range(d)]
    y = op.reshape(y, [n, cout, *s, *q])
    y = op.permute_dims(y, [0, 1] + [j for i in range(d) for j in (2 + d + i, 2 + i)])  # (q, s) per axis
    y = bb.normalize(op.reshape(y, [n, cout, *(q[i] * s[i] for i in range(d))]))
    out = [full[i] - pads[i] - pads[i + d] for i in range(d)]
    if pads[:d] == [0] * d and out == [q[i] * s[i] for i in range(d)]:
        return y
    return op.strided_slice(y, axes=list(range(2, 2 + d)), begin=pads[:d], end=[pads[i] + out[i] for i in range(d)])


def _constant_array(expr, params, what: str):
    """The numpy value of a constant operand; ValueError if it is a run-time value."""
    import numpy as np
    import tvm
    from tvm.relax.frontend.onnx.onnx_frontend import get_constant

    c = get_constant(expr, params)
    if not isinstance(c, tvm.ir.GenericConst):
        raise ValueError(f"{what} must be a constant (a graph input here: see --const-input)")
    return np.asarray(c.value.numpy())


def _constant_int(expr, params, what: str) -> int:
    """The value of a scalar (or one-element) constant operand; ValueError if it is not one."""
    value = _constant_array(expr, params, what)
    if value.size != 1:
        raise ValueError(f"{what} must be a scalar or a one-element tensor, not shape {list(value.shape)}")
    return int(value.reshape(()))


def _register_gaps(relax, tvm_onnx, OnnxOpConverter) -> None:
    """Converters for ops the importer lacks (BitCast, CumProd, ReverseSequence) or gets wrong
    (Constant's ``value_*`` attributes, ConstantOfShape of a shape, ReduceMax/Min of infinities
    and bools, Resize's ``axes``, OneHot's depth and value types): see the module docstring."""
    import numpy as np

    op = relax.op
    base_constant = tvm_onnx.Constant

    @register_converter("", "Constant")
    class Constant(OnnxOpConverter):
        """``value_float(s)`` / ``value_int(s)`` as float32 / int64 tensors (TVM: ``value`` only)."""

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            for key, dtype in (("value_float", "float32"), ("value_floats", "float32"), ("value_int", "int64"),
                               ("value_ints", "int64")):
                if key in attr:
                    return relax.const(np.array(attr[key], dtype=dtype), dtype)
            return base_constant._impl_v13(bb, inputs, attr, params)

        _impl_v1 = _impl_v9 = _impl_v11 = _impl_v12 = _impl_v13

    base_constant_of_shape = tvm_onnx.ConstantOfShape

    @register_converter("", "ConstantOfShape")
    class ConstantOfShape(OnnxOpConverter):
        """A shape value (``Shape``'s output is a Relax shape, not a tensor) broadcast to
        directly; TVM converted it to a shape once more and failed."""

        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):
            shape = inputs[0]
            if not isinstance(getattr(shape, "ty", None), relax.ShapeType):
                return base_constant_of_shape._impl_v9(bb, inputs, attr, params)
            value = attr.get("value")
            value = tvm_onnx.get_numpy(value) if value is not None else np.zeros((), np.float32)
            dtype = str(value.dtype)
            return op.broadcast_to(relax.const(np.asarray(value).reshape(()), dtype), shape)

    @register_converter("", "BitCast")
    class BitCast(OnnxOpConverter):
        """The same bits read as type ``to`` (same width only: the shape stays), with
        ``topi.reinterpret``."""

        @classmethod
        def _impl_v26(cls, bb, inputs, attr, params):
            from onnx.helper import tensor_dtype_to_np_dtype
            from tvm import topi

            x = inputs[0]
            src = np.dtype("bool" if _dtype(x) == "bool" else _dtype(x))
            dst = np.dtype(tensor_dtype_to_np_dtype(int(attr["to"])))
            if src.itemsize != dst.itemsize or dst == np.bool_:
                raise ValueError(f"BitCast from {src.name} to {dst.name}: only types of the same width "
                                 "(not to bool) are supported")
            if src == np.bool_:
                x = op.astype(x, "uint8")
            return bb.emit_te(topi.reinterpret, x, dst.name)

    _register_reductions_resize(relax, tvm_onnx, OnnxOpConverter)
    _register_index_ops(relax, OnnxOpConverter)


def _register_reductions_resize(relax, tvm_onnx, OnnxOpConverter) -> None:
    """ReduceMax/ReduceMin keeping infinities (and taking bools), Resize with ``axes``."""
    import numpy as np

    op = relax.op

    def const(value, like):
        return relax.const(value, _dtype(like))

    def _reduce_keeping_inf(name: str, inf: float):
        """ReduceMax / ReduceMin of floats: TVM starts the reduction at the lowest (highest)
        finite value, so a row of only -inf (+inf) gave -FLT_MAX (FLT_MAX); such rows get the
        infinity back (an attention row fully masked with -inf relies on it)."""
        base = getattr(tvm_onnx, name)
        other = getattr(tvm_onnx, "ReduceMin")  # "all elements are inf": min of the indicator is 1

        def convert(bb, inputs, attr, params, version: int):
            x = inputs[0]
            if any(int(d) == 0 for d in x.ty.shape):  # the empty set: ONNX gives the identity
                return empty(x, inputs, attr, params, version)
            if _dtype(x) == "bool":  # TVM has no initial value for bool: through uint8
                as_int = getattr(base, f"_impl_v{version}")(bb, [op.astype(x, "uint8"), *inputs[1:]], attr, params)
                return op.astype(as_int, "bool")
            reduced = getattr(base, f"_impl_v{version}")(bb, inputs, attr, params)
            if not _dtype(x).startswith(("float", "bfloat")):
                return reduced
            hit = op.astype(op.equal(x, const(inf, x)), _dtype(x))
            every = bb.normalize(getattr(other, f"_impl_v{version}")(bb, [hit, *inputs[1:]], attr, params))
            return op.where(op.equal(every, const(1.0, x)), const(inf, x), reduced)

        def empty(x, inputs, attr, params, version: int):
            """A reduction of a zero-size tensor: the reduction's identity in the output's
            shape, ``inf`` (-inf for ReduceMax) for floats as ``sum + inf`` (TVM's max/min kernel
            failed on the zero-size buffer at run time; its sum gives the zeros), the type's
            lowest (highest) value for integers, False (True) for bools."""
            rank = _rank(x)
            if version >= 18:
                given = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
                axes = [] if given is None else _constant_array(given, params, f"{name} axes").reshape(-1).tolist()
                if not axes and int(attr.get("noop_with_empty_axes", 0)):
                    return x
            else:
                axes = list(attr.get("axes", []))
            axes = {int(a) % rank for a in axes} or set(range(rank))
            dt = _dtype(x)
            if not dt.startswith("float"):
                zeros = op.sum(op.astype(x, "int64"), axis=sorted(axes), keepdims=bool(int(attr.get("keepdims", 1))))
                if dt == "bool":  # max: False (no element is true), min: True
                    return op.astype(op.add(zeros, relax.const(int(inf > 0), "int64")), "bool")
                info = np.iinfo(dt)
                ident = np.array(info.max if inf > 0 else info.min, dt)
                return op.add(op.astype(zeros, dt), relax.const(ident, dt))
            total = op.sum(x, axis=sorted(axes), keepdims=bool(int(attr.get("keepdims", 1))))  # zeros
            return op.add(total, const(inf, x))

        @register_converter("", name)
        class _Reduce(OnnxOpConverter):
            @classmethod
            def _impl_v11(cls, bb, inputs, attr, params):
                return convert(bb, inputs, attr, params, 11)

            @classmethod
            def _impl_v18(cls, bb, inputs, attr, params):
                return convert(bb, inputs, attr, params, 18)

    _reduce_keeping_inf("ReduceMax", float("-inf"))
    _reduce_keeping_inf("ReduceMin", float("inf"))

    base_resize = tvm_onnx.Resize

    @register_converter("", "Resize")
    class Resize(OnnxOpConverter):
        """``axes`` (opset 18), which TVM ignored: ``roi``/``scales``/``sizes`` given for those
        axes only are spread to every axis (roi 0..1, scale 1, size the input's) first."""

        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):
            inputs = _without_empty_operands(inputs, params)
            policy = attr.get("keep_aspect_ratio_policy", b"stretch")
            policy = policy.decode() if isinstance(policy, bytes) else str(policy)
            matrix = _resize_by_matrices(bb, relax, inputs, attr, params, policy)
            if matrix is not None:  # linear / cubic cases TVM gets wrong: resize_matrix.py
                return matrix
            if "axes" not in attr and policy == "stretch":
                return base_resize._impl_v18(bb, inputs, attr, params)
            rank = _rank(inputs[0])
            dims = [int(v) for v in inputs[0].ty.shape]
            axes = [int(a) % rank for a in attr.get("axes", range(rank))]
            new = list(inputs) + [None] * (4 - len(inputs))
            if policy != "stretch" and new[3] is not None:  # one scale for all axes, sizes rounded
                sizes = _constant_array(new[3], params, "Resize sizes").reshape(-1)
                ratios = [sizes[k] / dims[a] for k, a in enumerate(axes)]
                scale = min(ratios) if policy == "not_larger" else max(ratios)
                new[3] = relax.const(np.array([int(scale * dims[a] + 0.5) for a in axes], "int64"), "int64")
            if new[1] is not None:
                roi = _constant_array(new[1], params, "Resize roi").reshape(-1)
                if roi.size:
                    full = np.array([0.0] * rank + [1.0] * rank, roi.dtype)
                    full[axes], full[[rank + a for a in axes]] = roi[:len(axes)], roi[len(axes):]
                    new[1] = relax.const(full, str(roi.dtype))
            for k, fill in ((2, np.ones(rank)), (3, np.array(dims))):
                if new[k] is None:
                    continue
                given = _constant_array(new[k], params, "Resize scales/sizes").reshape(-1)
                if given.size:
                    full = fill.astype(given.dtype)
                    full[axes] = given
                    new[k] = relax.const(full, str(given.dtype))
            attr = {k: v for k, v in attr.items() if k not in ("axes", "keep_aspect_ratio_policy")}
            return base_resize._impl_v18(bb, new[:3] if new[3] is None else new, attr, params)



def _without_empty_operands(inputs, params) -> list:
    """Resize's ``inputs`` with an empty constant ``roi`` / ``scales`` / ``sizes`` as absent:
    torch's opset-11 export of ``interpolate(size=...)`` writes ``scales`` as an empty tensor
    beside ``sizes``, which TVM's converter took for both given ("Only one of scales and sizes")."""
    from tvm import ir
    from tvm.relax.frontend.onnx.onnx_frontend import get_constant

    out = list(inputs)
    for k in range(1, min(len(out), 4)):
        if out[k] is None:
            continue
        value = get_constant(out[k], params)
        if isinstance(value, ir.expr.Constant) and value.value.numpy().size == 0:
            out[k] = None
    while len(out) > 1 and out[-1] is None:
        out.pop()
    return out


def _resize_by_matrices(bb, relax, inputs, attr: dict, params, policy: str):
    """Resize through ``resize_matrix`` (one constant matrix per resized axis) where that
    module's ``wanted`` says TVM's resize is wrong; None: TVM's converter does it."""
    import numpy as np

    from . import resize_matrix

    x = inputs[0]
    dims = [int(v) for v in x.ty.shape]
    rank = len(dims)
    axes = [int(a) % rank for a in attr.get("axes", range(rank))]
    ins = list(inputs) + [None] * (4 - len(inputs))
    sizes = scales = None
    if ins[3] is not None:
        sizes = _constant_array(ins[3], params, "Resize sizes").reshape(-1)
    if ins[2] is not None and sizes is None:
        scales = _constant_array(ins[2], params, "Resize scales").reshape(-1)
        scales = None if scales.size == 0 else scales
    if sizes is None and scales is None:
        return None
    factors, out = resize_matrix.plan(dims, axes, scales, sizes, policy)
    mode = resize_matrix._text(attr.get("mode"), "nearest")
    ctm = resize_matrix._text(attr.get("coordinate_transformation_mode"), "half_pixel")
    if not resize_matrix.wanted(mode, ctm, bool(attr.get("antialias", 0)), dims, out, factors):
        return None
    roi = None
    if ins[1] is not None and ctm == "tf_crop_and_resize":
        given = _constant_array(ins[1], params, "Resize roi").reshape(-1).astype(np.float64)
        roi = np.array([0.0] * rank + [1.0] * rank)
        roi[axes], roi[[rank + a for a in axes]] = given[:len(axes)], given[len(axes):]
    return resize_matrix.register_lowering(relax)(bb, x, attr, roi, factors, out)


def _register_index_ops(relax, OnnxOpConverter) -> None:
    """CumProd, OneHot, ReverseSequence."""
    import numpy as np

    op = relax.op

    @register_converter("", "CumProd")
    class CumProd(OnnxOpConverter):
        """Running product along ``axis`` (a constant); ``exclusive``, ``reverse`` as CumSum."""

        @classmethod
        def _impl_v26(cls, bb, inputs, attr, params):
            x = inputs[0]
            axis = _constant_int(inputs[1], params, "CumProd axis")
            reverse = int(attr.get("reverse", 0)) != 0
            if reverse:
                x = op.flip(x, axis)
            y = op.cumprod(x, axis, exclusive=int(attr.get("exclusive", 0)) != 0)
            return op.flip(y, axis) if reverse else y

    @register_converter("", "OneHot")
    class OneHot(OnnxOpConverter):
        """``out[..., d, ...] = on if index == d (negative indices + depth) else off``; depth of
        any numeric type (truncated), values' dtype kept, out-of-range indices all ``off``."""

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            indices = inputs[0]
            depth = int(_constant_array(inputs[1], params, "OneHot depth").reshape(-1)[0])
            values = _constant_array(inputs[2], params, "OneHot values")
            off, on = values.reshape(-1)[:2]
            rank = _rank(indices)
            axis = int(attr.get("axis", -1))
            axis = axis + rank + 1 if axis < 0 else axis
            idx = op.astype(indices, "int64")
            idx = op.where(op.less(idx, relax.const(0, "int64")), op.add(idx, relax.const(depth, "int64")), idx)
            shape = [1] * (rank + 1)
            shape[axis] = depth
            classes = op.reshape(op.arange(0, depth, 1, "int64"), shape)
            hit = op.equal(op.expand_dims(idx, axis), classes)
            dt = str(values.dtype)
            return op.where(hit, relax.const(np.array(on, dt), dt), relax.const(np.array(off, dt), dt))

    @register_converter("", "ReverseSequence")
    class ReverseSequence(OnnxOpConverter):
        """``out[t, b] = x[L[b] - 1 - t, b]`` for ``t < L[b]``, else ``x[t, b]`` (time and batch
        axes 0/1 per ``time_axis`` / ``batch_axis``): one gather_elements along time."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x, lens = inputs
            t_ax, b_ax = int(attr.get("time_axis", 0)), int(attr.get("batch_axis", 1))
            shape = [int(v) for v in x.ty.shape]
            steps = [1] * len(shape)
            steps[t_ax] = shape[t_ax]
            per_batch = [1] * len(shape)
            per_batch[b_ax] = shape[b_ax]
            t = op.reshape(op.arange(0, shape[t_ax], 1, "int64"), steps)
            n = op.reshape(op.astype(lens, "int64"), per_batch)
            idx = op.where(op.less(t, n), op.subtract(op.subtract(n, relax.const(1, "int64")), t), t)
            return op.gather_elements(x, op.broadcast_to(idx, shape), t_ax)


register_if_available(register)

"""``ai.optc::IntConv2d``: a 2-D convolution on 8-bit codes with int32 accumulation and
fixed-point requantization, emitted by ``integerize`` for ``DQ -> Conv [-> Relu|Clip] -> Q``."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.onnx_utils import int_attr
from optc.ops import DOMAIN, Attr, Cost, Operand, Surrogate, attributes, conv_surrogate, define
from optc.passes.optc_ops import ConvGeometry
from optc.passes.quant.int_ops import check_acc, int_conv2d, layout_of, out_dtype, requantize

from ._common import CODES, I32, REQUANT_ATTRS, REQUANT_OPERANDS, example_int_layer, is_nhwc, requant_attrs


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """The weight packing and bias kernels, then the int8 conv kernel of the target's
    instruction set (:func:`optc.backends.tvm.int8.conv_func`), or the depthwise kernel."""
    import tvm

    from optc.backends.tvm import int8
    from optc.backends.tvm.lower import call_kernel, conv_params, static_shape

    x, w, bias, mult, shift = inputs[:5]
    isa = int8.current_isa()
    x_layout, y_layout = (layout_of(attr.get(k)) for k in ("x_layout", "y_layout"))
    b, c, h, wd = static_shape(x) if x_layout == "NCHW" else [static_shape(x)[i] for i in (0, 3, 1, 2)]
    n, cg, kh, kw = static_shape(w)
    group = int(attr.get("group", 1))
    geom = ConvGeometry(*conv_params(attr), group, x_layout, y_layout)
    in_dtype, rq = str(x.ty.dtype), requant_attrs(attr)
    oh, ow = geom.output_shape(h, wd)
    if group != 1:
        if not (group == c == n and cg == 1):
            raise ValueError(f"IntConv2d: group {group} is not supported (1 or depthwise)")
        from optc.backends.tvm.schedule import _vector_bits

        func = int8.depthwise_func((b, c, h, wd), geom, rq, in_dtype=in_dtype,
                                   lanes=_vector_bits(tvm.target.Target.current()) // 32)
        return call_kernel(bb, func, "optc_int_depthwise", [x, w, bias, mult, shift],
                           [b, n, oh, ow] if y_layout == "NCHW" else [b, oh, ow, n], rq.out_dtype)
    w_dtype = int8.weight_dtype(isa)
    wp = bb.emit(call_kernel(bb, int8.weight_pack_func(n, c, kh, kw, w_dtype), "optc_int_weight_pack", [w],
                             int8.weight_pack_shape(n, c, kh, kw), w_dtype))
    bk = int8.kernel_bias(bb, w, bias, in_dtype, isa)
    func = int8.conv_func(isa, (b, c, h, wd), n, geom, rq, in_dtype=in_dtype)
    return call_kernel(bb, func, "optc_int_conv2d", [x, wp, bk, mult, shift],
                       [b, n, oh, ow] if y_layout == "NCHW" else [b, oh, ow, n], rq.out_dtype)


def _cost(s: Surrogate) -> bool:
    """Conv on the op's own weight shape and group, Transposes around it for NHWC activations."""
    w = s.input_dims(1)
    return bool(w) and conv_surrogate(s, w, group=s.attr_int("group") or 1, x_nhwc=is_nhwc(s, "x_layout"),
                                      y_nhwc=is_nhwc(s, "y_layout"))


def _depthwise(node, weight_shape) -> bool:
    """One input channel per group: KH * KW products per output, no dot product fits."""
    return bool(weight_shape) and len(weight_shape) == 4 and weight_shape[1] == 1 and (int_attr(node, "group") or 1) > 1


def _example(rng) -> tuple[list, dict]:
    return example_int_layer(rng, (1, 7, 9, 5), (20, 5, 3, 3), kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1],
                             x_layout="NHWC")


@define(inputs=(Operand("X", CODES), Operand("W", ("int8",)), Operand("B", I32), *REQUANT_OPERANDS),
        attributes=(Attr("kernel_shape", "ints", required=True), Attr("pads", "ints"), Attr("strides", "ints"),
                    Attr("dilations", "ints"), Attr("group", "int"), *REQUANT_ATTRS, Attr("x_layout", "string"),
                    Attr("y_layout", "string")),
        outputs=(Operand("Y", CODES),),
        cost=Cost("int8", _cost, dot_product=True, depthwise=_depthwise, requantize=True),
        lowering={"tvm": lower_tvm}, example=_example)
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

    def _run(self, X, W, B, multiplier, shift, **attrs):  # noqa: N803
        a = attributes(self, attrs)
        if layout_of(a.x_layout) == "NHWC":
            X = np.transpose(X, (0, 3, 1, 2))
        geom = ConvGeometry(a.kernel_shape, a.pads, a.strides, a.dilations, a.group or 1)
        acc = int_conv2d(X, W, B, geom, a.x_zero_point or 0)
        check_acc(acc, "IntConv2d")
        y = requantize(acc, multiplier, shift, 1, a.y_zero_point or 0, a.out_min, a.out_max,
                       out_dtype(a.to, a.out_min, a.out_max))
        return (np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if layout_of(a.y_layout) == "NHWC" else y,)

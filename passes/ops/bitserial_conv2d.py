"""``ai.optc::BitserialConv2d``: a 2-D convolution on k-bit unsigned codes (bit planes,
AND-popcount), emitted by ``binarize`` with more than one bit."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Operand, attributes, define
from optc.passes.optc_ops import bitserial_conv2d_int, conv_weight_taps, planes, quantize_codes

from ._common import BINARY_CONV_COST, BITSERIAL_ATTRS, CONV_ATTRS, EXAMPLE_CONV, F32, U64, bitserial_inputs, \
    example_conv_weights, optional_input


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """The weight relayout kernel (per tap, one lane block per plane), then the bit-serial conv
    kernel (:func:`optc.backends.tvm.bitserial.bitserial_conv2d_func`)."""
    from optc.backends.tvm import bitserial
    from optc.backends.tvm.lower import call_kernel, conv_params, static_shape
    from optc.passes.optc_ops import ConvGeometry

    x, w, ws, wo = inputs[:4]
    bias = optional_input(inputs, 4)
    b, c, h, wd = static_shape(x)
    n, wb, _ = static_shape(w)
    geom = ConvGeometry(*conv_params(attr))
    kh, kw = geom.kernel_shape
    oh, ow = geom.output_shape(h, wd)
    wt = bb.emit(call_kernel(bb, bitserial.conv_weight_lanes_func(n, kh, kw, c, wb), "optc_conv_weight_lanes", [w],
                             bitserial.conv_weight_lanes_shape(n, kh, kw, c, wb), "uint64"))
    func = bitserial.bitserial_conv2d_func((b, c, h, wd), n, geom, int(attr["act_bits"]), wb,
                                           float(attr["act_scale"]), bias is not None)
    args = [x, wt, ws, wo] + ([bias] if bias is not None else [])
    return call_kernel(bb, func, "optc_bitserial_conv2d", args, [b, n, oh, ow])


def _example(rng) -> tuple[list, dict]:
    return bitserial_inputs(rng, (1, 5, 7, 6), example_conv_weights(rng, 4, 5, (3, 3), 2), 4), \
        {**EXAMPLE_CONV, "act_bits": 2, "weight_bits": 2, "act_scale": 0.25}


@define(inputs=(Operand("X", F32), Operand("W", U64), Operand("w_scale", F32), Operand("w_offset", F32),
                Operand("B", F32, optional=True)),
        attributes=(*CONV_ATTRS, *BITSERIAL_ATTRS), outputs=(Operand("Y", F32),),
        cost=BINARY_CONV_COST, lowering={"tvm": lower_tvm}, example=_example)
class BitserialConv2d(OpRun):
    """``BitserialConv2d(X, W, w_scale, w_offset[, B]) -> Y``  (attributes as BinaryConv2d plus
    ``act_bits``, ``weight_bits``, ``act_scale``)

    ``W`` uint64 ``[N, wb, ceil(KH * KW * C / 64)]`` (each plane in the (kh, kw, c) order of
    BinaryConv2d). Zero padding is code 0 (= value 0), so D and S sum over all taps. Output as
    BitserialDense, per output position.
    """

    op_domain = DOMAIN

    def _run(self, X, W, w_scale, w_offset, B=None, **attrs):  # noqa: N803
        at = attributes(self, attrs)
        q = quantize_codes(np.asarray(X).transpose(0, 2, 3, 1), at.act_scale, at.act_bits)  # [B, H, W, C]
        a = planes(q, at.act_bits)  # [B, ab, H, W, CW]
        wt = conv_weight_taps(W, at.in_channels, at.kernel_shape)  # [N, wb, KH, KW, CW]
        d, s = bitserial_conv2d_int(a, wt, at.kernel_shape, at.pads, at.strides, at.dilations)
        ws = np.asarray(w_scale, np.float32)[None, :, None, None]
        wo = np.asarray(w_offset, np.float32)[None, :, None, None]
        y = np.float32(at.act_scale) * (ws * d.astype(np.float32) + wo * s.astype(np.float32)[:, None])
        if B is not None:
            y = y + np.asarray(B, np.float32)[None, :, None, None]
        return (y.astype(np.float32),)

"""``ai.optc::BinaryConv2d``: a 2-D convolution on sign bits (xnor-popcount), emitted by
``binarize`` for Conv layers."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Operand, attributes, define
from optc.passes.optc_ops import binary_conv2d_int, conv_weight_taps, pack_bits, scale_and_shift

from ._common import BINARY_CONV_COST, CONV_ATTRS, EXAMPLE_CONV, F32, U64, alpha_bias, binary_conv_operands, \
    example_conv_weights


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """The weight relayout kernel, then the bit-serial conv kernel
    (:func:`optc.backends.tvm.bitserial.binary_conv2d_func`)."""
    from optc.backends.tvm import bitserial
    from optc.backends.tvm.lower import call_kernel

    x, w = inputs[0], inputs[1]
    extra, has_bias, has_alpha = alpha_bias(inputs)
    x_shape, n, geom, (oh, ow), wt = binary_conv_operands(bb, x, w, attr)
    func = bitserial.binary_conv2d_func(x_shape, n, geom, has_bias, has_alpha)
    return call_kernel(bb, func, "optc_binary_conv2d", [x, wt] + extra, [x_shape[0], n, oh, ow])


def binary_conv2d(X, W, alpha, B, a) -> np.ndarray:  # noqa: N803
    """The reference's numbers (also those of BinaryConv2dThreshold's conv); ``a``: the
    attribute record (``in_channels``, ``kernel_shape``, ``pads``, ``strides``, ``dilations``)."""
    xbits = pack_bits(np.asarray(X).transpose(0, 2, 3, 1) >= 0, axis=-1)  # [B, H, W, CW]
    wt = conv_weight_taps(W, a.in_channels, a.kernel_shape)
    acc = binary_conv2d_int(xbits, wt, a.in_channels, a.kernel_shape, a.pads, a.strides, a.dilations)
    return scale_and_shift(acc, alpha, B, 1)


def _example(rng) -> tuple[list, dict]:
    return [rng.standard_normal((2, 5, 7, 6)).astype(np.float32), example_conv_weights(rng, 6, 5, (3, 3)),
            rng.uniform(0.5, 2, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)], dict(EXAMPLE_CONV)


@define(inputs=(Operand("X", F32), Operand("W", U64), Operand("alpha", F32, optional=True),
                Operand("B", F32, optional=True)),
        attributes=CONV_ATTRS, outputs=(Operand("Y", F32),), cost=BINARY_CONV_COST, lowering={"tvm": lower_tvm},
        example=_example)
class BinaryConv2d(OpRun):
    """``BinaryConv2d(X, W[, alpha][, B]) -> Y``  (attributes ``in_channels`` C, ``kernel_shape``
    [KH, KW], ``pads`` [top, left, bottom, right], ``strides`` [2], ``dilations`` [2]; group 1)

    ``X`` float32 NCHW ``[N_b, C, H, W]``, binarized at run time as for BinaryDense.
    ``W`` uint64 ``[N, ceil(KH * KW * C / 64)]``: row n is the packed sign bits of the weight
    ``w[n]`` flattened in (kh, kw, c) order, i.e. element ``k = (kh * KW + kw) * C + c`` (the
    im2col / FINN order). Zero padding as in ONNX Conv on the +-1 tensor: padded positions
    contribute 0 (not +-1), so ``Y[b, n, oh, ow] = alpha[n] * sum_{taps (kh, kw) inside the
    input} sum_c sign(x[b, c, ih, iw]) * sign(w[n, c, kh, kw]) + B[n]`` with
    ``ih = oh * stride_h - pad_top + kh * dilation_h`` (same for w). Output float32 NCHW.
    """

    op_domain = DOMAIN

    def _run(self, X, W, alpha=None, B=None, **attrs):  # noqa: N803
        return (binary_conv2d(X, W, alpha, B, attributes(self, attrs)),)

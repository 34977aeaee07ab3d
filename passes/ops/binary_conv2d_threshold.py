"""``ai.optc::BinaryConv2dThreshold``: a binary convolution with its threshold activation and
an optional max-pool fused, emitted by ``fuse-binary-threshold``."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Attr, Operand, attributes, define

from ._common import BINARY_CONV_COST, CONV_ATTRS, EXAMPLE_CONV, F32, U64, binary_conv_operands, \
    example_conv_weights, optional_input
from .binary_conv2d import binary_conv2d
from .sign_threshold import SignThreshold


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """The weight relayout kernel, then one kernel for conv, threshold and pool
    (:func:`optc.backends.tvm.bitserial.binary_conv2d_threshold_func`)."""
    from optc.backends.tvm import bitserial
    from optc.backends.tvm.lower import call_kernel

    x, w, t, d = inputs[0], inputs[1], inputs[2], optional_input(inputs, 3)
    x_shape, n, geom, (oh, ow), wt = binary_conv_operands(bb, x, w, attr)
    pool = [int(v) for v in attr.get("pool_shape", (1, 1))]
    func = bitserial.binary_conv2d_threshold_func(x_shape, n, geom, d is not None, pool)
    args = [x, wt, t] + ([d] if d is not None else [])
    return call_kernel(bb, func, "optc_binary_conv2d_threshold", args, [x_shape[0], n, oh // pool[0], ow // pool[1]])


def _example(rng) -> tuple[list, dict]:
    return [rng.standard_normal((1, 5, 8, 8)).astype(np.float32), example_conv_weights(rng, 6, 5, (3, 3)),
            rng.integers(-6, 7, 6).astype(np.float32), np.where(rng.random(6) < 0.5, 1, -1).astype(np.float32)], \
        {**EXAMPLE_CONV, "strides": [1, 1], "pool_shape": [2, 2]}


@define(inputs=(Operand("X", F32), Operand("W", U64), Operand("T", F32), Operand("D", F32, optional=True)),
        attributes=(*CONV_ATTRS, Attr("pool_shape", "ints")), outputs=(Operand("Y", F32),),
        cost=BINARY_CONV_COST, lowering={"tvm": lower_tvm}, example=_example)
class BinaryConv2dThreshold(OpRun):
    """``BinaryConv2dThreshold(X, W, T[, D]) -> Y``  (attributes of BinaryConv2d plus
    ``pool_shape`` [PH, PW], default [1, 1])

    A binary convolution with its threshold activation and an optional max-pool fused (what
    ``fuse-binary-threshold`` makes of ``BinaryConv2d -> SignThreshold [-> MaxPool]``; FINN's
    MVTU with thresholds). ``Y = MaxPool_{PH x PW, stride PH x PW}(SignThreshold(
    BinaryConv2d(X, W), T, D))``: the integer conv output (no alpha, no bias) is compared with
    the (integer) thresholds, output float32 +-1 NCHW ``[N_b, N, floor(OH / PH), floor(OW / PW)]``
    (as MaxPool with ceil_mode 0: trailing rows/columns that fill no window are dropped). Since
    the values are +-1, the max-pool is an OR of the threshold bits.
    """

    op_domain = DOMAIN

    def _run(self, X, W, T, D=None, **attrs):  # noqa: N803
        a = attributes(self, attrs)
        acc = binary_conv2d(X, W, None, None, a)
        y = SignThreshold._run(self, acc, T, D)[0]
        ph, pw = (1, 1) if a.pool_shape is None else (int(a.pool_shape[0]), int(a.pool_shape[1]))
        b, n, oh, ow = y.shape
        y = y[:, :, :oh // ph * ph, :ow // pw * pw].reshape(b, n, oh // ph, ph, ow // pw, pw).max(axis=(3, 5))
        return (y.astype(np.float32),)

"""``ai.optc::IntDense``: a fully connected layer on 8-bit codes with int32 accumulation and
fixed-point requantization, emitted by ``integerize`` for ``DQ -> Gemm/MatMul [-> Relu|Clip] -> Q``."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Cost, Operand, Surrogate, attributes, define, dense_surrogate
from optc.passes.quant.int_ops import check_acc, int_dense, out_dtype, requantize

from ._common import CODES, I32, REQUANT_ATTRS, REQUANT_OPERANDS, example_int_layer, optional_input, requant_attrs


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """The int8 dense kernel (:func:`optc.backends.tvm.int8._dense`, shared with MatMulInteger);
    with ``W_zero_point``, its int32 sums corrected by the code row sums and requantized in
    Relax ops (:func:`optc.backends.tvm.int8._dense_weight_zero_point`)."""
    from optc.backends.tvm import int8

    x, w, bias, mult, shift = inputs[:5]
    w_zp = optional_input(inputs, 5)
    rq = requant_attrs(attr)
    if w_zp is None:
        return int8._dense(bb, x, w, bias, [mult, shift], rq)
    return int8._dense_weight_zero_point(bb, x, w, bias, mult, shift, w_zp, rq)


def _cost(s: Surrogate) -> bool:
    w = s.input_dims(1)  # [N, K]
    return bool(w) and dense_surrogate(s, w[1], w[0])


@define(inputs=(Operand("X", CODES), Operand("W", ("int8",)), Operand("B", I32), *REQUANT_OPERANDS,
                Operand("W_zero_point", I32, optional=True)),
        attributes=REQUANT_ATTRS, outputs=(Operand("Y", CODES),),
        cost=Cost("int8", _cost, dot_product=True, requantize=True), lowering={"tvm": lower_tvm},
        example=lambda rng: example_int_layer(rng, (3, 37), (21, 37)))
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

    def _run(self, X, W, B, multiplier, shift, W_zero_point=None, **attrs):  # noqa: N803
        a = attributes(self, attrs)
        if W_zero_point is not None:
            W = np.asarray(W, np.int64) - np.asarray(W_zero_point, np.int64).reshape(-1, 1)
        acc = int_dense(X, W, B)
        check_acc(acc, "IntDense")
        return (requantize(acc, multiplier, shift, -1, a.y_zero_point or 0, a.out_min, a.out_max,
                           out_dtype(a.to, a.out_min, a.out_max)),)

"""``ai.optc::BinaryDense``: a fully connected layer on sign bits (xnor-popcount), emitted by
``binarize`` for MatMul/Gemm layers."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Attr, Operand, attributes, define
from optc.passes.optc_ops import binary_dense_int, pack_bits, scale_and_shift

from ._common import BINARY_DENSE_COST, F32, U64, alpha_bias


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """One ``call_tir`` of the bit-serial dense kernel (:func:`optc.backends.tvm.bitserial.binary_dense_func`)."""
    from optc.backends.tvm import bitserial
    from optc.backends.tvm.lower import call_kernel, static_shape

    x, w = inputs[0], inputs[1]
    extra, has_bias, has_alpha = alpha_bias(inputs)
    m, k = static_shape(x)
    n = static_shape(w)[0]
    if int(attr["in_features"]) != k:
        raise ValueError(f"BinaryDense: in_features {attr['in_features']} != input width {k}")
    func = bitserial.binary_dense_func(m, k, n, has_bias, has_alpha)
    return call_kernel(bb, func, "optc_binary_dense", [x, w] + extra, [m, n])


def _example(rng) -> tuple[list, dict]:
    return [rng.standard_normal((3, 100)).astype(np.float32), pack_bits(rng.random((5, 100)) < 0.5),
            rng.uniform(0.5, 2, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)], {"in_features": 100}


@define(inputs=(Operand("X", F32), Operand("W", U64), Operand("alpha", F32, optional=True),
                Operand("B", F32, optional=True)),
        attributes=(Attr("in_features", "int", required=True),), outputs=(Operand("Y", F32),),
        cost=BINARY_DENSE_COST, lowering={"tvm": lower_tvm}, example=_example)
class BinaryDense(OpRun):
    """``BinaryDense(X, W[, alpha][, B]) -> Y``  (attribute ``in_features`` = K)

    ``X`` float32 ``[M, K]``, binarized by the op at run time: bit = ``X >= 0`` (so +-1 inputs
    are exact; an exact 0 counts as +1, where ONNX ``Sign`` would give 0). ``W`` uint64
    ``[N, ceil(K/64)]``: row n holds the packed sign bits of weight row ``w[n, :]``.
    ``alpha`` float32 ``[N]`` (> 0; absent = 1), ``B`` float32 ``[N]`` (absent = 0).
    ``Y[m, n] = alpha[n] * (K - 2 * popcount(xbits[m] XOR W[n])) + B[n]`` (float32 ``[M, N]``);
    the integer term is exactly ``sum_k sign(x[m, k]) * sign(w[n, k])``.
    """

    op_domain = DOMAIN

    def _run(self, X, W, alpha=None, B=None, **attrs):  # noqa: N803
        xbits = pack_bits(np.asarray(X) >= 0, axis=-1)
        acc = binary_dense_int(xbits, W, attributes(self, attrs).in_features)
        return (scale_and_shift(acc, alpha, B, 1),)

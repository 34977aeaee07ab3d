"""``ai.optc::BitserialDense``: a fully connected layer on k-bit unsigned codes (bit planes,
AND-popcount), emitted by ``binarize`` with more than one bit."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Attr, Operand, attributes, define
from optc.passes.optc_ops import bitserial_dense_int, planes, quantize_codes

from ._common import BINARY_DENSE_COST, BITSERIAL_ATTRS, F32, U64, bitserial_inputs, optional_input


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """One ``call_tir`` of the bit-serial dense kernel (:func:`optc.backends.tvm.bitserial.bitserial_dense_func`)."""
    from optc.backends.tvm import bitserial
    from optc.backends.tvm.lower import call_kernel, static_shape

    x, w, ws, wo = inputs[:4]
    bias = optional_input(inputs, 4)
    m, k = static_shape(x)
    n, wb, _ = static_shape(w)
    func = bitserial.bitserial_dense_func(m, k, n, int(attr["act_bits"]), wb, float(attr["act_scale"]),
                                          bias is not None)
    args = [x, w, ws, wo] + ([bias] if bias is not None else [])
    return call_kernel(bb, func, "optc_bitserial_dense", args, [m, n])


def _example(rng) -> tuple[list, dict]:
    return bitserial_inputs(rng, (3, 70), planes(rng.integers(0, 8, (4, 70)), 3), 4), \
        {"in_features": 70, "act_bits": 2, "weight_bits": 3, "act_scale": 0.25}


@define(inputs=(Operand("X", F32), Operand("W", U64), Operand("w_scale", F32), Operand("w_offset", F32),
                Operand("B", F32, optional=True)),
        attributes=(Attr("in_features", "int", required=True), *BITSERIAL_ATTRS), outputs=(Operand("Y", F32),),
        cost=BINARY_DENSE_COST, lowering={"tvm": lower_tvm}, example=_example)
class BitserialDense(OpRun):
    """``BitserialDense(X, W, w_scale, w_offset[, B]) -> Y``  (attributes ``in_features`` K,
    ``act_bits`` ab, ``weight_bits`` wb, ``act_scale`` s_a)

    k-bit operands, both unsigned codes. Activations: ``q_a = clip(round(X / s_a), 0,
    2^ab - 1)`` computed by the op (X is the output of a fake-quantizer, i.e. ``s_a * q_a``;
    round half to even). Weights: ``w[n, k] = w_scale[n] * q_w[n, k] + w_offset[n]``,
    ``q_w`` in ``[0, 2^wb - 1]``, stored as bit planes: ``W`` uint64 ``[N, wb, ceil(K/64)]``,
    plane j = bit j of q_w. ``Y[m, n] = s_a * (w_scale[n] * D + w_offset[n] * S) + B[n]`` with
    the exact integers ``D = sum_{i<ab, j<wb} 2^(i+j) popcount(A_i[m] AND W[n, j])``
    (= sum_k q_a q_w) and ``S = sum_i 2^i popcount(A_i[m])`` (= sum_k q_a); A_i = bit plane i
    of q_a.
    """

    op_domain = DOMAIN

    def _run(self, X, W, w_scale, w_offset, B=None, **attrs):  # noqa: N803
        at = attributes(self, attrs)
        q = quantize_codes(X, at.act_scale, at.act_bits)
        a = planes(q, at.act_bits)  # [M, ab, KW]
        d, s = bitserial_dense_int(a, W)
        y = np.float32(at.act_scale) * (np.asarray(w_scale, np.float32)[None, :] * d.astype(np.float32)
                                     + np.asarray(w_offset, np.float32)[None, :] * s.astype(np.float32)[:, None])
        if B is not None:
            y = y + np.asarray(B, np.float32)[None, :]
        return (y.astype(np.float32),)

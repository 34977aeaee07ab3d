"""``ai.optc::IntMatMul``: a MatMul of two 8-bit activation tensors (attention's ``Q @ K^T`` and
``softmax(.) @ V``) with int32 accumulation and fixed-point requantization, emitted by
``integerize`` for ``DQ(a_q), DQ(b_q) -> MatMul -> Q``."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Attr, Cost, Operand, Surrogate, attributes, define
from optc.passes.quant.int_ops import check_acc, fixed_point, int_matmul, out_dtype, requantize

from ._common import CODES, REQUANT_OPERANDS, requant_attrs

MATMUL_ATTRS = (Attr("a_zero_point", "int"), Attr("b_zero_point", "int"), Attr("y_zero_point", "int"),
                Attr("out_min", "int", required=True), Attr("out_max", "int", required=True), Attr("to", "int"))


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """The batched int8 matmul kernel of :mod:`optc.backends.tvm.int8_matmul` (batch
    dimensions broadcast there)."""
    from optc.backends.tvm import int8_matmul

    a, b, mult, shift = inputs[:4]
    return int8_matmul.int_matmul(bb, a, b, [mult, shift], requant_attrs(attr),
                                  (int(attr.get("a_zero_point", 0)), int(attr.get("b_zero_point", 0))))


def _cost(s: Surrogate) -> bool:
    """A standard MatMul of the two operands (same output shape, M*N*K MACs per batch)."""
    s.main("MatMul", [s.node.input[0], s.node.input[1]], [s.node.output[0]])
    return True


def _example(rng) -> tuple[list, dict]:
    """uint8 ``[2, 3, 5, 9]`` times int8 ``[3, 9, 7]`` (batch broadcast), int8 output codes."""
    a = rng.integers(0, 256, (2, 3, 5, 9)).astype(np.uint8)
    b = rng.integers(-128, 128, (3, 9, 7)).astype(np.int8)
    mult, shift = fixed_point([1 / 300])  # acc spread ~16000 -> output codes spread ~50
    return [a, b, mult, shift], {"a_zero_point": 131, "b_zero_point": -5, "y_zero_point": 3, "out_min": -120,
                                 "out_max": 127, "to": 3}


@define(inputs=(Operand("A", CODES), Operand("B", CODES), *REQUANT_OPERANDS),
        attributes=MATMUL_ATTRS, outputs=(Operand("Y", CODES),),
        cost=Cost("int8", _cost, requantize=True), lowering={"tvm": lower_tvm}, example=_example)
class IntMatMul(OpRun):
    """``IntMatMul(A, B, multiplier, shift) -> Y``  (attributes ``a_zero_point``,
    ``b_zero_point``, ``y_zero_point``, ``out_min``, ``out_max``, ``to``)

    ``A`` uint8/int8 ``[..., M, K]``, ``B`` uint8/int8 ``[..., K, N]`` (both activations; ranks
    >= 2, batch dimensions broadcast as ONNX MatMul does), ``multiplier``/``shift`` int32 ``[1]``
    (per tensor)::

        acc[..., m, n] = sum_k (A[..., m, k] - a_zero_point) * (B[..., k, n] - b_zero_point)
        Y = clamp(((acc * multiplier + 2^(shift-1)) >> shift) + y_zero_point, out_min, out_max)

    in int32 (|acc| < 2^31 is the emitter's duty: ``K * max|A - zp| * max|B - zp|``), the
    requantization in int64 with rounding half up, exactly as IntDense; ``Y`` ``[..., M, N]``
    of type ``to`` (2 uint8, 3 int8; absent: the type of the ``out_min``/``out_max`` range).
    """

    op_domain = DOMAIN

    def _run(self, A, B, multiplier, shift, **attrs):  # noqa: N803
        a = attributes(self, attrs)
        acc = int_matmul(A, B, a.a_zero_point or 0, a.b_zero_point or 0)
        check_acc(acc, "IntMatMul")
        return (requantize(acc, multiplier, shift, -1, a.y_zero_point or 0, a.out_min, a.out_max,
                           out_dtype(a.to, a.out_min, a.out_max)),)

"""``ai.optc::IntGlobalAveragePool``: ``DQ -> GlobalAveragePool -> Q`` on the codes (an int32
sum and the integer ops' requantization; the average is never formed in float)."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Attr, Cost, Operand, Surrogate, attributes, define
from optc.passes.quant.int_ops import check_acc, fixed_point, layout_of, out_dtype, requantize

from ._common import CODES, REQUANT_ATTRS, REQUANT_OPERANDS, is_nhwc, requant_attrs


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """One ``call_tir`` of the int32 sum + requantization kernel
    (:func:`optc.backends.tvm.int8.global_avg_pool_func`), scheduled for CPUs."""
    from optc.backends.tvm import int8
    from optc.backends.tvm.lower import call_kernel, static_shape

    x, mult, shift = inputs[:3]
    int8.current_isa()  # a CPU target (the kernel is scheduled for CPUs)
    x_layout = layout_of(attr.get("x_layout"))
    b, c, h, w = static_shape(x) if x_layout == "NCHW" else [static_shape(x)[i] for i in (0, 3, 1, 2)]
    rq = requant_attrs(attr)
    func = int8.global_avg_pool_func((b, c, h, w), rq, in_dtype=str(x.ty.dtype), x_layout=x_layout,
                                     per_channel=static_shape(mult) != [1])
    return call_kernel(bb, func, "optc_int_global_avg_pool", [x, mult, shift], [b, c, 1, 1], rq.out_dtype)


def _cost(s: Surrogate) -> bool:
    """GlobalAveragePool (an add per input element), after a Transpose for NHWC input."""
    s.main("GlobalAveragePool", [s.input_nchw(is_nhwc(s, "x_layout"))], [s.node.output[0]])
    return True


def _example(rng) -> tuple[list, dict]:
    x = rng.integers(0, 256, (2, 5, 7, 6)).astype(np.uint8)  # NHWC
    mult, shift = fixed_point([rng.uniform(0.5, 2.0) / 35])
    return [x, mult, shift], {"x_zero_point": 9, "y_zero_point": -4, "out_min": -128, "out_max": 127, "to": 3,
                              "x_layout": "NHWC"}


@define(inputs=(Operand("X", CODES), *REQUANT_OPERANDS),
        attributes=(*REQUANT_ATTRS, Attr("x_layout", "string")), outputs=(Operand("Y", CODES),),
        cost=Cost("int8", _cost, requantize=True), lowering={"tvm": lower_tvm}, example=_example)
class IntGlobalAveragePool(OpRun):
    """``IntGlobalAveragePool(X, multiplier, shift) -> Y``  (attributes ``x_zero_point``,
    ``y_zero_point``, ``out_min``, ``out_max``, ``to``, ``x_layout``)

    ``DequantizeLinear -> GlobalAveragePool -> QuantizeLinear`` on the codes. ``X`` uint8/int8
    ``[N_b, C, H, W]`` (``x_layout = "NCHW"``, the default) or ``[N_b, H, W, C]`` (``"NHWC"``);
    ``Y`` ``[N_b, C, 1, 1]`` (GlobalAveragePool's shape; its memory order is that of either
    layout). ``multiplier``, ``shift`` int32 ``[1]`` (or ``[C]``) as for IntConv2d, the fixed
    point of ``s_x / (s_y * H * W)`` (input scale over output scale times the window)::

        acc[b, c] = sum_{h, w} X[b, c, h, w] - H * W * x_zero_point     (exact, in int32)
        Y = clamp(((acc * multiplier + 2^(shift - 1)) >> shift) + y_zero_point, out_min, out_max)

    i.e. the requantization of IntConv2d (rounding half up) applied to the sum of the codes: the
    average is never formed in float.
    """

    op_domain = DOMAIN

    def _run(self, X, multiplier, shift, **attrs):  # noqa: N803
        a = attributes(self, attrs)
        x = np.asarray(X, np.int64)
        if layout_of(a.x_layout) == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        acc = x.sum(axis=(2, 3)) - x.shape[2] * x.shape[3] * int(a.x_zero_point or 0)
        check_acc(acc, "IntGlobalAveragePool")
        y = requantize(acc, multiplier, shift, 1, a.y_zero_point or 0, a.out_min, a.out_max,
                       out_dtype(a.to, a.out_min, a.out_max))
        return (y[:, :, None, None],)

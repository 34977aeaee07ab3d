"""What several ``ai.optc`` op modules share: operand types, attribute groups, cost surrogates,
example builders, and the Relax glue of their TVM lowerings. Defines no op (the package skips
modules whose name starts with ``_`` when it registers ops).

The lowering helpers import TVM and optc's TVM backend inside the function only (passes and
``import optc`` never import TVM)."""

from __future__ import annotations

import numpy as np

from optc.ops import Attr, Cost, Operand, Surrogate, conv_surrogate, dense_surrogate
from optc.passes.optc_ops import pack_bits, planes
from optc.passes.quant.int_ops import Requant, fixed_point, layout_of, out_dtype

F32, U64 = ("float32",), ("uint64",)
CODES, I32 = ("uint8", "int8"), ("int32",)


def optional_input(inputs: list, i: int):
    """Input ``i`` of a converter's ``inputs``, or None where it is absent or omitted."""
    return inputs[i] if len(inputs) > i else None


# ---------------------------------------------------------------------------------------------
# binary and bit-serial ops

CONV_ATTRS = (Attr("in_channels", "int", required=True), Attr("kernel_shape", "ints", required=True),
              Attr("pads", "ints"), Attr("strides", "ints"), Attr("dilations", "ints"))
BITSERIAL_ATTRS = (Attr("act_bits", "int", required=True), Attr("weight_bits", "int", required=True),
                   Attr("act_scale", "float", required=True))


def dense_cost(s: Surrogate) -> bool:
    """MatMul ``X [M, in_features] @ [in_features, N]`` (N = rows of the packed weights)."""
    w = s.input_dims(1)
    return bool(w) and dense_surrogate(s, s.attr_int("in_features") or 0, w[0])


def conv_cost(s: Surrogate) -> bool:
    """Conv on ``[N, in_channels, KH, KW]`` weights (N = rows of the packed weights), with the
    fused max-pool of ``pool_shape`` where there is one."""
    w = s.input_dims(1)
    shape = [w[0], s.attr_int("in_channels") or 0, *s.attr_ints("kernel_shape", [1, 1])] if w else None
    return bool(w) and conv_surrogate(s, shape, pool=s.attr_ints("pool_shape", [1, 1]))


BINARY_DENSE_COST = Cost("binary", dense_cost, binarize_and_scale=True)
BINARY_CONV_COST = Cost("binary", conv_cost, binarize_and_scale=True)

EXAMPLE_CONV = {"in_channels": 5, "kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "strides": [2, 1],
                "dilations": [1, 2]}


def example_conv_weights(rng, n: int, c: int, ks, bits: int | None = None) -> np.ndarray:
    """Packed conv weights in the contract's (kh, kw, c) order: sign bits, or ``bits`` bit planes."""
    if bits is None:
        return pack_bits(rng.random((n, ks[0] * ks[1] * c)) < 0.5, axis=-1)
    return planes(rng.integers(0, 1 << bits, (n, ks[0] * ks[1] * c)), bits)


def bitserial_inputs(rng, x_shape, w, n) -> list:
    """Example operands of a bit-serial op: activations on the 0.25 grid (2-bit codes and
    beyond), weights ``w``, per-channel weight scale and offset, bias."""
    x = (rng.integers(-1, 5, x_shape) * 0.25).astype(np.float32)
    return [x, w, rng.uniform(0.01, 0.1, n).astype(np.float32), rng.uniform(-0.2, 0.0, n).astype(np.float32),
            rng.standard_normal(n).astype(np.float32)]


def alpha_bias(inputs: list) -> tuple[list, bool, bool]:
    """The optional ``alpha`` (input 2) and ``bias`` (input 3) of a BinaryDense / BinaryConv2d
    lowering: those present in kernel argument order, whether bias is, whether alpha is."""
    alpha, bias = optional_input(inputs, 2), optional_input(inputs, 3)
    return [v for v in (alpha, bias) if v is not None], bias is not None, alpha is not None


def binary_conv_operands(bb, x, w, attr: dict):
    """(x_shape, N, geometry, (OH, OW), lane-packed weights) of a BinaryConv2d[Threshold]
    lowering: the weight relayout kernel (:func:`optc.backends.tvm.bitserial.conv_weight_lanes_func`)
    emitted on ``w``."""
    from optc.backends.tvm import bitserial
    from optc.backends.tvm.lower import call_kernel, conv_params, static_shape
    from optc.passes.optc_ops import ConvGeometry

    b, c, h, wd = static_shape(x)
    n = static_shape(w)[0]
    geom = ConvGeometry(*conv_params(attr))
    kh, kw = geom.kernel_shape
    wt = bb.emit(call_kernel(bb, bitserial.conv_weight_lanes_func(n, kh, kw, c), "optc_conv_weight_lanes", [w],
                             bitserial.conv_weight_lanes_shape(n, kh, kw, c), "uint64"))
    return (b, c, h, wd), n, geom, geom.output_shape(h, wd), wt


# ---------------------------------------------------------------------------------------------
# integer ops

REQUANT_OPERANDS = (Operand("multiplier", I32), Operand("shift", I32))
REQUANT_ATTRS = (Attr("x_zero_point", "int"), Attr("y_zero_point", "int"), Attr("out_min", "int", required=True),
                 Attr("out_max", "int", required=True), Attr("to", "int"))


def is_nhwc(s: Surrogate, attr: str) -> bool:
    """Whether the node's layout attribute ``attr`` says NHWC."""
    return layout_of(s.attr_str(attr)) == "NHWC"


def example_int_layer(rng, x_shape, w_shape, **attrs) -> tuple[list, dict]:
    """uint8 codes ``x_shape``, int8 weights ``w_shape``, int8 output codes of some spread."""
    x = rng.integers(0, 256, x_shape).astype(np.uint8)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    b = rng.integers(-3000, 3000, w_shape[0]).astype(np.int32)
    mult, shift = fixed_point(rng.uniform(0.3, 3.0, w_shape[0]) / (np.prod(w_shape[1:]) * 128))
    return [x, w, b, mult, shift], {"x_zero_point": 7, "y_zero_point": 3, "out_min": -120, "out_max": 127, "to": 3,
                                    **attrs}


def requant_attrs(attr: dict) -> Requant:
    """An integer op's quantization attributes, as its lowering reads them: the output dtype
    by the reference's rule (:func:`optc.passes.quant.int_ops.out_dtype`: ``to``, or where it
    is absent the dtype of the ``out_min``/``out_max`` range)."""
    lo, hi = int(attr["out_min"]), int(attr["out_max"])
    dtype = np.dtype(out_dtype(attr.get("to"), lo, hi)).name
    return Requant(x_zero_point=int(attr.get("x_zero_point", 0)), y_zero_point=int(attr.get("y_zero_point", 0)),
                   out_min=lo, out_max=hi, out_dtype=dtype)

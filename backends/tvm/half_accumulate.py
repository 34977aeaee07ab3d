"""float16 convolutions and matmuls accumulate in float32.

TVM's ONNX importer gives a float16 Conv or MatMul the output type float16 (``out_dtype``
None), and TOPI then sums the products in float16: each of the K additions rounds to 11
bits, so a K = 1280 reduction (a Keras mixed-precision text CNN, slovorez) was 0.0078 off at
outputs of magnitude 1, 25x onnxruntime's error (which computes these ops in float32 on
CPUs and rounds the result once). Here each such call is rewritten to the same op with
``out_dtype="float32"``, followed by a cast to float16: the products and sums in float32,
one rounding at the end, as onnxruntime and GPU tensor cores do. On CPUs without float16
arithmetic the operands are widened to float32 either way, so this costs nothing there.

Reductions and normalizations (:data:`WIDENED`: sum, mean, variance, average pools, softmax,
layer / group / instance / RMS norm, cumsum) likewise compute in float32 on float16 data:
their operands are cast to float32, the same op runs, and its result is cast back. A float16
GlobalAveragePool over 128 x 128 values summed in float16 was 0.38 off a mean of 0.5 (every
addition past 2048 rounds away), 0.8 relative; onnxruntime's CPU provider runs these ops in
float32 (casts inserted around them).
"""

from __future__ import annotations

# Relax op name -> the attribute fields its constructor (tvm.relax.op.<path>) takes, besides
# out_dtype
_CONV = ("strides", "padding", "dilation", "groups", "data_layout", "kernel_layout", "out_layout")
ACCUMULATING = {
    "relax.nn.conv1d": _CONV,
    "relax.nn.conv2d": _CONV,
    "relax.nn.conv3d": _CONV,
    "relax.nn.conv1d_transpose": ("strides", "padding", "output_padding", "dilation", "groups", "data_layout",
                                  "kernel_layout", "out_layout"),
    "relax.nn.conv2d_transpose": ("strides", "padding", "output_padding", "dilation", "groups", "data_layout",
                                  "kernel_layout", "out_layout"),
    "relax.matmul": (),
}


# ops whose float16 result is computed from float32 operands (every float16 tensor argument
# widened; the attributes name no dtype, so the op's result follows its operands)
WIDENED = frozenset((
    "relax.sum", "relax.mean", "relax.variance", "relax.std", "relax.prod", "relax.cumsum",
    "relax.nn.avg_pool1d", "relax.nn.avg_pool2d", "relax.nn.avg_pool3d", "relax.nn.adaptive_avg_pool1d",
    "relax.nn.adaptive_avg_pool2d", "relax.nn.adaptive_avg_pool3d", "relax.nn.softmax", "relax.nn.log_softmax",
    "relax.nn.layer_norm", "relax.nn.group_norm", "relax.nn.instance_norm", "relax.nn.rms_norm",
))


def _half(expr) -> bool:
    return str(getattr(expr.ty, "dtype", "")) == "float16"


def _widen_reduction(m, call):
    """A :data:`WIDENED` call on float16 data as the same call on float32 operands and a cast
    back; any other call as it is."""
    from tvm import relax

    if getattr(call.op, "name", None) not in WIDENED or not _half(call) or not _half(call.args[0]):
        return call
    if getattr(call.attrs, "dtype", None) not in (None, ""):
        return call  # cumsum with an explicit dtype: the attribute decides
    args = [m.builder_.normalize(relax.op.astype(a, "float32")) if _half(a) else a for a in call.args]
    wide = m.builder_.normalize(relax.Call(call.op, args, call.attrs, call.ty_args))
    if str(getattr(wide.ty, "dtype", "")) != "float32":
        return call
    return relax.op.astype(wide, "float16")


def _constructor(name: str):
    from tvm import relax

    fn = relax.op
    for part in name.removeprefix("relax.").split("."):
        fn = getattr(fn, part)
    return fn


def _widen(_m, call):
    """A float16 x float16 -> float16 call of :data:`ACCUMULATING` as the float32-output op
    and a cast back; any other call as it is."""
    from tvm import relax

    name = getattr(call.op, "name", None)
    if name not in ACCUMULATING or str(getattr(call.ty, "dtype", "")) != "float16":
        return call
    if any(str(getattr(a.ty, "dtype", "")) != "float16" for a in call.args[:2]):
        return call
    if str(call.attrs.out_dtype or "float16") != "float16":
        return call
    kwargs = {f: getattr(call.attrs, f) for f in ACCUMULATING[name]}
    wide = _constructor(name)(*call.args[:2], **kwargs, out_dtype="float32")
    return relax.op.astype(wide, "float16")


def accumulate_half_in_float(mod):
    """``mod`` with every float16 convolution / matmul summing in float32, and every float16
    reduction / normalization computed in float32 (module docstring)."""
    from .schedule import _rewrite_calls

    return _rewrite_calls(mod, lambda m, call: _widen_reduction(m, _widen(m, call)))

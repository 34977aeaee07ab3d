"""float16 convolutions and matmuls accumulate in float32.

TVM's ONNX importer gives a float16 Conv or MatMul the output type float16 (``out_dtype``
None), and TOPI then sums the products in float16: each of the K additions rounds to 11
bits, so a K = 1280 reduction (a Keras mixed-precision text CNN, slovorez) was 0.0078 off at
outputs of magnitude 1, 25x onnxruntime's error (which computes these ops in float32 on
CPUs and rounds the result once). Here each such call is rewritten to the same op with
``out_dtype="float32"``, followed by a cast to float16: the products and sums in float32,
one rounding at the end, as onnxruntime and GPU tensor cores do. On CPUs without float16
arithmetic the operands are widened to float32 either way, so this costs nothing there.
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
    """``mod`` with every float16 convolution / matmul summing in float32 (module docstring)."""
    from .schedule import _rewrite_calls

    return _rewrite_calls(mod, _widen)

"""NHWC convolutions with output-channel-blocked weights, for the CPU contraction schedule.

After layout conversion a convolution reads HWIO weights: the register tile of
:func:`optc.backends.tvm.schedule._rule_contraction` (two vectors of output channels by a few
output pixels) reads, per reduction step ``(kh, kw, ci)``, one 64-byte run of weights at a
stride of ``Cout * 4`` bytes: 2 KB for 512 output channels, a new cache line and every other
step a new 4 KB page, which the hardware prefetchers follow poorly (ResNet's last stage, 1-d
convs with wide channel counts). Here the weights of a convolution whose weights are
constants are repacked at compile time (numpy) to ``[Cout / b, KH, KW, Cin, b]``, ``b`` the
tile's channel run, so a tile's weights are one contiguous, sequentially read slice (the kind
of blocked layout oneDNN and MLAS pack weights to). The compute is TOPI's NHWC convolution
with only the weight index changed (same padding block, same reduction order ``kh, kw, ci``).
Measured on single convolutions at 1 thread (AVX2), blocked / HWIO latency: 3x3 512->512 on
7x7 0.35x, 3x3 256->256 on 14x14 0.57x, 1x1 128->256 on 28x28 0.62x, 3x3 128->128 on 28x28
0.79x.

Output channel counts with no vector-sized divisor (45 after pruning, 255 in a YOLO head) are
zero-padded to whole vectors (:func:`padded_channels`) and the padded output cropped, so such
a convolution keeps the vectorized register tile instead of falling off it; so are odd vector
counts whose only tiles are one vector wide or one row deep (56 or 232 channels, as pruning to
multiples of 8 leaves them), by one vector.

Used as the ``relax.nn.conv2d`` entry of ``LegalizeOps``' custom map in
:func:`optc.backends.tvm.schedule.fuse_for_schedule`; every other convolution (grouped,
depthwise, NCHW, weights computed at run time, fewer output channels than one block, non-float)
gets TVM's own legalization.

A matmul by a constant 2-D ``[K, N]`` weight (dense layers: transformer projections and
feed-forward layers, MLP heads) is packed the same way, to ``[N / b, K, b]``
(:func:`legalize_matmul`): a tile over ``K = 1536`` otherwise reads its 96 bytes per step at a
stride of ``N * 4`` bytes. Where ``N`` has no vector-sized divisor (a CTC head over an 8210-word
vocabulary) the weight is zero-padded to whole vectors (:func:`padded_channels`), the matmul
computes the padded width and a crop keeps the first ``N`` columns (ddddocr's 20 x 1024 x 8210
Gemm: 27 -> 5.9 ms at 1 thread; the model 2.2x -> 1.33x onnxruntime).
"""

from __future__ import annotations


def block_channels(out_shape: list[int], reduction: int, target) -> int | None:
    """Output channels per weight block for an NHWC output of ``out_shape`` and ``reduction``
    multiply-adds per output on ``target``: the channel run of the register tile the
    contraction rule will choose (``schedule._register_tile``, with the same row axis: the
    innermost other output axis longer than 1), or None when blocking gains nothing (one
    block: HWIO is already contiguous per tile) or the run is not whole vectors."""
    from . import schedule

    params = schedule._Params(target)
    lanes = params.lanes("float32")
    cout = out_shape[-1]
    rows = next((e for e in reversed(out_shape[:-1]) if e > 1), 1)
    vm, vw, _ = schedule._register_tile(cout, rows, lanes, params, reduction * 4)
    b = vm * vw
    if b >= cout or cout % b or vw < lanes:
        return None
    return b


def padded_channels(cout: int, target, out_shape: list[int] | None = None, reduction: int = 0) -> int | None:
    """The width a blocked weight is zero-padded to (the output is cropped back to ``cout``):

    * ``cout`` not a whole number of ``target``'s vectors (an 8210-word vocabulary, pruned
      channel counts such as 45): rounded up to whole vectors, to an even count of them where
      that still adds at most a quarter (2-vector runs are the register tile's first choice);
    * an odd number of vectors whose register tile (for ``out_shape`` and ``reduction``
      multiply-adds per output) is one vector wide or one row deep, one load per FMA or more
      (56 = 7 x 8 channels, 232 = 29 x 8: what pruning to multiples of 8 leaves): one vector
      more, where the wider count gets a tile of at least 2 x 2 and that adds at most a
      quarter. 3x3 convs at 1 thread: 56 -> 56 channels on 56x56 43 -> 75 GFLOP/s, 232 ->
      232 on 10x10 50 -> 97 GFLOP/s (tiles of 2-vector columns whose last one was partial, a
      predicate, measured the same way; the padded tile keeps the code of whole vectors).

    None otherwise: whole vectors with a good tile, or padding would add more than a quarter
    of the work (few channels: a 1-channel head keeps its own rule, ``schedule._rule_dot``).
    Where the count's own vectors would be a quarter of the target's or less (an odd count:
    51 channels in an EEG U-Net, scalar code), padding may double it: 1x1 conv1d 64 -> 51 over
    1500 frames (k 5, stride 5) at 1 thread, 17 GFLOP/s unpadded; 64 channels run at 108."""
    from . import schedule

    params = schedule._Params(target)
    lanes = params.lanes("float32")
    if cout % lanes == 0:
        return _wider_tile(cout, out_shape, reduction, params) if out_shape else None
    narrow = schedule._vector_width(cout, lanes) * 4 <= lanes
    allowed = cout if narrow else cout // 4  # zero columns padding may add
    up = -(-cout // lanes) * lanes
    if (up // lanes) % 2 and up + lanes - cout <= min(allowed, cout // 4):
        up += lanes
    return up if up - cout <= allowed else None


def _wider_tile(cout: int, out_shape: list[int], reduction: int, params) -> int | None:
    """``cout + lanes`` where ``cout`` is an odd number of vectors whose register tile is one
    vector wide or one row deep and the wider count's tile is not (see :func:`padded_channels`)."""
    from . import schedule

    lanes = params.lanes("float32")
    rows = next((e for e in reversed(out_shape[:-1]) if e > 1), 1)
    vm, _, ui = schedule._register_tile(cout, rows, lanes, params, reduction * 4)
    if (cout // lanes) % 2 == 0 or (vm > 1 and ui > 1) or lanes * 4 > cout:
        return None
    vm, _, ui = schedule._register_tile(cout + lanes, rows, lanes, params, reduction * 4)
    return cout + lanes if vm > 1 and ui > 1 else None


def _blocking(w, out_shape: list[int], reduction: int, target):
    """(block ``b``, ``w``) for a weight whose last axis is the output channels: ``b`` from
    :func:`block_channels`; where :func:`padded_channels` pads the channel count, ``w``
    zero-padded along that axis to it (then ``b`` its block, or the whole padded width as one
    block); ``(None, w)`` where neither applies."""
    import numpy as np

    wide = padded_channels(out_shape[-1], target, out_shape, reduction)
    if wide is None:
        return block_channels(out_shape, reduction, target), w
    b = block_channels([*out_shape[:-1], wide], reduction, target) or wide
    pad = [(0, 0)] * (w.ndim - 1) + [(0, -(-out_shape[-1] // b) * b - out_shape[-1])]
    return b, np.pad(w, pad)


def pack_weights(w, b: int):
    """Channels-last weights (numpy: HWIO, or WIO for conv1d) -> ``[Cout / b, *K, Cin, b]``."""
    import numpy as np

    blocked = w.reshape(*w.shape[:-1], w.shape[-1] // b, b)
    return np.ascontiguousarray(np.moveaxis(blocked, -2, 0))


def conv_blocked(data, wb, strides, padding, dilation, out_dtype: str):
    """TE compute: channels-last ``data`` (NHWC, or NWC for conv1d) by blocked weights ``wb``
    ``[Cout/b, *K, Cin, b]``; ``padding`` is (begins..., ends...) as in ``relax.nn.conv2d`` /
    ``conv1d``. Reduction order: the kernel axes, then the input channels."""
    from tvm import te, topi

    n, *size, c = (int(d) for d in data.shape)
    cob, *kernel, _, b = (int(d) for d in wb.shape)
    d = len(size)
    strides, dilation, padding = ([int(v) for v in vs] for vs in (strides, dilation, padding))
    out = [(size[i] + padding[i] + padding[d + i] - (kernel[i] - 1) * dilation[i] - 1) // strides[i] + 1
           for i in range(d)]
    padded = topi.nn.pad(data, [0, *padding[:d], 0], [0, *padding[d:], 0], name="pad_temp") if any(padding) else data
    taps = [te.reduce_axis((0, k), name=name) for k, name in zip(kernel, ("ry", "rx")[2 - d:])]
    rc = te.reduce_axis((0, c), name="rc")
    name = "conv2d_nhwc" if d == 2 else "conv1d_nwc"

    def body(nn, *idx):
        at = [idx[i] * strides[i] + taps[i] * dilation[i] for i in range(d)]
        return te.sum(padded[(nn, *at, rc)].astype(out_dtype) * wb[(idx[-1] // b, *taps, rc, idx[-1] % b)].astype(out_dtype),
                      axis=[*taps, rc])

    return te.compute((n, *out, cob * b), body, name=name, tag=name)


def legalize_conv2d(bb, call):
    """``LegalizeOps`` entry for ``relax.nn.conv2d``: the blocked form where it applies (see
    the module docstring), else TVM's registered legalization."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    return _legalize_blocked(bb, call, ("NHWC", "HWIO"), _nn_conv2d, "conv2d")


def legalize_conv1d(bb, call):
    """``LegalizeOps`` entry for ``relax.nn.conv1d``: NWC / WIO with constant float32 weights
    in the blocked form (weights ``[Cout / b, K, Cin, b]``, zero-padded channels cropped as for
    :func:`legalize_conv2d`), else TVM's registered legalization."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv1d

    return _legalize_blocked(bb, call, ("NWC", "WIO"), _nn_conv1d, "conv1d")


def _legalize_blocked(bb, call, layouts: tuple[str, str], fallback, name: str):
    """The blocked form of a channels-last, ungrouped conv ``call`` (data / kernel
    ``layouts``) with constant float32 weights, a crop after zero-padded channels; else
    ``fallback`` (TVM's legalization)."""
    import tvm.ir.expr
    from tvm import relax

    attrs = call.attrs
    x, w = call.args
    if isinstance(w, relax.Var):  # a constant bound in the dataflow block
        bound = bb.lookup_binding(w)
        w = w if bound is None else bound
    plain = ((str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) == (*layouts, layouts[0])
             and int(attrs.groups) == 1)
    if not plain or not (isinstance(w, tvm.ir.expr.Constant) and hasattr(w, "value")):
        return fallback(bb, call)
    dtype = str(w.ty.dtype)
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "None", "void") \
        else dtype
    target = tvm.target.Target.current(allow_none=True)
    if target is None or not dtype == "float32" == out_dtype:
        return fallback(bb, call)
    weight = w.value.numpy()
    cout = weight.shape[-1]
    b, weight = _blocking(weight, [int(d) for d in call.ty.shape.values], int(weight[..., 0].size), target)
    if b is None:
        return fallback(bb, call)
    wb = relax.const(pack_weights(weight, b), dtype)
    conv = bb.call_te(conv_blocked, x, wb, list(attrs.strides), list(attrs.padding), list(attrs.dilation),
                      out_dtype, primfunc_name_hint=name)
    if weight.shape[-1] == cout:
        return conv
    return bb.call_te(first_columns, bb.emit(conv), cout, primfunc_name_hint=f"{name}_crop")


def first_columns(data, n: int):
    """TE compute: the first ``n`` entries of ``data``'s last axis (the crop after a conv or
    matmul on zero-padded output channels)."""
    from tvm import te

    return te.compute((*data.shape[:-1], n), lambda *idx: data[idx], name="crop")


def matmul_blocked(data, wb, out_dtype: str):
    """TE compute: ``data [..., M, K]`` by blocked weights ``wb [N/b, K, b]``."""
    from tvm import te

    nb, k, b = (int(d) for d in wb.shape)
    lead = list(data.shape[:-1])
    rk = te.reduce_axis((0, k), name="k")
    return te.compute(
        (*lead, nb * b),
        lambda *idx: te.sum(data[(*idx[:-1], rk)].astype(out_dtype) * wb[idx[-1] // b, rk, idx[-1] % b].astype(out_dtype),
                            axis=[rk]),
        name="matmul",
    )


def legalize_matmul(bb, call):
    """``LegalizeOps`` entry for ``relax.matmul``: ``x [..., M, K]`` by a constant float32
    ``[K, N]`` weight in the blocked form (module docstring), else TVM's legalization."""
    import numpy as np
    import tvm.ir.expr
    from tvm import relax
    from tvm.relax.transform.legalize_ops.linear_algebra import _matmul

    x, w = call.args
    if isinstance(w, relax.Var):
        bound = bb.lookup_binding(w)
        w = w if bound is None else bound
    if not (isinstance(w, tvm.ir.expr.Constant) and hasattr(w, "value")) or len(w.ty.shape) != 2 \
            or len(x.ty.shape) < 2 or str(w.ty.dtype) != "float32" or str(x.ty.dtype) != "float32" \
            or str(call.ty.dtype) != "float32":
        return _matmul(bb, call)
    target = tvm.target.Target.current(allow_none=True)
    kn = w.value.numpy()
    try:
        out_shape = [int(d) for d in call.ty.shape.values]
    except (TypeError, AttributeError):  # a symbolic dimension
        return _matmul(bb, call)
    if target is None:
        return _matmul(bb, call)
    n = kn.shape[1]
    b, kn = _blocking(kn, out_shape, kn.shape[0], target)
    if b is None:
        return _matmul(bb, call)
    wb = relax.const(np.ascontiguousarray(kn.reshape(kn.shape[0], -1, b).transpose(1, 0, 2)), "float32")
    if kn.shape[1] == n:
        return bb.call_te(matmul_blocked, x, wb, "float32", primfunc_name_hint="matmul")
    wide_out = bb.emit(bb.call_te(matmul_blocked, x, wb, "float32", primfunc_name_hint="matmul"))
    return bb.call_te(first_columns, wide_out, n, primfunc_name_hint="matmul_crop")

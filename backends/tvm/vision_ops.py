"""Converters for DeformConv (opset 19), which TVM's Relax importer lacks (2-D images), and
MaxPool's optional ``Indices`` output, which it does not produce.

A deformable convolution samples the input at the kernel's grid positions moved by learned
offsets, bilinearly (GridSample with ``align_corners=1`` and zero padding: each of the four
corners outside the image adds zero), scales each sample by the optional ``mask``, then
convolves the samples like im2col columns. In Relax: the sampling positions
``[N, offset_group, K, P]`` (K = kH * kW kernel taps, P = oH * oW outputs; offsets laid out
``[N, offset_group, kH, kW, (dy, dx), oH, oW]``) are the constant grid plus the offsets; each
corner is a ``gather_elements`` on the flattened image ``[N, offset_group, C / offset_group,
H * W]`` with its bilinear weight times "inside the image"; the columns ``[N, group,
C / group * K, P]`` meet the weights ``[group, oC / group, C / group * K]`` in one batched
matmul, and the bias is added.

MaxPool with ``Indices`` (the second output; one output stays with the converter registered
before, ``int8.py``'s, which falls back to TVM's): the input padded with the type's lowest
value (``pads`` plus what ``ceil_mode`` adds at the end), one strided slice per kernel tap;
taps are visited in row-major order and a tap replaces the running maximum only where it is
strictly greater, so the first maximum wins, as in onnxruntime. Each tap's index is a
constant map of the positions it reads (row-major, or column-major over the spatial axes for
``storage_order=1``), plus ``(n * C + c) * prod(spatial)``. ``auto_pad`` SAME_* with
indices is refused by name.

MaxUnpool with its ``output_shape`` operand: TVM's converter calls ``.tolist()`` on the
operand (a Relax expression); it must be a constant (``--const-input``), read as numpy here and
handed to TVM's converter.
"""

from __future__ import annotations

import numpy as np

from .lower import register_converter, register_if_available
from .onnx_ops import _dtype


def sample_grid(out_hw: tuple[int, int], kernel: list[int], strides: list[int], pads: list[int],
                dilations: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) ``[K, P]`` (float64): where tap k of output p samples before its offset."""
    oh, ow = out_hw
    ky, kx = np.meshgrid(np.arange(kernel[0]) * dilations[0], np.arange(kernel[1]) * dilations[1], indexing="ij")
    py, px = np.meshgrid(np.arange(oh) * strides[0] - pads[0], np.arange(ow) * strides[1] - pads[1], indexing="ij")
    return ky.reshape(-1, 1) + py.reshape(1, -1), kx.reshape(-1, 1) + px.reshape(1, -1)


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op
    _register_maxpool_indices(relax, op)
    _register_maxunpool(relax)

    @register_converter("", "DeformConv")
    class DeformConv(OnnxOpConverter):
        @classmethod
        def _impl_v19(cls, bb, inputs, attr, params):
            x, w, offset = inputs[:3]
            bias = inputs[3] if len(inputs) > 3 else None
            mask = inputs[4] if len(inputs) > 4 else None
            if len(x.ty.shape) != 4:
                raise ValueError("DeformConv: only 2-D images (NCHW) are lowered")
            n, c, h, wd = (int(v) for v in x.ty.shape)
            oc, cpg, kh, kw = (int(v) for v in w.ty.shape)
            oh, ow = (int(v) for v in list(offset.ty.shape)[2:])
            group, og = int(attr.get("group", 1)), int(attr.get("offset_group", 1))
            k, p = kh * kw, oh * ow
            base_y, base_x = sample_grid((oh, ow), [kh, kw], [int(v) for v in attr.get("strides", [1, 1])],
                                         [int(v) for v in attr.get("pads", [0, 0, 0, 0])],
                                         [int(v) for v in attr.get("dilations", [1, 1])])
            dt = _dtype(x)
            off = bb.normalize(op.reshape(offset, [n, og, k, 2, p]))
            ys = [bb.normalize(op.squeeze(op.strided_slice(off, [3], [i], [i + 1]), [3])) for i in (0, 1)]
            y = bb.normalize(op.add(ys[0], relax.const(base_y.astype(dt), dt)))
            xx = bb.normalize(op.add(ys[1], relax.const(base_x.astype(dt), dt)))
            image = bb.normalize(op.reshape(x, [n, og, c // og, h * wd]))
            cols = cls._bilinear(bb, op, relax, image, y, xx, (h, wd), dt)  # [N, og, C/og, K*P]
            if mask is not None:
                cols = op.multiply(cols, op.reshape(mask, [n, og, 1, k * p]))
            cols = op.reshape(cols, [n, group, cpg * k, p])
            weights = op.reshape(w, [1, group, oc // group, cpg * k])
            out = op.reshape(op.matmul(weights, cols), [n, oc, oh, ow])
            return op.add(out, op.reshape(bias, [1, oc, 1, 1])) if bias is not None else out

        @staticmethod
        def _bilinear(bb, op, relax, image, y, x, hw, dt):
            """Samples of ``image`` ``[N, G, Cg, H*W]`` at (y, x) ``[N, G, K, P]``: ``[N, G, Cg, K*P]``."""
            n, g, cg, _ = (int(v) for v in image.ty.shape)
            kp = int(y.ty.shape[2]) * int(y.ty.shape[3])
            y0, x0 = bb.normalize(op.floor(y)), bb.normalize(op.floor(x))
            ly, lx = bb.normalize(op.subtract(y, y0)), bb.normalize(op.subtract(x, x0))
            one, zero = relax.const(1.0, dt), relax.const(0.0, dt)
            total = None
            for dy in (0, 1):
                for dx in (0, 1):
                    yy = op.add(y0, relax.const(float(dy), dt))
                    xc = op.add(x0, relax.const(float(dx), dt))
                    wgt = op.multiply(ly if dy else op.subtract(one, ly), lx if dx else op.subtract(one, lx))
                    inside = op.logical_and(
                        op.logical_and(op.greater_equal(yy, zero), op.less_equal(yy, relax.const(hw[0] - 1.0, dt))),
                        op.logical_and(op.greater_equal(xc, zero), op.less_equal(xc, relax.const(hw[1] - 1.0, dt))))
                    wgt = op.where(inside, wgt, op.zeros_like(wgt))
                    flat = op.add(op.multiply(op.clip(yy, 0, hw[0] - 1), relax.const(float(hw[1]), dt)),
                                  op.clip(xc, 0, hw[1] - 1))
                    idx = op.broadcast_to(op.reshape(op.astype(flat, "int64"), [n, g, 1, kp]), [n, g, cg, kp])
                    term = op.multiply(op.gather_elements(image, bb.normalize(idx), axis=3),
                                       op.reshape(wgt, [n, g, 1, kp]))
                    total = term if total is None else op.add(total, term)
            return bb.normalize(total)


def pool_taps(spatial: list[int], kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
              ceil_mode: bool, column_major: bool) -> tuple[list[int], list[int], list[tuple[list[int], np.ndarray]]]:
    """MaxPool's output size, the end padding ``ceil_mode`` adds, and per kernel tap (row-major
    over the kernel) its start in the padded input and the spatial index each output reads."""
    d = len(spatial)
    out, extra = [], []
    for i in range(d):
        span = spatial[i] + pads[i] + pads[i + d] - ((kernel[i] - 1) * dilations[i] + 1)
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + pads[i]:  # a window starting in the end pad
            o -= 1
        out.append(o)
        need = (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        extra.append(max(0, need - (spatial[i] + pads[i] + pads[i + d])))
    grids = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
    order = list(range(d))[::-1] if column_major else list(range(d))
    taps = []
    for tap in np.ndindex(*kernel):
        start = [tap[i] * dilations[i] for i in range(d)]
        pos = [grids[i] * strides[i] + start[i] - pads[i] for i in range(d)]
        flat = np.zeros(out, np.int64)
        for i in order:
            flat = flat * spatial[i] + pos[i]
        taps.append((start, flat))
    return out, extra, taps


def _register_maxpool_indices(relax, op) -> None:
    """Wrap the MaxPool converter registered so far (int8.py's) with the Indices output."""
    from . import int8  # noqa: F401 - registers the MaxPool this one wraps
    from .lower import CUSTOM_CONVERTERS

    base = CUSTOM_CONVERTERS["::MaxPool"]

    @register_converter("", "MaxPool")
    class MaxPool(base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if attr.get("tvm_custom", {}).get("num_outputs", 1) < 2:
                return super()._impl_v1(bb, inputs, attr, params)
            return _max_pool_with_indices(bb, relax, op, inputs[0], attr)


def _register_maxunpool(relax) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import MaxUnpool as StockMaxUnpool

    from .onnx_ops import _constant_array

    @register_converter("", "MaxUnpool")
    class MaxUnpool(StockMaxUnpool):
        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):
            if len(inputs) > 2 and inputs[2] is not None:
                shape = _constant_array(inputs[2], params, "MaxUnpool output_shape").astype(np.int64).reshape(-1)
                inputs = [inputs[0], inputs[1], shape]
            return super()._impl_v9(bb, inputs, attr, params)


def _max_pool_with_indices(bb, relax, op, x, attr):
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        raise ValueError(f"MaxPool with Indices and auto_pad {auto_pad} is not lowered (explicit pads are)")
    shape, dtype = [int(v) for v in x.ty.shape], _dtype(x)
    d = len(shape) - 2
    kernel = [int(v) for v in attr["kernel_shape"]]
    pads = [int(v) for v in attr.get("pads", [0] * 2 * d)] if auto_pad == "NOTSET" else [0] * 2 * d
    strides = [int(v) for v in attr.get("strides", [1] * d)]
    dil = [int(v) for v in attr.get("dilations", [1] * d)]
    out, extra, taps = pool_taps(shape[2:], kernel, strides, pads, dil, bool(attr.get("ceil_mode", 0)),
                                 int(attr.get("storage_order", 0)) == 1)
    low = float("-inf") if dtype.startswith(("float", "bfloat")) else int(np.iinfo(dtype).min)
    width = [0, 0, 0, 0] + [v for i in range(d) for v in (pads[i], pads[i + d] + extra[i])]
    xp = bb.normalize(op.nn.pad(x, width, pad_value=low))
    best = idx = None
    for start, flat in taps:
        v = op.strided_slice(xp, axes=list(range(2, d + 2)), begin=start,
                             end=[start[i] + (out[i] - 1) * strides[i] + 1 for i in range(d)], strides=strides)
        v = bb.normalize(v)
        here = relax.const(flat[None, None], "int64")  # (relax.const alone narrows int64 to int32)
        if best is None:
            best, idx = v, op.broadcast_to(here, shape[:2] + out)
            continue
        better = bb.normalize(op.greater(v, best))
        best, idx = bb.normalize(op.where(better, v, best)), bb.normalize(op.where(better, here, idx))
    base = (np.arange(shape[0] * shape[1], dtype=np.int64) * int(np.prod(shape[2:]))).reshape(shape[:2] + [1] * d)
    return relax.Tuple([best, op.add(idx, relax.const(base, "int64"))])


register_if_available(register)

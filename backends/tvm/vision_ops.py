"""Converter for DeformConv (opset 19), which TVM's Relax importer lacks (2-D images).

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


register_if_available(register)

"""Converters for the ONNX signal ops TVM's Relax importer lacks: DFT, STFT, Col2Im.

Each lowers to dense ops with constant matrices built from the (static) shapes, so the result
is ordinary Relax (matmul, take, conv_transpose) that optc's schedules handle:

- DFT (opset 17: ``dft_length`` input, ``axis`` attribute; opset 20: ``axis`` input too):
  ``Y[k] = sum_t X[t] e^(-+2 pi i k t / n)`` along ``axis`` as two real matmuls with the
  cos / sin matrices (``n`` = ``dft_length``, else the axis length: the signal is truncated
  or zero padded to ``n``, which in matrix form is columns for ``t < min(len, n)`` only).
  ``onesided`` keeps bins ``0 .. n // 2``; ``inverse`` uses ``e^(+...)`` and divides by ``n``;
  ``inverse`` and ``onesided`` together is the inverse real FFT (numpy's ``irfft``): the
  one-sided input ``X[0 .. n // 2]`` is extended hermitian, ``x[t] = (1/n) sum_k w_k
  (Re X_k cos - Im X_k sin)`` with ``w_0 = w_(n/2) = 1``, else 2; the output is real
  (last dimension 1). The matmul runs in float32 for float16 inputs (float64 stays float64).
  This is O(n^2) per transform, not an FFT: fine for the short transforms (frames, features)
  these models use; ``dft_length`` and ``axis`` must be constants (``--const-input``).
- STFT (opset 17): frames ``f * frame_step + [0, frame_length)`` gathered with one ``take``
  (``1 + (len - frame_length) // frame_step`` of them), multiplied by ``window`` (a run-time
  value allowed), then the DFT above along the frame axis (``onesided`` as the attribute).
- Col2Im (opset 18): the block columns ``[N, C * prod(block), L]`` are the input of a
  transposed convolution with ``groups = C`` and a one-hot kernel (input channel
  ``c * prod(block) + b`` puts its value at block position ``b`` of output channel ``c``):
  overlapping blocks add up, exactly Col2Im's definition; ``strides``, ``dilations`` and
  ``pads`` are the convolution's, and ``output_padding`` makes up the rows that no block
  reaches. ``image_shape`` and ``block_shape`` must be constants. 1-D to 3-D images.
- MelWeightMatrix (opset 17): all five operands must be constants (``--const-input``); the
  matrix ``[dft_length // 2 + 1, num_mel_bins]`` is computed at compile time by the ONNX
  reference implementation (``onnx.reference``) and becomes a constant of ``output_datatype``.
"""

from __future__ import annotations

import numpy as np

from .lower import register_converter, register_if_available
from .onnx_ops import _constant_array, _constant_int, _dtype, _rank


def dft_matrices(m: int, n: int, *, onesided: bool, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) matrices ``[m, K]`` (float64) for a complex DFT of ``n`` points applied to a
    signal of length ``m`` (truncated or zero padded to ``n``): ``Y = X @ (C + s i S)`` with
    ``s = +1`` inverse else ``-1``, scaled by ``1/n`` when ``inverse``; K = n // 2 + 1 if
    ``onesided`` else n."""
    k_out = n // 2 + 1 if onesided else n
    t = np.arange(m)[:, None]
    k = np.arange(k_out)[None, :]
    theta = 2.0 * np.pi * ((t * k) % n) / n
    used = (t < n).astype(np.float64)
    scale = 1.0 / n if inverse else 1.0
    return np.cos(theta) * used * scale, np.sin(theta) * used * scale


def irfft_matrices(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(A_re, A_im) ``[m, n]`` (float64): ``x = Re(X) @ A_re + Im(X) @ A_im`` is numpy's
    ``irfft(X, n)`` of a one-sided spectrum of ``m`` bins (bins past ``n // 2`` ignored)."""
    k = np.arange(m)[:, None]
    t = np.arange(n)[None, :]
    weight = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 1.0, 2.0) * (k <= n // 2)
    theta = 2.0 * np.pi * ((k * t) % n) / n
    return weight * np.cos(theta) / n, -weight * np.sin(theta) / n


def col2im_kernel(channels: int, block: list[int]) -> np.ndarray:
    """The one-hot transposed-convolution kernel ``[C * prod(block), 1, *block]`` (IOHW):
    input channel ``c * prod(block) + b`` sets block position ``b`` (row-major)."""
    size = int(np.prod(block))
    eye = np.eye(size).reshape(size, 1, *block)
    return np.tile(eye, (channels, 1) + (1,) * len(block))


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op
    _register_mel(relax, OnnxOpConverter)

    def component(bb, x, k: int):
        """Component ``k`` (0 real, 1 imaginary) of the last axis, that axis dropped."""
        r = _rank(x)
        part = op.strided_slice(x, axes=[r - 1], begin=[k], end=[k + 1])
        return bb.normalize(op.squeeze(part, axis=[r - 1]))

    def to_last(bb, x, axis: int):
        perm = [i for i in range(_rank(x)) if i != axis] + [axis]
        return bb.normalize(op.permute_dims(x, perm))

    def from_last(x, axis: int):
        """Undo ``to_last`` on ``[..., transformed axis, components]``."""
        r = _rank(x)
        perm = [r - 2 if j == axis else (j if j < axis else j - 1) for j in range(r - 1)]
        return op.permute_dims(x, perm + [r - 1])

    def matmul(x, w: np.ndarray, dtype: str):
        return op.matmul(x, relax.const(w.astype(dtype), dtype))

    def dft(bb, x, axis: int, n: int | None, inverse: bool, onesided: bool):
        """The DFT of ``x`` (``[..., 1 | 2]``) along ``axis``: ``[..., 2]`` (``[..., 1]`` for irfft)."""
        r, dtype = _rank(x), _dtype(x)
        axis = axis % r
        if axis == r - 1:
            raise ValueError("DFT axis must not be the last (real/imaginary) axis")
        work = "float32" if dtype == "float16" else dtype
        x = bb.normalize(op.astype(x, work)) if work != dtype else x
        m = int(x.ty.shape[axis])
        comps = int(x.ty.shape[r - 1])
        re = to_last(bb, component(bb, x, 0), axis)
        im = to_last(bb, component(bb, x, 1), axis) if comps == 2 else None
        if inverse and onesided:
            n = n or 2 * (m - 1)
            a_re, a_im = irfft_matrices(m, n)
            y = matmul(re, a_re, work)
            y = op.add(y, matmul(im, a_im, work)) if im is not None else y
            parts = [y]
        else:
            n = n or m
            c, s = dft_matrices(m, n, onesided=onesided, inverse=inverse)
            sign = 1.0 if inverse else -1.0
            y_re, y_im = matmul(re, c, work), matmul(re, sign * s, work)
            if im is not None:
                y_re = op.subtract(y_re, matmul(im, sign * s, work))
                y_im = op.add(y_im, matmul(im, c, work))
            parts = [y_re, y_im]
        y = op.concat([op.expand_dims(p, axis=[r - 1]) for p in parts], axis=r - 1)
        y = from_last(bb.normalize(y), axis) if axis != r - 2 else y
        return op.astype(y, dtype) if work != dtype else y

    def optional(inputs, k: int):
        return inputs[k] if len(inputs) > k and inputs[k] is not None else None

    @register_converter("", "DFT")
    class DFT(OnnxOpConverter):
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):
            return cls._dft(bb, inputs, int(attr.get("axis", 1)), attr, params)

        @classmethod
        def _impl_v20(cls, bb, inputs, attr, params):
            axis = optional(inputs, 2)
            axis = -2 if axis is None else _constant_int(axis, params, "DFT axis")
            return cls._dft(bb, inputs, axis, attr, params)

        @classmethod
        def _dft(cls, bb, inputs, axis, attr, params):
            length = optional(inputs, 1)
            n = None if length is None else _constant_int(length, params, "DFT dft_length")
            return dft(bb, inputs[0], axis, n, bool(attr.get("inverse", 0)), bool(attr.get("onesided", 0)))

    @register_converter("", "STFT")
    class STFT(OnnxOpConverter):
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):
            x, window = inputs[0], optional(inputs, 2)
            step = _constant_int(inputs[1], params, "STFT frame_step")
            length = optional(inputs, 3)
            if length is not None:
                length = _constant_int(length, params, "STFT frame_length")
            elif window is not None:
                length = int(window.ty.shape[0])
            else:
                length = int(x.ty.shape[-2])
            frames = 1 + (int(x.ty.shape[1]) - length) // step
            idx = (np.arange(frames)[:, None] * step + np.arange(length)[None, :]).reshape(-1)
            framed = op.take(x, relax.const(idx.astype("int64")), axis=1)
            batch, comps = int(x.ty.shape[0]), int(x.ty.shape[-1])
            framed = bb.normalize(op.reshape(framed, [batch, frames, length, comps]))
            if window is not None:
                framed = bb.normalize(op.multiply(framed, op.reshape(window, [1, 1, length, 1])))
            return dft(bb, framed, 2, length, False, bool(attr.get("onesided", 1)))

    @register_converter("", "Col2Im")
    class Col2Im(OnnxOpConverter):
        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):
            x = inputs[0]
            image = [int(v) for v in _constant_array(inputs[1], params, "Col2Im image_shape").reshape(-1)]
            block = [int(v) for v in _constant_array(inputs[2], params, "Col2Im block_shape").reshape(-1)]
            return col2im(x, image, block, attr)

    def col2im(x, image: list[int], block: list[int], attr: dict):
        d = len(image)
        if d not in (1, 2, 3) or len(block) != d:
            raise ValueError(f"Col2Im: image_shape {image} / block_shape {block}: 1-3 spatial dims")
        strides = [int(v) for v in attr.get("strides", [1] * d)]
        dil = [int(v) for v in attr.get("dilations", [1] * d)]
        pads = [int(v) for v in attr.get("pads", [0] * 2 * d)]
        n, ck, cols = (int(v) for v in x.ty.shape)
        size = int(np.prod(block))
        grid = [(image[i] + pads[i] + pads[i + d] - (dil[i] * (block[i] - 1) + 1)) // strides[i] + 1
                for i in range(d)]
        if ck % size or int(np.prod(grid)) != cols:
            raise ValueError(f"Col2Im: input {[n, ck, cols]} does not fit blocks {block} on image {image}")
        channels = ck // size
        full = [strides[i] * (grid[i] - 1) + dil[i] * (block[i] - 1) + 1 - pads[i] - pads[i + d] for i in range(d)]
        extra = [image[i] - full[i] for i in range(d)]
        conv = {1: op.nn.conv1d_transpose, 2: op.nn.conv2d_transpose, 3: op.nn.conv3d_transpose}[d]
        layout = {1: ("NCW", "IOW"), 2: ("NCHW", "IOHW"), 3: ("NCDHW", "IODHW")}[d]
        kernel = relax.const(col2im_kernel(channels, block).astype(_dtype(x)), _dtype(x))
        return conv(op.reshape(x, [n, ck, *grid]), kernel, strides=strides, padding=pads, output_padding=extra,
                    dilation=dil, groups=channels, data_layout=layout[0], kernel_layout=layout[1])


def mel_weight_matrix(values: list[np.ndarray], output_datatype: int | None) -> np.ndarray:
    """MelWeightMatrix of constant operands, by the ONNX reference implementation."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    names = ["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz"]
    attrs = {} if output_datatype is None else {"output_datatype": int(output_datatype)}
    node = onnx.helper.make_node("MelWeightMatrix", names, ["y"], **attrs)
    graph = onnx.helper.make_graph([node], "mel", [onnx.helper.make_tensor_value_info(
        n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for n, v in zip(names, values)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, values)))[0]


def _register_mel(relax, OnnxOpConverter) -> None:
    @register_converter("", "MelWeightMatrix")
    class MelWeightMatrix(OnnxOpConverter):
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):
            what = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
            values = [_constant_array(x, params, f"MelWeightMatrix {w}") for x, w in zip(inputs, what)]
            matrix = mel_weight_matrix(values, attr.get("output_datatype"))
            return relax.const(matrix, str(matrix.dtype))


register_if_available(register)

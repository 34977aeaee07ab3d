"""What optc's binary and bit-serial ``ai.optc`` ops share: bit packing, the exact integer
cores their numpy references and kernels must agree on bit for bit, and running graphs with
``ai.optc`` ops through onnx's reference evaluator.

The ops themselves (contract, schema, reference, cost, TVM lowering) are one module each in
:mod:`optc.passes.ops` (``SignThreshold``, ``BinaryDense``, ``BinaryConv2d``,
``BinaryConv2dThreshold``, ``BitserialDense``, ``BitserialConv2d``; the integer ops'
math is :mod:`optc.passes.quant.int_ops`). The binarize passes (:mod:`optc.passes.binarize`)
emit them; the TVM kernels are :mod:`optc.backends.tvm.bitserial`; an FPGA generator can read
the same contract. ``reference_evaluator(model)`` runs any rewritten graph, so each rewrite
step can be compared numerically with the graph before it.

Bit packing (all ops)
---------------------
A packed axis of length L becomes ``ceil(L / 64)`` ``uint64`` words: element ``k`` is bit
``k % 64`` (LSB first) of word ``k // 64``; the tail bits of the last word are 0. Binary
values are encoded bit 1 = +1, bit 0 = -1 (a weight ``w`` is encoded as ``w >= 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optc.ops import DOMAIN, VERSION

WORD = 64

__all__ = [
    "DOMAIN", "VERSION", "WORD", "words", "pack_bits", "unpack_bits", "popcount",
    "planes", "quantize_codes", "binary_dense_int", "binary_conv2d_int", "bitserial_dense_int", "bitserial_conv2d_int",
    "scale_and_shift", "ConvGeometry", "conv_output_shape", "conv_weight_taps", "reference_evaluator", "run_op",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# packing


def words(length: int) -> int:
    """Number of uint64 words holding ``length`` bits."""
    return (int(length) + WORD - 1) // WORD


def pack_bits(bits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pack a boolean array along ``axis`` into uint64 words (bit k of the axis -> bit k % 64 of
    word k // 64, LSB first; tail bits 0). The packed axis stays in place."""
    b = np.moveaxis(np.asarray(bits, dtype=bool), axis, -1)
    n = b.shape[-1]
    nw = words(n)
    pad = nw * WORD - n
    if pad:
        b = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,), bool)], axis=-1)
    by = np.packbits(b, axis=-1, bitorder="little")  # [..., nw * 8] bytes, byte j = bits 8j..8j+7
    w = np.ascontiguousarray(by).view("<u8").astype(np.uint64)  # little-endian words
    return np.moveaxis(w.reshape(b.shape[:-1] + (nw,)), -1, axis)


def unpack_bits(packed: np.ndarray, length: int, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`pack_bits`: a boolean array with ``length`` elements along ``axis``."""
    w = np.moveaxis(np.asarray(packed, dtype=np.uint64), axis, -1)
    by = np.ascontiguousarray(w.astype("<u8")).view(np.uint8)
    b = np.unpackbits(by, axis=-1, bitorder="little")[..., :length].astype(bool)
    return np.moveaxis(b, -1, axis)


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 (int64 result)."""
    return np.bitwise_count(np.asarray(x, dtype=np.uint64)).astype(np.int64)


def conv_output_shape(h: int, w: int, kernel_shape, pads, strides, dilations) -> tuple[int, int]:
    kh, kw = kernel_shape
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return oh, ow


@dataclass(frozen=True)
class ConvGeometry:
    """The window of a 2-D convolution, as its ONNX attributes give it (what the numpy
    references and the int8 / bit-serial kernels share): ``kernel_shape`` (KH, KW), ``pads``
    (top, left, bottom, right), ``strides`` and ``dilations`` (H, W), ``group``, and the memory
    order of the activations (``x_layout`` / ``y_layout``: "NCHW" or "NHWC"; only the integer
    kernels read them). ``None`` (or empty) pads, strides or dilations are the ONNX defaults (0, 1, 1);
    sequences become tuples of ints, so equal geometries compare and hash equal."""

    kernel_shape: tuple[int, int]
    pads: tuple[int, int, int, int] | None = None
    strides: tuple[int, int] | None = None
    dilations: tuple[int, int] | None = None
    group: int = 1
    x_layout: str = "NCHW"
    y_layout: str = "NCHW"

    def __post_init__(self):
        given = [None if v is None or not len(v) else v for v in (self.pads, self.strides, self.dilations)]
        ks, pads, strides, dilations = _conv_attrs(self.kernel_shape, *given)
        for name, v in (("kernel_shape", ks), ("pads", pads), ("strides", strides), ("dilations", dilations)):
            object.__setattr__(self, name, tuple(v))
        object.__setattr__(self, "group", int(self.group))

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(OH, OW) for an ``h`` x ``w`` input."""
        return conv_output_shape(h, w, self.kernel_shape, self.pads, self.strides, self.dilations)

    @property
    def taps(self) -> int:
        """KH * KW."""
        return self.kernel_shape[0] * self.kernel_shape[1]


def _conv_attrs(kernel_shape, pads, strides, dilations):
    kernel_shape = [int(v) for v in kernel_shape]
    pads = [int(v) for v in (pads if pads is not None else (0, 0, 0, 0))]
    strides = [int(v) for v in (strides if strides is not None else (1, 1))]
    dilations = [int(v) for v in (dilations if dilations is not None else (1, 1))]
    return kernel_shape, pads, strides, dilations


def _taps(h, w, kernel_shape, pads, strides, dilations):
    """For each kernel tap: (kh, kw, ih[OH], iw[OW], valid_h[OH], valid_w[OW])."""
    oh, ow = conv_output_shape(h, w, kernel_shape, pads, strides, dilations)
    out = []
    for kh in range(kernel_shape[0]):
        ih = np.arange(oh) * strides[0] - pads[0] + kh * dilations[0]
        for kw in range(kernel_shape[1]):
            iw = np.arange(ow) * strides[1] - pads[1] + kw * dilations[1]
            out.append((kh, kw, ih, iw, (ih >= 0) & (ih < h), (iw >= 0) & (iw < w)))
    return (oh, ow), out


# ---------------------------------------------------------------------------------------------
# exact integer cores (what the kernels must reproduce bit for bit)


def binary_dense_int(xbits: np.ndarray, w: np.ndarray, in_features: int) -> np.ndarray:
    """``sum_k sign_x * sign_w`` for packed ``xbits`` [M, KW] and ``w`` [N, KW] (int64 [M, N])."""
    xbits = np.asarray(xbits, np.uint64)
    w = np.asarray(w, np.uint64)
    pc = popcount(xbits[:, None, :] ^ w[None, :, :]).sum(-1)
    return int(in_features) - 2 * pc


def binary_conv2d_int(xbits: np.ndarray, w: np.ndarray, in_channels: int, kernel_shape,
                      pads=None, strides=None, dilations=None) -> np.ndarray:
    """Integer binary conv: ``xbits`` [B, H, W, CW] (channels packed), ``w`` [N, KH, KW, CW];
    padded taps contribute 0. Returns int64 [B, N, OH, OW]."""
    kernel_shape, pads, strides, dilations = _conv_attrs(kernel_shape, pads, strides, dilations)
    b, h, wd, _ = xbits.shape
    n = w.shape[0]
    (oh, ow), taps = _taps(h, wd, kernel_shape, pads, strides, dilations)
    acc = np.zeros((b, oh, ow, n), np.int64)
    for kh, kw, ih, iw, vh, vw in taps:
        xs = xbits[:, np.clip(ih, 0, h - 1)][:, :, np.clip(iw, 0, wd - 1)]  # [B, OH, OW, CW]
        pc = popcount(xs[:, :, :, None, :] ^ w[None, None, None, :, kh, kw, :]).sum(-1)
        valid = (vh[:, None] & vw[None, :])[None, :, :, None]
        acc += np.where(valid, int(in_channels) - 2 * pc, 0)
    return acc.transpose(0, 3, 1, 2)


def planes(q: np.ndarray, bits: int) -> np.ndarray:
    """Bit planes of unsigned codes ``q`` [D0, ..., L], packed along the last axis and stacked on
    a new axis 1: [D0, bits, ..., ceil(L/64)] (plane i = bit i of the codes)."""
    q = np.asarray(q, np.int64)
    return np.stack([pack_bits(((q >> i) & 1).astype(bool), axis=-1) for i in range(int(bits))], axis=1)


def bitserial_dense_int(aplanes: np.ndarray, wplanes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``aplanes`` [M, ab, KW], ``wplanes`` [N, wb, KW] -> (D = sum q_a q_w [M, N],
    S = sum q_a [M]) as int64."""
    ab, wb = aplanes.shape[1], wplanes.shape[1]
    d = np.zeros((aplanes.shape[0], wplanes.shape[0]), np.int64)
    s = np.zeros((aplanes.shape[0],), np.int64)
    for i in range(ab):
        s += popcount(aplanes[:, i]).sum(-1) << i
        for j in range(wb):
            d += popcount(aplanes[:, None, i, :] & wplanes[None, :, j, :]).sum(-1) << (i + j)
    return d, s


def bitserial_conv2d_int(aplanes: np.ndarray, wplanes: np.ndarray, kernel_shape, pads=None,
                         strides=None, dilations=None) -> tuple[np.ndarray, np.ndarray]:
    """``aplanes`` [B, ab, H, W, CW], ``wplanes`` [N, wb, KH, KW, CW] -> (D [B, N, OH, OW],
    S [B, OH, OW]) as int64; padded taps are code 0."""
    kernel_shape, pads, strides, dilations = _conv_attrs(kernel_shape, pads, strides, dilations)
    b, ab, h, wd, _ = aplanes.shape
    n, wb = wplanes.shape[:2]
    (oh, ow), taps = _taps(h, wd, kernel_shape, pads, strides, dilations)
    d = np.zeros((b, oh, ow, n), np.int64)
    s = np.zeros((b, oh, ow), np.int64)
    for kh, kw, ih, iw, vh, vw in taps:
        valid = vh[:, None] & vw[None, :]
        xs = aplanes[:, :, np.clip(ih, 0, h - 1)][:, :, :, np.clip(iw, 0, wd - 1)]  # [B,ab,OH,OW,CW]
        xs = np.where(valid[None, None, :, :, None], xs, np.uint64(0))
        for i in range(ab):
            s += popcount(xs[:, i]).sum(-1) << i
            for j in range(wb):
                pc = popcount(xs[:, i, :, :, None, :] & wplanes[None, None, None, :, j, kh, kw, :]).sum(-1)
                d += pc << (i + j)
    return d.transpose(0, 3, 1, 2), s


def quantize_codes(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """``clip(round(x / scale), 0, 2^bits - 1)`` as int64 (round half to even, as ONNX Round)."""
    q = np.round(np.asarray(x, np.float32) / np.float32(scale))
    return np.clip(q, 0, (1 << int(bits)) - 1).astype(np.int64)


def conv_weight_taps(w: np.ndarray, in_channels: int, kernel_shape) -> np.ndarray:
    """Compact conv weight words ``[..., ceil(KH*KW*C/64)]`` ((kh, kw, c) order) -> per-tap
    channel words ``[..., KH, KW, ceil(C/64)]`` (what :func:`binary_conv2d_int` reads)."""
    kh, kw = (int(v) for v in kernel_shape)
    c = int(in_channels)
    bits = unpack_bits(w, kh * kw * c, axis=-1)
    return pack_bits(bits.reshape(bits.shape[:-1] + (kh, kw, c)), axis=-1)


def scale_and_shift(acc: np.ndarray, alpha: np.ndarray | None, bias, shape_axis: int) -> np.ndarray:
    """``alpha * acc + bias`` in float32, ``alpha`` and ``bias`` per index of ``shape_axis``
    (None: 1 and 0): the float epilogue of BinaryDense / BinaryConv2d."""
    shape = [1] * acc.ndim
    shape[shape_axis] = -1
    y = acc.astype(np.float32)
    if alpha is not None:
        y = np.asarray(alpha, np.float32).reshape(shape) * y
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(shape)
    return y.astype(np.float32)


def has_optc_ops(model) -> bool:
    """True if an ``onnx.ModelProto`` (or its main graph) has nodes in the ai.optc domain."""
    graph = getattr(model, "graph", model)
    return any(n.domain == DOMAIN for n in graph.node)


def reference_evaluator(model, *, dynamic_lstm_rounding: bool = True, **kwargs):
    """``onnx.reference.ReferenceEvaluator`` for ``model`` with every registered ``ai.optc`` op
    (:func:`optc.ops.references`), optc's QuantizeLinear/DequantizeLinear for opsets < 19,
    GlobalMaxPool / BatchNormalization where onnx's reference is wrong (any rank; inference mode
    at opsets 9-13), a vectorized Erf, and ConvInteger / Conv / ConvTranspose in float64 through
    BLAS (exact for ConvInteger; onnx's take minutes on dilated 1-d convolutions):
    ``optc.passes.quant.int_ops.STANDARD_OPS``; com.microsoft
    DynamicQuantizeLSTM by its spec arithmetic (``optc.passes.quant.dynamic_lstm``; without its
    run-time activation rounding where ``dynamic_lstm_rounding`` is False)."""
    from onnx.reference import ReferenceEvaluator

    from optc import ops
    from optc.passes.quant.dynamic_lstm import DynamicQuantizeLSTMRef
    from optc.passes.quant.int_ops import STANDARD_OPS

    return ReferenceEvaluator(model, new_ops=ops.references() + STANDARD_OPS + [DynamicQuantizeLSTMRef.op(dynamic_lstm_rounding)],
                              **kwargs)


def run_op(op_type: str, *inputs: np.ndarray | None, **attributes) -> np.ndarray:
    """Run one ai.optc op on numpy arrays through ``ReferenceEvaluator`` (a one-node model;
    ``None`` for an omitted optional input). Returns its output."""
    import onnx
    from onnx import helper

    names, feeds, infos = [], {}, []
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        a = np.asarray(a)
        name = f"in{i}"
        names.append(name)
        feeds[name] = a
        infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op_type, names, ["out"], domain=DOMAIN, **attributes)
    graph = helper.make_graph([node], op_type, infos, [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, VERSION)])
    return reference_evaluator(model).run(None, feeds)[0]

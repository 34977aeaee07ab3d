"""optc's own ONNX operators (domain ``ai.optc``, version 1): contract, bit packing, and numpy
reference implementations.

The binarize passes (:mod:`optc.passes.binarize`) emit these ops; the TVM backend lowers them to
bit-serial kernels (:mod:`optc.backends.tvm.bitserial`); an FPGA generator can read the same
contract. Every op has a numpy reference here as an :class:`onnx.reference.op_run.OpRun`
subclass, so ``onnx.reference.ReferenceEvaluator(model, new_ops=OPS)`` runs any rewritten
graph and each rewrite step can be compared numerically with the graph before it.

Bit packing (all ops)
---------------------
A packed axis of length L becomes ``ceil(L / 64)`` ``uint64`` words: element ``k`` is bit
``k % 64`` (LSB first) of word ``k // 64``; the tail bits of the last word are 0. Binary
values are encoded bit 1 = +1, bit 0 = -1 (a weight ``w`` is encoded as ``w >= 0``).

Ops
---
Each op's contract is its reference class's docstring below; its schema, cost and lowering are
declared on the class with :func:`optc.ops.define` (the ``ai.optc`` registry, :mod:`optc.ops`):
``SignThreshold``, ``BinaryDense``, ``BinaryConv2d``, ``BinaryConv2dThreshold``,
``BitserialDense``, ``BitserialConv2d``. The integer ops (``IntConv2d``, ...) are in
:mod:`optc.passes.quant.int_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import (DOMAIN, VERSION, Attr, Cost, Operand, Surrogate, conv_surrogate, define, dense_surrogate,
                      elementwise_surrogate)

WORD = 64

__all__ = [
    "DOMAIN", "VERSION", "WORD", "OPS", "words", "pack_bits", "unpack_bits", "popcount",
    "planes", "quantize_codes", "binary_dense_int", "binary_conv2d_int", "bitserial_dense_int", "bitserial_conv2d_int",
    "ConvGeometry", "conv_output_shape", "conv_weight_taps", "reference_evaluator", "run_op",
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


def _finish(acc: np.ndarray, alpha: np.ndarray, bias, shape_axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[shape_axis] = -1
    y = acc.astype(np.float32)
    if alpha is not None:
        y = np.asarray(alpha, np.float32).reshape(shape) * y
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(shape)
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the ops: contract (docstring), schema, cost and lowering (optc.ops.define), numpy reference

_F32, _U64 = ("float32",), ("uint64",)
_TVM = {"tvm": "optc.backends.tvm.bitserial"}
_CONV_ATTRS = (Attr("in_channels", "int", required=True), Attr("kernel_shape", "ints", required=True),
               Attr("pads", "ints"), Attr("strides", "ints"), Attr("dilations", "ints"))
_BITSERIAL_ATTRS = (Attr("act_bits", "int", required=True), Attr("weight_bits", "int", required=True),
                    Attr("act_scale", "float", required=True))


def _dense_cost(s: Surrogate) -> bool:
    """MatMul ``X [M, in_features] @ [in_features, N]`` (N = rows of the packed weights)."""
    w = s.input_dims(1)
    return bool(w) and dense_surrogate(s, s.attr_int("in_features") or 0, w[0])


def _conv_cost(s: Surrogate) -> bool:
    """Conv on ``[N, in_channels, KH, KW]`` weights (N = rows of the packed weights), with the
    fused max-pool of ``pool_shape`` where there is one."""
    w = s.input_dims(1)
    shape = [w[0], s.attr_int("in_channels") or 0, *s.attr_ints("kernel_shape", [1, 1])] if w else None
    return bool(w) and conv_surrogate(s, shape, pool=s.attr_ints("pool_shape", [1, 1]))


_BINARY_DENSE_COST = Cost("binary", _dense_cost, binarize_and_scale=True)
_BINARY_CONV_COST = Cost("binary", _conv_cost, binarize_and_scale=True)


def _example_conv_weights(rng, n: int, c: int, ks, planes_: int | None = None) -> np.ndarray:
    """Packed conv weights in the contract's (kh, kw, c) order: sign bits, or ``planes_`` bit planes."""
    if planes_ is None:
        return pack_bits(rng.random((n, ks[0] * ks[1] * c)) < 0.5, axis=-1)
    return planes(rng.integers(0, 1 << planes_, (n, ks[0] * ks[1] * c)), planes_)


_EXAMPLE_CONV = {"in_channels": 5, "kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "strides": [2, 1],
                 "dilations": [1, 2]}


@define(inputs=(Operand("X", _F32), Operand("T", _F32), Operand("D", _F32, optional=True)),
        outputs=(Operand("Y", _F32),), cost=Cost("fp32", elementwise_surrogate, ops_per_output=1), lowering=_TVM,
        example=lambda rng: ([rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
                              np.array([0.5, -np.inf, 0.0], np.float32), np.array([1, -1, -1], np.float32)], {}))
class SignThreshold(OpRun):
    """``SignThreshold(X, T[, D]) -> Y``

    Bipolar activation with a per-channel threshold (what BatchNormalization followed by Sign
    folds into). ``X`` float32 of rank >= 2, ``T`` and ``D`` float32 ``[C]`` with C = X.shape[1]
    (the channel axis, as for BatchNormalization). ``D`` is +1 or -1 (the sign of the BN
    scale; absent = all +1). ``Y = +1 where D[c] * X >= D[c] * T[c] else -1`` (float32, same
    shape as X). T may be +-inf (a constant channel). When X is the integer output of a binary
    op whose scale was folded in (see ``binarize``), T holds integers (ceil for D = +1, floor
    for D = -1): an integer comparator.
    """

    op_domain = DOMAIN

    def _run(self, X, T, D=None):  # noqa: N803
        shape = [1] * X.ndim
        shape[1] = -1
        t = np.asarray(T, np.float32).reshape(shape)
        d = np.ones_like(t) if D is None else np.asarray(D, np.float32).reshape(shape)
        return (np.where(d * X >= d * t, np.float32(1), np.float32(-1)).astype(np.float32),)


@define(inputs=(Operand("X", _F32), Operand("W", _U64), Operand("alpha", _F32, optional=True),
                Operand("B", _F32, optional=True)),
        attributes=(Attr("in_features", "int", required=True),), outputs=(Operand("Y", _F32),),
        cost=_BINARY_DENSE_COST, lowering=_TVM,
        example=lambda rng: ([rng.standard_normal((3, 100)).astype(np.float32), pack_bits(rng.random((5, 100)) < 0.5),
                              rng.uniform(0.5, 2, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)],
                             {"in_features": 100}))
class BinaryDense(OpRun):
    """``BinaryDense(X, W[, alpha][, B]) -> Y``  (attribute ``in_features`` = K)

    ``X`` float32 ``[M, K]``, binarized by the op at run time: bit = ``X >= 0`` (so +-1 inputs
    are exact; an exact 0 counts as +1, where ONNX ``Sign`` would give 0). ``W`` uint64
    ``[N, ceil(K/64)]``: row n holds the packed sign bits of weight row ``w[n, :]``.
    ``alpha`` float32 ``[N]`` (> 0; absent = 1), ``B`` float32 ``[N]`` (absent = 0).
    ``Y[m, n] = alpha[n] * (K - 2 * popcount(xbits[m] XOR W[n])) + B[n]`` (float32 ``[M, N]``);
    the integer term is exactly ``sum_k sign(x[m, k]) * sign(w[n, k])``.
    """

    op_domain = DOMAIN

    def _run(self, X, W, alpha=None, B=None, in_features=None):  # noqa: N803
        xbits = pack_bits(np.asarray(X) >= 0, axis=-1)
        acc = binary_dense_int(xbits, W, in_features)
        return (_finish(acc, alpha, B, 1),)


@define(inputs=(Operand("X", _F32), Operand("W", _U64), Operand("alpha", _F32, optional=True),
                Operand("B", _F32, optional=True)),
        attributes=_CONV_ATTRS, outputs=(Operand("Y", _F32),), cost=_BINARY_CONV_COST, lowering=_TVM,
        example=lambda rng: ([rng.standard_normal((2, 5, 7, 6)).astype(np.float32),
                              _example_conv_weights(rng, 6, 5, (3, 3)), rng.uniform(0.5, 2, 6).astype(np.float32),
                              rng.standard_normal(6).astype(np.float32)], dict(_EXAMPLE_CONV)))
class BinaryConv2d(OpRun):
    """``BinaryConv2d(X, W[, alpha][, B]) -> Y``  (attributes ``in_channels`` C, ``kernel_shape``
    [KH, KW], ``pads`` [top, left, bottom, right], ``strides`` [2], ``dilations`` [2]; group 1)

    ``X`` float32 NCHW ``[N_b, C, H, W]``, binarized at run time as for BinaryDense.
    ``W`` uint64 ``[N, ceil(KH * KW * C / 64)]``: row n is the packed sign bits of the weight
    ``w[n]`` flattened in (kh, kw, c) order, i.e. element ``k = (kh * KW + kw) * C + c`` (the
    im2col / FINN order). Zero padding as in ONNX Conv on the +-1 tensor: padded positions
    contribute 0 (not +-1), so ``Y[b, n, oh, ow] = alpha[n] * sum_{taps (kh, kw) inside the
    input} sum_c sign(x[b, c, ih, iw]) * sign(w[n, c, kh, kw]) + B[n]`` with
    ``ih = oh * stride_h - pad_top + kh * dilation_h`` (same for w). Output float32 NCHW.
    """

    op_domain = DOMAIN

    def _run(self, X, W, alpha=None, B=None, in_channels=None, kernel_shape=None, pads=None,  # noqa: N803
             strides=None, dilations=None):
        xbits = pack_bits(np.asarray(X).transpose(0, 2, 3, 1) >= 0, axis=-1)  # [B, H, W, CW]
        wt = conv_weight_taps(W, in_channels, kernel_shape)
        acc = binary_conv2d_int(xbits, wt, in_channels, kernel_shape, pads, strides, dilations)
        return (_finish(acc, alpha, B, 1),)


@define(inputs=(Operand("X", _F32), Operand("W", _U64), Operand("T", _F32), Operand("D", _F32, optional=True)),
        attributes=(*_CONV_ATTRS, Attr("pool_shape", "ints")), outputs=(Operand("Y", _F32),),
        cost=_BINARY_CONV_COST, lowering=_TVM,
        example=lambda rng: ([rng.standard_normal((1, 5, 8, 8)).astype(np.float32),
                              _example_conv_weights(rng, 6, 5, (3, 3)),
                              rng.integers(-6, 7, 6).astype(np.float32), np.where(rng.random(6) < 0.5, 1, -1)
                              .astype(np.float32)],
                             {**_EXAMPLE_CONV, "strides": [1, 1], "pool_shape": [2, 2]}))
class BinaryConv2dThreshold(OpRun):
    """``BinaryConv2dThreshold(X, W, T[, D]) -> Y``  (attributes of BinaryConv2d plus
    ``pool_shape`` [PH, PW], default [1, 1])

    A binary convolution with its threshold activation and an optional max-pool fused (what
    ``fuse-binary-threshold`` makes of ``BinaryConv2d -> SignThreshold [-> MaxPool]``; FINN's
    MVTU with thresholds). ``Y = MaxPool_{PH x PW, stride PH x PW}(SignThreshold(
    BinaryConv2d(X, W), T, D))``: the integer conv output (no alpha, no bias) is compared with
    the (integer) thresholds, output float32 +-1 NCHW ``[N_b, N, floor(OH / PH), floor(OW / PW)]``
    (as MaxPool with ceil_mode 0: trailing rows/columns that fill no window are dropped). Since
    the values are +-1, the max-pool is an OR of the threshold bits.
    """

    op_domain = DOMAIN

    def _run(self, X, W, T, D=None, in_channels=None, kernel_shape=None, pads=None,  # noqa: N803
             strides=None, dilations=None, pool_shape=None):
        acc = BinaryConv2d._run(self, X, W, None, None, in_channels, kernel_shape, pads, strides, dilations)[0]
        y = SignThreshold._run(self, acc, T, D)[0]
        ph, pw = (1, 1) if pool_shape is None else (int(pool_shape[0]), int(pool_shape[1]))
        b, n, oh, ow = y.shape
        y = y[:, :, :oh // ph * ph, :ow // pw * pw].reshape(b, n, oh // ph, ph, ow // pw, pw).max(axis=(3, 5))
        return (y.astype(np.float32),)


def _bitserial_inputs(rng, x_shape, w, n):
    """Example operands of a bit-serial op: activations on the 0.25 grid (2-bit codes and
    beyond), weights ``w``, per-channel weight scale and offset, bias."""
    x = (rng.integers(-1, 5, x_shape) * 0.25).astype(np.float32)
    return [x, w, rng.uniform(0.01, 0.1, n).astype(np.float32), rng.uniform(-0.2, 0.0, n).astype(np.float32),
            rng.standard_normal(n).astype(np.float32)]


@define(inputs=(Operand("X", _F32), Operand("W", _U64), Operand("w_scale", _F32), Operand("w_offset", _F32),
                Operand("B", _F32, optional=True)),
        attributes=(Attr("in_features", "int", required=True), *_BITSERIAL_ATTRS), outputs=(Operand("Y", _F32),),
        cost=_BINARY_DENSE_COST, lowering=_TVM,
        example=lambda rng: (_bitserial_inputs(rng, (3, 70), planes(rng.integers(0, 8, (4, 70)), 3), 4),
                             {"in_features": 70, "act_bits": 2, "weight_bits": 3, "act_scale": 0.25}))
class BitserialDense(OpRun):
    """``BitserialDense(X, W, w_scale, w_offset[, B]) -> Y``  (attributes ``in_features`` K,
    ``act_bits`` ab, ``weight_bits`` wb, ``act_scale`` s_a)

    k-bit operands, both unsigned codes. Activations: ``q_a = clip(round(X / s_a), 0,
    2^ab - 1)`` computed by the op (X is the output of a fake-quantizer, i.e. ``s_a * q_a``;
    round half to even). Weights: ``w[n, k] = w_scale[n] * q_w[n, k] + w_offset[n]``,
    ``q_w`` in ``[0, 2^wb - 1]``, stored as bit planes: ``W`` uint64 ``[N, wb, ceil(K/64)]``,
    plane j = bit j of q_w. ``Y[m, n] = s_a * (w_scale[n] * D + w_offset[n] * S) + B[n]`` with
    the exact integers ``D = sum_{i<ab, j<wb} 2^(i+j) popcount(A_i[m] AND W[n, j])``
    (= sum_k q_a q_w) and ``S = sum_i 2^i popcount(A_i[m])`` (= sum_k q_a); A_i = bit plane i
    of q_a.
    """

    op_domain = DOMAIN

    def _run(self, X, W, w_scale, w_offset, B=None, in_features=None, act_bits=None,  # noqa: N803
             weight_bits=None, act_scale=None):
        q = quantize_codes(X, act_scale, act_bits)
        a = planes(q, act_bits)  # [M, ab, KW]
        d, s = bitserial_dense_int(a, W)
        y = np.float32(act_scale) * (np.asarray(w_scale, np.float32)[None, :] * d.astype(np.float32)
                                     + np.asarray(w_offset, np.float32)[None, :] * s.astype(np.float32)[:, None])
        if B is not None:
            y = y + np.asarray(B, np.float32)[None, :]
        return (y.astype(np.float32),)


@define(inputs=(Operand("X", _F32), Operand("W", _U64), Operand("w_scale", _F32), Operand("w_offset", _F32),
                Operand("B", _F32, optional=True)),
        attributes=(*_CONV_ATTRS, *_BITSERIAL_ATTRS), outputs=(Operand("Y", _F32),),
        cost=_BINARY_CONV_COST, lowering=_TVM,
        example=lambda rng: (_bitserial_inputs(rng, (1, 5, 7, 6), _example_conv_weights(rng, 4, 5, (3, 3), 2), 4),
                             {**_EXAMPLE_CONV, "act_bits": 2, "weight_bits": 2, "act_scale": 0.25}))
class BitserialConv2d(OpRun):
    """``BitserialConv2d(X, W, w_scale, w_offset[, B]) -> Y``  (attributes as BinaryConv2d plus
    ``act_bits``, ``weight_bits``, ``act_scale``)

    ``W`` uint64 ``[N, wb, ceil(KH * KW * C / 64)]`` (each plane in the (kh, kw, c) order of
    BinaryConv2d). Zero padding is code 0 (= value 0), so D and S sum over all taps. Output as
    BitserialDense, per output position.
    """

    op_domain = DOMAIN

    def _run(self, X, W, w_scale, w_offset, B=None, in_channels=None, kernel_shape=None,  # noqa: N803
             pads=None, strides=None, dilations=None, act_bits=None, weight_bits=None, act_scale=None):
        q = quantize_codes(np.asarray(X).transpose(0, 2, 3, 1), act_scale, act_bits)  # [B, H, W, C]
        a = planes(q, act_bits)  # [B, ab, H, W, CW]
        wt = conv_weight_taps(W, in_channels, kernel_shape)  # [N, wb, KH, KW, CW]
        d, s = bitserial_conv2d_int(a, wt, kernel_shape, pads, strides, dilations)
        ws = np.asarray(w_scale, np.float32)[None, :, None, None]
        wo = np.asarray(w_offset, np.float32)[None, :, None, None]
        y = np.float32(act_scale) * (ws * d.astype(np.float32) + wo * s.astype(np.float32)[:, None])
        if B is not None:
            y = y + np.asarray(B, np.float32)[None, :, None, None]
        return (y.astype(np.float32),)


OPS = [SignThreshold, BinaryDense, BinaryConv2d, BinaryConv2dThreshold, BitserialDense, BitserialConv2d]
OP_TYPES = tuple(op.__name__ for op in OPS)


def has_optc_ops(model) -> bool:
    """True if an ``onnx.ModelProto`` (or its main graph) has nodes in the ai.optc domain."""
    graph = getattr(model, "graph", model)
    return any(n.domain == DOMAIN for n in graph.node)


def reference_evaluator(model, **kwargs):
    """``onnx.reference.ReferenceEvaluator`` for ``model`` with every registered ``ai.optc`` op
    (:func:`optc.ops.references`) and optc's QuantizeLinear/DequantizeLinear for opsets < 19."""
    from onnx.reference import ReferenceEvaluator

    from optc import ops
    from optc.passes.quant.int_ops import STANDARD_OPS

    return ReferenceEvaluator(model, new_ops=ops.references() + STANDARD_OPS, **kwargs)


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

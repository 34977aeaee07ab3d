"""Quantization-parameter math: the one place that turns ranges into scales and zero points.

Everything here is plain numpy and exact (no hidden state); the QDQ step and the tests use the
same functions, and they follow onnxruntime's QuantizeLinear/DequantizeLinear semantics:

    q = saturate(round_half_to_even(x / scale) + zero_point)      # QuantizeLinear
    x' = (q - zero_point) * scale                                  # DequantizeLinear

with ``scale`` a float32 (what is stored in the model is what is used here).

Conventions (the graph contract that integer backends pattern-match):

* **Weights**: signed, symmetric, *narrow* range ``[-(2^(b-1)-1), 2^(b-1)-1]`` (int8: +-127,
  int4: +-7), zero point 0, ``scale = amax / qmax`` per output channel (or per tensor).
  Narrow range keeps ``-w`` representable and avoids the int16 saturation of x86
  ``vpmaddubsw``; ARM ``sdot`` and x86 ``vpdpbusd`` accumulate in int32 either way.
* **4-bit weights** are stored as int8 *containers* holding values in ``[-7, 7]`` at the
  model's opset (>= 13). Why not ONNX INT4 (opset 21)? onnxruntime 1.32 runs INT4
  DequantizeLinear, but TVM 0.27's ONNX importer cannot read INT4 initializers ("TensorCopyFromBytes:
  size mismatch", measured), and neither runtime has an int4 compute kernel, so a packed file
  would only save disk space while breaking ``optc compile``. The integer values are the same;
  a backend can pack them (two per byte) when it lowers the layer.
* **Activations**: 8 bits. Asymmetric (default): uint8 with a zero point, range widened to
  contain 0 so that 0 (padding, ReLU) is exact: ``scale = (hi - lo) / 255``,
  ``zp = clip(round(-lo / scale), 0, 255)``. Symmetric: int8, zero point 0,
  ``scale = amax / 127`` (range ``[-128, 127]``; -128 is only reached by clipping).
  uint8 x int8 is the operand form of x86 VNNI ``vpdpbusd``; int8 x int8 that of ARM ``sdot``.
* **Bias** (Conv, Gemm): int32, zero point 0, ``scale = scale_x * scale_w`` (float32 product,
  per channel), so ``sum(q_x * q_w) + q_b`` is the int32 accumulator of an integer kernel.
* A range of width 0 (a constant-zero channel or tensor) gets scale 1, so nothing divides by 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "QType", "weight_qtype", "activation_qtype", "symmetric_scale", "asymmetric_qparams",
    "activation_qparams", "weight_qparams", "bias_qparams", "quantize", "dequantize",
    "fake_quantize", "INT32",
]


@dataclass(frozen=True)
class QType:
    """An integer grid: ``bits``, signedness, the representable range [qmin, qmax], the numpy
    container dtype, and the ONNX element type of that container."""

    bits: int
    signed: bool
    qmin: int
    qmax: int

    @property
    def np_dtype(self) -> np.dtype:
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int32)

    @property
    def onnx_type(self) -> int:
        from onnx import TensorProto

        return {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
                np.dtype(np.int32): TensorProto.INT32}[self.np_dtype]

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1


INT32 = QType(32, True, -(2 ** 31), 2 ** 31 - 1)


def weight_qtype(bits: int) -> QType:
    """Signed narrow range: int8 -> [-127, 127], int4 -> [-7, 7] (in an int8 container)."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"weight bits must be between 2 and 8, not {bits}")
    qmax = 2 ** (bits - 1) - 1
    return QType(bits, True, -qmax, qmax)


def activation_qtype(bits: int, symmetric: bool) -> QType:
    """Asymmetric: unsigned full range [0, 2^b - 1]; symmetric: signed [-2^(b-1), 2^(b-1) - 1]."""
    if bits != 8:
        raise ValueError(f"activation bits must be 8 (onnxruntime's QDQ kernels are 8-bit), not {bits}")
    if symmetric:
        return QType(bits, True, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return QType(bits, False, 0, 2 ** bits - 1)


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale, np.float64)
    return np.where(scale > 0, scale, 1.0)


def symmetric_scale(amax, qtype: QType) -> np.ndarray:
    """float32 ``amax / qmax`` (elementwise; amax 0 -> scale 1)."""
    amax = np.abs(np.asarray(amax, np.float64))
    return _safe_scale(amax / qtype.qmax).astype(np.float32)


def asymmetric_qparams(lo, hi, qtype: QType) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (qtype's container) for the range [lo, hi] widened to
    contain 0: ``scale = (hi - lo) / (qmax - qmin)``, ``zp = clip(round(qmin - lo / scale))``."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    scale = _safe_scale((hi - lo) / (qtype.qmax - qtype.qmin)).astype(np.float32)
    zp = np.clip(np.rint(qtype.qmin - lo / scale.astype(np.float64)), qtype.qmin, qtype.qmax)
    return scale, zp.astype(qtype.np_dtype)


def activation_qparams(lo: float, hi: float, bits: int = 8, symmetric: bool = False
                       ) -> tuple[np.float32, np.generic, QType]:
    """Per-tensor (scale, zero point, qtype) of an activation observed in [lo, hi]."""
    qt = activation_qtype(bits, symmetric)
    if symmetric:
        scale = symmetric_scale(max(abs(lo), abs(hi)), qt)
        return np.float32(scale), qt.np_dtype.type(0), qt
    scale, zp = asymmetric_qparams(lo, hi, qt)
    return np.float32(scale), qt.np_dtype.type(zp), qt


def weight_qparams(w: np.ndarray, bits: int, axis: int | None, amax: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, QType]:
    """Quantize a weight tensor symmetrically: (q, scale, zero_point, qtype).

    ``axis`` None: one scale for the tensor; else one per index of ``axis`` (scale shape
    ``[w.shape[axis]]``). ``amax`` (same shape as the scale) overrides the observed max|w|, e.g.
    a clipping range chosen by an MSE search; values beyond it saturate.

    A dead channel (max|w| at most 2^-24 of the tensor's largest, e.g. weights decayed to
    ~1e-40) gets the median scale of the live channels: its weights quantize to 0, an error
    below float32 resolution, where its own scale (~1e-42, a denormal) would put the integer
    kernel's requantization multiplier out of range and keep the layer in float.
    """
    qt = weight_qtype(bits)
    w = np.asarray(w, np.float32)
    if amax is None:
        if axis is None:
            amax = np.max(np.abs(w)) if w.size else 0.0
        else:
            axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
            amax = np.max(np.abs(w), axis=axes) if w.size else np.zeros(w.shape[axis])
    scale = symmetric_scale(amax, qt)
    if axis is not None and scale.size > 1:
        amax = np.abs(np.asarray(amax, np.float64))
        dead = amax <= amax.max() * 2.0 ** -24
        if dead.any() and not dead.all():
            scale = np.where(dead, np.float32(np.median(scale[~dead])), scale).astype(np.float32)
    zp = np.zeros(scale.shape, qt.np_dtype)
    q = quantize(w, scale, zp, qt, axis)
    return q, scale, zp, qt


def bias_qparams(b: np.ndarray, scale_x: np.float32, scale_w: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, bool]:
    """int32 bias for an integer kernel: (q, scale, fits). ``scale = scale_x * scale_w`` (float32
    product); ``fits`` is False when some value would not fit in int32 (keep the bias float)."""
    scale = (np.float32(scale_x) * np.asarray(scale_w, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.rint(np.asarray(b, np.float64) / scale.astype(np.float64))
    fits = bool(np.all(np.abs(q) <= INT32.qmax - 1))
    return np.clip(q, INT32.qmin, INT32.qmax).astype(np.int32), scale, fits


def _bcast(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    p = np.asarray(p)
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * ndim
    shape[axis % ndim] = p.size
    return p.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point, qtype: QType, axis: int | None = None) -> np.ndarray:
    """onnxruntime's QuantizeLinear: ``saturate(rint(x / scale) + zp)`` (float32 division,
    round half to even), clipped to the qtype's range."""
    x = np.asarray(x, np.float32)
    s = _bcast(np.asarray(scale, np.float32), x.ndim, axis)
    z = _bcast(np.asarray(zero_point), x.ndim, axis).astype(np.float32)
    q = np.rint(x / s) + z
    return np.clip(q, qtype.qmin, qtype.qmax).astype(qtype.np_dtype)


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """onnxruntime's DequantizeLinear: ``(q - zp) * scale`` in float32."""
    q = np.asarray(q)
    s = _bcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _bcast(np.asarray(zero_point), q.ndim, axis)
    return ((q.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale, zero_point, qtype: QType, axis: int | None = None) -> np.ndarray:
    """``dequantize(quantize(x))``: what a Q -> DQ pair computes."""
    return dequantize(quantize(x, scale, zero_point, qtype, axis), scale, zero_point, axis)

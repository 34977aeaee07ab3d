"""The quantization driver shared by the ``quantize`` pass, mixed precision and quant-debug:
prepare (opset, layers) -> calibrate (observers) -> choose parameters -> insert QDQ.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx

from . import calibrate, equalize, qdq, qparams
from .observers import OBSERVERS, Observer, make_observer, mse_weight_amax

__all__ = ["QuantConfig", "Quantizer", "MIN_OPSET", "FP32"]

MIN_OPSET = 13  # per-channel DequantizeLinear (axis) needs 13; onnxruntime rejects QDQ at 11
FP32 = 32  # "bits" of a layer left in float


@dataclass
class QuantConfig:
    """Everything that decides how a model is quantized (the pass parameters, minus data)."""

    weight_bits: int = 8
    act_bits: int = 8
    symmetric: bool = False
    per_channel: bool = True
    ops: tuple[str, ...] = qdq.SUPPORTED_OPS
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    observer: str = "minmax"
    percentile: float = 99.99
    bins: int = 2048
    weight_observer: str = "auto"
    layer_bits: dict[str, int] = field(default_factory=dict)
    quantize_bias: bool = True
    bias_correction: bool = True
    output_qdq: bool = True
    calib_samples: int = 0
    smooth: bool = False
    smooth_alpha: float = 0.5
    smooth_scope: str = "depthwise"
    activation_matmul: bool = False  # also Q/DQ on MatMuls of two activations (attention)

    def check(self) -> None:
        if self.weight_bits not in (4, 8):
            raise ValueError(f"weight-bits must be 4 or 8, not {self.weight_bits}")
        if self.act_bits != 8:
            raise ValueError(f"act-bits must be 8 (onnxruntime's QDQ activations are 8-bit), not {self.act_bits}")
        bad = [o for o in self.ops if o not in qdq.SUPPORTED_OPS]
        if bad:
            raise ValueError(f"ops {bad} not supported (supported: {', '.join(qdq.SUPPORTED_OPS)})")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, not {self.observer!r}")
        if self.weight_observer not in ("auto", "minmax", "mse"):
            raise ValueError(f"weight-observer must be auto, minmax or mse, not {self.weight_observer!r}")
        for k, v in self.layer_bits.items():
            if v not in (4, 8, FP32):
                raise ValueError(f"layer-bits {k}:{v}: bits must be 4, 8 or 32 (float)")
        make_observer(self.observer, percentile=self.percentile, bins=self.bins)
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth-alpha must be in [0, 1], not {self.smooth_alpha}")
        if self.smooth_scope not in equalize.SCOPES:
            raise ValueError(f"smooth-scope must be one of {', '.join(equalize.SCOPES)}, not {self.smooth_scope!r}")

    def weight_method(self, bits: int) -> str:
        if self.weight_observer != "auto":
            return self.weight_observer
        return "mse" if bits < 8 else "minmax"


def upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """(model at opset >= 13, opset before, opset after)."""
    from optc.frontend import onnx_opset

    before = onnx_opset(model)
    if before >= MIN_OPSET:
        return model, before, before
    from onnx import version_converter

    up = version_converter.convert_version(model, MIN_OPSET)
    up.ir_version = max(up.ir_version, 7)
    return up, before, MIN_OPSET


def bias_shift(layer: qdq.Layer, dw: np.ndarray, mean_x: np.ndarray | None) -> np.ndarray | None:
    """Expected output shift caused by the weight error ``dw`` given the per-channel mean of
    the layer input: ``E[y_q - y] = dw . E[x]`` per output channel (Nagel et al. 2019, "Data-Free
    Quantization", bias correction; means measured on the calibration data, padding ignored).
    Subtracting it from the bias removes the systematic part of the weight error, which matters
    for depthwise convolutions (9 weights per channel: their rounding errors do not average out)."""
    if mean_x is None:
        return None
    mean_x = np.asarray(mean_x, np.float64)
    if layer.op_type == "Conv":
        m, cg = dw.shape[0], dw.shape[1]
        groups = mean_x.size // cg
        if groups * cg != mean_x.size or m % groups:
            return None
        d = dw.reshape(m, cg, -1).sum(axis=2).astype(np.float64)  # [M, C/g]
        mx = mean_x.reshape(groups, cg)[np.arange(m) // (m // groups)]  # [M, C/g]
        return (d * mx).sum(axis=1).astype(np.float32)
    if layer.op_type == "Gemm":
        dw64 = dw.astype(np.float64)
        out = dw64 @ mean_x if layer.weight_axis == 0 else mean_x @ dw64
        return out.astype(np.float32)
    return None


class Quantizer:
    """One model prepared for quantization; ``build(bits)`` makes QDQ models from it.

    ``bits``: layer name -> 4 or 8 (weight bits) or :data:`FP32` (left in float).
    """

    def __init__(self, model: onnx.ModelProto, config: QuantConfig):
        config.check()
        self.config = config
        self.model, self.opset_before, self.opset = upgrade_opset(model)
        self.model, self.lifted_constants = qdq.lift_constant_weights(self.model, config.ops)
        qdq.check_patterns(self.model, config.ops, include=config.include, exclude=config.exclude,
                           layer_bits=list(config.layer_bits))
        self._index_layers()
        self.smoothing: list[dict] = []
        self.observers: dict[str, Observer] = {}
        self.channel_means: dict[str, np.ndarray] = {}
        self.calibration: dict = {}
        self._amax: dict[tuple[str, int], np.ndarray | None] = {}

    # -- calibration ------------------------------------------------------------------------
    def calibrate(self, data: Mapping[str, np.ndarray], source: str = "arrays") -> dict:
        cfg = self.config
        if cfg.smooth:
            self._smooth(data)
        axes = {l.act_input: equalize.input_channel_absmax_axis(l) for l in self.layers}
        self.observers, info, self.channel_means = calibrate.collect(
            self.model, self.tensors, data,
            lambda: make_observer(cfg.observer, percentile=cfg.percentile, bins=cfg.bins),
            limit=cfg.calib_samples, channel_axes=axes)
        empty = [t for t, o in self.observers.items() if o.empty]
        self.calibration = {"data": source, "observer": cfg.observer, **info}
        if cfg.observer == "percentile":
            self.calibration["percentile"] = cfg.percentile
        if cfg.observer != "minmax":
            self.calibration["histogram_bins"] = cfg.bins
        if empty:
            self.calibration["tensors_without_data"] = empty
        if cfg.smooth:
            done = [r for r in self.smoothing if "scale_range" in r]
            self.calibration["smoothing"] = {"scope": cfg.smooth_scope, "alpha": cfg.smooth_alpha,
                                             "layers_scaled": len(done),
                                             "layers": self.smoothing}
        return self.calibration

    def _smooth(self, data: Mapping[str, np.ndarray]) -> None:
        """Equalize the layer inputs per channel (:mod:`.equalize`) before calibrating: the
        model is replaced by the (float-equivalent) rescaled one, layers found again."""
        cfg = self.config
        targets = equalize.candidates(self.model, self.layers, cfg.smooth_scope, cfg.per_channel)
        if not targets:  # nothing to rescale (no depthwise conv): no statistics pass either
            self.smoothing = []
            return
        axes = {l.act_input: equalize.input_channel_absmax_axis(l) for l in targets}
        amax = calibrate.channel_absmax(self.model, axes, data, limit=cfg.calib_samples)
        edits, self.smoothing = equalize.plan(self.model, self.layers, amax, cfg.smooth_alpha, cfg.per_channel,
                                              cfg.smooth_scope)
        if edits:
            self.model = equalize.apply(self.model, edits)
            self._index_layers()
            self._amax.clear()

    def _index_layers(self) -> None:
        """The quantizable layers of ``self.model`` and the activation tensors they read."""
        cfg = self.config
        self.layers, self.skipped = qdq.find_layers(self.model, cfg.ops, cfg.include, cfg.exclude)
        self.by_name = {l.name: l for l in self.layers}
        self.act_matmuls, act_skipped = [], []
        if cfg.activation_matmul and "MatMul" in cfg.ops:
            self.act_matmuls, act_skipped = qdq.find_activation_matmuls(self.model, cfg.include, cfg.exclude)
        self.skipped = [*self.skipped, *act_skipped]
        self.tensors = qdq.activation_tensors(self.model, self.layers, matmuls=self.act_matmuls)

    # -- parameters ---------------------------------------------------------------------------
    def default_bits(self) -> dict[str, int]:
        bits = {}
        for l in self.layers:
            b = self.config.weight_bits
            for pattern, v in self.config.layer_bits.items():
                if fnmatch.fnmatchcase(l.name, pattern):
                    b = int(v)
            bits[l.name] = b
        return bits

    def act_params(self, tensors: list[str]) -> dict[str, qdq.ActQ]:
        if not self.observers and tensors:
            raise RuntimeError("calibrate() first")
        cfg = self.config
        shared = qdq.shared_sources(self.model, tensors)
        out: dict[str, qdq.ActQ] = {}
        for t in tensors:  # graph order: a shared source comes before its users
            if t in shared and shared[t] in out:
                src = out[shared[t]]
                out[t] = qdq.ActQ(src.scale, src.zero_point, src.qtype, src.lo, src.hi, shared[t])
                continue
            lo, hi = self.observers[t].compute_range(cfg.act_bits, cfg.symmetric)
            scale, zp, qt = qparams.activation_qparams(lo, hi, cfg.act_bits, cfg.symmetric)
            out[t] = qdq.ActQ(scale, zp, qt, float(lo), float(hi))
        return out

    def weight_q(self, layer: qdq.Layer, bits: int) -> qdq.WeightQ:
        method = self.config.weight_method(bits)
        key = (layer.name, bits)
        if key not in self._amax:
            w = self._weight(layer)
            axis = layer.weight_axis if self.config.per_channel else None
            amax = mse_weight_amax(w, bits, axis) if method == "mse" else None
            delta = None
            if self.config.bias_correction and layer.correctable:
                q, s, zp, _ = qparams.weight_qparams(w, bits, axis, amax)
                delta = bias_shift(layer, qparams.dequantize(q, s, zp, axis) - w,
                                   self.channel_means.get(layer.act_input))
            self._amax[key] = (amax, delta)
        amax, delta = self._amax[key]
        extra = {"weight_observer": method}
        if delta is not None:
            extra["bias_correction_max_abs"] = float(np.round(np.max(np.abs(delta)), 6))
        return qdq.WeightQ(bits, self.config.per_channel, amax, extra, bias_delta=delta)

    def _weight(self, layer: qdq.Layer) -> np.ndarray:
        init = next(t for t in self.model.graph.initializer if t.name == layer.weight)
        return onnx.numpy_helper.to_array(init).astype(np.float32)

    # -- build ----------------------------------------------------------------------------------
    def build(self, bits: Mapping[str, int] | None = None) -> tuple[onnx.ModelProto, list[dict]]:
        bits = dict(self.default_bits() if bits is None else bits)
        chosen = [l for l in self.layers if bits.get(l.name, FP32) != FP32]
        tensors = qdq.activation_tensors(self.model, chosen, outputs=self.config.output_qdq,
                                         matmuls=self.act_matmuls)
        acts = self.act_params(tensors)
        weights = {l.name: self.weight_q(l, bits[l.name]) for l in chosen}
        model, records = qdq.insert_qdq(self.model, chosen, weights, acts,
                                        quantize_bias=self.config.quantize_bias)
        for r in records:
            a_in, a_out = acts.get(r["activation_input"]), acts.get(r["output"])
            if a_in is not None:
                r["activation_input_range"] = [round(a_in.lo, 6), round(a_in.hi, 6)]
            if a_out is not None:
                r["output_range"] = [round(a_out.lo, 6), round(a_out.hi, 6)]
                if a_out.shared_from:
                    r["output_params_shared_from"] = a_out.shared_from
        return model, records

    def activation_matmul_records(self) -> list[dict]:
        """One record per activation MatMul (both operands quantized): its operand and output
        tensors and their calibrated ranges (call after :meth:`build`'s calibration)."""
        acts = self.act_params(qdq.activation_tensors(self.model, [], matmuls=self.act_matmuls))
        out = []
        for m in self.act_matmuls:
            rec = {"name": m.name, "op": "MatMul", "operands": [m.a, m.b], "output": m.output}
            for key, t in (("a_range", m.a), ("b_range", m.b), ("output_range", m.output)):
                if t in acts:
                    rec[key] = [round(acts[t].lo, 6), round(acts[t].hi, 6)]
            out.append(rec)
        return out

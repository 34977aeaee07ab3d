"""Post-training quantization: the ``quantize`` pass and its parts.

The reference graph is the seam (style #7): observers (:mod:`.observers`) collect statistics
over calibration data (:mod:`.calibrate`), one module holds the parameter math
(:mod:`.qparams`), the insert-QDQ step (:mod:`.qdq`) yields a standard QDQ ONNX model that
onnxruntime runs; backends pattern-match that graph into integer kernels. Mixed precision under
an accuracy budget is :mod:`.mixed`; :class:`.core.Quantizer` ties them together.

Python use without a pipeline::

    from optc.passes.quant import quantize_model
    qdq_model, details = quantize_model(onnx_model, calib={"input": x}, weight_bits=8)
"""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar, Mapping, Optional

import numpy as np
import onnx
import onnx_ir as ir

from optc.errors import UsageError
from optc.pipeline import Pass, PassResult, register_pass

from . import calibrate, integerize, qdq  # integerize: registers the integerize pass
from . import qoperator  # noqa: F401  (registers expand-qoperator)
from . import nbits  # noqa: F401  (registers expand-matmul-nbits)
from . import dynamic_lstm  # noqa: F401  (registers expand-dynamic-lstm)
from .core import FP32, QuantConfig, Quantizer
from .observers import OBSERVERS

__all__ = ["Quantize", "quantize_model", "run_quantizer", "QuantConfig", "Quantizer"]


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def quantize_model(model: onnx.ModelProto, calib: str | Mapping[str, np.ndarray],
                   **options) -> tuple[onnx.ModelProto | None, dict]:
    """Quantize ``model`` (an ONNX proto) to a QDQ model; returns (model or None if nothing
    was quantized, details). ``options``: the keyword arguments of :func:`run_quantizer`
    (``eval_data``, ``max_accuracy_drop``, ``eval_samples`` and :class:`QuantConfig` fields)."""
    out, details, _ = run_quantizer(model, calib, **options)
    return out, details


def run_quantizer(
    model: onnx.ModelProto,
    calib: str | Mapping[str, np.ndarray],
    *,
    eval_data: str | Mapping[str, np.ndarray] | None = None,
    max_accuracy_drop: float | None = None,
    eval_samples: int = 0,
    **config,
) -> tuple[onnx.ModelProto | None, dict, Quantizer | None]:
    """:func:`quantize_model`, also returning the calibrated :class:`Quantizer` (for analysis:
    ``quantizer.build(bits)`` makes other precision choices without calibrating again)."""
    cfg = QuantConfig(**config)
    if qdq.is_quantized(model):
        n = sum(1 for n in model.graph.node if n.op_type in qdq.QDQ_OPS)
        return None, {"already_quantized": True, "qdq_nodes": n,
                      "note": "the model already holds QuantizeLinear/DequantizeLinear; left unchanged"}, None
    try:
        q = Quantizer(model, cfg)
    except ValueError as err:
        raise UsageError(f"quantize: {err}") from None
    details: dict = {"weight_bits": cfg.weight_bits, "activation_bits": cfg.act_bits,
                     "activations": "int8 symmetric (zero point 0)" if cfg.symmetric
                     else "uint8 asymmetric (zero point)",
                     "weights": ("per-channel" if cfg.per_channel else "per-tensor")
                     + " symmetric, narrow range" + (", 4-bit values in int8 containers" if
                                                     cfg.weight_bits == 4 or 4 in cfg.layer_bits.values() else ""),
                     "opset": {"before": q.opset_before, "after": q.opset}}
    if not q.layers and not q.act_matmuls:
        details.update(layers=[], skipped=q.skipped, note="no quantizable layer")
        return None, details, q
    source = calib if isinstance(calib, str) else "arrays"
    data = calibrate.load_samples(calib, q.model, "calibration data")
    details["calibration"] = q.calibrate(data, source)
    bits = q.default_bits()
    if max_accuracy_drop is not None:
        from . import mixed

        if eval_data is None:
            raise UsageError("quantize: max-accuracy-drop needs labelled evaluation data: eval=FILE.npz")
        from optc.accuracy import LABEL_KEYS, find_labels

        arrays = calibrate.load_samples(eval_data, q.model, "evaluation data")
        if isinstance(eval_data, str):
            with np.load(eval_data) as f:
                raw = {k: f[k] for k in f.files}
        else:
            raw = dict(eval_data)
        used = set(arrays) if set(arrays) <= set(raw) else set(raw) - set(LABEL_KEYS)  # one array renamed
        _, labels = find_labels(raw, used, f"quantize: eval={eval_data if isinstance(eval_data, str) else 'arrays'}")
        evaluator = mixed.Evaluator(q.model, arrays, labels, eval_samples)
        bits, record = mixed.search(q, evaluator, max_accuracy_drop)
        record["data"] = eval_data if isinstance(eval_data, str) else "arrays"
        details["mixed_precision"] = record
    if all(b == FP32 for b in bits.values()) and not q.act_matmuls:
        details.update(layers=[], skipped=q.skipped, note="every layer left in float")
        return None, details, q
    out, records = q.build(bits)
    details["layers"] = records
    if cfg.activation_matmul:
        details["activation_matmuls"] = q.activation_matmul_records()
    details["float_layers"] = [l.name for l in q.layers if bits[l.name] == FP32]
    details["skipped"] = q.skipped
    details["qdq_tensors"] = sum(1 for n in out.graph.node if n.op_type == "QuantizeLinear")
    details["weight_bytes"] = {"before": _weight_bytes(q.model), "after": _weight_bytes(out)}
    return out, details, q


@register_pass("quantize")
class Quantize(Pass):
    """Post-training quantization to a QDQ ONNX model (int8/int4 weights, int8 activations).

    Assumes: float32 model with static shapes, BatchNorm already folded (run ``fuse-bn`` or
    ``simplify`` first), calibration samples in ``calib`` (an .npz keyed by input name, samples
    on axis 0). Guarantees: a standard QDQ model (opset >= 13) onnxruntime runs;
    Conv/Gemm/MatMul with constant weights read ``DequantizeLinear(int8 weight)``, their
    activation input and (Relu/Clip-folded) output go through Q -> DQ, biases are int32 with
    scale s_x * s_w (see ``optc.passes.quant.qdq``); with ``activation-matmul``, MatMuls of two
    activations (attention) read both operands through Q -> DQ too. Math: ``optc.passes.quant.qparams``.
    Lossy: optc verifies the artifact against this QDQ model and reports fidelity to the float
    original. A model that already holds QDQ nodes is left unchanged (idempotent).
    """

    lossy: ClassVar[bool] = True
    compression: ClassVar[bool] = True

    calib: Optional[str] = field(default=None, metadata={"doc": "calibration data (.npz, arrays keyed by input name, samples on axis 0; an input without a batch axis: whole values stacked on a new axis 0); required"})
    calib_samples: int = field(default=0, metadata={"doc": "use at most N calibration samples (0: all)"})
    weight_bits: int = field(default=8, metadata={"doc": "weight bits: 8 or 4 (int4 values in int8 containers)"})
    act_bits: int = field(default=8, metadata={"doc": "activation bits (8)"})
    symmetric: bool = field(default=False, metadata={"doc": "int8 activations with zero point 0 (default: uint8 asymmetric)"})
    per_channel: bool = field(default=True, metadata={"doc": "one weight scale per output channel (false: per tensor)"})
    ops: tuple[str, ...] = field(default=qdq.SUPPORTED_OPS, metadata={"doc": "op types to quantize"})
    include: tuple[str, ...] = field(default=(), metadata={"doc": "only layers matching these name patterns (fnmatch)"})
    exclude: tuple[str, ...] = field(default=(), metadata={"doc": "leave layers matching these name patterns in float"})
    observer: str = field(default="minmax", metadata={"doc": "activation ranges: " + "|".join(OBSERVERS)})
    percentile: float = field(default=99.99, metadata={"doc": "percentile for observer=percentile"})
    bins: int = field(default=2048, metadata={"doc": "histogram bins (percentile/entropy/mse observers)"})
    weight_observer: str = field(default="auto", metadata={"doc": "weight clipping: minmax|mse|auto (mse below 8 bits)"})
    layer_bits: Optional[dict[str, int]] = field(default=None, metadata={"doc": "per-layer weight bits NAME:4|8|32 (32: float)"})
    bias_int32: bool = field(default=True, metadata={"doc": "int32 biases (scale s_x*s_w), as integer kernels need"})
    bias_correction: bool = field(default=True, metadata={"doc": "subtract the mean output shift of the weight error from the bias"})
    output_qdq: bool = field(default=True, metadata={"doc": "Q/DQ on every quantized layer's output (false: only where a quantized layer reads it)"})
    max_accuracy_drop: Optional[float] = field(default=None, metadata={"doc": "top-1 budget in points: keep sensitive layers in higher precision (needs eval)"})
    eval: Optional[str] = field(default=None, metadata={"doc": "labelled data (.npz with 'label') for max-accuracy-drop"})
    eval_samples: int = field(default=0, metadata={"doc": "use at most N evaluation samples (0: all)"})
    smooth: bool = field(default=False, metadata={"doc": "equalize layer inputs per channel before calibrating (SmoothQuant/CLE scales folded into the producer; exact in float; scope: smooth-scope); helps depthwise nets with output-qdq=false"})
    smooth_alpha: float = field(default=0.5, metadata={"doc": "SmoothQuant migration strength s=amax_x^a/amax_w^(1-a) (smooth-scope=all; depthwise convs: 1)"})
    smooth_scope: str = field(default="depthwise", metadata={"doc": "layers smooth rescales: depthwise (depthwise convs, full equalization) | all (also SmoothQuant on the others)"})
    activation_matmul: bool = field(default=False, metadata={"doc": "also quantize MatMuls of two activations (attention Q@K^T, softmax@V): Q/DQ on both operands and the output, per tensor (integerize: IntMatMul)"})

    def __post_init__(self) -> None:
        try:
            self._config().check()
        except ValueError as err:
            raise ValueError(str(err)) from None
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ValueError("max-accuracy-drop must be >= 0")

    def _config(self) -> QuantConfig:
        return QuantConfig(weight_bits=self.weight_bits, act_bits=self.act_bits, symmetric=self.symmetric,
                           per_channel=self.per_channel, ops=tuple(self.ops), include=tuple(self.include),
                           exclude=tuple(self.exclude), observer=self.observer, percentile=self.percentile,
                           bins=self.bins, weight_observer=self.weight_observer,
                           layer_bits=dict(self.layer_bits or {}), quantize_bias=self.bias_int32, bias_correction=self.bias_correction, output_qdq=self.output_qdq,
                           calib_samples=self.calib_samples, smooth=self.smooth, smooth_alpha=self.smooth_alpha,
                           smooth_scope=self.smooth_scope, activation_matmul=self.activation_matmul)

    def call(self, model: ir.Model) -> PassResult:
        proto = ir.serde.serialize_model(model)
        if qdq.is_quantized(proto):
            return PassResult(model, False, {"already_quantized": True,
                                             "note": "the model already holds QDQ nodes; left unchanged"})
        if not self.calib:
            raise UsageError("quantize needs calibration data: quantize<calib=FILE.npz> "
                             "(an .npz with arrays keyed by input name, samples on axis 0)")
        if self.max_accuracy_drop is not None and not self.eval:
            raise UsageError("quantize: max-accuracy-drop needs labelled evaluation data: eval=FILE.npz")
        cfg = self._config()
        out, details = quantize_model(
            proto, self.calib, eval_data=self.eval or None, max_accuracy_drop=self.max_accuracy_drop,
            eval_samples=self.eval_samples, **cfg.__dict__)
        from .subgraphs import quantize_with_branches  # layers inside If branches
        out, details = quantize_with_branches(proto, out, self.calib, cfg, details)
        if out is None:
            return PassResult(model, False, details)
        new = ir.serde.deserialize_model(out)
        model.graph = new.graph  # opset imports live on the graph in onnx-ir
        model.ir_version = max(model.ir_version, new.ir_version)
        return PassResult(model, True, details)

"""Where does a quantized model lose accuracy? Per-layer quantization error.

For each quantized layer the QDQ model and the float model run on the same samples with the
layer's output tensor exposed (the QDQ model keeps the name for the dequantized value, see
``optc.passes.quant.qdq``), and the signal-to-quantization-noise ratio is measured:

* ``sqnr_db``: the layer's output in the fully quantized model vs the float model - the error
  accumulated up to and including this layer;
* ``input_sqnr_db``: the same for the layer's (quantized) input, so ``sqnr_drop_db`` =
  input - output is what this layer adds;
* ``isolated_sqnr_db``: the layer's output when only this layer is quantized (its input and
  output Q/DQ and its weights) - the layer's own sensitivity; with labelled data also the
  top-1 drop of the whole model with only this layer quantized (``isolated_drop_points``).

SQNR = 10 log10(sum(ref^2) / sum((ref - x)^2)) over all samples. Lower is worse.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
import onnx

from . import DEFAULT_PIPELINE, frontend, pipeline
from .accuracy import LABEL_KEYS, find_labels, sqnr_db, top1
from .errors import UsageError

__all__ = ["quant_debug"]


def _dequantized_name(qmodel: onnx.ModelProto, tensor: str) -> str:
    """The tensor holding ``tensor``'s dequantized value in the QDQ model."""
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    if tensor in producers and producers[tensor].op_type == "DequantizeLinear":
        return tensor
    q_out = next((n.output[0] for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor), None)
    if q_out is not None:
        dq = next((n.output[0] for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q_out), None)
        if dq:
            return dq
    return tensor


def _finite(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else (None if math.isnan(x) else x)


def quant_debug(
    model: str | os.PathLike,
    calib: str | os.PathLike,
    *,
    eval_data: str | os.PathLike | None = None,
    params: str = "",
    passes: str = DEFAULT_PIPELINE,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    samples: int = 128,
    isolated: bool = True,
) -> dict:
    """Per-layer quantization error of ``model`` quantized with ``quantize<calib=...;params>``
    after the cleanup ``passes``. Samples: the first ``samples`` of ``eval_data`` (labels give
    top-1 figures) or else of ``calib``."""
    import onnx_ir as ir

    from optc.passes.quant import calibrate, run_quantizer
    from optc.passes.quant.mixed import Evaluator

    proto = frontend.load_model(model)
    calib = str(calib)
    shapes = dict(input_shapes or {})
    if not shapes:  # bind dynamic dims from the calibration data, batch 1
        data0 = calibrate.load_samples(calib, proto)
        for vi in frontend.graph_inputs(proto):
            dims = vi.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims) and vi.name in data0:
                shapes[vi.name] = (1, *data0[vi.name].shape[1:])
    bound, _ = frontend.bind_input_shapes(proto, shapes)
    irm, _ = pipeline.run_pipeline(ir.serde.deserialize_model(bound), passes)
    fp32 = ir.serde.serialize_model(irm)

    text = f"quantize<calib={calib}" + (f";{params.strip(';')}" if params.strip() else "") + ">"
    (spec,) = pipeline.parse_pipeline(text)
    qpass = pipeline.instantiate(spec)
    if qpass.max_accuracy_drop is not None and not qpass.eval:
        raise UsageError("max-accuracy-drop needs eval=FILE.npz in --passes-args")
    cfg = qpass._config()
    qmodel, details, q = run_quantizer(fp32, calib, eval_data=qpass.eval, max_accuracy_drop=qpass.max_accuracy_drop,
                                       eval_samples=qpass.eval_samples, **cfg.__dict__)
    if qmodel is None:
        raise UsageError(f"nothing to quantize: {details.get('note', '')}")

    data_path = str(eval_data) if eval_data is not None else calib
    data = calibrate.load_samples(data_path, q.model, "evaluation data" if eval_data else "calibration data")
    with np.load(data_path) as f:
        raw = {k: f[k] for k in f.files}
    used = set(data) if set(data) <= set(raw) else set(raw) - set(LABEL_KEYS)  # one array renamed
    _, labels = find_labels(raw, used, data_path)
    records = details["layers"]
    watch = []
    for r in records:
        watch += [r["activation_input"], r["output"]]
    watch = list(dict.fromkeys(watch))
    qnames = {t: _dequantized_name(qmodel, t) for t in watch}

    def run(m: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
        runner = calibrate.TensorRunner(m, names)
        outs: dict[str, list] = {}
        for feeds in calibrate.iter_batches(data, m, samples):
            for k, v in runner.run(feeds).items():
                outs.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in outs.items()}

    out_names = [o.name for o in fp32.graph.output]
    ref = run(q.model, watch)
    got = run(qmodel, list(qnames.values()))
    n = len(ref[out_names[0]])
    result: dict = {
        "model": str(model), "calib": calib, "data": data_path, "samples": n,
        "pipeline": pipeline.format_pipeline(pipeline.parse_pipeline(passes) + [spec]),
        "outputs": {o: _finite(sqnr_db(ref[o], got[o])) for o in out_names},
        "top1_agreement": float(np.mean(top1(ref[out_names[0]]) == top1(got[out_names[0]]))),
    }
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)[:n]
        result["accuracy"] = {"top1_float": float(np.mean(top1(ref[out_names[0]]) == lab)),
                              "top1_quantized": float(np.mean(top1(got[out_names[0]]) == lab))}
        result["accuracy"]["drop_points"] = round(100 * (result["accuracy"]["top1_float"]
                                                         - result["accuracy"]["top1_quantized"]), 4)
    layers = []
    for r in records:
        s_in = sqnr_db(ref[r["activation_input"]], got[qnames[r["activation_input"]]])
        s_out = sqnr_db(ref[r["output"]], got[qnames[r["output"]]])
        layers.append({"name": r["name"], "op": r["op"], "weight_bits": r["weight_bits"],
                       "output": r["output"], "weight_sqnr_db": r["weight_sqnr_db"],
                       "input_sqnr_db": _finite(s_in), "sqnr_db": _finite(s_out),
                       "sqnr_drop_db": _finite(s_in - s_out) if math.isfinite(s_in) and math.isfinite(s_out) else None})
    if isolated:
        evaluator = Evaluator(q.model, data, labels, samples) if labels is not None else None
        for entry in layers:
            alone, _ = q.build({entry["name"]: entry["weight_bits"]})
            t = entry["output"]
            o = run(alone, [_dequantized_name(alone, t)])
            entry["isolated_sqnr_db"] = _finite(sqnr_db(ref[t], o[_dequantized_name(alone, t)]))
            if evaluator is not None:
                entry["isolated_drop_points"] = evaluator.score(alone)["drop_points"]
        order = sorted(layers, key=lambda e: (e["isolated_sqnr_db"] if e["isolated_sqnr_db"] is not None else math.inf))
        result["most_sensitive"] = [e["name"] for e in order[:5]]
    result["layers"] = layers
    result["float_layers"] = details.get("float_layers", [])
    result["skipped"] = details.get("skipped", [])
    if "mixed_precision" in details:
        result["mixed_precision"] = details["mixed_precision"]
    return result

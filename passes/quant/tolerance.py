"""Verifying an artifact against a QDQ model: exact-up-to-rounding-boundaries.

A backend computes the QDQ graph with its own float summation order (TVM 0.27 lowers Q/DQ to
round/clip around float convolutions). A value that lands within a few ulps of a rounding
boundary of a QuantizeLinear then goes to the neighbouring integer: one quantization step, and
downstream layers carry it on. Measured on ResNet-18 (int8, TVM CPU vs onnxruntime): about 40 %
of the logits differ, each by at most 2 steps of the output quantizer (max error 0.023 for
logits of magnitude 1.4) - far above the default ``atol + rtol * max|ref|`` and far below
anything a wrong lowering produces. So, for graphs that hold QuantizeLinear nodes:

* an output produced by DequantizeLinear (through value-preserving ops) with per-tensor scale
  ``s`` passes when ``max|out - ref| <= max(atol + rtol * max|ref|, STEPS * s)``;
* any other output (e.g. ``output-qdq=false``: the last layer's output stays float) passes
  when the error is within ``max(atol + rtol * max|ref|, FRACTION * max|ref - original|)``:
  no larger than the quantized model's own error against the original model on the same
  inputs. This rule is weaker: flips inside the graph reach such an output unrounded, and on
  ResNet-18 (output-qdq=false) they measured 0.25-0.40 of the quantization error; a broken
  lowering still shows up as errors well beyond it.

Graphs without QuantizeLinear are compared as usual. The verdict says which rule applied.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .qdq import VALUE_PRESERVING

__all__ = ["output_steps", "compare_quantized", "STEPS", "FRACTION"]

STEPS = 4  # quantization steps of the output an artifact may differ by
FRACTION = 1.0  # ... else this fraction of the quantized model's own error vs the original


def output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Graph output -> the per-tensor scale of the DequantizeLinear it comes from (through
    value-preserving ops); outputs with none are left out."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for o in model.graph.output:
        name, hops = o.name, 0
        while name in producers and hops < 16:
            node = producers[name]
            if node.op_type == "DequantizeLinear":
                s = inits.get(node.input[1])
                if s is not None:
                    arr = onnx.numpy_helper.to_array(s)
                    if arr.size == 1:
                        out[o.name] = float(arr.reshape(()))
                break
            if node.op_type not in VALUE_PRESERVING or not node.input:
                break
            name, hops = node.input[0], hops + 1
    return out


def compare_quantized(outputs: list[np.ndarray], refs: list[np.ndarray], names: list[str], atol: float,
                      rtol: float, model: onnx.ModelProto,
                      original_refs: Callable[[], list[np.ndarray]]) -> dict:
    """``optc.verify.compare`` with the tolerance above as each output's floor; same verdict
    format plus ``tolerance_rule`` per output."""
    from optc import verify

    if len(outputs) != len(refs) or not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return verify.compare(outputs, refs, names, atol, rtol)
    steps = output_steps(model)
    originals = None
    floors, rules = {}, {}
    for i, (name, ref) in enumerate(zip(names, refs)):
        if name in steps:
            floors[name] = STEPS * steps[name]
            rules[name] = f"{STEPS} steps of the output quantizer ({STEPS} x {steps[name]:.4g})"
        elif np.asarray(ref).dtype.kind == "f":
            if originals is None:
                originals = original_refs()
            qerr = float(np.abs(np.asarray(ref, np.float64) - np.asarray(originals[i], np.float64)).max(initial=0.0))
            floors[name] = FRACTION * qerr
            rules[name] = f"{FRACTION:g} x the quantized model's max error vs the original ({qerr:.4g})"
        else:
            rules[name] = "exact (integer output)"
    res = verify.compare(outputs, refs, names, atol, rtol, floors=floors)
    for entry, out, ref in zip(res["outputs"], outputs, refs):
        entry["tolerance_rule"] = rules[entry["name"]]
        if "mismatches" not in entry and entry.get("max_abs_error", 0) > 0:
            entry["elements_differing"] = int(np.count_nonzero(np.asarray(out) != np.asarray(ref)))
    res["quantized_graph_rule"] = "outputs of a QDQ graph may differ by rounding-boundary flips; see tolerance_rule"
    return res

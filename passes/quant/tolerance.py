"""Verifying an artifact against a quantized model: rules a wrong artifact cannot pass.

An output of a quantized graph is checked by one of three rules, chosen per output from the
graph (the verdict names the rule in ``tolerance_rule``):

* **exact** - every node the output depends on computes in integers or maps codes exactly:
  optc's integer ops (``ai.optc`` IntConv2d / IntDense / IntGlobalAveragePool, :mod:`.int_ops`), QuantizeLinear,
  DequantizeLinear and value-preserving ops (:data:`.qdq.VALUE_PRESERVING`: reshapes, max
  pooling of codes). The backend's integer kernels equal the numpy reference bit for bit, so
  the artifact must too: 0 difference, every element.

* **quantizer steps** - an output produced by a per-tensor DequantizeLinear (scale ``s``, zero
  point ``z``) through value-preserving ops, with float compute somewhere before it (a float
  Conv of a QDQ graph, a residual Add between integer layers). A backend computes that float
  part in its own summation order, so a value within a few ulps of a rounding boundary of a
  QuantizeLinear lands on the neighbouring code, and later layers carry the flip on (measured
  on ResNet-18 int8, TVM vs onnxruntime: about 40 % of the logits differ, each by at most 2
  steps). The output passes when all three hold:

  1. on the grid: every value is ``(q - z) * s`` for an integer code ``q`` (within 1e-3 of a
     step) - a float result, e.g. an artifact that skipped quantization, is not;
  2. ``max|out - ref| <= STEPS * s``;
  3. ``|mean(out - ref)| <= BIAS_STEPS * s``: flips go both ways, so their mean is near 0; a
     systematic shift (a zero point or bias off by one step) moves every value the same way.

  A swapped channel or wrong weights break (2).

* **fraction of the quantization error** - a float output of a quantized graph not produced
  by DequantizeLinear (``output-qdq=false``: the last layer computes in float on quantized
  inputs). Flips inside the graph reach it unrounded. It passes within
  ``max(atol + rtol * max|ref|, FRACTION * e_q)``, where ``e_q = max|ref - original|`` is the
  quantized model's own error against the float model on the same inputs (on ResNet-18 the
  flips measured 0.25-0.40 of ``e_q``). An artifact that returns the float model's outputs
  differs from the reference by exactly ``e_q > FRACTION * e_q`` and fails, unless ``e_q`` is
  below the plain tolerance - the verdict then says the rule cannot tell the two apart
  (``distinguishes_float_model: false``). Deep graphs carry flips further: in a 6-layer
  BERT-style encoder (LayerNorm output, every dense layer int8) onnxruntime's own run of the
  same QDQ graph (float compute, round half to even) is 0.80 ``e_q`` from optc's integer
  reference (0.144 of 0.179) and TVM's artifact 0.67 ``e_q``. Where an independent run of the
  quantized graph is given (:class:`Baselines` ``alternative``: onnxruntime on the QDQ graph,
  graph optimizations off), the output may also be as far from the reference as that run is,
  ``d_alt``: the floor is ``max(FRACTION * e_q, d_alt)``. An artifact returning the float
  model's outputs still fails while ``d_alt < e_q`` (the verdict says when it is not).

Integer outputs are compared exactly; graphs with no QuantizeLinear are compared as usual
(:func:`optc.verify.compare`).

**Dynamically quantized models** (``DynamicQuantizeLinear``, onnxruntime's
``quantize_dynamic``): the reference computes MatMulInteger/ConvInteger exactly; float
outputs pass within ``max(atol + rtol * max|ref|, FRACTION * e_q)`` where ``e_q`` is the
model's own dynamic-quantization error, ``max|ref - unrounded|`` against the same graph with
the rounding taken out (:func:`.dynamic.unrounded_model`): the fraction rule above, with the
float model made from the quantized one (:func:`compare_dynamic`). Integer outputs stay exact.
Where a flipped code can reach a later quantizer (:func:`.dynamic.carries_flips`) it moves that
quantizer's input and flips more codes: in a com.microsoft ``DynamicQuantizeLSTM`` the hidden
state is quantized again every step, so one flip is carried through every later step and the
largest difference to the reference grows with the sequence (VoiceFilter-Lite, 3 layers x 100
steps: up to 0.48 ``e_q`` on 40 random inputs, onnxruntime itself 0.38 ``e_q`` on one); in a
chain of DynamicQuantizeLinear layers (an EEG U-Net, 25 of them: 1.05 ``e_q`` on 8 random
inputs; moving half the inputs by one float32 rounding step moves the exact reference itself by
0.98 ``e_q``) likewise, while the typical difference stays small. There the rule is on both
(``carried``): the root mean square difference within ``FRACTION`` of the unrounded model's
(``atol`` added), and the largest within ``max(atol + rtol * max|ref|, (1 + FRACTION) * e_q)``;
each may also be ``SENSITIVITY`` times what the exact reference itself does when its float
inputs move by one float32 step (:func:`.dynamic.reference_sensitivity`): where that is as
large as the quantization error (the U-Net: root mean square 0.0086-0.0104 against the
unrounded model's 0.0079; onnxruntime itself is 0.009 from the reference) no output comparison
can tell a float-order difference from a missing rounding, and the verdict says so
(``distinguishes_unrounded_model``: false) instead of refusing every implementation. The
unrounded model itself (a kernel without the activation rounding) fails the first where the
reference is well-conditioned (VoiceFilter-Lite), a wrong scale or gate order both.

**Pre-quantized input models** (a QDQ model from any tool, integerized by optc): the rules
above check the artifact against optc's integer reference (the integerized model). That
reference rounds requantization half up in fixed point, while onnxruntime computes the input
QDQ graph in float and rounds half to even, so it is no ground truth for the original model.
:func:`compare_to_original_qdq` adds the check against onnxruntime on the *original* QDQ
model: an output that model writes through a per-tensor DequantizeLinear passes by the
quantizer-steps rule (on the grid, within ``STEPS`` steps, mean within ``BIAS_STEPS``); an
integer output (codes) within ``STEPS`` codes, mean within ``BIAS_STEPS``; a float output of
a last layer without an output quantizer has no grid and no float model to measure flips
against, so its difference is recorded, not judged. Both verdicts must pass.
A pre-quantized model has no float original, so for the fraction rule (a float output after
float ops, e.g. LayerNorm/Softmax/Sigmoid behind the last quantizer) ``e_q`` is measured
against the same QDQ model with its activation rounding taken out
(:func:`.qdq.unrounded_qdq`: each activation ``DQ(Q(x))`` replaced by ``x`` clipped to the
codes' range): flips move such an output by a fraction of what rounding does to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .qdq import VALUE_PRESERVING

__all__ = ["output_steps", "exact_outputs", "compare_quantized", "Baselines", "compare_to_original_qdq", "compare_dynamic",
           "STEPS", "BIAS_STEPS", "FRACTION"]

STEPS = 4  # quantization steps of the output an artifact may differ by (rule "quantizer steps")
BIAS_STEPS = 0.5  # ... and the most its mean difference may be, in steps
FRACTION = 0.5  # rule "fraction of the quantization error"
SENSITIVITY = 2.0  # chained dynamic quantization: times the exact reference's own one-ulp sensitivity
GRID_TOL = 1e-3  # a value is on the grid when within this many steps of a code

INTEGER_DOMAIN = "ai.optc"
_EXACT = frozenset(("QuantizeLinear", "DequantizeLinear", *VALUE_PRESERVING))


def _dequant_of(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """Graph output -> (scale, zero point) of the per-tensor DequantizeLinear it comes from
    (through value-preserving ops); outputs with none are left out."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for o in model.graph.output:
        name, hops = o.name, 0
        while name in producers and hops < 16:
            node = producers[name]
            if node.op_type == "DequantizeLinear":
                s = inits.get(node.input[1])
                z = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
                if s is not None and s.size == 1 and z is not None and z.size == 1:
                    out[o.name] = (float(s.reshape(())), float(z.reshape(())))
                break
            if node.op_type not in VALUE_PRESERVING or not node.input:
                break
            name, hops = node.input[0], hops + 1
    return out


def output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Graph output -> the per-tensor scale of the DequantizeLinear it comes from (through
    value-preserving ops); outputs with none are left out."""
    return {name: s for name, (s, _) in _dequant_of(model).items()}


def exact_outputs(model: onnx.ModelProto) -> set[str]:
    """Graph outputs whose every ancestor node is an optc integer op, a Q/DQ or a
    value-preserving op, and that depend on at least one integer op (rule "exact")."""
    ok: dict[str, bool] = {}  # tensor -> computed exactly from the graph inputs
    integer: dict[str, bool] = {}  # tensor -> depends on an integer op
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        ins = [i for i in node.input if i]
        node_ok = node.domain == INTEGER_DOMAIN or (node.domain in ("", "ai.onnx") and node.op_type in _EXACT)
        for o in node.output:
            ok[o] = node_ok and all(ok.get(i, True) for i in ins)
            integer[o] = node.domain == INTEGER_DOMAIN or any(integer.get(i, False) for i in ins)
    return {o.name for o in model.graph.output if ok.get(o.name) and integer.get(o.name)}


def _grid_error(out: np.ndarray, scale: float, zero: float) -> float:
    """Largest distance (in steps) of a value of ``out`` from the code grid ``(q - z) * s``,
    less one unit in the last place of the value's own float type: ``(q - z) * s`` rounded to
    float32 lies up to that far from the grid, which for 16-bit codes (|q - z| up to 32768,
    so up to 0.002 steps) exceeds ``GRID_TOL``; for 8-bit codes it is below 3.1e-5 steps."""
    out = np.asarray(out)
    codes = out.astype(np.float64) / scale + zero
    finite = np.isfinite(codes)
    if not finite.all():
        return float("inf")
    ulp = np.spacing(np.abs(out)).astype(np.float64) / scale if out.dtype.kind == "f" else 0.0
    return float(np.maximum(np.abs(codes - np.round(codes)) - ulp, 0.0).max(initial=0.0))


def _grid_or_shift_error(grid: float, bias: float) -> str | None:
    """Why an output judged in quantizer steps fails: off the grid by more than ``GRID_TOL``
    steps, or a mean difference beyond ``BIAS_STEPS``; None where neither."""
    if grid > GRID_TOL:
        return f"values are off the output quantizer's grid by up to {grid:.3g} steps (not quantized?)"
    if abs(bias) > BIAS_STEPS:
        return f"mean difference {bias:+.3g} steps: a systematic shift, not rounding flips"
    return None


@dataclass(frozen=True)
class Baselines:
    """What the fraction rule measures against: ``original`` gives the outputs ``e_q`` is
    measured against, named ``name`` in the verdict (the float model; for a pre-quantized input
    model, the same model without its activation rounding, :func:`.qdq.unrounded_qdq`);
    ``alternative``, if given, the outputs of an independent run of the same quantized graph
    (onnxruntime on the QDQ graph), whose distance to the reference the rule also allows."""

    original: Callable[[], list[np.ndarray]]
    name: str = "the original"
    alternative: Callable[[], list[np.ndarray]] | None = None


def compare_quantized(outputs: list[np.ndarray], refs: list[np.ndarray], names: list[str], atol: float,
                      rtol: float, model: onnx.ModelProto,
                      original_refs: Callable[[], list[np.ndarray]] | Baselines, original: str = "the original") -> dict:
    """``optc.verify.compare`` under the rules above; same verdict format plus
    ``tolerance_rule`` per output (and the grid/bias figures of the steps rule).
    ``original_refs``: a :class:`Baselines`, or just its ``original`` (named by ``original``)."""
    from optc import verify

    base = original_refs if isinstance(original_refs, Baselines) else Baselines(original_refs, original)
    quantized = any(n.op_type == "QuantizeLinear" or n.domain == INTEGER_DOMAIN for n in model.graph.node)
    if len(outputs) != len(refs) or not quantized:
        return verify.compare(outputs, refs, names, atol, rtol)
    exact, dequant = exact_outputs(model), _dequant_of(model)
    originals = None
    floors, rules, extra = {}, {}, {}
    for i, (name, ref) in enumerate(zip(names, refs)):
        if np.asarray(ref).dtype.kind != "f":
            rules[name] = "exact (integer output)"
        elif name in exact:
            rules[name] = "exact: integer ops and exact code maps only (0 difference)"
        elif name in dequant:
            s, z = dequant[name]
            floors[name] = STEPS * s
            rules[name] = (f"quantizer steps: on the output grid (step {s:.4g}), within {STEPS} steps, "
                           f"mean difference within {BIAS_STEPS:g} step")
            extra[name] = (s, z)
        else:
            if originals is None:
                originals = base.original(), base.alternative() if base.alternative else None
            floors[name], rules[name] = _fraction_floor(ref, originals[0][i], originals[1] and originals[1][i],
                                                        base.name)
    res = verify.compare(outputs, refs, names, atol, rtol, floors=floors,
                         exact={n for n in names if rules[n].startswith("exact")})
    for entry, out, ref in zip(res["outputs"], outputs, refs):
        name = entry["name"]
        entry["tolerance_rule"] = rules[name]
        if "error" in entry:
            continue
        if "mismatches" not in entry and entry.get("max_abs_error", 0) > 0:
            entry["elements_differing"] = int(np.count_nonzero(np.asarray(out) != np.asarray(ref)))
        if name in extra:
            s, z = extra[name]
            grid = _grid_error(out, s, z)
            bias = float(np.mean(np.asarray(out, np.float64) - np.asarray(ref, np.float64))) / s
            entry.update(grid_error_steps=grid, mean_difference_steps=bias)
            if err := _grid_or_shift_error(grid, bias):
                entry.update(passed=False, error=err)
        elif name in floors:  # fraction rule: would the float model's outputs pass?
            base = atol + rtol * entry.get("reference_max_abs", 0.0)
            entry["distinguishes_float_model"] = bool(max(base, floors[name]) < floors[name] / FRACTION)
    res["passed"] = all(e["passed"] for e in res["outputs"])
    res["quantized_graph_rule"] = "per-output rules for quantized graphs; see tolerance_rule (optc.passes.quant.tolerance)"
    return res


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(initial=0.0))


def _fraction_floor(ref, original, alternative, name: str) -> tuple[float, str]:
    """(floor, rule text) of the fraction rule for one output: ``FRACTION * e_q``, or the
    alternative run's distance ``d_alt`` where that is larger (module docstring)."""
    qerr = _max_diff(ref, original)
    rule = f"fraction of the quantization error: {FRACTION:g} x the quantized model's max error vs {name} ({qerr:.4g})"
    if alternative is None:
        return FRACTION * qerr, rule
    d_alt = _max_diff(ref, alternative)
    return max(FRACTION * qerr, d_alt), rule + f", or onnxruntime's own distance running the QDQ graph ({d_alt:.4g})"


def compare_to_original_qdq(outputs: list[np.ndarray], refs: list[np.ndarray], names: list[str], atol: float,
                            rtol: float, original: onnx.ModelProto) -> dict:
    """The artifact's ``outputs`` against onnxruntime's ``refs`` on the ``original`` QDQ model
    (pre-quantized input; see the module docstring): per output the quantizer-steps rule, the
    same in codes for integer outputs, or recorded only for a float output with no grid. Same
    verdict format as :func:`compare_quantized`; ``judged`` lists the outputs that were checked."""
    from optc import verify

    if len(outputs) != len(refs):
        return verify.compare(outputs, refs, names, atol, rtol)
    dequant = _dequant_of(original)
    res = verify.compare(outputs, refs, names, atol, rtol,
                         floors={n: STEPS * dequant[n][0] for n in names if n in dequant})
    judged = []
    for entry, out, ref in zip(res["outputs"], outputs, refs):
        name = entry["name"]
        if "shape" in entry and list(np.shape(out)) != entry["shape"]:
            entry["tolerance_rule"] = "shapes differ"
            continue
        ref = np.asarray(ref)
        diff = np.asarray(out, np.float64) - ref.astype(np.float64)
        if ref.dtype.kind in "iu":
            steps = float(np.abs(diff).max(initial=0.0))
            bias = float(diff.mean()) if diff.size else 0.0
            entry.update(tolerance_rule=f"quantizer steps (codes): within {STEPS} codes, mean difference within "
                                        f"{BIAS_STEPS:g} code", mean_difference_steps=bias,
                         passed=bool(steps <= STEPS and abs(bias) <= BIAS_STEPS))
            entry.pop("mismatches", None)
            entry["elements_differing"] = int(np.count_nonzero(diff))
            if steps > STEPS:
                entry["error"] = f"codes differ by up to {steps:g} (more than {STEPS})"
            elif abs(bias) > BIAS_STEPS:
                entry["error"] = f"mean difference {bias:+.3g} codes: a systematic shift, not rounding flips"
            judged.append(name)
        elif name in dequant:
            s, z = dequant[name]
            grid = _grid_error(out, s, z)
            bias = float(diff.mean()) / s if diff.size else 0.0
            entry.update(tolerance_rule=f"quantizer steps: on the output grid (step {s:.4g}), within {STEPS} steps, "
                                        f"mean difference within {BIAS_STEPS:g} step",
                         grid_error_steps=grid, mean_difference_steps=bias,
                         elements_differing=int(np.count_nonzero(diff)))
            if "error" in entry:
                pass
            elif err := _grid_or_shift_error(grid, bias):
                entry.update(passed=False, error=err)
            elif not entry["passed"]:
                entry["error"] = f"differs by {entry['max_abs_error'] / s:.3g} steps (more than {STEPS})"
            judged.append(name)
        else:
            entry.update(tolerance_rule="recorded only: a float output with no output quantizer in the original "
                                        "model (no grid, no float model to bound rounding flips by)", passed=True)
            entry.pop("tolerance", None)
    res["passed"] = all(e["passed"] for e in res["outputs"])
    res["judged"] = judged
    return res


def compare_dynamic(outputs: list[np.ndarray], refs: list[np.ndarray], names: list[str], atol: float, rtol: float,
                    unrounded_refs: Callable[[], list[np.ndarray]], carried: bool = False,
                    sensitivity: Callable[[], list[tuple[float, float]]] | None = None) -> dict:
    """A dynamically quantized model's artifact against its exact reference ``refs``: float
    outputs by the fraction rule with ``e_q = max|ref - unrounded|`` (``unrounded_refs``: the
    outputs of :func:`.dynamic.unrounded_model` on the same inputs), integer outputs exactly;
    ``carried`` (flips reach later quantizers, :func:`.dynamic.carries_flips`: chained
    DynamicQuantizeLinear, a DynamicQuantizeLSTM): the root-mean-square and the widened maximum
    rule of the module docstring, each also allowing :data:`SENSITIVITY` times the exact
    reference's own change when its inputs move by one float32 step (``sensitivity``: per
    output, (max, root mean square) of that change, :func:`.dynamic.reference_sensitivity`).
    Same verdict format as :func:`compare_quantized`."""
    from optc import verify

    if len(outputs) != len(refs):
        return verify.compare(outputs, refs, names, atol, rtol)
    floats = [i for i, r in enumerate(refs) if np.asarray(r).dtype.kind == "f"]
    unrounded = unrounded_refs() if floats else []
    sens = sensitivity() if carried and floats and sensitivity is not None else [(0.0, 0.0)] * len(refs)
    floors, rules, rms = {}, {}, {}
    what = "DynamicQuantizeLinear / DynamicQuantizeLSTM"
    for i, name in enumerate(names):
        if i not in floats:
            rules[name] = "exact (integer output)"
            continue
        gap = np.asarray(refs[i], np.float64) - np.asarray(unrounded[i], np.float64)
        qerr = float(np.abs(gap).max(initial=0.0))
        if carried:
            rms[name] = (_rms(gap), i, sens[i][1])
            floors[name] = max((1 + FRACTION) * qerr, SENSITIVITY * sens[i][0])
            rules[name] = (f"chained dynamic quantization: root mean square difference within atol + the larger of "
                           f"{FRACTION:g} x that of the same graph without {what} rounding ({rms[name][0]:.4g}) and "
                           f"{SENSITIVITY:g} x the reference's own change when its inputs move by one float32 step "
                           f"({sens[i][1]:.4g}); max within the larger of (1 + {FRACTION:g}) x its max distance "
                           f"({qerr:.4g}), {SENSITIVITY:g} x that change's max ({sens[i][0]:.4g}) and atol + rtol * max|ref|")
            continue
        floors[name] = FRACTION * qerr
        rules[name] = (f"fraction of the dynamic quantization error: {FRACTION:g} x the max distance between the "
                       f"exact reference and the same graph without {what} rounding ({qerr:.4g})")
    res = verify.compare(outputs, refs, names, atol, rtol, floors=floors,
                         exact={n for n in names if rules[n].startswith("exact")})
    for entry in res["outputs"]:
        name = entry["name"]
        entry["tolerance_rule"] = rules[name]
        if name in rms:
            if "max_abs_error" in entry:  # shapes and types agree: add the rms condition
                gap_rms, i, sens_rms = rms[name]
                err_rms = _rms(np.asarray(outputs[i], np.float64) - np.asarray(refs[i], np.float64))
                entry.update(rms_error=err_rms, rms_tolerance=atol + max(FRACTION * gap_rms, SENSITIVITY * sens_rms))
                entry["passed"] = bool(entry["passed"] and err_rms <= entry["rms_tolerance"])
                entry["distinguishes_unrounded_model"] = bool(entry["rms_tolerance"] < gap_rms)
        elif name in floors:
            base = atol + rtol * entry.get("reference_max_abs", 0.0)
            floor = floors[name]
            entry["distinguishes_unrounded_model"] = bool(max(base, floor) < floor / FRACTION)
    res["passed"] = bool(res["passed"] and all(e["passed"] for e in res["outputs"]))
    res["quantized_graph_rule"] = ("dynamic quantization: see tolerance_rule "
                                   "(optc.passes.quant.tolerance.compare_dynamic)")
    return res


def _rms(a: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.mean(a * a))) if a.size else 0.0

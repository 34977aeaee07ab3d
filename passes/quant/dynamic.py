"""Dynamically quantized models (onnxruntime's ``quantize_dynamic``): what their own quantization
error is, so that verification can tell rounding flips from a wrong artifact.

``quantize_dynamic`` writes, per MatMul / Conv with a constant weight::

    x -> DynamicQuantizeLinear -> (x_q uint8, s_x, z_x)      (per-tensor, from min/max at run time)
    MatMulInteger(x_q, w_q, z_x, z_w) | ConvInteger(...)     (exact int32)
    -> Cast(float) -> Mul(s_x * s_w) [-> Add(bias)]

optc lowers these ops as they are (``optc.backends.tvm.int8``: MatMulInteger on the int8 dense
kernel, ConvInteger as an int32 convolution), and verification's reference computes them
exactly (``optc.verify.SPEC_REFERENCE_OPS``). The float ops around them (LayerNorm, Softmax,
GELU, ...) run in the backend's own float order, so a value within float rounding of a .5
boundary of a DynamicQuantizeLinear lands on the neighbouring code, and later layers carry the
flip on: the same situation as QuantizeLinear in a static QDQ graph
(:mod:`optc.passes.quant.tolerance`, rule "fraction of the quantization error").

:func:`unrounded_model` is the measure of that error: the same graph with the rounding of every
DynamicQuantizeLinear taken out (``x / s_x + z_x`` in float instead of the codes) and the
integer ops computed in float on those values, i.e. ``x @ DQ(w)``: the float model the dynamic
quantization approximates. :func:`.tolerance.compare_dynamic` allows an artifact half of the
distance between the two (a wrong zero point, scale or weight moves outputs by far more).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from optc.onnx_utils import FreshNames

__all__ = ["DYNAMIC_OPS", "has_dynamic_quantization", "carries_flips", "reference_sensitivity", "unrounded_model",
           "unrounded_outputs"]

DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear"})
_INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}


def has_dynamic_quantization(model: onnx.ModelProto) -> bool:
    """Whether the main graph quantizes activations at run time (DynamicQuantizeLinear, or
    com.microsoft DynamicQuantizeLSTM: its GEMMs' operands, ``optc.passes.quant.dynamic_lstm``)."""
    from .dynamic_lstm import dynamic_lstm_nodes

    return any(n.op_type in DYNAMIC_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node) or bool(
        dynamic_lstm_nodes(model))


def carries_flips(model: onnx.ModelProto) -> bool:
    """Whether a code flipped by float rounding at one run-time quantizer can reach another: a
    DynamicQuantizeLinear downstream of another one (a chain of quantized layers), or a
    com.microsoft DynamicQuantizeLSTM (its hidden state is quantized again every step). Such a
    flip moves the next quantizer's input, and with it more codes, so the largest difference
    an exact kernel may show is no longer bounded by half of the model's own quantization
    error (:func:`.tolerance.compare_dynamic`, ``carried``): an EEG U-Net of 25 chained
    DynamicQuantizeLinear moves its exact reference by 0.040 when half its inputs move by one
    float32 rounding step, as far as the whole unrounded model is from it (0.041)."""
    from .dynamic_lstm import dynamic_lstm_nodes

    if dynamic_lstm_nodes(model):
        return True
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    # one walk from every quantizer's outputs: a graph has no cycles, so a quantizer it reaches
    # is downstream of another one
    is_quantizer = lambda n: n.op_type in DYNAMIC_OPS and n.domain in ("", "ai.onnx")  # noqa: E731
    todo = [t for n in model.graph.node if is_quantizer(n) for t in n.output]
    seen: set[int] = set()
    while todo:
        for n in consumers.get(todo.pop(), []):
            if id(n) not in seen:
                seen.add(id(n))
                if is_quantizer(n):
                    return True
                todo.extend(n.output)
    return False


def reference_sensitivity(model: onnx.ModelProto, feeds: dict, runs: int = 2, seed: int = 0) -> list[tuple[float, float]]:
    """How far the exact reference's outputs move when its float inputs move by one float32
    step: per output, (max abs, root mean square) of the change over ``runs`` perturbations
    of ``feeds`` (each element of each float input one step up or down, at random). A
    well-conditioned model barely moves; a deep chain of run-time quantizers moves by about
    its whole quantization error (:func:`carries_flips`)."""
    from optc import verify

    rng = np.random.default_rng(seed)
    sets = [dict(feeds)]
    for _ in range(runs):
        sets.append({k: _one_step(np.asarray(v), rng) for k, v in feeds.items()})
    outs = verify.reference_runs(model, sets)
    result = []
    for j, base in enumerate(outs[0]):
        if np.asarray(base).dtype.kind != "f":
            result.append((0.0, 0.0))
            continue
        moves = [np.asarray(o[j], np.float64) - np.asarray(base, np.float64) for o in outs[1:]]
        result.append((max(float(np.abs(d).max(initial=0.0)) for d in moves),
                       max(float(np.sqrt(np.mean(d * d))) if d.size else 0.0 for d in moves)))
    return result


def _one_step(v: np.ndarray, rng) -> np.ndarray:
    """``v`` with each element one step of its own float type up or down (at random); other
    dtypes as they are."""
    if v.dtype.kind != "f":
        return v
    toward = np.where(rng.random(v.shape) < 0.5, np.inf, -np.inf).astype(v.dtype)  # a float64 target: float64 steps
    return np.nextafter(v, toward)


def _float(nodes: list, fresh: FreshNames, name: str) -> str:
    out = fresh(f"{name}__f")
    nodes.append(helper.make_node("Cast", [name], [out], to=TensorProto.FLOAT))
    return out


def _centered(nodes: list, fresh: FreshNames, value: str, zp: str, per_channel_rank: int = 0) -> str:
    """``value - float(zp)``; a per-channel ``zp`` [M] reshaped to [M, 1, ...] for a conv weight."""
    if not zp:
        return value
    z = _float(nodes, fresh, zp)
    if per_channel_rank:
        shape = fresh(f"{zp}__shape")
        nodes.append(helper.make_node("Constant", [], [shape], value=onnx.numpy_helper.from_array(
            np.array([-1] + [1] * (per_channel_rank - 1), np.int64))))
        z2 = fresh(f"{zp}__r")
        nodes.append(helper.make_node("Reshape", [z, shape], [z2]))
        z = z2
    out = fresh(f"{value}__c")
    nodes.append(helper.make_node("Sub", [value, z], [out]))
    return out


def unrounded_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a copy) without the rounding of its DynamicQuantizeLinear nodes: each code
    tensor ``x_q`` is replaced, where MatMulInteger / ConvInteger read it, by the float
    ``x / s_x + z_x``, and those ops by MatMul / Conv in float on ``(a - z_a)`` and
    ``(w - z_w)`` writing the same output name (now float: the Cast after it is an identity).
    Run it with onnx's ReferenceEvaluator (:func:`unrounded_outputs`)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    fresh = FreshNames(model)
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    unrounded: dict[str, str] = {}
    nodes: list = []
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        if n.op_type == "DynamicQuantizeLinear":
            nodes.append(n)
            q, s, z = n.output
            d = fresh(f"{q}__div")
            nodes.append(helper.make_node("Div", [n.input[0], s], [d]))
            unrounded[q] = fresh(f"{q}__unrounded")
            nodes.append(helper.make_node("Add", [d, _float(nodes, fresh, z)], [unrounded[q]]))
        elif n.op_type in _INTEGER_OPS:
            a, b, za, zb = (list(n.input) + ["", "", ""])[:4]
            af = _centered(nodes, fresh, unrounded.get(a) or _float(nodes, fresh, a), za)
            conv = n.op_type == "ConvInteger"
            bf = _centered(nodes, fresh, _float(nodes, fresh, b), zb, per_channel_rank=ranks.get(b, 4) if conv else 0)
            f = helper.make_node(_INTEGER_OPS[n.op_type], [af, bf], list(n.output), name=n.name)
            f.attribute.extend(n.attribute)
            nodes.append(f)
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


def unrounded_outputs(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    """Outputs of :func:`unrounded_model` on ``inputs`` (onnx ReferenceEvaluator; a
    DynamicQuantizeLSTM without its activation rounding too)."""
    from optc.passes.optc_ops import reference_evaluator

    ev = reference_evaluator(unrounded_model(model), dynamic_lstm_rounding=False)
    return [np.asarray(o) for o in ev.run(None, dict(inputs))]

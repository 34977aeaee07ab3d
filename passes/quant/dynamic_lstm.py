"""com.microsoft ``DynamicQuantizeLSTM`` (onnxruntime's ``quantize_dynamic`` of an LSTM) -> a
standard LSTM on the dequantized weights: the ``expand-dynamic-lstm`` pass, and what verifying
it against the quantized original takes.

``DynamicQuantizeLSTM(X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale,
W_zero_point, R_scale, R_zero_point)`` is ONNX's LSTM (same attributes, gates ``iofc``) with
int8/uint8 weights stored *transposed*: ``W [D, input_size, 4H]``, ``R [D, H, 4H]``; the
scales and zero points are per direction (``[D]``) or per output column (``[D, 4H]``).
onnxruntime (``contrib_ops/cpu/quantization/dynamic_quantize_lstm.cc``, the shared
``UniDirectionalLstm`` and ``rnn_helpers.cc`` ``ComputeGemm``) quantizes each GEMM's float
operand at run time, per tensor, to uint8 from its min/max (range widened to hold 0, scale
``(max - min) / 255``, zero point rounded half to even, as ``DynamicQuantizeLinear``): once for
the input projection (all ``seq * batch`` rows of X of a direction), once per step for the
recurrent one (the ``batch`` rows of ``H_{t-1}``), then multiplies in int32 and scales by
``s_a * s_w``.

The pass writes ``LSTM(X, DQ(W)^T, DQ(R)^T, B, ...)`` with ``DQ(W)[d] = (W[d] - z[d]) * s[d]``
(per column for ``[D, 4H]`` scales) computed at build time, so optc's float recurrent kernel
runs it. That is the model the dynamic quantization approximates, without the activation
rounding: the pass is lossy, and the artifact is checked twice (``optc.stages.verify_artifact``):

* exactly as any float model against the optimized model (onnxruntime runs the standard LSTM);
* against the original's spec arithmetic (:func:`spec_outputs`: onnx's ReferenceEvaluator with
  :class:`DynamicQuantizeLSTMRef`, the rounding above in numpy, exact integer products) by
  :func:`compare_to_original`. The artifact computes the unrounded model ``U``; the original
  computes the rounded model ``Q``; ``e_q = max|Q - U|`` is measured by running the same numpy
  implementation with and without the rounding. The artifact passes when
  ``max|out - Q| <= atol + rtol * max|Q| + (1 + FRACTION) * e_q``: ``|out - U|`` is float
  rounding (the first check), ``|U - Q| = e_q``, and flips of the rounding by another float
  order are bounded by ``FRACTION * e_q`` as in :func:`.tolerance.compare_dynamic`. A wrong
  rewrite (a transposition, a zero point, a scale, a gate order) moves outputs by far more.

The reference is the spec arithmetic, not onnxruntime, for the reason of
``optc.verify.SPEC_REFERENCE_OPS``: onnxruntime's u8 x s8 GEMM saturates int16 pair sums on
x86 CPUs without AVX-512 VNNI (both operands here are full range). onnxruntime's own
per-column path uses the first weight zero point only (``quantize_dynamic`` writes symmetric
weights, all 0); the spec reference uses each column's.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from optc.onnx_utils import attrs, graph_reads
from optc.pipeline import Pass, PassResult, register_pass

__all__ = ["ExpandDynamicLSTM", "expand_dynamic_lstm", "dynamic_lstm_nodes", "dequantize_lstm_weight",
           "DynamicQuantizeLSTMRef", "spec_outputs", "compare_to_original", "unsupported_attrs"]

MS = "com.microsoft"
OP = "DynamicQuantizeLSTM"


def _is_dql(node: onnx.NodeProto) -> bool:
    return node.domain == MS and node.op_type == OP


def dynamic_lstm_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the DynamicQuantizeLSTM nodes of ``model``'s main graph."""
    return [n.name or n.output[0] for n in model.graph.node if _is_dql(n)]


def dequantize_lstm_weight(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """``q [D, K, 4H]`` (int8/uint8, DynamicQuantizeLSTM's layout) -> the float32 weight in
    ONNX LSTM's layout ``[D, 4H, K]``; ``scale``/``zp`` of shape ``[D]`` (per direction) or
    ``[D, 4H]`` (per output column)."""
    d = q.shape[0]
    s = np.asarray(scale, np.float32).reshape(d, 1, -1)  # [D, 1, 1] or [D, 1, 4H]
    z = np.zeros_like(s, dtype=np.int64) if zp is None else np.asarray(zp, np.int64).reshape(d, 1, -1)
    w = (q.astype(np.int64) - z).astype(np.float32) * s
    return np.ascontiguousarray(np.transpose(w, (0, 2, 1)))


def _const(inits: dict, name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _rewrite(node: onnx.NodeProto, inits: dict, taken: set) -> tuple[onnx.NodeProto, list] | str:
    """The LSTM node and its new initializers for one DynamicQuantizeLSTM, or why not."""
    ins = list(node.input) + [""] * (12 - len(node.input))
    if why := _unsupported_node(node, ins):
        return why
    arrays = [_const(inits, ins[i]) if ins[i] else None for i in (1, 2, 8, 9, 10, 11)]
    w, r, ws, wz, rs, rz = arrays
    for label, a, i in (("W", w, 1), ("R", r, 2), ("W_scale", ws, 8), ("R_scale", rs, 10)):
        if a is None:
            return f"{label} ({ins[i]!r}) is not a constant"
    if (ins[9] and wz is None) or (ins[11] and rz is None):
        return "a zero point is not a constant"
    base, new = node.name or node.output[0], []
    names = []
    for label, q, s, z in (("W", w, ws, wz), ("R", r, rs, rz)):
        name = f"{base}_{label}_dequantized"
        while name in taken:
            name += "_"
        taken.add(name)
        new.append(numpy_helper.from_array(dequantize_lstm_weight(q, s, z), name))
        names.append(name)
    inputs = [ins[0], *names, *ins[3:8]]
    while inputs and not inputs[-1]:
        inputs.pop()
    lstm = helper.make_node("LSTM", inputs, list(node.output), name=node.name)
    lstm.attribute.extend(node.attribute)
    return lstm, new


def _unsupported_node(node: onnx.NodeProto, ins: list[str]) -> str | None:
    """Why a node is left as it is (and refused by name): forms the spec reference
    (:func:`_run_lstm`) cannot check, so a rewrite of them could not be verified."""
    if why := _unsupported(None, None, attrs(node)):
        return f"{why} (the reference that verifies the rewrite covers the defaults only)"
    if ins[4]:
        return "sequence_lens (the reference that verifies the rewrite covers full sequences only)"
    return None


def expand_dynamic_lstm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy) with every DynamicQuantizeLSTM of its main graph replaced by an LSTM on
    the dequantized weights (:func:`dequantize_lstm_weight`); details: ``expanded`` (count)
    and ``skipped`` (node -> why). The quantized weights nothing reads any more are dropped."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    nodes, skipped, expanded = [], {}, 0
    for n in g.node:
        out = _rewrite(n, inits, taken) if _is_dql(n) else None
        if isinstance(out, str):
            skipped[n.name or n.output[0]] = f"{OP}: {out}"
        if not isinstance(out, tuple):
            nodes.append(n)
            continue
        nodes.append(out[0])
        g.initializer.extend(out[1])
        expanded += 1
    del g.node[:]
    g.node.extend(nodes)
    read = graph_reads(g)  # If branches reading an initializer too
    kept = [t for t in g.initializer if t.name in read or t.name not in inits]
    del g.initializer[:]
    g.initializer.extend(kept)
    if expanded and not any(n.domain == MS for n in g.node):
        kept_ops = [op for op in model.opset_import if op.domain != MS]
        del model.opset_import[:]
        model.opset_import.extend(kept_ops)
    return model, {"expanded": expanded, "skipped": skipped}


@register_pass("expand-dynamic-lstm")
class ExpandDynamicLSTM(Pass):
    """com.microsoft DynamicQuantizeLSTM (quantize_dynamic's LSTM) -> LSTM on the dequantized weights.

    Assumes W, R, their scales and zero points are constants (a node with one that is not is
    kept, with the reason in the details). Guarantees: each node becomes ONNX's ``LSTM`` with the
    same inputs, outputs and attributes, and ``W' = transpose((W - z_W) * s_W, (0, 2, 1))``
    (likewise R): the int8 weights are exact in float32, so the result is the model the dynamic
    quantization approximates without its per-call activation rounding (lossy: verification
    measures that rounding, ``optc.passes.quant.dynamic_lstm``). Running it again finds nothing.
    """

    lossy: ClassVar[bool] = True

    def call(self, model: ir.Model) -> PassResult:
        proto = ir.serde.serialize_model(model)
        if not dynamic_lstm_nodes(proto):
            return PassResult(model, False, {"expanded": 0, "skipped": {}})
        out, details = expand_dynamic_lstm(proto)
        if not details["expanded"]:
            return PassResult(model, False, details)
        new = ir.serde.deserialize_model(out)
        model.graph = new.graph  # its opset imports too (com.microsoft dropped where unused)
        return PassResult(model, True, details)


# ----------------------------------------------------------------------------- spec reference
def _quantized(a: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """``a`` as onnxruntime quantizes a GEMM operand at run time (``GetQuantizationParameter``):
    uint8 codes minus the zero point (int64) and the scale."""
    a = np.asarray(a, np.float32)
    lo, hi = np.float32(min(float(a.min(initial=0.0)), 0.0)), np.float32(max(float(a.max(initial=0.0)), 0.0))
    s = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zp = np.clip(np.rint(np.float32(0) - lo / s), 0, 255)
    q = np.clip(np.rint(a / s) + zp, 0, 255)
    return (q - zp).astype(np.int64), s


def _gemm(a: np.ndarray, w: tuple[np.ndarray, np.ndarray], rounding: bool) -> np.ndarray:
    """``a [M, K] @ W`` with ``w = (codes - zp [K, 4H] (integers), scale [1 or 4H] float32)``
    (unrounded: or ``(dequantized weight, None)``): the quantized GEMM (exact integer products
    and sums, scaled by ``s_a * s_w``) or, without ``rounding``, the same product in float64 on
    ``a`` itself. The integer sums run in float64 (BLAS): exact, as every partial sum (below
    255 * 255 * K) is far inside its 53 bits."""
    codes, scale = w
    if not rounding:  # scale None: ``codes`` are the dequantized weights already
        weight = codes if scale is None else codes * scale.astype(np.float64)
        return (np.asarray(a, np.float64) @ weight).astype(np.float32)
    qa, sa = _quantized(a)
    acc = qa.astype(np.float64) @ np.asarray(codes, np.float64)
    return (acc.astype(np.float32) * (sa * scale)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _direction(x, w, r, b, h, c, p, rounding: bool):
    """One direction over ``x [T, N, K]``: the outputs ``[T, N, H]``, last h and c."""
    hidden = h.shape[-1]
    t_len, batch = x.shape[:2]
    if not rounding:  # the dequantized weights once, not per step
        w, r = ((codes * scale.astype(np.float64), None) for codes, scale in (w, r))
    xw = _gemm(x.reshape(t_len * batch, -1), w, rounding).reshape(t_len, batch, 4 * hidden)
    bias = b[: 4 * hidden] + b[4 * hidden:]
    pi, po, pf = np.split(p, 3)
    ys = []
    for t in range(t_len):
        g = xw[t] + _gemm(h, r, rounding) + bias
        i, o, f, z = np.split(g, 4, axis=-1)
        i, f = _sigmoid(i + pi * c), _sigmoid(f + pf * c)
        c = f * c + i * np.tanh(z)
        h = (_sigmoid(o + po * c) * np.tanh(c)).astype(np.float32)
        ys.append(h)
    return np.stack(ys), h, c


def _weights(q, scale, zp, d: int) -> tuple[np.ndarray, np.ndarray]:
    z = 0 if zp is None else np.asarray(zp, np.int64).reshape(q.shape[0], -1)[d]
    # codes - zp as float64: exact integers, and :func:`_gemm` multiplies them through BLAS
    return (q[d].astype(np.int64) - z).astype(np.float64), np.asarray(scale, np.float32).reshape(q.shape[0], -1)[d]


class DynamicQuantizeLSTMRef:
    """Factory of onnx ReferenceEvaluator ops for com.microsoft DynamicQuantizeLSTM (see the
    module docstring); :meth:`op` with ``rounding=False`` gives the unrounded model.
    Default activations, no clip, ``input_forget=0`` and full sequences only: other nodes raise
    NotImplementedError (the comparison then records instead of judging)."""

    @staticmethod
    def op(rounding: bool):
        from onnx.reference.op_run import OpRun

        class DynamicQuantizeLSTM(OpRun):
            op_domain = MS

            def _run(self, *inputs, **attrs):  # X, W, R, B, sequence_lens, h0, c0, P, scales, zero points
                return _run_lstm(list(inputs) + [None] * (12 - len(inputs)), attrs, rounding)

        return DynamicQuantizeLSTM


# LSTM's default gate activations (f, g, h), per direction
DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")


def _custom_activations(acts) -> bool:
    """Whether an ``activations`` attribute asks for other than the defaults: converters (madmom's,
    tf2onnx) often write ``[Sigmoid, Tanh, Tanh]`` (per direction) explicitly."""
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in acts or ()]
    return len(names) % 3 != 0 or any(n.lower() != DEFAULT_ACTIVATIONS[i % 3] for i, n in enumerate(names))


def _unsupported(x: np.ndarray, seq, attrs: dict) -> str | None:
    if (_custom_activations(attrs.get("activations")) or attrs.get("clip") or attrs.get("input_forget")
            or attrs.get("layout")):
        return "activations / clip / input_forget / layout attributes"
    if seq is not None and x is not None and np.any(np.asarray(seq) != x.shape[0]):
        return "sequence_lens shorter than the sequence"
    return None


def unsupported_attrs(attrs: dict) -> str | None:
    """Which attributes of a DynamicQuantizeLSTM node the spec reference does not cover
    (activations other than the defaults, clip, input_forget, layout), or None."""
    return _unsupported(None, None, attrs)


def _run_lstm(ins: list, attrs: dict, rounding: bool) -> tuple[np.ndarray, ...]:
    """The node's outputs; BLAS on one thread: each step is a GEMV of a few rows, which a
    second BLAS thread slows down (3-6x on a loaded 2-core machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _run_lstm_steps(ins, attrs, rounding)


def _run_lstm_steps(ins: list, attrs: dict, rounding: bool) -> tuple[np.ndarray, ...]:
    x, w, r, b, seq, h0, c0, p, ws, wz, rs, rz = ins
    if why := _unsupported(x, seq, attrs):
        raise NotImplementedError(f"{OP} reference: {why}")
    hidden, direction = int(attrs["hidden_size"]), attrs.get("direction") or "forward"
    if isinstance(direction, bytes):
        direction = direction.decode()
    dirs = 2 if direction == "bidirectional" else 1
    batch = x.shape[1]
    zeros = np.zeros((dirs, batch, hidden), np.float32)
    h0, c0 = (zeros if h0 is None else h0), (zeros if c0 is None else c0)
    b = np.zeros((dirs, 8 * hidden), np.float32) if b is None else b
    p = np.zeros((dirs, 3 * hidden), np.float32) if p is None else p
    ys, hs, cs = [], [], []
    for d in range(dirs):
        back = direction == "reverse" or d == 1
        xd = x[::-1] if back else x
        y, h, c = _direction(np.asarray(xd, np.float32), _weights(w, ws, wz, d), _weights(r, rs, rz, d), b[d],
                             h0[d], c0[d], p[d], rounding)
        ys.append(y[::-1] if back else y)
        hs.append(h)
        cs.append(c)
    return np.stack(ys, 1).astype(np.float32), np.stack(hs).astype(np.float32), np.stack(cs).astype(np.float32)


def spec_outputs(model: onnx.ModelProto, inputs: dict, rounding: bool = True) -> list[np.ndarray]:
    """Outputs of ``model`` by onnx's ReferenceEvaluator with optc's numpy ops and
    DynamicQuantizeLSTM computed as specified above (``rounding=False``: without the run-time
    activation rounding, i.e. the model ``expand-dynamic-lstm`` writes)."""
    from optc.passes.optc_ops import reference_evaluator

    ev = reference_evaluator(model, dynamic_lstm_rounding=rounding)
    return [np.asarray(o) for o in ev.run(None, dict(inputs))]


def compare_to_original(outputs: list[np.ndarray], names: list[str], atol: float, rtol: float,
                        rounded: Callable[[], list[np.ndarray]], unrounded: Callable[[], list[np.ndarray]]) -> dict:
    """The artifact's ``outputs`` against the original DynamicQuantizeLSTM model's spec
    arithmetic (``rounded()``, :func:`spec_outputs`) within ``atol + rtol * max|ref| + (1 +
    FRACTION) * e_q``, where ``e_q = max|rounded - unrounded|`` per output (``unrounded()``: the
    same without the activation rounding; module docstring); integer outputs exactly. Same
    verdict format as ``optc.verify.compare`` plus ``tolerance_rule``; where the reference cannot
    run the node (NotImplementedError) the verdict fails (``not_judged`` says why)."""
    from optc import verify

    from .tolerance import FRACTION

    try:
        rounded, unrounded = rounded(), unrounded()
    except NotImplementedError as err:  # expand-dynamic-lstm leaves such nodes alone: not reached
        return {"passed": False, "judged": [], "outputs": [], "not_judged": str(err)}
    floors, rules = {}, {}
    for name, q, u in zip(names, rounded, unrounded):
        if np.asarray(q).dtype.kind != "f":
            rules[name] = "exact (integer output)"
            continue
        eq = float(np.abs(np.asarray(q, np.float64) - np.asarray(u, np.float64)).max(initial=0.0))
        floors[name] = atol + rtol * float(np.abs(q).max(initial=0.0)) + (1 + FRACTION) * eq
        rules[name] = (f"dynamic LSTM quantization: within atol + rtol * max|ref| + (1 + {FRACTION:g}) x e_q = "
                       f"{floors[name]:.4g} of the rounded spec reference, e_q = {eq:.4g} its max distance "
                       "from the unrounded one")
    res = verify.compare(outputs, rounded, names, atol, rtol, floors=floors,
                         exact={n for n in names if rules.get(n, "").startswith("exact")})
    for entry in res["outputs"]:
        entry["tolerance_rule"] = rules.get(entry["name"], "")
    res["judged"] = list(names)
    res["reference"] = ("onnx ReferenceEvaluator, DynamicQuantizeLSTM as onnxruntime computes it (run-time uint8 "
                        "activations, exact integer products; optc.passes.quant.dynamic_lstm)")
    return res

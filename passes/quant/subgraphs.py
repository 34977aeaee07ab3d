"""``quantize`` inside ``If`` branches: each branch quantized as a model of its own, calibrated
on the values it reads from the enclosing graph.

The quantizer (:mod:`.core`, :mod:`.qdq`, :mod:`.calibrate`) works on a model's main graph:
its calibration runs onnxruntime with the layers' tensors as extra graph outputs, and a value
computed inside a subgraph cannot be one. A model whose layers all sit in the branches of an
``If`` (Silero VAD: one If on the sample rate around the whole network) was left in float.

:func:`quantize_branches` handles every ``If`` of the main graph whose branches hold layers:

1. **record** - onnxruntime runs the model over the calibration feeds with the If's condition
   and every outer-scope value the branches read as extra outputs (types from shape inference);
2. **branch model** - each branch becomes a model: its outer reads are graph inputs (shapes of
   the recorded values), except outer constants, which become initializers; its nodes and
   outputs are the branch's;
3. **quantize** - that model is quantized by the same function and options as the main graph
   (``run``), calibrated on the recorded values of the feeds that *took* the branch (as whole
   values stacked on a new axis 0, :func:`.calibrate.load_samples`), and its own Ifs in turn
   (recursion, bounded by the nesting depth);
4. **put back** - the quantized nodes and their new initializers (quantized weights, scales,
   zero points) replace the branch's; names read from the outer scope stay outer references.

The result is a standard QDQ model: the quantized branches compute exactly what the branch
models compute, with the same inputs. :func:`integerize_branches` (the ``integerize`` pass's
hook) does the same for ``integerize``: each branch as a model whose outer reads are inputs
typed and shaped by shape inference on the enclosing model, its QDQ layers turned into
``ai.optc`` integer ops (which the TVM backend lowers inside the lifted branch functions, and
verification's reference runs there too: ``optc.verify.all_nodes``). Limits (each recorded in the details with the reason):
a branch no calibration feed took stays float (no data for its ranges); Loop/Scan bodies are
not quantized (``unroll-loops`` turns static ones into main-graph nodes first); a main opset
below 13 (per-channel DequantizeLinear) is not raised here.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import helper

from optc.onnx_utils import graph_reads, infer_shapes, subgraphs

__all__ = ["quantize_branches", "quantize_with_branches", "integerize_branches", "outer_reads",
           "branch_model"]

MAX_DEPTH = 4
# (model, calibration arrays) -> (quantized model or None, details): the main graph's quantizer
Quantize = Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], tuple[onnx.ModelProto | None, dict]]


def _defined(graph: onnx.GraphProto) -> set[str]:
    """Names defined in ``graph`` or any of its subgraphs (inputs, initializers, node outputs)."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        names |= {o for o in n.output if o}
        for g in subgraphs(n):
            names |= _defined(g)
    return names


def outer_reads(graph: onnx.GraphProto) -> list[str]:
    """The outer-scope names ``graph`` (a branch) reads, sorted."""
    return sorted(graph_reads(graph) - _defined(graph) - {""})


def _branches(node: onnx.NodeProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}


def _has_layers(graph: onnx.GraphProto, ops: tuple[str, ...]) -> bool:
    return any(n.op_type in ops or any(_has_layers(g, ops) for g in _branches(n).values()) for n in graph.node)


def branch_model(model: onnx.ModelProto, graph: onnx.GraphProto, recorded: Mapping[str, np.ndarray],
                 consts: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """``graph`` as a model: outer constants as initializers, the other outer reads as inputs
    shaped like their ``recorded`` values."""
    reads = outer_reads(graph)
    inputs = [helper.make_tensor_value_info(r, helper.np_dtype_to_tensor_dtype(recorded[r].dtype),
                                            list(recorded[r].shape)) for r in reads if r not in consts]
    inits = [consts[r] for r in reads if r in consts] + list(graph.initializer)
    g = helper.make_graph(list(graph.node), graph.name or "branch", inputs, list(graph.output), inits)
    out = helper.make_model(g, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def _record(model: onnx.ModelProto, node: onnx.NodeProto, data: Mapping[str, np.ndarray], limit: int
            ) -> tuple[list[dict], list[bool]] | str:
    """The values of the branches' outer reads and the condition on every calibration feed,
    or why they cannot be recorded."""
    import onnxruntime as ort

    from .calibrate import iter_batches

    consts = {t.name for t in model.graph.initializer}
    reads = sorted({r for g in _branches(node).values() for r in outer_reads(g)} - consts)
    inferred = infer_shapes(model, fallback=False)
    types = {vi.name: vi.type for vi in ([*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
                                         if inferred is not None else [])}
    missing = [r for r in [node.input[0], *reads] if r not in types]
    if missing:
        return f"no inferred type for {', '.join(missing[:3])}"
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in probe.graph.output}
    for r in dict.fromkeys([node.input[0], *reads]):
        if r not in present:
            probe.graph.output.append(helper.make_value_info(r, types[r]))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values, conds = [], []
    for feed in iter_batches(data, model, limit):
        out = dict(zip(names, sess.run(None, {i.name: feed[i.name] for i in model.graph.input if i.name in feed})))
        values.append({r: out[r] for r in reads})
        conds.append(bool(np.asarray(out[node.input[0]]).reshape(-1)[0]))
    return values, conds


def _stack(feeds: list[dict]) -> dict[str, np.ndarray] | str:
    """Recorded values stacked on a new axis 0 (one whole value per feed), or why not."""
    out = {}
    for name in feeds[0]:
        shapes = {np.shape(f[name]) for f in feeds}
        if len(shapes) > 1:
            return f"{name!r} has different shapes over the calibration feeds ({sorted(shapes)[:2]})"
        out[name] = np.stack([np.asarray(f[name]) for f in feeds])
    return out


def _put_back(graph: onnx.GraphProto, quantized: onnx.ModelProto, outer: set[str], prefix: str) -> None:
    """Replace ``graph``'s nodes and initializers by the quantized branch model's (outer names
    stay outer references). Names the quantizer added get ``prefix`` (unique per branch): each
    branch is quantized as a model of its own, so both branches of an If reading the same outer
    ``h`` would otherwise both define ``h__q``, and ONNX names are single-assignment across the
    whole model, subgraphs included."""
    q = quantized.graph
    before = _defined(graph) | {o.name for o in graph.output}
    added = ({o for n in q.node for o in n.output if o} | {t.name for t in q.initializer}) - before - outer
    rename = {name: prefix + name for name in added}
    del graph.node[:]
    graph.node.extend(q.node)
    kept = [t for t in q.initializer if t.name not in outer]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    _rename(graph, rename)


def _rename(graph: onnx.GraphProto, rename: Mapping[str, str]) -> None:
    """Apply ``rename`` to ``graph``'s initializers and node inputs/outputs, and to the reads
    of its subgraphs (outer references)."""
    if not rename:
        return
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for n in graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
        for g in subgraphs(n):
            _rename(g, {k: v for k, v in rename.items() if k not in _defined(g)})


def _quantize_branch(model, graph, recorded: list[dict], run: Quantize, depth: int, prefix: str) -> dict:
    """Quantize one branch in place from its recorded feeds; its details (or ``skipped``).
    ``prefix``: for the names the quantizer adds (:func:`_put_back`)."""
    if not recorded:
        return {"skipped": "no calibration feed took this branch (its activation ranges are unknown)"}
    data = _stack(recorded)
    if isinstance(data, str):
        return {"skipped": data}
    consts = {t.name: t for t in model.graph.initializer}
    sub = branch_model(model, graph, {k: v[0] for k, v in data.items()}, consts)
    quantized, details = run(sub, data)
    base = quantized if quantized is not None else sub
    base, nested = quantize_branches(base, data, run, depth + 1)
    if quantized is None and not nested.get("branches"):
        return details
    if nested.get("branches"):
        details["branches"] = nested["branches"]
    _put_back(graph, base, set(consts) | {i.name for i in sub.graph.input}, prefix)
    return details


def quantize_branches(model: onnx.ModelProto, data: Mapping[str, np.ndarray], run: Quantize, depth: int = 0,
                      limit: int = 0, ops: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
                      ) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy) with the layers inside the branches of its main graph's Ifs quantized
    by ``run`` (module docstring); details: ``branches`` (``"If/then_branch"`` -> that
    branch's quantize details, or ``skipped`` with the reason)."""
    details: dict = {}
    ifs = [n for n in model.graph.node if n.op_type == "If" and any(_has_layers(g, ops) for g in
                                                                    _branches(n).values())]
    if not ifs:
        return model, details
    if depth >= MAX_DEPTH:
        return model, {"branches": {"*": {"skipped": f"If nested deeper than {MAX_DEPTH}"}}}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return model, {"branches": {"*": {"skipped": f"opset {opset} < 13 (per-channel DequantizeLinear)"}}}
    at = [i for i, n in enumerate(model.graph.node) if any(n is m for m in ifs)]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    branches: dict[str, dict] = {}
    for node in [model.graph.node[i] for i in at]:
        name = node.name or node.output[0]
        rec = _record(model, node, data, limit)
        if isinstance(rec, str):
            branches[name] = {"skipped": rec}
            continue
        values, conds = rec
        for key, graph in _branches(node).items():
            taken = [v for v, c in zip(values, conds) if c == (key == "then_branch")]
            branches[f"{name}/{key}"] = _quantize_branch(model, graph, taken, run, depth, f"{node.output[0]}.{key}.")
    details["branches"] = branches
    read = graph_reads(model.graph)  # float weights the branches read no longer
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, details


def quantize_with_branches(original: onnx.ModelProto, quantized: onnx.ModelProto | None, calib, config,
                           details: dict) -> tuple[onnx.ModelProto | None, dict]:
    """The ``quantize`` pass's hook: ``quantized`` (or ``original`` where the main graph had
    nothing to quantize) with its If branches quantized by :func:`quantize_branches` with the
    same options (``config``: a :class:`.core.QuantConfig`); None where nothing was quantized.
    The details gain ``branches``."""
    from . import calibrate, quantize_model

    base = quantized if quantized is not None else original
    if not any(n.op_type == "If" for n in base.graph.node):
        return quantized, details
    data = calibrate.load_samples(calib, base, "calibration data")

    def run(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]):
        return quantize_model(model, arrays, **config.__dict__)

    out, sub = quantize_branches(base, data, run, limit=config.calib_samples, ops=tuple(config.ops))
    if not sub:
        return quantized, details
    details = {**details, **sub}
    done = any("layers" in d and d["layers"] for d in _flat(sub["branches"]))
    return (out if done else quantized), details


def _flat(branches: dict) -> list[dict]:
    out = []
    for d in branches.values():
        out.append(d)
        out.extend(_flat(d.get("branches", {})))
    return out


# ----------------------------------------------------------------------------- integerize
def integerize_branches(model: onnx.ModelProto, details: dict,
                        run: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, dict]], depth: int = 0
                        ) -> tuple[onnx.ModelProto, dict]:
    """The ``integerize`` pass's hook: ``model`` with the QDQ layers inside its Ifs' branches
    integerized by ``run`` (``integerize_model``), each branch as a model of its own whose
    outer reads are inputs typed and shaped by shape inference on ``model``; the details gain
    ``branches`` (``"If/then_branch"`` -> that branch's details, or ``skipped`` with why)."""
    ifs = [i for i, n in enumerate(model.graph.node) if n.op_type == "If"]
    if not ifs or depth >= MAX_DEPTH:
        return model, details
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = infer_shapes(model, fallback=False)
    types = {vi.name: vi for vi in ([*inferred.graph.input, *inferred.graph.value_info]
                                    if inferred is not None else [])}
    consts = {t.name: t for t in model.graph.initializer}
    branches: dict[str, dict] = {}
    for i in ifs:
        node = model.graph.node[i]
        for key, graph in _branches(node).items():
            label = f"{node.name or node.output[0]}/{key}"
            reads = [r for r in outer_reads(graph) if r not in consts]
            if missing := [r for r in reads if r not in types]:
                branches[label] = {"skipped": f"no inferred type for {', '.join(missing[:3])}"}
                continue
            sub = _typed_branch_model(model, graph, [types[r] for r in reads], consts)
            out, det = run(sub)
            out, det = integerize_branches(out, det, run, depth + 1)
            if det.get("layers") or det.get("branches"):
                _put_back(graph, out, set(consts) | set(reads), f"{node.output[0]}.{key}.")
                _add_opsets(model, out)
            branches[label] = det
    if not any(d.get("layers") or d.get("branches") for d in branches.values()):
        return model, ({**details, "branches_left": branches} if branches else details)
    read = graph_reads(model.graph)
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, {**details, "branches": branches}


def _typed_branch_model(model: onnx.ModelProto, graph: onnx.GraphProto, inputs: list, consts: Mapping
                        ) -> onnx.ModelProto:
    reads = set(outer_reads(graph))
    inits = [t for name, t in consts.items() if name in reads] + list(graph.initializer)
    g = helper.make_graph(list(graph.node), graph.name or "branch", list(inputs), list(graph.output), inits)
    out = helper.make_model(g, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def _add_opsets(model: onnx.ModelProto, other: onnx.ModelProto) -> None:
    """Opset imports of ``other`` (``ai.optc``) that ``model`` lacks."""
    have = {o.domain for o in model.opset_import}
    for o in other.opset_import:
        if o.domain not in have:
            model.opset_import.append(o)

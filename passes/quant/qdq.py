"""Find quantizable layers and insert QuantizeLinear/DequantizeLinear (QDQ) nodes.

The result is a standard QDQ ONNX model (opset >= 13) that onnxruntime runs as is, and the
seam between the graph side and integer backends. For every quantized layer L (Conv, Gemm,
MatMul with a constant weight) the graph reads::

    x_q  = QuantizeLinear(x, s_x, zp_x)              # uint8 (asymmetric) or int8 (symmetric)
    x'   = DequantizeLinear(x_q, s_x, zp_x)
    w'   = DequantizeLinear(w_q, s_w, 0, axis)        # w_q: int8 initializer (int4 values in int8)
    b'   = DequantizeLinear(b_q, s_x * s_w, 0, 0)     # b_q: int32 initializer (Conv, Gemm)
    y    = L(x', w', b')  [-> Relu | Clip]            # activation folded into the layer
    y_q  = QuantizeLinear(y, s_y, zp_y)
    y'   = DequantizeLinear(y_q, s_y, zp_y)           # consumers read y'

so an integer backend matches ``DQ(x_q) -> L(DQ(w_q), DQ(b_q)) [-> Relu] -> Q`` and computes
``acc = sum((x_q - zp_x) * w_q) + b_q`` in int32, then requantizes with
``s_x * s_w / s_y`` (adding zp_y, clamping; a folded Relu is the clamp at zp_y).
With ``output-qdq=false`` the output pair is left out unless a quantized layer reads the
tensor: the pattern is then ``DQ(x_q) -> L(DQ(w_q), DQ(b_q))`` with a float result
(``y = s_x * s_w * acc``), one rounding fewer per layer.

With ``activation-matmul=true`` a MatMul whose two operands are both activations (attention's
``Q @ K^T`` and ``softmax(.) @ V``: :func:`find_activation_matmuls`) also gets a Q/DQ pair on
each operand and on its output, per tensor from the same observers::

    y_q = QuantizeLinear(MatMul(DQ(a_q; s_a, zp_a), DQ(b_q; s_b, zp_b)), s_y, zp_y)

which ``integerize`` computes as ``IntMatMul``: ``sum (a_q - zp_a)(b_q - zp_b)`` in int32,
requantized with ``s_a * s_b / s_y``.

Naming: a quantized tensor ``t`` keeps its name for the dequantized value (so the same name
holds "t as the quantized model sees it" in both models - quant-debug compares them); the
producer now writes ``t__fp32``, QuantizeLinear writes ``t__q``; parameters are
``t__scale`` / ``t__zero_point``. Graph inputs cannot be renamed: their consumers read
``t__dq``. Weights become ``w__q`` (+ ``w__scale``, ``w__zero_point``) read through ``w__dq``.

One Q/DQ pair per tensor, shared by all its consumers. Tensors produced by value-preserving
ops (MaxPool, Reshape, Flatten, Transpose, ...) from a quantized tensor reuse its parameters,
so re-quantizing them is exact.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.onnx_utils import FreshNames, attr, constants, graph_reads, infer_shapes

from . import qparams

__all__ = ["Layer", "ActMatMul", "find_layers", "find_activation_matmuls", "lift_constant_weights", "activation_tensors", "insert_qdq", "is_quantized",
           "SUPPORTED_OPS", "ActQ", "WeightQ"]

SUPPORTED_OPS = ("Conv", "Gemm", "MatMul")
FUSABLE_ACTIVATIONS = ("Relu", "Clip")
VALUE_PRESERVING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                    "Identity", "SpaceToDepth", "DepthToSpace")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Layer:
    """A quantizable node: where its activation, weight and bias come from."""

    name: str  # node name (or its first output when the node has none)
    op_type: str
    node_index: int
    act_input: str
    weight: str
    weight_axis: int  # the output-channel axis of the weight (per-channel scales)
    bias: str | None
    output: str  # the tensor that gets the output Q/DQ (after a folded activation)
    fused_activation: str | None = None
    bias_ok: bool = True  # False: keep the bias float (e.g. Gemm alpha/beta != 1)
    correctable: bool = True  # the bias may be corrected (or added) for the weight error


@dataclass(frozen=True)
class ActMatMul:
    """A MatMul whose two operands are activations (no constant input): attention's
    ``Q @ K^T`` and ``softmax(.) @ V``. Its operands ``a``, ``b`` and its ``output`` get Q/DQ
    pairs (``quantize<activation-matmul=true>``)."""

    name: str
    a: str
    b: str
    output: str


@dataclass(frozen=True)
class ActQ:
    """Per-tensor activation parameters."""

    scale: np.float32
    zero_point: np.generic
    qtype: qparams.QType
    lo: float = 0.0
    hi: float = 0.0
    shared_from: str | None = None


@dataclass
class WeightQ:
    """How one layer's weight is quantized."""

    bits: int
    per_channel: bool = True
    amax: np.ndarray | None = None  # clipping (None: max|w|)
    extra: dict = field(default_factory=dict)
    bias_delta: np.ndarray | None = None  # subtracted from the bias (bias correction)


def is_quantized(model: onnx.ModelProto) -> bool:
    """True when the graph already holds QDQ nodes (the pass then leaves it alone)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            if name:
                out.setdefault(name, []).append(i)
    return out


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


def _float_tensors(model: onnx.ModelProto) -> set[str] | None:
    """Names of tensors known to be float32 (via shape inference); None if it fails."""
    inferred = infer_shapes(model, fallback=False)
    if inferred is None:
        return None
    g = inferred.graph
    return {vi.name for vi in [*g.input, *g.output, *g.value_info]
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT}


def lift_constant_weights(model: onnx.ModelProto, ops=SUPPORTED_OPS) -> tuple[onnx.ModelProto, int]:
    """Turn ``Constant`` nodes that feed the weight or bias of a Conv/Gemm/MatMul into
    initializers (exporters and onnxscript rewrites such as fuse-bn emit weights as Constant
    nodes). Same values, same names; returns (model, how many were lifted)."""
    graph = model.graph
    wanted = {name for n in graph.node if n.op_type in ops for name in list(n.input)[1:3] if name}
    lift = [n for n in graph.node if n.op_type == "Constant" and n.output[0] in wanted
            and len(n.attribute) == 1 and n.attribute[0].name == "value"]
    if not lift:
        return model, 0
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = []
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] in wanted and len(n.attribute) == 1 \
                and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            graph.initializer.append(t)
        else:
            keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)
    return model, len(lift)


def layer_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _match(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def check_patterns(model: onnx.ModelProto, ops=SUPPORTED_OPS, **patterns) -> None:
    """ValueError naming every layer-name pattern (``include=[...]``, ``exclude=[...]``,
    ``layer_bits=[...]``) that matches no layer of the ``ops`` types, and listing the layer
    names there are: a pattern that matches nothing would silently quantize what it was meant
    to keep (or the reverse)."""
    names = [layer_name(n) for n in model.graph.node
             if n.op_type in ops and n.domain in ("", "ai.onnx")]
    bad = [f"{what.replace('_', '-')} pattern {p!r}" for what, pats in patterns.items() for p in pats
           if not any(_match(n, p) for n in names)]
    if bad:
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
        raise ValueError(f"{'; '.join(bad)}: match{'es' if len(bad) == 1 else ''} no layer; the "
                         f"{'/'.join(ops)} layers are: {shown or 'none'} (the names `optc inspect` "
                         "and `optc quant-debug` show; fnmatch patterns, '*' also matches '/')")


def find_layers(model: onnx.ModelProto, ops=SUPPORTED_OPS, include=(), exclude=()
                ) -> tuple[list[Layer], list[dict]]:
    """Quantizable layers in graph order, and the candidates skipped with the reason why.

    ``include``/``exclude`` are fnmatch patterns on layer names (node name, else its first
    output); an empty ``include`` means every layer of the ``ops`` types.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    const_names = set(constants(graph))
    graph_outputs = {o.name for o in graph.output}
    consumers = _consumers(graph)
    floats = _float_tensors(model)
    layers, skipped = [], []
    for i, node in enumerate(graph.node):
        if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = layer_name(node)

        def skip(reason: str) -> None:
            skipped.append({"name": name, "op": node.op_type, "reason": reason})

        if node.op_type not in ops:
            continue
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            skip("not matched by include")
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            skip("excluded")
            continue
        x = node.input[0]
        w = node.input[1] if len(node.input) > 1 else ""
        if x in inits:
            skip("first input is a constant")
            continue
        if w not in inits:
            skip("weight is not an initializer (already quantized, or computed)")
            continue
        wt = inits[w]
        if wt.data_type != TensorProto.FLOAT:
            skip(f"weight is {TensorProto.DataType.Name(wt.data_type)}, not FLOAT")
            continue
        if floats is not None and x not in floats:
            skip("activation input is not known to be float32")
            continue
        rank = len(wt.dims)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias_ok = bias is not None and bias in inits and inits[bias].data_type == TensorProto.FLOAT
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            if attr(node, "transA", 0):
                skip("Gemm with transA=1")
                continue
            axis = 0 if attr(node, "transB", 0) else 1
            if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
                bias_ok = False
            if bias_ok:
                n_out = wt.dims[axis]
                bias_ok = [d for d in inits[bias].dims if d != 1] in ([], [n_out]) and \
                    int(np.prod(inits[bias].dims)) in (1, n_out)
        else:  # MatMul: x @ W, W [..., K, N]
            if rank < 2:
                skip("MatMul weight of rank < 2")
                continue
            axis = rank - 1
        # output tensor: fold a following Relu / Clip (constant bounds) into the layer
        out, act = node.output[0], None
        users = consumers.get(out, [])
        if out not in graph_outputs and len(users) == 1:
            nxt = graph.node[users[0]]
            if nxt.op_type in FUSABLE_ACTIVATIONS and nxt.input[0] == out and \
                    all(s in const_names for s in list(nxt.input[1:]) if s):  # bounds: initializers or Constant nodes
                out, act = nxt.output[0], nxt.op_type
        correctable = node.op_type == "Conv" or (
            node.op_type == "Gemm" and attr(node, "alpha", 1.0) == 1.0 and attr(node, "beta", 1.0) == 1.0
            and (bias is None or bias_ok))
        layers.append(Layer(name, node.op_type, i, x, w, axis, bias, out, act, bias_ok, correctable))
    return layers, skipped


def find_activation_matmuls(model: onnx.ModelProto, include=(), exclude=()) -> tuple[list[ActMatMul], list[dict]]:
    """MatMuls whose two operands are float32 activations (neither a constant nor a Constant
    node's output), in graph order, and those left out with the reason; ``include``/``exclude``
    as for :func:`find_layers`."""
    graph = model.graph
    consts = set(constants(graph))
    floats = _float_tensors(model)
    found, skipped = [], []
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        a, b = node.input
        if a in consts or b in consts:
            continue  # a weight layer (find_layers) or a constant product
        name = layer_name(node)
        reason = None
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            reason = "not matched by include"
        elif any(fnmatch.fnmatchcase(name, p) for p in exclude):
            reason = "excluded"
        elif floats is not None and (a not in floats or b not in floats):
            reason = "an operand is not known to be float32"
        if reason:
            skipped.append({"name": name, "op": "MatMul", "reason": reason})
        else:
            found.append(ActMatMul(name, a, b, node.output[0]))
    return found, skipped


def activation_tensors(model: onnx.ModelProto, layers: list[Layer], outputs: bool = True,
                       matmuls: tuple[ActMatMul, ...] | list[ActMatMul] = ()) -> list[str]:
    """The activation tensors that get a Q/DQ pair: layer inputs and (folded) outputs (only
    the inputs with ``outputs=False``), both operands of each activation MatMul of ``matmuls``
    and its output (with ``outputs``), in graph order (graph inputs first)."""
    wanted = {l.act_input for l in layers} | ({l.output for l in layers} if outputs else set())
    wanted |= {t for m in matmuls for t in (m.a, m.b)} | ({m.output for m in matmuls} if outputs else set())
    order = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    return [t for t in order if t in wanted]


def shared_sources(model: onnx.ModelProto, tensors: list[str]) -> dict[str, str]:
    """tensor -> the quantized tensor whose parameters it reuses (value-preserving producer)."""
    graph = model.graph
    producers = _producers(graph)
    chosen = set(tensors)
    out: dict[str, str] = {}
    for t in tensors:
        src, seen = t, 0
        while src in producers and seen < 16:
            node = graph.node[producers[src]]
            if node.op_type not in VALUE_PRESERVING or not node.input:
                break
            src = node.input[0]
            seen += 1
            if src in chosen:
                out[t] = out.get(src, src)
                break
    return out


def insert_qdq(model: onnx.ModelProto, layers: list[Layer], weights: dict[str, WeightQ],
               acts: dict[str, ActQ], *, quantize_bias: bool = True) -> tuple[onnx.ModelProto, list[dict]]:
    """A new model with ``layers`` quantized (weights per ``weights[layer.name]``) and a Q/DQ
    pair on every tensor of ``acts``. Returns (model, per-layer records)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    names = FreshNames(model)
    inits = {t.name: t for t in graph.initializer}
    input_names = {i.name for i in graph.input}
    new_inits: list[TensorProto] = []
    before: dict[int, list[onnx.NodeProto]] = {}  # insert these nodes before node index
    after: dict[int, list[onnx.NodeProto]] = {}   # ... or after
    producers = _producers(graph)
    records = []

    def add_init(array: np.ndarray, base: str) -> str:
        name = names(base)
        new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    # activations: one Q/DQ pair per tensor
    for t, a in acts.items():
        scale = add_init(np.float32(a.scale), f"{t}__scale")
        zp = add_init(a.zero_point, f"{t}__zero_point")
        if t in input_names:
            q, dq = names(f"{t}__q"), names(f"{t}__dq")
            for n in graph.node:
                for k, name in enumerate(n.input):
                    if name == t:
                        n.input[k] = dq
            nodes = [helper.make_node("QuantizeLinear", [t, scale, zp], [q], name=names(f"{t}/QuantizeLinear")),
                     helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=names(f"{t}/DequantizeLinear"))]
            before.setdefault(0, []).extend(nodes)
        else:
            pi = producers[t]
            node = graph.node[pi]
            raw, q = names(f"{t}__fp32"), names(f"{t}__q")
            for k, name in enumerate(node.output):
                if name == t:
                    node.output[k] = raw
            nodes = [helper.make_node("QuantizeLinear", [raw, scale, zp], [q], name=names(f"{t}/QuantizeLinear")),
                     helper.make_node("DequantizeLinear", [q, scale, zp], [t], name=names(f"{t}/DequantizeLinear"))]
            after.setdefault(pi, []).extend(nodes)

    dq_cache: dict[tuple, str] = {}
    for layer in layers:
        wq = weights[layer.name]
        node = graph.node[layer.node_index]
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        axis = layer.weight_axis if wq.per_channel else None
        key = (layer.weight, wq.bits, axis, None if wq.amax is None else np.asarray(wq.amax).tobytes())
        q, s, zp, qt = qparams.weight_qparams(w, wq.bits, axis, wq.amax)
        if key not in dq_cache:
            qn = add_init(q, f"{layer.weight}__q")
            sn = add_init(s, f"{layer.weight}__scale")
            zn = add_init(zp, f"{layer.weight}__zero_point")
            out = names(f"{layer.weight}__dq")
            attrs = {"axis": axis} if axis is not None else {}
            before.setdefault(layer.node_index, []).append(
                helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=names(f"{layer.weight}/DequantizeLinear"), **attrs))
            dq_cache[key] = out
        node.input[1] = dq_cache[key]
        err = qparams.fake_quantize(w, s, zp, qt, axis) - w
        rec = {"name": layer.name, "op": layer.op_type, "weight_bits": wq.bits,
               "per_channel": axis is not None, "weight_sqnr_db": _sqnr(w, err),
               "activation_input": layer.act_input, "output": layer.output,
               "fused_activation": layer.fused_activation, "bias": "none"}
        rec.update(wq.extra)
        bias_label = layer.bias or f"{layer.weight}__bias"  # names of the int32 bias
        if wq.bias_delta is not None and layer.correctable:
            # bias correction: b' = b - E[(W_q - W) x]; a layer without bias gets one
            delta = np.asarray(wq.bias_delta, np.float32)
            if layer.bias is None:
                base = np.zeros(delta.shape, np.float32)
                layer = dataclasses.replace(layer, bias=names(f"{layer.weight}__bias"), bias_ok=True)
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = layer.bias
            else:
                base = numpy_helper.to_array(inits[layer.bias]).astype(np.float32)
            new_b = (base.reshape(-1) - delta).reshape(base.shape if base.size == delta.size else delta.shape)
            corrected = names(f"{layer.bias}__corrected")
            inits[corrected] = numpy_helper.from_array(new_b.astype(np.float32), corrected)
            new_inits.append(inits[corrected])
            node.input[2] = corrected
            layer = dataclasses.replace(layer, bias=corrected)
            rec["bias_corrected"] = True
        if layer.bias:
            rec["bias"] = "float"
            x_q = acts.get(layer.act_input)
            if quantize_bias and layer.bias_ok and x_q is not None:
                b = numpy_helper.to_array(inits[layer.bias]).astype(np.float32).reshape(-1)
                sw = s if axis is not None else np.full(1, s, np.float32)
                if b.size != sw.size and sw.size == 1:
                    sw = np.full(b.size, sw[0], np.float32)
                if b.size == sw.size:
                    bq, bs, fits = qparams.bias_qparams(b, x_q.scale, sw)
                    if fits:
                        bqn = add_init(bq, f"{bias_label}__q")
                        bsn = add_init(bs, f"{bias_label}__scale")
                        bzn = add_init(np.zeros(bs.shape, np.int32), f"{bias_label}__zero_point")
                        bout = names(f"{bias_label}__dq")
                        before.setdefault(layer.node_index, []).append(
                            helper.make_node("DequantizeLinear", [bqn, bsn, bzn], [bout], axis=0,
                                             name=names(f"{bias_label}/DequantizeLinear")))
                        node.input[2] = bout
                        rec["bias"] = "int32"
                    else:
                        rec["bias"] = "float (int32 would overflow)"
        records.append(rec)

    new_nodes = []
    for i, n in enumerate(graph.node):
        new_nodes.extend(before.get(i, []))
        new_nodes.append(n)
        new_nodes.extend(after.get(i, []))
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    # drop float initializers nothing reads any more (the replaced weights and biases); a
    # subgraph (If branch) may read one from the outer scope: graph_reads sees those too
    used = graph_reads(graph)
    keep = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if dropped.intersection(input_names):  # old-style models list initializers as inputs
        kept_inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(kept_inputs)
    # value_info of renamed tensors is still right (the dequantized tensor has the same type)
    return model, records


def _sqnr(w: np.ndarray, err: np.ndarray) -> float:
    noise = float(np.sum(np.asarray(err, np.float64) ** 2))
    sig = float(np.sum(np.asarray(w, np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return round(10 * np.log10(sig / noise), 2) if sig > 0 else float("-inf")


def unrounded_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a QDQ model, copied) with the rounding of its activations taken out: each
    ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` of a computed tensor ``x`` (per-tensor
    constant scale and zero point, 8/16-bit codes) becomes ``Clip(x, (lo - z) s, (hi - z) s)``,
    the same value before rounding, clipped to the codes' range ``[lo, hi]``. Weights (constant
    inputs) stay quantized. The outputs differ from the QDQ model's by what activation rounding
    does to them: the scale a rounding flip inside the graph moves a float output by
    (``tolerance.compare_quantized``'s fraction rule for pre-quantized models)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = constants(graph)
    quantizers = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts}
    fresh = FreshNames(model)
    nodes = []
    for n in graph.node:
        q = quantizers.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        bounds = _clip_bounds(q, n, consts) if q is not None else None
        if bounds is None:
            nodes.append(n)
            continue
        names = [fresh(f"{n.output[0]}__lo"), fresh(f"{n.output[0]}__hi")]
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), nm) for v, nm in zip(bounds, names))
        nodes.append(helper.make_node("Clip", [q.input[0], *names], [n.output[0]], name=fresh(f"{n.name}__unrounded")))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _clip_bounds(q: onnx.NodeProto, dq: onnx.NodeProto, consts: dict) -> tuple[float, float] | None:
    """The float range of ``q``'s codes when ``dq`` undoes it with the same per-tensor scale
    and zero point, else None (the pair is kept as is)."""
    if q.domain not in ("", "ai.onnx") or dq.domain not in ("", "ai.onnx") or list(q.input[1:]) != list(dq.input[1:]):
        return None
    s = consts.get(q.input[1])
    z = consts.get(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
    if s is None or z is None or s.size != 1 or z.size != 1:
        return None
    if z.dtype not in (np.uint8, np.int8, np.uint16, np.int16):  # float8 / int4 codes: kept
        return None
    codes = np.iinfo(z.dtype)
    sv, zv = float(s.reshape(-1)[0]), int(z.reshape(-1)[0])
    return (codes.min - zv) * sv, (codes.max - zv) * sv

"""Static model analysis: op histogram, parameters, MACs/FLOPs and memory traffic per layer.

Costs follow the usual conventions: a multiply-accumulate (MAC) is 2 FLOPs; Conv costs
N*Cout*Hout*Wout*(Cin/groups)*kH*kW MACs (+ bias adds); Gemm/MatMul M*N*K MACs; LSTM / GRU /
RNN (and com.microsoft DynamicQuantizeLSTM) steps*batch*directions*gates*hidden*(input + hidden)
MACs (the input projection and the recurrent GEMV); elementwise,
activation, normalisation and pooling ops are counted as FLOPs per output (or input) element
with the small constant factors below. Bytes are the sizes of a node's inputs (activations
and weights) and outputs, i.e. DRAM traffic if nothing stays in cache: an upper bound used by
the roofline latency model.

optc's own layers (``ai.optc`` IntConv2d/IntDense, the binary/bit-serial ops) are costed as their
registry entry declares (:class:`optc.ops.Cost`): through standard surrogate ops of the same
shapes (:func:`optc.ops.surrogate_for_inference`), so an integerized or binarized model has the
MACs of its float original; each layer records its arithmetic (``arith``: fp32, int8 or binary),
whether it is depthwise, and for binary layers the 1-bit operations (MACs x weight bits x
activation bits), which :mod:`optc.latency_model` charges at the rate of the kernel that runs
them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .onnx_utils import attr, infer_shapes

# FLOPs per output element for non-MAC ops (approximate, documented conventions).
_ELEMENTWISE_FLOPS = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2,
    "Max": 1, "Min": 1, "Neg": 1, "Abs": 1, "Sqrt": 1, "Pow": 1, "Sign": 1,
    "Sigmoid": 4, "Tanh": 4, "Exp": 1, "Log": 1, "Erf": 4, "Gelu": 8, "HardSigmoid": 3,
    "HardSwish": 4, "Softmax": 5, "LogSoftmax": 5, "BatchNormalization": 2,
    "InstanceNormalization": 5, "LayerNormalization": 5, "Where": 1,
}
_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"}
# ops that move or reinterpret data without arithmetic: bytes only, by design
DATA_MOVEMENT = {"Reshape", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
                 "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "CastLike", "Shape", "Size", "Expand",
                 "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements", "ConstantOfShape",
                 "QuantizeLinear", "DequantizeLinear", "Dropout"}


@dataclass
class LayerCost:
    name: str
    op: str
    macs: int
    flops: int
    params: int
    bytes_in: int
    bytes_out: int
    output_shape: list[int]
    arith: str = "fp32"  # "fp32", "int8" (integer ops) or "binary" (packed 1-bit / bit-serial ops)
    depthwise: bool = False  # an integer conv with one input channel per group (no dot product fits)
    bit_ops: int = 0  # binary layers: MACs x weight bits x activation bits


def tensor_info(model: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
    """Static (shape, ONNX element type) of every tensor whose shape is known: inferred values,
    graph inputs/outputs, initializers and Constant-node tensors. Models shape inference cannot
    handle (custom domains) fall back to what they declare."""
    inferred = infer_shapes(model, data_prop=True)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = ([d.dim_value for d in t.shape.dim], t.elem_type)
    for name, t in _constant_tensors(inferred).items():
        out[name] = (list(t.dims), t.data_type)
    return out


def nbytes(shape_type: tuple[list[int], int] | None) -> int:
    """Bytes of a tensor given its (shape, element type); 0 if unknown."""
    if shape_type is None:
        return 0
    shape, elem = shape_type
    try:
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize
    except Exception:
        size = 4
    return int(np.prod(shape, dtype=np.int64)) * size


def _constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Weights: initializers and the tensors of Constant nodes (some exporters use those)."""
    out = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[n.output[0]] = a.t
    return out


# ONNX's own integer ops; optc's (ai.optc) ops declare their arithmetic in optc.ops.
_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM"}
# recurrent ops -> gates (com.microsoft DynamicQuantizeLSTM: ONNX's LSTM on int8 weights)
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}
_CELL_FLOPS = 12  # per hidden unit and step: gate adds, activations, the state update


def layer_costs(model: onnx.ModelProto) -> list[LayerCost]:
    """Per-node costs; shapes must be static (bind input shapes first). Constant nodes are
    weights, not layers, and are left out. optc's ``ai.optc`` layers are costed through their
    standard surrogates (see the module docstring); their bytes are those of their own inputs
    and outputs (int8 / packed weights as stored)."""
    from . import ops

    if not any(ops.lookup(n) for n in model.graph.node) \
            or any(ops.AUX in n.name for n in model.graph.node):  # nothing to see through, or a surrogate already
        return _layer_costs(model)
    surrogate = ops.surrogate_for_inference(model)
    costs = iter([c for c, n in zip(_layer_costs(surrogate), [n for n in surrogate.graph.node
                                                               if n.op_type != "Constant"])
                  if ops.AUX not in n.name])
    shapes = tensor_info(surrogate)
    inits = set(_constant_tensors(model))
    out = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        c = next(costs)
        if node.domain.startswith("ai.optc"):
            ins = [shapes.get(x) if x else None for x in node.input]
            outs = [shapes.get(o) for o in node.output]
            c.op = node.op_type
            c.bytes_in = sum(nbytes(s) for s in ins)
            c.bytes_out = sum(nbytes(s) for s in outs)
            c.params = sum(int(np.prod(s[0], dtype=np.int64)) for x, s in zip(node.input, ins) if x in inits and s)
            c.output_shape = list(outs[0][0]) if outs and outs[0] else c.output_shape
            op_def = ops.lookup(node)
            if op_def is not None:
                cost = op_def.cost
                c.arith = cost.arith
                c.depthwise = cost.depthwise(node, ins[1][0] if len(ins) > 1 and ins[1] else None)
                if cost.arith == "binary":
                    c.bit_ops = int(c.macs) * cost.bits_per_mac(node)
        out.append(c)
    return out


def _branch_model(model: onnx.ModelProto, branch: onnx.GraphProto,
                  shapes: dict[str, tuple[list[int], int]]) -> onnx.ModelProto:
    """An ``If`` branch as a model of its own: the outer values it reads become inputs (with
    the outer graph's static shapes) or initializers (outer weights), so it can be costed."""
    produced = {o for n in branch.node for o in n.output} | {i.name for i in branch.initializer}
    used = [x for n in branch.node for x in n.input if x and x not in produced]
    weights = _constant_tensors(model)
    inputs, inits = [], list(branch.initializer)
    for name in dict.fromkeys(used):
        if name in weights:
            inits.append(weights[name])
        elif name in shapes:
            inputs.append(onnx.helper.make_tensor_value_info(name, shapes[name][1], shapes[name][0]))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    graph = onnx.helper.make_graph(list(branch.node), branch.name or "branch", inputs, list(branch.output), inits)
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _if_cost(model: onnx.ModelProto, node: onnx.NodeProto, index: int,
             shapes: dict[str, tuple[list[int], int]]) -> LayerCost:
    """One ``If`` node: the summed costs of its costlier branch (by FLOPs, then bytes), so a
    model whose work sits inside an ``If`` is not costed as free. Which branch runs is known
    only at run time; the costlier one bounds it."""
    best: tuple | None = None
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            layers = _layer_costs(_branch_model(model, a.g, shapes))
            key = (sum(c.flops for c in layers), sum(c.bytes_in + c.bytes_out for c in layers))
            if best is None or key > best[0]:
                best = (key, a.name.removesuffix("_branch"), layers)
    layers = best[2] if best else []
    outs = [shapes.get(o) for o in node.output]
    return LayerCost(
        name=f"{node.name or f'If_{index}'} ({best[1] if best else 'no'} branch, the costlier)", op="If",
        macs=sum(c.macs for c in layers), flops=sum(c.flops for c in layers), params=sum(c.params for c in layers),
        bytes_in=sum(c.bytes_in for c in layers), bytes_out=sum(c.bytes_out for c in layers),
        output_shape=list(outs[0][0]) if outs and outs[0] else [],
        arith="int8" if layers and all(c.arith == "int8" for c in layers if c.macs) and any(c.macs for c in layers)
        else "fp32")


def _layer_costs(model: onnx.ModelProto) -> list[LayerCost]:
    shapes = tensor_info(model)
    inits = set(_constant_tensors(model))
    layers = []
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Constant":
            continue
        if node.op_type == "If":
            layers.append(_if_cost(model, node, i, shapes))
            continue
        outs = [shapes.get(o) for o in node.output]
        out_shape = outs[0][0] if outs and outs[0] else []
        out_elems = int(np.prod(out_shape, dtype=np.int64)) if out_shape else 0
        ins = [shapes.get(x) if x else None for x in node.input]
        params = sum(int(np.prod(s[0], dtype=np.int64)) for x, s in zip(node.input, ins) if x in inits and s)
        macs = 0
        flops = 0
        op = node.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv") and len(ins) > 1 and ins[1 if op != "QLinearConv" else 3]:
            w = ins[1 if op != "QLinearConv" else 3][0]
            macs = out_elems * int(np.prod(w[1:]))
            flops = 2 * macs + (out_elems if len(node.input) > 2 and op == "Conv" else 0)
        elif op == "ConvTranspose" and len(ins) > 1 and ins[1] and ins[0]:
            w = ins[1][0]  # (Cin, Cout/groups, kH, kW)
            in_elems = int(np.prod(ins[0][0]))
            macs = in_elems * int(np.prod(w[1:]))
            flops = 2 * macs
        elif op in ("Gemm", "MatMul", "MatMulInteger") and ins and ins[0] and len(ins) > 1 and ins[1]:
            a = ins[0][0]
            b = ins[1][0]
            k = a[-1] if not (op == "Gemm" and attr(node, "transA", 0)) else a[0]
            macs = out_elems * int(k)
            flops = 2 * macs + (out_elems if len(node.input) > 2 else 0)
        elif op in _RECURRENT_GATES and ins and ins[0] and len(ins[0][0]) == 3 and attr(node, "hidden_size", 0):
            # every step and direction: the input projection and the recurrent GEMV, then the cell
            hidden = int(attr(node, "hidden_size", 0))
            steps, batch, size = ins[0][0] if not attr(node, "layout", 0) else np.asarray(ins[0][0])[[1, 0, 2]]
            dirs = 2 if attr(node, "direction", b"forward") in (b"bidirectional", "bidirectional") else 1
            macs = int(steps) * int(batch) * dirs * _RECURRENT_GATES[op] * hidden * (int(size) + hidden)
            flops = 2 * macs + _CELL_FLOPS * int(steps) * int(batch) * dirs * hidden
        elif op in _POOL and ins and ins[0]:
            flops = int(np.prod(ins[0][0]))
        else:
            flops = _ELEMENTWISE_FLOPS.get(op, 0) * out_elems
        layers.append(LayerCost(
            name=node.name or f"{op}_{i}", op=op, macs=int(macs), flops=int(flops), params=params,
            bytes_in=sum(nbytes(s) for s in ins), bytes_out=sum(nbytes(s) for s in outs),
            output_shape=list(out_shape), arith="int8" if op in _INTEGER_OPS else "fp32",
        ))
    return layers


def uncounted_ops(layers: list[LayerCost] | list[dict]) -> dict[str, int]:
    """Op type -> layers of that type that no cost model above covers (no MACs, no FLOPs, not
    data movement): their arithmetic counts 0 in a roofline, only their bytes (a tree ensemble,
    whose trees live in attributes, counts nothing at all)."""
    out: dict[str, int] = {}
    for layer in layers:
        get = layer.get if isinstance(layer, dict) else lambda k, d=None, c=layer: getattr(c, k, d)
        if not get("macs") and not get("flops") and get("op") not in DATA_MOVEMENT and get("op") != "If":
            out[get("op")] = out.get(get("op"), 0) + 1
    return out


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> node count, most frequent first."""
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements in all weights (initializers and Constant-node tensors)."""
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in _constant_tensors(model).values())


def summarize(model: onnx.ModelProto, per_layer: bool = True) -> dict:
    """A JSON-ready summary: ops, parameters, MACs, FLOPs, memory and (optionally) layers."""
    layers = layer_costs(model)
    ops = op_histogram(model)
    weights = _constant_tensors(model).values()
    param_count = parameter_count(model)
    param_bytes = sum(nbytes((list(t.dims), t.data_type)) for t in weights)
    shapes = tensor_info(model)
    act_bytes = [nbytes(shapes.get(o)) for n in model.graph.node for o in n.output]
    out = {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(model.graph.node),
        "ops": ops,
        "params": param_count,
        "param_bytes": int(param_bytes),
        "macs": sum(layer.macs for layer in layers),
        "flops": sum(layer.flops for layer in layers),
        "max_activation_bytes": max(act_bytes, default=0),
        "total_activation_bytes": int(sum(act_bytes)),
        "bytes_moved": sum(layer.bytes_in + layer.bytes_out for layer in layers),
    }
    if per_layer:
        out["layers"] = [asdict(layer) for layer in layers]
    return out


def roofline_layers(layers: list[LayerCost] | list[dict], gflops: float, gbps: float) -> list[dict]:
    """Per-layer roofline lower bound: ``name``, ``op``, ``seconds`` = max(FLOPs / peak,
    bytes / bandwidth) and ``bound`` ("compute" or "memory")."""
    out = []
    for layer in layers:
        d = layer if isinstance(layer, dict) else asdict(layer)
        compute = d["flops"] / (gflops * 1e9)
        memory = (d["bytes_in"] + d["bytes_out"]) / (gbps * 1e9)
        out.append({"name": d["name"], "op": d["op"], "seconds": max(compute, memory),
                    "bound": "compute" if compute >= memory else "memory"})
    return out


def roofline_seconds(layers: list[LayerCost] | list[dict], gflops: float, gbps: float) -> float:
    """Roofline lower bound: sum over layers of max(FLOPs / peak, bytes / bandwidth)."""
    return sum(d["seconds"] for d in roofline_layers(layers, gflops, gbps))

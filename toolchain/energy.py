"""Energy per inference: measured where the hardware exposes a counter, else modeled.

Three ways, in order of preference (the report's ``energy.method`` says which one was used):

* **measured** -- hardware energy counters read before and after a timed loop of inferences:
  RAPL (``/sys/class/powercap/intel-rapl:*/energy_uj``, x86 hosts that expose it; counters
  wrap at ``max_energy_range_uj``) for code that runs on this host's CPU, NVML
  (``nvmlDeviceGetTotalEnergyConsumption``, else power samples integrated over the loop) for
  NVIDIA GPUs. Which meter applies to a target is table data (:data:`METERS`, keyed by the TVM
  target kind), used only when the target's code runs on this machine.
* **estimated from supplied power** -- ``power_watts`` given by the user (a wall meter, a board's
  specification): energy = W x latency (the measured median, or the modeled one).
* **modeled** -- from operation counts by type with Horowitz's 45 nm per-operation energies
  (ISSCC 2014), see :func:`model_energy`. Always computed; it is the headline figure when
  nothing better is available and is kept beside the others for comparison.

Energy figures are millijoules per inference (mJ). W x ms = mJ.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .analysis import nbytes, tensor_info
from .errors import UsageError
from .progress import SILENT, Progress

# ---------------------------------------------------------------------------------------------
# Published per-operation energies

HOROWITZ_SOURCE = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", "
                   "ISSCC 2014, per-operation energies at 45 nm, 0.9 V")
HOROWITZ_PJ = {
    "fp32_add": 0.9, "fp32_mult": 3.7,
    "int32_add": 0.1, "int32_mult": 3.1,
    "int8_add": 0.03, "int8_mult": 0.2,
    "sram_8kb_read_64bit": 10.0, "sram_32kb_read_64bit": 20.0, "sram_1mb_read_64bit": 100.0,
    "dram_read_32bit": 640.0,
}
# Energy per multiply-accumulate by arithmetic: fp32 mult + fp32 add; int8 mult + int32 add
# (int8 products are accumulated in 32 bits); binary (XNOR + popcount): Horowitz lists no 1-bit
# figure, so one full-adder bit of the popcount tree is charged, 1/8 of an int8 add.
MAC_PJ = {
    "fp32": HOROWITZ_PJ["fp32_mult"] + HOROWITZ_PJ["fp32_add"],
    "int8": HOROWITZ_PJ["int8_mult"] + HOROWITZ_PJ["int32_add"],
    "binary": HOROWITZ_PJ["int8_add"] / 8,
}
# Non-MAC operations (bias adds, activations, pooling, ...): one add of the layer's arithmetic
# (integer layers add in 32 bits).
OTHER_OP_PJ = {"fp32": HOROWITZ_PJ["fp32_add"], "int8": HOROWITZ_PJ["int32_add"],
               "binary": HOROWITZ_PJ["int32_add"]}
# Requantizing an integer layer's output (a QuantizeLinear fused into it): int32 mult + add.
REQUANT_PJ = HOROWITZ_PJ["int32_mult"] + HOROWITZ_PJ["int32_add"]
# Quantizing an fp32 tensor (a QuantizeLinear not folded into an integer layer): fp32 mult + add.
QUANT_PJ = HOROWITZ_PJ["fp32_mult"] + HOROWITZ_PJ["fp32_add"]
DRAM_PJ_PER_BYTE = HOROWITZ_PJ["dram_read_32bit"] / 4
SRAM_LEVELS = (  # (capacity bytes, label, pJ per byte) from the 64-bit (8-byte) read energies
    (8 * 1024, "8 KB", HOROWITZ_PJ["sram_8kb_read_64bit"] / 8),
    (32 * 1024, "32 KB", HOROWITZ_PJ["sram_32kb_read_64bit"] / 8),
    (1024 * 1024, "1 MB", HOROWITZ_PJ["sram_1mb_read_64bit"] / 8),
)
MODEL_NOTES = (
    "45 nm figures: a current 7/5 nm chip spends several times less per operation; use the "
    "model to compare variants of one model (fp32 vs int8 vs pruned), not as a device figure. "
    "Writes cost as much as reads. Control, instruction fetch and idle power are not counted."
)

_MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd",
                "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool"}
_VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
_BINARY_HINTS = ("bitserial", "binary", "binar", "xnor", "popcount", "bnn")
# optc's own ops (passes/optc_ops.py): packed binary / bit-serial layers and elementwise helpers.
_OPTC_MAC_OPS = {"BinaryDense", "BinaryConv2d", "BitserialDense", "BitserialConv2d", "BinaryConv2dThreshold"}
# optc's integer layers (passes/quant/int_ops.py): int8 x int8 -> int32 MACs.
_OPTC_INT_OPS = {"IntConv2d", "IntDense"}
# Names of the helper nodes a surrogate adds (costed with their layer, not as layers): the
# MaxPool half of a BinaryConv2dThreshold, the Transposes around an NHWC IntConv2d.
_AUX = "__optc_energy_aux"
_OPTC_ELEMENTWISE = {"SignThreshold"}
_REQUANT_FUSABLE = {"Relu", "Clip"}  # clamps folded into an integer layer's requantization
_NOT_QDQ_GROUP = {"QuantizeLinear", "DequantizeLinear", "Constant", *_VIEW_OPS}


def _pj_to_mj(pj: float) -> float:
    return pj * 1e-9


# ---------------------------------------------------------------------------------------------
# Modeled energy from operation counts


def _attr_ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return default


def surrogate_for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which optc's ``ai.optc`` layers are standard ops of the same output shape and
    MAC count (BinaryConv2d/BitserialConv2d/IntConv2d -> Conv, BinaryDense/BitserialDense/IntDense
    -> MatMul, SignThreshold -> Identity, BinaryConv2dThreshold -> Conv + MaxPool; an NHWC
    IntConv2d gets Transposes around its Conv) with
    shape-only dummy weights (graph inputs, no data), so that ONNX shape inference and
    :func:`optc.analysis.layer_costs` see through them. Tensor names are kept; a fused
    BinaryConv2dThreshold becomes two nodes (the Conv keeps the name, its output is new)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    for vi in g.input:
        dims.setdefault(vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim])
    nodes = []
    for k, n in enumerate(g.node):
        if not n.domain.startswith("ai.optc") or n.op_type not in _OPTC_MAC_OPS | _OPTC_ELEMENTWISE | _OPTC_INT_OPS:
            nodes.append(n)
            continue
        if n.op_type in _OPTC_ELEMENTWISE:
            nodes.append(onnx.helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
            continue
        w = dims.get(n.input[1]) if len(n.input) > 1 else None
        if not w:
            nodes.append(n)
            continue
        dummy = f"__optc_energy_shape_{k}"
        if n.op_type.endswith("Conv2d") or n.op_type == "BinaryConv2dThreshold":
            ks = _attr_ints(n, "kernel_shape", [1, 1])
            group = 1
            if n.op_type == "IntConv2d":
                shape, group = list(w), _int_attr(n, "group") or 1
            else:
                shape = [w[0], _int_attr(n, "in_channels") or 0, *ks]
            pooled = n.op_type == "BinaryConv2dThreshold" and _attr_ints(n, "pool_shape", [1, 1]) != [1, 1]
            conv_in, conv_out = n.input[0], f"__optc_energy_conv_{k}" if pooled else n.output[0]
            x_nhwc, y_nhwc = (_str_attr(n, a) == "NHWC" for a in ("x_layout", "y_layout"))  # IntConv2d layouts
            if x_nhwc:
                conv_in = f"__optc_energy_nchw_in_{k}"
                nodes.append(onnx.helper.make_node("Transpose", [n.input[0]], [conv_in], perm=[0, 3, 1, 2],
                                                   name=n.name + _AUX + "_nchw_in"))
            if y_nhwc:
                conv_out = f"__optc_energy_nchw_out_{k}"
            nodes.append(onnx.helper.make_node("Conv", [conv_in, dummy], [conv_out], name=n.name,
                                               kernel_shape=ks, pads=_attr_ints(n, "pads", [0, 0, 0, 0]),
                                               strides=_attr_ints(n, "strides", [1, 1]), group=group,
                                               dilations=_attr_ints(n, "dilations", [1, 1])))
            if y_nhwc:
                nodes.append(onnx.helper.make_node("Transpose", [conv_out], [n.output[0]], perm=[0, 2, 3, 1],
                                                   name=n.name + _AUX + "_nhwc_out"))
            if pooled:
                pool = _attr_ints(n, "pool_shape", [1, 1])
                nodes.append(onnx.helper.make_node("MaxPool", [conv_out], [n.output[0]], name=n.name + _AUX + "_pool",
                                                   kernel_shape=pool, strides=pool))
        else:
            shape = [w[1], w[0]] if n.op_type == "IntDense" else [_int_attr(n, "in_features") or 0, w[0]]
            nodes.append(onnx.helper.make_node("MatMul", [n.input[0], dummy], [n.output[0]], name=n.name))
        g.input.append(onnx.helper.make_tensor_value_info(dummy, onnx.TensorProto.FLOAT, shape))
    del g.node[:]
    g.node.extend(nodes)
    return m


def _elems(info: tuple[list[int], int] | None) -> int:
    return int(np.prod(info[0], dtype=np.int64)) if info is not None else 0


def _str_attr(node: onnx.NodeProto, name: str) -> str | None:
    for a in node.attribute:
        if a.name == name and a.type == onnx.AttributeProto.STRING:
            return a.s.decode()
    return None


def _int_attr(node: onnx.NodeProto, *names: str) -> int | None:
    for a in node.attribute:
        if a.name in names and a.type == onnx.AttributeProto.INT:
            return int(a.i)
    return None


def _precision(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> str:
    """fp32, int8 or binary arithmetic for one node (see :func:`model_energy`)."""
    if node.domain.startswith("ai.optc"):
        if node.op_type in _OPTC_MAC_OPS:
            return "binary"
        if node.op_type in _OPTC_ELEMENTWISE:
            return "fp32"
        if node.op_type in _OPTC_INT_OPS:
            return "int8"
        text = (node.domain + "." + node.op_type).lower()
        return "binary" if any(h in text for h in _BINARY_HINTS) else "int8"
    if node.op_type in _INTEGER_OPS:
        return "int8"
    if node.op_type in _MAC_OPS and len(node.input) > 1:
        srcs = [producer.get(x) for x in node.input[:2]]
        if all(s is not None and s.op_type == "DequantizeLinear" for s in srcs):
            return "int8"
    return "fp32"


def model_energy(model: onnx.ModelProto) -> dict:
    """Modeled energy of one inference of ``model`` (static shapes) from operation counts.

    Arithmetic, per node (energies per operation in :data:`MAC_PJ`, :data:`OTHER_OP_PJ`):

    * *binary*: optc's packed layers (``ai.optc`` BinaryDense/BinaryConv2d/BitserialDense/
      BitserialConv2d, see ``passes/optc_ops.py``), ``act_bits x weight_bits`` binary MACs
      (XNOR/AND + popcount) per MAC, plus binarizing each input element (a compare) and scaling
      + biasing each output (fp32 mult + add). Their shapes and MAC counts come from standard
      surrogate ops (:func:`surrogate_for_inference`); another ``ai.optc`` op may state its MACs
      in an int attribute ``macs``, else it is named in ``notes``.
    * *int8*: integer ops (ConvInteger, QLinearConv, ...); Conv/Gemm/MatMul whose data and weight
      inputs both come from DequantizeLinear (QDQ layers); other ops whose activation inputs come
      from DequantizeLinear and whose output goes (through Relu/Clip/views) to a QuantizeLinear.
    * *fp32*: everything else. MACs come from :func:`optc.analysis.layer_costs`; a layer's other
      FLOPs (bias adds, activations, pooling) are charged one add of its arithmetic each.

    Memory, per compute node: its inputs are read and its outputs written once. QDQ graphs are
    counted as an integer runtime runs them: DequantizeLinear is folded into its consumers
    (which read the quantized bytes); a QuantizeLinear after an int8 layer, with Relu/Clip in
    between, is folded into it (the layer writes quantized bytes and pays a requantize, int32
    mult + add, per output); a standalone QuantizeLinear pays an fp32 mult + add per element;
    view ops (Reshape, Flatten, ...) move nothing. Two bounds:

    * upper: every byte from/to DRAM (640 pJ per 32-bit access);
    * lower: weights once from DRAM (each distinct weight once), model inputs/outputs via DRAM,
      intermediate activations in the smallest SRAM of 8 KB / 32 KB / 1 MB that holds the
      largest per-layer activation working set (inputs + outputs); DRAM if none does.

    ``mj_per_inference`` is the upper bound; ``mj_per_inference_lower`` the lower one.
    """
    from .analysis import layer_costs

    surrogate = surrogate_for_inference(model)
    info = tensor_info(surrogate)
    g = model.graph
    weights = {i.name for i in g.initializer}
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for o in n.output:
            producer[o] = n
        for x in n.input:
            if x:
                consumers.setdefault(x, []).append(n)
        if n.op_type == "Constant":
            weights.update(n.output)
    graph_inputs = {i.name for i in g.input} - weights
    graph_outputs = {o.name for o in g.output}

    # One cost per node of the original graph: a surrogate's helper nodes are dropped (the
    # pool half's compares are part of the fused binary layer's threshold work; layout
    # Transposes are not in the original graph).
    surrogate_layers = [n for n in surrogate.graph.node if n.op_type != "Constant"]
    costs = iter([c for c, n in zip(layer_costs(surrogate), surrogate_layers)
                  if _AUX not in n.name])
    layer_of: dict[int, Any] = {}
    for idx, n in enumerate(g.node):
        if n.op_type != "Constant":
            layer_of[idx] = next(costs)

    store: dict[str, int] = {}  # bytes actually stored for a tensor
    root: dict[str, str] = {}  # the tensor whose storage it is (DQ / view outputs alias inputs)

    def stored(t: str) -> int:
        return store.get(t, nbytes(info.get(t)))

    def root_of(t: str) -> str:
        while t in root:
            t = root[t]
        return t

    node_index = {id(n): i for i, n in enumerate(g.node)}
    precision_of = {idx: _precision(n, producer) for idx, n in enumerate(g.node)}

    def sole_consumer(t: str):
        cs = consumers.get(t, [])
        return cs[0] if len(cs) == 1 and t not in graph_outputs else None

    def chain_to_q(t: str):
        """``t -> (Relu|Clip)* -> QuantizeLinear``, each link the sole consumer: (acts, Q) or None."""
        chain, c = [], sole_consumer(t)
        while c is not None and (c.op_type in _REQUANT_FUSABLE or c.op_type in _VIEW_OPS) and c.input[0] == t:
            chain.append(c)
            t = c.output[0]
            c = sole_consumer(t)
        return (chain, c) if c is not None and c.op_type == "QuantizeLinear" and c.input[0] == t else None

    # Ops between DequantizeLinear and QuantizeLinear (QDQ MaxPool, Add, ...) run on integers.
    for idx, n in enumerate(g.node):
        if precision_of[idx] != "fp32" or n.domain or len(n.output) != 1 or n.op_type in _NOT_QDQ_GROUP:
            continue
        acts = [x for x in n.input if x and x not in weights]
        if acts and all(x in producer and producer[x].op_type == "DequantizeLinear" for x in acts) \
                and chain_to_q(n.output[0]):
            precision_of[idx] = "int8"
    # A QuantizeLinear (and Relu/Clip before it) after an int8 layer is its requantization.
    fused: set[int] = set()
    fused_q: set[int] = set()
    for idx, n in enumerate(g.node):
        if precision_of[idx] == "int8" and len(n.output) == 1 and n.op_type not in _NOT_QDQ_GROUP:
            found = chain_to_q(n.output[0])
            if found:
                chain, q = found
                store[n.output[0]] = nbytes(info.get(q.output[0]))
                fused.update(node_index[id(c)] for c in chain)
                fused_q.add(node_index[id(q)])

    macs = {"fp32": 0, "int8": 0, "binary": 0}
    binary_ops = 0
    other_ops = {"fp32": 0, "int8": 0, "binary": 0}
    requant_elems = 0
    quant_elems = 0
    compute_extra = {"binarize_and_scale": 0.0}
    upper_bytes = 0
    weight_reads: dict[str, int] = {}
    io_bytes = 0
    act_bytes = 0
    working_set = 0
    notes: list[str] = []
    per_op: dict[str, float] = {}

    for idx, n in enumerate(g.node):
        op = n.op_type
        if op == "Constant":
            continue
        if op == "DequantizeLinear" or op in _VIEW_OPS or idx in fused_q or idx in fused:
            if n.input and n.input[0]:
                root[n.output[0]] = n.input[0]
                store[n.output[0]] = stored(n.input[0])
            if n.input and root_of(n.input[0]) in weights:
                weights.add(n.output[0])
            if idx in fused_q:
                requant_elems += int(np.prod(info.get(n.output[0], ([0], 1))[0], dtype=np.int64))
            continue
        layer = layer_of[idx]
        prec = precision_of[idx]
        n_macs = layer.macs
        pj = 0.0
        if n.domain.startswith("ai.optc"):
            given = _int_attr(n, "macs")
            if given is not None:
                n_macs = given
            elif n_macs == 0 and op not in _OPTC_ELEMENTWISE:
                notes.append(f"{n.name or op}: {n.domain}::{op} has no known MAC count (no 'macs' attribute); "
                             "its MACs are not counted")
            if op in _OPTC_MAC_OPS:  # binarize/quantize each input element, scale + bias each output
                in_el = _elems(info.get(n.input[0]))
                out_el = _elems(info.get(n.output[0]))
                epilogue_pj = in_el * HOROWITZ_PJ["fp32_add"] + out_el * QUANT_PJ
                compute_extra["binarize_and_scale"] += epilogue_pj
                pj += epilogue_pj
            elif op in _OPTC_ELEMENTWISE:  # a compare per element
                other_ops["fp32"] += _elems(info.get(n.output[0]))
                pj += _elems(info.get(n.output[0])) * OTHER_OP_PJ["fp32"]
        if prec == "binary":
            bits = ((_int_attr(n, "weight_bits", "wbits") or 1)
                    * (_int_attr(n, "act_bits", "activation_bits", "abits") or 1))
            binary_ops += n_macs * bits
            macs["binary"] += n_macs
            pj += n_macs * bits * MAC_PJ["binary"]
        else:
            macs[prec] += n_macs
            pj += n_macs * MAC_PJ[prec]
        extra = max(0, layer.flops - 2 * layer.macs)
        other_ops[prec] += extra
        pj += extra * OTHER_OP_PJ[prec]
        if op == "QuantizeLinear":  # standalone quantize: an fp32 scale (mult) and shift (add) per element
            elems = int(np.prod(info.get(n.output[0], ([0], 1))[0], dtype=np.int64))
            quant_elems += elems
            pj += elems * QUANT_PJ
        per_op[op] = per_op.get(op, 0.0) + pj

        reads = [x for x in n.input if x]
        acts_here = 0
        for x in reads:
            b = stored(x)
            upper_bytes += b
            r = root_of(x)
            if r in weights or x in weights:
                weight_reads[r] = max(weight_reads.get(r, 0), b)
            elif r in graph_inputs:
                io_bytes += b
                acts_here += b
            else:
                act_bytes += b
                acts_here += b
        for o in n.output:
            if not o:
                continue
            b = stored(o)
            upper_bytes += b
            acts_here += b
            if o in graph_outputs or any(c in graph_outputs for c in _aliases(o, consumers, fused_q, node_index)):
                io_bytes += b
            else:
                act_bytes += b
        working_set = max(working_set, acts_here)

    compute_pj = {
        "fp32_mac": macs["fp32"] * MAC_PJ["fp32"],
        "int8_mac": macs["int8"] * MAC_PJ["int8"],
        "binary_mac": binary_ops * MAC_PJ["binary"],
        "other_ops": sum(other_ops[p] * OTHER_OP_PJ[p] for p in other_ops),
        "requantize": requant_elems * REQUANT_PJ,
        "quantize": quant_elems * QUANT_PJ,
        **compute_extra,
    }
    if any(precision_of[i] == "int8" and not g.node[i].domain and g.node[i].op_type in _MAC_OPS for i in precision_of):
        notes.append("QDQ layers are charged as integer kernels (int8 x int8 -> int32, requantized): what an "
                     "integer runtime spends; a backend that dequantizes and computes in fp32 (TVM 0.27 "
                     "does for QDQ Conv/MatMul) spends more on arithmetic")
    compute_total = sum(compute_pj.values())
    weight_bytes = sum(weight_reads.values())
    level = next(((label, pj) for cap, label, pj in SRAM_LEVELS if working_set <= cap), None)
    act_pj = act_bytes * (level[1] if level else DRAM_PJ_PER_BYTE)
    lower_mem = {"weights_dram": weight_bytes * DRAM_PJ_PER_BYTE, "io_dram": io_bytes * DRAM_PJ_PER_BYTE,
                 "activations": act_pj}
    upper_pj = compute_total + upper_bytes * DRAM_PJ_PER_BYTE
    lower_pj = compute_total + sum(lower_mem.values())
    return {
        "method": "modeled",
        "source": HOROWITZ_SOURCE,
        "mj_per_inference": _pj_to_mj(upper_pj),
        "mj_per_inference_lower": _pj_to_mj(lower_pj),
        "bound": "upper: every tensor read/written once from DRAM; lower: activations on chip "
                 "(see breakdown.memory_lower)",
        "breakdown": {
            "compute_mj": {k: _pj_to_mj(v) for k, v in compute_pj.items()},
            "memory_upper_mj": {"dram": _pj_to_mj(upper_bytes * DRAM_PJ_PER_BYTE)},
            "memory_lower_mj": {k: _pj_to_mj(v) for k, v in lower_mem.items()},
            "activations_on": f"SRAM {level[0]}" if level else "DRAM (working set > 1 MB)",
            "counts": {
                "macs": macs, "binary_ops": binary_ops, "other_ops": other_ops,
                "requantized_outputs": requant_elems, "quantized_elements": quant_elems,
                "bytes_upper": upper_bytes,
                "weight_bytes": weight_bytes, "io_bytes": io_bytes, "activation_bytes": act_bytes,
                "activation_working_set_bytes": working_set,
            },
            "compute_mj_by_op": {k: _pj_to_mj(v) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
        },
        "per_op_pj": {"mac": MAC_PJ, "other_op": OTHER_OP_PJ, "requantize": REQUANT_PJ, "quantize": QUANT_PJ,
                      "dram_per_byte": DRAM_PJ_PER_BYTE,
                      "sram_per_byte": {label: pj for _, label, pj in SRAM_LEVELS},
                      "horowitz": HOROWITZ_PJ},
        "notes": [MODEL_NOTES, *notes],
    }


def _aliases(t: str, consumers, fused_q, node_index) -> list[str]:
    """Tensors that share ``t``'s storage downstream (through folded Q/DQ and view ops)."""
    out, todo = [], [t]
    while todo:
        x = todo.pop()
        for c in consumers.get(x, []):
            if c.op_type in _VIEW_OPS or c.op_type == "DequantizeLinear" or node_index[id(c)] in fused_q:
                if c.input and c.input[0] == x:
                    out.append(c.output[0])
                    todo.append(c.output[0])
    return out


def model_energy_from_summary(summary: dict) -> dict:
    """A coarser model when only :func:`optc.analysis.summarize` output is at hand: all MACs
    fp32, ``bytes_moved`` from DRAM (upper bound only)."""
    macs = int(summary.get("macs", 0))
    other = max(0, int(summary.get("flops", 0)) - 2 * macs)
    nbytes = int(summary.get("bytes_moved", 0))
    compute = macs * MAC_PJ["fp32"] + other * OTHER_OP_PJ["fp32"]
    total = compute + nbytes * DRAM_PJ_PER_BYTE
    return {"method": "modeled", "source": HOROWITZ_SOURCE, "mj_per_inference": _pj_to_mj(total),
            "bound": "upper: all fp32, every byte from DRAM (model graph not available)",
            "breakdown": {"compute_mj": {"fp32_mac": _pj_to_mj(macs * MAC_PJ["fp32"]),
                                         "other_ops": _pj_to_mj(other * OTHER_OP_PJ["fp32"])},
                          "memory_upper_mj": {"dram": _pj_to_mj(nbytes * DRAM_PJ_PER_BYTE)}},
            "notes": [MODEL_NOTES]}


# ---------------------------------------------------------------------------------------------
# Measured energy: RAPL (powercap sysfs) and NVML

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class RaplZone:
    path: Path
    name: str  # e.g. package-0, core, dram, psys
    max_range_uj: int
    top_level: bool

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.name})"


def rapl_zones(root: Path | str = POWERCAP_ROOT) -> list[RaplZone]:
    """RAPL zones under a powercap sysfs root (``intel-rapl:N`` and sub-zones ``intel-rapl:N:M``).
    Zones whose counter cannot be read (e.g. not root) are left out."""
    zones = []
    for d in sorted(Path(root).glob("intel-rapl:*")):
        try:
            name = (d / "name").read_text().strip()
            rng = int((d / "max_energy_range_uj").read_text().strip())
            int((d / "energy_uj").read_text().strip())
        except (OSError, ValueError):
            continue
        zones.append(RaplZone(d, name, rng, d.name.count(":") == 1))
    return zones


def rapl_delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Energy between two readings of one counter; it wraps to 0 after ``max_range_uj``."""
    return after - before if after >= before else after + max_range_uj - before


class RaplMeter:
    """Package (+ DRAM where listed separately) energy from the Linux powercap RAPL counters.

    The counters cover the whole socket: the figure includes idle power and whatever else runs
    on the machine during the loop (an idle reading before the loop is reported beside it).
    Loops are kept far shorter than the counters' wrap time, so at most one wrap occurs.
    """

    name = "RAPL"

    def __init__(self, root: Path | str = POWERCAP_ROOT):
        self.root = Path(root)
        self.zones = rapl_zones(self.root)

    @property
    def source(self) -> str:
        return (f"Linux powercap RAPL energy counters ({self.root}/intel-rapl:*/energy_uj): "
                + ", ".join(z.label for z in self.zones))

    def unavailable(self) -> str | None:
        if self.zones:
            return None
        if any(self.root.glob("intel-rapl:*")):
            return f"RAPL zones under {self.root} are not readable (energy_uj is root-only on current kernels)"
        return f"no RAPL powercap zones under {self.root} (not an Intel/AMD host exposing RAPL, or a VM)"

    def _read(self) -> dict[str, int]:
        return {str(z.path): int((z.path / "energy_uj").read_text().strip()) for z in self.zones}

    def start(self):
        return self._read()

    def stop(self, token) -> dict[str, float]:
        after = self._read()
        joules: dict[str, float] = {}
        total = 0.0
        for z in self.zones:
            j = rapl_delta_uj(token[str(z.path)], after[str(z.path)], z.max_range_uj) * 1e-6
            joules[z.label] = j
            # Sum packages, plus DRAM zones (not part of the package domain); psys and core/uncore
            # sub-zones overlap those and are shown only.
            if (z.top_level and z.name.startswith("package")) or z.name == "dram":
                total += j
        if not any((z.top_level and z.name.startswith("package")) or z.name == "dram" for z in self.zones):
            total = sum(j for z, j in zip(self.zones, joules.values()) if z.top_level)
        joules["total"] = total
        return joules


class NvmlMeter:
    """GPU board energy from NVML: the total-energy counter (Volta and newer), else power samples
    (``nvmlDeviceGetPowerUsage``, mW) every few ms integrated over the loop."""

    name = "NVML"

    def __init__(self, index: int | None = None, sample_s: float = 0.005):
        self.index = index if index is not None else _nvml_index()
        self.sample_s = sample_s
        self._nvml = None
        self._handle = None
        self._why = None
        self.mode = None
        try:
            import pynvml  # provided by nvidia-ml-py

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self._nvml = pynvml
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self.mode = "energy counter"
            except Exception:
                pynvml.nvmlDeviceGetPowerUsage(self._handle)
                self.mode = "power sampling"
        except ImportError:
            self._why = "pynvml (pip install nvidia-ml-py) is not installed"
        except Exception as err:  # no driver, no device
            self._why = f"NVML not usable: {' '.join(str(err).split())[:200]}"

    @property
    def source(self) -> str:
        name = ""
        if self._nvml is not None:
            try:
                name = self._nvml.nvmlDeviceGetName(self._handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception:
                name = ""
        how = ("nvmlDeviceGetTotalEnergyConsumption (mJ counter)" if self.mode == "energy counter"
               else f"nvmlDeviceGetPowerUsage sampled every {self.sample_s * 1e3:g} ms, integrated")
        return f"NVML, GPU {self.index}{' ' + name if name else ''}: {how}; whole board, includes idle power"

    def unavailable(self) -> str | None:
        return self._why

    def start(self):
        if self.mode == "energy counter":
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.perf_counter(), self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3))
                stop.wait(self.sample_s)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        return (th, stop, samples)

    def stop(self, token) -> dict[str, float]:
        if self.mode == "energy counter":
            j = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - token) * 1e-3
            return {"gpu": j, "total": j}
        th, stop, samples = token
        samples.append((time.perf_counter(), self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3))
        stop.set()
        th.join()
        j = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))
        return {"gpu": j, "total": j, "samples": len(samples)}


def _nvml_index() -> int:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(vis) if vis.isdigit() else 0


# Meters by TVM target kind, for targets whose code runs on this machine ("measured" latency).
METERS: dict[str, Callable[[], Any]] = {
    "llvm": RaplMeter,
    "cuda": NvmlMeter,
}


@dataclass
class Measurement:
    joules: dict[str, float]
    seconds: float
    iterations: int
    idle_watts: float | None = None
    extra: dict = field(default_factory=dict)


def measure_loop(meter, run: Callable[[int], Any], iterations: int, idle_seconds: float = 0.0) -> Measurement:
    """Energy of ``run(iterations)`` read from ``meter`` before and after; optionally an idle
    reading of ``idle_seconds`` first (the meter covers the whole package/board)."""
    idle_w = None
    if idle_seconds > 0:
        tok = meter.start()
        t0 = time.perf_counter()
        time.sleep(idle_seconds)
        j = meter.stop(tok)["total"]
        idle_w = j / (time.perf_counter() - t0)
    tok = meter.start()
    t0 = time.perf_counter()
    run(iterations)
    seconds = time.perf_counter() - t0
    joules = meter.stop(tok)
    return Measurement(joules, seconds, iterations, idle_w)


def measured_section(meter, m: Measurement) -> dict:
    total = m.joules["total"]
    per = total / m.iterations * 1e3
    out = {
        "method": "measured",
        "source": meter.source,
        "mj_per_inference": per,
        "how": f"counter read before and after {m.iterations} back-to-back inferences "
               f"({m.seconds:.3f} s, average {total / m.seconds:.2f} W)",
        "breakdown": {k: v / m.iterations * 1e3 for k, v in m.joules.items()
                      if k not in ("total", "samples")},
    }
    if m.idle_watts is not None:
        above = max(0.0, total - m.idle_watts * m.seconds)
        out["idle_watts"] = m.idle_watts
        out["mj_per_inference_above_idle"] = above / m.iterations * 1e3
    return out


# ---------------------------------------------------------------------------------------------
# The report section

MEASURE_SECONDS = 1.0  # length of the measured loop (RAPL updates every ~1 ms)
IDLE_SECONDS = 0.25


def supplied_power_section(power_watts: float, latency: dict) -> dict | None:
    """Energy = supplied power x latency median (measured or modeled); None without a median."""
    if "median_ms" not in latency:
        return None
    ms = float(latency["median_ms"])
    lat_method = latency.get("method", "?")
    return {
        "method": "estimated from supplied power",
        "source": f"user-supplied power {power_watts:g} W x {lat_method} latency median {ms:.4g} ms",
        "mj_per_inference": power_watts * ms,
        "breakdown": {"power_watts": power_watts, "latency_ms": ms, "latency_method": lat_method},
        **({"note": "modeled latency is a lower bound (see latency.how), so this energy is one too"}
           if lat_method == "modeled" else {}),
    }


def report_section(target, summary: dict, latency: dict, *, model: onnx.ModelProto | None = None,
                   session=None, args=None, measure: bool = True, power_watts: float | None = None,
                   package: Path | None = None, manifest: dict | None = None,
                   progress: Progress = SILENT, meters: dict | None = None) -> dict:
    """The report's ``energy`` section for a compiled artifact (see the module docstring).

    ``model`` is the optimized ONNX graph (for per-layer arithmetic types; without it every MAC
    counts as fp32), ``session``/``args`` run the artifact for a measured loop, ``power_watts``
    asks for the time-based estimate. For targets run under qemu the deterministic executed-
    instruction count is added to ``latency`` as ``latency["instructions"]`` (see
    :mod:`optc.backends.tvm.qemu_plugin`), since that needs the same package and inputs.
    """
    if power_watts is not None and not (power_watts > 0 and math.isfinite(power_watts)):
        raise UsageError(f"--power-watts must be a positive number of watts, not {power_watts!r}")
    modeled = model_energy(model) if model is not None else model_energy_from_summary(summary)
    _probe_extras(target, latency, measure, package, manifest, args, progress)

    if power_watts is not None:
        est = supplied_power_section(power_watts, latency)
        if est is not None:
            return est | {"modeled": _brief(modeled)}
        modeled["notes"].append(f"--power-watts {power_watts:g} given but the report has no latency "
                                "figure (--no-measure): modeled instead")

    # Measure only where the artifact itself ran and was timed on this machine.
    lat_method = latency.get("method")
    kind = (getattr(target, "tvm", None) or {}).get("kind")
    factory = (meters if meters is not None else METERS).get(kind)
    if not measure or lat_method == "not measured":
        modeled["notes"].append("not measured: --no-measure")
        return modeled
    if lat_method != "measured" or session is None or args is None:
        modeled["notes"].append(f"not measured: the artifact for {getattr(target, 'name', '?')} does not "
                                f"run natively on this machine (latency {lat_method})")
        return modeled
    if factory is None:
        modeled["notes"].append(f"not measured: no energy meter for TVM target kind {kind!r}")
        return modeled
    meter = factory()
    why = meter.unavailable()
    if why is not None:
        modeled["notes"].append(f"not measured: {why}")
        return modeled
    per_call = max(1e-6, float(latency.get("median_ms", 1.0)) * 1e-3)
    n = int(min(100_000, max(20, math.ceil(MEASURE_SECONDS / per_call))))
    import inspect

    # one call per repeat (a GPU session's timer would otherwise batch `number` calls per repeat)
    per_repeat = {"number": 1} if "number" in inspect.signature(session.time).parameters else {}
    with progress.step(f"measure energy ({meter.name}, {n} inferences)"):
        session.time(args, warmup=3, repeat=0)
        m = measure_loop(meter, lambda k: session.time(args, warmup=0, repeat=k, **per_repeat), n, IDLE_SECONDS)
    return measured_section(meter, m) | {"modeled": _brief(modeled)}


def _brief(modeled: dict) -> dict:
    keys = ("method", "source", "mj_per_inference", "mj_per_inference_lower")
    return {k: modeled[k] for k in keys if k in modeled}


# Extra deterministic measurements by backend, imported lazily ("module:function"): the function
# gets (package_dir, manifest, args, latency) and adds to ``latency``.
PROBES: dict[str, str] = {
    "tvm-arm": "optc.backends.tvm.qemu_plugin:annotate_latency",
}


def _probe_extras(target, latency, measure, package, manifest, args, progress) -> None:
    spec = PROBES.get(getattr(target, "backend", ""))
    if not spec or not measure or package is None or manifest is None or args is None:
        return
    import importlib

    mod, func = spec.split(":")
    with progress.step("count executed instructions (qemu insn plugin)"):
        getattr(importlib.import_module(mod), func)(Path(package), manifest, args, latency)

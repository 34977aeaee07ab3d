"""Modeled energy per inference from operation counts by type (Horowitz's 45 nm per-operation
energies, ISSCC 2014): :func:`model_energy` for an ONNX graph, :func:`model_energy_from_summary`
when only :func:`optc.analysis.summarize` output is at hand.

optc's ``ai.optc`` ops are charged as their registry entry says (:class:`optc.ops.Cost`: the
arithmetic of their MACs, bit operations per MAC, work outside the MACs); their shapes and MAC
counts come from their cost surrogates (:func:`optc.ops.surrogate_for_inference`).

Energy figures are millijoules per inference (mJ).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from .. import ops
from ..analysis import nbytes, tensor_info
from ..onnx_utils import int_attr

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
_REQUANT_FUSABLE = {"Relu", "Clip"}  # clamps folded into an integer layer's requantization
_NOT_QDQ_GROUP = {"QuantizeLinear", "DequantizeLinear", "Constant", *_VIEW_OPS}


def _pj_to_mj(pj: float) -> float:
    return pj * 1e-9


# ---------------------------------------------------------------------------------------------
# Modeled energy from operation counts


def _elems(info: tuple[list[int], int] | None) -> int:
    return int(np.prod(info[0], dtype=np.int64)) if info is not None else 0


def _precision(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> str:
    """fp32, int8 or binary arithmetic for one node (see :func:`model_energy`)."""
    if node.domain.startswith(ops.DOMAIN):
        d = ops.lookup(node)
        if d is not None:
            return d.cost.arith
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

    * optc's ``ai.optc`` ops: what their registry entry (:class:`optc.ops.Cost`) declares:
      the arithmetic of their MACs (binary for the packed layers BinaryDense/BinaryConv2d/
      BitserialDense/..., ``act_bits x weight_bits`` binary MACs, XNOR/AND + popcount, per MAC;
      int8 for IntConv2d/IntDense/...), and their work outside the MACs: binarizing each input
      element (a compare) and scaling + biasing each output (fp32 mult + add) for the packed
      layers, a requantize per output (int32 mult + add) for the integer ones, a compare per
      element for SignThreshold. Their shapes and MAC counts come from their standard surrogate
      ops (:func:`optc.ops.surrogate_for_inference`). An unregistered ``ai.optc`` op may state
      its MACs in an int attribute ``macs``, else it is named in ``notes``; its arithmetic is
      guessed from its name (binary where it says so, else int8).
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
    from ..analysis import layer_costs

    surrogate = ops.surrogate_for_inference(model)
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
                  if ops.AUX not in n.name])
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
        op_def = ops.lookup(n)
        if n.domain.startswith(ops.DOMAIN):
            given = int_attr(n, "macs")
            if given is not None:
                n_macs = given
            elif n_macs == 0 and layer.op == op:  # no surrogate saw through it
                notes.append(f"{n.name or op}: {n.domain}::{op} has no known MAC count (no 'macs' attribute); "
                             "its MACs are not counted")
        if op_def is not None:  # the op's work outside its MACs, as its registry entry declares
            cost = op_def.cost
            in_el, out_el = _elems(info.get(n.input[0])), _elems(info.get(n.output[0]))
            if cost.binarize_and_scale:  # binarize/quantize each input element, scale + bias each output
                epilogue_pj = in_el * HOROWITZ_PJ["fp32_add"] + out_el * QUANT_PJ
                compute_extra["binarize_and_scale"] += epilogue_pj
                pj += epilogue_pj
            if cost.requantize:
                requant_elems += out_el
                pj += out_el * REQUANT_PJ
            if cost.ops_per_output:  # e.g. a threshold's compare per element
                other_ops[cost.arith] += cost.ops_per_output * out_el
                pj += cost.ops_per_output * out_el * OTHER_OP_PJ[cost.arith]
        if prec == "binary":
            bits = op_def.cost.bits_per_mac(n) if op_def is not None else ops.operand_bits(n)
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

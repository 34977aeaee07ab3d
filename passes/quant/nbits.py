"""com.microsoft ``MatMulNBits`` (onnxruntime's weight-only LLM format) -> MatMul on the
dequantized weight: the ``expand-matmul-nbits`` pass.

``MatMulNBits(A, B, scales, [zero_points], [g_idx], [bias])`` (attributes ``K``, ``N``,
``bits``, ``block_size``) multiplies ``A [..., K]`` by a weight stored transposed and block
quantized: ``B`` uint8 ``[N, k_blocks, block_size * bits / 8]`` holds the codes of row ``n``
(= output column) packed least significant bits first (4 bits: element ``2i`` in the low
nibble of byte ``i``, ``2i + 1`` in the high one); ``scales`` ``[N, k_blocks]`` (or flat);
``zero_points`` uint8 packed the same way per row (``ceil(k_blocks * bits / 8)`` bytes), or
float like ``scales``, or absent (then ``2^(bits - 1)``, 8 for 4 bits)::

    W[n, k] = (code[n, k] - zero_point[n, k // block_size]) * scale[n, k // block_size]
    Y = A @ W^T (+ bias)

onnxruntime (``accuracy_level`` 0, the default) dequantizes and multiplies in float; this pass
does the same at build time, so TVM compiles an ordinary float MatMul (correctness first: the
weight is stored as float, 8x the 4-bit bytes; a kernel that unpacks int4 in its inner loop is
future work). Exact up to float summation order: the pass is not lossy, and the artifact is
verified against onnxruntime on the original MatMulNBits model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from optc.onnx_utils import FreshNames, attr
from optc.pipeline import Pass, PassResult, register_pass

__all__ = ["ExpandMatMulNBits", "expand_matmul_nbits", "matmul_nbits_nodes", "dequantize_nbits"]

MS = "com.microsoft"


def _is_nbits(node: onnx.NodeProto) -> bool:
    return node.domain == MS and node.op_type == "MatMulNBits"


def matmul_nbits_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMulNBits nodes of ``model``'s main graph."""
    return [n.name or n.output[0] for n in model.graph.node if _is_nbits(n)]


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """``packed`` uint8 ``[R, bytes]`` -> ``[R, count]`` codes, least significant bits first."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    codes = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)[:, :count]


def dequantize_nbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, k: int, n: int,
                     bits: int, block_size: int) -> np.ndarray:
    """The float weight ``W^T [K, N]`` (``scales``' dtype) of a MatMulNBits node; ValueError
    when the operands do not have the documented shapes."""
    blocks = -(-k // block_size)
    if bits not in (2, 4, 8) or b.dtype != np.uint8 or b.size != n * blocks * block_size * bits // 8:
        raise ValueError(f"B of {b.shape} {b.dtype} does not hold {bits}-bit codes of [{n}, {k}] "
                         f"in blocks of {block_size}")
    codes = _unpack(b.reshape(n, -1), bits, blocks * block_size).astype(np.float32)
    if scales.size != n * blocks:
        raise ValueError(f"scales has {scales.size} values, not N * k_blocks = {n * blocks}")
    s = scales.reshape(n, blocks).astype(np.float32)
    if zero_points is None:
        z = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    elif zero_points.dtype == np.uint8:
        z = _unpack(zero_points.reshape(n, -1), bits, blocks).astype(np.float32)
    else:
        z = zero_points.reshape(n, blocks).astype(np.float32)
    rep = np.repeat(np.arange(blocks), block_size)
    w = (codes - z[:, rep]) * s[:, rep]
    return np.ascontiguousarray(w[:, :k].T.astype(scales.dtype))


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.inits = {t.name: t for t in model.graph.initializer}
        self.fresh = FreshNames(model)

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name) if name else None
        return None if t is None else numpy_helper.to_array(t)



def _expand(g: _Graph, node: onnx.NodeProto) -> tuple[list, list, str]:
    """(nodes, new initializers, why not) for one MatMulNBits node."""
    a, b, scales, zp, g_idx, bias = (list(node.input) + [""] * 6)[:6]
    if g_idx:
        return [], [], "g_idx (act-order) is not expanded"
    bv, sv = g.const(b), g.const(scales)
    zv = g.const(zp)
    if bv is None or sv is None or (zp and zv is None):
        return [], [], "B, scales or zero_points is not a constant"
    try:
        w = dequantize_nbits(bv, sv, zv, int(attr(node, "K", 0)), int(attr(node, "N", 0)), int(attr(node, "bits", 4)),
                             int(attr(node, "block_size", 0)))
    except ValueError as err:
        return [], [], str(err)
    base = node.name or node.output[0]
    w_name = g.fresh(f"{b}_dequantized")
    y = node.output[0] if not bias else g.fresh(f"{base}_matmul")
    nodes = [helper.make_node("MatMul", [a, w_name], [y], name=g.fresh(f"{base}_MatMul"))]
    if bias:
        nodes.append(helper.make_node("Add", [y, bias], [node.output[0]], name=g.fresh(f"{base}_bias")))
    return nodes, [numpy_helper.from_array(w, w_name)], ""


def expand_matmul_nbits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy) with each MatMulNBits of its main graph replaced by MatMul on the
    dequantized weight (+ Add of the bias); details: ``expanded`` (count), ``skipped`` (node
    -> why), ``weight_bytes`` (packed -> float)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    nodes, inits, skipped, expanded, packed, unpacked = [], [], {}, 0, 0, 0
    for node in model.graph.node:
        if not _is_nbits(node):
            nodes.append(node)
            continue
        new, new_inits, why = _expand(g, node)
        if not new:
            skipped[node.name or node.output[0]] = why
            nodes.append(node)
            continue
        nodes.extend(new)
        inits.extend(new_inits)
        expanded += 1
        packed += sum(g.const(i).nbytes for i in node.input[1:4] if i and g.const(i) is not None)
        unpacked += sum(numpy_helper.to_array(t).nbytes for t in new_inits)
    if expanded:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        if not any(n.domain == MS for n in model.graph.node):
            kept = [op for op in model.opset_import if op.domain != MS]
            del model.opset_import[:]
            model.opset_import.extend(kept)
    return model, {"expanded": expanded, "skipped": skipped, "weight_bytes": [packed, unpacked]}


@register_pass("expand-matmul-nbits")
class ExpandMatMulNBits(Pass):
    """com.microsoft MatMulNBits (block-quantized 2/4/8-bit weights) -> MatMul on the dequantized float weight.

    Assumes constant ``B``, ``scales`` and ``zero_points`` (no ``g_idx``). Guarantees: each
    MatMulNBits becomes ``MatMul(A, W^T)`` (+ ``Add(bias)``) writing the same output, with
    ``W[n, k] = (code - zero_point) * scale`` per block of ``block_size`` along K (codes
    unpacked least significant bits first; zero point ``2^(bits-1)`` when absent), as
    onnxruntime computes it at ``accuracy_level`` 0; nodes it cannot expand are listed with the
    reason. Not lossy (float summation order only). ``optc compile`` prepends it for such a
    model. Running it again finds nothing to expand.
    """

    def call(self, model: ir.Model) -> PassResult:
        proto = ir.serde.serialize_model(model)
        if not matmul_nbits_nodes(proto):
            return PassResult(model, False, {"expanded": 0, "skipped": {}})
        out, details = expand_matmul_nbits(proto)
        if not details["expanded"]:
            return PassResult(model, False, details)
        new = ir.serde.deserialize_model(out)
        model.graph = new.graph
        return PassResult(model, True, details)

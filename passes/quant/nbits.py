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
verified against onnxruntime on the original MatMulNBits model. The rewrite itself is an
onnxscript rewrite rule (:mod:`.nbits_rule`); this module holds the math.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from optc.pipeline import Pass, PassResult, register_pass

__all__ = ["ExpandMatMulNBits", "expand_matmul_nbits", "expand_nbits_ir", "matmul_nbits_nodes", "dequantize_nbits"]

MS = "com.microsoft"


def _is_nbits(node: onnx.NodeProto | ir.Node) -> bool:
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


def expand_nbits_ir(model: ir.Model) -> dict:
    """Replace, in place, each MatMulNBits of ``model`` by MatMul on the dequantized weight (+ Add
    of the bias), with the rewrite rule of :mod:`.nbits_rule`; details: ``expanded`` (count),
    ``skipped`` (node -> why), ``weight_bytes`` (packed -> float). The packed operands nothing
    reads any more, and the com.microsoft opset where no such node is left, are dropped."""
    from .nbits_rule import rules

    skipped, sizes = {}, [0, 0]
    expanded = rules(model, skipped, sizes).apply_to_model(model)
    graph = model.graph
    if expanded:
        for value in list(graph.initializers.values()):
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                del graph.initializers[value.name]
        if not any(n.domain == MS for n in graph):
            graph.opset_imports.pop(MS, None)
    return {"expanded": expanded, "skipped": skipped, "weight_bytes": sizes}


def expand_matmul_nbits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy) with each MatMulNBits replaced (:func:`expand_nbits_ir`), and the details."""
    irm = ir.serde.deserialize_model(onnx.ModelProto.FromString(model.SerializeToString()))
    details = expand_nbits_ir(irm)
    return ir.serde.serialize_model(irm), details


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
        if not any(_is_nbits(n) for n in model.graph):
            return PassResult(model, False, {"expanded": 0, "skipped": {}})
        details = expand_nbits_ir(model)
        return PassResult(model, bool(details["expanded"]), details)

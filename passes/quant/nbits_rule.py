"""``expand-matmul-nbits`` as an onnxscript rewrite rule (public API: pattern, check, rewrite):
one com.microsoft ``MatMulNBits`` -> ``MatMul`` on the dequantized weight (+ ``Add`` of the
bias). The math is :func:`optc.passes.quant.nbits.dequantize_nbits`; this module holds only the
matching. Imported by :mod:`.nbits`'s functions only, so ``import optc`` does not load the
rewriter.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from optc.onnx_utils import FreshNames, attr

from . import nbits

MS = nbits.MS


def _const(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else np.asarray(value.const_value.numpy())


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def dequantized_weight(node: ir.Node) -> tuple[np.ndarray, int] | str:
    """``(W^T [K, N], packed bytes)`` of one MatMulNBits node, or why it is not expanded."""
    if _input(node, 4) is not None:
        return "g_idx (act-order) is not expanded"
    b, scales, zp = (_const(_input(node, i)) for i in (1, 2, 3))
    if b is None or scales is None or (_input(node, 3) is not None and zp is None):
        return "B, scales or zero_points is not a constant"
    try:
        w = nbits.dequantize_nbits(b, scales, zp, int(attr(node, "K", 0)), int(attr(node, "N", 0)),
                                   int(attr(node, "bits", 4)), int(attr(node, "block_size", 0)))
    except ValueError as err:
        return str(err)
    return w, sum(a.nbytes for a in (b, scales, zp) if a is not None)


class ExpandNBits(RewriteRuleClassBase):
    """``MatMulNBits(A, B, scales, ...)`` -> ``MatMul(A, W^T) [+ bias]``; ``skipped`` (node ->
    why) and ``sizes`` ([packed, float] weight bytes) are filled as the rule runs."""

    def __init__(self, fresh: FreshNames, skipped: dict, sizes: list[int]):
        super().__init__("expand-matmul-nbits")
        self.fresh, self.skipped, self.sizes, self.found = fresh, skipped, sizes, None

    def pattern(self, op, a, b, scales):
        return op.MatMulNBits(a, b, scales, _domain=MS, _allow_other_inputs=True, _allow_other_attributes=True,
                              _outputs=["y"])

    def check(self, context, a, b, scales, y, **_) -> MatchResult:
        node, result = y.producer(), MatchResult()
        res = dequantized_weight(node)
        if isinstance(res, str):
            self.skipped[node.name or y.name] = res
            return result.fail(res, node)
        self.found = (node, *res)
        return result

    def rewrite(self, op, a, b, y, **_):
        node, w, packed = self.found
        self.sizes[0] += packed
        self.sizes[1] += w.nbytes
        base, bias = node.name or y.name, _input(node, 5)
        w_name = self.fresh(f"{b.name}_dequantized")
        w_value = op.initializer(ir.tensor(w, name=w_name), name=w_name)
        if bias is None:
            return op.MatMul(a, w_value, _name=self.fresh(f"{base}_MatMul"))
        mm = op.MatMul(a, w_value, _name=self.fresh(f"{base}_MatMul"), _outputs=[self.fresh(f"{base}_matmul")])
        return op.Add(mm, bias, _name=self.fresh(f"{base}_bias"))


def rules(model: ir.Model, skipped: dict, sizes: list[int]) -> RewriteRuleSet:
    return RewriteRuleSet([ExpandNBits.rule(FreshNames.of_graph(model.graph), skipped, sizes)])

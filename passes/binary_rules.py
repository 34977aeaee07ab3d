"""The local rewrites of the binarization passes as onnxscript rewrite rules (pattern, check,
rewrite), applied with ``RewriteRuleSet.apply_to_model`` (onnxscript's public rewriter API).

* ``sign-to-threshold``: ``Sign(BatchNormalization(x, gamma, beta, mean, var))`` ->
  ``ai.optc::SignThreshold(x, T[, D])`` (:class:`SignOfBatchNorm`);
* ``fuse-binary-threshold``: ``BinaryConv2d(X, W) -> SignThreshold(., T[, D]) [-> MaxPool]`` ->
  ``ai.optc::BinaryConv2dThreshold`` (:class:`ConvThreshold`: one rule with the MaxPool, one
  without, which leaves a fusable MaxPool to the first).

The math is :mod:`optc.passes.binarize`'s (``bn_thresholds``, ``_pool_shape``); this module
holds only the matching. A rule's ``check`` says why a candidate did not match; the reasons are
collected in the list the rule is built with (``details["skipped"]`` of the pass). The rules
remove the nodes they match (onnxscript's ``remove_nodes=True``: nothing else in the graph is
touched, and a match whose inner nodes something else reads fails). ``Sign`` is the whole
pattern of :class:`SignOfBatchNorm` and its check requires a BatchNormalization producer, so
that a BatchNormalization that something else also reads still gets its Sign rewritten; the
pass removes each such BatchNormalization once nothing reads it (:func:`remove_unread`).

onnxscript is imported here, at module level: this module is imported by the passes' ``call``
only, so ``import optc`` does not load the rewriter.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from optc.onnx_utils import attr

from . import optc_ops as ops
from .binarize import _const, _pool_shape, bn_thresholds


def _unique(graph: ir.Graph, name: str, taken: set[str]) -> str:
    """``name``, or ``name_<i>``, free among the graph's initializers and the names this rule
    already handed out (``taken``, updated here)."""
    base, i = name, 0
    while name in graph.initializers or name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


class _Rule(RewriteRuleClassBase):
    """A rule that records why a candidate was skipped, and passes what ``check`` computed to
    ``rewrite`` (onnxscript calls the two back to back for one match)."""

    def __init__(self, name: str, skipped: list[str], rewritten: list[ir.Node] | None = None):
        super().__init__(name)
        self.skipped, self.rewritten, self.found = skipped, rewritten if rewritten is not None else [], None
        self._taken: set[str] = set()

    def skip(self, result: MatchResult, node: ir.Node, reason: str) -> MatchResult:
        self.skipped.append(f"{node.name or node.op_type}: {reason}")
        return result.fail(reason, node)


class SignOfBatchNorm(_Rule):
    """``Sign(BatchNormalization(x, ...))`` -> ``SignThreshold(x, T[, D])`` (math: ``bn_thresholds``).

    The pattern is the ``Sign``; the check requires that its input comes from an inference-mode
    BatchNormalization with constant parameters (which ``rewritten`` collects for the pass to
    remove once nothing reads it)."""

    def pattern(self, op, bn_out):
        return op.Sign(bn_out)

    def check(self, context, bn_out, **_) -> MatchResult:
        result, bn = MatchResult(), bn_out.producer()
        if bn is None or bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            return result.fail("the input of Sign is not a BatchNormalization")
        if len(bn.outputs) != 1 and any(o.uses() for o in bn.outputs[1:]):
            return self.skip(result, bn, "training-mode BatchNormalization")
        params = [_const(v) for v in bn.inputs[1:5]]  # gamma, beta, mean, var
        if any(p is None for p in params):
            return self.skip(result, bn, "parameters are not constant")
        res = bn_thresholds(*params, attr(bn, "epsilon", 1e-5))
        if isinstance(res, str):
            return self.skip(result, bn, res)
        sign = context.root
        base = (bn.name or sign.name or "bn").replace("/", "_").strip("_")
        graph = context.graph_or_function
        names = [_unique(graph, f"{base}_{what}", self._taken) for what in ("threshold", "direction")]
        self.found = (bn, res, names, f"{sign.name or base}_threshold")
        return result

    def rewrite(self, op, **_):
        bn, (t, d), (t_name, d_name), node_name = self.found
        self.rewritten.append(bn)
        inputs = [bn.inputs[0], op.initializer(ir.tensor(t, name=t_name), name=t_name)]
        if np.any(d < 0):  # D is optional: absent means every direction is +1
            inputs.append(op.initializer(ir.tensor(d, name=d_name), name=d_name))
        return op.op("SignThreshold", *inputs, _domain=ops.DOMAIN, _name=node_name)


class ConvThreshold(_Rule):
    """``BinaryConv2d(X, W) -> SignThreshold(., T[, D]) [-> MaxPool]`` -> ``BinaryConv2dThreshold``.

    Two instances: ``pooled`` matches the chain ending in a MaxPool (root: the MaxPool) and fuses
    it when it is a non-overlapping window; the other matches the threshold (root: the
    SignThreshold, which comes first in graph order) and leaves a fusable MaxPool after it to the
    pooled rule. Only the unpooled rule, which sees every conv -> threshold pair, records why a
    pair was skipped (once per conv)."""

    def __init__(self, skipped: list[str], pooled: bool):
        super().__init__("binary-conv-threshold" + ("-pool" if pooled else ""), skipped)
        self.pooled = pooled

    def pattern(self, op, x, w, t):
        conv = op.BinaryConv2d(x, w, _domain=ops.DOMAIN, _allow_other_inputs=True, _allow_other_attributes=True,
                               _outputs=["conv_out"])
        thr = op.SignThreshold(conv, t, _domain=ops.DOMAIN, _allow_other_inputs=True, _outputs=["thr_out"])
        return op.MaxPool(thr, _allow_other_attributes=True, _outputs=["pool_out"]) if self.pooled else thr

    def _why_not(self, conv: ir.Node, thr: ir.Node, conv_out: ir.Value) -> str | None:
        if _has_scales(conv) or conv_out.is_graph_output() or len(conv_out.uses()) != 1:
            return unmatched_conv_reason(conv)
        if any(_const(v) is None for v in thr.inputs[1:] if v is not None):
            return "thresholds are not constant"
        return None

    def check(self, context, conv_out, thr_out, pool_out=None, **_) -> MatchResult:
        result, conv, thr = MatchResult(), conv_out.producer(), thr_out.producer()
        reason = self._why_not(conv, thr, conv_out)
        if reason is not None:
            return result.fail(reason, conv) if self.pooled else self.skip(result, conv, reason)
        pool = _single_pool(thr_out)
        if self.pooled and pool is None:
            return result.fail("the MaxPool after the threshold is not fusable", pool_out.producer())
        if not self.pooled and pool is not None:
            return result.fail("left to the pooled rule: a fusable MaxPool follows", pool)
        self.found = (conv, thr, _pool_shape(pool) if pool is not None else (1, 1))
        return result

    def rewrite(self, op, x, w, **_):
        conv, thr, pool_shape = self.found
        attrs = {a.name: a.value for a in conv.attributes.values()}
        inputs = [x, w, thr.inputs[1]] + ([thr.inputs[2]] if len(thr.inputs) > 2 and thr.inputs[2] is not None else [])
        return op.op("BinaryConv2dThreshold", *inputs, _domain=ops.DOMAIN, _name=f"{conv.name or 'conv'}_threshold",
                     **attrs, pool_shape=list(pool_shape))


def _has_scales(conv: ir.Node) -> bool:
    return len(conv.inputs) > 2 and any(v is not None for v in conv.inputs[2:])


def unmatched_conv_reason(conv: ir.Node) -> str:
    """Why a ``BinaryConv2d`` is not fused: its scales, else its output's readers (for a conv the
    pattern did not even match, e.g. one whose output is a graph output)."""
    if _has_scales(conv):
        return "conv has alpha/bias (run binarize with fold-scales first)"
    return "conv output is not read by exactly one SignThreshold"


def _single_pool(thr_out: ir.Value) -> ir.Node | None:
    """The MaxPool that alone reads the threshold's output, if it is a fusable window."""
    uses = list(thr_out.uses())
    if thr_out.is_graph_output() or len(uses) != 1:
        return None
    pool = uses[0].node
    if pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx") or isinstance(_pool_shape(pool), str):
        return None
    return pool


def sign_to_threshold_rules(skipped: list[str], batchnorms: list[ir.Node]) -> RewriteRuleSet:
    """The rule of ``sign-to-threshold``: reasons go to ``skipped``, the BatchNormalizations
    whose Sign was rewritten to ``batchnorms`` (for :func:`remove_unread`)."""
    return RewriteRuleSet([SignOfBatchNorm.rule("sign-of-batchnorm", skipped, batchnorms)])


def remove_unread(nodes: list[ir.Node]) -> None:
    """Remove each of ``nodes`` that is still in a graph and whose outputs nothing reads (not
    even the graph's outputs)."""
    for node in nodes:
        if node.graph is not None and not any(o.uses() or o.is_graph_output() for o in node.outputs):
            node.graph.remove(node, safe=True)


def conv_threshold_rules(skipped: list[str]) -> RewriteRuleSet:
    """The pooled rule first: a conv -> threshold -> fusable MaxPool chain fuses all three."""
    return RewriteRuleSet([ConvThreshold.rule(skipped, pooled=True), ConvThreshold.rule(skipped, pooled=False)])

"""Cleanup passes a compiler runs before compression: simplify, fold constants, fold
BatchNorm, remove identities, batch matmuls that share a weight, remove dead code.

Each wraps the field-standard implementation (onnx-simplifier, onnxscript's constant folder
and rewrite rules through their public API, onnx-ir's common passes) behind optc's pass
interface, so it can be named in a pipeline, recorded in an artifact, and tested for numerical
equivalence and idempotence (all six are idempotent: a second run changes nothing);
``batch-matmuls`` is optc's own (onnx-ir graph edits).
"""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from optc.pipeline import Pass, PassResult, register_pass

if TYPE_CHECKING:
    from onnxscript.rewriter import RewriteRuleSet


def _graph_signature(model: ir.Model) -> tuple:
    """A cheap structural fingerprint: ops, their inputs/outputs and the initializer names."""
    nodes = tuple(
        (n.domain, n.op_type, tuple(v.name if v is not None else "" for v in n.inputs),
         tuple(v.name for v in n.outputs))
        for n in model.graph
    )
    return nodes, tuple(sorted(model.graph.initializers))


@register_pass("simplify")
class Simplify(Pass):
    """Run onnx-simplifier: constant-fold shape computations, fuse and drop no-op nodes.

    Assumes: static input shapes (the frontend binds them). Guarantees: same outputs as the
    input model (onnxsim checks numerically on random inputs when ``check`` > 0); initializers
    stay initializers (so weights remain parameters for the backends). onnxsim runs in a
    child process (``optc.simplifier``): where it crashes (a C++ abort or segfault on some valid
    models) the model is left as it is and ``details["skipped"]`` says why.
    """

    check: int = field(default=0, metadata={"doc": "random-input checks onnxsim runs itself"})

    def call(self, model: ir.Model) -> PassResult:
        from optc.simplifier import SimplifierFailed, simplify

        before = _graph_signature(model)
        proto = ir.serde.serialize_model(model)
        try:
            simplified, ok = simplify(proto, check_n=self.check)
        except SimplifierFailed as err:
            return PassResult(model, False, {"skipped": f"{err}: the model is left unsimplified"})
        if not ok:
            raise RuntimeError("onnx-simplifier's own check failed")
        new = ir.serde.deserialize_model(simplified)
        modified = _graph_signature(new) != before
        if not modified:
            return PassResult(model, False)
        # In-place contract: move the new graph into the given model object.
        _replace_graph(model, new)
        return PassResult(model, True)


def _replace_graph(model: ir.Model, new: ir.Model) -> None:
    model.graph = new.graph  # opset imports live on the graph in onnx-ir
    model.functions.clear()
    model.functions.update(new.functions)


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant and replace them by initializers.

    Uses onnxscript's constant folder (with shape inference), which also inlines the taken
    branch of an ``If`` whose condition is constant. onnxscript keeps every ``ConstantOfShape``
    by default; here one with a constant shape of at most ``fill_limit`` elements is folded too,
    since shape arithmetic (e.g. the pad amounts of an exported ``F.pad``: ConstantOfShape ->
    Concat -> Reshape -> Pad) stays dynamic for the backend otherwise. Guarantees: outputs
    unchanged; tensors larger than the limits are left as computations (memory stays bounded).
    """

    eliminates = frozenset({"If"})  # those with a constant condition

    input_size_limit: int = field(default=1 << 20, metadata={"doc": "max elements of an input to fold"})
    output_size_limit: int = field(default=1 << 22, metadata={"doc": "max elements of a folded output"})
    fill_limit: int = field(default=4096, metadata={"doc": "max elements of a ConstantOfShape to fold"})

    def call(self, model: ir.Model) -> PassResult:
        import logging

        from onnxscript.optimizer import fold_constants

        # the folder logs a node it could not evaluate ("Evaluation failed: Axis must be a rank-0
        # tensor" for a CumSum axis given as [1], which onnxruntime accepts) as a warning on
        # stderr, and leaves the node as it is: nothing the user needs to act on
        folder_log = logging.getLogger("onnxscript.optimizer._constant_folding")
        level = folder_log.level
        folder_log.setLevel(logging.ERROR)
        try:
            return self._fold(model, fold_constants)
        finally:
            folder_log.setLevel(level)

    def _fold(self, model: ir.Model, fold_constants) -> PassResult:
        modified = False
        for _ in range(MAX_FOLD_ROUNDS):  # a folded Split makes what reads it foldable
            result = fold_constants(model, onnx_shape_inference=True, input_size_limit=self.input_size_limit,
                                    output_size_limit=self.output_size_limit, should_fold=self._should_fold)
            split = _fold_constant_splits(model, self.input_size_limit)
            modified = modified or bool(result.modified) or split
            if not split:
                break
        dce = common.RemoveUnusedNodesPass()(model)
        return PassResult(model, bool(modified or dce.modified))

    def _should_fold(self, node: ir.Node) -> bool | None:
        """True for a small ``ConstantOfShape`` with a constant shape; None (onnxscript's
        default rules) for everything else."""
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.inputs:
            return None
        shape = node.inputs[0].const_value if node.inputs[0] is not None else None
        if shape is None:
            return None
        return int(np.prod(shape.numpy(), dtype=np.int64)) <= self.fill_limit or None


MAX_FOLD_ROUNDS = 8


def _default_opset(model: ir.Model) -> int:
    """The model's default-domain opset ("" or "ai.onnx"; 13 where it names neither)."""
    return model.opset_imports.get("", None) or model.opset_imports.get("ai.onnx", 13)


def _fold_constant_splits(model: ir.Model, size_limit: int) -> bool:
    """Replace each main-graph ``Split`` whose inputs are all constant (at most ``size_limit``
    elements) by initializers of its outputs, computed by onnx's reference implementation.
    onnxscript's folder skips every node with several outputs, so shape arithmetic through a
    Split (tf2onnx's pad amounts: Shape -> Split -> Concat -> Pad) stayed dynamic and TVM's
    importer refused the Pad. Splits whose outputs are graph outputs are left as they are."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    opset = _default_opset(model)
    changed = False
    for node in list(model.graph):
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx") or len(node.outputs) < 2:
            continue
        inputs = [v for v in node.inputs if v is not None]
        consts = [v.const_value for v in inputs]
        if any(c is None or c.size > size_limit for c in consts) or any(o.is_graph_output() for o in node.outputs):
            continue
        proto = ir.serde.serialize_node(node)
        graph = onnx.helper.make_graph(
            [proto], "split", [], [onnx.helper.make_tensor_value_info(o.name, 0, None) for o in node.outputs],
            [onnx.numpy_helper.from_array(c.numpy(), v.name) for v, c in zip(inputs, consts)])
        values = ReferenceEvaluator(onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", opset)])).run(None, {})
        for out, arr in zip(node.outputs, values):
            folded = ir.Value(name=f"{out.name}__folded", const_value=ir.tensor(np.asarray(arr)))
            model.graph.register_initializer(folded)
            out.replace_all_uses_with(folded)
        model.graph.remove(node, safe=True)
        changed = True
    return changed


@register_pass("fuse-bn")
class FuseBatchNorm(Pass):
    """Fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm.

    With s = gamma / sqrt(var + eps) per output channel: W' = W * s (broadcast on the output
    channel axis), b' = (b - mean) * s + beta. Applies only when the producer's output feeds
    the BatchNorm alone and all parameters are constant (onnxscript's rules check both and say
    why a candidate did not match). Guarantees: outputs equal up to fp32 rounding; the fused
    node keeps the producer's name (the rewriter would call it ``node_Conv_0``), so layer names
    stay those of ``optc inspect`` for ``include=``/``exclude=``/``ratios=`` patterns.
    """

    _FUSED = ("Conv", "ConvTranspose", "Gemm")

    @staticmethod
    def rules() -> RewriteRuleSet:
        """The rule set: onnxscript's public BatchNorm-fusion rules (pattern, check, rewrite)."""
        from onnxscript.rewriter import RewriteRuleSet
        from onnxscript.rewriter.rules.common import (
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        )

        return RewriteRuleSet([fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                               fuse_batchnorm_into_gemm_rule])

    def call(self, model: ir.Model) -> PassResult:
        # BatchNorm output -> the producer's name: the fused node writes that output
        names = {}
        for node in model.graph:
            if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx") and node.inputs[0] is not None:
                prod = node.inputs[0].producer()
                if prod is not None and prod.op_type in self._FUSED and prod.name:
                    names[node.outputs[0].name] = prod.name
        count = self.rules().apply_to_model(model)
        if count:
            common.RemoveUnusedNodesPass()(model)
            taken = {n.name for n in model.graph}
            for node in model.graph:
                name = names.get(node.outputs[0].name) if node.op_type in self._FUSED else None
                if name and node.name != name and name not in taken:
                    node.name = name
                    taken.add(name)
        return PassResult(model, bool(count), {"rewrites": count})


class _ScopedIdentityElimination(common.IdentityEliminationPass):
    """onnx-ir's Identity elimination, keeping ``y = Identity(x)`` where ``y`` is an output of
    a subgraph (an ``If`` branch, a ``Loop`` body) and ``x`` is defined in an enclosing graph.

    onnx-ir 1.1 removes those too: the branch output then names an outer value, which ONNX
    forbids ("Graph output is not an output of any node"), and the outer value is renamed.
    (A branch that passes an input through unchanged, as in openWakeWord's classifiers.)
    """

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.domain == "" and len(node.inputs) == 1 and node.outputs:
            x, y = node.inputs[0], node.outputs[0]
            if x is not None and y.is_graph_output() and x.graph is not node.graph:
                return False
        return super()._try_eliminate_identity_node(node)


@register_pass("remove-identity")
class RemoveIdentity(Pass):
    """Remove Identity nodes, rewiring consumers (graph outputs keep their names).

    An Identity that returns an outer-scope value from a subgraph (an ``If`` branch passing a
    value through) is kept: a subgraph output must be defined inside the subgraph.
    """

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, _ScopedIdentityElimination()(model).modified)


@register_pass("dce")
class DeadCodeElimination(Pass):
    """Remove nodes and initializers no graph output depends on, and unused opset imports."""

    def call(self, model: ir.Model) -> PassResult:
        a = common.RemoveUnusedNodesPass()(model)
        b = common.RemoveUnusedOpsetsPass()(model)
        return PassResult(model, bool(a.modified or b.modified))


def _weight_key(node: ir.Node) -> tuple | None:
    """What a Gemm / MatMul must share with another to be batched with it: op, the constant
    right operand, the bias (Gemm) and the attributes; None for a node that does not qualify
    (left operand not a static 2-D ``[M, K]`` with ``M <= BATCH_ROWS``, right operand not an
    initializer, a transposed left operand)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul") or len(node.outputs) != 1:
        return None
    a, b = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if a is None or b is None or not b.is_initializer() or a.shape is None or len(a.shape) != 2:
        return None
    if b.const_value is None or b.const_value.size < BatchMatmuls.MIN_WEIGHT:
        return None  # a small weight stays in cache: batching would only add the Concat and Split
    if not isinstance(a.shape[0], int) or not isinstance(a.shape[1], int) or a.shape[0] > BatchMatmuls.BATCH_ROWS:
        return None
    attrs = tuple(sorted((k, repr(v.value)) for k, v in node.attributes.items()))
    if ("transA", "1") in attrs:
        return None
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None and (not c.is_initializer() or c.shape is None
                          or (len(c.shape) == 2 and c.shape[0] != 1) or len(c.shape) > 2):
        return None  # a bias with a row per row of the output does not stack
    return node.op_type, id(b), id(c) if c is not None else None, attrs


def _ancestors(node: ir.Node) -> set[int]:
    """ids of every node ``node`` depends on (through any input)."""
    seen: set[int] = set()
    stack = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(v.producer() for v in n.inputs if v is not None and v.producer() is not None)
    return seen


@register_pass("batch-matmuls")
class BatchMatmuls(Pass):
    """Batch Gemm / MatMul nodes that multiply independent small left operands (``[M, K]``,
    ``M <= 64``) by the same constant weight (of at least 4,096 elements) into one: ``Concat``
    of the left operands along the rows, one Gemm / MatMul, ``Split`` back. An unrolled LSTM's input projections (one
    ``x_t @ W_ih`` per time step, exported step by step) read the 6.5 MB weight once instead
    of 20 times. Nodes where one depends on another's output (the recurrent ``h @ W_hh``
    steps) are never batched together; the graph is sorted again afterwards."""

    BATCH_ROWS = 64
    MIN_WEIGHT = 4096  # elements (16 KB of float32)

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        weighted = [n for n in graph if n.op_type in ("Gemm", "MatMul") and len(n.inputs) > 1
                    and n.inputs[1] is not None and n.inputs[1].is_initializer()]
        if sum(1 for n in weighted if n.inputs[0] is not None and n.inputs[0].shape is None) > 1:
            common.ShapeInferencePass()(model)  # the left operands' shapes decide (no shapes yet)
        groups: dict[tuple, list[list[ir.Node]]] = {}
        for node in list(graph):
            key = _weight_key(node)
            if key is None:
                continue
            if key not in groups:  # the first of its weight: nothing to check against
                groups[key] = [[node]]
                continue
            above = _ancestors(node)
            for group in groups[key]:
                if not any(id(member) in above for member in group):
                    group.append(node)
                    break
            else:
                groups[key].append([node])
        modified = False
        opset = _default_opset(model)
        taken = set(graph.initializers)
        for group in (g for gs in groups.values() for g in gs if len(g) > 1):
            name = f"{group[0].name or 'matmul'}_batch_rows"
            while name in taken:  # unnamed nodes, or a name already there
                name += "_"
            taken.add(name)
            self._merge(graph, group, opset, name)
            modified = True
        if modified:
            graph.sort()
        return PassResult(model, modified)

    @staticmethod
    def _merge(graph: ir.Graph, group: list[ir.Node], opset: int, sizes_name: str) -> None:
        first = group[0]
        rows = [int(n.inputs[0].shape[0]) for n in group]
        cat = ir.node("Concat", [n.inputs[0] for n in group], attributes={"axis": 0})
        cat.outputs[0].shape = ir.Shape([sum(rows), first.inputs[0].shape[1]])
        cat.outputs[0].dtype = first.inputs[0].dtype
        mm = ir.node(first.op_type, [cat.outputs[0], *first.inputs[1:]],
                     attributes={k: v for k, v in first.attributes.items()})
        if opset >= 13:  # the sizes are an input from opset 13, an attribute before
            sizes = ir.val(sizes_name, const_value=ir.tensor(np.array(rows, np.int64)))
            graph.register_initializer(sizes)
            split = ir.node("Split", [mm.outputs[0], sizes], num_outputs=len(group), attributes={"axis": 0})
        else:
            split = ir.node("Split", [mm.outputs[0]], num_outputs=len(group), attributes={"axis": 0, "split": rows})
        for out, n in zip(split.outputs, group):
            out.shape, out.dtype = n.outputs[0].shape, n.outputs[0].dtype
        ir.convenience.replace_nodes_and_values(graph, group[-1], group, [cat, mm, split],
                                                [n.outputs[0] for n in group], list(split.outputs))

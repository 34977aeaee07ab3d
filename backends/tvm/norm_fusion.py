"""Layer normalization written out in elementary ops, found and lowered as one layer_norm.

Exporters before ONNX opset 17 (torch's ``nn.LayerNorm`` at opset <= 16, tf2onnx, hand-written
blocks) write a layer norm as

    mean = ReduceMean(x, axes=[-1]); d = Sub(x, mean); var = ReduceMean(Pow(d, 2) | Mul(d, d))
    y = Add(Mul(Div(d, Sqrt(Add(var, eps))), scale), bias)

Imported as written, that is 6-8 Relax kernels per normalization (two reductions and the
elementwise ops between them, which FuseOps cannot merge across a reduction), each a VM call
with its own intermediate tensor: hey jarvis (openWakeWord, 4 of them) ran ~28 of its ~40
kernel calls on them. :func:`fuse_layer_norms` rewrites each match, in the model handed to
TVM's importer only (the package's ONNX model and what onnxruntime verifies are untouched), into
one ``optc.lowering::LayerNorm(x, scale, bias, axis=-1, epsilon=eps)`` node (LayerNormalization-17's
meaning at any opset; a domain of its own, so ONNX's checker leaves it alone in models of older
opsets), which optc's converter (``onnx_ops.fused_layer_norm``) lowers to
``relax.op.nn.layer_norm``: one kernel. Same formula, another float summation order; the
verification against onnxruntime on the original graph judges the result as any float kernel.

Matched only where the rewrite is exact in meaning: both ReduceMeans over the last axis alone
with keepdims, the exponent exactly 2, and ``eps``, ``scale`` and ``bias`` constants, ``eps`` a
single value and ``scale``/``bias`` 1-D of the normalized axis' length (known from the bound
input shapes), so their broadcast is the one LayerNormalization applies. The public onnxscript
rewriter API does the matching (pattern / check / rewrite, commuted operand orders included).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

DOMAIN, OP = "optc.lowering", "LayerNorm"


def _const(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else np.asarray(tensor.numpy())


def _last_axis_mean(node: ir.Node, rank: int | None) -> bool:
    """A ReduceMean over the last axis alone, keeping it (attribute axes before opset 18, the
    optional second input from 18 on)."""
    if int(node.attributes.get_int("keepdims", 1)) != 1 or node.attributes.get_int("noop_with_empty_axes", 0):
        return False
    attr = node.attributes.get("axes")
    axes = list(attr.as_ints()) if attr is not None else None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        const = _const(node.inputs[1])
        axes = None if const is None else [int(a) for a in const.reshape(-1)]
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _rules():
    from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet, pattern

    class DecomposedLayerNorm(RewriteRuleClassBase):
        """ReduceMean / Sub / Pow|Mul / ReduceMean / Add / Sqrt / Div / Mul / Add -> LayerNormalization."""

        def pattern(self, op, x, two, eps, scale, bias):
            mean = op.ReduceMean(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["mean"])
            d = op.Sub(x, mean)
            squared = pattern.OrValue([op.Pow(d, two), op.Mul(d, d)])
            var = op.ReduceMean(squared, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["var"])
            normalized = op.Div(d, op.Sqrt(op.Add(var, eps)))
            return op.Add(op.Mul(normalized, scale), bias)

        def check(self, context, x, eps, scale, bias, **found) -> MatchResult:
            result = MatchResult()
            mean, var, two = found["mean"], found["var"], found.get("two")
            shape = x.shape
            rank = len(shape) if shape is not None else None
            if not all(_last_axis_mean(v.producer(), rank) for v in (mean, var)):
                return result.fail("not a mean over the last axis alone with keepdims")
            exponent = _const(two) if two is not None else np.asarray(2.0)
            if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) != 2.0:
                return result.fail("the exponent is not a constant 2")
            e, s, b = _const(eps), _const(scale), _const(bias)
            if e is None or e.size != 1 or s is None or b is None:
                return result.fail("eps, scale or bias is not a constant")
            width = shape[-1] if shape is not None and rank else None
            if not isinstance(width, int) or s.shape != (width,) or b.shape != (width,):
                return result.fail("scale/bias are not 1-D over the normalized axis (or its length is unknown)")
            if x.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE) or s.dtype != b.dtype:
                return result.fail("not a float layer norm")
            return result

        def rewrite(self, op, x, eps, scale, bias, **_):
            return op.LayerNorm(x, scale, bias, axis=-1, epsilon=float(_const(eps).reshape(-1)[0]), _domain=DOMAIN)

    return RewriteRuleSet([DecomposedLayerNorm.rule()], commute=True)


def fuse_layer_norms(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> tuple[onnx.ModelProto, int]:
    """``model`` with every decomposed layer norm of its main graph as one ``LayerNorm`` node
    (a new model; ``model`` is not changed), and how many were fused. ``shapes``: the
    static input shapes the build binds, from which ONNX shape inference gives the normalized
    axis' length."""
    from optc.errors import InvalidModelError
    from optc.frontend import bind_input_shapes
    from optc.onnx_utils import infer_shapes

    if not any(n.op_type == "ReduceMean" for n in model.graph.node):
        return model, 0
    try:
        bound, _ = bind_input_shapes(model, {k: tuple(v) for k, v in shapes.items()})
    except InvalidModelError:
        return model, 0
    inferred = infer_shapes(bound, fallback=False)
    if inferred is None:  # no shapes, no fusion: the ops are imported as written
        return model, 0
    ir_model = ir.serde.deserialize_model(inferred)
    count = _rules().apply_to_model(ir_model)
    if not count:
        return model, 0
    ir_model.opset_imports[DOMAIN] = 1
    return ir.serde.serialize_model(ir_model), count

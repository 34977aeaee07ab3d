"""``expand-qoperator`` as onnxscript rewrite rules (public API: pattern, check, rewrite): one
rule per QOperator op kind of :data:`.qoperator.EXPANDED`, each replacing one node by the QDQ
graph it stands for, ``QuantizeLinear(X(DequantizeLinear(a, s_a, z_a), ...), s_y, z_y)``.

The check builds a :class:`Plan` (which operands are dequantized, on which axis, the bias
scale, the attributes copied, the output's quantization) or says why the node is not expanded
(a per-tensor scale with several values, a per-channel weight scale that is not a constant,
``channels_last`` pools); the rewrite only writes the plan out. Imported by
:mod:`.qoperator`'s functions only, so ``import optc`` does not load the rewriter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from optc.onnx_utils import FreshNames

MS = "com.microsoft"


@dataclass
class Dq:
    """One DequantizeLinear: ``x`` with ``scale`` (a value, or a new constant's array and
    its base name), ``zp`` (None: no zero point) and ``axis`` (None: per tensor); ``scale``
    None: ``x`` is a float op's operand as it is (QLinearWhere's condition)."""

    x: ir.Value
    scale: ir.Value | tuple[np.ndarray, str] | None
    zp: ir.Value | None
    axis: int | None
    base: str


@dataclass
class Plan:
    """What one QOperator node becomes: the float op ``fop`` on the dequantized operands
    ``dqs`` with ``attrs``, then QuantizeLinear with ``out_q`` = (scale, zero point), or
    (``out_q`` None, QGemm without ``y_scale``) the float output itself."""

    node: ir.Node
    fop: str
    dqs: list[Dq]
    attrs: list[ir.Attr] = field(default_factory=list)
    out_q: tuple[ir.Value, ir.Value | None] | None = None


def _in(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _const(v: ir.Value | None) -> np.ndarray | None:
    t = None if v is None else ir.convenience.get_const_tensor(v)
    return None if t is None else np.asarray(t.numpy())


def _size(v: ir.Value | None) -> int | None:
    """Elements of a constant, or of a graph input with a static shape (a scale given at run
    time is per-tensor when its shape says so); None when not known."""
    c = _const(v)
    if c is not None:
        return int(c.size)
    if v is not None and v.is_graph_input() and v.shape is not None and all(isinstance(d, int) for d in v.shape):
        return int(np.prod(list(v.shape)))
    return None


def _per_tensor(*scales: ir.Value | None) -> str | None:
    """Why a scale that must be one number is not (None: all are)."""
    for s in scales:
        n = _size(s)
        if n is not None and n != 1:
            return f"scale {s.name!r} has {n} values where one is expected"
    return None


def _base(node: ir.Node) -> str:
    return node.name or node.outputs[0].name


def _conv(node: ir.Node) -> Plan | str:
    x, xs, xz, w, ws, wz, ys, yz, b = (_in(node, i) for i in range(9))
    if why := _per_tensor(xs, ys):
        return why
    nw, base = _size(ws), _base(node)
    if nw is None:
        return f"weight scale {ws.name!r} is not a constant"
    axis = 0 if nw > 1 else None
    dqs = [Dq(x, xs, xz, None, f"{base}_x"), Dq(w, ws, wz, axis, f"{base}_w")]
    if b is not None:
        sx, sw = _const(xs), _const(ws)
        if sx is None or sw is None:
            return f"input scale {xs.name!r} is not a constant (the bias scale is x_scale * w_scale)"
        scale = sx.astype(np.float32).reshape(-1)[0] * sw.astype(np.float32)
        dqs.append(Dq(b, (scale.reshape(-1 if nw > 1 else ()).astype(np.float32), f"{base}_bias_scale"), None,
                      axis, f"{base}_b"))
    return Plan(node, "Conv", dqs, list(node.attributes.values()), (ys, yz))


def _matmul(node: ir.Node) -> Plan | str:
    a, as_, az, b, bs, bz, ys, yz = (_in(node, i) for i in range(8))
    if why := _per_tensor(as_, ys):
        return why
    nb, base = _size(bs), _base(node)
    if nb is None:
        return f"B scale {bs.name!r} is not a constant"
    axis = None
    if nb > 1:
        cb = _const(b)
        if cb is None:
            return f"per-column scale of a B that is not a constant ({b.name!r})"
        axis = cb.ndim - 1  # one scale per column of B
    return Plan(node, "MatMul", [Dq(a, as_, az, None, f"{base}_a"), Dq(b, bs, bz, axis, f"{base}_b")], [], (ys, yz))


def _qgemm(node: ir.Node) -> Plan | str:
    a, as_, az, b, bs, bz, c, ys, yz = (_in(node, i) for i in range(9))
    if why := _per_tensor(as_, *([ys] if ys is not None else [])):
        return why
    nb, base = _size(bs), _base(node)
    if nb is None:
        return f"B scale {bs.name!r} is not a constant"
    trans_b, alpha = node.attributes.get_int("transB", 0), node.attributes.get_float("alpha", 1.0)
    axis = None if nb == 1 else (0 if trans_b else 1)  # per column of op(B): rows of B when transposed
    dqs = [Dq(a, as_, az, None, f"{base}_a"), Dq(b, bs, bz, axis, f"{base}_b")]
    if c is not None:  # int32, zero point 0, scale alpha * a_scale * b_scale
        sa, sb = _const(as_), _const(bs)
        if sa is None or sb is None:
            return f"A scale {as_.name!r} is not a constant (the bias scale is alpha * a_scale * b_scale)"
        scale = np.float32(alpha) * sa.astype(np.float32).reshape(-1)[0] * sb.astype(np.float32)
        dqs.append(Dq(c, (scale.reshape(-1 if nb > 1 else ()).astype(np.float32), f"{base}_bias_scale"), None,
                      None if nb == 1 else 0, f"{base}_c"))
    return Plan(node, "Gemm", dqs, list(node.attributes.values()), None if ys is None else (ys, yz))


def _binary(node: ir.Node) -> Plan | str:
    a, as_, az, b, bs, bz, ys, yz = (_in(node, i) for i in range(8))
    if why := _per_tensor(as_, bs, ys):
        return why
    base = _base(node)
    return Plan(node, node.op_type.removeprefix("QLinear"),
                [Dq(a, as_, az, None, f"{base}_a"), Dq(b, bs, bz, None, f"{base}_b")], [], (ys, yz))


def _concat(node: ir.Node) -> Plan | str:
    ys, yz, rest = _in(node, 0), _in(node, 1), list(node.inputs[2:])
    if len(rest) % 3:
        return "inputs are not (X, scale, zero point) triples"
    if why := _per_tensor(ys, *rest[1::3]):
        return why
    base = _base(node)
    dqs = [Dq(rest[k], rest[k + 1], rest[k + 2], None, f"{base}_x{k // 3}") for k in range(0, len(rest), 3)]
    return Plan(node, "Concat", dqs, list(node.attributes.values()), (ys, yz))


def _unary(node: ir.Node) -> Plan | str:
    """(X, X_scale, X_zp, Y_scale, Y_zp): the pools, LeakyRelu, Sigmoid."""
    x, xs, xz, ys, yz = (_in(node, i) for i in range(5))
    if why := _per_tensor(xs, ys):
        return why
    if node.attributes.get_int("channels_last", 0):
        return "channels_last=1 (NHWC) is not expanded"
    attrs = [a for name, a in node.attributes.items() if name != "channels_last"]
    return Plan(node, node.op_type.removeprefix("QLinear"), [Dq(x, xs, xz, None, f"{_base(node)}_x")], attrs, (ys, yz))


def _softmax(node: ir.Node) -> Plan | str:
    """(X, X_scale, X_zp, Y_scale, Y_zp), attributes ``axis`` (default -1) and ``opset``: the
    Softmax version whose meaning of ``axis`` applies. Before 13 the input is coerced to 2-D
    at ``axis`` (softmax over all axes from ``axis`` on), from 13 on it is one axis. The
    Softmax written has the graph's opset; it is written when both readings agree: the same
    side of 13, or ``axis`` the last axis (where they are the same)."""
    x, xs, xz, ys, yz = (_in(node, i) for i in range(5))
    if why := _per_tensor(xs, ys):
        return why
    axis, opset = node.attributes.get_int("axis", -1), node.attributes.get_int("opset", 0)
    graph_opset = node.graph.opset_imports.get("", 0) if node.graph is not None else 0
    rank = None if x.shape is None else len(x.shape)
    last = axis == -1 or (rank is not None and axis == rank - 1)
    if (opset < 13) != (graph_opset < 13) and not last:
        return (f"opset={opset} softmax over axis {axis} of a rank-{rank} input in an opset-{graph_opset} graph "
                "(the two readings of axis differ unless it is the last)")
    attrs = [ir.AttrInt64("axis", axis)]
    return Plan(node, "Softmax", [Dq(x, xs, xz, None, f"{_base(node)}_x")], attrs, (ys, yz))


def _where(node: ir.Node) -> Plan | str:
    """(condition, X, X_scale, X_zp, Y, Y_scale, Y_zp, Z_scale, Z_zp): Where on the dequantized
    X and Y, the condition as it is."""
    c, x, xs, xz, y, ys, yz, zs, zz = (_in(node, i) for i in range(9))
    if why := _per_tensor(xs, ys, zs):
        return why
    base = _base(node)
    return Plan(node, "Where", [Dq(c, None, None, None, f"{base}_c"), Dq(x, xs, xz, None, f"{base}_x"),
                                Dq(y, ys, yz, None, f"{base}_y")], [], (zs, zz))


# (domain, op) -> how its plan is made; the float op of each is .qoperator.EXPANDED's
PLANS = {("", "QLinearConv"): _conv, ("", "QLinearMatMul"): _matmul, (MS, "QGemm"): _qgemm,
         (MS, "QLinearAdd"): _binary, (MS, "QLinearMul"): _binary, (MS, "QLinearConcat"): _concat,
         (MS, "QLinearSoftmax"): _softmax, (MS, "QLinearWhere"): _where,
         **{(MS, op): _unary for op in ("QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu",
                                        "QLinearSigmoid")}}


class ExpandQOperator(RewriteRuleClassBase):
    """One QOperator op kind ``(domain, op_type)`` -> its :class:`Plan` written out;
    ``skipped`` (node -> why) and ``expanded`` (op type -> count) are filled as it runs."""

    def __init__(self, key: tuple[str, str], fresh: FreshNames, skipped: dict, expanded: dict):
        super().__init__(f"expand-qoperator-{key[1]}")
        self.domain, self.op_type = key
        self.fresh, self.skipped, self.expanded, self.plan = fresh, skipped, expanded, None

    def pattern(self, op, x):
        domain = {"_domain": self.domain} if self.domain else {}
        return getattr(op, self.op_type)(x, **domain, _allow_other_inputs=True, _allow_other_attributes=True,
                                         _outputs=["y"])

    def check(self, context, x, y, **_) -> MatchResult:
        node, result = y.producer(), MatchResult()
        plan = PLANS[(self.domain, self.op_type)](node)
        if isinstance(plan, str):
            self.skipped[_base(node)] = f"{node.op_type}: {plan}"
            return result.fail(plan, node)
        self.plan = plan
        return result

    def rewrite(self, op, x, y, **_):
        plan, fresh = self.plan, self.fresh
        self.expanded[plan.node.op_type] = self.expanded.get(plan.node.op_type, 0) + 1
        base = _base(plan.node)
        ins = [self._dq(op, d) for d in plan.dqs]
        attrs = {a.name: a for a in plan.attrs}
        if plan.out_q is None:  # QGemm without y_scale: the float op writes the node's output itself
            return getattr(op, plan.fop)(*ins, _name=fresh(f"{base}_{plan.fop}"), **attrs)
        f = getattr(op, plan.fop)(*ins, _name=fresh(f"{base}_{plan.fop}"), _outputs=[fresh(f"{base}_float")], **attrs)
        scale, zp = plan.out_q
        scale = self._float32(op, scale, base)
        return op.QuantizeLinear(f, scale, *([zp] if zp is not None else []), _name=fresh(f"{base}_QuantizeLinear"))

    def _dq(self, op, d: Dq) -> ir.Value:
        fresh = self.fresh
        if d.scale is None:  # an operand the float op takes as it is
            return d.x
        if isinstance(d.scale, tuple):  # a new constant (a bias scale)
            name = fresh(d.scale[1])
            scale = op.initializer(ir.tensor(d.scale[0], name=name), name=name)
        else:
            scale = self._float32(op, d.scale, d.base)
        axis = {} if d.axis is None else {"axis": d.axis}
        return op.DequantizeLinear(d.x, scale, *([d.zp] if d.zp is not None else []), **axis,
                                   _outputs=[fresh(f"{d.base}_dq")], _name=fresh(f"{d.base}_DequantizeLinear"))

    def _float32(self, op, scale: ir.Value, base: str) -> ir.Value:
        """A float16 / bfloat16 scale cast to float32: the expanded ops compute in float32 as
        onnxruntime's integer kernels do (float16 arithmetic rounds results one step off)."""
        c = _const(scale)
        low = (c.dtype == np.float16) if c is not None else (
            scale.is_graph_input() and scale.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16))
        if not low:
            return scale
        return op.Cast(scale, to=ir.DataType.FLOAT, _outputs=[self.fresh(f"{base}_scale_f32")],
                       _name=self.fresh(f"{base}_Cast"))


def rules(model: ir.Model, skipped: dict, expanded: dict) -> RewriteRuleSet:
    """The rule set, one rule per op kind of :data:`PLANS`, sharing one fresh-name source."""
    fresh = FreshNames.of_graph(model.graph)
    return RewriteRuleSet([ExpandQOperator.rule(key, fresh, skipped, expanded) for key in PLANS])

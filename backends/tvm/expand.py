"""Expand standard ONNX ops that TVM's importer cannot convert into their ONNX function bodies.

Many ONNX ops are defined by a function of simpler ops (Celu, Swish, CenterCropPad,
NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, RotaryEmbedding, Attention-23, ...): the
schema carries the body, fixed or built from the node's attributes and input types
("context-dependent"). Before the import, every default-domain node whose op type has no
converter (or whose converter is for another op of the same name: TVM's ``Attention`` is
com.microsoft's) is replaced by its body, with names made unique, formal inputs and outputs
bound to the node's, attribute references resolved from the node or the schema's defaults;
nested function ops are expanded in turn (bounded depth). Numerically this is the op's
definition: the result is verified against onnxruntime on the original model like any other.
"""

from __future__ import annotations

import onnx
from onnx import helper

from optc.onnx_utils import infer_shapes

# ops whose TVM converter is another op with the same name: always expanded
FORCE_EXPAND = frozenset({"Attention"})
MAX_DEPTH = 4


def function_ops() -> set[str]:
    """Default-domain op types that have a function body in some opset."""
    return {s.name for s in onnx.defs.get_all_schemas_with_history()
            if s.domain in ("", "ai.onnx") and (s.has_function or s.has_context_dependent_function)}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _body(node: onnx.NodeProto, opset: int, types: dict) -> onnx.FunctionProto | None:
    """The function body of ``node`` at ``opset`` (None if its schema has none)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except Exception:
        return None
    fp = onnx.FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= opset]
    if schema.has_function and plain:
        fp.ParseFromString(schema.get_function_with_opset_version(max(plain)))
        return fp
    ctx = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if schema.has_context_dependent_function and ctx:
        in_types = []
        for name in node.input:
            t = types.get(name)
            if name and t is None:
                return None  # the body depends on input types inference did not give
            in_types.append((t or onnx.TypeProto()).SerializeToString())
        raw = schema.get_context_dependent_function_with_opset_version(max(ctx), node.SerializeToString(), in_types)
        if not raw:
            return None
        fp.ParseFromString(raw)
        return fp
    return None


def _attr_values(node: onnx.NodeProto, opset: int) -> dict[str, onnx.AttributeProto]:
    schema = onnx.defs.get_schema(node.op_type, opset, "")
    values = {name: a.default_value for name, a in schema.attributes.items()
              if a.default_value.type != onnx.AttributeProto.UNDEFINED}
    values.update({a.name: a for a in node.attribute})
    return values


def _inline(node: onnx.NodeProto, fp: onnx.FunctionProto, prefix: str, attrs: dict) -> list[onnx.NodeProto]:
    rename = {f: a for f, a in zip(fp.input, list(node.input) + [""] * len(fp.input))}
    rename.update({f: a for f, a in zip(fp.output, node.output)})

    def name(n: str) -> str:
        return n if n == "" else rename.setdefault(n, f"{prefix}{n}")

    out = []
    for k, fn in enumerate(fp.node):
        new = onnx.NodeProto()
        new.CopyFrom(fn)
        new.name = f"{prefix}{fn.name or k}"
        del new.input[:]
        new.input.extend(name(i) for i in fn.input)
        del new.output[:]
        new.output.extend(name(o) for o in fn.output)
        del new.attribute[:]
        for a in fn.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    b = onnx.AttributeProto()
                    b.CopyFrom(attrs[a.ref_attr_name])
                    b.name = a.name
                    new.attribute.append(b)
            else:
                new.attribute.append(a)
                for g in [new.attribute[-1].g] if a.type == onnx.AttributeProto.GRAPH else new.attribute[-1].graphs:
                    _rename_outer(g, rename)
        out.append(_constant_as_tensor(new))
    return out


def _rename_outer(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename, in place, the function-scope values a body's subgraph (a Scan or Loop body, an If
    branch) reads from the enclosing scope, as :func:`_inline` renamed them outside it; names
    the subgraph defines itself stay (nested subgraphs likewise)."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    outer = {k: v for k, v in rename.items() if k not in local}
    for n in graph.node:
        n.input[:] = [outer.get(i, i) for i in n.input]
        for a in n.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                _rename_outer(g, outer)
    for v in graph.output:
        v.name = outer.get(v.name, v.name)


_CONSTANT_FORMS = {"value_float": onnx.TensorProto.FLOAT, "value_floats": onnx.TensorProto.FLOAT,
                   "value_int": onnx.TensorProto.INT64, "value_ints": onnx.TensorProto.INT64}


def _constant_as_tensor(node: onnx.NodeProto) -> onnx.NodeProto:
    """A Constant written with ``value_float(s)`` / ``value_int(s)`` (as function bodies write
    them) in the ``value`` tensor form that every importer takes."""
    if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name not in _CONSTANT_FORMS:
        return node
    a = node.attribute[0]
    value = helper.get_attribute_value(a)
    dims = [] if a.name in ("value_float", "value_int") else [len(value)]
    tensor = helper.make_tensor("value", _CONSTANT_FORMS[a.name], dims,
                                [value] if not dims else list(value))
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("value", tensor))
    return node


def expand_functions(model: onnx.ModelProto, convertible: set[str]) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with every default-domain node whose op is not in ``convertible`` (or is in
    :data:`FORCE_EXPAND`) replaced by its function body; returns (model, expanded op types).
    Nodes without a body are left for the importer to report."""
    opset = _opset(model)
    expanded: list[str] = []
    for depth in range(MAX_DEPTH):
        targets = {k for k, n in enumerate(model.graph.node) if n.domain in ("", "ai.onnx")
                   and (n.op_type not in convertible or n.op_type in FORCE_EXPAND)}
        if not targets:
            break
        inferred = infer_shapes(model)
        types = {vi.name: vi.type for vi in list(inferred.graph.input) + list(inferred.graph.value_info)
                 + list(inferred.graph.output)}
        types.update({t.name: helper.make_tensor_type_proto(t.data_type, list(t.dims))
                      for t in model.graph.initializer})
        nodes, changed = [], False
        for k, node in enumerate(model.graph.node):
            fp = _body(node, opset, types) if k in targets else None
            if fp is None or not fp.node:
                nodes.append(node)
                continue
            nodes.extend(_inline(node, fp, f"_x{depth}_{k}_", _attr_values(node, opset)))
            expanded.append(node.op_type)
            changed = True
        if not changed:
            break
        out = onnx.ModelProto()
        out.CopyFrom(model)
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        model = out
    if expanded:
        model = _drop_empty_concat_inputs(_fold_shapes(model))
    return model, sorted(set(expanded))


def _drop_empty_concat_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Concat inputs of length 0 along the axis (a body's zero padding when the pad is 0,
    e.g. CausalConvWithState with kernel 1) dropped, one input always kept: the result is the
    same, and TVM's VM executable could not load back the zero-size constant they became."""
    inferred = infer_shapes(model, data_prop=True, fallback=False)
    if inferred is None:  # shapes are a best effort: the model stays as it is
        return model
    dims = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in [*inferred.graph.value_info, *inferred.graph.input] if vi.type.tensor_type.HasField("shape")}
    dims.update({t.name: list(t.dims) for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        empty = [x for x in node.input if x in dims and dims[x] and dims[x][axis % len(dims[x])] == 0]
        keep = [x for x in node.input if x not in empty]
        if empty and keep:
            node.input[:] = keep
    return model


def _fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Function bodies compute shapes at run time (Shape, Gather, Concat, ...) that the
    importer cannot take as tensors; with the inputs' shapes bound they are constants:
    onnx-simplifier folds them (the model unchanged where it cannot)."""
    from optc.simplifier import simplify

    try:
        simplified, ok = simplify(model)  # in a child process: onnxsim crashes on some models
    except Exception:
        return model
    if not ok:
        return model
    # folded integer tensors (shapes, axes) as Constant nodes: the importer keeps initializers
    # as function parameters, and a shape taken from a parameter is symbolic
    old = {t.name for t in model.graph.initializer}
    ints = [t for t in simplified.graph.initializer if t.name not in old and t.data_type == onnx.TensorProto.INT64]
    if ints:
        names = {t.name for t in ints}
        kept = [t for t in simplified.graph.initializer if t.name not in names]
        del simplified.graph.initializer[:]
        simplified.graph.initializer.extend(kept)
        consts = [helper.make_node("Constant", [], [t.name], name=f"_const_{t.name}", value=t) for t in ints]
        nodes = consts + list(simplified.graph.node)
        del simplified.graph.node[:]
        simplified.graph.node.extend(nodes)
        drop = {vi.name for vi in simplified.graph.input} & names
        if drop:
            inputs = [vi for vi in simplified.graph.input if vi.name not in drop]
            del simplified.graph.input[:]
            simplified.graph.input.extend(inputs)
    return simplified

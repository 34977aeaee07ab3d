"""The verification reference computes Sigmoid by its formula, not onnxruntime's kernel.

onnxruntime's CPU Sigmoid for float32 (MLAS's logistic approximation; float16 runs it too) is
not the function in its tail: measured against float64, relative error 1.5e-3 on [-10, -5),
0.58 on [-16, -10) and 4.1 near -20, with plateaus of equal outputs for distinct inputs. The
absolute error is below 3e-5, but a ranking after it is not: a YOLO-style export (isbnx,
Sigmoid class scores -> TopK 300 -> GatherElements of the boxes) on sample inputs, where every
score is tiny, had 300 TopK values with only 108 distinct ones in onnxruntime's output, whose
ties TopK broke by index; optc's exact sigmoid ranked them by value, and 213 of 300 boxes
"differed" (max abs error 445). Its own ``Neg -> Exp -> Add 1 -> Reciprocal`` is exact to
1.4e-7 (onnxruntime's Exp is), so the reference model gets that instead: the ONNX definition
``1 / (1 + exp(-x))`` computed by onnxruntime. Only the reference changes; the artifact is
still compiled from the original model. float64 Sigmoid (not MLAS) is left as it is.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .onnx_utils import all_nodes, infer_shapes

# element types whose onnxruntime CPU Sigmoid is the approximate MLAS kernel
APPROXIMATE = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16})


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value of ``model`` (subgraphs included) that shape
    inference, the declared inputs/outputs and the initializers give."""
    types: dict[str, int] = {}

    def visit(g: onnx.GraphProto) -> None:
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            types[t.name] = t.data_type
        for n in g.node:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    visit(sub)

    visit(infer_shapes(model).graph)
    return types


def _rewrite(graph: onnx.GraphProto, types: dict[str, int], taken: set[str]) -> int:
    """Replace, in place, each float32/float16 Sigmoid of ``graph`` and its subgraphs by
    ``Reciprocal(Add(Exp(Neg(x)), 1))``; returns how many were replaced."""
    count, nodes = 0, []
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                count += _rewrite(sub, types, taken)
        dtype = types.get(n.input[0]) if n.op_type == "Sigmoid" and n.domain in ("", "ai.onnx") else None
        if dtype not in APPROXIMATE:
            nodes.append(n)
            continue
        base = n.name or n.output[0]
        neg, exp, one, den = (_fresh(f"{base}_{s}", taken) for s in ("neg", "exp", "one", "den"))
        nodes += [helper.make_node("Neg", [n.input[0]], [neg]),
                  helper.make_node("Exp", [neg], [exp]),
                  helper.make_node("Constant", [], [one], value=helper.make_tensor(one, dtype, [], [1.0])),
                  helper.make_node("Add", [exp, one], [den]),
                  helper.make_node("Reciprocal", [den], [n.output[0]], name=n.name)]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def has_sigmoid(model: onnx.ModelProto) -> bool:
    """Whether any graph of ``model`` has a default-domain Sigmoid."""
    return any(n.op_type == "Sigmoid" and n.domain in ("", "ai.onnx") for n in all_nodes(model.graph))


def exact_sigmoids(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose float32/float16 Sigmoids are the formula (module docstring),
    or None when it has none to replace."""
    if not has_sigmoid(model):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = _value_types(out)
    taken = set(types) | {o for n in all_nodes(out.graph) for o in n.output}
    return out if _rewrite(out.graph, types, taken) else None

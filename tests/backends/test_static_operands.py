"""Which graph inputs decide an operand TVM needs constant (directly, through other nodes, or
inside an If branch), and initializers fed to such operands turned into Constant nodes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.backends.tvm import static_operands as so


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_direct_and_transitive_inputs_are_found_shapes_are_not():
    nodes = [helper.make_node("Add", ["size", "one"], ["size1"]),           # size -> Add -> Reshape shape
             helper.make_node("Reshape", ["x", "size1"], ["r"]),
             helper.make_node("Shape", ["x"], ["xs"]),                       # x's shape only: not x's value
             helper.make_node("Expand", ["r", "xs"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)]
    m = _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 3]), _vi("size", TensorProto.INT64, [2]),
                       _vi("axes", TensorProto.INT64, [1])], [_vi("y", TensorProto.FLOAT, None)],
               [numpy_helper.from_array(np.array([0, 0], np.int64), "one")])
    assert so.runtime_static_inputs(m) == ["size", "axes"]
    assert "input 'size' (through other nodes, Reshape operand 1)" in so.runtime_static_operands(m)
    assert "--const-input" in so.hint(m)


def test_values_read_inside_if_branches_count():
    then = helper.make_graph([helper.make_node("Identity", ["size"], ["t"])], "then", [],
                             [_vi("t", TensorProto.INT64, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["size"], ["o"])], "else", [],
                              [_vi("o", TensorProto.INT64, [2])])
    nodes = [helper.make_node("If", ["c"], ["s"], then_branch=then, else_branch=other),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    m = _model(nodes, [_vi("x", TensorProto.FLOAT, [6]), _vi("c", TensorProto.BOOL, []),
                       _vi("size", TensorProto.INT64, [2])], [_vi("y", TensorProto.FLOAT, None)])
    assert set(so.runtime_static_inputs(m)) == {"size", "c"}


def test_data_inputs_are_not_listed():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, [2])],
               [_vi("y", TensorProto.FLOAT, [2])])
    assert so.runtime_static_inputs(m) == [] and so.hint(m) == ""


def test_initializers_of_static_operands_become_constants():
    w = numpy_helper.from_array(np.ones((3,), np.float32), "w")
    shape = numpy_helper.from_array(np.array([3, 2], np.int64), "shape")
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["y"])]
    m = _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 3])], [_vi("y", TensorProto.FLOAT, [3, 2])], [w, shape])
    out = so.constants_for_static_operands(m)
    onnx.checker.check_model(out)
    assert [t.name for t in out.graph.initializer] == ["w"]  # weights stay parameters
    assert out.graph.node[0].op_type == "Constant" and out.graph.node[0].output[0] == "shape"
    from optc import verify

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(verify.ort_session(out).run(None, {"x": x})[0], x.reshape(3, 2))
    assert so.constants_for_static_operands(out) is out  # nothing left to move
    # (end to end: tests/test_node_tests.py test_attention_3d_gqa_expanded, exit 70 before)

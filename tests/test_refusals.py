"""Models optc cannot take are refused by name (an OptcError with the reason), never an
internal error: element types numpy cannot hold, models onnxruntime (the reference) cannot run,
ops whose TVM lowering is known to be broken."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import optc
from optc.errors import UnsupportedModelError

pytest.importorskip("tvm")


def _save(path, nodes, inputs, outputs, opset=21):
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _compile(path, out):
    return optc.compile(path, "cpu", out, options=optc.CompileOptions.of(measure=False))


@pytest.mark.tvm
@pytest.mark.parametrize("to", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.INT4])
def test_element_types_numpy_cannot_hold_are_refused(tmp_path, to):
    path = _save(tmp_path / "m.onnx", [helper.make_node("Cast", ["x"], ["y"], to=to)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                 [helper.make_tensor_value_info("y", to, [2, 3])])
    with pytest.raises(UnsupportedModelError, match=TensorProto.DataType.Name(to)):
        _compile(path, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


@pytest.mark.tvm
def test_model_onnxruntime_cannot_run_is_refused(tmp_path):
    # onnxruntime's CPU provider has no TopK for uint64
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    path = _save(tmp_path / "m.onnx", [helper.make_node("Constant", [], ["k"], value=k),
                                       helper.make_node("TopK", ["x", "k"], ["v", "i"])],
                 [helper.make_tensor_value_info("x", TensorProto.UINT64, [2, 4])],
                 [helper.make_tensor_value_info("v", TensorProto.UINT64, [2, 2]),
                  helper.make_tensor_value_info("i", TensorProto.INT64, [2, 2])])
    with pytest.raises(UnsupportedModelError, match="onnxruntime"):
        _compile(path, tmp_path / "pkg")


@pytest.mark.tvm
def test_broken_tvm_op_is_listed_unsupported(tmp_path):
    path = _save(tmp_path / "m.onnx", [helper.make_node("NonMaxSuppression", ["b", "s"], ["sel"])],
                 [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 4]),
                  helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4])],
                 [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])])
    with pytest.raises(UnsupportedModelError, match="NonMaxSuppression"):
        _compile(path, tmp_path / "pkg")

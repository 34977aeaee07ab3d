"""0-d (scalar) inputs keep their rank through binding, verification sets (given or generated)
and the TVM session (``np.ascontiguousarray`` made them 1-d before)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import optc

pytest.importorskip("tvm")


def _model(path):
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [])
    g = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "scalar",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), s],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.tvm
def test_scalar_input_keeps_rank(tmp_path):
    _model(tmp_path / "m.onnx")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    feeds = {"x": x, "s": np.asarray(2.5, np.float32)}
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs=feeds,
                          options=optc.CompileOptions.of(measure=False))
    assert {d["name"]: d["shape"] for d in report["binding"]["inputs"]}["s"] == []
    np.testing.assert_allclose(optc.run(tmp_path / "pkg", feeds)["y"], x * 2.5)


@pytest.mark.tvm
def test_scalar_input_generated(tmp_path):
    _model(tmp_path / "m.onnx")
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    out = optc.run(tmp_path / "pkg")
    assert out["y"].shape == (2, 3)

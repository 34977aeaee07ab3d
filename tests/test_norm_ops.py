"""BatchNormalization in training mode (``backends/tvm/norm_ops.py``): batch statistics for Y and
the updated running mean / variance, compared with onnxruntime. TVM's own converter computed
the inference formula there, which optc's verification refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc

pytest.importorskip("tvm")


def _bn_model(outputs: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), "v")]
    names = ["y", "rm", "rv"][:outputs]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], names, training_mode=1,
                            epsilon=1e-3, momentum=0.8)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5])]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in names[1:]]
    g = helper.make_graph([node], "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])


@pytest.mark.tvm
def test_batchnorm_training_mode_matches_onnxruntime(tmp_path):
    m = _bn_model(3)  # training mode has all three outputs (the spec's shape inference says so)
    onnx.save(m, str(tmp_path / "m.onnx"))
    x = (np.random.default_rng(1).standard_normal((2, 3, 4, 5)) * 2 + 1).astype(np.float32)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]
    got = optc.run(tmp_path / "pkg", {"x": x})
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for vi, r in zip(m.graph.output, ref):
        np.testing.assert_allclose(got[vi.name], r, rtol=1e-4, atol=1e-5)
    # not the inference formula (running statistics): the batch's own mean is ~1, not m
    assert abs(float(got["y"].mean()) - float(numpy_helper.to_array(m.graph.initializer[1]).mean())) < 0.5

"""Constants optc's converters make keep their element type: ``relax.const`` without a dtype
makes a float64 array float32 and an int64 array int32 (values past int32 wrap). Float64
ConvTranspose (the sub-pixel path of ``onnx_ops``) and LSTM (the unrolled path of
``recurrent``) failed to import because of it. onnxruntime runs neither in float64, so the
packages are built without verification and compared with onnx's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import optc

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


def _check(model, feeds, tmp_path):
    onnx.save(model, tmp_path / "m.onnx")
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs=feeds,
                 options=optc.CompileOptions.of(measure=False, verify_outputs=False))
    got = list(optc.run(tmp_path / "pkg", feeds).values())
    want = ReferenceEvaluator(model).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_float64_conv_transpose_keeps_float64_weights(tmp_path):
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2])], "g",
                     [h.make_tensor_value_info("x", T.DOUBLE, [1, 3, 5, 5])],
                     [h.make_tensor_value_info("y", T.DOUBLE, [1, 4, 10, 10])],
                     [numpy_helper.from_array(rng.standard_normal((3, 4, 2, 2)), "w"),
                      numpy_helper.from_array(rng.standard_normal(4), "b")])
    _check(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), {"x": rng.standard_normal((1, 3, 5, 5))}, tmp_path)


def test_float64_lstm_keeps_float64_initial_state(tmp_path):
    rng, hidden = np.random.default_rng(1), 3
    g = h.make_graph([h.make_node("LSTM", ["x", "W", "R"], ["Y", "Yh"], hidden_size=hidden)], "g",
                     [h.make_tensor_value_info("x", T.DOUBLE, [4, 2, 5])],
                     [h.make_tensor_value_info("Y", T.DOUBLE, [4, 1, 2, hidden]),
                      h.make_tensor_value_info("Yh", T.DOUBLE, [1, 2, hidden])],
                     [numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, 5)), "W"),
                      numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)), "R")])
    _check(h.make_model(g, opset_imports=[h.make_opsetid("", 14)]), {"x": rng.standard_normal((4, 2, 5))}, tmp_path)

"""com.microsoft ops that onnxruntime's graph optimizer writes into the models it saves
(``optc.backends.tvm.contrib_ops``): FusedConv, FusedGemm, QuickGelu, and TVM's own BiasGelu,
FastGelu and SkipLayerNormalization converters reachable under their domain. Each compiled
through ``optc.compile`` (verified against onnxruntime) and compared with onnxruntime; an
activation the converters do not know is refused by name. Before, every one was refused as an
unsupported op (an "extended"-optimized MobileNetV3: 23 FusedConv nodes; a
transformers-optimized ViT: BiasGelu)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import optc
from tests.conftest import compile_and_compare
from optc.errors import UnsupportedModelError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")
MS = "com.microsoft"


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "m", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(MS, 1)])
    m.ir_version = 9
    return m


def _compile_and_compare(model, tmp_path, feeds) -> None:
    compile_and_compare(model, tmp_path, feeds, atol=1e-4, rtol=1e-4)


def _fused_conv(activation: str, params: list[float], with_z: bool):
    rng = np.random.default_rng(0)
    vi = h.make_tensor_value_info
    inits = {"w": rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3,
             "b": rng.standard_normal(6).astype(np.float32) * 0.1}
    ins = ["x", "w", "b"] + (["z"] if with_z else [])
    extra = {"activation_params": params} if params else {}
    node = h.make_node("FusedConv", ins, ["y"], domain=MS, activation=activation, pads=[1, 1, 1, 1],
                       strides=[2, 2], kernel_shape=[3, 3], **extra)
    inputs = [vi("x", T.FLOAT, [1, 4, 8, 8])] + ([vi("z", T.FLOAT, [1, 6, 4, 4])] if with_z else [])
    return _model([node], inputs, [vi("y", T.FLOAT, [1, 6, 4, 4])], inits)


@pytest.mark.parametrize("activation, params, with_z", [
    ("Relu", [], False), ("Clip", [0.0, 6.0], False), ("HardSigmoid", [0.2, 0.5], False),
    ("LeakyRelu", [0.1], True), ("Sigmoid", [], False), ("Tanh", [], True),
])
def test_fused_conv_matches_onnxruntime(tmp_path, activation, params, with_z):
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    if with_z:
        feeds["z"] = rng.standard_normal((1, 6, 4, 4)).astype(np.float32)
    _compile_and_compare(_fused_conv(activation, params, with_z), tmp_path, feeds)


def test_fused_gemm_quick_gelu_bias_gelu_fast_gelu_skip_layer_norm(tmp_path):
    """The elementwise and normalization contrib ops of a transformers-optimized encoder."""
    rng = np.random.default_rng(2)
    vi = h.make_tensor_value_info
    d = 16
    inits = {"w": rng.standard_normal((d, d)).astype(np.float32) * 0.3, "c": rng.standard_normal(d).astype(np.float32),
             "bias": rng.standard_normal(d).astype(np.float32) * 0.1, "gamma": rng.uniform(0.5, 1.5, d).astype(np.float32),
             "beta": rng.standard_normal(d).astype(np.float32) * 0.1}
    nodes = [h.make_node("FusedGemm", ["x", "w", "c"], ["g"], domain=MS, transB=1, alpha=0.5,
                         activation="LeakyRelu", activation_alpha=0.2),
             h.make_node("QuickGelu", ["g"], ["q"], domain=MS, alpha=1.5),
             h.make_node("BiasGelu", ["q", "bias"], ["bg"], domain=MS),
             h.make_node("FastGelu", ["bg", "bias"], ["fg"], domain=MS),
             h.make_node("SkipLayerNormalization", ["fg", "x", "gamma", "beta", "bias"], ["y"], domain=MS, epsilon=1e-5)]
    model = _model(nodes, [vi("x", T.FLOAT, [3, d])], [vi("y", T.FLOAT, [3, d])], inits)
    _compile_and_compare(model, tmp_path, {"x": rng.standard_normal((3, d)).astype(np.float32)})


def test_fused_conv_with_an_unknown_activation_is_refused_by_name(tmp_path):
    model = _fused_conv("Softplus", [], False)
    with pytest.raises(UnsupportedModelError, match="activation 'Softplus' is not lowered"):
        _compile_and_compare(model, tmp_path, {"x": np.zeros((1, 4, 8, 8), np.float32)})

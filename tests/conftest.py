"""Shared fixtures: small ONNX models built inline, and the bundled reference models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def make_onnx_model(nodes, inits, x_shape, y_shape, *, name: str = "g", elem_type: int = TensorProto.FLOAT,
                    optc_ops: bool = False, check: bool = True) -> onnx.ModelProto:
    """One graph ``x -> nodes -> y`` (both of ``elem_type``) at opset 17, with the ``ai.optc``
    domain at version 1 where ``optc_ops``; ``onnx.checker``-ed where ``check``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", elem_type, x_shape)],
                              [helper.make_tensor_value_info("y", elem_type, y_shape)], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.optc", 1)] if optc_ops else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if check:
        onnx.checker.check_model(model)
    return model


def make_graph_model(nodes, inputs, outputs, inits: dict, opset: int = 17) -> onnx.ModelProto:
    """A float32 graph of ``nodes`` with ``inputs`` and ``outputs`` given as (name, shape) pairs
    and the initializers ``inits`` (name -> array), at ``opset``, IR version 8,
    ``onnx.checker``-ed."""
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def compile_and_compare(model: onnx.ModelProto, tmp_path: Path, feeds: dict, *, atol: float = 1e-5,
                        rtol: float = 1e-7, same_dtype: bool = False) -> None:
    """``optc.compile`` of ``model`` for cpu (its own verification included) and ``optc.run`` on
    ``feeds``, each output compared with onnxruntime's on the same feeds."""
    import onnxruntime as ort

    import optc

    pytest.importorskip("tvm")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    optc.compile(str(path), "cpu", str(tmp_path / "pkg"), inputs=feeds, options=optc.CompileOptions.of(measure=False))
    got = list(optc.run(str(tmp_path / "pkg"), feeds).values())
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert not same_dtype or g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)


def make_qlinear_conv_model(inits: dict, x_shape: list[int], y_shape: list[int], name: str = "conv",
                            **conv_attrs) -> onnx.ModelProto:
    """Q -> QLinearConv -> DQ (a hand-written QOperator model, checked) on the initializers
    ``xs xz w ws wz ys yz`` and, when given, the int32 bias ``b``."""
    conv_in = ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"] + (["b"] if "b" in inits else [])
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("QLinearConv", conv_in, ["yq"], name=name, **conv_attrs),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def make_unsupported_ops_model() -> onnx.ModelProto:
    """x [3, 3] -> Relu (node relu) -> com.acme::Custom (custom_1) -> com.acme::Custom (custom_2)
    -> RandomNormalLike (noise) -> y: an unknown domain's op twice and a standard op that no
    backend lowers, for the check that lists every unsupported op with its nodes at once."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Custom", ["a"], ["b"], name="custom_1", domain="com.acme"),
             helper.make_node("Custom", ["b"], ["c"], name="custom_2", domain="com.acme"),
             helper.make_node("RandomNormalLike", ["c"], ["y"], name="noise")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])


def make_int8_depthwise_model(hw: int) -> onnx.ModelProto:
    """``ai.optc`` IntConv2d, depthwise (8 channels, group 8), 3x3 pad 1, uint8 [1, 8, hw, hw]
    in and out, zero weights and bias, unit multiplier and shift."""
    wc = np.zeros((8, 1, 3, 3), np.int8)
    inits = [numpy_helper.from_array(wc, "W"), numpy_helper.from_array(np.zeros(8, np.int32), "B"),
             numpy_helper.from_array(np.ones(8, np.int32), "M"), numpy_helper.from_array(np.ones(8, np.int32), "S")]
    nodes = [helper.make_node("IntConv2d", ["x", "W", "B", "M", "S"], ["y"], name="dw", domain="ai.optc",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8)]
    return make_onnx_model(nodes, inits, [1, 8, hw, hw], [1, 8, hw, hw], elem_type=TensorProto.UINT8,
                           optc_ops=True, check=False)


def make_conv_model(path: Path | None = None, *, batch: int | str = 1, seed: int = 0,
                    with_bn: bool = True) -> onnx.ModelProto:
    """Conv(3x3) -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm, opset 17."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    last = "c"
    if with_bn:
        inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "g"),
                  numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "beta"),
                  numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "mean"),
                  numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "var")]
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"], name="bn"))
        last = "bn"
    nodes += [helper.make_node("Relu", [last], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
              helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    model = make_onnx_model(nodes, inits, [batch, 3, 8, 8], [batch, 4], name="conv")
    if path is not None:
        onnx.save(model, str(path))
    return model


@pytest.fixture
def conv_model(tmp_path) -> Path:
    path = tmp_path / "conv.onnx"
    make_conv_model(path)
    return path


@pytest.fixture
def dynamic_conv_model(tmp_path) -> Path:
    path = tmp_path / "conv_dyn.onnx"
    make_conv_model(path, batch="N")
    return path

"""quantize<smooth>: per-input-channel equalization (SmoothQuant / cross-layer equalization)
folded into the producer. The rescaled float model must equal the original (float rounding
only), every supported producer rule must fire on a small model, refusals say why, and on
inputs whose channels span a wide range of magnitudes the int8 model gets closer to float."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.accuracy import sqnr_db
from optc.passes.quant import equalize, run_quantizer
from optc.pipeline import format_pipeline, instantiate, parse_pipeline
from optc.verify import reference_outputs


def _lcnet_like(seed: int = 0) -> onnx.ModelProto:
    """Conv -> depthwise Conv -> Mul(scalar) -> Add(scalar) -> 1x1 Conv -> Relu -> 1x1 Conv
    -> GlobalAveragePool: the PP-LCNetV3 pattern (learnable affine after the activation) with
    output channels of the first conv spanning 3 decades."""
    rng = np.random.default_rng(seed)
    spread = np.logspace(-1.5, 1.5, 16).astype(np.float32)[rng.permutation(16)]
    w0 = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32) * spread[:, None, None, None]
    inits = [numpy_helper.from_array(w0, "w0"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1 * spread).astype(np.float32), "b0"),
             numpy_helper.from_array((rng.standard_normal((16, 1, 3, 3)) * 0.4).astype(np.float32), "wd"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "bd"),
             numpy_helper.from_array(np.array([0.7], np.float32), "a"),
             numpy_helper.from_array(np.array([0.05], np.float32), "c"),
             numpy_helper.from_array((rng.standard_normal((24, 16, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(24) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array((rng.standard_normal((8, 24, 1, 1)) * 0.3).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c0", "wd", "bd"], ["cd"], name="dw", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "cd"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "c"], ["ad"], name="add"),
             helper.make_node("Conv", ["ad", "w2", "b2"], ["c2"], name="pw"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="pw2"),
             helper.make_node("GlobalAveragePool", ["c3"], ["y"], name="gap")]
    g = helper.make_graph(nodes, "lcnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _layernorm_gemm(seed: int = 0) -> onnx.ModelProto:
    """Decomposed LayerNorm (gamma with outlier channels) -> Reshape [1,T,C]->[T,C] -> Gemm,
    and LayerNorm -> MatMul on [1,T,C]."""
    rng = np.random.default_rng(seed)
    t, c, n = 6, 32, 16
    gamma = np.ones(c, np.float32)
    gamma[[3, 17]] = 25.0  # outlier channels
    inits = [numpy_helper.from_array(gamma, "gamma"),
             numpy_helper.from_array((rng.standard_normal(c) * 0.2).astype(np.float32), "beta"),
             numpy_helper.from_array(np.array([1e-5], np.float32), "eps"),
             numpy_helper.from_array(np.array([t, c], np.int64), "shape2"),
             numpy_helper.from_array((rng.standard_normal((n, c)) * 0.2).astype(np.float32), "wg"),
             numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), "bg"),
             numpy_helper.from_array((rng.standard_normal((c, n)) * 0.2).astype(np.float32), "wm")]
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1], name="mean"),
             helper.make_node("Sub", ["x", "mu"], ["xc"], name="sub"),
             helper.make_node("Mul", ["xc", "xc"], ["sq"], name="sq"),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="var"),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="ve"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             helper.make_node("Div", ["xc", "sd"], ["xn"], name="div"),
             helper.make_node("Mul", ["xn", "gamma"], ["xg"], name="gamma"),
             helper.make_node("Add", ["xg", "beta"], ["ln"], name="beta"),
             helper.make_node("Reshape", ["ln", "shape2"], ["ln2"], name="reshape"),
             helper.make_node("Gemm", ["ln2", "wg", "bg"], ["y"], name="fc", transB=1),
             helper.make_node("Mul", ["xn", "gamma"], ["xg2"], name="gamma2"),
             helper.make_node("Add", ["xg2", "beta"], ["lnb"], name="beta2"),
             helper.make_node("MatMul", ["lnb", "wm"], ["z"], name="mm")]
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t, c])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [t, n]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, t, n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _smoothed(record: dict) -> dict[str, str]:
    return {r["name"]: r["smoothed"] for r in record["calibration"]["smoothing"]["layers"]}


def test_smoothing_is_exact_in_float_and_helps_lcnet_pattern():
    model = _lcnet_like()
    rng = np.random.default_rng(1)
    calib = {"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)}
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    ref = reference_outputs(model, x)[0]
    q_off, _, _ = run_quantizer(model, calib, output_qdq=False)
    q_on, d, quant = run_quantizer(model, calib, output_qdq=False, smooth=True, smooth_scope="all")
    _, d_dw, _ = run_quantizer(model, calib, output_qdq=False, smooth=True)  # default scope: depthwise
    assert _smoothed(d_dw)["dw"] == "depthwise (alpha 1)" and _smoothed(d_dw)["pw"].startswith("not depthwise")
    how = _smoothed(d)
    # graph input: nothing to fold into; depthwise after a conv (CLE); after Mul/Add constants;
    # after Relu <- Conv
    assert how["conv0"].startswith("no: x is a graph input")
    assert how["dw"] == "depthwise (alpha 1)" and how["pw"] == "alpha 0.5" and how["pw2"] == "alpha 0.5"
    # the rescaled float model equals the original (float rounding only)
    np.testing.assert_allclose(reference_outputs(quant.model, x)[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # shared constants are not changed in place: 'a' and 'c' are replaced by new per-channel ones
    inits = {t.name: numpy_helper.to_array(t) for t in quant.model.graph.initializer}
    mul = next(n for n in quant.model.graph.node if n.name == "mul")
    assert inits[mul.input[0]].shape == (1, 16, 1, 1)
    assert sqnr_db(ref, reference_outputs(q_on, x)[0]) > sqnr_db(ref, reference_outputs(q_off, x)[0]) + 3.0
    onnx.checker.check_model(q_on)


def test_smoothing_folds_into_layernorm_gamma_beta_through_reshape():
    model = _layernorm_gemm()
    rng = np.random.default_rng(2)
    calib = {"x": rng.standard_normal((32, 6, 32)).astype(np.float32)}
    x = {"x": rng.standard_normal((1, 6, 32)).astype(np.float32)}
    refs = reference_outputs(model, x)
    _, d, quant = run_quantizer(model, calib, smooth=True, smooth_alpha=0.5, smooth_scope="all")
    assert _smoothed(d) == {"fc": "alpha 0.5", "mm": "alpha 0.5"}
    for a, b in zip(reference_outputs(quant.model, x), refs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    # outlier channels are flattened (alpha 0.5: about the square root of the spread moves)
    amax = {}
    for m in (model, quant.model):
        from optc.passes.quant import calibrate

        amax[id(m)] = calibrate.channel_absmax(m, {"ln2": -1}, calib)["ln2"]
    before, after = amax[id(model)], amax[id(quant.model)]
    assert before.max() / np.median(before) > 20 and after.max() / np.median(after) < 8


def test_smoothing_refuses_shared_inputs_and_non_linear_producers():
    model = _conv_relu_residual()
    calib = {"x": np.random.default_rng(3).standard_normal((8, 4, 6, 6)).astype(np.float32)}
    _, d, _ = run_quantizer(model, calib, smooth=True, smooth_scope="all")
    how = _smoothed(d)
    assert how["c2"] == "input has other readers"
    assert how["c3"].startswith("no: producer Sigmoid is not linear per channel")


def _conv_relu_residual() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32))  # noqa: E731
    inits = [w(4, 4, 1, 1), w(4, 4, 1, 1), w(4, 4, 1, 1)]
    for t, name in zip(inits, ("w1", "w2", "w3")):
        t.name = name
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="c2"),
             helper.make_node("Add", ["a", "b"], ["s"], name="res"),
             helper.make_node("Sigmoid", ["s"], ["g"], name="sig"),
             helper.make_node("Conv", ["g", "w3"], ["y"], name="c3")]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_scales_formula_and_bounds():
    s = equalize.scales(np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 1.0]), 0.5)
    # sqrt(4)/sqrt(1) = 2 and 1/2 -> geometric mean 1 already; dead channel -> 1
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0])
    s = equalize.scales(np.array([1e9, 1.0]), np.array([1.0, 1.0]), 1.0)
    assert s.max() <= equalize.MAX_RATIO and s.min() >= 1 / equalize.MAX_RATIO


def test_pipeline_text_round_trips_and_checks_alpha(tmp_path):
    (spec,) = parse_pipeline("quantize<calib=c.npz;smooth=true;smooth-alpha=0.7>")
    text = format_pipeline([spec])
    assert text == "quantize<calib=c.npz;smooth;smooth-alpha=0.7>" and parse_pipeline(text) == [spec]
    with pytest.raises(Exception):
        instantiate(parse_pipeline("quantize<calib=c.npz;smooth-alpha=1.5>")[0])
    with pytest.raises(Exception):
        instantiate(parse_pipeline("quantize<calib=c.npz;smooth-scope=some>")[0])

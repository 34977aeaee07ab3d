"""quantize: qparam math on hand cases (bit-exact with onnxruntime), observers on known
distributions, the streaming histogram, QDQ models that onnxruntime runs close to float,
int8 weight storage, idempotence, mixed precision under a budget, `optc compile` verifying
against the QDQ model, and quant-debug."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc import verify
from optc.accuracy import sqnr_db
from optc.errors import UsageError
from optc.passes.quant import calibrate, observers, qparams, quantize_model
from optc.pipeline import format_pipeline, get_pass, instantiate, parse_pipeline
from optc.verify import reference_outputs
from tests.conftest import MODELS, make_conv_model, make_onnx_model

CALIB = MODELS / "digits_calib.npz"
EVAL = MODELS / "digits_eval.npz"


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _run_pass(model: onnx.ModelProto, text: str):
    """Run a one-pass pipeline twice; (proto after the first run, first pass result, modified,
    modified again, proto after the second run)."""
    (spec,) = parse_pipeline(text)
    irm = ir.serde.deserialize_model(model)
    first = instantiate(spec)(irm)
    out = ir.serde.serialize_model(first.model)
    onnx.checker.check_model(out)
    second = instantiate(spec)(ir.serde.deserialize_model(out))
    again = ir.serde.serialize_model(second.model)
    return out, first, first.modified, second.modified, again


def _conv_relu_model(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (opset 17)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.5).astype(np.float32), "fc_w"),
             numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    return make_onnx_model(nodes, inits, [batch, 3, 8, 8], [batch, 10], name="convrelu")


def _normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# qparam math


def test_weight_qparams_symmetric_per_channel_by_hand():
    w = np.array([[-1.0, 0.5, 0.25], [0.2, -0.1, 2.54]], np.float32)
    q, scale, zp, qt = qparams.weight_qparams(w, 8, axis=0)
    assert (qt.qmin, qt.qmax) == (-127, 127)
    np.testing.assert_array_equal(scale, np.array([1 / 127, 0.02], np.float32))
    np.testing.assert_array_equal(zp, [0, 0])
    np.testing.assert_array_equal(q, [[-127, 64, 32], [10, -5, 127]])  # 63.5 -> 64 (half to even)
    assert q.dtype == np.int8
    # per tensor: one scale from max |w|
    q1, s1, _, _ = qparams.weight_qparams(w, 8, axis=None)
    assert s1 == np.float32(2.54 / 127) and q1[1, 2] == 127 and q1[0, 0] == -50


def test_int4_range_and_saturation():
    qt = qparams.weight_qtype(4)
    assert (qt.qmin, qt.qmax, qt.np_dtype) == (-7, 7, np.dtype(np.int8))
    w = np.array([-1.4, -0.3, 0.0, 0.45, 1.4], np.float32)
    q, scale, _, _ = qparams.weight_qparams(w, 4, axis=None)
    assert scale == np.float32(0.2)
    np.testing.assert_array_equal(q, [-7, -2, 0, 2, 7])  # -1.5 -> -2, 2.25 -> 2
    # a clipping range (e.g. from MSE) saturates values beyond it
    q, scale, _, _ = qparams.weight_qparams(w, 4, axis=None, amax=np.float32(0.7))
    np.testing.assert_array_equal(q, [-7, -3, 0, 4, 7])
    with pytest.raises(ValueError):
        qparams.weight_qtype(16)


def test_activation_qparams_by_hand():
    scale, zp, qt = qparams.activation_qparams(-1.0, 3.0, 8, symmetric=False)
    assert qt.np_dtype == np.uint8 and scale == np.float32(4 / 255) and zp == 64  # round(63.75)
    scale, zp, qt = qparams.activation_qparams(0.5, 2.0, 8, symmetric=False)  # widened to contain 0
    assert scale == np.float32(2 / 255) and zp == 0
    scale, zp, qt = qparams.activation_qparams(-2.54, 1.0, 8, symmetric=True)
    assert qt.np_dtype == np.int8 and scale == np.float32(0.02) and zp == 0 and (qt.qmin, qt.qmax) == (-128, 127)
    scale, zp, _ = qparams.activation_qparams(0.0, 0.0, 8)  # a constant-zero tensor: no division by 0
    assert scale == 1.0 and zp == 0
    q, s, fits = qparams.bias_qparams(np.array([0.1, -0.2], np.float32), np.float32(0.5), np.array([0.01, 0.02], np.float32))
    assert fits and q.dtype == np.int32
    np.testing.assert_array_equal(s, np.array([0.005, 0.01], np.float32))
    np.testing.assert_array_equal(q, [20, -20])


def test_quantize_matches_onnxruntime_bit_for_bit():
    """qparams.quantize/dequantize are exactly onnxruntime's QuantizeLinear/DequantizeLinear."""
    x = _normal((4, 3, 5, 5), seed=3) * 3
    scale = np.array([0.013, 0.021, 0.007], np.float32)
    zp = np.array([0, 0, 0], np.int8)
    s_t = np.float32(0.031)
    z_t = np.uint8(117)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z"),
             numpy_helper.from_array(np.array(s_t), "st"), numpy_helper.from_array(np.array(z_t), "zt")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=1),
             helper.make_node("QuantizeLinear", ["x", "st", "zt"], ["qt"]),
             helper.make_node("DequantizeLinear", ["qt", "st", "zt"], ["dqt"])]
    outs = [helper.make_tensor_value_info(n, t, [4, 3, 5, 5]) for n, t in
            [("q", TensorProto.INT8), ("dq", TensorProto.FLOAT), ("qt", TensorProto.UINT8), ("dqt", TensorProto.FLOAT)]]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 5, 5])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    q, dq, qt_, dqt = reference_outputs(m, {"x": x})
    s8 = qparams.QType(8, True, -128, 127)
    u8 = qparams.activation_qtype(8, False)
    np.testing.assert_array_equal(q, qparams.quantize(x, scale, zp, s8, axis=1))
    np.testing.assert_array_equal(dq, qparams.fake_quantize(x, scale, zp, s8, axis=1))
    np.testing.assert_array_equal(qt_, qparams.quantize(x, s_t, z_t, u8))
    np.testing.assert_array_equal(dqt, qparams.fake_quantize(x, s_t, z_t, u8))


# --------------------------------------------------------------------------------------------
# observers


def test_minmax_observer_exact_over_batches():
    x = _normal((10, 1000), seed=1)
    obs = observers.MinMaxObserver()
    for b in x:
        obs.update(b)
    assert obs.minmax() == (float(x.min()), float(x.max()))
    assert obs.compute_range(8, symmetric=True) == (-float(np.abs(x).max()), float(np.abs(x).max()))


def test_streaming_histogram_equals_one_shot():
    rng = np.random.default_rng(0)
    # batches whose range keeps growing (both sides) force several rebinnings and slides
    batches = [rng.standard_normal(5000) * 0.01, rng.uniform(0, 1, 3000), rng.standard_normal(4000) * 7 - 5,
               rng.standard_cauchy(2000) * 3, rng.uniform(50, 60, 1000)]
    h = observers.StreamingHistogram(256)
    for b in batches:
        h.update(b)
    allx = np.concatenate(batches)
    one = observers.StreamingHistogram.one_shot(allx, h.width, h.j0, h.bins)
    np.testing.assert_array_equal(h.counts, one)
    assert h.total == allx.size
    assert h.edges()[0] <= allx.min() and allx.max() < h.edges()[-1]
    assert len(h.counts) == 256  # memory fixed whatever the data


def test_percentile_observer_on_uniform():
    x = np.random.default_rng(2).uniform(-1, 3, 200_000).astype(np.float32)
    obs = observers.PercentileObserver(99.0)
    for chunk in np.array_split(x, 7):
        obs.update(chunk)
    lo, hi = obs.compute_range(8, symmetric=False)
    assert lo == pytest.approx(np.percentile(x, 1.0), abs=0.01)
    assert hi == pytest.approx(np.percentile(x, 99.0), abs=0.01)
    t = obs.compute_range(8, symmetric=True)[1]
    assert t == pytest.approx(np.percentile(np.abs(x), 99.0), abs=0.01)


@pytest.mark.parametrize("name", ["entropy", "mse", "percentile"])
def test_clipping_observers_clip_heavy_tails(name):
    """On heavy-tailed data (Student t, 3 degrees of freedom) the histogram observers choose a
    range strictly inside min/max; on non-negative (ReLU-like) data it starts at 0."""
    x = np.random.default_rng(3).standard_t(3, 200_000)
    obs, mm = observers.make_observer(name), observers.MinMaxObserver()
    for chunk in np.array_split(x, 10):
        obs.update(chunk)
        mm.update(chunk)
    for sym in (True, False):
        lo, hi = obs.compute_range(8, symmetric=sym)
        mlo, mhi = mm.compute_range(8, symmetric=sym)
        assert mlo <= lo < 0 < hi <= mhi
        assert hi < 0.8 * mhi and lo > 0.8 * mlo  # the tails are clipped
    relu = observers.make_observer(name)
    relu.update(np.maximum(x, 0))
    lo, hi = relu.compute_range(8, symmetric=False)
    assert lo == 0.0 and 0 < hi < x.max()


def test_mse_weight_clipping_beats_minmax_at_4_bits():
    w = np.random.default_rng(4).laplace(0, 1, (8, 512)).astype(np.float32)
    amax = observers.mse_weight_amax(w, 4, axis=0)
    assert np.all(amax <= np.abs(w).max(axis=1))

    def err(a):
        return np.sum((qparams.fake_quantize(w, qparams.symmetric_scale(a, qparams.weight_qtype(4)),
                                             np.zeros(8, np.int8), qparams.weight_qtype(4), axis=0) - w) ** 2)

    assert err(amax) < 0.8 * err(np.abs(w).max(axis=1))


def test_calibration_streams_in_bounded_memory():
    model = _conv_relu_model(batch=2)
    data = {"x": _normal((64, 3, 8, 8), seed=5)}
    tensors = ["x", "r1", "r2", "f", "y"]
    small, info, _ = calibrate.collect(model, tensors, data, observers.MinMaxObserver, memory_budget=20_000)
    big, info_big, means = calibrate.collect(model, tensors, data, observers.MinMaxObserver,
                                             channel_axes={"x": 1, "f": 1})
    np.testing.assert_allclose(means["x"], data["x"].mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert means["f"].shape == (16,)
    assert info["samples"] == 64 and info["batches"] == 32
    assert info["observer_updates"] > 10 and info_big["observer_updates"] == 1
    assert info["peak_buffered_bytes"] < 20_000 + 2 * 4 * (3 + 16 + 16) * 64 + 1000  # one batch beyond the budget
    for t in tensors:
        assert small[t].minmax() == big[t].minmax()


# --------------------------------------------------------------------------------------------
# the QDQ model


def test_qdq_model_runs_in_onnxruntime_close_to_float(tmp_path):
    model = _conv_relu_model(batch=1)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.abs(_normal((64, 1, 3, 8, 8), seed=6)).reshape(64, 3, 8, 8))
    out, result, modified, again, _ = _run_pass(model, f"quantize<calib={calib}>")
    assert modified and not again
    ops = _ops(out)
    # x, r1, r2 (Relus folded into their Convs), f and y get a Q/DQ pair; 3 weights + 3 biases a DQ
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 11
    assert ops.count("Conv") == 2 and ops.count("Relu") == 2
    init = {t.name: t for t in out.graph.initializer}
    assert init["w1__q"].data_type == TensorProto.INT8 and init["b1__q"].data_type == TensorProto.INT32
    assert "w1" not in init and "fc_w" not in init  # the float weights are gone
    # the seam: Conv reads DQ(weight int8), DQ(Q(activation)), DQ(bias int32); Relu -> Q follows
    prod = {o: n for n in out.graph.node for o in n.output}
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    assert [prod[i].op_type for i in conv2.input] == ["DequantizeLinear"] * 3
    assert prod[prod[conv2.input[0]].input[0]].op_type == "QuantizeLinear"
    relu2 = next(n for n in out.graph.node if n.name == "relu2")
    assert prod[prod["r2"].input[0]].op_type == "QuantizeLinear" and prod["r2__q"].input[0] == relu2.output[0]
    assert result.details["layers"][0]["fused_activation"] == "Relu"
    x = np.abs(_normal((1, 3, 8, 8), seed=7))
    (ref,), (got,) = reference_outputs(model, {"x": x}), reference_outputs(out, {"x": x})
    assert sqnr_db(ref, got) > 30.0


def test_bias_correction_removes_the_mean_weight_error(tmp_path):
    """Depthwise conv on inputs with a large mean: the rounding error of 9 weights per channel
    shifts each output channel's mean; bias correction (DFQ) subtracts dw . E[x]."""
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((8, 1, 3, 3)) * 0.4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": (rng.standard_normal((32, 8, 16, 16)) * 0.5 + 3.0).astype(np.float32)}
    x = {"x": (rng.standard_normal((1, 8, 16, 16)) * 0.5 + 3.0).astype(np.float32)}
    ref = reference_outputs(model, x)[0]
    errs = {}
    for bc in (False, True):
        q, d = quantize_model(model, data, weight_bits=4, bias_correction=bc)
        got = reference_outputs(q, x)[0]
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the zero padding
        errs[bc] = np.abs((got - ref)[inner].mean(axis=(0, 2, 3))).max()
        assert d["layers"][0].get("bias_corrected", False) == bc
    assert errs[True] < 0.2 * errs[False]


def test_output_qdq_off_quantizes_only_what_quantized_layers_read(tmp_path):
    model = _conv_relu_model()
    calib = tmp_path / "c.npz"
    np.savez(calib, x=_normal((16, 3, 8, 8)))
    q, d = quantize_model(model, str(calib), output_qdq=False)
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "r1__fp32", "f__fp32"}  # conv2's output r2 and fc's y stay float
    x = _normal((1, 3, 8, 8), seed=7)
    assert sqnr_db(reference_outputs(model, {"x": x})[0], reference_outputs(q, {"x": x})[0]) > 30


def test_weights_stored_as_int8_about_4x_smaller(tmp_path):
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array((rng.standard_normal((256, 512)) * 0.05).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((512, 256)) * 0.05).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "w2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = tmp_path / "c.npz"
    np.savez(calib, x=_normal((32, 256), seed=9))
    q, details = quantize_model(model, str(calib))
    onnx.save(model, tmp_path / "f.onnx")
    onnx.save(q, tmp_path / "q.onnx")
    ratio = (tmp_path / "q.onnx").stat().st_size / (tmp_path / "f.onnx").stat().st_size
    assert 0.24 < ratio < 0.27
    assert details["weight_bytes"]["after"] < 0.26 * details["weight_bytes"]["before"]
    # MatMul weights [K, N]: one scale per output column
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w1__q")
    assert helper.get_attribute_value(dq.attribute[0]) == 1
    x = _normal((4, 256), seed=10)
    assert sqnr_db(reference_outputs(model, {"x": x})[0], reference_outputs(q, {"x": x})[0]) > 30.0


def test_idempotent_on_the_digits_cnn():
    model = onnx.load(MODELS / "digits_cnn.onnx")
    out, _, modified, again, out2 = _run_pass(model, f"quantize<calib={CALIB}>")
    assert modified and not again
    assert out2.graph == out.graph  # the second run changed nothing
    feeds = {"input": np.load(EVAL)["input"][:64]}
    ref, got = reference_outputs(model, feeds)[0], reference_outputs(out, feeds)[0]
    assert sqnr_db(ref, got) > 25 and np.mean(ref.argmax(1) == got.argmax(1)) >= 0.98


def test_opset_11_is_upgraded_to_13(tmp_path):
    model = make_conv_model(batch=1, with_bn=False)  # its ops read the same at opset 11
    model.opset_import[0].version = 11
    onnx.checker.check_model(model)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=_normal((16, 3, 8, 8)))
    q, details = quantize_model(model, str(calib))
    assert details["opset"] == {"before": 11, "after": 13}
    onnx.checker.check_model(q)
    x = _normal((1, 3, 8, 8), seed=2)
    assert sqnr_db(reference_outputs(model, {"x": x})[0], reference_outputs(q, {"x": x})[0]) > 25


def test_options_ops_exclude_per_tensor_symmetric(tmp_path):
    model = _conv_relu_model()
    calib = tmp_path / "c.npz"
    np.savez(calib, x=_normal((16, 3, 8, 8)))
    q, d = quantize_model(model, str(calib), ops=("Conv",), exclude=("conv2",), per_channel=False, symmetric=True)
    assert [l["name"] for l in d["layers"]] == ["conv1"]
    assert {"name": "conv2", "op": "Conv", "reason": "excluded"} in d["skipped"]
    init = {t.name: t for t in q.graph.initializer}
    assert "w2" in init and "fc_w" in init and init["w1__scale"].dims == []  # per tensor: a scalar scale
    assert all(init[n].data_type == TensorProto.INT8 for n in init if n.endswith("__zero_point") and not n.startswith("b"))
    q4, d4 = quantize_model(model, str(calib), weight_bits=4)
    w = numpy_helper.to_array({t.name: t for t in q4.graph.initializer}["w2__q"])
    assert w.dtype == np.int8 and w.min() >= -7 and w.max() <= 7
    assert d4["layers"][1]["weight_observer"] == "mse"


def test_pipeline_text_and_errors():
    text = f"simplify,quantize<calib={CALIB};weight-bits=4;observer=percentile;percentile=99.9;exclude=/classifier/*>"
    assert format_pipeline(parse_pipeline(text)) == text
    explicit = format_pipeline(parse_pipeline(text), explicit=True)
    assert format_pipeline(parse_pipeline(explicit), explicit=True) == explicit  # replayable
    assert get_pass("quantize").lossy and not get_pass("simplify").lossy
    for bad in ("quantize<weight-bits=3>", "quantize<observer=kl>", "quantize<act-bits=4>", "quantize<ops=Add>"):
        with pytest.raises(UsageError):
            instantiate(parse_pipeline(bad)[0])
    with pytest.raises(UsageError, match="calibration data"):
        instantiate(parse_pipeline("quantize")[0])(ir.serde.deserialize_model(_conv_relu_model()))


def _gemm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
                          inits + [numpy_helper.from_array((rng.standard_normal((8, 5)) * 0.4).astype(np.float32), "w2"),
                                   numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _x(seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((4, 16)).astype(np.float32)}


def test_steps_rule_refuses_float_outputs_shifts_and_swaps():
    """Rule "quantizer steps" (DQ output after float compute): rounding flips pass; an artifact
    that skipped quantization (values off the grid), a one-step shift of every value, a swapped
    channel or 5 steps on one value fail."""
    from optc.passes.quant.tolerance import compare_quantized, output_steps

    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Flatten", ["d"], ["y"])]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert output_steps(model) == {"y": pytest.approx(0.1)}
    ref = np.array([[1.0, 2.0, 3.0, 0.4]], np.float32)
    never = lambda: pytest.fail("not needed")  # noqa: E731

    def check(out):
        return compare_quantized([np.asarray(out, np.float32)], [ref], ["y"], 1e-4, 1e-3, model, never)

    ok = check(ref + np.float32([[0.1, -0.1, 0.0, 0.0]]))  # two flips, opposite ways
    assert ok["passed"] and "quantizer steps" in ok["outputs"][0]["tolerance_rule"]
    float_model = check(ref + np.float32([[0.013, -0.021, 0.008, 0.017]]))
    assert not float_model["passed"] and "off the output quantizer's grid" in float_model["outputs"][0]["error"]
    shifted = check(ref + np.float32(0.1))
    assert not shifted["passed"] and "systematic shift" in shifted["outputs"][0]["error"]
    assert not check(ref[:, [1, 0, 2, 3]])["passed"]  # swapped channels
    assert not check(ref + np.float32([[0.5, 0, 0, 0]]))["passed"]  # 5 steps
    assert not check(ref + np.float32([[np.nan, 0, 0, 0]]))["passed"]
    plain = _conv_relu_model()  # no quantizer: the plain tolerance
    assert not compare_quantized([ref + np.float32(0.3)], [ref], ["y"], 1e-4, 1e-3, plain, never)["passed"]


def test_exact_rule_for_integer_graphs():
    """An output computed by optc's integer ops and exact code maps only must equal the integer
    reference exactly: one step on one value fails."""
    from optc.passes.quant.integerize import integerize_model
    from optc.passes.quant.tolerance import compare_quantized, exact_outputs

    calib = {"x": np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)}
    q, _ = quantize_model(_gemm_model(), calib)
    im, details = integerize_model(q)
    assert len(details["layers"]) == 2 and exact_outputs(im) == {"y"} and exact_outputs(q) == set()
    ref = verify.reference_outputs(im, _x())
    never = lambda: pytest.fail("not needed")  # noqa: E731
    ok = compare_quantized(ref, ref, ["y"], 1e-4, 1e-3, im, never)
    assert ok["passed"] and ok["outputs"][0]["tolerance_rule"].startswith("exact")
    step = float(np.min(np.diff(np.unique(ref[0]))))  # the output grid's step
    bad = ref[0].copy()
    bad[0, 0] += step
    res = compare_quantized([bad], ref, ["y"], 1e-4, 1e-3, im, never)
    assert not res["passed"] and res["outputs"][0]["tolerance"] == 0.0


def _float_output_case():
    """A Gemm model quantized with ``output-qdq=false`` (a float output): (the QDQ model, its
    outputs, the float model's outputs, the quantization error e_q) on ``_x()``."""
    calib = {"x": np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)}
    model = _gemm_model()
    q, _ = quantize_model(model, calib, output_qdq=False)
    x = _x()
    ref, orig = verify.reference_outputs(q, x), verify.reference_outputs(model, x)
    qerr = float(np.abs(ref[0] - orig[0]).max())
    return q, ref, orig, qerr


def test_fraction_rule_refuses_the_float_model():
    """A float output of a quantized graph (output-qdq=false) passes within half the quantized
    model's own error vs the float model; the float model's own outputs fail."""
    from optc.passes.quant.tolerance import compare_quantized

    q, ref, orig, qerr = _float_output_case()
    assert qerr > 1e-2
    res = compare_quantized(orig, ref, ["y"], 1e-4, 1e-3, q, lambda: orig)
    assert not res["passed"] and "fraction of the quantization error" in res["outputs"][0]["tolerance_rule"]
    assert res["outputs"][0]["distinguishes_float_model"] is True
    near = [ref[0] + np.float32(0.3 * qerr)]
    assert compare_quantized(near, ref, ["y"], 1e-4, 1e-3, q, lambda: orig)["passed"]


def test_fraction_rule_allows_what_an_independent_run_of_the_qdq_graph_shows():
    """Deep graphs carry rounding flips further than half the quantization error (a 6-layer
    encoder: onnxruntime's run of the QDQ graph 0.8 e_q from optc's integer reference). With an
    alternative run given, an output as far as that run is passes; one farther, or the float
    model's outputs (d_alt < e_q), still fail; the rule names both figures."""
    from optc.passes.quant.tolerance import Baselines, compare_quantized

    q, ref, orig, qerr = _float_output_case()
    alt = [ref[0] + np.float32(0.7 * qerr)]  # an independent run 0.7 e_q away
    base = Baselines(lambda: orig, "the original", lambda: alt)
    at = [ref[0] + np.float32(0.65 * qerr)]
    assert not compare_quantized(at, ref, ["y"], 1e-4, 1e-3, q, lambda: orig)["passed"]  # 0.65 > FRACTION
    res = compare_quantized(at, ref, ["y"], 1e-4, 1e-3, q, base)
    assert res["passed"] and "running the QDQ graph" in res["outputs"][0]["tolerance_rule"]
    assert res["outputs"][0]["distinguishes_float_model"] is True
    assert not compare_quantized([ref[0] + np.float32(0.8 * qerr)], ref, ["y"], 1e-4, 1e-3, q, base)["passed"]
    assert not compare_quantized(orig, ref, ["y"], 1e-4, 1e-3, q, base)["passed"]


def test_unrounded_qdq_takes_out_activation_rounding_only():
    """``unrounded_qdq``: activation DQ(Q(x)) pairs become a clip to the codes' range (no
    rounding), weights stay quantized; its outputs differ from the QDQ model's by the rounding
    only. Used as the fraction rule's baseline for pre-quantized models: the unrounded model's
    own outputs fail that rule, outputs within a fraction of the rounding error pass."""
    from optc.passes.quant import qdq
    from optc.passes.quant.tolerance import compare_quantized

    calib = {"x": np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)}
    q, _ = quantize_model(_gemm_model(), calib, output_qdq=False)
    un = qdq.unrounded_qdq(q)
    ops = [n.op_type for n in un.graph.node]
    assert ops.count("Clip") == ops.count("QuantizeLinear") == 2  # the two activations (x, r); Qs left unread
    assert ops.count("DequantizeLinear") == [n.op_type for n in q.graph.node].count("DequantizeLinear") - 2
    x = _x()
    ref, unrounded, orig = (verify.reference_outputs(m, x) for m in (q, un, _gemm_model()))
    qerr = float(np.abs(ref[0] - unrounded[0]).max())
    assert 0 < qerr < float(np.abs(ref[0] - orig[0]).max())  # rounding only: weights stay quantized
    name = "the model without activation rounding"
    res = compare_quantized(unrounded, ref, ["y"], 1e-4, 1e-3, q, lambda: unrounded, name)
    assert not res["passed"] and name in res["outputs"][0]["tolerance_rule"]
    assert compare_quantized([ref[0] + np.float32(0.3 * qerr)], ref, ["y"], 1e-4, 1e-3, q, lambda: unrounded,
                             name)["passed"]
    huge = {"x": x["x"] * 1000}  # far outside the calibrated range: both models saturate at the codes' edges
    sat_q, sat_un = verify.reference_outputs(q, huge)[0], verify.reference_outputs(un, huge)[0]
    assert np.abs(sat_un - sat_q).max() <= 0.1 * np.abs(sat_q).max()


# --------------------------------------------------------------------------------------------
# mixed precision, compile, quant-debug


def test_mixed_precision_honours_the_budget_on_digits_cnn():
    model = onnx.load(MODELS / "digits_cnn.onnx")
    ev = np.load(EVAL)
    q, d = quantize_model(model, str(CALIB), weight_bits=4, max_accuracy_drop=0.0, eval_data=str(EVAL))
    mp = d["mixed_precision"]
    assert mp["budget_met"] and mp["final"]["drop_points"] <= 0.0
    assert {l["name"] for l in mp["layers"]} == {l["name"] for l in d["layers"]} | set(d["float_layers"])
    assert all(l["bits"] in (4, 8, "float") for l in mp["layers"])
    if mp["all_quantized"]["drop_points"] > 0:  # then the search raised at least one layer
        assert mp["steps"] and all("alone_sqnr_db" in l for l in mp["layers"])
    # checked independently: the QDQ model's top-1 on the labelled data is within the budget
    feeds = {"input": ev["input"]}
    acc = lambda m: np.mean(reference_outputs(m, feeds)[0].argmax(1) == ev["label"])  # noqa: E731
    assert acc(q) >= acc(model) - 1e-9


@pytest.mark.tvm
def test_compile_quantized_pipeline_verifies_against_qdq_model(tmp_path, capsys):
    from optc.cli import main

    out = tmp_path / "pkg"
    rc = main(["compile", str(MODELS / "digits_cnn.onnx"), "--passes", f"simplify,quantize<calib={CALIB}>",
               "--input-shape", "input=1,1,8,8", "--inputs", str(EVAL), "-o", str(out), "--no-measure", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["verify"]["passed"] and "optimized ONNX model" in report["verify"]["reference"]
    # on a CPU target compile appends integerize: the artifact runs optc's int8 kernels
    assert "lossy passes (quantize, integerize)" in report["verify"]["reference"]
    assert report["pipeline"].endswith(",integerize")
    assert report["fidelity"]["top1_agreement"] == 1.0 and report["fidelity"]["sqnr_db"]["logits"] > 20
    assert f"calib={CALIB}" in report["pipeline"]
    (rec,) = [r for r in report["passes"] if r["name"] == "quantize"]
    assert len(rec["details"]["layers"]) == 4
    assert "QuantizeLinear" in _ops(onnx.load(out / "model.onnx"))


def test_quant_debug_per_layer_sqnr(capsys):
    from optc.cli import main

    rc = main(["quant-debug", str(MODELS / "digits_cnn.onnx"), "--calib", str(CALIB), "--eval", str(EVAL),
               "--samples", "64", "--passes-args", "weight-bits=4", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["samples"] == 64 and len(res["layers"]) == 4
    for layer in res["layers"]:
        assert math.isfinite(layer["sqnr_db"]) and 5 < layer["sqnr_db"] < 60
        assert layer["isolated_sqnr_db"] >= layer["sqnr_db"] - 1.0  # alone it loses no more than in the chain
        assert "isolated_drop_points" in layer
    assert res["outputs"]["logits"] == res["layers"][-1]["sqnr_db"]
    assert "accuracy" in res and res["most_sensitive"]
    rc = main(["quant-debug", str(MODELS / "digits_mlp.onnx"), "--calib", str(CALIB), "--samples", "16",
               "--no-isolated"])
    text = capsys.readouterr().out
    assert rc == 0 and "Gemm" in text and "SQNR" in text


def test_dead_weight_channels_get_a_live_scale():
    """A channel whose weights decayed to ~1e-40 takes the live channels' median scale (its
    codes are 0) instead of a denormal scale that would keep the layer out of integer code."""
    from optc.passes.quant.qparams import weight_qparams

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 1e-40
    q, scale, _, _ = weight_qparams(w, 8, axis=0)
    live = np.delete(scale, 2)
    assert scale[2] == np.float32(np.median(live)) and np.all(q[2] == 0)
    assert np.allclose(scale[[0, 1, 3]], np.abs(w[[0, 1, 3]]).reshape(3, -1).max(1) / 127)
    q0, scale0, _, _ = weight_qparams(np.zeros_like(w), 8, axis=0)  # all dead: scale 1, codes 0
    assert np.all(scale0 == 1) and not q0.any()


def test_clip_with_constant_node_bounds_is_folded_into_the_layer():
    """Conv -> Clip(0, 6) whose bounds are Constant nodes (torch's ReLU6 export): the Clip is the
    layer's activation (one QuantizeLinear after it, none between), so integerize leaves no
    float DequantizeLinear -> Clip -> QuantizeLinear island (MobileNetV2 had 35 of them)."""
    from optc.passes.quant.integerize import integerize_model
    from optc.passes.quant.qdq import find_layers

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
             helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(6.0, np.float32))),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2")
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    layers, _ = find_layers(model)
    assert [(layer.op_type, layer.fused_activation) for layer in layers] == [("Conv", "Clip"), ("Conv", None)]
    q, _ = quantize_model(model, {"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)})
    im, _ = integerize_model(q)
    assert "Clip" not in {n.op_type for n in im.graph.node}

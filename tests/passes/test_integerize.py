"""integerize: QDQ layers -> ai.optc IntConv2d/IntDense; numpy references; pipeline rule."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc import pipeline, verify
from optc.passes.optc_ops import ConvGeometry, run_op
from optc.passes.quant import int_ops, quantize_model
from optc.passes.quant.integerize import auto_integerize, integerize_model
from optc.passes.quant.tolerance import output_steps
from optc.targets import get_target


def _model(group2: bool = False) -> onnx.ModelProto:
    """x[1,3,12,12] -> Conv(16, pad 1) -> Relu -> Conv(20, stride 2, asymmetric pad) -> Clip(0, 6)
    -> depthwise Conv (or group-2 Conv) -> GlobalAveragePool -> Flatten -> Gemm(20->10) -> MatMul(10->6)."""
    rng = np.random.default_rng(0)
    c3 = (20, 10) if group2 else (20, 1)
    inits = {"w1": rng.standard_normal((16, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(16) * 0.1,
             "w2": rng.standard_normal((20, 16, 3, 3)) * 0.1, "b2": rng.standard_normal(20) * 0.1,
             "w3": rng.standard_normal((c3[0], c3[1], 3, 3)) * 0.3,
             "gw": rng.standard_normal((10, 20)) * 0.3, "gb": rng.standard_normal(10),
             "mw": rng.standard_normal((10, 6)) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 0, 0, 1], strides=[2, 2]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1],
                              group=2 if group2 else 20),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["h"], name="fc", transB=1),
             helper.make_node("MatMul", ["h", "mw"], ["y"], name="mm")]
    tensors = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    tensors += [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
    graph = helper.make_graph(nodes, "int", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _calib(n=16, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 12, 12)).astype(np.float32)}


@pytest.fixture(scope="module")
def qdq_model():
    q, _ = quantize_model(_model(), _calib())
    return q


def _ops(model):
    return [n.op_type for n in model.graph.node]


def test_rewrites_every_layer_and_matches_qdq(qdq_model):
    im, details = integerize_model(qdq_model)
    onnx.checker.check_model(im)
    ops = _ops(im)
    assert ops.count("IntConv2d") == 3 and ops.count("IntDense") == 2
    assert not any(o in ops for o in ("Conv", "Gemm", "MatMul", "Relu", "Clip"))
    assert len(details["layers"]) == 5 and details["float_layers"] == []
    assert {l["name"]: l["fused_activation"] for l in details["layers"]}["conv1"] == "Relu"
    # weights stay int8 in the file
    ints = {t.name: t for t in im.graph.initializer}
    for n in im.graph.node:
        if n.domain == "ai.optc" and n.op_type in ("IntConv2d", "IntDense"):  # layers with weights
            assert ints[n.input[1]].data_type == TensorProto.INT8
            assert ints[n.input[2]].data_type == TensorProto.INT32
    # integer graph (numpy reference) vs the QDQ graph in onnxruntime: at most a few rounding
    # flips; the output step is the scale of the last DequantizeLinear
    step = output_steps(qdq_model)["y"]
    x = {"x": np.random.default_rng(7).standard_normal((1, 3, 12, 12)).astype(np.float32)}
    for seed in range(4):
        x = {"x": np.random.default_rng(seed + 10).standard_normal((1, 3, 12, 12)).astype(np.float32)}
        a = verify.reference_outputs(qdq_model, x)[0]
        b = verify.reference_outputs(im, x)[0]
        assert np.abs(a - b).max() <= 2 * step + 1e-6


def test_idempotent_and_pipeline(qdq_model, tmp_path):
    im, _ = integerize_model(qdq_model)
    again, details = integerize_model(im)
    assert details["layers"] == [] and _ops(again) == _ops(im)
    np.savez(tmp_path / "calib.npz", **_calib())
    irm = ir.serde.deserialize_model(_model())
    irm, records = pipeline.run_pipeline(irm, f"quantize<calib={tmp_path / 'calib.npz'}>,integerize")
    out = ir.serde.serialize_model(irm)
    onnx.checker.check_model(out)
    assert _ops(out).count("IntConv2d") == 3
    assert records[-1].details["layers"]


def test_unsupported_layers_stay_qdq_with_a_reason():
    q, _ = quantize_model(_model(group2=True), _calib())
    im, details = integerize_model(q)
    reasons = {f["name"]: f["reason"] for f in details["float_layers"]}
    assert list(reasons) == ["conv3"] and "group 2" in reasons["conv3"]
    assert _ops(im).count("Conv") == 1 and _ops(im).count("IntConv2d") == 2
    x = {"x": _calib(1, 3)["x"]}
    a, b = verify.reference_outputs(q, x)[0], verify.reference_outputs(im, x)[0]
    assert np.abs(a - b).max() <= 2 * output_steps(q)["y"] + 1e-6
    # output-qdq=false: layers whose output is not quantized stay QDQ, the rest is integer
    q, _ = quantize_model(_model(), _calib(), output_qdq=False)
    im, details = integerize_model(q)
    reasons = {f["name"]: f["reason"] for f in details["float_layers"]}
    assert "mm" in reasons and "QuantizeLinear" in reasons["mm"]
    assert "IntConv2d" in _ops(im) and "MatMul" in _ops(im)


def test_fixed_point_and_rounding():
    m = np.random.default_rng(0).uniform(1e-6, 0.9, 500)
    mult, shift = int_ops.fixed_point(m)
    assert mult.min() >= 2 ** 30 and mult.max() < 2 ** 31
    approx = mult.astype(np.float64) * 2.0 ** -shift.astype(np.float64)
    assert np.max(np.abs(approx / m - 1)) <= 2.0 ** -30
    # half up: 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1 (multiplier 0.5)
    mh, sh = int_ops.fixed_point(np.array([0.5]))
    acc = np.array([[1, -1, 3, -3]], np.int64).T
    y = int_ops.requantize(acc, mh, sh, 1, 0, -128, 127, np.int8)
    assert y.ravel().tolist() == [1, 0, 2, -1]
    with pytest.raises(ValueError):
        int_ops.fixed_point(np.array([2.0 ** 31]))


def _naive_conv(x, w, b, pads, strides, dilations, zp, group):
    nb, c, h, wd = x.shape
    n, cg, kh, kw = w.shape
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((nb, n, oh, ow), np.int64)
    per = n // group
    for bi in range(nb):
        for o in range(n):
            g = o // per
            for i in range(oh):
                for j in range(ow):
                    s = int(b[o])
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                hh = i * strides[0] - pads[0] + p * dilations[0]
                                ww = j * strides[1] - pads[1] + q * dilations[1]
                                v = x[bi, g * cg + ci, hh, ww] if 0 <= hh < h and 0 <= ww < wd else zp
                                s += int(v) * int(w[o, ci, p, q])
                    out[bi, o, i, j] = s
    return out


@pytest.mark.parametrize("group,dil", [(1, (1, 1)), (1, (2, 1)), (4, (1, 1))])
def test_int_conv_reference_matches_naive_loops(group, dil):
    rng = np.random.default_rng(group)
    x = rng.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 4 // group, 3, 3)).astype(np.int8)
    b = rng.integers(-500, 500, 4).astype(np.int32)
    pads, strides = (1, 2, 0, 1), (2, 1)
    ref = int_ops.int_conv2d(x, w, b, ConvGeometry((3, 3), pads, strides, dil, group), 9)
    assert np.array_equal(ref, _naive_conv(x, w, b, pads, strides, dil, 9, group))


def test_int_dense_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 7)).astype(np.int8)
    w = rng.integers(-127, 128, (5, 7)).astype(np.int8)
    b = rng.integers(-99, 99, 5).astype(np.int32)
    acc = int_ops.int_dense(x, w, b)
    assert np.array_equal(acc, x.astype(np.int64) @ w.astype(np.int64).T + b)


def _qdq_global_average_pool(x_scale, x_zp, y_scale, y_zp) -> onnx.ModelProto:
    """x (uint8 codes) -> DequantizeLinear -> GlobalAveragePool -> QuantizeLinear -> y (int8)."""
    inits = [numpy_helper.from_array(np.array(v, dt), k) for k, v, dt in
             (("sx", x_scale, np.float32), ("zx", x_zp, np.uint8), ("sy", y_scale, np.float32), ("zy", y_zp, np.int8))]
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
             helper.make_node("GlobalAveragePool", ["xf"], ["g"]),
             helper.make_node("QuantizeLinear", ["g", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "gap", [helper.make_tensor_value_info("x", TensorProto.UINT8, [4, 16, 7, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [4, 16, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_int_global_average_pool_matches_qdq():
    """IntGlobalAveragePool = DQ -> GlobalAveragePool -> Q on the codes: equal to onnxruntime's
    float computation except for rounding at .5 boundaries (one step, half up vs half to even);
    NCHW and NHWC inputs give the same codes."""
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (4, 16, 7, 7)).astype(np.uint8)
    sx, zx, sy, zy = 0.05, 120, 0.02, -3
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(_qdq_global_average_pool(sx, zx, sy, zy).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    qdq = sess.run(None, {"x": x})[0]
    mult, shift = int_ops.fixed_point([np.float32(sx) / np.float32(sy) / 49])
    attrs = dict(x_zero_point=zx, y_zero_point=zy, out_min=-128, out_max=127, to=TensorProto.INT8)
    y = run_op("IntGlobalAveragePool", x, mult, shift, **attrs)
    assert y.dtype == np.int8 and y.shape == (4, 16, 1, 1) and len(np.unique(y)) > 20
    diff = y.astype(np.int32) - qdq.astype(np.int32)
    assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= 2
    nhwc = run_op("IntGlobalAveragePool", np.ascontiguousarray(x.transpose(0, 2, 3, 1)), mult, shift,
                  x_layout="NHWC", **attrs)
    assert np.array_equal(nhwc, y)
    # the sum itself, exactly: sum of (x - zero point) over the 7 x 7 window
    acc = x.astype(np.int64).sum(axis=(2, 3)) - 49 * zx
    assert np.array_equal(y[:, :, 0, 0], int_ops.requantize(acc, mult, shift, 1, zy, -128, 127, np.int8))


def test_auto_integerize_rule():
    class Backend:
        def __init__(self, ops):
            self.ops = ops

        def supported_ops(self):
            return self.ops

    ops = {"ai.optc::IntConv2d", "ai.optc::IntDense", "ai.optc::IntGlobalAveragePool", "ai.optc::IntMatMul"}
    q = pipeline.parse_pipeline("simplify,quantize<calib=c.npz>")
    assert [s.name for s in auto_integerize(q, get_target("cpu"), Backend(ops))][-1] == "integerize"
    assert [s.name for s in auto_integerize(q, get_target("arm-a76"), Backend(ops))][-1] == "integerize"
    assert auto_integerize(q, get_target("gpu"), Backend(ops)) == q  # CPU kernels only
    assert auto_integerize(q, get_target("cpu"), Backend(set())) == q
    off = pipeline.parse_pipeline("quantize<calib=c.npz>,integerize<enabled=false>")
    assert auto_integerize(off, get_target("cpu"), Backend(ops)) == off
    plain = pipeline.parse_pipeline("simplify")
    assert auto_integerize(plain, get_target("cpu"), Backend(ops)) == plain
    assert pipeline.format_pipeline(off) == "quantize<calib=c.npz>,integerize<enabled=false>"


def _pool_model() -> onnx.ModelProto:
    """x -> Conv -> Relu -> MaxPool(3x3, s2, p1) -> Conv -> y."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_max_pool_on_codes_is_exact(monkeypatch):
    """DQ -> MaxPool -> Q with one scale/zero point becomes MaxPool on the codes; the integer
    graph's outputs do not change (max commutes with the monotone DQ/Q)."""
    from optc.passes.quant import integerize as mod

    q, _ = quantize_model(_pool_model(), _calib())
    im, details = integerize_model(q)
    onnx.checker.check_model(im)
    assert details["integer_pools"] == ["pool"]
    pool = next(n for n in im.graph.node if n.op_type == "MaxPool")
    producer = {o: n for n in im.graph.node for o in n.output}[pool.input[0]]
    assert producer.op_type == "IntConv2d"
    assert _ops(im) == ["QuantizeLinear", "IntConv2d", "MaxPool", "IntConv2d", "DequantizeLinear"]
    monkeypatch.setattr(mod, "_integer_pools", lambda *a: [])
    float_pool, _ = integerize_model(q)
    assert "MaxPool" in _ops(float_pool) and _ops(float_pool).count("DequantizeLinear") == 2
    for seed in range(3):
        x = {"x": np.random.default_rng(seed).standard_normal((1, 3, 12, 12)).astype(np.float32)}
        assert np.array_equal(verify.reference_outputs(im, x)[0], verify.reference_outputs(float_pool, x)[0])
    again, d2 = integerize_model(im)
    assert d2["layers"] == [] and _ops(again) == _ops(im)


def _residual_model() -> onnx.ModelProto:
    """x -> Conv -> Relu = a; a -> Conv -> Relu -> Conv -> Add(a) -> Relu -> depthwise Conv -> Relu
    -> Conv(1x1) -> GlobalAveragePool -> Flatten (a ResNet block, then a MobileNet-style pair)."""
    rng = np.random.default_rng(4)
    w = {"w1": (8, 3, 3, 3), "w2": (8, 8, 3, 3), "w3": (8, 8, 3, 3), "wd": (8, 1, 3, 3), "w4": (12, 8, 1, 1)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), k) for k, s in w.items()]
    p = dict(pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **p),
             helper.make_node("Relu", ["c1"], ["a"], name="relu1"),
             helper.make_node("Conv", ["a", "w2"], ["c2"], name="conv2", **p),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", **p),
             helper.make_node("Add", ["c3", "a"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "wd"], ["cd"], name="dw", group=8, **p),
             helper.make_node("Relu", ["cd"], ["rd"], name="relud"),
             helper.make_node("Conv", ["rd", "w4"], ["c4"], name="conv4"),
             helper.make_node("GlobalAveragePool", ["c4"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nhwc_between_integer_convs():
    """Activations between integer convs, group-1 and depthwise (through the residual Add), go
    NHWC; the graph input and output stay NCHW (conv1 reads the input's NCHW codes, conv4
    writes NCHW): no Transpose is left; the integer graph computes exactly the same outputs in
    either layout."""
    q, _ = quantize_model(_residual_model(), _calib())
    nchw, d0 = integerize_model(q, nhwc=False)
    im, d = integerize_model(q)
    onnx.checker.check_model(im)
    assert d0["nhwc_tensors"] == 0 and d["nhwc_tensors"] > 0
    layouts = {n.name.split("/")[0]: {a.name: a.s.decode() for a in n.attribute if a.name.endswith("_layout")}
               for n in im.graph.node if n.op_type == "IntConv2d"}
    assert layouts["conv1"] == {"y_layout": "NHWC"}  # reads the graph input's NCHW codes
    assert layouts["conv2"] == layouts["conv3"] == {"x_layout": "NHWC", "y_layout": "NHWC"}
    assert layouts["dw"] == {"x_layout": "NHWC", "y_layout": "NHWC"}  # the channels-last depthwise kernel
    assert layouts["conv4"] == {"x_layout": "NHWC"}
    assert not [n for n in im.graph.node if n.op_type == "Transpose"] and d["layout_transposes"] == 0
    for seed in range(3):
        x = {"x": np.random.default_rng(seed).standard_normal((1, 3, 12, 12)).astype(np.float32)}
        assert np.array_equal(verify.reference_outputs(im, x)[0], verify.reference_outputs(nchw, x)[0])
    again, d2 = integerize_model(im)
    assert d2["layers"] == [] and _ops(again) == _ops(im)


def test_global_average_pool_goes_integer_and_the_output_is_exact(qdq_model):
    """DQ -> GlobalAveragePool -> Q becomes IntGlobalAveragePool (reading the depthwise conv's
    codes): no float island is left, so verification compares the output exactly."""
    from optc.passes.quant.tolerance import exact_outputs

    im, details = integerize_model(qdq_model)
    assert "IntGlobalAveragePool" in _ops(im) and "GlobalAveragePool" not in _ops(im)
    assert any("pool" in p.lower() or "gap" in p.lower() or p for p in details["integer_pools"])
    assert exact_outputs(im) == {"y"}
    for seed in range(3):  # one step at most from the QDQ graph (.5 boundaries round differently)
        x = {"x": np.random.default_rng(seed + 20).standard_normal((1, 3, 12, 12)).astype(np.float32)}
        a, b = verify.reference_outputs(qdq_model, x)[0], verify.reference_outputs(im, x)[0]
        assert np.abs(a - b).max() <= 2 * output_steps(qdq_model)["y"] + 1e-6


@pytest.mark.parametrize("k, a_value, dtype", [(300, 255, np.int64), (1000, 255, np.int64), (1035, -128, np.int8)])
def test_integer_reference_matmul_is_exact_through_float_blas(k, a_value, dtype):
    """The integer reference multiplies through float BLAS: float32 where every partial sum
    stays below 2^24 (K = 300: 300 x 255 x 127), float64 beyond (K = 1000; K = 1035 of int8
    -128, whose bound 1035 x 128 x 127 passes 2^24 where 127 x 127 would not: ``np.abs`` of
    int8 -128 is -128). Same-sign products whose sums end odd past 2^24: float32 would round."""
    from optc.passes.quant.int_ops import _matmul_exact

    a = np.full((3, k), a_value, dtype)
    if dtype == np.int8:
        a[:, 0] = -127  # one odd product: the sum is odd
    b = np.full((k, 2), 127, dtype)
    exact = np.einsum("mk,kn->mn", a.astype(object), b.astype(object)).astype(np.int64)
    got = _matmul_exact(a, b)
    assert got.dtype == np.int64 and np.array_equal(got, exact)

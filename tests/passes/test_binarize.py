"""sign-to-threshold and binarize: each step compared numerically with the graph before it
(onnxruntime for standard graphs, onnx's ReferenceEvaluator with optc's ops for rewritten
ones), op and rewrite counts, reasons for non-matches, idempotence, and the post-training
(lossy) variant."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.passes import binarize as B
from optc.passes import optc_ops as ops
from optc.pipeline import format_pipeline, get_pass, instantiate, parse_pipeline, run_pipeline

ATOL = 1e-5


# ------------------------------------------------------------------------------- helpers
def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _ort(m, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _ref(m, feeds):
    return ops.reference_evaluator(m).run(None, feeds)


def _apply(m, text):
    irm, records = run_pipeline(ir.serde.deserialize_model(m), text)
    out = ir.serde.serialize_model(irm)
    onnx.checker.check_model(out)
    return out, records[-1]


def _ops(m):
    return [(n.domain, n.op_type) for n in m.graph.node]


def _binary_w(rng, n, k, shape=None):
    alpha = rng.uniform(0.05, 1.0, (n, 1)).astype(np.float32)
    w = (np.where(rng.random((n, k)) < 0.5, -1.0, 1.0) * alpha).astype(np.float32)
    return w if shape is None else w.reshape(shape)


def _bn(rng, prefix, c, inits, negative=True, zero=False):
    g = rng.uniform(0.5, 1.5, c).astype(np.float32)
    if negative:
        g[::3] *= -1
    b = rng.standard_normal(c).astype(np.float32) * 0.5
    if zero:
        g[1], b[1] = 0.0, 0.7  # constant +1 channel
        g[2], b[2] = 0.0, -0.2  # constant -1 channel
    inits |= {f"{prefix}_g": g, f"{prefix}_b": b,
              f"{prefix}_m": rng.standard_normal(c).astype(np.float32) * 0.3,
              f"{prefix}_v": rng.uniform(0.5, 2.0, c).astype(np.float32)}
    return [f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"]


def bnn_mlp(seed=0, k0=20, h1=70, h2=33, batch=6, negative=True):
    """x -> Gemm(float) -> BN -> Sign -> Gemm(+-alpha, transB=1, bias) -> BN -> Sign ->
    MatMul(+-alpha) -> y."""
    rng = np.random.default_rng(seed)
    inits = {"w0": rng.standard_normal((h1, k0)).astype(np.float32), "w1": _binary_w(rng, h2, h1),
             "b1": rng.standard_normal(h2).astype(np.float32), "w2": _binary_w(rng, 5, h2).T.copy()}
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["h0"], transB=1, name="fc0"),
             helper.make_node("BatchNormalization", ["h0", *_bn(rng, "bn0", h1, inits, negative, zero=True)], ["n0"], name="bn0"),
             helper.make_node("Sign", ["n0"], ["s0"], name="sign0"),
             helper.make_node("Gemm", ["s0", "w1", "b1"], ["h1"], transB=1, name="fc1"),
             helper.make_node("BatchNormalization", ["h1", *_bn(rng, "bn1", h2, inits, negative)], ["n1"], name="bn1"),
             helper.make_node("Sign", ["n1"], ["s1"], name="sign1"),
             helper.make_node("MatMul", ["s1", "w2"], ["y"], name="fc2")]
    m = _model(nodes, [_vi("x", [batch, k0])], [_vi("y", [batch, 5])], inits)
    return m, {"x": rng.standard_normal((batch, k0)).astype(np.float32)}


def _binary_stem(rng, inits: dict, channels: tuple[int, int], pool_stride: int) -> list:
    """The front both binary CNNs share: x -> Conv(float ``w0``, 3x3 pad 1) -> BN -> Sign ->
    Conv(binary ``w1``, 3x3 pad 1) -> BN -> Sign -> MaxPool 2x2 (``pool_stride``) -> ``p1``;
    ``channels``: the two convs' output channels; the BN parameters are drawn from ``rng`` into
    ``inits`` (bn0, then bn1)."""
    return [helper.make_node("Conv", ["x", "w0"], ["h0"], pads=[1, 1, 1, 1], name="conv0"),
            helper.make_node("BatchNormalization", ["h0", *_bn(rng, "bn0", channels[0], inits)], ["n0"], name="bn0"),
            helper.make_node("Sign", ["n0"], ["s0"], name="sign0"),
            helper.make_node("Conv", ["s0", "w1"], ["h1"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("BatchNormalization", ["h1", *_bn(rng, "bn1", channels[1], inits)], ["n1"], name="bn1"),
            helper.make_node("Sign", ["n1"], ["s1"], name="sign1"),
            helper.make_node("MaxPool", ["s1"], ["p1"], kernel_shape=[2, 2], strides=[pool_stride] * 2, name="pool")]


def bnn_cnn(seed=0, c1=70, c2=20, batch=2, hw=9):
    """x -> Conv(float) -> BN -> Sign -> Conv(+-alpha, 3x3 pad 1) -> BN -> Sign -> MaxPool ->
    Conv(+-alpha, 2x2 stride 2 dilation 1 pad (1,0,0,1), bias) -> y."""
    rng = np.random.default_rng(seed)
    inits = {"w0": rng.standard_normal((c1, 3, 3, 3)).astype(np.float32) * 0.5,
             "w1": _binary_w(rng, c2, c1 * 9, (c2, c1, 3, 3)),
             "w2": _binary_w(rng, 6, c2 * 4, (6, c2, 2, 2)),
             "b2": rng.standard_normal(6).astype(np.float32)}
    nodes = [*_binary_stem(rng, inits, (c1, c2), pool_stride=1),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["y"], pads=[1, 0, 0, 1], strides=[2, 2], name="conv2")]
    oh = (hw - 1 + 1 - 2) // 2 + 1
    m = _model(nodes, [_vi("x", [batch, 3, hw, hw])], [_vi("y", [batch, 6, oh, oh])], inits)
    return m, {"x": rng.standard_normal((batch, 3, hw, hw)).astype(np.float32)}


# ------------------------------------------------------------------------------- registry
def test_passes_registered_and_pipeline_prints_back():
    assert get_pass("sign-to-threshold") and get_pass("binarize")
    text = "simplify,sign-to-threshold,binarize<post-training>"
    assert format_pipeline(parse_pipeline(text)) == text
    assert "weight-bits=8" in format_pipeline(parse_pipeline("binarize"), explicit=True)
    assert instantiate(parse_pipeline("binarize<post-training>")[0]).lossy is True
    assert instantiate(parse_pipeline("binarize")[0]).lossy is False


# ------------------------------------------------------------------------------- sign-to-threshold
def test_bn_thresholds_math():
    gamma = np.array([2.0, -0.5, 0.0, 0.0], np.float32)
    beta = np.array([1.0, 0.25, 0.3, -0.3], np.float32)
    mean = np.array([0.5, -1.0, 0.0, 0.0], np.float32)
    var = np.array([3.0, 0.0, 1.0, 1.0], np.float32)
    t, d = B.bn_thresholds(gamma, beta, mean, var, 1.0)
    np.testing.assert_allclose(t[:2], [0.5 - 1.0 * 2.0 / 2.0, -1.0 - 0.25 * 1.0 / -0.5])
    assert list(d) == [1, -1, 1, 1] and t[2] == -np.inf and t[3] == np.inf
    assert "gamma = beta = 0" in B.bn_thresholds([0.0], [0.0], [0.0], [1.0], 1e-5)


def test_sign_to_threshold_exact_and_idempotent():
    m, feeds = bnn_mlp()
    ref = _ort(m, feeds)[0]
    m1, rec = _apply(m, "sign-to-threshold")
    assert rec.details["rewrites"] == 2 and rec.modified
    counts = _ops(m1)
    assert counts.count((ops.DOMAIN, "SignThreshold")) == 2
    assert ("", "BatchNormalization") not in counts and ("", "Sign") not in counts
    np.testing.assert_allclose(_ref(m1, feeds)[0], ref, atol=ATOL, rtol=0)
    # the threshold outputs themselves are exactly the Sign outputs
    m_sign = onnx.helper.make_model(m.graph, opset_imports=m.opset_import)
    m_sign.graph.output.append(_vi("s0", None))
    s0 = _ort(m_sign, feeds)[1]
    m1b = onnx.ModelProto()
    m1b.CopyFrom(m1)
    m1b.graph.output.append(_vi("s0", None))
    np.testing.assert_array_equal(_ref(m1b, feeds)[1], s0)
    m2, rec2 = _apply(m1, "sign-to-threshold")
    assert not rec2.modified and rec2.details["rewrites"] == 0


@pytest.mark.parametrize("negative,n_inputs", [(False, 2), (True, 3)])
def test_sign_to_threshold_direction_input_is_optional(negative, n_inputs):
    m, feeds = bnn_mlp(negative=negative)
    m1, _ = _apply(m, "sign-to-threshold")
    st = [n for n in m1.graph.node if n.op_type == "SignThreshold"]
    assert [len(n.input) for n in st] == [n_inputs, n_inputs]  # D only where some gamma < 0
    np.testing.assert_allclose(_ref(m1, feeds)[0], _ort(m, feeds)[0], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------- binarize
@pytest.mark.parametrize("fold", [True, False])
def test_binarize_mlp_exact_vs_previous_graph(fold):
    m, feeds = bnn_mlp()
    m1, _ = _apply(m, "sign-to-threshold")
    before = _ref(m1, feeds)[0]
    text = "binarize" + ("" if fold else "<fold-scales=false>")
    m2, rec = _apply(m1, text)
    d = rec.details
    assert d["by_op"] == {"Gemm->BinaryDense": 1, "MatMul->BinaryDense": 1}
    assert d["thresholds_folded"] == (1 if fold else 0)
    assert any("fc0" in s and "graph input" in s for s in d["skipped"])
    np.testing.assert_allclose(_ref(m2, feeds)[0], before, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_ref(m2, feeds)[0], _ort(m, feeds)[0], atol=ATOL, rtol=0)
    dense = [n for n in m2.graph.node if n.op_type == "BinaryDense"]
    inits = {t.name: numpy_helper.to_array(t) for t in m2.graph.initializer}
    assert all(inits[n.input[1]].dtype == np.uint64 for n in dense)
    if fold:  # fc1 feeds thresholds only: alpha and bias are folded, thresholds are integers
        fc1 = next(n for n in dense if n.name.startswith("fc1"))
        assert len(fc1.input) == 2
        st = next(n for n in m2.graph.node if n.op_type == "SignThreshold" and n.input[0] == fc1.output[0])
        t = inits[st.input[1]]
        assert np.all(t[np.isfinite(t)] == np.round(t[np.isfinite(t)]))
    m3, rec3 = _apply(m2, text)
    assert not rec3.modified


def test_binarize_cnn_exact_vs_previous_graph():
    m, feeds = bnn_cnn()
    ref = _ort(m, feeds)[0]
    m1, _ = _apply(m, "sign-to-threshold")
    np.testing.assert_allclose(_ref(m1, feeds)[0], ref, atol=1e-4, rtol=0)
    m2, rec = _apply(m1, "binarize")
    assert rec.details["by_op"] == {"Conv->BinaryConv2d": 2}
    assert rec.details["thresholds_folded"] == 1  # conv1 -> BN threshold (through nothing)
    np.testing.assert_allclose(_ref(m2, feeds)[0], _ref(m1, feeds)[0], atol=1e-4, rtol=0)
    conv = next(n for n in m2.graph.node if n.op_type == "BinaryConv2d" and n.name.startswith("conv1"))
    w = {t.name: numpy_helper.to_array(t) for t in m2.graph.initializer}[conv.input[1]]
    assert w.shape == (20, ops.words(70 * 9))  # compact (kh, kw, c) packing


def test_binarize_after_bn_folded_into_conv():
    """fuse-bn folds BN into the binary conv: weights stay two-valued per channel (signs flip
    where gamma < 0), Sign follows the conv; still recognised, and exact."""
    m, feeds = bnn_cnn(seed=3)
    m1, _ = _apply(m, "fuse-bn")
    assert ("", "BatchNormalization") not in _ops(m1)
    m2, rec = _apply(m1, "sign-to-threshold,binarize")
    assert rec.details["by_op"] == {"Conv->BinaryConv2d": 2}
    assert rec.details["thresholds_folded"] == 1  # Sign(alpha * x + b) -> integer threshold
    assert ("", "Sign") in _ops(m2)  # only the float conv0 -> Sign remains a Sign
    np.testing.assert_allclose(_ref(m2, feeds)[0], _ort(m, feeds)[0], atol=1e-4, rtol=0)


def test_binarize_explains_non_matches():
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 6)).astype(np.float32), "v": _binary_w(rng, 4, 6)}
    nodes = [helper.make_node("Sign", ["x"], ["s"]),
             helper.make_node("Gemm", ["s", "w"], ["y0"], transB=1, name="float_w"),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Gemm", ["r", "v"], ["y1"], transB=1, name="relu_in")]
    m = _model(nodes, [_vi("x", [2, 6])], [_vi("y0", [2, 4]), _vi("y1", [2, 4])], inits)
    m2, rec = _apply(m, "binarize")
    assert not rec.modified
    reasons = " | ".join(rec.details["skipped"])
    assert "float_w: binary activation, but weights are not two values" in reasons
    assert "relu_in: activation comes from Relu" in reasons


# ------------------------------------------------------------------------------- k-bit
def _kbit_model(pattern: str, seed=0, ab=2, wb=3):
    rng = np.random.default_rng(seed)
    s = np.float32(0.125)
    hi = np.float32(s * ((1 << ab) - 1))
    qw = rng.integers(0, 1 << wb, (9, 40))
    scale = rng.uniform(0.01, 0.1, (9, 1)).astype(np.float32)
    inits = {"s": np.array(s, np.float32), "lo": np.array(0, np.float32), "hi": np.array(hi, np.float32),
             "w": (scale * (qw - 3)).astype(np.float32), "qmax": np.array((1 << ab) - 1, np.float32),
             "wc": (scale[:, :, None, None] * (rng.integers(0, 1 << wb, (9, 4, 3, 3)) - 2)).astype(np.float32),
             "zp": np.array(0, np.uint8)}
    if pattern == "clip-div-round-mul":
        q = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Div", ["c", "s"], ["d"]),
             helper.make_node("Round", ["d"], ["r"]), helper.make_node("Mul", ["r", "s"], ["a"])]
    elif pattern == "div-round-clip-mul":
        q = [helper.make_node("Div", ["x", "s"], ["d"]), helper.make_node("Round", ["d"], ["r"]),
             helper.make_node("Clip", ["r", "lo", "qmax"], ["c"]), helper.make_node("Mul", ["c", "s"], ["a"])]
    else:  # qdq
        q = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["a"])]
    nodes = q + [helper.make_node("Flatten", ["a"], ["f"]),
                 helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc"),
                 helper.make_node("Conv", ["a", "wc"], ["z"], pads=[1, 1, 1, 1], name="conv")]
    m = _model(nodes, [_vi("x", [3, 4, 5, 2])], [_vi("y", [3, 9]), _vi("z", [3, 9, 5, 2])], inits,
               opset=19 if pattern == "qdq" else 17)
    x = rng.uniform(-0.2, 0.6, (3, 4, 5, 2)).astype(np.float32)
    return m, {"x": x}


@pytest.mark.parametrize("pattern", ["clip-div-round-mul", "div-round-clip-mul", "qdq"])
def test_binarize_kbit_patterns_exact(pattern):
    m, feeds = _kbit_model(pattern)
    ref = _ort(m, feeds)
    m2, rec = _apply(m, "binarize")
    assert rec.details["by_op"] == {"Gemm->BitserialDense": 1, "Conv->BitserialConv2d": 1}, rec.details
    node = next(n for n in m2.graph.node if n.op_type == "BitserialDense")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["act_bits"] == 2 and attrs["weight_bits"] == 3 and abs(attrs["act_scale"] - 0.125) < 1e-9
    for got, want in zip(_ref(m2, feeds), ref):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_binarize_bit_limits():
    m, _ = _kbit_model("clip-div-round-mul", wb=3)
    _, rec = _apply(m, "binarize<weight-bits=2>")
    assert rec.details["rewrites"] == 0
    assert any("needs 3 bits" in s or "> 2^2" in s for s in rec.details["skipped"]), rec.details


def test_uniform_grid():
    w = np.array([[-0.3, 0.1, 0.5, 0.1], [2.0, 2.0, 2.0, 2.0]], np.float32)
    codes, scale, offset, bits = B.uniform_grid(w, 8)
    np.testing.assert_allclose(scale[:, None] * codes + offset[:, None], w, atol=1e-6)
    assert bits == 2 and codes[0].tolist() == [0, 1, 2, 1]
    assert "uniform grid" in B.uniform_grid(np.array([[0.0, 1.0, 1.7]], np.float32), 8)


# ------------------------------------------------------------------------------- post-training
def test_post_training_is_lossy_and_binary():
    rng = np.random.default_rng(1)
    inits = {"w0": rng.standard_normal((16, 8)).astype(np.float32),
             "w1": rng.standard_normal((12, 16)).astype(np.float32),
             "w2": rng.standard_normal((3, 12)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["h0"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("Gemm", ["r0", "w1"], ["h1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2"], ["y"], transB=1, name="fc2")]
    m = _model(nodes, [_vi("x", [4, 8])], [_vi("y", [4, 3])], inits)
    feeds = {"x": rng.standard_normal((4, 8)).astype(np.float32)}
    m2, rec = _apply(m, "binarize<post-training>")
    assert rec.details["post_training"]["lossy"] is True
    assert rec.details["by_op"] == {"Gemm->BinaryDense": 1}  # first and last stay float
    sign = next(n for n in m2.graph.node if n.op_type == "Sign")
    assert sign.input[0] == "h0"  # Sign(z), not Sign(Relu(z))
    w = {t.name: numpy_helper.to_array(t) for t in m2.graph.initializer}
    dense = next(n for n in m2.graph.node if n.op_type == "BinaryDense")
    np.testing.assert_allclose(w[dense.input[2]], np.abs(inits["w1"]).mean(1), rtol=1e-6)
    y = _ref(m2, feeds)[0]
    assert y.shape == (4, 3) and not np.allclose(y, _ort(m, feeds)[0], atol=1e-3)


# ------------------------------------------------------------------------------- fuse-binary-threshold
def bnn_pool_cnn(seed=0, c0=8, c1=70, c2=24, batch=3, hw=7):
    """Conv(float) -> BN -> Sign -> [binary Conv -> BN -> Sign -> MaxPool 2x2/2] -> binary Conv
    -> BN -> Sign (graph output); hw odd, so the first pool drops a row and a column."""
    rng = np.random.default_rng(seed)
    inits = {"w0": rng.standard_normal((c0, 2, 3, 3)).astype(np.float32),
             "w1": _binary_w(rng, c1, c0 * 9, (c1, c0, 3, 3)),
             "w2": _binary_w(rng, c2, c1 * 9, (c2, c1, 3, 3))}
    nodes = [*_binary_stem(rng, inits, (c0, c1), pool_stride=2),
             helper.make_node("Conv", ["p1", "w2"], ["h2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("BatchNormalization", ["h2", *_bn(rng, "bn2", c2, inits)], ["n2"], name="bn2"),
             helper.make_node("Sign", ["n2"], ["y"], name="sign2")]
    p = hw // 2
    m = _model(nodes, [_vi("x", [batch, 2, hw, hw])], [_vi("y", [batch, c2, p, p])], inits)
    return m, {"x": rng.standard_normal((batch, 2, hw, hw)).astype(np.float32)}


def test_fuse_binary_threshold_exact_and_idempotent():
    m, feeds = bnn_pool_cnn()
    m2, _ = _apply(m, "sign-to-threshold,binarize")
    want = _ref(m2, feeds)[0]
    assert set(np.unique(want)) == {-1.0, 1.0}
    np.testing.assert_array_equal(want, np.sign(_ort(m, feeds)[0]))  # no exact zeros here
    m3, rec = _apply(m2, "fuse-binary-threshold")
    assert rec.details["rewrites"] == 2 and rec.details["with_pool"] == 1
    fused = [n for n in m3.graph.node if n.op_type == "BinaryConv2dThreshold"]
    assert [list(next(a.ints for a in n.attribute if a.name == "pool_shape")) for n in fused] == [[2, 2], [1, 1]]
    assert not any(op in ("MaxPool", "BinaryConv2d") for _, op in _ops(m3))
    assert sum(op == "SignThreshold" for _, op in _ops(m3)) == 1  # the float first layer's
    np.testing.assert_array_equal(_ref(m3, feeds)[0], want)
    m4, rec2 = _apply(m3, "fuse-binary-threshold")
    assert rec2.details["rewrites"] == 0 and _ops(m4) == _ops(m3)


def test_fuse_binary_threshold_explains_non_matches():
    # bnn_cnn: conv1's threshold is followed by an overlapping MaxPool (stride 1: not fused,
    # the pool stays) and conv2 keeps alpha/bias (its output is the graph output)
    m, feeds = bnn_cnn()
    m2, _ = _apply(m, "sign-to-threshold,binarize")
    m3, rec = _apply(m2, "fuse-binary-threshold")
    assert rec.details["rewrites"] == 1 and rec.details["with_pool"] == 0
    assert any("alpha/bias" in s for s in rec.details["skipped"])
    assert ("", "MaxPool") in _ops(m3)
    np.testing.assert_allclose(_ref(m3, feeds)[0], _ref(m2, feeds)[0], atol=0, rtol=0)

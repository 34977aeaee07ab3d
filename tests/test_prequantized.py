"""Pre-quantized input models (issue 13, part 3): a QDQ model written by onnxruntime's
``quantize_static`` is integerized by ``optc compile`` by default on CPU/ARM and verified
against optc's integer reference (exact) and onnxruntime on the original QDQ model
(quantizer-step rule)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc import pipeline, verify
from optc.errors import VerificationError
from optc.passes.quant import tolerance
from optc.passes.quant.integerize import auto_integerize, integerize_model, qdq_layers
from optc.targets import get_target

ortq = pytest.importorskip("onnxruntime.quantization")

SHAPE = (1, 3, 8, 8)
NO_MEASURE = optc.CompileOptions.of(measure=False)


def _float_net(group: int = 1) -> onnx.ModelProto:
    """conv -> relu -> conv (+ residual) -> relu -> maxpool -> gap -> flatten -> gemm; with
    ``group`` 2 the second conv is a grouped conv (not depthwise): no integer kernel."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 8 // group, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array((rng.standard_normal((5, 8)) * 0.3).astype(np.float32), "fw"),
             numpy_helper.from_array((rng.standard_normal(5) * 0.1).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], group=group),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class _Calib(ortq.CalibrationDataReader):
    def __init__(self, n: int = 8):
        rng = np.random.default_rng(1)
        self._it = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def _ort_qdq(tmp_path, act=None, per_channel=True, group=1, **extra):
    """(float model path, QDQ model path): ``quantize_static`` in QDQ format, int8 weights."""
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(_float_net(group), src)
    ortq.quantize_static(str(src), str(dst), _Calib(), quant_format=ortq.QuantFormat.QDQ, per_channel=per_channel,
                         activation_type=act or ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                         extra_options=extra or None)
    return src, dst


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _integerize_record(report) -> dict:
    return next(r for r in report["passes"] if r["name"] == "integerize")["details"]


# ----------------------------------------------------------------------------- no TVM
def test_auto_integerize_triggers_on_a_qdq_input_model(tmp_path):
    src, dst = _ort_qdq(tmp_path)
    qdq = onnx.load(str(dst))
    assert qdq_layers(qdq) == ["conv1", "conv2", "fc"] and qdq_layers(onnx.load(str(src))) == []

    class Backend:
        def supported_ops(self):
            from optc.passes.quant.integerize import INTEGER_OPS
            return set(INTEGER_OPS)

    plain = pipeline.parse_pipeline(optc.DEFAULT_PIPELINE)
    assert auto_integerize(plain, get_target("cpu"), Backend()) == plain  # no model: pipeline rule only
    assert [s.name for s in auto_integerize(plain, get_target("cpu"), Backend(), qdq)][-1] == "integerize"
    assert [s.name for s in auto_integerize(plain, get_target("arm-a76"), Backend(), qdq)][-1] == "integerize"
    assert auto_integerize(plain, get_target("cpu"), Backend(), onnx.load(str(src))) == plain  # float model
    assert auto_integerize(plain, get_target("gpu"), Backend(), qdq) == plain  # CPU kernels only
    off = pipeline.parse_pipeline("simplify,integerize<enabled=false>")
    assert auto_integerize(off, get_target("cpu"), Backend(), qdq) == off


def test_onnxruntime_layouts_integerize(tmp_path):
    """Every layer of quantize_static's QDQ output matches: per-channel int8 weights with an
    int32 bias DQ, and the variant with a float weight quantized in the graph
    (AddQDQPairToWeight) and a float bias (QuantizeBias=False), per-tensor weights. The
    integer reference stays within the quantizer-step rule of onnxruntime on the QDQ model."""
    from optc.passes.optc_ops import reference_evaluator

    x = np.random.default_rng(7).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    for sub, kw in (("pc", {}), ("alt", dict(per_channel=False, AddQDQPairToWeight=True, QuantizeBias=False))):
        (tmp_path / sub).mkdir()
        _, dst = _ort_qdq(tmp_path / sub, **kw)
        qdq = onnx.load(str(dst))
        if sub == "alt":  # the weights really are float initializers read through QuantizeLinear
            assert sum(n.op_type == "QuantizeLinear" and n.input[0] in ("w1", "w2", "fw") for n in qdq.graph.node) == 3
        im, details = integerize_model(qdq)
        onnx.checker.check_model(im)
        assert [layer["name"] for layer in details["layers"]] == ["conv1", "conv2", "fc"]
        assert details["float_layers"] == []
        if sub == "alt":
            assert all(layer["bias"].startswith("float bias") for layer in details["layers"])
        ops = [n.op_type for n in im.graph.node]
        assert ops.count("IntConv2d") == 2 and ops.count("IntDense") == 1 and "Conv" not in ops
        ref = np.concatenate([verify.reference_outputs(qdq, {"x": x[i:i + 1]})[0] for i in range(len(x))])
        ours = np.concatenate([reference_evaluator(im).run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
        v = tolerance.compare_to_original_qdq([ours], [ref], ["y"], 1e-4, 1e-3, qdq)
        assert v["passed"] and v["judged"] == ["y"], v
        again, d2 = integerize_model(im)  # idempotent
        assert d2["layers"] == [] and len(again.graph.node) == len(im.graph.node)


def test_compare_to_original_qdq_refuses_wrong_outputs(tmp_path):
    _, dst = _ort_qdq(tmp_path)
    qdq = onnx.load(str(dst))
    s = tolerance.output_steps(qdq)["y"]
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    ref = verify.reference_outputs(qdq, {"x": x})[0]

    def check(out):
        return tolerance.compare_to_original_qdq([out], [ref], ["y"], 1e-4, 1e-3, qdq)

    assert check(ref.copy())["passed"]
    one = ref.copy()
    one.flat[0] += s  # one flip: fine
    assert check(one)["passed"]
    bad = check(ref + np.float32(s))  # every value one step up: a systematic shift
    assert not bad["passed"] and "systematic" in bad["outputs"][0]["error"]
    bad = check(ref + np.float32(0.3 * s))  # off the grid: not quantized
    assert not bad["passed"] and "grid" in bad["outputs"][0]["error"]
    far = ref.copy()
    far.flat[0] += 6 * s
    assert not check(far)["passed"]


# ----------------------------------------------------------------------------- compile (TVM)
@pytest.mark.tvm
def test_ort_qdq_uint8_per_channel_compiles_to_integer_kernels(tmp_path):
    pytest.importorskip("tvm")
    src, dst = _ort_qdq(tmp_path)
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    assert report["pipeline"] == optc.DEFAULT_PIPELINE + ",integerize"
    ops = _ops(tmp_path / "pkg" / "model.onnx")
    assert ops.count("IntConv2d") == 2 and ops.count("IntDense") == 1 and "Conv" not in ops
    details = _integerize_record(report)
    assert [layer["activation"] for layer in details["layers"]] == ["uint8"] * 3 and details["float_layers"] == []
    v = report["verify"]
    assert v["passed"] and "optc's numpy implementations" in v["reference"]
    assert v["original_qdq"]["passed"] and v["original_qdq"]["judged"] == ["y"]
    assert "original QDQ model" in v["original_qdq"]["reference"]
    assert v["original_qdq"]["outputs"][0]["tolerance_rule"].startswith("quantizer steps")


@pytest.mark.tvm
def test_ort_qdq_asymmetric_int8_activations(tmp_path):
    pytest.importorskip("tvm")
    _, dst = _ort_qdq(tmp_path, act=ortq.QuantType.QInt8)
    zps = [numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer if t.name == "x_zero_point"]
    assert zps[0].dtype == np.int8 and zps[0] != 0  # asymmetric
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    details = _integerize_record(report)
    assert [layer["activation"] for layer in details["layers"]] == ["int8"] * 3
    assert _ops(tmp_path / "pkg" / "model.onnx").count("IntConv2d") == 2
    assert report["verify"]["passed"] and report["verify"]["original_qdq"]["passed"]


def _conv1d_qdq(tmp_path) -> tuple:
    """A 1-D conv net (stride 2 + padding, then 1x1) with a float op (Exp) after the last
    quantizer, through ``quantize_static``: (QDQ path, calibration-like input)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((24, 16, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(24) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 24, 1)) * 0.2).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1], strides=[2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Exp", ["c2"], ["y"], name="exp")]
    graph = helper.make_graph(nodes, "c1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 50])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 25])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src, dst = tmp_path / "c1d.onnx", tmp_path / "c1d_qdq.onnx"
    onnx.save(model, src)

    class Calib(ortq.CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"x": rng.standard_normal((1, 16, 50)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self._it, None)

    ortq.quantize_static(str(src), str(dst), Calib(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                         activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8)
    return dst


@pytest.mark.tvm
def test_ort_qdq_conv1d_integerized_as_one_row(tmp_path):
    """1-D convs run on the 2-D integer kernel over one row (Unsqueeze -> IntConv2d [1, k] ->
    Squeeze); the float Exp after the last quantizer is judged by the fraction rule against the
    same model without activation rounding (a pre-quantized model has no float original)."""
    pytest.importorskip("tvm")
    dst = _conv1d_qdq(tmp_path)
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    details = _integerize_record(report)
    assert [layer["name"] for layer in details["layers"]] == ["conv1", "conv2"] and details["float_layers"] == []
    ops = _ops(tmp_path / "pkg" / "model.onnx")
    assert ops.count("IntConv2d") == 2 and "Conv" not in ops and ops.count("Unsqueeze") == 2
    kernel = [a.ints for n in onnx.load(str(tmp_path / "pkg" / "model.onnx")).graph.node if n.op_type == "IntConv2d"
              for a in n.attribute if a.name == "kernel_shape"]
    assert [list(k) for k in kernel] == [[1, 3], [1, 1]]
    v = report["verify"]
    rule = v["outputs"][0]["tolerance_rule"]
    assert v["passed"] and "without activation rounding" in rule, rule
    assert v["outputs"][0]["distinguishes_float_model"] and v["original_qdq"]["passed"]


@pytest.mark.tvm
def test_non_matching_layer_stays_float_with_a_reason(tmp_path):
    pytest.importorskip("tvm")
    _, dst = _ort_qdq(tmp_path, group=2)
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    details = _integerize_record(report)
    assert [layer["name"] for layer in details["layers"]] == ["conv1", "fc"]
    reasons = {f["name"]: f["reason"] for f in details["float_layers"]}
    assert list(reasons) == ["conv2"] and "group 2" in reasons["conv2"]
    ops = _ops(tmp_path / "pkg" / "model.onnx")
    assert ops.count("IntConv2d") == 1 and ops.count("Conv") == 1
    assert report["verify"]["passed"] and report["verify"]["original_qdq"]["passed"]


@pytest.mark.tvm
def test_float_artifact_fails_and_opt_out(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    from optc.backends.tvm.backend import CpuSession

    src, dst = _ort_qdq(tmp_path)
    # opting out: the QDQ graph computed in float, checked by the quantizer-step rule
    report = optc.compile(dst, "cpu", tmp_path / "off", passes=optc.DEFAULT_PIPELINE + ",integerize<enabled=false>",
                          options=NO_MEASURE)
    assert "IntConv2d" not in _ops(tmp_path / "off" / "model.onnx") and report["verify"]["passed"]
    assert report["verify"]["outputs"][0]["tolerance_rule"].startswith("quantizer steps")
    # an artifact that returns the float model's outputs (before quantize_static) fails
    float_model = onnx.load(str(src))

    def float_outputs(self, sets):
        return [verify.reference_outputs(float_model, {"x": s[0]}) for s in sets]

    monkeypatch.setattr(CpuSession, "run_many", float_outputs)
    with pytest.raises(VerificationError, match="optc's integer reference"):
        optc.compile(dst, "cpu", tmp_path / "bad", options=NO_MEASURE)
    assert not (tmp_path / "bad").exists()


@pytest.mark.tvm
@pytest.mark.qemu
def test_ort_qdq_compiles_for_arm(tmp_path):
    pytest.importorskip("tvm")
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    _, dst = _ort_qdq(tmp_path)
    report = optc.compile(dst, "arm-a76", tmp_path / "pkg", options=NO_MEASURE)
    assert report["pipeline"].endswith(",integerize")
    assert _ops(tmp_path / "pkg" / "model.onnx").count("IntConv2d") == 2
    assert report["verify"]["passed"] and report["verify"]["original_qdq"]["passed"]


@pytest.mark.tvm
def test_disagreeing_with_onnxruntime_on_the_original_fails(tmp_path, monkeypatch):
    """Both verdicts must pass: an artifact equal to optc's integer reference still fails when
    onnxruntime on the original QDQ model says otherwise (here: that reference shifted by one
    output step everywhere, a systematic shift)."""
    pytest.importorskip("tvm")
    from optc import stages

    _, dst = _ort_qdq(tmp_path)
    step = np.float32(tolerance.output_steps(onnx.load(str(dst)))["y"])
    real = stages.Job.reference

    def shifted(self, which):
        refs = real(self, which)
        return [r + step for r in refs] if which == "original" else refs

    monkeypatch.setattr(stages.Job, "reference", shifted)
    with pytest.raises(VerificationError, match="original QDQ model.*systematic shift"):
        optc.compile(dst, "cpu", tmp_path / "bad", options=NO_MEASURE)


@pytest.mark.tvm
@pytest.mark.parametrize("kernels, warned", [("generic", True), ("vnni", False)])
def test_integer_kernels_without_a_dot_product_are_warned_about(tmp_path, monkeypatch, kernels, warned):
    """A QDQ model integerized for a CPU whose int8 kernels are plain vector code (x86 without
    VNNI) gets a warning naming the float alternative; with a dot-product ISA it does not."""
    import warnings

    pytest.importorskip("tvm")
    from optc.backends.tvm import facts
    from optc.progress import OptcWarning

    monkeypatch.setattr(facts, "int8_kernels", lambda target: kernels)
    _, dst = _ort_qdq(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    said = [str(w.message) for w in caught if issubclass(w.category, OptcWarning) and "dot-product" in str(w.message)]
    assert bool(said) == warned and (not said or "integerize<enabled=false>" in said[0])

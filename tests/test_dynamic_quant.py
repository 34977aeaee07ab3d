"""Dynamically quantized and weight-only quantized input models (issue 13 item 3, issue 14 item 3).

* onnxruntime's ``quantize_dynamic`` writes ``DynamicQuantizeLinear`` (per-tensor scale and zero
  point from the run-time min/max), ``MatMulInteger`` and ``ConvInteger`` (exact int32, zero
  points as inputs). optc lowers MatMulInteger on its int8 dense kernel
  (``optc.backends.tvm.int8._matmul_integer``) and ConvInteger as an int32 convolution; the
  reference is the ONNX spec's arithmetic (``verify.SPEC_REFERENCE_OPS``: onnxruntime's u8 x s8
  kernels saturate int16 pair sums on CPUs without VNNI), and the artifact must match it exactly.
* ``IntDense`` with 3-D activations (optc's own ``quantize`` + ``integerize`` on a
  ``[batch, seq, hidden]`` MatMul).
* asymmetric uint8 weights in QDQ models (``quantize_static(weight_type=QUInt8)``): IntDense's
  ``W_zero_point``; on a Conv the layer stays float with the reason.
* com.microsoft ``MatMulNBits`` (4-bit weight-only): ``expand-matmul-nbits``, verified against
  onnxruntime on the original model.
Every lowering has a test in which a deliberately wrong one (a zero point ignored, a channel's
multiplier swapped, TVM's own DynamicQuantizeLinear) is refused by verification.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc import verify
from optc.errors import VerificationError

ortq = pytest.importorskip("onnxruntime.quantization")
pytestmark = pytest.mark.tvm

NO_MEASURE = optc.CompileOptions.of(measure=False)


def _model(nodes, inits: dict, inputs: dict, outputs: dict, opset: int = 17) -> onnx.ModelProto:
    def vi(name, spec):
        return helper.make_tensor_value_info(name, spec[0], spec[1])

    graph = helper.make_graph(nodes, "net", [vi(k, v) for k, v in inputs.items()],
                              [vi(k, v) for k, v in outputs.items()],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def dynamic_matmul(w_type: str, w_zp, m: int = 4, k: int = 40, n: int = 24, lead=()) -> onnx.ModelProto:
    """x -> DynamicQuantizeLinear -> MatMulInteger(x_q, W, x_zp, W_zp) -> Cast -> * (s_x s_w):
    the pattern quantize_dynamic writes, with full-range weights (what makes onnxruntime's
    AVX2 u8 x s8 kernel saturate)."""
    rng = np.random.default_rng(0)
    lo, hi = (-127, 128) if w_type == "int8" else (0, 256)
    inits = {"w": rng.integers(lo, hi, (k, n)).astype(w_type), "ws": np.array(0.01, np.float32)}
    ins = ["xq", "w", "xz"]
    if w_zp is not None:
        inits["wz"] = np.asarray(w_zp, w_type)
        ins.append("wz")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ins, ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    return _model(nodes, inits, {"x": (TensorProto.FLOAT, [*lead, m, k])},
                  {"y": (TensorProto.FLOAT, [*lead, m, n])})


def _float_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "w2": (rng.standard_normal((6, 8, 3, 3)) * 0.2).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 0, 1, 0], strides=[1, 2])]
    return _model(nodes, inits, {"x": (TensorProto.FLOAT, [1, 3, 8, 8])}, {"y": (TensorProto.FLOAT, [1, 6, 8, 3])})


def _dynamic(tmp_path, model: onnx.ModelProto, name: str, **kw):
    src, dst = tmp_path / f"{name}_float.onnx", tmp_path / f"{name}.onnx"
    onnx.save(model, src)
    ortq.quantize_dynamic(str(src), str(dst), **kw)
    return dst


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


# ----------------------------------------------------------------------------- reference


def test_reference_is_the_spec_arithmetic():
    """MatMulInteger models are checked against exact int32 (onnx ReferenceEvaluator), whatever
    onnxruntime's kernel computes on this CPU."""
    model = dynamic_matmul("int8", 0)
    assert "ReferenceEvaluator" in verify.reference_name(model)
    x = np.random.default_rng(3).standard_normal((4, 40)).astype(np.float32)
    y = verify.reference_outputs(model, {"x": x})[0]
    s = np.float32((max(x.max(), 0) - min(x.min(), 0)) / 255)
    zp = np.clip(np.rint(-min(x.min(), 0) / s), 0, 255)
    q = np.clip(np.rint(x / s) + zp, 0, 255)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.int64)
    exact = ((q.astype(np.int64) - int(zp)) @ w).astype(np.float32) * np.float32(s * np.float32(0.01))
    np.testing.assert_allclose(y, exact, rtol=1e-6, atol=1e-6)


def _dql_model() -> onnx.ModelProto:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])
    return _model([node], {}, {"x": (TensorProto.FLOAT, [4, 16])},
                  {"xq": (TensorProto.UINT8, [4, 16]), "xs": (TensorProto.FLOAT, []), "xz": (TensorProto.UINT8, [])})


@pytest.mark.parametrize("stock", [False, True])
def test_dynamic_quantize_linear_on_a_constant_input(tmp_path, monkeypatch, stock):
    """All-zero activations (max = min): onnxruntime's scale 1, zero point 0; TVM's own
    converter divided by 0 and is refused."""
    from optc.backends.tvm import lower

    if stock:
        monkeypatch.delitem(lower.CUSTOM_CONVERTERS, "::DynamicQuantizeLinear")
    src = tmp_path / "dql.onnx"
    onnx.save(_dql_model(), src)
    zeros = {"x": np.zeros((4, 16), np.float32)}
    if stock:
        with pytest.raises(VerificationError):
            optc.compile(src, "cpu", tmp_path / "bad", inputs=zeros, options=NO_MEASURE)
    else:
        assert optc.compile(src, "cpu", tmp_path / "pkg", inputs=zeros, options=NO_MEASURE)["verify"]["passed"]


# ----------------------------------------------------------------------------- MatMulInteger


@pytest.mark.parametrize("w_type, w_zp, lead, k", [("int8", 0, (), 40), ("int8", None, (2,), 40),
                                                   ("uint8", 131, (), 40), ("int8", list(range(-12, 12)), (), 40),
                                                   ("int8", 0, (2,), 600), ("uint8", 131, (), 600),
                                                   ("int8", list(range(-12, 12)), (), 600)])
def test_matmul_integer_compiles_exactly(tmp_path, w_type, w_zp, lead, k):
    """int8 symmetric weights (no row term), uint8 weights with a zero point (shifted to int8,
    row sums subtracted), per-column zero points, 3-D activations: 0 difference. K = 40 is
    exact in float32 (the float path on CPUs without an int8 dot product); K = 600 with
    full-range weights is not (2^24 bound) and takes the int8 dense kernel everywhere."""
    from optc.backends.tvm.int8 import _exact_in_fp32

    if w_zp is not None and np.size(w_zp) > 1:
        w_zp = np.asarray(w_zp)
    assert _exact_in_fp32(k, 140) == (k == 40)
    src = tmp_path / "mm.onnx"
    onnx.save(dynamic_matmul(w_type, w_zp, k=k, lead=lead), src)
    report = optc.compile(src, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    v = report["verify"]
    assert v["passed"] and v["outputs"][0]["max_abs_error"] == 0.0
    assert "ReferenceEvaluator" in v["reference"]


@pytest.mark.parametrize("k, lowering", [(40, "_matmul_integer"), (600, "_matmul_integer_kernel")])
def test_matmul_integer_ignoring_the_zero_point_is_refused(tmp_path, monkeypatch, k, lowering):
    """A lowering that drops the activation zero point builds, runs and is refused (float
    path and int8 kernel)."""
    from optc.backends.tvm import int8

    real = getattr(int8, lowering)
    monkeypatch.setattr(int8, lowering, lambda bb, a, b, a_zp, b_zp, *rest: real(bb, a, b, None, b_zp, *rest))
    src = tmp_path / "mm.onnx"
    onnx.save(dynamic_matmul("int8", 0, k=k), src)
    with pytest.raises(VerificationError, match="differs"):
        optc.compile(src, "cpu", tmp_path / "bad", options=NO_MEASURE)
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- ConvInteger


@pytest.mark.parametrize("w_type", ["QInt8", "QUInt8"])
def test_quantize_dynamic_cnn_conv_integer(tmp_path, w_type):
    dst = _dynamic(tmp_path, _float_cnn(), "cnn", weight_type=getattr(ortq.QuantType, w_type))
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= _ops(dst)
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    v = report["verify"]
    assert v["passed"] and v["outputs"][0]["max_rel_error"] < 1e-5


def test_conv_integer_ignoring_the_zero_point_is_refused(tmp_path, monkeypatch):
    from optc.backends.tvm import int8

    real = int8._conv_integer
    monkeypatch.setattr(int8, "_conv_integer",
                        lambda bb, x, w, x_zp, w_zp, attr, *rest: real(bb, x, w, None, w_zp, attr, *rest))
    dst = _dynamic(tmp_path, _float_cnn(), "cnn", weight_type=ortq.QuantType.QInt8)
    with pytest.raises(VerificationError, match="differs"):
        optc.compile(dst, "cpu", tmp_path / "bad", options=NO_MEASURE)


# ----------------------------------------------------------------------------- IntDense, 3-D


def _mlp_3d() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"w1": (rng.standard_normal((16, 12)) * 0.3).astype(np.float32),
             "b1": (rng.standard_normal(12) * 0.1).astype(np.float32),
             "w2": (rng.standard_normal((12, 6)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return _model(nodes, inits, {"x": (TensorProto.FLOAT, [2, 5, 16])}, {"y": (TensorProto.FLOAT, [2, 5, 6])})


def test_int_dense_reference_on_3d_activations():
    from optc.passes.optc_ops import run_op
    from optc.passes.quant.int_ops import fixed_point

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, 3, 37)).astype(np.uint8)
    w = rng.integers(-127, 128, (21, 37)).astype(np.int8)
    b = rng.integers(-3000, 3000, 21).astype(np.int32)
    mult, shift = fixed_point(rng.uniform(0.3, 3.0, 21) / (37 * 128))
    attrs = dict(x_zero_point=7, y_zero_point=3, out_min=-120, out_max=127, to=3)
    y3 = run_op("IntDense", x, w, b, mult, shift, **attrs)
    y2 = run_op("IntDense", x.reshape(6, 37), w, b, mult, shift, **attrs)
    assert y3.shape == (2, 3, 21) and np.array_equal(y3.reshape(6, 21), y2)


def test_quantize_integerizes_3d_matmul(tmp_path):
    """optc's quantize + integerize on [batch, seq, hidden] activations: IntDense on 3-D codes
    (TVM import used to fail: "too many values to unpack"), exact against the reference."""
    src, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save(_mlp_3d(), src)
    np.savez(calib, x=np.random.default_rng(2).standard_normal((16, 5, 16)).astype(np.float32))
    report = optc.compile(src, "cpu", tmp_path / "pkg", passes=f"quantize<calib={calib}>", options=NO_MEASURE)
    assert report["pipeline"].endswith(",integerize")
    ops = [n for n in onnx.load(str(tmp_path / "pkg" / "model.onnx")).graph.node if n.op_type == "IntDense"]
    assert len(ops) == 2
    v = report["verify"]
    assert v["passed"] and v["outputs"][0]["max_abs_error"] == 0.0


def test_int_dense_3d_wrong_requantization_axis_is_refused(tmp_path, monkeypatch):
    """A kernel that requantizes a 3-D IntDense with the wrong channel's multiplier is refused."""
    from optc.backends.tvm import int8

    real = int8._dense

    def wrong(bb, x, w, bias, requant, rq):
        from tvm import relax

        if requant:
            requant = [bb.emit(relax.op.flip(requant[0], axis=0)), requant[1]]
        return real(bb, x, w, bias, requant, rq)

    monkeypatch.setattr(int8, "_dense", wrong)
    src, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save(_mlp_3d(), src)
    np.savez(calib, x=np.random.default_rng(2).standard_normal((16, 5, 16)).astype(np.float32))
    with pytest.raises(VerificationError):
        optc.compile(src, "cpu", tmp_path / "bad", passes=f"quantize<calib={calib}>", options=NO_MEASURE)


# ----------------------------------------------------------------------------- the dynamic rule


def test_unrounded_model_is_the_float_model():
    """Without DynamicQuantizeLinear's rounding the graph computes x @ DQ(w)."""
    from optc.passes.quant.dynamic import unrounded_outputs

    model = dynamic_matmul("uint8", 131)
    x = np.random.default_rng(5).standard_normal((4, 40)).astype(np.float32)
    w = (numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64) - 131) * 0.01
    np.testing.assert_allclose(unrounded_outputs(model, {"x": x})[0], x @ w, rtol=1e-4, atol=1e-4)


def test_dynamic_rule_refuses_the_unrounded_outputs():
    """An artifact that skipped the activation quantization (the unrounded model's outputs)
    differs by exactly e_q > FRACTION * e_q; one code flip's worth of difference passes."""
    from optc.passes.quant.dynamic import unrounded_outputs
    from optc.passes.quant.tolerance import compare_dynamic

    model = dynamic_matmul("int8", 0)
    x = np.random.default_rng(6).standard_normal((4, 40)).astype(np.float32)
    ref = verify.reference_outputs(model, {"x": x})
    fl = unrounded_outputs(model, {"x": x})
    bad = compare_dynamic(fl, ref, ["y"], 1e-4, 1e-3, lambda: fl)
    assert not bad["passed"] and bad["outputs"][0]["distinguishes_unrounded_model"]
    flip = [ref[0].copy()]
    flip[0][0, 0] += 127 * float(np.float32(0.01)) * (x.max() - min(x.min(), 0)) / 255  # one code, full weight
    assert compare_dynamic(flip, ref, ["y"], 1e-4, 1e-3, lambda: fl)["passed"]


# ----------------------------------------------------------------------------- asymmetric weights


def _u8_weights(tmp_path, build, name: str):
    from tests.test_qoperator import _Calib

    model = build()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    src, dst = tmp_path / f"{name}_float.onnx", tmp_path / f"{name}.onnx"
    onnx.save(model, src)
    ortq.quantize_static(str(src), str(dst), _Calib(shape), quant_format=ortq.QuantFormat.QDQ, per_channel=False,
                         activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QUInt8)
    return dst


def test_uint8_asymmetric_weights_integerize_exactly(tmp_path):
    """quantize_static(weight_type=QUInt8): uint8 weights with zero points 118/120 become
    IntDense with W_zero_point; exact against the integer reference and within the quantizer
    steps of onnxruntime on the original QDQ model."""
    from tests.test_qoperator import _matmul_net

    dst = _u8_weights(tmp_path, _matmul_net, "mlp")
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    layers = next(p for p in report["passes"] if p["name"] == "integerize")["details"]["layers"]
    assert len(layers) == 2 and all("weight_zero_point" in layer for layer in layers)
    v = report["verify"]
    assert v["passed"] and v["outputs"][0]["max_abs_error"] == 0.0 and v["original_qdq"]["passed"]


def test_uint8_weights_zero_point_ignored_is_refused(tmp_path, monkeypatch):
    from tests.test_qoperator import _matmul_net

    from optc.backends.tvm import int8

    monkeypatch.setattr(int8, "_dense_weight_zero_point",
                        lambda bb, x, w, bias, mult, shift, w_zp, rq: int8._dense(bb, x, w, bias, [mult, shift], rq))
    dst = _u8_weights(tmp_path, _matmul_net, "mlp")
    with pytest.raises(VerificationError):
        optc.compile(dst, "cpu", tmp_path / "bad", options=NO_MEASURE)


def test_uint8_weights_on_conv_stay_float_with_the_reason(tmp_path):
    from tests.test_qoperator import _conv_net

    from optc.passes.quant.integerize import integerize_model

    _, details = integerize_model(onnx.load(str(_u8_weights(tmp_path, _conv_net, "conv"))))
    convs = [f for f in details["float_layers"] if f["op"] == "Conv"]
    assert len(convs) == 2 and all("zero point" in f["reason"] for f in convs)
    assert [layer["op"] for layer in details["layers"]] == ["IntDense"]


# ----------------------------------------------------------------------------- a BERT-style encoder


def _torch_encoder(path, d: int = 32, heads: int = 2, ff: int = 64, seq: int = 16) -> None:
    """One post-LN transformer layer with separate q/k/v/o and FFN Linears (as BERT exports)."""
    torch = pytest.importorskip("torch")
    import math

    torch.manual_seed(0)

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(16, d)
            self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
            self.f1, self.f2 = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)

        def forward(self, x):
            x = self.inp(x)
            b, t, _ = x.shape

            def split(y):
                return y.reshape(b, t, heads, d // heads).transpose(1, 2)

            att = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / math.sqrt(d // heads), -1)
            x = self.ln1(x + self.o((att @ split(self.v(x))).transpose(1, 2).reshape(b, t, d)))
            return self.ln2(x + self.f2(torch.nn.functional.gelu(self.f1(x))))

    torch.onnx.export(Enc().eval(), torch.randn(1, seq, 16), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])


@pytest.mark.slow
def test_quantize_dynamic_bert_style_encoder(tmp_path):
    """The issue's target: a quantize_dynamic BERT-style encoder compiles with the default
    command and verifies (MatMulInteger on optc's dense kernel)."""
    src, dst = tmp_path / "enc.onnx", tmp_path / "enc_dyn.onnx"
    _torch_encoder(src)
    ortq.quantize_dynamic(str(src), str(dst), weight_type=ortq.QuantType.QInt8)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= _ops(dst)
    report = optc.compile(dst, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    v = report["verify"]
    # its layers are chained (a flip at one DynamicQuantizeLinear reaches the next): the chained rule
    assert v["passed"] and v["outputs"][0]["tolerance_rule"].startswith("chained dynamic quantization")


@pytest.mark.slow
@pytest.mark.qemu
def test_matmul_integer_on_arm(tmp_path):
    """--target arm (Cortex-A72, no dotprod: the generic int32 kernel), run under qemu."""
    import shutil

    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs qemu-aarch64 and the aarch64 cross compiler")
    src = tmp_path / "mm.onnx"
    onnx.save(dynamic_matmul("uint8", 131), src)
    report = optc.compile(src, "arm", tmp_path / "pkg", options=NO_MEASURE)
    assert report["verify"]["passed"] and report["verify"]["outputs"][0]["max_abs_error"] == 0.0


# ----------------------------------------------------------------------------- MatMulNBits


def nbits_model(zero_points: bool = True, bias: bool = True, k: int = 40, n: int = 12,
                block: int = 16) -> onnx.ModelProto:
    """A hand-packed com.microsoft MatMulNBits (4-bit codes, K not a multiple of the block,
    packed uint8 zero points, a bias) on ``x [2, 3, K]``."""
    rng = np.random.default_rng(9)
    blocks = -(-k // block)
    codes = rng.integers(0, 16, (n, blocks * block)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, blocks, block // 2)
    inits = {"B": packed, "scales": rng.uniform(0.01, 0.05, (n, blocks)).astype(np.float32)}
    ins = ["x", "B", "scales"]
    if zero_points:
        zp = rng.integers(0, 16, (n, blocks + blocks % 2)).astype(np.uint8)
        inits["zp"] = (zp[:, 0::2] | (zp[:, 1::2] << 4))
        ins.append("zp")
    if bias:
        inits["bias"] = rng.standard_normal(n).astype(np.float32)
        ins += [""] * (5 - len(ins)) + ["bias"]
    node = helper.make_node("MatMulNBits", ins, ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, n])],
                              [numpy_helper.from_array(v, name) for name, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("zero_points, bias", [(True, True), (False, False)])
def test_expand_matmul_nbits_matches_onnxruntime(zero_points, bias):
    from optc.passes.quant.nbits import expand_matmul_nbits

    q = nbits_model(zero_points, bias)
    e, details = expand_matmul_nbits(q)
    assert details["expanded"] == 1 and not details["skipped"]
    assert [n.op_type for n in e.graph.node] == ["MatMul"] + (["Add"] if bias else [])
    onnx.checker.check_model(e, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 40)).astype(np.float32)
    np.testing.assert_allclose(verify.reference_outputs(e, {"x": x})[0], verify.reference_outputs(q, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_matmul_nbits_quantizer_model_compiles(tmp_path):
    """onnxruntime's MatMulNBitsQuantizer on a float MatMul (4 bits, blocks of 16, asymmetric):
    compiled with the default command, verified against onnxruntime on the original."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    w = (np.random.default_rng(0).standard_normal((64, 32)) * 0.2).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w}, {"x": (TensorProto.FLOAT, [2, 5, 64])},
                   {"y": (TensorProto.FLOAT, [2, 5, 32])})
    quantizer = MatMulNBitsQuantizer(model, block_size=16, is_symmetric=False)
    quantizer.process()
    src = tmp_path / "nbits.onnx"
    onnx.save(quantizer.model.model, src)
    assert "MatMulNBits" in _ops(src)
    report = optc.compile(src, "cpu", tmp_path / "pkg", options=NO_MEASURE)
    assert report["pipeline"].startswith("expand-matmul-nbits,")
    v = report["verify"]
    assert v["passed"] and "onnxruntime" in v["reference"] and "original model" in v["reference"]


def test_matmul_nbits_zero_point_ignored_is_refused(tmp_path, monkeypatch):
    from optc.passes.quant import nbits

    real = nbits.dequantize_nbits
    monkeypatch.setattr(nbits, "dequantize_nbits", lambda b, s, zp, *rest: real(b, s, None, *rest))
    src = tmp_path / "nbits.onnx"
    onnx.save(nbits_model(), src)
    with pytest.raises(VerificationError, match="differs"):
        optc.compile(src, "cpu", tmp_path / "bad", options=NO_MEASURE)


def test_matmul_nbits_with_g_idx_is_kept_with_the_reason():
    from optc.passes.quant.nbits import expand_matmul_nbits

    q = nbits_model()
    q.graph.node[0].input[4] = "g_idx"
    q.graph.initializer.append(numpy_helper.from_array(np.arange(40, dtype=np.int32) // 16, "g_idx"))
    _, details = expand_matmul_nbits(q)
    assert details["expanded"] == 0 and "g_idx" in next(iter(details["skipped"].values()))


def test_chained_dynamic_quantizers_carry_flips():
    """One quantize_dynamic layer bounds a flip's effect by half the model's own quantization
    error; a DynamicQuantizeLinear fed (through any ops) by another's result does not: those
    models get the chained rule (root mean square, widened maximum)."""
    from onnx import TensorProto, helper, numpy_helper

    from optc.passes.quant.dynamic import carries_flips

    rng = np.random.default_rng(0)

    def layer(i, x):
        return [helper.make_node("DynamicQuantizeLinear", [x], [f"q{i}", f"s{i}", f"z{i}"]),
                helper.make_node("MatMulInteger", [f"q{i}", f"w{i}", f"z{i}"], [f"m{i}"]),
                helper.make_node("Cast", [f"m{i}"], [f"c{i}"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"])]

    def model(layers):
        nodes, x = [], "x"
        for i in range(layers):
            nodes += layer(i, x)
            nodes.append(helper.make_node("Relu", [f"y{i}"], [f"r{i}"]))
            x = f"r{i}"
        inits = [numpy_helper.from_array(rng.integers(-100, 100, (8, 8)).astype(np.int8), f"w{i}") for i in range(layers)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, 8])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    assert not carries_flips(model(1))
    chain = model(3)
    assert carries_flips(chain)
    # the chained rule can fail: the unrounded graph (no activation rounding), a 3 % wrong scale
    # and NaN are refused; the exact reference passes
    from optc.passes.quant.dynamic import unrounded_outputs
    from optc.passes.quant.tolerance import compare_dynamic

    xs = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(4)]
    refs = verify.join_calls([verify.reference_outputs(chain, x) for x in xs])
    unrounded = verify.join_calls([unrounded_outputs(chain, x) for x in xs])
    check = lambda outs: compare_dynamic(outs, refs, ["y"], 1e-5, 1e-4, lambda: unrounded, carried=True)  # noqa: E731
    assert check(refs)["passed"]
    assert not check(unrounded)["passed"]
    assert not check([refs[0] * np.float32(1.03)])["passed"]
    assert not check([np.full_like(refs[0], np.nan)])["passed"]
    assert check(refs)["outputs"][0]["distinguishes_unrounded_model"]
    # a reference that moves as much under one float32 step of its inputs as under the rounding
    # (an EEG U-Net of 25 chained quantizers) admits the unrounded graph, and the verdict says so;
    # a wrong scale and NaN still fail
    gap = np.abs(refs[0].astype(np.float64) - unrounded[0])
    chaotic = lambda: [(float(gap.max()), float(np.sqrt(np.mean(gap * gap))))]  # noqa: E731
    loose = lambda outs: compare_dynamic(outs, refs, ["y"], 1e-5, 1e-4, lambda: unrounded,  # noqa: E731
                                         carried=True, sensitivity=chaotic)
    assert loose(unrounded)["passed"] and not loose(unrounded)["outputs"][0]["distinguishes_unrounded_model"]
    assert not loose([refs[0] * np.float32(1.5)])["passed"]
    assert not loose([np.full_like(refs[0], np.nan)])["passed"]


def test_reference_sensitivity_moves_inputs_by_one_float32_step():
    """The perturbed inputs differ from the given ones by exactly one float32 step (a float64
    target made float64 steps, which vanish in the cast back: no perturbation at all)."""
    from optc.passes.quant.dynamic import _one_step

    rng = np.random.default_rng(0)
    v = rng.standard_normal(1000).astype(np.float32)
    w = _one_step(v, rng)
    assert w.dtype == np.float32 and np.all(w != v)
    assert np.all((np.nextafter(v, np.float32(np.inf)) == w) | (np.nextafter(v, np.float32(-np.inf)) == w))
    ids = rng.integers(0, 9, 10)
    assert _one_step(ids, rng) is ids

"""com.microsoft DynamicQuantizeLSTM (onnxruntime's ``quantize_dynamic`` of an LSTM; issue 13).

On CPU targets optc lowers the node as onnxruntime computes it (``recurrent.convert_dynamic``):
X and, every step, the hidden state quantized to uint8 at run time, integer GEMMs (VNNI where
the CPU has it, int16 codes otherwise), verified against the spec arithmetic (numpy) by the
dynamic-quantization rule (half the distance to the unrounded model). Backends without that
kernel (CUDA) get ``expand-dynamic-lstm`` (``optc.passes.quant.dynamic_lstm``): ONNX's LSTM on the
dequantized, transposed weights, checked exactly against that model and, within the original's
own activation-quantization error, against the original's spec arithmetic. Tested here:
quantize_dynamic writes the op; the numpy spec reference equals onnxruntime's kernel (up to the
int16 pair saturation of its u8 x s8 GEMM on CPUs without VNNI, modelled here to show it is
the only difference); the kernel against the spec; the compile on both paths; and wrong
artifacts (a scale, the gate order, no activation rounding) refused by verification.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc.errors import UnsupportedModelError, VerificationError
from optc.passes.quant import dynamic_lstm as dl

ort = pytest.importorskip("onnxruntime")
ortq = pytest.importorskip("onnxruntime.quantization")

NO_MEASURE = optc.CompileOptions.of(measure=False)
T, N, K, H = 5, 1, 12, 16


def _float_lstm(direction: str = "forward", peepholes: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    d = 2 if direction == "bidirectional" else 1
    inits = {"W": rng.standard_normal((d, 4 * H, K)) * 0.3, "R": rng.standard_normal((d, 4 * H, H)) * 0.3,
             "B": rng.standard_normal((d, 8 * H)) * 0.1, "h0": rng.standard_normal((d, N, H)) * 0.2}
    ins = ["x", "W", "R", "B", "", "h0"]
    if peepholes:
        inits["P"] = rng.standard_normal((d, 3 * H)) * 0.1
        ins += ["", "P"]
    node = helper.make_node("LSTM", ins, ["y", "yh", "yc"], hidden_size=H, direction=direction)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, d, N, H]),
            helper.make_tensor_value_info("yh", TensorProto.FLOAT, [d, N, H]),
            helper.make_tensor_value_info("yc", TensorProto.FLOAT, [d, N, H])]
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, K])],
                              outs, [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _quantized(tmp_path, direction="forward", per_channel=False, peepholes=False):
    src, dst = tmp_path / "f.onnx", tmp_path / f"q_{direction}_{per_channel}.onnx"
    onnx.save(_float_lstm(direction, peepholes), src)
    ortq.quantize_dynamic(str(src), str(dst), op_types_to_quantize=["LSTM"], per_channel=per_channel)
    return dst


def dynamic_lstm_model() -> onnx.ModelProto:
    """A DynamicQuantizeLSTM written by hand (int8 weights, per-tensor scales, no onnxruntime
    quantizer): the idempotence case of ``expand-dynamic-lstm``."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.integers(-60, 61, (1, K, 4 * H)).astype(np.int8), "w"),
             numpy_helper.from_array(rng.integers(-60, 61, (1, H, 4 * H)).astype(np.int8), "r"),
             numpy_helper.from_array(np.array([0.01], np.float32), "ws"),
             numpy_helper.from_array(np.array([0], np.int8), "wz"),
             numpy_helper.from_array(np.array([0.02], np.float32), "rs"),
             numpy_helper.from_array(np.array([0], np.int8), "rz")]
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "w", "r", "", "", "", "", "", "ws", "wz", "rs", "rz"],
                            ["y"], domain=dl.MS, hidden_size=H)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, 1, N, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(dl.MS, 1)])
    model.ir_version = 8
    return model


def test_hand_written_node_matches_onnxruntime_spec():
    """The idempotence case is a valid node: onnxruntime runs it and the spec reference agrees
    (weights within +-60: pair sums of 255 * 60 * 2 cannot saturate int16)."""
    model = dynamic_lstm_model()
    ref, spec = _ort(model, _x())[0], dl.spec_outputs(model, _x())[0]
    np.testing.assert_allclose(ref, spec, atol=1e-5)


def _x(seed: int = 1) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((T, N, K)).astype(np.float32)}


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _saturating_gemm(a, w, rounding):
    """onnxruntime's AVX2 u8 x s8 GEMM: raw codes multiplied in adjacent pairs whose sums saturate
    to int16 (vpmaddubsw), then the zero-point correction."""
    codes, scale = w
    a = np.asarray(a, np.float32)
    lo, hi = np.float32(min(float(a.min()), 0.0)), np.float32(max(float(a.max()), 0.0))
    s = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zp = np.clip(np.rint(-lo / s), 0, 255)
    q = np.clip(np.rint(a / s) + zp, 0, 255).astype(np.int64)
    if q.shape[1] % 2:
        q, codes = np.pad(q, ((0, 0), (0, 1))), np.pad(codes, ((0, 1), (0, 0)))
    prod = q[:, :, None] * codes[None]
    acc = np.clip(prod[:, 0::2] + prod[:, 1::2], -32768, 32767).sum(1) - int(zp) * codes.sum(0)[None]
    return (acc.astype(np.float32) * (s * scale)).astype(np.float32)


@pytest.mark.parametrize("direction, per_channel, peepholes", [("forward", False, False), ("reverse", False, True),
                                                               ("bidirectional", True, False)])
def test_spec_reference_is_onnxruntimes_kernel(tmp_path, monkeypatch, direction, per_channel, peepholes):
    """quantize_dynamic writes DynamicQuantizeLSTM; the spec reference (numpy) equals onnxruntime
    on it, exactly up to float rounding once onnxruntime's int16 pair saturation is modelled
    (on a CPU with VNNI there is none, and the unmodelled reference is the one that agrees)."""
    path = _quantized(tmp_path, direction, per_channel, peepholes)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["DynamicQuantizeLSTM"]
    ref = _ort(model, _x())
    exact = dl.spec_outputs(model, _x())
    monkeypatch.setattr(dl, "_gemm", lambda a, w, r: _saturating_gemm(a, w, r))
    saturated = dl.spec_outputs(model, _x())
    best = min(max(float(np.abs(a - b).max()) for a, b in zip(ref, outs)) for outs in (exact, saturated))
    assert best < 1e-5


def test_rewrite_is_the_unrounded_model(tmp_path):
    """The expanded model is ONNX's LSTM on (W - z) * s transposed: onnxruntime on it equals the
    spec reference without activation rounding; the com.microsoft opset and the int8 weights
    are gone; a second run finds nothing."""
    model = onnx.load(str(_quantized(tmp_path, "bidirectional", per_channel=True)))
    out, details = dl.expand_dynamic_lstm(model)
    onnx.checker.check_model(out, full_check=True)
    assert details == {"expanded": 1, "skipped": {}}
    assert [n.op_type for n in out.graph.node] == ["LSTM"]
    assert all(op.domain != dl.MS for op in out.opset_import)
    assert all(t.data_type == TensorProto.FLOAT for t in out.graph.initializer)
    for a, b in zip(_ort(out, _x()), dl.spec_outputs(model, _x(), rounding=False)):
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert dl.expand_dynamic_lstm(out)[1]["expanded"] == 0


def test_non_constant_weight_is_skipped_with_reason():
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "w", "r", "", "", "", "", "", "ws", "", "rs", ""],
                            ["y"], domain=dl.MS, hidden_size=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.INT8, None) for n in "xw"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    _, details = dl.expand_dynamic_lstm(helper.make_model(graph))
    assert details["expanded"] == 0 and "W ('w') is not a constant" in details["skipped"]["y"]


def test_forms_the_reference_cannot_check_are_left_with_reason():
    """A clip attribute or a sequence_lens input: the spec reference that verifies the rewrite
    covers neither, so the node is not rewritten (and compile refuses it by name)."""
    model = dynamic_lstm_model()
    model.graph.node[0].attribute.append(helper.make_attribute("clip", 3.0))
    _, details = dl.expand_dynamic_lstm(model)
    assert details["expanded"] == 0 and "clip" in details["skipped"]["y"]
    model = dynamic_lstm_model()
    model.graph.node[0].input[4] = "x"  # any name: a sequence_lens input
    _, details = dl.expand_dynamic_lstm(model)
    assert details["expanded"] == 0 and "sequence_lens" in details["skipped"]["y"]


EXPAND = "expand-dynamic-lstm,simplify,fold-constants,remove-identity,dce"


@pytest.mark.tvm
@pytest.mark.parametrize("direction, per_channel, peepholes", [("forward", False, False), ("reverse", False, True),
                                                               ("bidirectional", True, False)])
def test_compiles_to_integer_gemms_and_verifies(tmp_path, direction, per_channel, peepholes):
    """cpu: the node is lowered as it is (no expansion) and the artifact matches the spec
    arithmetic by the recurrent dynamic rule (root mean square within half the unrounded
    model's, which the rule tells apart)."""
    path = _quantized(tmp_path, direction, per_channel, peepholes)
    report = optc.compile(path, "cpu", tmp_path / "pkg", inputs=_x(), options=NO_MEASURE)
    v = report["verify"]
    assert v["passed"] and "expand-dynamic-lstm" not in report["pipeline"]
    assert "DynamicQuantizeLSTM as onnxruntime specifies it" in v["reference"]
    for out in v["outputs"]:
        assert out["tolerance_rule"].startswith("chained dynamic quantization")
        assert out["distinguishes_unrounded_model"] and out["rms_error"] <= out["rms_tolerance"]


@pytest.mark.tvm
def test_expand_path_still_compiles_and_verifies(tmp_path):
    """``expand-dynamic-lstm`` asked for (what CUDA gets): the artifact matches the expanded
    model at the float tolerance and the original's spec arithmetic within its
    activation-quantization error (both verdicts recorded)."""
    path = _quantized(tmp_path, "bidirectional", True)
    report = optc.compile(path, "cpu", tmp_path / "pkg", inputs=_x(),
                          options=NO_MEASURE, passes=EXPAND)
    v = report["verify"]
    assert v["passed"] and v["original_dynamic_lstm"]["passed"]
    assert "expand-dynamic-lstm" in report["pipeline"]
    assert v["max_abs_error"] < 1e-4
    second = v["original_dynamic_lstm"]["outputs"]
    assert all(0 < o["max_abs_error"] <= o["tolerance"] for o in second)


def test_cuda_backend_gets_the_expansion():
    """The integer recurrent kernel is a CPU loop nest: CUDA's op list leaves the node out, so
    ``load`` puts ``expand-dynamic-lstm`` in its pipeline."""
    pytest.importorskip("tvm")
    from optc.backends.tvm.backend import CpuBackend
    from optc.backends.tvm.cuda import CudaBackend

    assert "com.microsoft::DynamicQuantizeLSTM" in CpuBackend().supported_ops()
    assert "com.microsoft::DynamicQuantizeLSTM" not in CudaBackend().supported_ops()


@pytest.mark.tvm
@pytest.mark.parametrize("mode, batch, hidden", [("int16", 3, 37), ("vnni", 1, 40), ("vnni", 2, 37)])
def test_kernel_is_the_spec_arithmetic(mode, batch, hidden):
    """The recurrent kernel in dynamic mode against the spec's numpy step (run-time uint8 state,
    exact integer products): equal to float rounding, and far from the unrounded recurrence. Hidden
    sizes whose columns leave a partial VNNI tile and whose rows are not a multiple of 4."""
    import tvm

    from optc import verify
    from optc.backends.tvm import recurrent_kernel as rk

    if mode == "vnni" and not verify.host_has_vnni():
        pytest.skip("no AVX-512 VNNI on this host")
    steps, h = 6, hidden
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, (1, h, 4 * h)).astype(np.int8)
    scale = (rng.random((1, 4 * h)) * 0.01 + 0.002).astype(np.float32)
    xw = rng.standard_normal((steps * batch, 4 * h)).astype(np.float32)
    bias = rng.standard_normal((1, 4 * h)).astype(np.float32) * 0.1
    h0, c0 = (rng.standard_normal((1, batch, h)).astype(np.float32) * 0.5 for _ in range(2))
    acts = (("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0), ("tanh", 0.0, 0.0))
    spec = rk.CellSpec("LSTM", steps, batch, h, (False,), (acts,), lanes=16 if mode == "vnni" else 8, dynamic=mode)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4" if mode == "vnni" else "haswell"})
    lib = tvm.tirx.build(tvm.script.from_source(rk.kernel_source(spec)), target=target)
    outs = [np.zeros((steps, 1, batch, h), np.float32), np.zeros((1, batch, h), np.float32),
            np.zeros((1, batch, h), np.float32)]
    args = [xw, *rk.dynamic_weights(codes, None, scale, mode == "vnni"), bias, h0, c0]
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args + outs]
    lib(*tensors)
    y = tensors[-3].numpy()[:, 0]

    def spec_steps(rounding: bool) -> np.ndarray:
        hs, c, ys = h0[0], c0[0], []
        for t in range(steps):
            g = xw[t * batch:(t + 1) * batch] + dl._gemm(hs, (codes[0].astype(np.int64), scale[0]), rounding) + bias[0]
            i, o, f, z = np.split(g, 4, -1)
            c = dl._sigmoid(f) * c + dl._sigmoid(i) * np.tanh(z)
            hs = (dl._sigmoid(o) * np.tanh(c)).astype(np.float32)
            ys.append(hs)
        return np.stack(ys)

    rounded, unrounded = spec_steps(True), spec_steps(False)
    assert np.abs(y - rounded).max() < 1e-5
    assert np.abs(rounded - unrounded).max() > 100 * np.abs(y - rounded).max()


def test_unrounded_artifact_is_refused(tmp_path):
    """What a float kernel computes (the recurrence without the run-time activation rounding)
    is not the quantized model: the recurrent rule refuses it (root mean square), and a NaN."""
    from optc.passes.quant.tolerance import compare_dynamic

    model = onnx.load(str(_quantized(tmp_path, "bidirectional", True)))
    feeds = _x()
    refs, unrounded = dl.spec_outputs(model, feeds), dl.spec_outputs(model, feeds, rounding=False)
    names = [o.name for o in model.graph.output]
    verdict = compare_dynamic(unrounded, refs, names, 1e-5, 1e-4, lambda: unrounded, carried=True)
    assert not verdict["passed"]
    assert all(o["rms_error"] > o["rms_tolerance"] for o in verdict["outputs"])
    assert compare_dynamic(refs, refs, names, 1e-5, 1e-4, lambda: unrounded, carried=True)["passed"]
    nan = [np.where(np.arange(r.size).reshape(r.shape) == 0, np.nan, r) for r in refs]
    assert not compare_dynamic(nan, refs, names, 1e-5, 1e-4, lambda: unrounded, carried=True)["passed"]


_RIGHT = dl.dequantize_lstm_weight


def _scaled(q, s, z):
    return _RIGHT(q, np.asarray(s) * 1.15, z)


def _gates_swapped(q, s, z):
    w = _RIGHT(q, s, z)
    i, o, f, c = np.split(w, 4, axis=1)
    return np.ascontiguousarray(np.concatenate([f, o, i, c], axis=1))  # iofc read as fioc


@pytest.mark.tvm
@pytest.mark.parametrize("wrong", [_scaled, _gates_swapped])
def test_wrong_rewrite_is_refused(tmp_path, monkeypatch, wrong):
    """expand-dynamic-lstm with a scale 15 % off or the input and forget gates swapped compiles
    to an artifact that matches its own (wrong) expanded model, but not the original's spec
    arithmetic within (1 + FRACTION) x its quantization error: refused by name."""
    monkeypatch.setattr(dl, "dequantize_lstm_weight", wrong)
    path = _quantized(tmp_path)
    with pytest.raises(VerificationError, match="DynamicQuantizeLSTM"):
        optc.compile(path, "cpu", tmp_path / "bad", inputs=_x(),
                     options=NO_MEASURE, passes=EXPAND)


def _kernel_scale_off(weights):
    def wrong(codes, zero, scale, vnni):
        return weights(codes, zero, np.asarray(scale) * 1.15, vnni)
    return wrong


def _kernel_gates_swapped(weights):
    def wrong(codes, zero, scale, vnni):
        i, o, f, c = np.split(codes, 4, axis=2)
        return weights(np.ascontiguousarray(np.concatenate([f, o, i, c], axis=2)), zero, scale, vnni)
    return wrong


@pytest.mark.tvm
@pytest.mark.parametrize("wrong", [_kernel_scale_off, _kernel_gates_swapped])
def test_wrong_integer_kernel_is_refused(tmp_path, monkeypatch, wrong):
    """The integer path with R's scales 15 % off or the input and forget gates swapped: refused
    by the dynamic-quantization rule, by name."""
    from optc.backends.tvm import recurrent_kernel as rk

    monkeypatch.setattr(rk, "dynamic_weights", wrong(rk.dynamic_weights))
    with pytest.raises(VerificationError, match="differs from"):
        optc.compile(_quantized(tmp_path), "cpu", tmp_path / "bad", inputs=_x(), options=NO_MEASURE)


@pytest.mark.tvm
def test_unsupported_attribute_is_refused_by_name(tmp_path):
    """A clip attribute (the spec reference covers the defaults only): a named refusal, exit 3
    from the CLI, nothing written."""
    model = onnx.load(str(_quantized(tmp_path)))
    model.graph.node[0].attribute.append(helper.make_attribute("clip", 3.0))
    onnx.save(model, tmp_path / "clip.onnx")
    with pytest.raises(UnsupportedModelError, match="clip"):
        optc.compile(tmp_path / "clip.onnx", "cpu", tmp_path / "clip", inputs=_x(), options=NO_MEASURE)
    assert not (tmp_path / "clip").exists()


@pytest.mark.tvm
@pytest.mark.qemu
def test_compiles_and_verifies_for_arm(tmp_path):
    """--target arm: the integer path (int16 codes: no VNNI) built for aarch64, run under qemu,
    verified by the dynamic rule."""
    import shutil

    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    report = optc.compile(_quantized(tmp_path, "bidirectional", True), "arm", tmp_path / "pkg", inputs=_x(),
                          options=NO_MEASURE)
    assert report["verify"]["passed"] and "expand-dynamic-lstm" not in report["pipeline"]

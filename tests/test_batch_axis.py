"""A dynamic leading dimension bound to 1 as a batch (``stages.batch_axis_check``): optc splits
the rows of such an input into calls, which is right only where the model computes each row
alone. A time, sequence or node axis (a softmax over time, a convolution over frames, a
dimension shared with a rank-1 input) was verified row by row and then ran wrong in ``optc
run`` (exit 0), or crashed / gave an internal error where the axis cannot be 1. Now: refused
by name with ``--input-shape`` as the fix when the data has several rows there, recorded in
the manifest (``batch_bound``) otherwise, and ``optc run`` refuses several rows for it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import optc
from optc.errors import InvalidModelError, UsageError

pytestmark = pytest.mark.tvm
NO_MEASURE = optc.CompileOptions.of(measure=False)


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = h.make_graph(nodes, "m", [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in outputs], list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _softmax_over_time():
    return _model([h.make_node("Softmax", ["x"], ["y"], axis=0)], [("x", ["time", 4])], [("y", ["time", 4])])


def _per_row():
    w = onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    return _model([h.make_node("MatMul", ["x", "w"], ["y"])], [("x", ["n", 4])], [("y", ["n", 3])], [w])


def _conv_over_time():
    w = onnx.numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    ax = onnx.numpy_helper.from_array(np.array([0, 1], np.int64), "ax")
    return _model([h.make_node("Unsqueeze", ["x", "ax"], ["u"]), h.make_node("Conv", ["u", "w"], ["y"])],
                  [("x", ["time", 8])], [("y", [1, 2, None, 6])], [w, ax])


def _rows(n, cols=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)


def test_rows_that_depend_on_each_other_are_refused_by_name(tmp_path):
    onnx.save(_softmax_over_time(), tmp_path / "m.onnx")
    with pytest.raises(UsageError, match=r"not computed independently.*--input-shape x=N"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": _rows(10)}, options=NO_MEASURE)
    assert not (tmp_path / "pkg").exists()


def test_package_of_a_non_batch_axis_runs_one_row_and_refuses_more(tmp_path):
    """Compiled on generated data (one row per call): the manifest says the rows are not
    independent; ``optc run`` takes 1 row and refuses 10 (it would have split them)."""
    onnx.save(_softmax_over_time(), tmp_path / "m.onnx")
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=NO_MEASURE)
    assert report["verify"]["passed"]
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["batch_bound"] == {"inputs": ["x"], "rows_independent": False}
    assert np.allclose(optc.run(tmp_path / "pkg", {"x": _rows(1)})["y"], 1.0)
    with pytest.raises(InvalidModelError, match="no batch"):
        optc.run(tmp_path / "pkg", {"x": _rows(10)})


def test_a_real_batch_axis_splits_rows(tmp_path):
    onnx.save(_per_row(), tmp_path / "m.onnx")
    x = _rows(3)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": x}, options=NO_MEASURE)
    assert report["verify"]["passed"] and report["verify"]["calls"] == 3
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    np.testing.assert_allclose(optc.run(tmp_path / "pkg", {"x": x})["y"], x @ w, rtol=1e-5)


def test_an_axis_that_cannot_be_1_is_refused_with_the_fix(tmp_path):
    """A 3x3 convolution over frames: with 1 frame the output would have a negative length
    (a crash in onnx's shape inference, or an "internal error" from TVM's conv); the model
    runs with the data's 10 frames: refused, naming --input-shape."""
    onnx.save(_conv_over_time(), tmp_path / "m.onnx")
    with pytest.raises(UsageError, match=r"does not run with the leading dimension of x bound to 1.*--input-shape x=N"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": _rows(10, 8)}, options=NO_MEASURE)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "ok", inputs={"x": _rows(10, 8)},
                          input_shapes={"x": (10, 8)}, options=NO_MEASURE)
    assert report["verify"]["passed"]

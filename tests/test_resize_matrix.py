"""Resize by constant per-axis matrices (``optc.backends.tvm.resize_matrix``) where TVM's
resize is wrong: downsampling linear / cubic with given scales, antialias,
half_pixel_symmetric. Matrices are checked against the ONNX reference without TVM; compiled
models against onnxruntime (optc's verification) and the reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import optc
from optc.errors import UnsupportedModelError

ort = pytest.importorskip("onnxruntime")


def _resize(scales=None, sizes=None, shape=(1, 1, 4, 6), sizes_input=False, **attrs) -> onnx.ModelProto:
    inits, inputs = [], [h.make_tensor_value_info("x", T.FLOAT, list(shape))]
    ins = ["x", "", "", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        ins[2] = "scales"
    if sizes is not None:
        ins[3] = "sizes"
        if sizes_input:
            inputs.append(h.make_tensor_value_info("sizes", T.INT64, [len(sizes)]))
        else:
            inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
    while not ins[-1]:
        ins.pop()
    node = h.make_node("Resize", ins, ["y"], **attrs)
    g = h.make_graph([node], "m", inputs, [h.make_tensor_value_info("y", T.FLOAT, ["a", "b", "c", "d"])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 19)])
    m.ir_version = 9
    return m


def test_plan_follows_the_reference_scale_and_size_rules():
    from optc.backends.tvm.resize_matrix import plan

    assert plan([1, 1, 4, 6], [0, 1, 2, 3], np.array([1, 1, 0.6, 0.6], np.float32), None, "stretch")[1] == [1, 1, 2, 3]
    factors, out = plan([1, 1, 4, 6], [2, 3], None, [3, 3], "not_larger")
    assert out == [1, 1, 2, 3] and factors[2] == factors[3] == 0.5


@pytest.mark.parametrize("attrs", [
    {"mode": "linear"},
    {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
    {"mode": "linear", "antialias": 1},
    {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
])
def test_axis_matrices_reproduce_the_reference(attrs):
    from optc.backends.tvm.resize_matrix import axis_matrix, plan

    x = np.random.default_rng(0).standard_normal((1, 1, 4, 6)).astype(np.float32)
    model = _resize(scales=[1, 1, 0.6, 0.6], **attrs)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    factors, out = plan(list(x.shape), [0, 1, 2, 3], np.array([1, 1, 0.6, 0.6], np.float32), None, "stretch")
    m_h, _ = axis_matrix(4, factors[2], out[2], attrs, None)
    m_w, _ = axis_matrix(6, factors[3], out[3], attrs, None)
    np.testing.assert_allclose(m_h @ x[0, 0].astype(np.float64) @ m_w.T, want[0, 0], atol=1e-5)


def test_only_linear_and_cubic_cases_tvm_gets_wrong_take_the_matrices():
    from optc.backends.tvm.resize_matrix import wanted

    assert wanted("linear", "half_pixel", False, [4, 6], [2, 3], [0.6, 0.6])  # scale is not out / in
    assert wanted("cubic", "half_pixel", True, [4, 6], [8, 12], [2, 2])  # antialias
    assert wanted("linear", "half_pixel_symmetric", False, [4, 6], [8, 12], [2, 2])
    assert wanted("linear", "align_corners", False, [4, 6], [1, 3], [0.25, 0.5])  # one pixel
    assert not wanted("linear", "half_pixel", False, [4, 6], [8, 12], [2, 2])  # TVM's resize is right
    assert not wanted("cubic", "half_pixel", False, [4, 6], [2, 3], [0.5, 0.5])  # sizes: out / in
    assert not wanted("nearest", "half_pixel", False, [4, 6], [2, 3], [0.6, 0.6])


def _compile_run(model, tmp_path, feeds):
    pytest.importorskip("tvm")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    optc.compile(str(path), "cpu", str(tmp_path / "pkg"), inputs=feeds, options=optc.CompileOptions.of(measure=False))
    return list(optc.run(str(tmp_path / "pkg"), feeds).values())


@pytest.mark.parametrize("attrs", [{"mode": "cubic"}, {"mode": "linear", "antialias": 1}])
def test_downsampling_compiles_and_matches_the_reference(tmp_path, attrs):
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 6)).astype(np.float32)
    model = _resize(scales=[1, 1, 0.6, 0.6], shape=(1, 2, 4, 6), **attrs)
    (y,) = _compile_run(model, tmp_path, {"x": x})
    np.testing.assert_allclose(y, ReferenceEvaluator(model).run(None, {"x": x})[0], atol=1e-5)


def test_sizes_at_run_time_are_refused_by_name(tmp_path):
    model = _resize(sizes=[1, 1, 2, 3], sizes_input=True, mode="linear", antialias=1)
    feeds = {"x": np.zeros((1, 1, 4, 6), np.float32), "sizes": np.array([1, 1, 2, 3], np.int64)}
    with pytest.raises(UnsupportedModelError, match="sizes must be a constant"):
        _compile_run(model, tmp_path, feeds)

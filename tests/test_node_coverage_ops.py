"""Converters added for ONNX node-test coverage, each compiled through ``optc.compile``
(verified against onnxruntime) and compared with onnxruntime on small models, each with a
case it must refuse by name: TfIdfVectorizer (``ml_ops``), TensorScatter, EyeLike and
Dropout's bool mask (``index_ops``), MaxPool's Indices output and MaxUnpool's
``output_shape`` (``vision_ops``), MelWeightMatrix (``signal_ops``); the float16 tolerance of
``verify.compare``; and the node-test runner's "onnxruntime's outputs differ from the test's
expected outputs" skip (and its element-type check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import optc
from optc.errors import UnsupportedModelError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm
ROOT = Path(__file__).resolve().parents[1]


def _model(nodes, inputs, outputs, opset, inits=(), domains=None) -> onnx.ModelProto:
    imports = [h.make_opsetid("", opset)] + [h.make_opsetid(d, v) for d, v in (domains or {}).items()]
    m = h.make_model(h.make_graph(nodes, "m", inputs, outputs, initializer=list(inits)), opset_imports=imports)
    m.ir_version = 10 if opset < 25 else 11
    onnx.checker.check_model(m)
    return m


def _compile(model, tmp_path, feeds, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, tmp_path / "m.onnx")
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs=feeds,
                 options=optc.CompileOptions.of(measure=False, **options))
    return list(optc.run(tmp_path / "pkg", feeds).values())


def _compare(model, tmp_path, feeds, **options) -> None:
    got = _compile(model, tmp_path, feeds, **options)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)


# ----------------------------------------------------------------------------- TfIdfVectorizer
def _tfidf(mode, shape, dtype=T.INT32, weights=True, **kw):
    attrs = dict(mode=mode, min_gram_length=1, max_gram_length=3, max_skip_count=2,
                 ngram_counts=[0, 4, 8], ngram_indexes=[0, 1, 2, 3, 4, 5, 1],  # the trigram shares slot 1
                 pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 2])  # 4 unigrams, 2 bigrams, 1 trigram
    if weights:
        attrs["weights"] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # one per n-gram (onnxruntime); slot j reads w[j]
    attrs.update(kw)
    out = [6] if len(shape) == 1 else [shape[0], 6]
    return _model([h.make_node("TfIdfVectorizer", ["x"], ["y"], **attrs)],
                  [h.make_tensor_value_info("x", dtype, shape)], [h.make_tensor_value_info("y", T.FLOAT, out)], 9)


@pytest.mark.parametrize("mode,weights", [("TF", False), ("IDF", True), ("IDF", False), ("TFIDF", True)])
def test_tfidf_vectorizer_matches_onnxruntime(tmp_path, mode, weights):
    rng = np.random.default_rng(0)
    x = rng.integers(2, 9, size=(3, 12)).astype(np.int32)
    _compare(_tfidf(mode, [3, 12], weights=weights), tmp_path, {"x": x})


def test_tfidf_vectorizer_1d_int64_min_gram_2(tmp_path):
    x = np.array([2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 2, 3, 4, 2, 3], np.int64)
    _compare(_tfidf("TF", [15], dtype=T.INT64, min_gram_length=2, max_skip_count=5), tmp_path, {"x": x})


def test_tfidf_vectorizer_refuses_a_string_pool_and_rank_3_by_name(tmp_path):
    from optc.backends.tvm.ml_ops import tfidf_grams

    with pytest.raises(ValueError, match="whole 2-grams"):  # a malformed pool: refused, not a crash
        tfidf_grams({"pool_int64s": [1, 2, 3], "ngram_counts": [0, 0], "ngram_indexes": [0],
                     "min_gram_length": 1, "max_gram_length": 2})
    with pytest.raises(ValueError, match="only integer pools"):
        tfidf_grams({"pool_strings": ["a"], "ngram_counts": [0], "ngram_indexes": [0],
                     "min_gram_length": 1, "max_gram_length": 1})
    m = _model([h.make_node("TfIdfVectorizer", ["x"], ["y"], mode="TF", min_gram_length=1, max_gram_length=1,
                            max_skip_count=0, ngram_counts=[0], ngram_indexes=[0], pool_int64s=[1])],
               [h.make_tensor_value_info("x", T.INT32, [2, 2, 3])], [h.make_tensor_value_info("y", T.FLOAT, [2, 1])], 9)
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match=r"integer input \[C\] or \[B, C\]"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))


# ----------------------------------------------------------------------------- TensorScatter, EyeLike
def _scatter(mode, past, upd, axis=None):
    attrs = {"mode": mode} | ({} if axis is None else {"axis": axis})
    return _model([h.make_node("TensorScatter", ["past", "update", "w"], ["y"], **attrs)],
                  [h.make_tensor_value_info("past", T.FLOAT, past), h.make_tensor_value_info("update", T.FLOAT, upd),
                   h.make_tensor_value_info("w", T.INT64, [past[0]])], [h.make_tensor_value_info("y", T.FLOAT, past)], 24)


@pytest.mark.parametrize("mode,write", [("linear", [0, 2]), ("circular", [3, 1])])
def test_tensor_scatter_matches_onnxruntime(tmp_path, mode, write):
    rng = np.random.default_rng(1)
    feeds = {"past": rng.standard_normal((2, 3, 5, 4)).astype(np.float32),
             "update": rng.standard_normal((2, 3, 3, 4)).astype(np.float32), "w": np.array(write, np.int64)}
    _compare(_scatter(mode, [2, 3, 5, 4], [2, 3, 3, 4]), tmp_path, feeds)


def test_tensor_scatter_refuses_the_batch_axis_by_name(tmp_path):
    m = _scatter("linear", [4, 3], [2, 3], axis=0)
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="TensorScatter: axis 0"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))


def test_eyelike_with_another_dtype(tmp_path):
    m = _model([h.make_node("EyeLike", ["x"], ["y"], dtype=T.DOUBLE, k=1)], [h.make_tensor_value_info("x", T.INT32, [3, 4])],
               [h.make_tensor_value_info("y", T.DOUBLE, [3, 4])], 22)
    _compare(m, tmp_path, {"x": np.zeros((3, 4), np.int32)})


# ----------------------------------------------------------------------------- MaxPool Indices, MaxUnpool
def _maxpool(shape, out_shape, **attrs):
    return _model([h.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], [h.make_tensor_value_info("x", T.FLOAT, shape)],
                  [h.make_tensor_value_info("y", T.FLOAT, out_shape), h.make_tensor_value_info("i", T.INT64, out_shape)], 22)


@pytest.mark.parametrize("shape,out,attrs", [
    ([2, 3, 7, 6], [2, 3, 4, 3], dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 0])),
    ([1, 2, 6, 6], [1, 2, 3, 3], dict(kernel_shape=[2, 2], strides=[2, 2], storage_order=1)),
    ([1, 2, 7, 7], [1, 2, 3, 3], dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, dilations=[1, 1])),
    ([1, 1, 9, 9], [1, 1, 3, 3], dict(kernel_shape=[2, 2], strides=[3, 3], dilations=[2, 2])),
    ([2, 3, 10], [2, 3, 5], dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
])
def test_maxpool_indices_match_onnxruntime(tmp_path, shape, out, attrs):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::5] = 1.0  # ties: the first maximum wins
    _compare(_maxpool(shape, out, **attrs), tmp_path, {"x": x})


def test_maxpool_indices_with_same_padding_is_refused_by_name(tmp_path):
    m = _maxpool([1, 1, 4, 4], [1, 1, 4, 4], kernel_shape=[2, 2], auto_pad="SAME_UPPER")
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="auto_pad SAME_UPPER is not lowered"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))


def test_maxunpool_with_a_constant_output_shape(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 1, 4, 4], np.int64), "shape")
    m = _model([h.make_node("MaxUnpool", ["x", "i", "shape"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
               [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2]), h.make_tensor_value_info("i", T.INT64, [1, 1, 2, 2])],
               [h.make_tensor_value_info("y", T.FLOAT, [1, 1, 4, 4])], 22, inits=[shape])
    _compare(m, tmp_path, {"x": np.array([[[[1, 2], [3, 4]]]], np.float32),
                           "i": np.array([[[[5, 3], [9, 15]]]], np.int64)})


# ----------------------------------------------------------------------------- MelWeightMatrix
def _mel(inits=True):
    vals = {"num_mel_bins": np.array(6, np.int32), "dft_length": np.array(32, np.int32),
            "sample_rate": np.array(16000, np.int32), "lower_edge_hertz": np.array(50.0, np.float32),
            "upper_edge_hertz": np.array(6000.0, np.float32)}
    ins = [h.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), []) for n, v in vals.items()]
    m = _model([h.make_node("MelWeightMatrix", list(vals), ["y"])], [] if inits else ins,
               [h.make_tensor_value_info("y", T.FLOAT, [17, 6])], 17,
               inits=[numpy_helper.from_array(v, n) for n, v in vals.items()] if inits else ())
    return m, vals


def test_mel_weight_matrix_of_constants(tmp_path):
    m, _ = _mel()
    _compare(m, tmp_path, {})


def test_mel_weight_matrix_of_run_time_values_is_refused_by_name(tmp_path, capsys):
    m, vals = _mel(inits=False)
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="must be a constant"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "p", inputs=vals, options=optc.CompileOptions.of(measure=False))
    _compare(m, tmp_path / "frozen", vals, const_inputs=tuple(vals))  # frozen (--const-input): compiles


# ----------------------------------------------------------------------------- verification, runner
def test_float16_outputs_get_a_few_units_in_the_last_place():
    from optc import verify

    ref = np.linspace(1.0, 1.9, 16).astype(np.float16)
    ulp = np.spacing(ref)
    assert verify.compare([ref + 2 * ulp], [ref], ["y"])["passed"]  # 2 ulps: rounding order
    bad = verify.compare([ref + 24 * ulp], [ref], ["y"])  # 24 ulps: a real error
    assert not bad["passed"] and bad["outputs"][0]["rtol"] == pytest.approx(verify.HALF_ULPS * 2.0 ** -10)
    assert verify.HALF_ULPS == 8
    f32 = ref.astype(np.float32)
    assert not verify.compare([f32 + 3 * ulp.astype(np.float32)], [f32], ["y"])["passed"]  # float32: unchanged


def _harness():
    spec = importlib.util.spec_from_file_location("optc_node_tests_cov", ROOT / "bench" / "node_tests.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_skips_a_test_onnxruntime_itself_fails(tmp_path):
    """A node test whose expected outputs onnxruntime does not reproduce (here: deliberately
    wrong expected outputs) is skipped with its own reason, kept apart from "cannot run";
    optc's outcome is still recorded; a right one passes."""
    nt = _harness()
    m = _model([h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
               [h.make_tensor_value_info("y", T.FLOAT, [2, 3])], 18)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    bad = SimpleNamespace(name="test_fake_relu", model=m, data_sets=[([x], [np.maximum(x, 0) + 1.0])])
    rec = nt.run_case(bad, tmp_path, timeout=120)
    assert rec["outcome"] == "skipped" and rec["skip"] == nt.SKIP_ORT_DIFFERS
    assert rec["reason"].startswith("onnxruntime's outputs differ from the test's expected outputs: y: max abs error 1")
    assert rec["optc"]["outcome"] == "wrong" and nt.expected(rec) == "skipped:onnxruntime-differs"
    good = SimpleNamespace(name="test_fake_relu_ok", model=m, data_sets=[([x], [np.maximum(x, 0)])])
    assert nt.run_case(good, tmp_path, timeout=120)["outcome"] == "passed"
    s = nt.summarize([rec, {"name": "t", "outcome": "skipped", "skip": nt.SKIP_CANNOT_RUN}, {"name": "u", "outcome": "passed"}])
    assert s["skipped_because"] == {nt.SKIP_CANNOT_RUN: 1, nt.SKIP_ORT_DIFFERS: 1} and s["pass_rate"] == 100.0
    assert "1 onnxruntime's outputs differ" in nt.table([rec])
    # equal values in another element type are wrong (EyeLike's dtype, MaxPool's int64 Indices)
    assert "element type int32 != expected float64" in nt._differs(bad, [np.eye(2, dtype=np.int32)], [np.eye(2)])
    assert nt._differs(bad, [np.eye(2)], [np.eye(2)]) == ""
    # sequence / string outputs are not compared (a list raised in the worker: a crash)
    assert nt._comparable([np.eye(2), np.int64(3)]) and not nt._comparable([[np.eye(2)]])
    assert not nt._comparable([np.array(["a"], dtype=object)])


# ----------------------------------------------------------------------------- Dropout
def _dropout(training=None):
    nodes_in = ["x", "r", "t"] if training is not None else ["x"]
    inits = [] if training is None else [numpy_helper.from_array(np.array(0.5, np.float32), "r"),
                                         numpy_helper.from_array(np.array(training), "t")]
    return _model([h.make_node("Dropout", nodes_in, ["y", "z"])], [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                  [h.make_tensor_value_info("y", T.FLOAT, [2, 3]), h.make_tensor_value_info("z", T.BOOL, [2, 3])],
                  18, inits=inits)


def test_dropout_mask_is_bool_in_inference_mode(tmp_path):
    _compare(_dropout(training=False), tmp_path, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_dropout_in_constant_training_mode_is_refused_by_name(tmp_path):
    onnx.save(_dropout(training=True), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="training mode .ratio 0.5. is random"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "p", inputs={"x": np.ones((2, 3), np.float32)},
                     options=optc.CompileOptions.of(measure=False))

"""The ONNX node tests through optc, against the checked-in list of known outcomes.

``tests/node_tests_known.json`` maps a node test's name to what optc does with it:
``passed``, ``refused:<OptcError subclass>``, ``skipped`` (onnxruntime cannot run it; optc must
then refuse it by name, never fail with an internal error), ``skipped:onnxruntime-differs``
(onnxruntime's outputs differ from the test's expected ones: random ops, onnxruntime departing
from the spec), or ``internal`` / ``wrong`` for a known bug. A regression (a listed pass now refused) and a newly passing test (listed as refused)
both fail, the latter with a message to update the list:

    python bench/node_tests.py --tests NAME[,NAME...] --write-known tests/node_tests_known.json

The default suite runs a fixed sample covering common ops (and the fixes for 0-d inputs, ops
TVM lacks, function-body expansion, element types numpy cannot hold, inputs frozen by
``--const-input``, onnx-simplifier crashes, the signal / vision / ml / linalg converters,
Resize by matrices, sequence outputs refused by name, zero-size Split parts, declared 0
dimensions, training-mode BatchNormalization); ``-m slow`` runs every third test of the list
(``OPTC_ALL_NODE_TESTS=1``: all 1,884, the whole generated set, about 280 CPU-minutes) in two
worker processes (bench/node_tests.py). ``python bench/node_tests.py --from RESULTS... --write-known
tests/node_tests_known.json`` updates the list from earlier runs without running again.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
KNOWN_PATH = ROOT / "tests" / "node_tests_known.json"
KNOWN: dict[str, str] = json.loads(KNOWN_PATH.read_text())

# node test -> the module of onnx.backend.test.case.node that generates it
FIXED = {
    "test_abs": "abs", "test_add_bcast": "add", "test_relu": "relu",
    "test_conv_with_strides_padding": "conv", "test_averagepool_2d_pads": "averagepool",
    "test_maxpool_2d_pads": "maxpool", "test_gemm_default_no_bias": "gemm", "test_matmul_2d": "matmul",
    "test_softmax_axis_1": "softmax", "test_batchnorm_epsilon": "batch_normalization",
    "test_transpose_default": "transpose", "test_concat_2d_axis_0": "concat", "test_sigmoid": "sigmoid",
    "test_gather_0": "gather",
    "test_layer_normalization_4d_axis_negative_4": "layernormalization",  # Mean / InvStdDev outputs
    "test_spacetodepth_crd_mode_example": "spacetodepth",  # CRD mode
    "test_convtranspose_output_shape": "convtranspose",  # output_shape -> pads
    "test_lpnormalization_default": "lpnormalization",  # converter TVM lacks
    "test_isinf_positive": "isinf", "test_pow_types_int32_int32": "pow",
    "test_tril_square_neg": "trilu", "test_clip_example": "clip",  # 0-d inputs
    "test_sce_mean_no_weight_ii_3d": "softmax_cross_entropy_loss",  # expanded function body
    "test_dynamicquantizelinear_expanded": "dynamicquantizelinear",  # crashed the process (SIGFPE)
    "test_reduce_sum_default_axes_keepdims_example": "reducesum",  # axes a graph input: --const-input
    "test_range_float_type_positive_delta_expanded": "rangeop",  # inputs -> Loop trip count: frozen
    "test_center_crop_pad_crop": "center_crop_pad",  # shape frozen (--const-input)
    "test_onehot_negative_indices": "onehot", "test_cumprod_2d_axis_0": "cumprod",  # onnx_ops.py
    "test_reversesequence_time": "reversesequence", "test_bitcast_float32_to_int32": "bitcast",
    "test_reduce_min_bool_inputs": "reducemin",  # was exit 70 (no initial value for bool)
    "test_attention_23_boolmask_fullymasked_row_nan_robustness": "attention",  # ReduceMax of -inf rows
    "test_attention_3d_gqa_expanded": "attention",  # shape initializers as Constants: was exit 70
    "test_affine_grid_2d_expanded": "affinegrid",  # onnxsim segfaults: in a child, refused by name
    "test_cast_FLOAT_to_FLOAT8E4M3FN": "cast",  # float8 output: onnxruntime runs it, optc refuses by name
    "test_if": "if_",  # data-dependent If: a Relax If
    "test_scan9_sum": "scan",  # unroll-loops
    "test_loop11": "loop",  # trip count a graph input: refused by name
    "test_lstm_with_peepholes": "lstm", "test_gru_seq_length": "gru",  # recurrent.py
    "test_rnn_seq_length": "rnn", "test_lstm_batchwise": "lstm",  # layout 1: onnxruntime skips
    "test_dft_irfft": "dft", "test_dft_axis_opset19": "dft",  # signal_ops.py: DFT as matmuls
    "test_stft_with_window": "stft", "test_col2im_pads": "col2im",  # STFT, Col2Im (conv_transpose)
    "test_linear_attention_linear": "linear_attention",  # function body with a Scan: unrolled at import
    "test_qlinearmatmul_2D_uint8_float16": "qlinearmatmul",  # run-time float16 scales
    "test_ai_onnx_ml_binarizer": "ai_onnx_ml.binarizer",  # ml_ops.py
    "test_ai_onnx_ml_array_feature_extractor": "ai_onnx_ml.array_feature_extractor",
    "test_deform_conv_with_mask_bias": "deformconv",  # vision_ops.py
    "test_resize_downsample_scales_linear_antialias": "resize",  # resize_matrix.py
    "test_resize_downsample_scales_cubic_align_corners": "resize",  # onnxruntime differs from the spec
    "test_ai_onnx_ml_tree_ensemble_set_membership": "ai_onnx_ml.tree_ensemble",  # ml_ops.py
    "test_split_to_sequence_1": "splittosequence",  # sequence output: was exit 70 in fold-constants
    "test_split_zero_size_splits_opset18": "split",  # zero-size parts: was exit 70 (TVM build); slices
    "test_bitshift_right_int8_negative_shift": "bitshift", "test_det_nd": "det",  # linalg_ops.py
    "test_reduce_max_empty_set": "reducemax",  # the empty set: -inf (was a run-time failure)
    "test_causal_conv_with_state_kernel_size_one": "causal_conv_with_state",  # empty Concat input: was exit 70
    "test_tfidfvectorizer_tf_batch_uniandbigrams_skip5": "tfidfvectorizer",  # ml_ops.py
    "test_tensorscatter_circular": "tensorscatter", "test_eyelike_with_dtype": "eyelike",  # index_ops.py
    "test_maxpool_with_argmax_2d_precomputed_strides": "maxpool",  # vision_ops.py: Indices output
    "test_training_dropout_mask": "dropout",  # random: onnxruntime differs from the expected outputs
    "test_mod_float_edge_cases_fmod_0_float32": "mod",  # linalg_ops.py: fmod, then the divisor's sign
    "test_cast_DOUBLE_to_FLOAT": "cast",  # data given as TensorProtos (was skipped as not runnable)
    "test_reduce_sum_empty_set_non_reduced_axis_zero": "reducesum",  # zero-size input: compact tensor
    "test_batchnorm_example_training_mode": "batch_normalization",  # norm_ops.py: batch statistics
    "test_tril_zero": "trilu",  # declared 0 dimension: was bound as 1, then TVM's Trilu failed (empty_tensors.py)
}


def _harness():
    spec = importlib.util.spec_from_file_location("optc_node_tests", ROOT / "bench" / "node_tests.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def harness():
    return _harness()


@pytest.fixture(scope="module")
def fixed_cases(harness):
    return harness.load_cases(list(FIXED), modules=sorted(set(FIXED.values())))


def _check(rec: dict, harness) -> None:
    name, got = rec["name"], harness.expected(rec)
    want = KNOWN.get(name)
    detail = f"{rec.get('error', '')}: {rec.get('message', '')}".strip(": ")
    update = (f"update {KNOWN_PATH.relative_to(ROOT)}: python bench/node_tests.py --tests {name} "
              f"--write-known {KNOWN_PATH.relative_to(ROOT)}")
    assert want is not None, f"{name} is not in the known list (it is {got}): {update}"
    if got == "passed" and want != "passed":
        pytest.fail(f"{name} now passes (listed as {want}): {update}")
    assert got == want, f"{name}: {got} ({detail}), expected {want}"
    if got.startswith("skipped"):  # onnxruntime cannot run it (or differs): optc must not fail with exit 70
        optc = rec.get("optc", {})
        assert optc.get("outcome") != "internal", f"{name}: optc internal error on a model onnxruntime " \
                                                  f"cannot run: {optc.get('error')}: {optc.get('message')}"


def test_known_list_covers_the_fixed_sample():
    assert not set(FIXED) - set(KNOWN), f"add to {KNOWN_PATH.name}: {sorted(set(FIXED) - set(KNOWN))}"


@pytest.mark.tvm
@pytest.mark.parametrize("name", list(FIXED))
def test_node_test(name, fixed_cases, harness, tmp_path):
    _check(harness.run_case(fixed_cases[name], tmp_path, timeout=120), harness)


# The known list holds ~1,280 tests (about an hour on 2 cores): the default suite checks every
# third one (a fixed, deterministic third spread over all op families); OPTC_ALL_NODE_TESTS=1
# checks them all.
ALL_NODE_TESTS = os.environ.get("OPTC_ALL_NODE_TESTS") == "1"


@pytest.mark.slow
@pytest.mark.tvm
def test_every_known_node_test(harness):
    names = sorted(KNOWN)
    cases = harness.load_cases(names if ALL_NODE_TESTS else names[::3])
    failures = []
    for rec in harness.run_all(cases, jobs=2, timeout=300, log=lambda m: None):
        try:
            _check(rec, harness)
        except (AssertionError, pytest.fail.Exception) as err:
            failures.append(str(err).splitlines()[0])
    assert not failures, f"{len(failures)} of {len(cases)} node tests differ from the known list:\n" + "\n".join(failures)


def test_from_merges_earlier_results_later_ones_winning(harness, tmp_path):
    """``--from``: a workdir's finished lines (an unanswered ``started`` line is left out) and an
    ``--out`` JSON merge by name, the later path's record winning; ``--write-known`` takes them."""
    work = tmp_path / "run"
    work.mkdir()
    lines = [{"name": "test_a", "outcome": "refused", "error": "UnsupportedModelError", "message": "x"},
             {"name": "test_b", "outcome": "passed"}, {"name": "test_c", "started": True}]
    (work / "results0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    later = tmp_path / "rerun.json"
    later.write_text(json.dumps({"records": [{"name": "test_a", "outcome": "passed"}]}))
    records = harness.recorded([str(work), str(later)])
    assert [(r["name"], r["outcome"]) for r in records] == [("test_a", "passed"), ("test_b", "passed")]
    known = tmp_path / "known.json"
    known.write_text(json.dumps({"test_a": "refused:UnsupportedModelError", "test_z": "skipped"}))
    harness.write_known(records, known)
    assert json.loads(known.read_text()) == {"test_a": "passed", "test_b": "passed", "test_z": "skipped"}
    assert harness.summarize(records)["pass_rate"] == 100.0


def test_data_given_as_tensor_protos_become_arrays(harness):
    """Some generators (Cast, CastLike, QuantizeLinear, ...) give inputs and expected outputs
    as TensorProtos; onnxruntime cannot take those, so such tests were skipped as "onnxruntime
    cannot run it" without being run."""
    from types import SimpleNamespace

    import numpy as np
    import onnx
    from onnx import numpy_helper

    x, y = np.arange(6, dtype=np.float64).reshape(2, 3), np.arange(6, dtype=np.float32).reshape(2, 3)
    x_info = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [2, 3])
    graph = onnx.helper.make_graph([], "g", [x_info], [])
    case = SimpleNamespace(model=onnx.helper.make_model(graph),
                           data_sets=[([numpy_helper.from_array(x)], [numpy_helper.from_array(y)])])
    feeds, expected = harness.feeds_of(case)
    assert isinstance(feeds["x"], np.ndarray) and feeds["x"].dtype == np.float64 and np.array_equal(feeds["x"], x)
    assert expected[0].dtype == np.float32 and np.array_equal(expected[0], y)

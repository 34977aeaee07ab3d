"""The compile stage ``verify`` refuses deliberately wrong artifacts (issue: numbers a user can
trust): a quantized package whose artifact returns the float model's outputs, and an
artifact that is wrong on one sample only (verification covers several samples)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc import verify
from optc.backends.tvm.backend import CpuSession
from optc.errors import VerificationError

pytestmark = pytest.mark.tvm


def _mlp(path):
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((8, 5)) * 0.4).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2")]
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    np.savez(path.parent / "calib.npz", x=rng.standard_normal((32, 16)).astype(np.float32))
    return model


def test_quantized_artifact_that_skipped_quantization_fails(tmp_path, monkeypatch):
    model = _mlp(tmp_path / "m.onnx")
    passes = f"quantize<calib={tmp_path / 'calib.npz'}>"
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "ok", passes=passes, options=optc.CompileOptions.of(measure=False))
    v = report["verify"]
    assert v["passed"] and v["samples"] == 8 and v["calls"] == 8
    assert v["outputs"][0]["tolerance_rule"].startswith("exact") and v["max_abs_error"] == 0

    def float_model(self, sets):  # an artifact that computes the float model instead
        return [verify.reference_outputs(model, {"x": s[0]}) for s in sets]

    monkeypatch.setattr(CpuSession, "run_many", float_model)
    with pytest.raises(VerificationError, match="optc's integer reference"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "bad", passes=passes, options=optc.CompileOptions.of(measure=False))
    assert not (tmp_path / "bad").exists()
    # the QDQ graph in float (integerize off): the steps rule also refuses float outputs
    with pytest.raises(VerificationError, match="off the output quantizer's grid"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "bad2", passes=passes + ",integerize<enabled=false>", options=optc.CompileOptions.of(measure=False))


def test_an_error_on_one_sample_of_eight_is_caught(tmp_path, monkeypatch):
    _mlp(tmp_path / "m.onnx")
    real = CpuSession.run_many

    def wrong_on_sixth(self, sets):
        outs = real(self, sets)
        if len(outs) > 5:
            outs[5] = [o + np.float32(0.5) for o in outs[5]]
        return outs

    monkeypatch.setattr(CpuSession, "run_many", wrong_on_sixth)
    with pytest.raises(VerificationError, match="8 samples"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "bad", options=optc.CompileOptions.of(measure=False))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "one", options=optc.CompileOptions.of(measure=False, verify_samples=1))
    assert report["verify"]["samples"] == 1  # the wrong sample is not looked at: the report says so
    assert report["binding"]["notes"] and report["inputs"][0]["shape"] == [1, 16]


def test_integerized_cnn_with_pooling_is_verified_exactly(tmp_path):
    """Conv -> ... -> GlobalAveragePool -> Gemm, quantized and integerized: every op on the
    output's path is integer (IntGlobalAveragePool included), so the artifact must equal the
    integer reference bit for bit - and does."""
    from tests.passes.test_integerize import _calib, _model

    onnx.save(_model(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", **_calib())
    report = optc.compile(tmp_path / "cnn.onnx", "cpu", tmp_path / "pkg", passes=f"quantize<calib={tmp_path / 'calib.npz'}>",
                          options=optc.CompileOptions.of(measure=False))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "pkg" / "model.onnx")).graph.node]
    assert "IntGlobalAveragePool" in ops and "GlobalAveragePool" not in ops
    out = report["verify"]["outputs"][0]
    assert out["tolerance_rule"].startswith("exact") and out["max_abs_error"] == 0 and out["tolerance"] == 0


def test_samples_per_call_come_from_a_shared_batch_axis():
    """A batch axis is the leading dimension every input of rank >= 2 shares; a graph
    network's nodes [40, 16] and edges [70, 2] have none: one sample per call, not 70."""
    from optc.frontend import TensorSpec

    spec = lambda n, *s: TensorSpec(n, "float32", s)  # noqa: E731
    assert verify.rows_per_call([spec("x", 4, 3, 8, 8), spec("m", 4, 8)]) == 4
    assert verify.rows_per_call([spec("nodes", 40, 16), spec("edges", 70, 2)]) == 1
    assert verify.rows_per_call([spec("v", 5)]) == 1


def _detections(n: int = 12, seed: int = 0) -> np.ndarray:
    """``[1, n, 6]`` detector rows (x1, y1, x2, y2, score, class) sorted by score, with the
    scores of rows 3-4 and of rows 9-11 (the cut) within 1e-9 of each other."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.uniform(0, 640, (n, 4)), np.zeros((n, 1)), rng.integers(0, 5, (n, 1))], axis=1)
    scores = np.linspace(0.9, 0.1, n)
    scores[4] = scores[3] - 1e-9
    scores[10], scores[11] = scores[9] - 1e-9, scores[9] - 2e-9
    rows[:, 4] = scores
    return rows[None].astype(np.float32)


def test_rows_swapped_among_near_equal_topk_keys_pass_and_nothing_else_does():
    """A TopK over scores that differ by rounding may order tied candidates differently, or
    pick another one at the cut: such rows are compared as a set (``ties``, models with TopK).
    Rows swapped across distinct scores, a wrong value inside a tie, a replaced row before the
    cut, or the same swap without ``ties`` fail."""
    from optc import verify

    ref = _detections()
    swapped = ref.copy()
    swapped[0, [3, 4]] = ref[0, [4, 3]]
    verdict = verify.compare([swapped], [ref], ["dets"], model=frozenset({"TopK"}))
    assert verdict["passed"] and verdict["outputs"][0]["tied_rows"]["rows_moved"] == 2
    assert verdict["outputs"][0]["tied_rows"]["key_column"] == 4
    assert not verify.compare([swapped], [ref], ["dets"])["passed"]  # no TopK in the model: as before
    at_cut = ref.copy()
    at_cut[0, 11, :4] = [1.0, 2.0, 3.0, 4.0]  # another candidate with the cut's score
    assert verify.compare([at_cut], [ref], ["dets"], model=frozenset({"TopK"}))["outputs"][0]["tied_rows"]["rows_at_cut"] == 1
    far = ref.copy()
    far[0, [1, 2]] = ref[0, [2, 1]]  # scores 0.07 apart: not a tie
    assert not verify.compare([far], [ref], ["dets"], model=frozenset({"TopK"}))["passed"]
    wrong = swapped.copy()
    wrong[0, 3, 0] += 5.0
    assert not verify.compare([wrong], [ref], ["dets"], model=frozenset({"TopK"}))["passed"]
    early = ref.copy()
    early[0, 4, :4] = [1.0, 2.0, 3.0, 4.0]  # a row of the tie before the cut replaced
    assert not verify.compare([early], [ref], ["dets"], model=frozenset({"TopK"}))["passed"]

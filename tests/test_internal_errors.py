"""Errors that tell the truth: an exception inside a pass or the build is an optc bug (exit 70,
"this is a bug in optc", the failing stage named, cause chain under --debug), never bad input;
schedule rules that raise are recorded in the report, not swallowed; bench applies its thread
count for real and takes onnxruntime on the deployable equivalent as its baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import optc
from optc.cli import main
from optc.passes.cleanup import DeadCodeElimination

MODELS = Path(__file__).resolve().parents[1] / "models"
pytestmark = pytest.mark.tvm


def test_a_crashing_pass_is_an_internal_error_naming_the_pass(tmp_path, monkeypatch, capsys):
    def boom(self, model):
        raise KeyError("dangling value 'v7'")

    monkeypatch.setattr(DeadCodeElimination, "call", boom)
    argv = ["compile", str(MODELS / "digits_cnn.onnx"), "-o", str(tmp_path / "p"), "--no-measure", "-q"]
    assert main(argv) == 70
    err = capsys.readouterr().err
    assert "internal error: pass dce: KeyError" in err and "this is a bug in optc" in err
    assert "Traceback" not in err and not (tmp_path / "p").exists()
    assert main(argv + ["--debug"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "dangling value 'v7'" in err and "direct cause" in err


def test_schedule_rule_failures_are_recorded(tmp_path, monkeypatch):
    from optc.backends.tvm import schedule

    def _rule_contraction(func, target, params):  # a rule with a bug
        raise RuntimeError("rule bug")

    monkeypatch.setattr(schedule, "_rule_contraction", _rule_contraction)
    report = optc.compile(MODELS / "digits_cnn.onnx", "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))
    sched = report["build"]["schedules"]
    assert report["verify"]["passed"] and sched["functions"] > 0
    assert sched["rule_failures"] and all(f["rule"] == "contraction" and "rule bug" in f["error"]
                                          for f in sched["rule_failures"])
    assert sum(sched["by_rule"].values()) == sched["functions"]


def test_bench_threads_and_baselines(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    report = optc.compile(MODELS / "digits_cnn.onnx", "cpu", tmp_path / "q", passes=f"simplify,fuse-bn,quantize<calib={tmp_path / 'calib.npz'}>", options=optc.CompileOptions.of(measure=False))
    assert "deploy_qdq.onnx" in (tmp_path / "q" / "manifest.json").read_text()
    res = optc.bench(tmp_path / "q", optc.BenchOptions(threads=1, repeat=4, rounds=2, warmup=1))
    assert res["threads_applied"]["optc (TVM runtime.NumThreads)"] == 1
    assert set(res["baselines"]) == {"deployable", "original"}
    assert "deploy_qdq.onnx" in res["baselines"]["deployable"]["model"]  # never optc's reference ops
    assert "numpy inputs to numpy outputs" in res["method"]
    assert report["verify"]["passed"]
    assert res["onnxruntime_baseline"] == "deployable"  # a compressed package: its QDQ equivalent


def test_headline_baseline_is_the_deployable_equivalent_or_the_faster_of_the_users_models():
    """The headline onnxruntime figure of a compressed package is its deployable equivalent (the
    QDQ model of an int8 package) even when the float original runs faster; a package optc did
    not compress is measured against the faster of model.onnx and the original: both are the
    user's model, and an expansion optc made (DynamicQuantizeLSTM's int8 original -> a float
    LSTM) must not be the easier yardstick."""
    from optc import api

    class Fake:
        def __init__(self, describe):
            self.describe = describe

    times = {"deployable": [0.020] * 3, "original": [0.008] * 3}
    fakes = {k: Fake(k) for k in times}
    optc_stats = {"median_ms": 16.0}
    plain = api._baseline_section(optc_stats, fakes, times, compressed=False)
    assert plain["onnxruntime_baseline"] == "original" and plain["ratio_optc_over_ort"] == pytest.approx(2.0)
    packed = api._baseline_section(optc_stats, fakes, times, compressed=True)
    assert packed["onnxruntime_baseline"] == "deployable" and packed["ratio_optc_over_ort"] == pytest.approx(0.8)
    assert api._compressing({"pipeline": "simplify,prune<ratio=0.5>,dce"}) == ["prune"]
    assert api._compressing({"pipeline": "simplify,expand-dynamic-lstm,dce"}) == []

"""Numbers a user can trust, on the command line (issue 17): the cleanup prefix and
--no-cleanup (recorded in the manifest), compression passes that rewrite nothing, accuracy that
fell to chance, --tune-seconds without --tune, and output that is not wrapped or cut when
redirected."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from optc.cli import main
from optc.progress import Progress
from tests.conftest import MODELS, make_conv_model

CNN = MODELS / "digits_cnn.onnx"
EVAL = MODELS / "digits_eval.npz"
CLEAN = "simplify,fold-constants,remove-identity,fuse-bn,batch-matmuls,dce"


def test_tune_seconds_without_tune_is_an_error(tmp_path, capsys):
    make_conv_model(tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p"), "--tune-seconds", "1200"]) == 2
    err = capsys.readouterr().err
    assert "--tune-seconds bounds the tuning that --tune N turns on" in err and "--tune 2000" in err
    assert not (tmp_path / "p").exists()


def test_compile_help_documents_the_cleanup_and_its_opt_out(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--no-cleanup" in out and "run --passes exactly as written" in out
    assert "package records the pipeline that ran" in out and "--tune-seconds S" in out


def _lanes() -> int:
    """The cpu target's fp32 SIMD lanes: the `multiple` compile gives `prune` by default."""
    from optc.backends.tvm.facts import fp32_lanes
    from optc.targets import get_target

    return fp32_lanes(get_target("cpu"))


@pytest.mark.tvm
def test_cleanup_prefix_is_recorded_and_no_cleanup_runs_as_written(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    make_conv_model(model)
    common = [str(model), "--no-measure", "--passes", "prune<ratio=0.5>"]
    assert main(["compile", *common, "-o", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    # prune's channel multiple comes from the target's SIMD width (recorded as run)
    assert manifest["pipeline"] == report["pipeline"] == f"{CLEAN},prune<ratio=0.5;multiple={_lanes()}>"
    assert [p["name"] for p in report["passes"]] == CLEAN.split(",") + ["prune"]
    err = capsys.readouterr().err
    assert "cleanup passes simplify,fold-constants,remove-identity,fuse-bn,batch-matmuls,dce added" in err
    assert main(["compile", *common, "--no-cleanup", "-o", str(tmp_path / "b"), "-q"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["pipeline"] == f"prune<ratio=0.5;multiple={_lanes()}>"


@pytest.mark.tvm
def test_a_compression_pass_that_rewrites_nothing_warns(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    make_conv_model(model)
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "--no-measure", "-q",
                 "--passes", "prune<ratio=0.0>"]) == 0
    err = capsys.readouterr().err
    said = f"prune<ratio=0.0;multiple={_lanes()}> rewrote nothing (ratio is 0)"
    assert f"optc: warning: {said}" in err
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["passes"][-1]["warnings"] == [said]
    assert all(p["warnings"] == [] for p in report["passes"][:-1])


@pytest.mark.tvm
def test_pruning_to_chance_level_says_so_and_points_to_fine_tuning(tmp_path, capsys):
    assert main(["compile", str(CNN), "-o", str(tmp_path / "p"), "--input-shape", "input=1,1,8,8", "--no-measure",
                 "-q", "--passes", "prune<ratio=0.95;multiple=8>", "--eval", str(EVAL), "--eval-limit", "100"]) == 0
    cap = capsys.readouterr()
    assert "NEAR CHANCE LEVEL" in cap.out
    assert "optc: warning: top-1" in cap.err and "near chance level (10.0% for 10 classes)" in cap.err
    assert "optc prune-finetune" in cap.err
    acc = json.loads((tmp_path / "p" / "report.json").read_text())["accuracy"]
    assert acc["near_chance"] is True and acc["chance_top1"] == pytest.approx(0.1)


def test_prune_scan_flags_chance_level(capsys):
    assert main(["prune-scan", str(CNN), "--eval", str(EVAL), "--eval-limit", "200", "--ratios", "0.97", "-q"]) == 0
    cap = capsys.readouterr()
    assert "chance level" in cap.out
    assert "optc: warning:" in cap.err and "fall to chance level (10.0% for 10 classes" in cap.err
    assert "optc prune-finetune" in cap.err


def test_progress_lines_are_not_wrapped_when_redirected(capsys):
    long = "candidate " + "x" * 150 + " [not markup]"
    p = Progress(enabled=True)
    p.note(long)
    with p.step("step " + "y" * 150):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"  {long}"
    assert lines[1].startswith("✓ step " + "y" * 150) and len(lines) == 2


def test_passes_listing_is_not_cut_when_redirected():
    proc = subprocess.run([sys.executable, "-m", "optc", "passes"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("fuse-binary-threshold "))
    assert line.rstrip().endswith("(FINN's MVTU with thresholds).")
    names = [l.split()[0] for l in proc.stdout.splitlines() if l and not l.startswith(" ") and ":" not in l.split()[0]]
    assert "sparsify" in names and "fuse-binary-threshold" in names


def test_inspect_and_quant_debug_print_whole_layer_names(capsys):
    assert main(["inspect", str(CNN), "--input-shape", "input=1,1,8,8"]) == 0
    out = capsys.readouterr().out
    assert "/features/features.10/GlobalAveragePool " in out and "/features/features.1/BatchNormalization " in out
    assert main(["quant-debug", str(CNN), "--calib", str(MODELS / "digits_calib.npz"), "--input-shape",
                 "input=1,1,8,8", "--samples", "16", "--no-isolated"]) == 0
    out = capsys.readouterr().out
    for name in ("/features/features.0/Conv", "/features/features.3/Conv", "/classifier/Gemm"):
        assert f"  {name} " in out  # the names inspect prints, whole
    # a pattern that matches nothing: exit 2 naming it and the layers
    assert main(["quant-debug", str(CNN), "--calib", str(MODELS / "digits_calib.npz"), "--input-shape",
                 "input=1,1,8,8", "--passes-args", "exclude=node_Conv_0", "--no-isolated"]) == 2
    err = capsys.readouterr().err
    assert "exclude pattern 'node_Conv_0': matches no layer" in err and "/features/features.0/Conv" in err

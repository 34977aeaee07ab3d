"""Pruning sensitivity scan, the ONNX -> torch converter, fine-tuning and their CLI commands,
on the bundled digits models (onnxruntime only; no TVM build)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from optc.cli import main
from optc.pipeline import instantiate, parse_pipeline
from optc.prune_scan import ScanBudget, proposal_pipeline, scan
from optc.verify import reference_outputs
from tests.conftest import MODELS

CNN = MODELS / "digits_cnn.onnx"
EVAL = MODELS / "digits_eval.npz"


@pytest.fixture(scope="module")
def cnn_scan():
    return scan(CNN, EVAL, ratios=(0.25, 0.5), budget=ScanBudget(target_flops=0.8, max_accuracy_drop=1.0))


def test_scan_table_and_proposal(cnn_scan):
    res = cnn_scan
    assert res["eval"]["metric"] == "top1" and res["eval"]["samples"] == 540
    assert res["baseline"]["metric"] > 98
    groups = [g["name"] for g in res["groups"]]
    assert groups == ["/features/features.0/Conv", "/features/features.3/Conv", "/features/features.7/Conv"]
    assert [s["name"] for s in res["skipped"]] == ["/classifier/Gemm"]  # the output layer
    assert len(res["rows"]) == 6
    for row in res["rows"]:
        assert row["kept"] < row["channels"] and 0 < row["flops_fraction"] < 1
        assert row["drop_points"] == pytest.approx(res["baseline"]["metric"] - row["metric"])
    p = res["proposal"]
    assert p["ratios"] and p["drop_points"] <= 1.0 and p["target_reached"]
    assert p["flops_fraction"] <= 0.8
    (spec,) = parse_pipeline(p["pipeline"])  # the proposal is a pipeline that parses back
    assert instantiate(spec).ratios == p["ratios"]
    # and it reproduces the measured figures
    import onnx_ir as ir

    irm = ir.serde.deserialize_model(onnx.load(str(CNN)))
    pruned = instantiate(spec)(irm)
    assert pruned.details["flops_after"] == p["flops"]


def test_scan_without_labels_reports_fidelity(tmp_path):
    data = np.load(EVAL)
    path = tmp_path / "nolabel.npz"
    np.savez(path, input=data["input"][:100])
    res = scan(CNN, path, ratios=(0.5,), budget=ScanBudget(max_accuracy_drop=300.0), eval_limit=64)
    assert res["eval"]["metric"] == "top1_agreement" and res["eval"]["samples"] == 64
    assert res["baseline"]["metric"] == 100.0
    assert res["proposal"]["target_reached"] and len(res["proposal"]["ratios"]) == 3  # budget allows all
    tight = scan(CNN, path, ratios=(0.5,), budget=ScanBudget(max_accuracy_drop=100.0), eval_limit=64)["proposal"]
    assert tight["estimated_drop_points"] <= 100.0 and len(tight["ratios"]) < 3


def test_proposal_pipeline_text():
    assert proposal_pipeline({}) == ""
    text = proposal_pipeline({"a/b": 0.5, "c": 0.25}, "bn-scale", multiple=8)
    assert text == "prune<ratios=a/b:0.5,c:0.25;criterion=bn-scale;multiple=8>"
    assert parse_pipeline(text)[0].format() == text


def test_cli_prune_scan_json_and_table(capsys):
    rc = main(["prune-scan", str(CNN), "--eval", str(EVAL), "--ratios", "0.5", "--eval-limit", "200",
               "--multiple", "8", "--json", "-q"])  # 8 on every host (AVX-512's 16 leaves a 16-channel layer whole)
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["eval"]["samples"] == 200 and len(res["rows"]) == 3
    rc = main(["prune-scan", str(CNN), "--eval", str(EVAL), "--ratios", "0.5", "--eval-limit", "200",
               "--multiple", "8", "--target-flops", "0.9", "-q"])
    out = capsys.readouterr().out
    assert rc == 0 and "/features/features.7/Conv" in out and "--passes 'prune<ratios=" in out
    assert main(["prune-scan", str(CNN), "--eval", str(EVAL), "--ratios", "x", "-q"]) == 2


# ---------------------------------------------------------------------------------------------
# torch side


def test_onnx_to_torch_matches_onnxruntime():
    torch = pytest.importorskip("torch")
    from optc.train.finetune import onnx_to_torch

    x = np.load(EVAL)["input"][:32]
    for name in ("digits_cnn.onnx", "digits_mlp.onnx"):
        m = onnx.load(str(MODELS / name))
        module = onnx_to_torch(m).eval()
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, reference_outputs(m, {"input": x})[0], atol=1e-4, rtol=1e-4)
        assert sum(p.numel() for p in module.parameters()) > 0


def test_import_optc_does_not_import_torch():
    code = "import sys, optc, optc.train.finetune, optc.prune_scan, optc.cli_prune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _train_npz(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from optc.models.digits import load_digits_split

    x, y, _, _ = load_digits_split()
    path = tmp_path / "train.npz"
    np.savez(path, input=x, label=y)
    return path


@pytest.mark.slow  # ~10-20 s: trains 6 epochs and exports twice
def test_prune_finetune_recovers_accuracy(tmp_path, capsys):
    train = _train_npz(tmp_path)
    out = tmp_path / "pruned.onnx"
    rc = main(["prune-finetune", str(CNN), "--passes", "prune<ratio=0.5>", "--train", str(train),
               "--eval", str(EVAL), "--epochs", "6", "--lr", "3e-3", "-o", str(out), "--json", "-q",
               "--max-accuracy-drop", "2"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["budget_passed"]
    assert rep["pruned"]["top1"] < 50 < 97 < rep["finetuned"]["top1"]  # pruning hurts, fine-tuning recovers
    assert rep["finetuned"]["flops"] == rep["pruned"]["flops"] < 0.3 * rep["original"]["flops"]
    assert rep["finetuned"]["onnx_bytes"] < rep["original"]["onnx_bytes"] / 3
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch stays dynamic
    x = np.load(EVAL)["input"][:5]
    assert reference_outputs(m, {"input": x})[0].shape == (5, 10)
    # an impossible budget fails with exit code 6 (the model is still written)
    rc = main(["prune-finetune", str(CNN), "--passes", "prune<ratio=0.5>", "--train", str(train),
               "--eval", str(EVAL), "--epochs", "0", "-o", str(out), "-f", "-q", "--max-accuracy-drop", "1"])
    assert rc == 6 and "budget" in capsys.readouterr().err

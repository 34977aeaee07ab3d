"""The command line end to end: compile / run / bench / inspect / passes / targets, JSON
output, and bad input (one-line error, documented exit code, nothing half-written)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc.artifact import read_package
from optc.cli import main
from optc.verify import reference_outputs
from tests.conftest import MODELS, make_unsupported_ops_model

pytestmark = pytest.mark.tvm


def _json(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def _cli(*args, cwd=None):
    """Run the real console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "optc", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def cpu_pkg(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "digits.cpu"
    rc = main(["compile", str(MODELS / "digits_cnn.onnx"), "-o", str(out), "--input-shape",
               "input=1,1,8,8", "-q"])
    assert rc == 0
    return out


def test_help_everywhere():
    for argv in (["--help"], *([c, "--help"] for c in ("compile", "run", "bench", "inspect", "passes", "targets"))):
        with pytest.raises(SystemExit) as e:
            main(list(argv))
        assert e.value.code == 0


def test_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    out = capsys.readouterr().out
    assert "exit codes" in out and "unsupported model" in out


def test_compile_report_and_manifest(cpu_pkg):
    report = json.loads((cpu_pkg / "report.json").read_text())
    for key in ("target", "pipeline", "verify", "size_bytes", "latency", "compile_seconds"):
        assert key in report
    assert report["target"] == "cpu"
    assert report["verify"]["passed"] is True and report["verify"]["max_abs_error"] < 1e-4
    assert report["latency"]["method"] == "measured" and report["latency"]["median_ms"] > 0
    assert report["size_bytes"]["artifact"] == (cpu_pkg / "model.so").stat().st_size
    manifest = read_package(cpu_pkg)  # checks every file hash
    assert manifest["pipeline"] == report["pipeline"]
    assert manifest["versions"]["apache-tvm"].startswith("0.27")
    assert manifest["target"]["tvm_resolved"]["mcpu"]  # detected host cpu recorded
    assert {"model.so", "model.onnx", "report.json", "sample_inputs.npz", "sample_outputs.npz"} <= set(manifest["files"])
    onnx.checker.check_model(onnx.load(str(cpu_pkg / "model.onnx")))


def test_run_matches_onnxruntime_on_real_data(cpu_pkg, tmp_path, capsys):
    data = np.load(MODELS / "digits_eval.npz")
    out = tmp_path / "out.npz"
    assert main(["run", str(cpu_pkg), "--inputs", str(MODELS / "digits_eval.npz"), "-o", str(out)]) == 0
    logits = np.load(out)["logits"]  # every row, in calls of the package's batch (1): none dropped
    assert logits.shape == (len(data["input"]), 10)
    ref = reference_outputs(onnx.load(str(MODELS / "digits_cnn.onnx")), {"input": data["input"]})[0]
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-3)
    assert main(["run", str(cpu_pkg), "-o", str(out)]) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["run", str(cpu_pkg), "-o", str(out), "--force"]) == 0


def test_bench_reports_ratio_against_onnxruntime(cpu_pkg, capsys):
    res = _json(capsys, ["bench", str(cpu_pkg), "--repeat", "10", "--rounds", "2", "--warmup", "1", "--json"])
    assert res["optc"]["repeat"] == 10 and res["onnxruntime"]["repeat"] == 10
    assert res["ratio_optc_over_ort"] == pytest.approx(res["optc"]["median_ms"] / res["onnxruntime"]["median_ms"])


def test_inspect_counts_macs(capsys):
    info = _json(capsys, ["inspect", str(MODELS / "digits_cnn.onnx"), "--input-shape", "input=1,1,8,8", "--json"])
    convs = [layer for layer in info["layers"] if layer["op"] == "Conv"]
    assert convs and all(layer["macs"] > 0 for layer in convs)
    assert info["macs"] == sum(layer["macs"] for layer in info["layers"])
    assert info["params"] > 1000
    # dynamic model without shapes: still answers, without costs
    info = _json(capsys, ["inspect", str(MODELS / "digits_cnn.onnx"), "--json"])
    assert "note" in info and info["params"] > 1000


def test_passes_and_targets_json(capsys):
    passes = {p["name"] for p in _json(capsys, ["passes", "--json"])}
    assert {"simplify", "fold-constants", "fuse-bn", "remove-identity", "dce"} <= passes
    targets = {t["name"]: t for t in _json(capsys, ["targets", "--json"])}
    assert {"cpu", "arm", "arm-a72", "arm-a76", "arm-n1"} <= set(targets)
    assert targets["arm-a76"]["tvm"]["mtriple"] == "aarch64-linux-gnu"


def test_pipeline_is_recorded_and_replayable(tmp_path):
    text = "simplify,fuse-bn,dce"
    out = tmp_path / "p"
    assert main(["compile", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--input-shape", "input=2,1,8,8",
                 "--passes", text, "--no-measure", "-q"]) == 0
    manifest = read_package(out)
    assert manifest["pipeline"] == text
    replay = tmp_path / "replay"
    assert main(["compile", str(MODELS / "digits_mlp.onnx"), "-o", str(replay), "--input-shape", "input=2,1,8,8",
                 "--passes", manifest["pipeline_explicit"], "--no-measure", "-q"]) == 0
    assert (replay / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, documented exit code, no traceback, nothing written


def _assert_clean_failure(proc, code, *needles):
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("optc:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs(tmp_path, tmp_path_factory):
    (tmp_path / "junk.onnx").write_text("definitely not onnx")
    _assert_clean_failure(_cli("compile", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "o1")), 2,
                          "not a valid ONNX model")
    _assert_clean_failure(_cli("compile", str(tmp_path / "missing.onnx")), 2, "no such file")
    model = str(MODELS / "digits_cnn.onnx")
    _assert_clean_failure(_cli("compile", model, "-o", str(tmp_path / "o2"), "--input-shape", "image=1,1,8,8"), 2,
                          "unknown input name", "'input'")
    _assert_clean_failure(_cli("compile", model, "-o", str(tmp_path / "o3"), "--input-shape", "input=1,1,9"), 2, "rank")
    # a dynamic batch binds to 1 (with a note); any other dynamic dim needs --input-shape
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "T"])])
    dyn = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), dyn)
    _assert_clean_failure(_cli("compile", str(dyn), "-o", str(tmp_path / "o4")), 2,
                          "dynamic shape", "--input-shape x=")
    _assert_clean_failure(_cli("compile", model, "--passes", "simplify,fuse-bm"), 2, "did you mean fuse-bn")
    _assert_clean_failure(_cli("compile", model, "--target", "risc-v"), 2, "unknown target")
    _assert_clean_failure(_cli("compile", model, "-o", "/proc/optc-test/pkg", "--input-shape", "input=1,1,8,8"), 2,
                          "cannot write there")
    _assert_clean_failure(_cli("run", str(tmp_path)), 2, "not an optc package")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "precious").write_text("keep")
    _assert_clean_failure(_cli("compile", str(MODELS / "digits_cnn.onnx"), "-o", str(out)), 2, "exists", "--force")
    assert (out / "precious").read_text() == "keep"


def test_unsupported_ops_listed_at_once(tmp_path):
    onnx.save(make_unsupported_ops_model(), str(tmp_path / "custom.onnx"))
    proc = _cli("compile", str(tmp_path / "custom.onnx"), "-o", str(tmp_path / "pkg"))
    _assert_clean_failure(proc, 3, "com.acme::Custom (custom_1, custom_2)", "RandomNormalLike (noise)")
    assert not (tmp_path / "pkg").exists()


def test_verification_failure_leaves_no_package(tmp_path):
    out = tmp_path / "strict"
    proc = _cli("compile", str(MODELS / "digits_cnn.onnx"), "-o", str(out), "--input-shape", "input=1,1,8,8",
                "--atol", "0", "--rtol", "0", "-q")
    if proc.returncode == 0:  # bit-identical to onnxruntime: nothing to test with zero tolerance
        pytest.skip("artifact is bit-identical to onnxruntime")
    _assert_clean_failure(proc, 4, "differs from onnxruntime")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qemu
def test_arm_compile_runs_under_qemu(tmp_path, capsys):
    out = tmp_path / "mlp.arm"
    report = _json(capsys, ["compile", str(MODELS / "digits_mlp.onnx"), "--target", "arm", "-o", str(out),
                            "--inputs", str(MODELS / "digits_eval.npz"), "--input-shape", "input=4,1,8,8",
                            "--params", "separate", "--json"])
    assert report["verify"]["passed"] and report["verify"]["inputs"].startswith("file")
    lat = report["latency"]
    assert lat["method"] == "modeled" and lat["median_ms"] > 0 and "Cortex-A72" in lat["source"]
    assert lat["emulated_ms"] > 0 and "NOT ARM latency" in lat["emulated_note"]
    # per-layer roofline: the Gemm layers, summing to the end-to-end roofline; the reported figure
    # is the larger of it and the executed-instruction bound (where the qemu insn plugin counted)
    assert {"Gemm"} <= {layer["op"] for layer in lat["layers"]}
    assert sum(layer["ms"] for layer in lat["layers"]) == pytest.approx(lat["roofline_ms"])
    assert lat["median_ms"] == pytest.approx(max(lat["roofline_ms"], lat.get("instruction_bound_ms", 0)))
    assert lat["label"].startswith("modeled: ")
    files = read_package(out)["files"]
    assert {"model.so", "params.bin", "runner/optc_runner", "runner/libtvm_runtime.so"} <= set(files)
    outs = _json(capsys, ["run", str(out), "--inputs", str(MODELS / "digits_eval.npz"), "--json"])
    logits = np.array(outs["logits"]["data"], np.float32)
    data = np.load(MODELS / "digits_eval.npz")
    ref = reference_outputs(onnx.load(str(MODELS / "digits_mlp.onnx")), {"input": data["input"]})[0]
    np.testing.assert_allclose(logits.reshape(ref.shape), ref, atol=1e-4, rtol=1e-3)  # all 540 rows, 135 calls

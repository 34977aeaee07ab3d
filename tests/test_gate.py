"""The CI gate: budgets against reports (every budget, missing figures), `optc check` exit codes
and messages, `optc report` (Markdown/HTML with method labels, PNG plot), job files (YAML and
TOML) and `optc run-config` with passing, over-budget, unknown-pass and skipped candidates."""

from __future__ import annotations

import json
import shutil

import onnx_ir as ir
import pytest

from optc import gate, pipeline
from optc.cli import main
from optc.energy import model_energy
from optc.errors import BudgetError, UsageError
from tests.conftest import MODELS, make_conv_model


def _report(**over) -> dict:
    r = {
        "target": "cpu", "pipeline": "dce", "verify": {"passed": True, "max_abs_error": 1e-6},
        "size_bytes": {"artifact": 1_500_000},
        "latency": {"method": "measured", "median_ms": 4.0},
        "energy": {"method": "modeled", "mj_per_inference": 2.0, "source": "Horowitz",
                   "notes": ["not measured: no RAPL powercap zones under /sys/class/powercap"]},
        "accuracy": {"top1": 0.985, "top1_reference": 0.99, "top1_drop_points": 0.5, "samples": 200,
                     "top1_agreement": 0.99},
    }
    r.update(over)
    return r


ALL = gate.Budgets(max_accuracy_drop=1, max_latency_ms=5, max_size_mb=2, max_energy_mj=3)


def test_all_budgets_pass():
    checks = gate.check_report(_report(), ALL)
    assert [c.budget for c in checks] == ["accuracy drop", "latency", "size", "energy", "verify"]
    assert all(c.passed for c in checks)
    gate.enforce(checks, "pkg")  # no exception


def test_every_budget_fails_with_its_reason():
    tight = gate.Budgets(max_accuracy_drop=0.1, max_latency_ms=1, max_size_mb=1, max_energy_mj=1)
    checks = gate.check_report(_report(), tight)
    assert not any(c.passed for c in checks[:4])
    lines = [c.line() for c in checks]
    assert lines[0].startswith("FAIL accuracy drop: 0.50 points > 0.1")
    assert lines[1] == "FAIL latency: 4 ms > 1 ms (measured)"
    assert lines[2].startswith("FAIL size: 1.5 MB > 1 MB")
    assert lines[3] == "FAIL energy: 2 mJ > 1 mJ per inference (modeled)"
    assert lines[4].startswith("PASS verify: artifact verified against onnxruntime")
    with pytest.raises(BudgetError) as e:
        gate.enforce(checks, "pkg")
    msg = str(e.value)
    assert e.value.exit_code == 6 and "4 of 5 checks failed for pkg" in msg
    assert all(f"  {c.budget}: " in msg for c in checks[:4]) and len(msg.splitlines()) == 5


def test_missing_figures_fail_clearly():
    r = _report(latency={"method": "not measured", "reason": "--no-measure"})
    del r["accuracy"], r["energy"], r["size_bytes"]
    checks = {c.budget: c for c in gate.check_report(r, ALL)}
    assert not any(c.passed for n, c in checks.items() if n != "verify")
    assert "no accuracy figure" in checks["accuracy drop"].detail and "--eval" in checks["accuracy drop"].detail
    assert "no latency figure" in checks["latency"].detail and "--no-measure" in checks["latency"].detail
    assert "no energy figure" in checks["energy"].detail
    assert "no size figure" in checks["size"].detail


def test_fidelity_bound_and_require_measured():
    r = _report(accuracy={"top1_agreement": 0.995, "samples": 100})
    (c, _) = gate.check_report(r, gate.Budgets(max_accuracy_drop=1))
    assert c.passed and c.value == pytest.approx(0.5) and "fidelity bound" in c.detail
    checks = gate.check_report(_report(), gate.Budgets(require_measured=("latency", "energy")))
    assert [c.passed for c in checks] == [True, False, True]
    assert "energy is modeled" in checks[1].detail and "no RAPL" in checks[1].detail
    assert gate.parse_require_measured(True) == ("latency", "energy")
    with pytest.raises(UsageError):
        gate.parse_require_measured("speed")
    with pytest.raises(UsageError, match="unknown budget"):
        gate.Budgets.from_mapping({"max_latency": 3})


# --- the gate refuses what was not checked ------------------------------------------------------


@pytest.mark.parametrize("verify, why", [
    ({"passed": None, "skipped": "no CUDA device on this machine"}, "no CUDA device"),
    ({"passed": None, "skipped": True}, "--no-verify"),
    (None, "no verify section"),
])
def test_unverified_package_fails_unless_allowed(verify, why):
    r = _report(verify=verify)
    if verify is None:
        del r["verify"]
    checks = gate.check_report(r, gate.Budgets(max_size_mb=2))
    assert [(c.budget, c.passed) for c in checks] == [("size", True), ("verify", False)]
    assert "NOT verified" in checks[1].detail and why in checks[1].detail
    assert "--allow-unverified" in checks[1].detail
    with pytest.raises(BudgetError, match="verify: NOT verified"):
        gate.enforce(checks, "pkg")
    (_, v) = gate.check_report(r, gate.Budgets(max_size_mb=2, allow_unverified=True))
    assert v.passed and "NOT verified" in v.detail and "accepted by allow-unverified" in v.detail


def test_failed_verification_fails_even_when_unverified_is_allowed():
    r = _report(verify={"passed": False})
    (_, v) = gate.check_report(r, gate.Budgets(max_size_mb=2, allow_unverified=True))
    assert not v.passed and "failed verification" in v.detail


def _modeled(ms: float) -> dict:
    return {"method": "modeled", "median_ms": ms, "source": "Cortex-A72 datasheet",
            "how": "roofline lower bound: sum over layers of max(FLOPs / peak, bytes / bandwidth)"}


def test_modeled_latency_fails_a_budget_unless_allowed():
    r = _report(latency=_modeled(0.5))
    (lat, _) = gate.check_report(r, gate.Budgets(max_latency_ms=5))
    assert not lat.passed and lat.value == 0.5
    assert "0.5 ms <= 5 ms (modeled: roofline lower bound, not a measurement)" in lat.detail
    assert "--allow-modeled" in lat.detail
    (lat, _) = gate.check_report(r, gate.Budgets(max_latency_ms=5, allow_modeled=True))
    assert lat.passed and "modeled" in lat.line() and "accepted by allow-modeled" in lat.detail
    # a lower bound above the budget fails either way: the real latency is at least that
    (lat, _) = gate.check_report(_report(latency=_modeled(7.0)), gate.Budgets(max_latency_ms=5, allow_modeled=True))
    assert not lat.passed and "7 ms > 5 ms (modeled" in lat.detail and "at least" in lat.detail
    # measured figures are unaffected; require_measured still refuses the modeled one
    (lat, _) = gate.check_report(_report(), gate.Budgets(max_latency_ms=5))
    assert lat.passed and lat.detail == "4 ms <= 5 ms (measured)"
    (m, _) = gate.check_report(r, gate.Budgets(require_measured=("latency",), allow_modeled=True))
    assert not m.passed and "latency is modeled" in m.detail


def test_emulated_time_is_never_a_latency():
    emulated = {"method": "emulated", "median_ms": 0.8, "note": "qemu-user on x86",
                "modeled_ms": 0.2, "modeled_source": "roofline lower bound from Cortex-A76"}
    (lat, _) = gate.check_report(_report(latency=emulated), gate.Budgets(max_latency_ms=5))
    assert not lat.passed and "qemu wall time" in lat.detail and "modeled" in lat.detail
    (lat, _) = gate.check_report(_report(latency=emulated), gate.Budgets(max_latency_ms=5, allow_modeled=True))
    assert lat.passed and lat.value == 0.2 and "emulated 0.8 ms" in lat.detail  # the model counts, not qemu
    del emulated["modeled_ms"]
    (lat, _) = gate.check_report(_report(latency=emulated), gate.Budgets(max_latency_ms=5, allow_modeled=True))
    assert not lat.passed and "not the target's latency" in lat.detail
    # FPGA: RTL-simulated cycles at the placed-and-routed clock are a latency; at an assumed clock, a model
    fpga = {"method": "simulated cycles at P&R fmax", "median_ms": 0.01}
    (lat, _) = gate.check_report(_report(latency=fpga), gate.Budgets(max_latency_ms=5))
    assert lat.passed
    fpga["method"] = "simulated cycles at an assumed clock"
    (lat, _) = gate.check_report(_report(latency=fpga), gate.Budgets(max_latency_ms=5))
    assert not lat.passed and "modeled" in lat.detail


def test_energy_from_supplied_power_times_a_modeled_latency_is_a_lower_bound():
    energy = {"method": "estimated from supplied power", "mj_per_inference": 0.5,
              "breakdown": {"power_watts": 5, "latency_ms": 0.1, "latency_method": "modeled"}}
    r = _report(energy=energy, latency=_modeled(0.1))
    (e, _) = gate.check_report(r, gate.Budgets(max_energy_mj=1))
    assert not e.passed and "a lower bound" in e.detail and "--allow-modeled" in e.detail
    (e, _) = gate.check_report(r, gate.Budgets(max_energy_mj=1, allow_modeled=True))
    assert e.passed
    energy["breakdown"]["latency_method"] = "measured"
    (e, _) = gate.check_report(r, gate.Budgets(max_energy_mj=1))
    assert e.passed and e.detail == "0.5 mJ <= 1 mJ per inference (estimated from supplied power)"


def test_switches_in_job_budgets_and_cli_flags(tmp_path, capsys):
    b = gate.Budgets.from_mapping({"max_latency_ms": 5, "allow_modeled": True, "allow-unverified": "false"})
    assert b.allow_modeled is True and b.allow_unverified is False and not b.is_empty()
    assert b.to_json() == {"max_latency_ms": 5.0, "allow_modeled": True}
    assert gate.Budgets.from_mapping({"allow_modeled": True}).is_empty()  # a switch is not a budget
    with pytest.raises(UsageError, match="allow_modeled must be true or false"):
        gate.Budgets.from_mapping({"allow_modeled": 3})
    # optc check on an unverified package with a modeled latency (an ARM/GPU package built here)
    pkg = tmp_path / "gpu"
    pkg.mkdir()
    (pkg / "report.json").write_text(json.dumps(_report(latency=_modeled(0.3),
                                                        verify={"passed": None, "skipped": "no GPU here"})))
    assert main(["check", str(pkg), "--max-latency-ms", "5"]) == 6
    cap = capsys.readouterr()
    assert "FAIL latency: 0.3 ms <= 5 ms (modeled" in cap.out and "FAIL verify: NOT verified" in cap.out
    assert "2 of 2 checks failed" in cap.err
    assert main(["check", str(pkg), "--max-latency-ms", "5", "--allow-modeled"]) == 6
    assert "PASS latency" in capsys.readouterr().out
    assert main(["check", str(pkg), "--max-latency-ms", "5", "--allow-modeled", "--allow-unverified", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and "modeled" in out["checks"][0]["detail"] and "NOT verified" in out["checks"][1]["detail"]


def test_choose_best_order_and_ties():
    rs = [{"name": n, "status": s, "figures": f} for n, s, f in [
        ("a", "passed", {"latency_ms": 1.00, "size_bytes": 900}),
        ("b", "passed", {"latency_ms": 1.01, "size_bytes": 500}),   # within 2%: tie -> smaller wins
        ("c", "over budget", {"latency_ms": 0.1, "size_bytes": 1}),
        ("d", "passed", {"latency_ms": 2.0, "size_bytes": 100}),
    ]]
    assert gate.choose_best(rs, ("latency_ms", "size_bytes"), 0.02)["name"] == "b"
    assert gate.choose_best(rs, ("latency_ms", "size_bytes"), 0.0)["name"] == "a"
    assert gate.choose_best(rs, ("size_bytes",), 0.0)["name"] == "d"
    assert gate.choose_best([rs[2]], ("latency_ms",), 0.0) is None


# --- job files -------------------------------------------------------------------------------

YAML_JOB = """
model: {model}
input_shapes: {{x: [1, 3, 8, 8]}}
calibration: {calib}
output_dir: out
budgets: {{max_energy_mj: {energy}, max_size_mb: 5}}
candidates:
{candidates}
"""


def _candidates(*items) -> str:
    return "\n".join(f"  - {{name: {n}, pipeline: '{p}'}}" for n, p in items)


def test_load_job_yaml_and_toml(tmp_path):
    model = tmp_path / "m.onnx"
    make_conv_model(model)
    calib = tmp_path / "calib.npz"
    calib.write_bytes(b"")
    cands = _candidates(("a", "dce"), ("b", "quantize<calib={calibration}>"))
    (tmp_path / "job.yaml").write_text(YAML_JOB.format(model="m.onnx", calib="calib.npz", energy=1, candidates=cands))
    (tmp_path / "job.toml").write_text(
        'model = "m.onnx"\ncalibration = "calib.npz"\noutput_dir = "out"\ninput_shapes = {x = [1, 3, 8, 8]}\n'
        'budgets = {max_energy_mj = 1, max_size_mb = 5}\n'
        '[[candidates]]\nname = "a"\npipeline = "dce"\n'
        '[[candidates]]\nname = "b"\npipeline = "quantize<calib={calibration}>"\n')
    jobs = [gate.load_job(tmp_path / f"job.{ext}") for ext in ("yaml", "toml")]
    for job in jobs:
        assert job.model == model and job.output_dir == tmp_path / "out"
        assert job.input_shapes == {"x": (1, 3, 8, 8)}
        assert [c.name for c in job.candidates] == ["a", "b"]
        assert job.budgets == gate.Budgets(max_energy_mj=1, max_size_mb=5)
        assert job.select_order == ("latency_ms", "size_bytes")
        assert gate.expand_pipeline(job.candidates[1].pipeline, job) == f"quantize<calib={calib}>"
    (tmp_path / "bad.yaml").write_text("model: m.onnx\npipelin: dce\n")
    with pytest.raises(UsageError, match="unknown key"):
        gate.load_job(tmp_path / "bad.yaml")
    (tmp_path / "both.yaml").write_text("model: m.onnx\npipeline: dce\ncandidates: [dce]\n")
    with pytest.raises(UsageError, match="not both"):
        gate.load_job(tmp_path / "both.yaml")
    with pytest.raises(UsageError, match=".yaml, .yml or .toml"):
        gate.load_job(tmp_path / "m.onnx")


# --- the CLI on real packages ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_pkg(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "digits.cpu"
    rc = main(["compile", str(MODELS / "digits_cnn.onnx"), "-o", str(out), "--input-shape", "input=1,1,8,8",
               "--eval", str(MODELS / "digits_eval.npz"), "--eval-limit", "100", "-q"])
    assert rc == 0
    return out


@pytest.mark.tvm
def test_cli_check_exit_codes_and_messages(digits_pkg, tmp_path, capsys):
    ok = ["--max-accuracy-drop", "1", "--max-latency-ms", "1000", "--max-size-mb", "2", "--max-energy-mj", "3"]
    assert main(["check", str(digits_pkg), *ok]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 5 and "(measured)" in out and "(modeled)" in out and "PASS verify" in out

    bad = ["--max-accuracy-drop", "-1", "--max-latency-ms", "1e-6", "--max-size-mb", "0.01",
           "--max-energy-mj", "1e-9", "--require-measured", "energy"]
    assert main(["check", str(digits_pkg), *bad]) == 6
    cap = capsys.readouterr()
    assert cap.out.count("FAIL") == 5
    err = cap.err.splitlines()
    assert err[0] == f"optc: error: 5 of 6 checks failed for {digits_pkg}:"
    for name in ("accuracy drop", "latency", "size", "energy", "measured energy"):
        assert any(line.startswith(f"  {name}: ") for line in err[1:]), name

    # a package compiled without --eval: the accuracy budget fails and says why
    noeval = tmp_path / "noeval"
    noeval.mkdir()
    r = json.loads((digits_pkg / "report.json").read_text())
    del r["accuracy"]
    (noeval / "report.json").write_text(json.dumps(r))
    assert main(["check", str(noeval), "--max-accuracy-drop", "1", "--max-size-mb", "2"]) == 6
    cap = capsys.readouterr()
    assert "FAIL accuracy drop: no accuracy figure" in cap.out and "PASS size" in cap.out
    assert main(["check", str(digits_pkg)]) == 2  # no budget given
    assert main(["check", str(tmp_path), "--max-size-mb", "1"]) == 2  # not a package


@pytest.mark.tvm
def test_cli_report_markdown_html_and_plot(digits_pkg, tmp_path, capsys):
    other = tmp_path / "estimated"
    other.mkdir()
    r = json.loads((digits_pkg / "report.json").read_text())
    r["energy"] = {"method": "estimated from supplied power", "mj_per_inference": 0.5, "source": "5 W x 0.1 ms"}
    (other / "report.json").write_text(json.dumps(r))
    md, png = tmp_path / "cmp.md", tmp_path / "acc.png"
    assert main(["report", str(digits_pkg), str(other), "-o", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert "| package | target | pipeline | size | latency | energy | accuracy | verify |" in text
    assert "ms (measured)" in text and "mJ (modeled)" in text and "(estimated from supplied power)" in text
    assert "Horowitz ISSCC 2014" in text and "![accuracy vs latency and energy](acc.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    html = tmp_path / "cmp.html"
    assert main(["report", str(digits_pkg), "-o", str(html)]) == 0
    assert "<table>" in html.read_text() and "(measured)" in html.read_text()
    assert main(["report", str(digits_pkg), "-o", str(md)]) == 2  # exists, no --force
    capsys.readouterr()
    assert main(["report", str(digits_pkg)]) == 0  # Markdown on stdout
    assert "(measured)" in capsys.readouterr().out


def _energy_threshold() -> float:
    """Between the modeled energies of the conv model with BatchNorm folded and without."""
    vals = []
    for text in ("fuse-bn,dce", "dce"):
        m, _ = pipeline.run_pipeline(ir.serde.deserialize_model(make_conv_model()), pipeline.parse_pipeline(text))
        vals.append(model_energy(ir.serde.serialize_model(m))["mj_per_inference"])
    assert vals[0] < vals[1]
    return sum(vals) / 2


@pytest.mark.tvm
def test_run_config_picks_best_and_records_every_candidate(tmp_path, capsys):
    make_conv_model(tmp_path / "m.onnx")
    (tmp_path / "calib.npz").write_bytes(b"")
    job = tmp_path / "job.yaml"
    cands = _candidates(("fused", "fuse-bn,dce"), ("unfused", "dce"),
                        ("future", "quantize-v9<bits=8;calib={calibration}>"))
    job.write_text(YAML_JOB.format(model="m.onnx", calib="calib.npz", energy=_energy_threshold(), candidates=cands))
    assert main(["run-config", str(job), "-q"]) == 0
    out = tmp_path / "out"
    s = json.loads((out / "summary.json").read_text())
    assert s["passed"] is True and s["best"] == "fused"
    st = {c["name"]: c for c in s["candidates"]}
    assert [st[n]["status"] for n in ("fused", "unfused", "future")] == ["passed", "over budget", "unknown pass"]
    assert st["unfused"]["note"].startswith("energy: ") and "(modeled)" in st["unfused"]["note"]
    assert "unknown pass 'quantize-v9'" in st["future"]["note"]
    assert (out / "best" / "model.so").is_file() and (out / "best" / "report.json").is_file()
    for name in ("fused", "unfused"):  # every compiled candidate's report is kept
        assert (out / "candidates" / name / "report.json").is_file()
    for name in st:
        assert (out / "candidates" / f"{name}.json").is_file()
    md = (out / "summary.md").read_text()
    assert "**Best: fused**" in md and "unknown pass" in md and "over budget" in md and "(modeled)" in md
    printed = capsys.readouterr().out
    assert printed.startswith("best: fused") and "future" in printed
    # an earlier output is replaced only with --force
    assert main(["run-config", str(job), "-q"]) == 2


@pytest.mark.tvm
def test_run_config_none_passes_exit_6(tmp_path, capsys):
    make_conv_model(tmp_path / "m.onnx")
    (tmp_path / "job.toml").write_text(
        f'model = "m.onnx"\noutput_dir = "out"\ninput_shapes = ["x=1,3,8,8"]\n'
        f'budgets = {{max_energy_mj = {_energy_threshold()}}}\n'
        '[[candidates]]\nname = "unfused"\npipeline = "dce"\n'
        '[[candidates]]\nname = "future"\npipeline = "prune-v9<ratio=0.3>"\n')
    assert main(["run-config", str(tmp_path / "job.toml"), "-q"]) == 6
    err = capsys.readouterr().err
    assert "no candidate of" in err and "  unfused: over budget (energy: " in err and "  future: unknown pass" in err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["passed"] is False and s["best"] is None and not (tmp_path / "out" / "best").exists()
    assert (tmp_path / "out" / "candidates" / "unfused" / "report.json").is_file()
    assert "No candidate met the budgets" in (tmp_path / "out" / "summary.md").read_text()

    # a spent time budget: nothing more is compiled, every candidate is listed as skipped
    job = tmp_path / "job.toml"
    job.write_text("time_budget_s = 0\n" + job.read_text())
    assert main(["run-config", str(job), "--force", "-q"]) == 6
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["status"] for c in s["candidates"]] == ["skipped", "skipped"]
    assert "time budget" in s["candidates"][0]["note"]
    shutil.rmtree(tmp_path / "out")


@pytest.mark.tvm
def test_run_config_follows_the_gate_rules_and_runs_the_cleanup(tmp_path, capsys):
    """run-config checks with the rules of optc check: an unverified candidate is over budget
    unless the job's budgets allow it; a compression pipeline gets the cleanup prefix (recorded)
    unless the job says cleanup: false."""
    make_conv_model(tmp_path / "m.onnx")
    job = tmp_path / "job.yaml"
    text = ("model: m.onnx\ninput_shapes: {x: [1, 3, 8, 8]}\noutput_dir: out\n"
            "compile: {verify_outputs: false, measure: false}\n"
            "budgets: {max_size_mb: 5%s}\n"
            "candidates:\n  - {name: pruned, pipeline: 'prune<ratio=0.5>'}\n"
            "  - {name: as-written, pipeline: 'prune<ratio=0.5>', cleanup: false}\n")
    job.write_text(text % "")
    assert main(["run-config", str(job), "-q"]) == 6
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["status"] for c in s["candidates"]] == ["over budget", "over budget"]
    assert all("verify: NOT verified" in c["note"] and "--no-verify" in c["note"] for c in s["candidates"])
    capsys.readouterr()
    job.write_text(text % ", allow_unverified: true")
    assert main(["run-config", str(job), "-q", "--force"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["budgets"]["allow_unverified"] is True
    c = {c["name"]: c for c in s["candidates"]}
    assert c["pruned"]["status"] == "passed" and c["pruned"]["pipeline"] == "prune<ratio=0.5>"
    from optc.backends.tvm.facts import fp32_lanes
    from optc.targets import get_target

    run = f"prune<ratio=0.5;multiple={fp32_lanes(get_target('cpu'))}>"  # the target's SIMD width, as run
    assert c["pruned"]["pipeline_run"] == "simplify,fold-constants,remove-identity,fuse-bn,batch-matmuls,dce," + run
    manifest = json.loads((tmp_path / "out" / "candidates" / "pruned" / "manifest.json").read_text())
    assert manifest["pipeline"] == c["pruned"]["pipeline_run"]
    assert c["as-written"]["pipeline_run"] == run
    assert "NOT verified" in capsys.readouterr().out

"""The FPGA target end to end: `optc compile --target fpga` / `optc fpga` produce a verified
package (the session runs the C simulation between the host parts), report.json latency from
RTL cycles, fpga_report.md; `optc run` / `optc bench` on the package; `optc fpga-pareto`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import optc
from optc import verify
from optc.artifact import read_package
from optc.backends import fpga
from optc.cli import main
from tests.conftest import MODELS

from .tiny_models import binary_cnn, binary_mlp, qdq_mlp

FAST = {"synth": False, "pnr": False}


@pytest.fixture(scope="module")
def tiny_pkg(tmp_path_factory):
    d = tmp_path_factory.mktemp("fpga")
    onnx.save(binary_mlp(), str(d / "bmlp.onnx"))
    report = fpga.compile(d / "bmlp.onnx", d / "bmlp.fpga", fps=20e6, config=FAST)
    return d, report


def test_compile_report_and_package(tiny_pkg):
    d, report = tiny_pkg
    assert report["verify"]["passed"] is True
    lat = report["latency"]
    assert lat["method"] == "simulated cycles at an assumed clock" and lat["clock_mhz"] == 100
    assert lat["ii_cycles"] <= 5  # 20M inferences/s at the assumed 100 MHz
    assert lat["latency_cycles"] > lat["ii_cycles"]
    pkg = d / "bmlp.fpga"
    manifest = read_package(pkg)
    assert manifest["target"]["name"] == "fpga" and manifest["target"]["latency"] == "simulated"
    for f in ("hls/model.cpp", "hls/tb.cpp", "hls/optc_bnn.h", "hls/include/ap_int.h", "hls/csim", "rtl/model.v",
              "rtl/tb.v", "rtl/shell.v", "fpga_report.json", "fpga_report.md", "host/head.onnx", "host/tail.onnx"):
        assert (pkg / f).is_file(), f
    rep = json.loads((pkg / "fpga_report.json").read_text())
    assert rep["csim"]["bit_exact"] and rep["rtl_sim"]["bit_exact"]
    assert [layer["kind"] for layer in rep["folding"]["layers"]] == ["mvau", "mvau"]
    assert rep["energy"]["method"] == "modeled" and rep["energy"]["nj_per_inference"] > 0
    assert any(p.get("chosen") for p in rep["pareto"])
    md = (pkg / "fpga_report.md").read_text()
    assert "Pareto" in md and "Host parts" in md and "BatchNormalization" in md


def test_run_and_bench_the_package(tiny_pkg):
    d, _ = tiny_pkg
    x = np.random.default_rng(5).standard_normal((1, 1, 4, 4)).astype(np.float32)
    out = optc.run(d / "bmlp.fpga", {"x": x})
    ref = verify.ort_session(binary_mlp()).run(None, {"x": x})[0]
    np.testing.assert_allclose(out["y"], ref, atol=1e-5)
    b = optc.bench(d / "bmlp.fpga", optc.BenchOptions(repeat=2))
    assert b["modeled"]["ii_cycles"] >= 1


def test_cli_fpga_command(tmp_path, capsys):
    onnx.save(qdq_mlp(), str(tmp_path / "q.onnx"))
    cfg = tmp_path / "fpga.json"
    cfg.write_text(json.dumps({"folding": {"mvau0": [1, 4]}, "synth": False}))
    rc = main(["fpga", str(tmp_path / "q.onnx"), "-o", str(tmp_path / "q.fpga"), "--fpga-config", str(cfg), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "throughput" in out and "inferences/s" in out
    rep = json.loads((tmp_path / "q.fpga" / "fpga_report.json").read_text())
    assert rep["folding"]["layers"][0]["pe"] == 1 and rep["folding"]["layers"][0]["simd"] == 4
    assert rep["performance"]["ii_cycles"] == 18  # 6 x 12 / 4


def test_cli_pareto_json(tmp_path, capsys):
    onnx.save(binary_cnn(), str(tmp_path / "c.onnx"))
    rc = main(["fpga-pareto", str(tmp_path / "c.onnx"), "--json", "-q"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["points"][0]["ii_cycles"] == 36


def test_model_without_binary_layers_is_refused(tmp_path, capsys):
    rc = main(["compile", str(MODELS / "digits_mlp.onnx"), "--target", "fpga", "--input-shape", "input=1,1,8,8",
               "-o", str(tmp_path / "x"), "-q"])
    assert rc == 3
    assert "no layer for the FPGA" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.fpga_sim
def test_compile_target_fpga_default_places_and_routes(tmp_path, capsys):
    onnx.save(binary_cnn(), str(tmp_path / "c.onnx"))
    rc = main(["compile", str(tmp_path / "c.onnx"), "--target", "fpga", "-o", str(tmp_path / "c.fpga"), "-q", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["verify"]["passed"]
    lat = report["latency"]
    assert lat["method"] == "simulated cycles at P&R fmax"
    assert lat["clock_source"].startswith("nextpnr") and lat["clock_mhz"] > 50
    assert lat["fpga"]["fits"] is True and lat["fpga"]["resources"]["source"] == "nextpnr placement"
    assert lat["throughput_inferences_per_s"] == pytest.approx(lat["clock_mhz"] * 1e6 / lat["ii_cycles"])


@pytest.mark.slow
@pytest.mark.parametrize("which", ["bmlp", "bcnn"])
def test_trained_digits_bnn_simulates_bit_exact(tmp_path, which):
    from optc.models import fpga_digits

    path = tmp_path / f"{which}.onnx"
    fpga_digits.build(which, path, epochs=8)
    report = fpga.compile(path, tmp_path / f"{which}.fpga", config=FAST, input_shapes={"input": (1, 1, 8, 8)},
                          inputs=MODELS / "digits_eval.npz")
    assert report["verify"]["passed"] is True
    rep = json.loads((tmp_path / f"{which}.fpga" / "fpga_report.json").read_text())
    assert rep["csim"]["bit_exact"] and rep["rtl_sim"]["bit_exact"]
    if which == "bcnn":
        assert [n["op"] for n in rep["host"]["head"]][:1] == ["Conv"]  # the float first layer stays on the host


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_bmlp.onnx", "digits_bcnn.onnx"])
def test_project_bnn_models(tmp_path, name):
    """The project's own trained BNNs (models/, from the BNN training helpers) when present."""
    if not (MODELS / name).exists():
        pytest.skip(f"models/{name} not built yet")
    from optc.errors import UnsupportedModelError

    try:
        report = fpga.compile(MODELS / name, tmp_path / "m.fpga", config=FAST, input_shapes={"input": (1, 1, 8, 8)},
                              inputs=MODELS / "digits_eval.npz")
    except UnsupportedModelError as err:  # a pattern the FPGA frontend does not read yet: say which
        pytest.xfail(f"models/{name}: {err}")
    assert report["verify"]["passed"] is True


def test_backend_config_is_an_explicit_input():
    """The FPGA configuration reaches the build as the backend's constructor argument (no
    context-global state); a backend that takes no configuration refuses one by name."""
    from optc.backends import get_backend
    from optc.backends.fpga.config import FpgaConfig
    from optc.errors import UsageError

    cfg = FpgaConfig(fps=123.0)
    assert get_backend("fpga", cfg).config is cfg
    assert get_backend("fpga").config == FpgaConfig()
    with pytest.raises(UsageError, match="takes no backend configuration"):
        get_backend("tvm-cpu", cfg)

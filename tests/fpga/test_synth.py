"""Synthesis (yosys synth_ecp5) and place-and-route (nextpnr-ecp5) of a tiny pipeline: it fits
the part, nextpnr reports a clock, resources come per layer."""

from __future__ import annotations

import pytest

from optc.backends.fpga import extract, folding, rtl, synth

from .tiny_models import binary_mlp

pytestmark = pytest.mark.fpga_sim


def _tools():
    try:
        synth.check_tools(pnr=True)
    except Exception as err:  # pragma: no cover - depends on the machine
        pytest.skip(str(err))


def test_synthesize_and_place_tiny_binary_mlp(tmp_path):
    _tools()
    g = extract.partition(binary_mlp()).graph
    folding.fold(g, 1)
    (tmp_path / "model.v").write_text(rtl.emit(g)["model.v"])
    (tmp_path / "shell.v").write_text(rtl.shell(g))
    s = synth.synthesize(tmp_path, tmp_path / "syn")
    assert {"mvau0", "mvau1", "optc_pnr_shell"} <= set(s["modules"])
    assert s["modules"]["mvau0"]["lut4_equiv"] > 0 and s["modules"]["mvau0"]["ff"] > 0
    assert s["total"]["lut4_equiv"] >= s["modules"]["mvau0"]["lut4_equiv"]
    r = synth.place_and_route(tmp_path / "syn", folding.DEVICES["LFE5U-85F-8BG381"], freq_mhz=200, seed=1)
    assert r["fits"] and r["luts"] > 0 and r["ffs"] > 0
    assert 50 < r["fmax_mhz"] < 600
    assert r["ios"] <= 24  # narrow I/O shell

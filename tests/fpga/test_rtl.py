"""Verilog: golden snapshot, and cycle-accurate simulation (Icarus; Verilator where installed)
bit-exact against the numpy reference, with latency and initiation interval in cycles."""

from __future__ import annotations

import numpy as np
import pytest

from optc.backends.fpga import extract, folding, ir, rtl, sim

from .golden_util import check_golden
from .tiny_models import binary_cnn, qdq_mlp, reference_pipeline

pytestmark = pytest.mark.skipif(not sim.available("iverilog"), reason="needs Icarus Verilog (setup.sh installs it)")


def _rtl(graph, tmp_path, images=5, simulator="iverilog", seed=0):
    d = tmp_path / "rtl"
    d.mkdir(parents=True)
    for k, v in rtl.emit(graph).items():
        (d / k).write_text(v)
    x = np.random.default_rng(seed).choice(graph.in_dtype.values(), size=(images, graph.in_vecs, graph.in_elems))
    r = sim.simulate(graph, d, x, tmp_path / "work", simulator)
    np.testing.assert_array_equal(r["outputs"], ir.execute(graph, x))
    return r


def test_golden_rtl_reference_pipeline():
    g = reference_pipeline()
    files = rtl.emit(g, "reference pipeline")
    check_golden("reference_model.v", files["model.v"])
    check_golden("reference_shell.v", rtl.shell(g))


def test_rtl_reference_pipeline(tmp_path):
    g = reference_pipeline()
    r = _rtl(g, tmp_path)
    assert g.ii_model() == 16
    assert 16 <= r["ii_cycles"] <= 20 and r["latency_cycles"] > r["ii_cycles"]


@pytest.mark.parametrize("ii", [1, 4, 10 ** 6])
def test_rtl_mlp_ii_matches_folding(tmp_path, ii):
    g = extract.partition(qdq_mlp(sizes=(24, 12, 6))).graph
    folding.fold(g, ii)
    r = _rtl(g, tmp_path)
    assert r["ii_cycles"] == g.ii_model()  # dense layers: measured II = slowest layer's fold
    assert all(lat == r["latency_cycles_all"][0] for lat in r["latency_cycles_all"])


def test_rtl_binary_cnn(tmp_path):
    g = extract.partition(binary_cnn()).graph
    folding.fold(g, 1)
    r = _rtl(g, tmp_path, images=4)
    assert r["ii_cycles"] == 36  # one input pixel per cycle


def test_rtl_padded_binary_cnn(tmp_path):
    g = extract.partition(binary_cnn(pads=1)).graph
    folding.fold(g, 1)
    r = _rtl(g, tmp_path, images=3)
    assert r["ii_cycles"] >= 64  # the padded 8x8 image streams one pixel per cycle


@pytest.mark.skipif(not sim.available("verilator"), reason="needs Verilator")
def test_verilator_is_cycle_identical_to_icarus(tmp_path):
    g = reference_pipeline()
    a = _rtl(g, tmp_path / "a", simulator="iverilog")
    b = _rtl(g, tmp_path / "b", simulator="verilator")
    assert (a["latency_cycles_all"], a["ii_cycles_all"]) == (b["latency_cycles_all"], b["ii_cycles_all"])

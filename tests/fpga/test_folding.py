"""Folding: PE x SIMD per layer for a throughput target; the resource model; the Pareto table."""

from __future__ import annotations

import pytest

from optc.backends.fpga import extract, folding
from optc.errors import UsageError

from .tiny_models import binary_cnn, qdq_mlp

DEV = folding.DEVICES["LFE5U-85F-8BG381"]


def test_fps_target_gives_the_cheapest_folding_that_meets_it():
    g = extract.partition(qdq_mlp(sizes=(64, 32, 10))).graph
    info = folding.choose(g, DEV, fps=10e6, clock_mhz=100)  # 10 cycles per image
    assert info["target_ii"] == 10 and g.ii_model() <= 10
    slow = folding.total(g)["lut"]
    folding.choose(g, DEV, fps=None, clock_mhz=100)  # fastest that fits
    assert g.ii_model() == folding.min_ii(g) == 1
    assert folding.total(g)["lut"] > slow


def test_unreachable_fps_uses_the_fastest_folding_and_says_so():
    g = extract.partition(binary_cnn()).graph
    info = folding.choose(g, DEV, fps=1e12, clock_mhz=100)
    assert g.ii_model() == folding.min_ii(g) == 36  # the 6x6 input streams one pixel per cycle
    assert "fastest folding" in info["rule"]


def test_pareto_points_trade_area_for_speed():
    g = extract.partition(qdq_mlp(sizes=(64, 32, 10))).graph
    pts = folding.pareto(g)
    assert len(pts) >= 4
    iis = [p["ii_cycles"] for p in pts]
    luts = [p["estimate"]["lut"] for p in pts]
    assert iis == sorted(iis) and luts == sorted(luts, reverse=True)


def test_explicit_folding_is_checked():
    g = extract.partition(qdq_mlp(sizes=(64, 32, 10))).graph
    folding.apply(g, {"mvau0": (4, 16)})
    assert (g.layers[0].pe, g.layers[0].simd) == (4, 16)
    with pytest.raises(UsageError, match="must divide"):
        folding.apply(g, {"mvau0": (3, 16)})

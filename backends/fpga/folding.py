"""Folding: how many output channels (PE) and input elements (SIMD) each MVAU computes per
cycle, chosen for a throughput target, trading area for speed (FINN's folding config).

One vector takes ``(mh/pe) * (mw/simd)`` cycles, so a layer needs ``vecs * nf * sf`` cycles
per image; the pipeline's initiation interval is its slowest layer (a sliding-window
generator takes one pixel per cycle, so ``h * w`` cycles). For a target II every MVAU gets
the cheapest (PE, SIMD) pair, by the resource model below, that meets it.

The resource model (:func:`estimate`) is an *estimate* for choosing foldings before synthesis,
in ECP5 LUT4s / flip-flops / 18 Kb block RAMs, calibrated on yosys ``synth_ecp5`` results of
the generated RTL (see ``bench/README_fpga.md``); the report always gives the synthesized
and placed figures beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ir import FpgaGraph, MVAU, Pad, Pool, SWG, planes

# Calibration on yosys 0.23 synth_ecp5 of the generated RTL (LUT4 equivalents, a CCU2C carry
# cell counted as two; bench/README_fpga.md): per popcount input bit, for constant weights
# (fully unrolled: XNOR/AND with a constant is free) and for weights read from memory.
LUT_PER_POPCOUNT_BIT_CONST = 1.7  # XNOR, constant weights
LUT_PER_POPCOUNT_BIT_VAR = 3.2  # XNOR, weights from memory
LUT_PER_PLANE_BIT_CONST = 1.3  # bit-plane popcounts (k-bit or ternary inputs), constant weights
LUT_PER_PLANE_BIT_VAR = 3.6  # bit-plane popcounts, weights from memory
FF_PER_POPCOUNT_BIT = 0.6
ROM_LOGIC_MAX_DEPTH = 64  # deeper weight memories go to block RAM
BRAM_WIDTH, BRAM_DEPTH = 36, 512  # DP16KD as 512 x 36


@dataclass(frozen=True)
class Device:
    """An FPGA part: resources and the nextpnr arguments that select it."""

    name: str
    family: str
    nextpnr_args: tuple[str, ...]
    luts: int
    ffs: int
    brams: int
    dsps: int
    source: str

    def to_json(self) -> dict:
        return {"name": self.name, "family": self.family, "luts": self.luts, "ffs": self.ffs,
                "bram_18kb": self.brams, "dsp_18x18": self.dsps, "source": self.source}


_DS = "Lattice ECP5 and ECP5-5G Family Data Sheet (FPGA-DS-02012), Table 1.1; nextpnr-ecp5 chip database"
DEVICES = {
    "LFE5U-85F-8BG381": Device("LFE5U-85F-8BG381", "ecp5", ("--85k", "--package", "CABGA381", "--speed", "8"),
                               83640, 83640, 208, 156, _DS),
    "LFE5U-45F-8BG381": Device("LFE5U-45F-8BG381", "ecp5", ("--45k", "--package", "CABGA381", "--speed", "8"),
                               43848, 43848, 108, 72, _DS),
    "LFE5U-25F-8BG381": Device("LFE5U-25F-8BG381", "ecp5", ("--25k", "--package", "CABGA381", "--speed", "8"),
                               24288, 24288, 56, 28, _DS),
}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _acc_bits(layer: MVAU) -> int:
    return layer.acc_dtype.bits


def estimate(layer, pe: int | None = None, simd: int | None = None) -> dict:
    """Modeled resources of one layer at a folding (LUT4, FF, BRAM18)."""
    if isinstance(layer, SWG):
        taps = ((layer.kh - 1) * layer.w + layer.kw) * layer.c * layer.dtype.bits
        return {"lut": 12 + layer.kh * layer.kw * 0, "ff": taps + layer.out_elems * layer.dtype.bits + 16, "bram": 0}
    if isinstance(layer, Pad):
        return {"lut": 16 + layer.c * layer.odtype.bits, "ff": layer.c * layer.odtype.bits + 12, "bram": 0}
    if isinstance(layer, Pool):
        b = layer.dtype.bits
        return {"lut": int(layer.c * (layer.k - 1) * (1 if b == 1 else 1.5 * b)), "ff": layer.c * b + 2, "bram": 0}
    pe = pe or layer.pe
    simd = simd or layer.simd
    nf, sf = layer.mh // pe, layer.mw // simd
    depth = nf * sf
    pairs = 1 if layer.xnor else len(planes(layer.wdtype)) * len(planes(layer.idtype))
    wb = layer.wdtype.bits
    ib = layer.idtype.bits
    accb = _acc_bits(layer)
    pc_bits = pe * pairs * simd
    if layer.xnor:
        lut = pc_bits * (LUT_PER_POPCOUNT_BIT_CONST if depth == 1 else LUT_PER_POPCOUNT_BIT_VAR)
    else:
        lut = pc_bits * (LUT_PER_PLANE_BIT_CONST if depth == 1 else LUT_PER_PLANE_BIT_VAR)
    width = pe * simd * wb
    bram = 0
    if depth > ROM_LOGIC_MAX_DEPTH:
        bram = math.ceil(width / BRAM_WIDTH) * math.ceil(depth / BRAM_DEPTH)
    elif depth > 1:
        lut += width * math.ceil(depth / 16)
    lut += simd * ib * max(0, sf - 1) / 2  # input chunk mux
    lut += pe * accb * (2 if sf > 1 else 1)  # accumulate / combine planes
    if layer.thresholds is not None:
        lut += pe * layer.nt * accb * (1 if nf == 1 else 1 + math.ceil(nf / 16))
    ff = (layer.mw * ib + simd * (ib + wb * pe) * (depth > 1) + pc_bits * FF_PER_POPCOUNT_BIT
          + pe * (2 * accb + max(1, layer.nt)) + layer.mh * layer.odtype.bits * (2 if nf > 1 else 1) + 24)
    return {"lut": int(lut) + 30, "ff": int(ff), "bram": bram}


def total(graph: FpgaGraph) -> dict:
    out = {"lut": 0, "ff": 0, "bram": 0}
    for layer in graph.layers:
        for k, v in estimate(layer).items():
            out[k] += v
    return out


def _best_for(layer: MVAU, max_cycles: int) -> tuple[int, int] | None:
    best = None
    for pe in divisors(layer.mh):
        for simd in divisors(layer.mw):
            cyc = layer.vecs * (layer.mh // pe) * (layer.mw // simd)
            if cyc > max_cycles:
                continue
            e = estimate(layer, pe, simd)
            key = (e["lut"] + 600 * e["bram"], cyc)
            if best is None or key < best[0]:
                best = (key, (pe, simd))
    return best[1] if best else None


def min_ii(graph: FpgaGraph) -> int:
    """The smallest II any folding reaches (sliding windows and pools take a word per cycle)."""
    return max([layer.cycles() for layer in graph.layers if layer.kind != "mvau"] +
               [layer.vecs for layer in graph.mvaus()])


def fold(graph: FpgaGraph, max_cycles: int) -> None:
    """Set every MVAU's (PE, SIMD) to the cheapest folding meeting ``max_cycles`` per image."""
    for layer in graph.mvaus():
        choice = _best_for(layer, max(max_cycles, layer.vecs))
        layer.pe, layer.simd = choice


def candidate_iis(graph: FpgaGraph) -> list[int]:
    """Distinct achievable per-layer cycle counts, sorted: the meaningful II targets."""
    values = {min_ii(graph)}
    for layer in graph.mvaus():
        for pe in divisors(layer.mh):
            for simd in divisors(layer.mw):
                values.add(layer.vecs * (layer.mh // pe) * (layer.mw // simd))
    lo = min_ii(graph)
    return sorted(v for v in values if v >= lo)


def apply(graph: FpgaGraph, folding: dict[str, tuple[int, int]]) -> None:
    """Explicit folding: ``{layer name: (pe, simd)}``."""
    for layer in graph.mvaus():
        if layer.name in folding:
            pe, simd = folding[layer.name]
            if layer.mh % pe or layer.mw % simd:
                from optc.errors import UsageError

                raise UsageError(f"folding {layer.name}: PE {pe} must divide {layer.mh} and SIMD {simd} must divide {layer.mw}")
            layer.pe, layer.simd = pe, simd


def choose(graph: FpgaGraph, device: Device, *, fps: float | None, clock_mhz: float,
           lut_fraction: float = 0.5) -> dict:
    """Fold for a throughput target.

    With ``fps``: the largest II meeting ``fps`` at ``clock_mhz`` (the cheapest design that is
    fast enough). Without: the fastest folding whose estimate fits ``lut_fraction`` of the
    device; the default 0.5 leaves routing margin: fully unrolled binary layers fan every
    input bit out to every PE, and nextpnr had not finished routing the fully unrolled digits
    MLP (52 % of an ECP5-85F) after 29 minutes (bench/README_fpga.md). Returns how the choice
    was made.
    """
    budget = {"lut": device.luts * lut_fraction, "bram": device.brams}
    cands = candidate_iis(graph)
    if fps:
        target = int(clock_mhz * 1e6 // fps)
        if target < min_ii(graph):
            target = min_ii(graph)
            how = (f"{fps:g} inferences/s needs II <= {int(clock_mhz * 1e6 // fps)} cycles at {clock_mhz:g} MHz; "
                   f"the fastest folding has II {min_ii(graph)}")
        else:
            how = f"cheapest folding with II <= {target} cycles ({fps:g} inferences/s at an assumed {clock_mhz:g} MHz)"
        fold(graph, target)
        est = total(graph)
        return {"rule": how, "target_ii": target, "estimate": est,
                "fits_estimate": est["lut"] <= device.luts and est["bram"] <= device.brams}
    for ii in cands:
        fold(graph, ii)
        est = total(graph)
        if est["lut"] <= budget["lut"] and est["bram"] <= budget["bram"]:
            return {"rule": f"fastest folding whose estimate fits {int(lut_fraction * 100)}% of the "
                            f"{device.name} LUTs", "target_ii": ii, "estimate": est, "fits_estimate": True}
    fold(graph, cands[-1])
    est = total(graph)
    return {"rule": "slowest folding (nothing fits the estimate)", "target_ii": cands[-1], "estimate": est,
            "fits_estimate": False}


def pareto(graph: FpgaGraph, *, max_points: int = 12) -> list[dict]:
    """Folding choices from fastest to smallest: per II target the cheapest folding, its
    modeled resources; dominated points (more LUTs for a larger II) are dropped."""
    saved = {layer.name: (layer.pe, layer.simd) for layer in graph.mvaus()}
    points = []
    try:
        for ii in candidate_iis(graph):
            fold(graph, ii)
            real_ii = graph.ii_model()
            est = total(graph)
            if points and (est["lut"] >= points[-1]["estimate"]["lut"] or real_ii == points[-1]["ii_cycles"]):
                continue
            points.append({"ii_cycles": real_ii, "estimate": est,
                           "folding": {layer.name: [layer.pe, layer.simd] for layer in graph.mvaus()}})
    finally:
        apply(graph, saved)
    if len(points) > max_points:  # keep the ends and an even spread
        step = (len(points) - 1) / (max_points - 1)
        points = [points[round(i * step)] for i in range(max_points)]
    return points

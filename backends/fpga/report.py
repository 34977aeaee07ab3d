"""FPGA report: performance from simulation and place-and-route, modeled energy, Pareto table,
and the human-readable ``fpga_report.md``.

Energy is **modeled** (no power measurement is possible without the board), from the placed
design's resources and the simulated cycles:

    E / inference = II x [ alpha x (LUTs x E_lut + FFs x E_ff) + FFs x E_clk + BRAM reads x E_bram ]

* E_lut = E_ff = E_clk = 44 fJ: one bit of a 32-bit add at 45 nm (Horowitz, ISSCC 2014: 0.1 pJ
  / 32) times 14, the FPGA/ASIC dynamic-power gap measured by Kuon & Rose ("Measuring the gap
  between FPGAs and ASICs", IEEE TCAD 26(2), 2007) for logic-only designs;
* alpha = 12.5 % toggle rate, the default activity of vendor power estimators (e.g. AMD Xilinx
  Power Estimator, UG440/UG1275);
* E_bram = 10 pJ x 14 per 18 Kb block read (Horowitz's 8 KB SRAM 64-bit read, same gap).

Static (leakage) power and I/O are not included: they depend on the device, temperature and
board, and only Lattice's Power Calculator gives them. The figure is for comparing foldings
and models, not a board measurement. Beside it, an arithmetic-only lower bound: binary MACs x
Horowitz's 1-bit operation energy (as ``optc.energy``: 1/8 of an int8 add) x the same gap.
"""

from __future__ import annotations

FJ_PER_LUT = 0.1e3 / 32 * 14  # fJ: Horowitz int32 add per bit x Kuon-Rose gap
FJ_PER_FF = FJ_PER_LUT
FJ_PER_CLK = FJ_PER_LUT
PJ_PER_BRAM_READ = 10.0 * 14
TOGGLE = 0.125
PJ_PER_BINARY_OP = 0.03 / 8  # Horowitz int8 add / 8 (as optc.energy's binary MAC)
GAP = 14.0
SOURCE = ("modeled: Horowitz, ISSCC 2014 (45 nm per-operation energies) x 14, the FPGA/ASIC "
          "dynamic-power gap of Kuon & Rose, IEEE TCAD 26(2) 2007; 12.5% toggle rate (vendor "
          "power-estimator default); static power not included")


def energy(luts: int, ffs: int, brams: int, ii_cycles: int, clock_mhz: float | None, macs: int,
           bram_reads_per_image: int = 0) -> dict:
    per_cycle_pj = (TOGGLE * (luts * FJ_PER_LUT + ffs * FJ_PER_FF) + ffs * FJ_PER_CLK) / 1e3
    dyn_pj = ii_cycles * per_cycle_pj + bram_reads_per_image * PJ_PER_BRAM_READ
    out = {
        "method": "modeled",
        "source": SOURCE,
        "nj_per_inference": round(dyn_pj / 1e3, 4),
        "mj_per_inference": dyn_pj * 1e-9,
        "arithmetic_only_nj_per_inference": round(macs * PJ_PER_BINARY_OP * GAP / 1e3, 6),
        "inputs": {"luts": luts, "ffs": ffs, "brams": brams, "ii_cycles": ii_cycles,
                   "bram_reads_per_image": bram_reads_per_image, "fj_per_lut_toggle": round(FJ_PER_LUT, 2),
                   "toggle_rate": TOGGLE},
    }
    if clock_mhz:
        out["dynamic_power_mw"] = round(per_cycle_pj * clock_mhz * 1e6 * 1e-9, 3)
        out["at_clock_mhz"] = clock_mhz
    return out


def _fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown(rep: dict, model_name: str = "model") -> str:
    perf = rep["performance"]
    dev = rep["device"]
    L = [f"# FPGA report: {model_name} on {dev['name']}", ""]
    L.append(f"- **throughput**: {_fmt(perf.get('throughput_inferences_per_s'), 0)} inferences/s "
             f"(clock {_fmt(perf.get('clock_mhz'))} MHz / II {perf.get('ii_cycles')} cycles; clock from "
             f"{perf.get('clock_source')})")
    L.append(f"- **latency**: {perf.get('latency_cycles')} cycles = {_fmt(perf.get('latency_us'), 3)} us "
             f"(RTL simulation, {rep.get('rtl_sim', {}).get('simulator', '-')}; host parts not included)")
    pnr = rep.get("pnr") or {}
    if pnr:
        L.append(f"- **fits {dev['name']}**: {'yes' if pnr.get('fits') else 'NO'}; placed: {_fmt(pnr.get('luts'))} LUT4 "
                 f"({100 * pnr.get('luts', 0) / dev['luts']:.1f}%), {_fmt(pnr.get('ffs'))} FF, {pnr.get('brams', 0)} BRAM, "
                 f"{pnr.get('dsps', 0)} DSP; fmax {_fmt(pnr.get('fmax_mhz'))} MHz (nextpnr, seed {pnr.get('seed')})")
    else:
        L.append("- place-and-route: not run")
    e = rep.get("energy") or {}
    if e:
        L.append(f"- **energy** (modeled): {_fmt(e.get('nj_per_inference'), 3)} nJ/inference dynamic"
                 + (f", {_fmt(e.get('dynamic_power_mw'), 1)} mW at {_fmt(e.get('at_clock_mhz'))} MHz" if e.get("dynamic_power_mw") else "")
                 + f"; arithmetic-only lower bound {e.get('arithmetic_only_nj_per_inference')} nJ. Source: {e['source']}")
    checks = []
    if rep.get("csim"):
        checks.append(f"C simulation {'bit-exact' if rep['csim'].get('bit_exact') else 'MISMATCH'} "
                      f"({rep['csim'].get('images')} images)")
    if rep.get("rtl_sim"):
        checks.append(f"RTL simulation {'bit-exact' if rep['rtl_sim'].get('bit_exact') else 'MISMATCH'} "
                      f"({rep['rtl_sim'].get('images')} images)")
    if checks:
        L.append("- checks against the numpy reference: " + "; ".join(checks))
    L += ["", "## Layers", "", f"Folding: {rep['folding']['rule']}.", "",
          "| layer | kind | shape | types (w/in/out) | PE x SIMD | cycles/image | est. LUT | synth LUT4 | synth FF | BRAM |",
          "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for layer in rep["folding"]["layers"]:
        syn = layer.get("synth") or {}
        est = layer.get("estimate") or {}
        if layer["kind"] == "mvau":
            shape = f"{layer['mh']}x{layer['mw']}" + (f" x{layer['vecs']}" if layer["vecs"] > 1 else "")
            types = f"{layer['weights']}/{layer['inputs']}/{layer['outputs']}"
            fold = f"{layer['pe']} x {layer['simd']}"
        elif layer["kind"] == "swg":
            shape = f"{layer['ifm'][0]}x{layer['ifm'][1]}x{layer['ifm'][2]} k{layer['kernel'][0]}x{layer['kernel'][1]} s{layer['stride'][0]}"
            types, fold = layer["dtype"], "-"
        elif layer["kind"] == "pad":
            shape = f"{layer['ifm'][0]}x{layer['ifm'][1]}x{layer['ifm'][2]} pads {layer['pads']}"
            types, fold = f"{layer['dtype']} -> {layer['odtype']}", "-"
        else:
            shape = f"{layer['taps']} taps x {layer['channels']}"
            types, fold = f"{layer['dtype']} {layer['op']}", "-"
        L.append(f"| {layer['name']} | {layer['kind']} | {shape} | {types} | {fold} | {layer['cycles_per_image']} | "
                 f"{_fmt(est.get('lut'))} | {_fmt(syn.get('lut4_equiv'))} | {_fmt(syn.get('ff'))} | {syn.get('bram', '-')} |")
    host = rep.get("host") or {}
    L += ["", "## Host parts (onnxruntime, not on the FPGA)", ""]
    L.append("- before the FPGA: " + (", ".join(f"{n['op']} ({n['node']})" for n in host.get("head", [])) or "nothing"))
    L.append("- after the FPGA: " + (", ".join(f"{n['op']} ({n['node']})" for n in host.get("tail", [])) or "nothing"))
    for note in host.get("notes", []):
        L.append(f"- note: {note}")
    if rep.get("pareto"):
        L += ["", "## Folding choices (Pareto, modeled resources)", "",
              "| II (cycles) | inferences/s at clock | est. LUT | est. FF | est. BRAM | folding (PE x SIMD per MVAU) |",
              "|---:|---:|---:|---:|---:|---|"]
        clk = perf.get("clock_mhz")
        for p in rep["pareto"]:
            fold = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in p["folding"].items())
            thr = _fmt(clk * 1e6 / p["ii_cycles"], 0) if clk else "-"
            mark = " (chosen)" if p.get("chosen") else ""
            L.append(f"| {p['ii_cycles']}{mark} | {thr} | {_fmt(p['estimate']['lut'])} | {_fmt(p['estimate']['ff'])} | "
                     f"{p['estimate']['bram']} | {fold} |")
        L.append("")
        L.append("Modeled resources (folding.estimate); throughput at this design's clock. `optc fpga-pareto "
                 "--synth` synthesizes every point.")
    L.append("")
    return "\n".join(L)

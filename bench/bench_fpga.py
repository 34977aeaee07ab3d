#!/usr/bin/env python3
"""FPGA path benchmark: binary digits MLP and CNN through the whole flow on an ECP5-85F —
C simulation, cycle-accurate RTL simulation, yosys synthesis, nextpnr place-and-route — with
measured cycles, II, fmax, resources and inferences/s, and a Pareto table over foldings.

    python bench/bench_fpga.py                           # bmlp + bcnn, default points (~1 h on 2 busy cores)
    python bench/bench_fpga.py --only bmlp --points fastest
    python bench/bench_fpga.py --model models/digits_bmlp.onnx --points fastest,fps=10e6
    python bench/bench_fpga.py --json bench/results/fpga.json

Models: by default the FPGA-sized digits models of ``optc.models.fpga_digits`` trained here (seconds):
``bmlp`` (Sign-binarized pixels -> 64-128-128-10 binary MLP, every MAC on the FPGA) and ``bcnn``
(float 3x3 conv on the host -> binary conv 16->32 -> max pool -> binary dense). ``--model``
benchmarks any other ONNX model instead (e.g. the project's models/digits_bmlp.onnx).

Points (``--points``, comma separated): ``fastest`` (the fastest folding whose estimate fits
the part: what ``optc compile --target fpga`` builds), ``fps=N`` (the cheapest folding for N
inferences/s at an assumed 100 MHz), ``ii=N`` (the cheapest folding with II <= N cycles).
Every point is compiled with ``optc.backends.fpga.compile`` (verified against onnxruntime on
the digits test images) and reports: RTL latency and II (cycles), post-route fmax, placed
LUT4/FF/BRAM, inferences/s = fmax / II, modeled energy, and the wall time of every stage.
See bench/README_fpga.md for the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:
    import optc  # noqa: F401
except ImportError:  # repo copied, not installed
    sys.path.insert(0, str(REPO))

from optc import CompileOptions  # noqa: E402
from optc.backends import fpga  # noqa: E402
from optc.models import fpga_digits  # noqa: E402
from optc.models.digits import load_digits_split  # noqa: E402
from optc.progress import Progress  # noqa: E402

DEFAULT_POINTS = {"bmlp": "fastest,fps=10e6,ii=32", "bcnn": "fastest"}


def _config(point: str) -> tuple[dict, str]:
    if point == "fastest":
        return {}, "fastest folding that fits"
    key, _, val = point.partition("=")
    if key == "fps":
        return {"fps": float(val), "clock_mhz": 100.0}, f"cheapest folding for {float(val):g} inferences/s at 100 MHz"
    if key == "ii":
        return {"fps": 100e6 / int(val), "clock_mhz": 100.0}, f"cheapest folding with II <= {val}"
    raise SystemExit(f"unknown point {point!r} (fastest, fps=N, ii=N)")


def _row(name: str, point: str, what: str, rep: dict, fr: dict, seconds: float) -> dict:
    lat = rep["latency"]
    perf = fr["performance"]
    pnr = fr.get("pnr") or {}
    return {
        "model": name, "point": point, "rule": what,
        "verify": rep["verify"].get("passed"),
        "accuracy_top1": rep.get("accuracy", {}).get("top1"),
        "folding": {layer["name"]: [layer["pe"], layer["simd"]] for layer in fr["folding"]["layers"] if layer["kind"] == "mvau"},
        "latency_cycles": perf["latency_cycles"], "ii_cycles": perf["ii_cycles"],
        "fmax_mhz": pnr.get("fmax_mhz"), "inferences_per_s": perf["throughput_inferences_per_s"],
        "latency_us": perf["latency_us"], "fits": fr["fits"],
        "luts": pnr.get("luts"), "ffs": pnr.get("ffs"), "brams": pnr.get("brams"), "dsps": pnr.get("dsps"),
        "luts_estimate": sum(layer["estimate"]["lut"] for layer in fr["folding"]["layers"]),
        "synth_lut4_equiv": (fr.get("synthesis") or {}).get("total", {}).get("lut4_equiv"),
        "energy_nj_per_inference_modeled": fr["energy"]["nj_per_inference"],
        "seconds": {"total": round(seconds, 1), "c_compile": fr.get("csim", {}).get("compile_seconds"),
                    "rtl_sim": (fr.get("rtl_sim") or {}).get("simulate_seconds"),
                    "yosys": (fr.get("synthesis") or {}).get("seconds"), "nextpnr": pnr.get("seconds")},
        "method": lat.get("method"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="bmlp,bcnn", help="FPGA-sized digits models to run (optc.models.fpga_digits: bmlp, bcnn)")
    ap.add_argument("--model", help="an ONNX model to benchmark instead of those")
    ap.add_argument("--points", help="comma-separated points (default per model: " +
                    "; ".join(f"{k}: {v}" for k, v in DEFAULT_POINTS.items()) + ")")
    ap.add_argument("--simulator", default="auto", help="RTL simulator (iverilog, verilator, auto)")
    ap.add_argument("--eval", action="store_true", help="also measure top-1 on the 540 test images")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--keep", help="keep the packages in this directory")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="optc-bench-fpga-"))
    work.mkdir(parents=True, exist_ok=True)
    progress = Progress(enabled=True)
    models = []
    if args.model:
        models.append((Path(args.model).stem, Path(args.model), None))
    else:
        for which in args.only.split(","):
            path = work / f"{which}.onnx"
            t0 = time.perf_counter()
            info = fpga_digits.build(which, path)
            models.append((which, path, {"torch_test_accuracy": info.get("torch_accuracy"),
                                         "train_seconds": round(time.perf_counter() - t0, 1)}))
    eval_npz = work / "digits_eval.npz"
    if not eval_npz.exists():
        import numpy as np

        _, _, x_test, y_test = load_digits_split()
        np.savez(eval_npz, input=x_test, label=y_test)
    rows = []
    for name, path, meta in models:
        points = (args.points or DEFAULT_POINTS.get(name, "fastest")).split(",")
        for point in points:
            cfg, what = _config(point)
            cfg["simulator"] = args.simulator
            out = work / f"{name}.{point.replace('=', '')}.fpga"
            print(f"== {name} {point}: {what}", file=sys.stderr)
            t0 = time.perf_counter()
            rep = fpga.compile(path, out, config=cfg, input_shapes={"input": (1, 1, 8, 8)}, inputs=eval_npz,
                               progress=progress, options=CompileOptions.of(
                                   eval_data=eval_npz if args.eval else None, force=True))
            secs = time.perf_counter() - t0
            fr = json.loads((out / "fpga_report.json").read_text())
            row = _row(name, point, what, rep, fr, secs) | ({"fixture": meta} if meta else {})
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "point", "ii_cycles", "latency_cycles", "fmax_mhz",
                                                 "inferences_per_s", "luts", "ffs", "brams", "fits")}), file=sys.stderr)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "part": "LFE5U-85F-8BG381", "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``optc fpga`` and ``optc fpga-pareto``: the FPGA path's commands (thin layers over
:func:`optc.backends.fpga.compile` and :func:`optc.backends.fpga.pareto`).

``optc compile MODEL --target fpga`` works too, with the default FPGA options; ``optc fpga``
adds the throughput target and the FPGA config file.
"""

from __future__ import annotations


def cmd_fpga(args) -> int:
    from . import cli
    from optc.backends import fpga
    from optc.backends.fpga import config as _cfg  # noqa: F401  (fpga.config)
    from .frontend import parse_shape_args
    from .stages import CompileOptions

    cfg = fpga.config.FpgaConfig.load(args.fpga_config) if args.fpga_config else fpga.config.FpgaConfig()
    for key in ("part", "simulator"):
        if getattr(args, key):
            setattr(cfg, key, getattr(args, key))
    if args.clock_mhz:
        cfg.clock_mhz = args.clock_mhz
    if args.no_pnr:
        cfg.pnr = False
    if args.no_synth:
        cfg.synth = cfg.pnr = False
    if args.no_rtl_sim:
        cfg.rtl_sim = False
    report = fpga.compile(args.model, args.output, target=args.target, fps=args.fps, config=cfg,
                          passes=args.passes, input_shapes=parse_shape_args(args.input_shape or []),
                          inputs=args.inputs, progress=cli._progress(args),
                          options=CompileOptions.of(verify_outputs=not args.no_verify, atol=args.atol, rtol=args.rtol,
                                                    force=args.force))
    if args.json:
        cli._print_json(report)
        return 0
    lat = report["latency"]
    v = report["verify"]
    print(f"compiled {args.model} for {report['target']} -> {report.get('package')}")
    if v.get("passed") is not None:
        print(f"  verify: passed (max abs error {v['max_abs_error']:.3g}; {v['inputs']})")
    if "ii_cycles" in lat:
        f = lat["fpga"]
        res = f.get("resources") or {}
        print(f"  throughput: {lat['throughput_inferences_per_s']:,.0f} inferences/s (II {lat['ii_cycles']} cycles at "
              f"{lat['clock_mhz']:.1f} MHz, {lat['clock_source']})")
        print(f"  latency: {lat['latency_cycles']} cycles = {lat['median_ms'] * 1e3:.3f} us ({lat['method']})")
        print(f"  resources: {res.get('luts', 0):,} LUT4, {res.get('ffs', 0):,} FF, {res.get('brams', 0)} BRAM "
              f"({res.get('source')}); fits {f['device']['name']}: {f.get('fits')}")
        e = f.get("energy") or {}
        if e:
            print(f"  energy: {e['nj_per_inference']:.3f} nJ/inference (modeled)")
    else:
        print(f"  latency: {lat.get('method')} ({lat.get('reason', '')})")
    print(f"  report: {report.get('package')}/fpga_report.md")
    return 0


def cmd_pareto(args) -> int:
    from . import cli
    from optc.backends import fpga
    from optc.backends.fpga import config as _cfg  # noqa: F401  (fpga.config)
    from .frontend import parse_shape_args

    cfg = fpga.config.FpgaConfig.load(args.fpga_config) if args.fpga_config else fpga.config.FpgaConfig()
    res = fpga.pareto(args.model, target=args.target, input_shapes=parse_shape_args(args.input_shape or []),
                      synth=args.synth or args.pnr, pnr=args.pnr, max_points=args.points, config=cfg,
                      progress=cli._progress(args))
    if args.json:
        cli._print_json(res)
        return 0
    print(f"{res['model']} on {res['device']['name']} ({res['device']['luts']:,} LUT4)")
    print(f"  {'II':>6} {'est LUT':>9} {'est FF':>8} {'BRAM':>5} {'syn LUT':>8} {'fmax':>7} {'inf/s':>13}  folding")
    for p in res["points"]:
        s = p.get("synth", {})
        r = p.get("pnr", {})
        fold = " ".join(f"{k}:{v[0]}x{v[1]}" for k, v in p["folding"].items())
        thr = p.get("throughput_inferences_per_s")
        print(f"  {p['ii_cycles']:>6} {p['estimate']['lut']:>9,} {p['estimate']['ff']:>8,} {p['estimate']['bram']:>5} "
              f"{s.get('luts', '-'):>8} {r.get('fmax_mhz') or '-':>7} {f'{thr:,.0f}' if thr else '-':>13}  {fold}")
    return 0


def add_commands(add) -> None:
    from . import DEFAULT_PIPELINE

    f = add("fpga", cmd_fpga, "compile a binarized/low-bit ONNX model for an FPGA (ECP5): HLS C++ + Verilog, "
            "C and RTL simulation, synthesis and place-and-route, with a throughput target")
    f.add_argument("model", help="ONNX model (binary/low-bit layers: Sign or QuantizeLinear activations)")
    f.add_argument("-o", "--output", help="package directory (default: MODEL.TARGET.optc)")
    f.add_argument("-t", "--target", default="fpga", help="FPGA target (see `optc targets`; default fpga)")
    f.add_argument("--fps", type=float, help="throughput target in inferences/s: the cheapest folding meeting it "
                   "at --clock-mhz (default: the fastest folding that fits the part)")
    f.add_argument("--clock-mhz", type=float, help="clock assumed for --fps before place-and-route (default 100)")
    f.add_argument("--fpga-config", metavar="FPGA.json", help="FPGA options as JSON (fps, folding, part, pnr, ...)")
    f.add_argument("--part", help="FPGA part (default: the target's)")
    f.add_argument("--simulator", choices=["iverilog", "verilator", "auto"], help="RTL simulator (default auto)")
    f.add_argument("--no-pnr", action="store_true", help="skip place-and-route (clock then assumed, labelled so)")
    f.add_argument("--no-synth", action="store_true", help="skip synthesis and place-and-route")
    f.add_argument("--no-rtl-sim", action="store_true", help="skip the RTL simulation")
    f.add_argument("--passes", default=DEFAULT_PIPELINE, help=f"pass pipeline (default {DEFAULT_PIPELINE!r})")
    f.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help="bind an input's shape")
    f.add_argument("--inputs", metavar="FILE.npz", help="sample inputs for verification")
    f.add_argument("--atol", type=float, default=1e-4, help="verification absolute tolerance")
    f.add_argument("--rtol", type=float, default=1e-3, help="verification relative tolerance")
    f.add_argument("--no-verify", action="store_true", help="skip verification against onnxruntime")
    f.add_argument("-f", "--force", action="store_true", help="replace the output directory if it exists")
    f.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("fpga-pareto", cmd_pareto, "folding choices for a model on an FPGA: II vs resources (modeled; "
            "--synth / --pnr measure each point)")
    p.add_argument("model", help="ONNX model")
    p.add_argument("-t", "--target", default="fpga", help="FPGA target (default fpga)")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help="bind an input's shape")
    p.add_argument("--points", type=int, default=8, help="at most this many points (default 8)")
    p.add_argument("--synth", action="store_true", help="synthesize every point with yosys")
    p.add_argument("--pnr", action="store_true", help="also place and route every point (slow)")
    p.add_argument("--fpga-config", metavar="FPGA.json", help="FPGA options as JSON")
    p.add_argument("--json", action="store_true", help="print as JSON")

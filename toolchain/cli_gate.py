"""``optc report``, ``optc check`` and ``optc run-config``: comparison reports and the CI gate
(thin CLI over :mod:`optc.report` and :mod:`optc.gate`)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_report(args) -> int:
    from . import report
    from .artifact import check_destination

    for p in (args.output, args.plot):
        if p is not None:
            check_destination(Path(p), args.force)
    if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
        from .errors import UsageError

        raise UsageError(f"{args.plot}: plots are written as PNG (.png)")
    entries = report.load(args.packages)
    text = report.write(entries, args.output, args.plot)
    if args.json:
        from .gate import figures

        _print_json([{"package": label, **report.cells(label, r), "figures": figures(r)} for label, r in entries])
    elif args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    if args.output is None and args.plot and not args.json:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_check(args) -> int:
    from . import gate

    budgets = gate.Budgets(max_accuracy_drop=args.max_accuracy_drop, max_latency_ms=args.max_latency_ms,
                           max_size_mb=args.max_size_mb, max_energy_mj=args.max_energy_mj,
                           require_measured=gate.parse_require_measured(args.require_measured),
                           allow_unverified=args.allow_unverified, allow_modeled=args.allow_modeled)
    checks = gate.check(args.package, budgets)
    if args.json:
        _print_json({"package": args.package, "passed": all(c.passed for c in checks),
                     "checks": [dataclasses.asdict(c) for c in checks]})
    else:
        for c in checks:
            print(c.line())
    gate.enforce(checks, args.package)
    return 0


def cmd_run_config(args) -> int:
    from . import gate
    from .errors import BudgetError
    from .progress import Progress

    progress = Progress(enabled=not args.quiet and not args.json)
    try:
        summary = gate.run_job(args.job, output_dir=args.output, force=args.force, progress=progress)
    except BudgetError as err:  # no candidate passed: everything is written; show the summary too
        if args.json and getattr(err, "summary", None):
            _print_json(err.summary)
        raise
    if args.json:
        _print_json(summary)
    else:
        best = next(r for r in summary["candidates"] if r["name"] == summary["best"])
        f = best["figures"]
        print(f"best: {summary['best']} ({best['pipeline']}) -> {summary['best_package']}")
        lat = (f"latency {f['latency_ms']:.4g} ms ({f['latency_method']})" if f.get("latency_ms") is not None
               else f"latency {f.get('latency_method') or 'not measured'}")
        print(f"  {lat}, size {f['size_bytes'] / 1e6:.3f} MB"
              + (f", energy {f['energy_mj']:.4g} mJ ({f['energy_method']})" if f.get("energy_mj") is not None else "")
              + ("" if f.get("verify_passed") else ", NOT verified (allowed by allow_unverified)"))
        for r in summary["candidates"]:
            print(f"  {r['name']:20} {r['status']}{': ' + r['note'] if r['note'] else ''}")
        print(f"summary: {Path(summary['output_dir']) / 'summary.md'}")
    return 0


def add_commands(add) -> None:
    r = add("report", cmd_report, "compare packages in a Markdown or HTML table (size, latency, energy, "
            "accuracy, each with its method) and plot accuracy vs latency and energy")
    r.add_argument("packages", nargs="+", metavar="OUTDIR", help="package directories (or their report.json)")
    r.add_argument("-o", "--output", metavar="REPORT.md|REPORT.html",
                   help="write the table there (format by extension; default: Markdown on stdout)")
    r.add_argument("--plot", metavar="PLOT.png", help="draw accuracy vs latency and vs energy (PNG)")
    r.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    r.add_argument("--json", action="store_true", help="print the table's rows and figures as JSON")

    c = add("check", cmd_check, "check a package against budgets; exit 6 naming every check that "
            "fails. A figure missing from the report fails its budget; an artifact that was not "
            "verified against onnxruntime fails (--allow-unverified accepts it; a failed verification "
            "always fails); a modeled latency (roofline lower bound) fails --max-latency-ms "
            "(--allow-modeled accepts it); an emulated (qemu) time never counts as latency")
    c.add_argument("package", metavar="OUTDIR", help="package directory made by `optc compile`")
    c.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="top-1 accuracy drop vs the original, percentage points (needs --eval at compile)")
    c.add_argument("--max-latency-ms", type=float, metavar="MS", help="latency median: measured on the "
                   "device (or RTL-simulated at the P&R clock on FPGA); a modeled figure fails unless "
                   "--allow-modeled")
    c.add_argument("--max-size-mb", type=float, metavar="MB", help="library + params, MB = 10^6 bytes")
    c.add_argument("--max-energy-mj", type=float, metavar="MJ", help="energy per inference, millijoules")
    c.add_argument("--require-measured", nargs="?", const="latency,energy", default=None, metavar="WHAT",
                   help="latency and/or energy (default both) must be measured on hardware, not "
                        "modeled or estimated")
    c.add_argument("--allow-unverified", action="store_true", help="accept a package whose artifact was "
                   "not run against onnxruntime (verify.passed null: built without the device, or "
                   "--no-verify); it is still reported as NOT verified")
    c.add_argument("--allow-modeled", action="store_true", help="let a modeled latency (roofline lower "
                   "bound: ARM, GPU without a GPU) meet --max-latency-ms; it is still labelled modeled")
    c.add_argument("--json", action="store_true", help="print the checks as JSON")

    j = add("run-config", cmd_run_config, "run a compression job file (YAML or TOML): compile every "
            "candidate pipeline, check budgets, keep the best; exit 6 if none meets them. The rules are "
            "those of `optc check`; the job's budgets: may set allow_unverified: true and "
            "allow_modeled: true")
    j.add_argument("job", metavar="JOB.yaml|JOB.toml", help="job file (see examples/ci-job.yaml)")
    j.add_argument("-o", "--output", metavar="DIR", help="output directory (default: the job's output_dir)")
    j.add_argument("-f", "--force", action="store_true", help="replace the output of an earlier run")
    j.add_argument("--json", action="store_true", help="print the summary as JSON")

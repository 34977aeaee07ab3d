"""The ``optc`` command line: a thin layer over :mod:`optc.api`.

Errors a user can fix print one line (``optc: error: ...``) and exit with the code of their
class (see ``optc --help``); ``--debug`` shows the traceback of anything else.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Sequence

from . import DEFAULT_PIPELINE, __version__
from .errors import EXIT_CODES, OptcError

INTERNAL_ERROR = 70

# Modules that add subcommands: each defines ``add_commands(add)`` where
# ``add(name, func, help) -> argparse.ArgumentParser`` creates a subcommand (``func(args) -> int``).
COMMAND_MODULES: tuple[str, ...] = ("optc.cli_gate", "optc.cli_quant", "optc.cli_prune", "optc.cli_fpga",
                                    "optc.cli_tune")


def _exit_codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def _print_json(data) -> None:
    from .artifact import _json_default

    print(json.dumps(data, indent=2, default=_json_default))


def _progress(args):
    from .progress import Progress

    return Progress(enabled=not args.quiet and not getattr(args, "json", False))


def cmd_compile(args) -> int:
    from . import api
    from .frontend import parse_shape_args

    report = api.compile(
        args.model, args.target, args.output,
        passes=args.passes, input_shapes=parse_shape_args(args.input_shape or []),
        inputs=args.inputs, params=args.params, verify_outputs=not args.no_verify,
        atol=args.atol, rtol=args.rtol, measure=not args.no_measure, force=args.force,
        eval_data=args.eval, eval_limit=args.eval_limit, power_watts=args.power_watts,
        progress=_progress(args), tune=args.tune, tune_seconds=args.tune_seconds, tuning_db=args.tuning_db,
        rpc=args.rpc, rpc_key=args.rpc_key, rpc_tracker=args.rpc_tracker,
    )
    out = args.output or report.get("package")
    if args.json:
        _print_json(report)
        return 0
    v = report["verify"]
    lat = report["latency"]
    print(f"compiled {args.model} for {report['target']} -> {out if out else '(default path)'}")
    if v.get("passed") is not None:
        print(f"  verify: passed (max abs error {v['max_abs_error']:.3g}, max rel error "
              f"{v['max_rel_error']:.3g}; {v['inputs']})")
    else:
        print(f"  verify: NOT RUN ({v.get('skipped', 'skipped')})")
    print(f"  size: {report['size_bytes']['artifact'] / 1024:.1f} KiB (library + params)")
    if "accuracy" in report:
        a = report["accuracy"]
        if "top1" in a:
            print(f"  accuracy: top-1 {100 * a['top1']:.2f}% vs {100 * a['top1_reference']:.2f}% original "
                  f"({a['top1_drop_points']:+.2f} points drop, {a['samples']} samples)")
        else:
            print(f"  fidelity: top-1 agreement {100 * a['top1_agreement']:.2f}%, SQNR "
                  + ", ".join(f"{k} {v:.1f} dB" for k, v in a["sqnr_db"].items()))
    if "median_ms" in lat:
        extra = f", emulated run {lat['emulated_ms']:.1f} ms (not ARM latency)" if "emulated_ms" in lat else ""
        print(f"  latency: {lat['median_ms']:.3f} ms ({lat['method']}){extra}"
              + (f" on {lat['source']}" if "source" in lat and lat["method"] != "modeled" else ""))
    if "instructions" in lat and "count" in lat["instructions"]:
        print(f"  executed instructions: {lat['instructions']['count']:,} per inference ({lat['instructions']['method']})")
    energy = report.get("energy")
    if energy and energy.get("mj_per_inference") is not None:
        print(f"  energy: {energy['mj_per_inference']:.4g} mJ per inference ({energy['method']})")
    if report.get("tuning"):
        t = report["tuning"]
        print(f"  tuning: {t.get('functions_from_database', 0)} of {t.get('functions', '?')} functions "
              f"from the database {t.get('database', '')}")
    print(f"  compile time: {report['compile_seconds']:.1f} s; pipeline: {report['pipeline']}")
    return 0


def cmd_run(args) -> int:
    from . import api

    outs = api.run(args.package, args.inputs, args.output, force=args.force)
    if args.json:
        _print_json({name: {"shape": list(a.shape), "dtype": str(a.dtype), "data": a.tolist()}
                     for name, a in outs.items()})
        return 0
    for name, a in outs.items():
        flat = a.reshape(-1)
        head = ", ".join(f"{x:.5g}" if a.dtype.kind == "f" else str(x) for x in flat[:8])
        print(f"{name}: shape {list(a.shape)} {a.dtype} [{head}{', ...' if flat.size > 8 else ''}]")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def cmd_bench(args) -> int:
    from . import api

    res = api.bench(args.package, warmup=args.warmup, repeat=args.repeat, rounds=args.rounds,
                    threads=args.threads, compare_ort=not args.no_ort, rpc=args.rpc, rpc_key=args.rpc_key,
                    rpc_tracker=args.rpc_tracker)
    if args.json:
        _print_json(res)
        return 0
    o = res["optc"]
    print(f"{res['package']} ({res['target']}, " + (f"{res['threads']} threads; " if res["threads"] else "")
          + f"{res['method']})" + (f"\n  on {res['source']}" if "source" in res else ""))
    print(f"  optc:        median {o['median_ms']:.3f} ms  (p10 {o['p10_ms']:.3f}, p90 {o['p90_ms']:.3f}, n={o['repeat']})")
    if "onnxruntime" in res:
        r = res["onnxruntime"]
        print(f"  onnxruntime: median {r['median_ms']:.3f} ms  (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f}, n={r['repeat']})")
        print(f"  ratio optc/onnxruntime: {res['ratio_optc_over_ort']:.2f}x (lower is better)")
    if "modeled" in res and res["modeled"]:
        print(f"  modeled latency on the target: {res['modeled']['median_ms']:.3f} ms ({res['modeled']['method']})")
    return 0


def cmd_inspect(args) -> int:
    from . import api
    from .frontend import parse_shape_args

    info = api.inspect(args.model, parse_shape_args(args.input_shape or []), per_layer=True)
    if args.json:
        _print_json(info)
        return 0
    print(f"{info['model']}: {info['nodes']} nodes, {info['params']:,} parameters")
    for i in info["inputs"]:
        print(f"  input {i['name']}: {i['dtype']} {i['shape']}")
    print("  ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    if "note" in info:
        print(f"  {info['note']}")
        return 0
    print(f"  MACs {info['macs']:,}  FLOPs {info['flops']:,}  weights {info['param_bytes'] / 1024:.1f} KiB  "
          f"largest activation {info['max_activation_bytes'] / 1024:.1f} KiB")
    print(f"  {'layer':32} {'op':20} {'MACs':>14} {'params':>10} {'output':>18}")
    for layer in info["layers"]:
        print(f"  {layer['name'][:32]:32} {layer['op'][:20]:20} {layer['macs']:>14,} {layer['params']:>10,} "
              f"{str(layer['output_shape']):>18}")
    return 0


def cmd_passes(args) -> int:
    from .pipeline import _summary, param_info, registered_passes

    rows = []
    for name, cls in registered_passes().items():
        rows.append({"name": name, "summary": _summary(cls),
                     "params": [p.__dict__ for p in param_info(cls)]})
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']:18} {r['summary']}")
        for p in r["params"]:
            print(f"{'':18}   {p['key']}: {p['type']} = {p['default']!r}  {p['doc']}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def cmd_targets(args) -> int:
    from .targets import TARGETS

    if args.json:
        _print_json([t.to_json() | {"description": t.description, "aliases": list(t.aliases)}
                     for t in TARGETS.values()])
        return 0
    w_name = max(len(t.name) for t in TARGETS.values())
    w_backend = max(len(t.backend) for t in TARGETS.values())
    w_latency = max(len(t.latency) for t in TARGETS.values())
    for t in TARGETS.values():
        alias = f" (aliases: {', '.join(t.aliases)})" if t.aliases else ""
        print(f"{t.name:{w_name}}  {t.backend:{w_backend}}  latency {t.latency:{w_latency}}  {t.description}{alias}")
    return 0


def _rpc_args(parser, what: str) -> None:
    parser.add_argument("--rpc", metavar="HOST:PORT", help=what)
    parser.add_argument("--rpc-key", metavar="KEY", help="the RPC device key (a server's --key)")
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="reach the server through a TVM RPC "
                        "tracker (with --rpc-key)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optc",
        description="optc: compile ONNX models with prune/quantize/binarize passes to verified "
                    "Apache TVM artifacts for x86 CPU, 64-bit ARM and NVIDIA GPUs, and to bit-serial FPGA hardware.",
        epilog=_exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"optc {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text, epilog=_exit_codes_text(),
                            parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    shape_help = "bind an input's shape, e.g. input=1,3,224,224 (repeatable); needed for dynamic dims"
    c = add("compile", cmd_compile, "compile an ONNX model into a verified, deployable package")
    c.add_argument("model", help="ONNX model file (external data files beside it are read too)")
    c.add_argument("-t", "--target", default="cpu", help="target name (see `optc targets`; default cpu)")
    c.add_argument("-o", "--output", help="package directory to create (default: MODEL.TARGET.optc)")
    c.add_argument("--passes", default=DEFAULT_PIPELINE,
                   help=f"pass pipeline text (see `optc passes`; default {DEFAULT_PIPELINE!r})")
    c.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=shape_help)
    c.add_argument("--inputs", metavar="FILE.npz", help="sample inputs for verification "
                   "(arrays keyed by input name; default: generated with a fixed seed)")
    c.add_argument("--params", choices=["embedded", "separate"], default="embedded",
                   help="weights inside the library (default) or beside it in params.bin")
    c.add_argument("--atol", type=float, default=1e-4, help="verification absolute tolerance (default 1e-4)")
    c.add_argument("--rtol", type=float, default=1e-3,
                   help="verification tolerance relative to the reference's max |value| (default 1e-3)")
    c.add_argument("--eval", metavar="DATA.npz", help="labelled data (input arrays + 'label') for top-1 "
                   "accuracy vs the original model; without labels: fidelity (top-1 agreement, SQNR)")
    c.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on the first N samples only")
    c.add_argument("--power-watts", type=float, metavar="W", help="device power in watts (wall meter, "
                   "board spec): report energy as W x latency ('estimated from supplied power')")
    c.add_argument("--tune", type=int, default=0, metavar="N", help="MetaSchedule-tune the fused functions "
                   "first with N measured candidates in all (TVM CPU targets; see `optc tune`)")
    c.add_argument("--tune-seconds", type=float, metavar="S", help="time budget for --tune")
    c.add_argument("--tuning-db", metavar="DIR", help="tuning databases' root (default ~/.cache/optc/tuning; "
                   "used automatically when it has records for this target)")
    _rpc_args(c, "verify and time the artifact on a TVM RPC server (a board, a GPU host)")
    c.add_argument("--no-verify", action="store_true", help="skip verification against onnxruntime")
    c.add_argument("--no-measure", action="store_true", help="skip latency measurement")
    c.add_argument("-f", "--force", action="store_true", help="replace the output directory if it exists")
    c.add_argument("--json", action="store_true", help="print the report as JSON")

    r = add("run", cmd_run, "run a compiled package on inputs (default: its sample inputs)")
    r.add_argument("package", help="package directory made by `optc compile`")
    r.add_argument("--inputs", metavar="FILE.npz", help="input arrays keyed by input name")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write outputs (keyed by output name)")
    r.add_argument("-f", "--force", action="store_true", help="overwrite OUT.npz if it exists")
    r.add_argument("--json", action="store_true", help="print outputs as JSON")

    b = add("bench", cmd_bench, "time a package; beside it onnxruntime on the same model, inputs "
            "and thread count, interleaved; prints medians, spread and the ratio")
    b.add_argument("package", help="package directory made by `optc compile`")
    b.add_argument("--warmup", type=int, default=5, help="untimed warm-up calls (default 5)")
    b.add_argument("--repeat", type=int, default=50, help="timed calls per runtime (default 50)")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    b.add_argument("--threads", type=int, help="threads for both runtimes (default: all cores)")
    b.add_argument("--no-ort", action="store_true", help="do not run onnxruntime beside it")
    _rpc_args(b, "time the package on a TVM RPC server (a board, a GPU host) with time_evaluator")
    b.add_argument("--json", action="store_true", help="print results as JSON")

    i = add("inspect", cmd_inspect, "show ops, parameters, MACs/FLOPs per layer and memory of a model")
    i.add_argument("model", help="ONNX model file")
    i.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=shape_help)
    i.add_argument("--json", action="store_true", help="print as JSON")

    ps = add("passes", cmd_passes, "list registered passes with parameters and one-line docs")
    ps.add_argument("--json", action="store_true", help="print as JSON")
    t = add("targets", cmd_targets, "list targets (backend, TVM target, latency method)")
    t.add_argument("--json", action="store_true", help="print as JSON")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OptcError as err:
        print(f"optc: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("optc: interrupted (nothing was written)", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in optc
        if getattr(args, "debug", False):
            raise
        msg = " ".join(str(err).split())[:400]
        print(f"optc: internal error: {type(err).__name__}: {msg} (run with --debug for the traceback)",
              file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

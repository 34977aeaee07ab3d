"""The ``optc`` command line: a thin layer over :mod:`optc.api`.

Errors a user can fix print one line (``optc: error: ...``) and exit with the code of their
class (see ``optc --help``); anything else is a bug in optc, reported as an internal error (exit
70) naming the failing stage; ``--debug`` prints the traceback with its cause chain. Ctrl-C,
SIGTERM and SIGHUP (a closed terminal) stop a command cleanly, temporary files removed and the
tools it started killed, with a shell's exit status (130, 143, 129) and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import stat
import sys
import threading
import traceback
import warnings
from typing import Sequence

from . import DEFAULT_PIPELINE, __version__
from .cli_common import print_json as _print_json
from .errors import EXIT_CODES, InternalError, OptcError

INTERNAL_ERROR = 70

# Modules that add subcommands: each defines ``add_commands(add)`` where
# ``add(name, func, help) -> argparse.ArgumentParser`` creates a subcommand (``func(args) -> int``).
COMMAND_MODULES: tuple[str, ...] = ("optc.cli_gate", "optc.cli_quant", "optc.cli_prune", "optc.cli_fpga",
                                    "optc.cli_tune", "optc.cli_train")


def _exit_codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def _progress(args):
    from .progress import Progress

    return Progress(enabled=not args.quiet and not getattr(args, "json", False))


@contextlib.contextmanager
def _warnings_to_stderr():
    """optc's warnings (:class:`optc.progress.OptcWarning`) as ``optc: warning: ...`` lines on
    stderr, every one (not once per call site); others as Python prints them."""
    from .progress import OptcWarning

    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, OptcWarning):
                print(f"optc: warning: {message}", file=sys.stderr, flush=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.simplefilter("always", OptcWarning)
        warnings.showwarning = show
        yield


def _warn_near_chance(report: dict) -> None:
    """A compressed model whose accuracy fell to chance: say so, and how to get it back."""
    a = report.get("accuracy") or {}
    if not a.get("near_chance"):
        return
    names = [p.get("name") for p in report.get("passes", [])]
    if "prune" in names or "prune-zero" in names:
        how = ("pruning removed too much: prune less (`optc prune-scan` proposes per-layer ratios within "
               "an accuracy budget) or fine-tune the pruned model (`optc prune-finetune MODEL --passes "
               "'prune<...>' --train TRAIN.npz --eval DATA.npz`) and compile that")
    else:
        how = "the pipeline's lossy passes destroyed the model (`optc quant-debug` shows where, for quantize)"
    print(f"optc: warning: {a.get('note', 'accuracy near chance level')}; {how}", file=sys.stderr)


def cmd_compile(args) -> int:
    from . import api
    from .frontend import parse_shape_args

    options = api.CompileOptions.of(
        params=args.params, force=args.force, cleanup=not args.no_cleanup, verify_outputs=not args.no_verify,
        atol=args.atol, rtol=args.rtol, verify_samples=args.verify_samples, measure=not args.no_measure,
        eval_data=args.eval, eval_limit=args.eval_limit, power_watts=args.power_watts, tune=args.tune,
        tune_seconds=args.tune_seconds, tuning_db=args.tuning_db, rpc=args.rpc, rpc_key=args.rpc_key,
        rpc_tracker=args.rpc_tracker, const_inputs=tuple(args.const_input or ()))
    report = api.compile(args.model, args.target, args.output, passes=args.passes,
                         input_shapes=parse_shape_args(args.input_shape or []), inputs=args.inputs,
                         options=options, progress=_progress(args))
    out = args.output or report.get("package")
    _warn_near_chance(report)
    if args.json:
        _print_json(report)
        return 0
    v = report["verify"]
    lat = report["latency"]
    print(f"compiled {args.model} for {report['target']} -> {out if out else '(default path)'}")
    print("  inputs: " + ", ".join(f"{d['name']} {'x'.join(map(str, d['shape']))} {d['dtype']}"
                                   for d in report["inputs"]))
    for note in report.get("binding", {}).get("notes", []):
        print(f"  note: {note}")
    if v.get("passed") is not None:
        print(f"  verify: passed on {v['samples']} sample(s) in {v['calls']} call(s) (max abs error "
              f"{v['max_abs_error']:.3g}, max rel error {v['max_rel_error']:.3g}; {v['inputs']})")
        for o in v.get("outputs", []):
            if "tied_rows" in o:
                print(f"  verify: {o['name']}: {o['tolerance_rule']} (the errors above include the swapped rows)")
        weak = [o["name"] for o in v.get("outputs", []) if o.get("distinguishes_unrounded_model") is False]
        if weak:
            print(f"  verify: WEAK on {', '.join(weak)}: the tolerance there also admits the model without its "
                  "activation rounding (the reference moves as much under one float32 step of its inputs, or the "
                  "rounding changes the outputs less than the tolerance); wrong weights, scales or NaN still fail")
    else:
        print(f"  verify: NOT RUN ({v.get('skipped', 'skipped')})")
    print(f"  size: {report['size_bytes']['artifact'] / 1024:.1f} KiB (library + params)")
    if "accuracy" in report:
        a = report["accuracy"]
        chance = " - NEAR CHANCE LEVEL" if a.get("near_chance") else ""
        if "top1" in a:
            print(f"  accuracy: top-1 {100 * a['top1']:.2f}% vs {100 * a['top1_reference']:.2f}% original "
                  f"({a['top1_drop_points']:+.2f} points drop, {a['samples']} samples){chance}")
        else:
            print("  fidelity: " + (f"top-1 agreement {100 * a['top1_agreement']:.2f}%, " if "top1_agreement" in a
                                    else "".join(f"mask IoU {k} {v:.3f}, " for k, v in a.get("mask_iou", {}).items()))
                  + "SQNR " + ", ".join(f"{k} {v:.1f} dB" for k, v in a["sqnr_db"].items()) + chance)
    if "median_ms" in lat:
        extra = f", emulated run {lat['emulated_ms']:.1f} ms (not ARM latency)" if "emulated_ms" in lat else ""
        print(f"  latency: {lat['median_ms']:.3f} ms ({lat.get('label') or lat['method']}){extra}"
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

    options = api.BenchOptions(warmup=args.warmup, repeat=args.repeat, rounds=args.rounds, threads=args.threads,
                               profile=args.profile, top=args.top, compare_to=args.compare_to)
    res = api.bench(args.package, options, compare_ort=not args.no_ort, rpc=args.rpc, rpc_key=args.rpc_key,
                    rpc_tracker=args.rpc_tracker)
    if args.json:
        _print_json(res)
        return 0
    o = res["optc"]
    print(f"{res['package']} ({res['target']}, " + (f"{res['threads']} threads; " if res["threads"] else "")
          + f"{res['method']})" + (f"\n  on {res['source']}" if "source" in res else ""))
    print(f"  optc:        median {o['median_ms']:.3f} ms  (p10 {o['p10_ms']:.3f}, p90 {o['p90_ms']:.3f}, n={o['repeat']})")
    if "threads_applied" in res:
        print("  threads in use: " + ", ".join(f"{k} {v}" for k, v in res["threads_applied"].items()))
    for key, r in res.get("baselines", {}).items():
        print(f"  onnxruntime on {key}: median {r['median_ms']:.3f} ms  (p10 {r['p10_ms']:.3f}, "
              f"p90 {r['p90_ms']:.3f}, n={r['repeat']}) -> optc/this {r['ratio_optc_over_this']:.2f}x"
              + ("  [headline]" if key == res.get("onnxruntime_baseline") and len(res["baselines"]) > 1 else "")
              + f"\n    ({r['model']})")
    if "onnxruntime_note" in res:
        print(f"  onnxruntime: {res['onnxruntime_note']}")
    if "compare_to" in res:
        c = res["compare_to"]
        print(f"  optc on {c['package']}: median {c['median_ms']:.3f} ms  (p10 {c['p10_ms']:.3f}, "
              f"p90 {c['p90_ms']:.3f}, n={c['repeat']}) -> optc/this {c['ratio_optc_over_this']:.2f}x"
              f"\n    (pipeline {c['pipeline']})")
    if "modeled" in res and res["modeled"]:
        print(f"  modeled latency on the target: {res['modeled']['median_ms']:.3f} ms ({res['modeled']['method']})")
    for warning in res.get("warnings", []):
        print(f"  warning: {warning}")
    if "profile" in res:
        from .profile import format_profile

        print("\n".join(format_profile(res["profile"])))
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
    # whole names: they are what include=/exclude=/ratios= patterns match
    wn = max([len(layer["name"]) for layer in info["layers"]] + [5])
    wo = max([len(layer["op"]) for layer in info["layers"]] + [2])
    print(f"  {'layer':{wn}} {'op':{wo}} {'MACs':>14} {'params':>10} {'output':>18}")
    for layer in info["layers"]:
        print(f"  {layer['name']:{wn}} {layer['op']:{wo}} {layer['macs']:>14,} {layer['params']:>10,} "
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
    w = max(len(r["name"]) for r in rows)
    for r in rows:  # whole lines, never cut (a terminal wraps them; a file keeps them)
        print(f"{r['name']:{w}}  {r['summary']}")
        for p in r["params"]:
            print(f"{'':{w}}    {p['key']}: {p['type']} = {p['default']!r}  {p['doc']}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}\n(`optc compile` runs the passes of it a pipeline lacks "
          "before its first compression pass; --no-cleanup runs a pipeline as written)")
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
                   help=f"pass pipeline text (see `optc passes`; default {DEFAULT_PIPELINE!r}). Before "
                        "the first compression pass (prune, prune-zero, sparsify, quantize, "
                        "sign-to-threshold, binarize) the default pipeline's passes not already there are "
                        "inserted (fuse-bn not before binarization or prune<criterion=bn-scale>); the "
                        "package records the pipeline that ran")
    c.add_argument("--no-cleanup", action="store_true",
                   help="run --passes exactly as written (no cleanup passes added)")
    c.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=shape_help)
    c.add_argument("--inputs", metavar="FILE.npz", help="sample inputs for verification "
                   "(arrays keyed by input name; default: generated with a fixed seed). Rows beyond the "
                   "bound batch are verified in further calls, up to --verify-samples; the batch is "
                   "never taken from this file")
    c.add_argument("--const-input", action="append", metavar="NAME",
                   help="freeze graph input NAME to the value given for it in --inputs (repeatable): for "
                        "operands the compiler needs as constants (Reduce axes, Resize sizes/scales, TopK k, "
                        "Pad pads, Reshape shape, ...). The package no longer takes NAME; `optc run` refuses "
                        "another value for it")
    c.add_argument("--verify-samples", type=int, default=8, metavar="N",
                   help="verify on up to N samples, one call per bound batch (default 8)")
    c.add_argument("--params", choices=["embedded", "separate"], default="embedded",
                   help="weights inside the library (default) or beside it in params.bin")
    c.add_argument("--atol", type=float, default=1e-4, help="verification absolute tolerance (default 1e-4)")
    c.add_argument("--rtol", type=float, default=1e-3,
                   help="verification tolerance relative to the reference's max |value| (default 1e-3)")
    c.add_argument("--eval", metavar="DATA.npz", help="labelled data (input arrays + labels under 'label', "
                   "'labels', 'y', 'target' or 'targets') for top-1 "
                   "accuracy vs the original model; without labels: fidelity (top-1 agreement, SQNR)")
    c.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on the first N samples only")
    c.add_argument("--power-watts", type=float, metavar="W", help="device power in watts (wall meter, "
                   "board spec): report energy as W x latency ('estimated from supplied power')")
    c.add_argument("--tune", type=int, default=0, metavar="N", help="MetaSchedule-tune the fused functions "
                   "first with N measured candidates in all (TVM CPU targets; see `optc tune`)")
    c.add_argument("--tune-seconds", type=float, metavar="S", help="time budget for --tune N (needs it: "
                   "alone it is an error, as it would tune nothing); tuning stops at whichever comes first")
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
    b.add_argument("--profile", action="store_true",
                   help="also profile: time per kernel (calls, ms, share, GFLOP/s vs this machine's fp32 peak) "
                        "beside onnxruntime's per-node profile of the same model (cpu packages)")
    b.add_argument("--top", type=int, default=10, metavar="N", help="rows of each profile table (default 10)")
    b.add_argument("--compare-to", metavar="PKG", help="another package of the same model (e.g. built without "
                   "pruning) timed in the same interleaved rounds; a compressed package slower than it is warned about")
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs
    (temporary package directory removed, child tools killed); exit status 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_interrupts():
    """Within the block, SIGTERM and SIGHUP (a closed terminal) raise :class:`Terminated`.
    A second one during the clean-up is ignored; the handlers are restored afterwards."""
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        if signum == getattr(signal, "SIGHUP", None):
            # The terminal is gone: writes to it fail (EIO), and so would the exit. A hung-up
            # terminal no longer answers isatty(), so any character device is let go.
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    if stat.S_ISCHR(os.fstat(fd).st_mode):
                        os.dup2(devnull, fd)
            os.close(devnull)
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "debug", False):
        # onnx_ir logs a failed shape inference as a warning with the whole third-party
        # traceback ("Shape inference failed: %s"); optc reports what matters itself
        import logging

        logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        with _signals_as_interrupts(), _warnings_to_stderr():
            return args.func(args)
    except OptcError as err:
        if getattr(args, "debug", False):  # the cause chain of a user-facing error, if any
            traceback.print_exception(err, file=sys.stderr)
        print(f"optc: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM / SIGHUP (Terminated)
        signum = getattr(err, "signum", None)
        with contextlib.suppress(OSError):
            what = f"terminated by {signal.Signals(signum).name}" if signum else "interrupted"
            print(f"optc: {what} (nothing was written)", file=sys.stderr)
        return 128 + signum if signum else 130
    except Exception as err:  # a bug in optc (InternalError names the stage that failed)
        if getattr(args, "debug", False):
            traceback.print_exception(err, file=sys.stderr)  # with the cause chain
        msg = " ".join(str(err).split())[:400]
        where = "" if isinstance(err, InternalError) else f"{type(err).__name__}: "
        print(f"optc: internal error: {where}{msg}\n  this is a bug in optc, not a problem with your input; "
              "run with --debug for the traceback and its cause", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

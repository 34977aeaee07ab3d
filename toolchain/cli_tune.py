"""``optc tune``: MetaSchedule tuning of a model's fused functions into the persistent
tuning database that later ``optc compile`` runs use (see optc.backends.tvm.tune)."""

from __future__ import annotations

from . import DEFAULT_PIPELINE


def tune(model, target: str = "cpu", *, request, passes: str = DEFAULT_PIPELINE, input_shapes=None,
         log=None) -> dict:
    """Load, bind shapes, run the pass pipeline as ``optc compile`` does, then tune as
    ``request`` (an ``optc.backends.tvm.tune.TuningRequest``: trials, time budget, database
    root, RPC runner) asks."""
    import onnx_ir as ir

    from optc.backends.tvm import tune as tvm_tune

    from . import frontend, pipeline
    from .errors import UsageError
    from .targets import get_target

    from optc.backends import get_backend
    from optc.passes.quant.integerize import auto_integerize

    tgt = get_target(target)
    if not tgt.backend.startswith("tvm"):
        raise UsageError(f"tuning needs a TVM CPU target, not {tgt.name} ({tgt.backend})")
    # the graph optc compile would build (a quantizing pipeline gets integerize appended)
    specs = auto_integerize(pipeline.parse_pipeline(passes), tgt, get_backend(tgt.backend))
    original = frontend.load_model(model)
    bound, in_specs = frontend.bind_input_shapes(original, dict(input_shapes or {}))
    irm, _ = pipeline.run_pipeline(ir.serde.deserialize_model(bound), specs)
    optimized = ir.serde.serialize_model(irm)
    return tvm_tune.tune_onnx(optimized, in_specs, tgt, request, log=log)


def cmd_tune(args) -> int:
    from .cli import _print_json
    from .errors import UsageError
    from .frontend import parse_shape_args

    if args.rpc and args.tracker:
        raise UsageError("give --rpc HOST:PORT or --rpc-tracker HOST:PORT, not both")
    from optc.backends.tvm.tune import TuningRequest

    log = (lambda msg: None) if args.quiet else None
    request = TuningRequest(root=args.db, trials=args.trials, seconds=args.tune_seconds, rpc=args.rpc,
                            tracker=args.tracker, key=args.rpc_key)
    res = tune(args.model, args.target, request=request, passes=args.passes,
               input_shapes=parse_shape_args(args.input_shape or []), log=log)
    if args.json:
        _print_json(res)
        return 0
    print(f"tuned {args.model}: {res['tasks']} of {res['functions']} functions, {res['measured']} candidates "
          f"measured in {res['seconds']:.0f} s; database {res['database']}")
    for t in res.get("per_task", []):
        best = f"{t['best_ms']:.4f} ms" if t["best_ms"] is not None else "-"
        rule = f"{t['rule_ms']:.4f} ms" if t["rule_ms"] is not None else "-"
        print(f"  {t['name'][:60]:60} {t['trials']:5d} trials  best {best:>12}  rule schedule {rule:>12}")
    return 0


def cmd_rpc_server(args) -> int:
    """Serve the aarch64 optc_rpc_server under qemu-user until interrupted."""
    from optc.backends.tvm import rpc

    from .errors import UsageError
    from .targets import get_target

    tgt = get_target(args.target)
    if not tgt.qemu_cpu:
        raise UsageError(f"rpc-server emulates an ARM target under qemu; {tgt.name} is not one")
    srv = rpc.start_qemu_server(tgt.qemu_cpu, host=args.host, port=args.port, key=args.key,
                                tracker=args.tracker)
    print(f"optc rpc-server: aarch64 optc_rpc_server under qemu-aarch64 -cpu {tgt.qemu_cpu} on {srv.address}, "
          f"key {srv.key!r} (times from it are EMULATED, not {tgt.name} latency); Ctrl-C stops it", flush=True)
    import signal

    def _stop(signum, frame):  # SIGTERM: stop the server too, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        srv.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


def add_commands(add) -> None:
    t = add("tune", cmd_tune, "MetaSchedule-tune a model's fused functions for a TVM CPU target into the "
            "tuning database (resumable; later `optc compile` runs use it)")
    t.add_argument("model", help="ONNX model file")
    t.add_argument("-t", "--target", default="cpu", help="target name (default cpu)")
    t.add_argument("--trials", type=int, required=True, metavar="N", help="measured candidates in all")
    t.add_argument("--tune-seconds", type=float, metavar="S", help="wall-time budget in seconds")
    t.add_argument("--passes", default=DEFAULT_PIPELINE, help="pass pipeline (as for compile)")
    t.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help="bind an input's shape")
    t.add_argument("--db", metavar="DIR", help="tuning databases' root (default ~/.cache/optc/tuning)")
    t.add_argument("--rpc", metavar="HOST:PORT", help="measure on a TVM RPC server (e.g. an ARM board)")
    t.add_argument("--tracker", "--rpc-tracker", dest="tracker", metavar="HOST:PORT",
                   help="measure on a board registered with a TVM RPC tracker")
    t.add_argument("--rpc-key", metavar="KEY", help="the RPC device key")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    s = add("rpc-server", cmd_rpc_server, "run optc's aarch64 TVM RPC server under qemu-user here, for "
            "`--rpc` compile/bench/tune without a board (emulated times; a real board runs "
            "runner/optc_rpc_server from an ARM package)")
    s.add_argument("-t", "--target", default="arm", help="ARM target whose core qemu emulates (default arm)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=9090, help="port (default 9090; 0: any free port)")
    s.add_argument("--key", help="device key (default qemu-<core>)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="register with a TVM RPC tracker")

"""Per-kernel time and FLOPs of a CPU package, for ``optc bench --profile``.

TVM 0.27's runtime no longer has the Relax VM profiler (``profile=True``,
``tvm.runtime.profiling.Report`` are gone from the wheel), so the time per kernel is taken with
the VM's instrument hook (``VirtualMachine.set_instrument``), which TVM calls before and after
every call instruction: the wall clock (``time.perf_counter``) between the two is the call's time
(CPU kernels return after their thread pool joins, so no synchronisation is missing). The hook
is Python: each call's time includes a few microseconds of hook overhead, measured on the VM's
no-op builtin ``vm.builtin.null_value`` and reported beside the table. A call into another
Relax function (a VM closure) is timed as a whole and its inner calls again: none of optc's CPU
pipelines emits such calls today, but shares would then add up to more than the run.

FLOPs come from the kernels' TIR, not from guesses by name: the package's ``model.onnx`` is
imported and fused again exactly as the build did (``lower.prepare_module``,
``schedule.fuse_for_schedule``: the same PrimFunc names as the library's symbols) and
``estimate_tir_flops`` counts each unscheduled PrimFunc's floating-point operations. optc's own
tensorized kernels (the int8 ones), which that counter cannot read, declare their arithmetic
(``optc.ops``: 2 per integer multiply-add, :func:`optc.backends.tvm.lower.opaque_kernel`), so
they get a rate too: integer operations per second, read against the same fp32 peak.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path

import onnx

from optc.frontend import TensorSpec
from optc.targets import get_target

NOOP = "vm.builtin.null_value"  # the VM builtin whose time is the hook's own overhead
BUILTIN_PREFIX = "vm."


def _recorder():
    """An instrument function and the per-symbol durations (seconds) it records."""
    durations: dict[str, list[float]] = defaultdict(list)
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *args) -> int:
        now = time.perf_counter()
        if before_run:
            started.append(now)
        else:
            durations[str(symbol)].append(now - started.pop())
        return 0  # VMInstrumentReturnKind.NO_OP

    return instrument, durations


def profile_vm(vm, args: list, warmup: int, repeat: int) -> dict:
    """Run ``vm["main"](*args)`` ``warmup`` times, then ``repeat`` times instrumented:
    ``{"functions": [{"name", "kind", "calls", "total_s"} per run], "runs", "wall_s" (mean
    instrumented run, like the per-run totals), "hook_overhead_s" (median no-op call, or None)}``."""
    main = vm["main"]
    for _ in range(warmup):
        main(*args)
    instrument, durations = _recorder()
    vm.set_instrument(instrument)
    main(*args)  # the hook's first run pays one-time costs: not counted
    durations.clear()
    walls = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        main(*args)
        walls.append(time.perf_counter() - t0)
    runs = max(1, repeat)
    functions = [{"name": name, "kind": "vm builtin" if name.startswith(BUILTIN_PREFIX) else "kernel",
                  "calls": len(ts) / runs, "total_s": sum(ts) / runs} for name, ts in durations.items()]
    noop = durations.get(NOOP)
    return {"functions": functions, "runs": runs, "wall_s": statistics.fmean(walls),
            "hook_overhead_s": statistics.median(noop) if noop else None}


def kernel_flops(pkg: Path, manifest: dict) -> dict[str, float]:
    """FLOPs per call of every PrimFunc of the package's fused module, by symbol name (TIR
    ``estimate_tir_flops``); a function it cannot count is left out."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from . import lower, schedule

    model = onnx.load(str(Path(pkg) / manifest["files_by_role"]["onnx"]))
    specs = [TensorSpec.from_json(d) for d in manifest["inputs"]]
    target = get_target(manifest["target"]["name"])
    mod, _ = lower.prepare_module(model, specs, target, embed_params=manifest.get("params") == "embedded")
    tgt = lower.tvm_target(target)
    with tgt:
        fused = schedule.fuse_for_schedule(mod, tgt)
    out = {}
    for gv, func in fused.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        try:
            out[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({gv: func})))
        except Exception:  # noqa: BLE001 - tensorized or extern kernels: TVM cannot count them
            ops = func.attrs.get("optc.ops") if func.attrs is not None else None
            if ops is not None:  # optc's own kernels declare theirs (lower.opaque_kernel)
                out[gv.name_hint] = float(ops)
    return out


def with_flops(result: dict, flops: dict[str, float]) -> dict:
    """``result`` of :func:`profile_vm` with ``flops`` (per call) on each kernel found there."""
    for f in result["functions"]:
        if f["kind"] == "kernel" and f["name"] in flops:
            f["flops"] = flops[f["name"]] * f["calls"]  # per run
    result["flops_source"] = ("TIR of each fused kernel (tvm.s_tir.analysis.estimate_tir_flops on the module "
                              "re-imported and fused from model.onnx as the build did)")
    return result

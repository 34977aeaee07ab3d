"""Where the time goes: the per-kernel profile of a package beside onnxruntime's per-node
profile of the same model (``optc bench --profile``, :func:`optc.api.bench` with
``BenchOptions(profile=True)``).

optc side: the session's ``profile_kernels`` (CPU packages, run in this process: every call of
the Relax VM timed by its instrument hook, FLOPs per kernel counted in its TIR; see
``optc.backends.tvm.kernel_profile``). onnxruntime side: its own profiler
(``SessionOptions.enable_profiling``), per-node kernel times of the deployable model (the
package's ``model.onnx``, or the QDQ model an integerized package came from), graph
optimizations on, the same thread count; only the timed runs are counted (warm-up runs are
dropped by their ``model_run`` windows).

Achieved GFLOP/s are compared with the machine's fp32 peak: SIMD lanes x 2 (FMA) x FMA units x
clock x threads (:func:`host_peak`, through :func:`optc.latency_model.rates`). The lanes come from
the target's CPU features, the FMA units are an assumption (two, as on every x86 core since
Haswell / Zen 2), the clock is the OS's figure: a peak to read achieved rates against, not a
measured ceiling.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import artifact
from .errors import UsageError
from .targets import Peak, get_target

# onnxruntime op types -> the ONNX op whose FLOPs they compute. Only these families get a GFLOP/s:
# onnxruntime fuses bias adds and activations into them, so the FLOPs of an elementwise op type
# (counted for every node of the model) would not match the time of its few unfused nodes.
# optc kernel names contain the Relax ops they fuse (fused_conv2d1_add1_relu1): the op token of
# each MAC op family, first match wins, so optc's and onnxruntime's rates line up per family
OPTC_OP_TOKENS = (("conv2d", "Conv"), ("conv1d", "Conv"), ("int_conv", "Conv"), ("matmul", "MatMul"),
                  ("dense", "MatMul"))
ORT_OP_FLOPS = {"Conv": "Conv", "FusedConv": "Conv", "NchwcConv": "Conv", "Gemm": "Gemm", "FusedGemm": "Gemm",
                "MatMul": "MatMul", "FusedMatMul": "MatMul"}


@dataclass(frozen=True)
class ProfileOptions:
    """``warmup`` untimed runs, then ``repeat`` profiled runs per runtime; ``top`` rows shown."""

    warmup: int = 3
    repeat: int = 10
    top: int = 10


def check_package(pkg: str | Path) -> dict:
    """The manifest of a package that can be profiled here; :class:`UsageError` otherwise (a
    package without a compiled library, or one not run in this process)."""
    manifest = artifact.read_package(pkg, check_hashes=False)
    files = manifest.get("files_by_role", {})
    backend = manifest.get("target", {}).get("backend")
    if "library" not in files:
        raise UsageError(f"{pkg}: --profile needs a package with a compiled library (files: "
                         f"{', '.join(sorted(files)) or 'none'}); this one has none")
    if backend != "tvm-cpu":
        raise UsageError(f"{pkg}: --profile times kernels in this process: it needs a package for the cpu target "
                         f"(this one is for {manifest['target'].get('name')}, backend {backend})")
    return manifest


def host_peak(manifest: dict, threads: int) -> dict:
    """This machine's fp32 peak for code built for the package's target, on ``threads`` threads:
    ``{"gflops", "how"}`` (see the module docstring)."""
    from optc.backends.tvm import facts

    from . import latency_model

    target = get_target(manifest["target"]["name"])
    per_cycle = facts.fp32_flops_per_cycle(target)
    ghz, clock_how = _clock_ghz()
    peak = Peak(ghz, per_cycle or 0, threads, 0.0, "this machine")
    rate = latency_model.rates(peak)["fp32"]["per_s"] / 1e9
    return {"gflops": rate, "fp32_flops_per_cycle": per_cycle, "clock_ghz": ghz, "threads": threads,
            "how": f"{facts.vector_bits(target)}-bit SIMD = {per_cycle // (2 * facts.FMA_UNITS)} fp32 lanes x 2 "
                   f"(FMA) x {facts.FMA_UNITS} FMA units (assumed) x {ghz:.2f} GHz ({clock_how}) x {threads} "
                   f"thread(s) = {rate:.1f} GFLOP/s"}


def _clock_ghz() -> tuple[float, str]:
    """The CPU clock (GHz) and where it came from: psutil's maximum frequency, else its current
    one (virtual machines often report only that)."""
    import psutil

    freq = psutil.cpu_freq()
    if freq is None:
        raise UsageError("--profile: the CPU clock is unknown on this machine (psutil.cpu_freq() gives nothing)")
    if freq.max:
        return freq.max / 1e3, "maximum frequency, psutil"
    return freq.current / 1e3, "current frequency reported by the OS, psutil"


def optc_profile(session, args: list, opts: ProfileOptions, peak: dict) -> dict:
    """The optc side: every called function with calls, ms, share of the time inside calls,
    FLOPs and GFLOP/s where known (per inference), top ``opts.top`` first."""
    raw = session.profile_kernels(args, opts.warmup, opts.repeat)  # UsageError where it cannot
    total = sum(f["total_s"] for f in raw["functions"]) or 1e-12
    rows = sorted((_row(f, total, peak) for f in raw["functions"]), key=lambda r: -r["total_ms"])
    overhead = raw.get("hook_overhead_s")
    return {"rows": rows, "top": rows[:opts.top], "runs": raw["runs"], "families": _optc_families(rows, peak),
            "in_calls_ms": total * 1e3, "instrumented_run_ms": raw["wall_s"] * 1e3,
            "hook_overhead_us_per_call": None if overhead is None else overhead * 1e6,
            "flops_source": raw.get("flops_source"),
            "method": "wall clock of each VM call (Relax VM instrument hook), mean over the profiled runs; "
                      "share = of the time inside calls"}


def _optc_families(rows: list[dict], peak: dict) -> list[dict]:
    """Achieved GFLOP/s of optc's kernels per MAC op family (:data:`OPTC_OP_TOKENS`, by kernel
    name; the FLOPs include what is fused into them, bias adds and activations)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        family = next((fam for token, fam in OPTC_OP_TOKENS if token in r["name"]), None)
        if r["kind"] == "kernel" and family and r.get("flops"):
            groups[family].append(r)
    out = []
    for family, members in sorted(groups.items()):
        ms, flops = sum(r["total_ms"] for r in members), sum(r["flops"] for r in members)
        gflops = flops / max(ms, 1e-9) / 1e6
        out.append({"op": family, "kernels": len(members), "total_ms": ms, "flops": flops, "gflops": gflops,
                    "pct_of_peak": 100.0 * gflops / peak["gflops"]})
    return out


def _row(f: dict, total: float, peak: dict) -> dict:
    row = {"name": f["name"], "kind": f["kind"], "calls": f["calls"], "total_ms": f["total_s"] * 1e3,
           "share_pct": 100.0 * f["total_s"] / total}
    if f.get("flops"):
        gflops = f["flops"] / max(f["total_s"], 1e-12) / 1e9
        row |= {"flops": f["flops"], "gflops": gflops, "pct_of_peak": 100.0 * gflops / peak["gflops"]}
    return row


def ort_profile(path: Path, feeds: dict, threads: int, opts: ProfileOptions, peak: dict) -> dict:
    """The onnxruntime side on the model at ``path``: its per-node kernel times over the
    ``opts.repeat`` timed runs, per node, per op type, and GFLOP/s per MAC op family
    (:func:`_families`)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="optc-ortprof-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in names}
        for _ in range(opts.warmup + max(1, opts.repeat)):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = _node_times(events, max(1, opts.repeat))
    return _ort_tables(nodes, path, opts, peak)


def _node_times(events: list[dict], repeat: int) -> dict[str, dict]:
    """Node name -> {"op", "calls", "total_s"} per run, from the events inside the last
    ``repeat`` ``model_run`` windows of an onnxruntime profile."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-repeat:]
    out: dict[str, dict] = defaultdict(lambda: {"op": "", "calls": 0.0, "total_s": 0.0})
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(lo <= e["ts"] <= hi for lo, hi in runs):
            continue
        node = out[e["name"][:-len("_kernel_time")]]
        node["op"] = e.get("args", {}).get("op_name", "")
        node["calls"] += 1 / len(runs)
        node["total_s"] += e["dur"] * 1e-6 / len(runs)
    return dict(out)


def _ort_tables(nodes: dict[str, dict], path: Path, opts: ProfileOptions, peak: dict) -> dict:
    total = sum(n["total_s"] for n in nodes.values()) or 1e-12
    rows = sorted(({"name": k, "op": n["op"], "calls": n["calls"], "total_ms": n["total_s"] * 1e3,
                    "share_pct": 100.0 * n["total_s"] / total} for k, n in nodes.items()),
                  key=lambda r: -r["total_ms"])
    by_op: dict[str, dict] = defaultdict(lambda: {"nodes": 0, "total_ms": 0.0})
    for r in rows:
        by_op[r["op"]]["nodes"] += 1
        by_op[r["op"]]["total_ms"] += r["total_ms"]
    ops = [{"op": op, **d, "share_pct": 100.0 * d["total_ms"] / (total * 1e3)}
           for op, d in sorted(by_op.items(), key=lambda kv: -kv[1]["total_ms"])]
    return {"model": str(path), "rows": rows, "top": rows[:opts.top], "ops": ops,
            "families": _families(ops, path, peak), "in_nodes_ms": total * 1e3,
            "method": "onnxruntime's profiler (SessionOptions.enable_profiling): per-node kernel time, mean over the "
                      "timed runs, graph optimizations on; share = of the time inside nodes"}


def _families(ops: list[dict], path: Path, peak: dict) -> list[dict]:
    """Achieved GFLOP/s of onnxruntime per MAC op family (Conv, Gemm, MatMul: the ONNX op's
    FLOPs in the model, by optc's analysis, over the time of every onnxruntime op type that
    computes it, fused variants included)."""
    import onnx

    from . import analysis

    flops: dict[str, int] = defaultdict(int)
    for layer in analysis.summarize(onnx.load(str(path)))["layers"]:
        flops[layer["op"]] += int(layer.get("flops", 0))
    out = []
    for family in sorted({ORT_OP_FLOPS[r["op"]] for r in ops if r["op"] in ORT_OP_FLOPS}):
        members = [r for r in ops if ORT_OP_FLOPS.get(r["op"]) == family]
        ms = sum(r["total_ms"] for r in members)
        if flops.get(family) and ms > 0:
            gflops = flops[family] / ms / 1e6
            out.append({"op": family, "ort_ops": [r["op"] for r in members], "total_ms": ms, "flops": flops[family],
                        "gflops": gflops, "pct_of_peak": 100.0 * gflops / peak["gflops"]})
    return out


def format_profile(prof: dict) -> list[str]:
    """Text lines of a profile section (``optc bench --profile``)."""
    o, peak = prof["optc"], prof["peak"]
    lines = [f"  profile: {o['runs']} profiled runs per runtime; peak {peak['gflops']:.1f} GFLOP/s ({peak['how']})",
             f"  optc kernels ({o['in_calls_ms']:.3f} ms inside calls, {o['instrumented_run_ms']:.3f} ms per "
             f"instrumented run" + (f", hook overhead ~{o['hook_overhead_us_per_call']:.1f} us/call"
                                    if o["hook_overhead_us_per_call"] is not None else "") + "):",
             f"    {'kernel':44} {'calls':>5} {'ms':>8} {'share':>6} {'MFLOP':>9} {'GFLOP/s':>8} {'%peak':>6}"]
    for r in o["top"]:
        lines.append(f"    {r['name'][:44]:44} {r['calls']:>5.0f} {r['total_ms']:>8.3f} {r['share_pct']:>5.1f}% "
                     + (f"{r['flops'] / 1e6:>9.1f} {r['gflops']:>8.1f} {r['pct_of_peak']:>5.1f}%" if "flops" in r
                        else f"{'-':>9} {'-':>8} {'-':>6}"))
    lines += [f"  optc {f['op']} ({f['kernels']} kernels): {f['flops'] / 1e6:.1f} MFLOP in {f['total_ms']:.3f} ms = "
              f"{f['gflops']:.1f} GFLOP/s, {f['pct_of_peak']:.1f}% of peak" for f in o["families"]]
    ort = prof.get("onnxruntime")
    if ort is None:
        lines.append(f"  onnxruntime: {prof.get('onnxruntime_note', 'not profiled')}")
        return lines
    lines += [f"  onnxruntime nodes ({ort['in_nodes_ms']:.3f} ms inside nodes; {ort['model']}):",
              f"    {'node':44} {'op':>18} {'ms':>8} {'share':>6}"]
    lines += [f"    {r['name'][:44]:44} {r['op'][:18]:>18} {r['total_ms']:>8.3f} {r['share_pct']:>5.1f}%"
              for r in ort["top"]]
    lines.append("  onnxruntime by op type: " + ", ".join(f"{r['op']} {r['share_pct']:.1f}%" for r in ort["ops"]))
    lines += [f"  onnxruntime {f['op']} ({'+'.join(f['ort_ops'])}): {f['flops'] / 1e6:.1f} MFLOP in "
              f"{f['total_ms']:.3f} ms = {f['gflops']:.1f} GFLOP/s, {f['pct_of_peak']:.1f}% of peak"
              for f in ort["families"]]
    return lines

#!/usr/bin/env python3
"""Structured pruning at every ratio: does compiled latency fall with the FLOPs?

    python bench/bench_prune_sweep.py                                   # 3 models, ratios 0.1..0.7, 1 thread
    python bench/bench_prune_sweep.py --models nudenet --ratios 0.1,0.3 --threads 1,2 --repeat 10 --rounds 8
    python bench/bench_prune_sweep.py --json sweep.json --workdir /tmp/sweep
    python bench/bench_prune_sweep.py --workdir /tmp/sweep --compile-only   # then time them with --reuse

Issue 14's rule: at every ratio ``r`` in 0.1..0.7, the compiled latency of the pruned model
falls at least in proportion to the square root of the FLOPs reduction, i.e.
``latency(pruned) / latency(unpruned) <= 1 / sqrt(FLOPs(unpruned) / FLOPs(pruned))``.

Models: ResNet-18 and the MobileNetV2-style CNN of ``models/build.py`` (seeded random
weights, 1x3x224x224) and NudeNet's YOLOv8n detector (``nudenet`` wheel, ``320n.onnx``,
1x3x320x320; skipped when the wheel is not installed). Each is compiled once unpruned and once
per ratio with ``simplify,fold-constants,remove-identity,fuse-bn,prune<ratio=R>,dce`` (the
target's default channel ``multiple``: 8 on AVX2), every package verified against onnxruntime;
FLOPs are those of the compiled model (``report["model"]["flops"]``). Each pruned package is
then timed against the unpruned one in the same interleaved rounds (``optc.bench`` with
``compare_to``, both timed from numpy inputs to numpy outputs, the TVM pool set to the thread
count for real). Random weights: the pruning criterion (L1) still picks real channels, but no
accuracy is measured here (``bench_prune.py`` and ``bench_gates.py`` do that).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_prune  # noqa: E402  (its A/B options)
PASSES = "simplify,fold-constants,remove-identity,fuse-bn,prune<ratio={r}>,dce"
DEFAULT_RATIOS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7"


def log(msg: str) -> None:
    print(f"[bench_prune_sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _source(name: str, work: Path) -> tuple[Path, dict] | None:
    """The ONNX file and input shapes of ``name``, or None when it is not available here."""
    sys.path.insert(0, str(REPO / "models"))
    import build  # models/build.py

    if name == "resnet18":
        return build.export_resnet18(work / "resnet18.onnx", seed=0, overwrite=True), {"input": (1, 3, 224, 224)}
    if name == "mobilenet":
        return build.export_mobilenet(work / "mobilenet.onnx", seed=0, overwrite=True), {"input": (1, 3, 224, 224)}
    import bench_real

    path = bench_real.locate(name)
    return (path, dict(bench_real.MODELS[name].shapes)) if path else None


def _compile(src: Path, shapes: dict, out: Path, passes: str | None, reuse: bool) -> dict:
    import optc

    if reuse and (out / "report.json").exists():
        report = json.loads((out / "report.json").read_text())
    else:
        kw = {"passes": passes} if passes else {}
        report = optc.compile(str(src), "cpu", str(out), input_shapes=shapes,
                              options=optc.CompileOptions.of(measure=False, force=True), **kw)
    return {"package": str(out), "flops": report["model"]["flops"], "verified": report["verify"].get("passed"),
            "params": report["model"]["params"]}


def sweep_model(name: str, ratios: list[float], args, work: Path) -> dict | None:
    import optc

    found = _source(name, work)
    if found is None:
        log(f"{name}: not installed, skipped")
        return None
    src, shapes = found
    log(f"{name}: compile unpruned")
    base = _compile(src, shapes, work / f"{name}_unpruned.optc", None, args.reuse)
    rows = []
    for r in ratios:
        log(f"{name}: compile prune<ratio={r}>")
        pruned = _compile(src, shapes, work / f"{name}_r{r}.optc", PASSES.format(r=r), args.reuse)
        fewer = base["flops"] / pruned["flops"]
        row = {"ratio": r, "flops": pruned["flops"], "flops_fewer": fewer, "verified": pruned["verified"],
               "bound": 1 / math.sqrt(fewer), "by_threads": {}}
        for n in ([] if args.compile_only else args.thread_counts):
            res = optc.bench(pruned["package"], optc.BenchOptions(
                warmup=args.warmup, repeat=args.repeat * args.rounds, rounds=args.rounds, threads=n,
                compare_to=base["package"]), compare_ort=False)
            ms, ref = res["optc"]["median_ms"], res["compare_to"]["median_ms"]
            row["by_threads"][n] = {"pruned_ms": ms, "unpruned_ms": ref, "latency_ratio": ms / ref,
                                    "met": ms / ref <= row["bound"], "load": round(os.getloadavg()[0], 2)}
            log(f"  {n} thread(s): {ms:.3f} / {ref:.3f} ms = {ms / ref:.2f}x (bound {row['bound']:.2f}x)")
        rows.append(row)
    return {"unpruned": base, "rows": rows}


def table(results: dict, thread_counts: list[int]) -> str:
    lines = []
    for n in thread_counts:
        lines += [f"\n{n} thread(s):\n",
                  "| model | ratio | GFLOPs | FLOPs fewer | latency pruned / unpruned | bound 1/sqrt | met | load |",
                  "|---|---:|---:|---:|---:|---:|---|---:|"]
        for name, res in results.items():
            g0 = res["unpruned"]["flops"] / 1e9
            for row in res["rows"]:
                t = row["by_threads"][n]
                lines.append(f"| {name} | {row['ratio']} | {g0:.3f} -> {row['flops'] / 1e9:.3f} | "
                             f"{row['flops_fewer']:.2f}x | {t['latency_ratio']:.2f}x ({t['pruned_ms']:.3g} / "
                             f"{t['unpruned_ms']:.3g} ms) | {row['bound']:.2f}x | "
                             f"{'yes' if t['met'] else '**no**'} | {t['load']} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet,nudenet", help="comma list (default all three)")
    p.add_argument("--ratios", default=DEFAULT_RATIOS, help=f"comma list (default {DEFAULT_RATIOS})")
    p.add_argument("--threads", default="1", help="comma list of thread counts (default 1)")
    bench_prune.add_ab_options(p, rounds=4)  # --warmup, --repeat (per round), --rounds, --workdir, --json
    p.add_argument("--reuse", action="store_true",
                   help="time the packages already in --workdir (same names) instead of compiling them again")
    p.add_argument("--compile-only", action="store_true", help="compile (and verify) the packages, time nothing")
    args = p.parse_args(argv)
    args.thread_counts = [int(t) for t in args.threads.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in args.models.split(","):
            res = sweep_model(name, ratios, args, work)
            if res is not None:
                results[name] = res
    if args.compile_only:
        print("\n".join(f"{k} {row['ratio']}: {row['flops_fewer']:.2f}x fewer FLOPs, verified {row['verified']}"
                        for k, v in results.items() for row in v["rows"]))
        return 0
    print(table(results, args.thread_counts))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    misses = [(k, row["ratio"]) for k, v in results.items() for row in v["rows"]
              if not all(t["met"] for t in row["by_threads"].values())]
    print(f"\nnot met: {misses}" if misses else "\nmet at every ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())

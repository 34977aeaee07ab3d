#!/usr/bin/env python3
"""Structured pruning, measured: accuracy after fine-tuning, FLOPs, size and compiled latency.

    python bench/bench_prune.py                              # both experiments, table on stdout
    python bench/bench_prune.py --which resnet18 --size 112  # ResNet-18 at 112x112 only
    python bench/bench_prune.py --json prune.json            # also write every figure as JSON

1. **digits CNN** (bundled, trained): ``prune<ratio=0.5>`` (50% of the channels of every
   prunable layer, L1 criterion), fine-tuned with :func:`optc.train.finetune.prune_finetune` on
   the digits training split (``optc.models.digits.load_digits_split``: the split the
   bundled model was trained on), then the original and the fine-tuned model are compiled
   for ``cpu`` (input 1x1x8x8) with ``--eval`` on ``models/digits_eval.npz``: the top-1 of
   the compiled artifacts and their latency. Target: top-1 drop <= 1 point.
2. **ResNet-18** (``optc.models.zoo.resnet18``, seeded random weights, BatchNorm calibrated
   on random data, as ``models/build.py export_resnet18`` makes it; static input
   1x3xSxS, S = 224 by default): ``prune<ratio=0.5>`` removes half of every channel group,
   residual groups (the channels tied by the Add of each stage) included. Both models are
   compiled with ``optc.compile(..., measure=False)`` (default cleanup pipeline, verified
   against onnxruntime) and timed with ``optc.bench`` (same thread count, interleaved rounds,
   onnxruntime beside it on the package's deployable model). Target: optc latency >= 2.5x
   lower, output shape preserved, valid ONNX (checker + onnxruntime).

Latency is wall-clock per call on this machine (cores, CPU and method are printed), from numpy
inputs to numpy outputs on both sides, measured with ``optc.bench`` (which sets TVM's thread
pool for real and reports the count in use) in ``--rounds`` rounds that alternate the packages
being compared (so machine noise hits both alike); the table gives the median of the round
medians and their min-max, and the speed-up is also given per round. ``--threads 1,2`` times
the same packages at each count in turn (one table each).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench_prune {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ms(stats: dict) -> str:
    return f"{stats['median_ms']:.3g} ({stats['p10_ms']:.3g}-{stats['p90_ms']:.3g})"


def _compile(optc, path: Path, out: Path, *, eval_data: str | None = None, **kw) -> dict:
    """Compile ``path`` for cpu, verified; with ``eval_data`` the measure stage runs too (for
    the accuracy; the latency figures come from the A/B rounds)."""
    t0 = time.perf_counter()
    opts = optc.CompileOptions.of(measure=eval_data is not None, eval_data=eval_data, force=True)
    report = optc.compile(str(path), "cpu", str(out), **kw, options=opts)
    seconds = time.perf_counter() - t0
    return {"package": str(out), "compile_seconds": round(seconds, 1),
            "verify_passed": report["verify"].get("passed"), "outputs": report["outputs"],
            "model": report["model"], "accuracy": report.get("accuracy"), "size_bytes": report["size_bytes"]}


def _ab_bench(optc, entries: dict[str, dict], args) -> None:
    """Time the packages A/B at each thread count of ``args.threads``: ``args.rounds`` rounds,
    each running ``optc.bench`` (optc and onnxruntime on the package's deployable model,
    interleaved, ``args.repeat`` calls each, both timed from numpy inputs to numpy outputs) on
    every package in turn, so machine noise hits all alike. Adds per-package medians over all
    calls and per-round medians under ``by_threads[n]``, with the thread counts each side
    reported in use and the load average of each round."""
    for n in args.thread_counts:
        per_round: dict[str, dict[str, list[float]]] = {k: {"optc": [], "onnxruntime": []} for k in entries}
        loads = []
        for r in range(args.rounds):
            for key, e in entries.items():
                res = optc.bench(e["package"], optc.BenchOptions(warmup=args.warmup, repeat=args.repeat, rounds=1, threads=n))
                b = e.setdefault("by_threads", {}).setdefault(n, {})
                b["threads"], b["method"] = res["threads"], res["method"]
                b["threads_applied"] = res.get("threads_applied")
                for rt in ("optc", "onnxruntime"):
                    if rt in res:
                        per_round[key][rt].append(res[rt]["median_ms"])
            loads.append(round(os.getloadavg()[0], 2))
            log(f"  {n} thread(s), round {r + 1}/{args.rounds} (load {loads[-1]}): " + ", ".join(
                f"{k} optc {v['optc'][-1]:.3g} ms" for k, v in per_round.items()))
        for key, e in entries.items():
            b = e["by_threads"][n]
            b["load_average_1min_per_round"] = loads
            for rt, meds in per_round[key].items():
                if meds:
                    ms = sorted(meds)
                    b[rt] = {"median_ms": float(np.median(ms)), "p10_ms": ms[0], "p90_ms": ms[-1],
                             "round_medians_ms": meds, "repeat": args.repeat * args.rounds}


def bench_digits(args, work: Path) -> dict:
    import optc
    from optc.train import TrainConfig
    from optc.train.finetune import Evaluation, prune_finetune
    from optc.models.digits import load_digits_split

    x_train, y_train, _, _ = load_digits_split()
    train = work / "digits_train.npz"
    np.savez(train, input=x_train, label=y_train)
    model = REPO / "models" / "digits_cnn.onnx"
    evalf = REPO / "models" / "digits_eval.npz"
    out = work / "digits_cnn_pruned.onnx"
    log(f"digits: prune<ratio=0.5> + fine-tune {args.epochs} epochs")
    rep = prune_finetune(model, "prune<ratio=0.5>", train, out, evaluation=Evaluation(evalf),
                         config=TrainConfig(epochs=args.epochs, lr=args.lr, seed=0), force=True)
    res = {"finetune": rep}
    for key, path in (("original", model), ("pruned_finetuned", out)):
        log(f"digits: compile {key}")
        res[key] = _compile(optc, path, work / f"digits_{key}.cpu", input_shapes={"input": (1, 1, 8, 8)},
                            eval_data=str(evalf))
    log("digits: bench")
    _ab_bench(optc, {k: res[k] for k in ("original", "pruned_finetuned")}, args)
    return res


def _export_resnet18(path: Path, size: int) -> Path:
    if size == 224:
        from optc.models.build import export_resnet18

        return export_resnet18(path, seed=0, overwrite=True)
    import torch

    from optc.train.export import export_torch
    from optc.models import zoo

    model = zoo.seeded(zoo.resnet18, seed=0, calibrate=(4, 3, size, size))
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return export_torch(model, (example,), path, input_names=["input"], output_names=["logits"],
                        overwrite=True)


def bench_resnet18(args, work: Path) -> dict:
    import onnx
    import onnx_ir as ir

    import optc
    from optc.pipeline import run_pipeline
    from optc.verify import reference_outputs

    log(f"resnet18: export {args.size}x{args.size} (seeded random weights)")
    src = _export_resnet18(work / "resnet18.onnx", args.size)
    log(f"resnet18: {args.passes}")
    irm = ir.serde.deserialize_model(onnx.load(str(src)))
    irm, records = run_pipeline(irm, args.passes)
    pruned = ir.serde.serialize_model(irm)
    onnx.checker.check_model(pruned, full_check=True)
    dst = work / "resnet18_pruned.onnx"
    onnx.save(pruned, str(dst))
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    shapes = [o.shape for o in reference_outputs(src, {"input": x})], \
        [o.shape for o in reference_outputs(dst, {"input": x})]
    details = records[0].details
    res = {"passes": args.passes, "details": details, "onnx_bytes": {"original": src.stat().st_size,
                                                                     "pruned": dst.stat().st_size},
           "output_shapes": {"original": shapes[0], "pruned": shapes[1]}}
    for key, path in (("original", src), ("pruned", dst)):
        log(f"resnet18: compile {key}")
        res[key] = _compile(optc, path, work / f"resnet18_{key}.cpu")
    log("resnet18: bench")
    _ab_bench(optc, {k: res[k] for k in ("original", "pruned")}, args)
    return res


def table(results: dict, args, threads: int) -> str:
    """The table of one thread count (``by_threads[threads]`` of every package)."""
    for sec in results.values():
        for e in sec.values():
            if isinstance(e, dict) and threads in e.get("by_threads", {}):
                e.update(e["by_threads"][threads])
    lines = []
    cpu = platform.processor() or platform.machine()
    benched = [e for sec in results.values() for e in sec.values() if isinstance(e, dict) and "by_threads" in e]
    some = benched[0]
    loads = [v for e in benched for v in e["load_average_1min_per_round"]]
    lines.append(f"machine: {cpu}, {os.cpu_count()} cores, {threads} thread(s) per runtime (in use: "
                 f"{some.get('threads_applied')}); latency: optc.bench per package, {args.rounds} "
                 f"rounds alternating the packages, {args.repeat} calls per runtime per round; median of the "
                 "round medians (min-max over rounds) in ms; onnxruntime on the package's deployable model "
                 "(model.onnx), same inputs and threads; timing boundary: numpy inputs to numpy outputs on "
                 f"both sides; load average (1 min) per round {min(loads):.2f}-{max(loads):.2f}")
    lines.append("")
    lines.append("| model | params | FLOPs | ONNX bytes | top-1 | optc ms | onnxruntime ms |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    if "digits" in results:
        d = results["digits"]
        ft = d["finetune"]
        for key, label, stage in (("original", "digits CNN", "original"),
                                  ("pruned_finetuned", "digits CNN, 50% channels pruned + fine-tuned", "finetuned")):
            r = d[key]
            top1 = f"{100 * r['accuracy']['top1']:.2f}%" if r.get("accuracy") else "-"
            lines.append(f"| {label} | {ft[stage]['params']:,} | {ft[stage]['flops']:,} | {ft[stage]['onnx_bytes']:,} "
                         f"| {top1} | {_ms(r['optc'])} | {_ms(r['onnxruntime'])} |")
        lines.append(f"| digits CNN, pruned, before fine-tuning | {ft['pruned']['params']:,} | {ft['pruned']['flops']:,} "
                     f"| {ft['pruned']['onnx_bytes']:,} | {ft['pruned']['top1']:.2f}% | | |")
    if "resnet18" in results:
        r = results["resnet18"]
        det = r["details"]
        s = args.size
        for key, label, params, flops in (("original", f"ResNet-18 {s}x{s}", det["params_before"], det["flops_before"]),
                                          ("pruned", f"ResNet-18 {s}x{s}, {args.passes}", det["params_after"],
                                           det["flops_after"])):
            x = r[key]
            lines.append(f"| {label} | {params:,} | {flops:,} | {r['onnx_bytes'][key]:,} | (random weights) "
                         f"| {_ms(x['optc'])} | {_ms(x['onnxruntime'])} |")
    lines.append("")
    if "digits" in results:
        d = results["digits"]
        drop = 100 * (d["original"]["accuracy"]["top1"] - d["pruned_finetuned"]["accuracy"]["top1"])
        lines.append(f"digits CNN: top-1 drop of the compiled pruned + fine-tuned artifact: {drop:+.2f} points "
                     f"(target <= 1); FLOPs {d['finetune']['original']['flops'] / d['finetune']['finetuned']['flops']:.2f}x lower; "
                     f"optc latency {d['original']['optc']['median_ms'] / d['pruned_finetuned']['optc']['median_ms']:.2f}x lower")
    if "resnet18" in results:
        r = results["resnet18"]
        det = r["details"]
        tied = [g for g in det["groups"] if len(g["members"]) > 1]
        speed = r["original"]["optc"]["median_ms"] / r["pruned"]["optc"]["median_ms"]
        ort = r["original"]["onnxruntime"]["median_ms"] / r["pruned"]["onnxruntime"]["median_ms"]
        lines.append(f"ResNet-18: FLOPs {det['flops_before'] / det['flops_after']:.2f}x lower, params "
                     f"{det['params_before'] / det['params_after']:.2f}x lower; {len(tied)} residual groups "
                     f"pruned with their Adds ({', '.join(str(len(g['members'])) for g in tied)} convolutions each); "
                     f"output shape {r['output_shapes']['original']} -> {r['output_shapes']['pruned']}; both "
                     f"compiles verified against onnxruntime: {r['original']['verify_passed']}, {r['pruned']['verify_passed']}")
        per = [a / b for a, b in zip(r["original"]["optc"]["round_medians_ms"], r["pruned"]["optc"]["round_medians_ms"])]
        lines.append(f"ResNet-18: optc latency {speed:.2f}x lower (per round {min(per):.2f}x-{max(per):.2f}x; "
                     f"target >= 2.5x); onnxruntime on the same models {ort:.2f}x lower")
    return "\n".join(lines)


def add_ab_options(p: argparse.ArgumentParser, *, rounds: int) -> None:
    """The options of the A/B timing (:func:`_ab_bench`) and the output, shared with
    ``bench_gates.py``: --warmup, --repeat, --rounds (default ``rounds``), --workdir, --json."""
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per bench call (default 2)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per runtime per round (default 10)")
    p.add_argument("--rounds", type=int, default=rounds, help=f"rounds alternating the packages (default {rounds})")
    p.add_argument("--workdir", help="keep models and packages here (default: a temporary folder)")
    p.add_argument("--json", help="write all figures to this JSON file")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", default="digits,resnet18", help="digits,resnet18 (default both)")
    p.add_argument("--size", type=int, default=224, help="ResNet-18 input size (default 224)")
    p.add_argument("--passes", default="prune<ratio=0.5>", help="ResNet-18 pruning pipeline (default prune<ratio=0.5>)")
    p.add_argument("--epochs", type=int, default=10, help="digits fine-tuning epochs (default 10)")
    p.add_argument("--lr", type=float, default=3e-3, help="digits fine-tuning learning rate (default 3e-3)")
    p.add_argument("--threads", help="threads for optc and onnxruntime, or a comma list (1,2: the packages are "
                                     "timed at each count in turn; default: all cores)")
    add_ab_options(p, rounds=5)
    args = p.parse_args(argv)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    from optc.targets import host_cores

    args.thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [host_cores()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "digits" in which:
            results["digits"] = bench_digits(args, work)
        if "resnet18" in which:
            results["resnet18"] = bench_resnet18(args, work)
    return finish(args, results, "\n\n".join(table(results, args, n) for n in args.thread_counts))


def finish(args, results: dict, text: str) -> int:
    """Print the table ``text``; with ``--json``, write the arguments, ``results`` and the table
    there (shared with ``bench_gates.py``). Returns the exit status 0."""
    from optc.artifact import write_json

    print(text)
    if args.json:
        write_json(Path(args.json), {"args": vars(args), "results": results, "table": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())

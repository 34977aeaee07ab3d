#!/usr/bin/env python3
"""Learned channel gates vs magnitude pruning + fine-tuning on the digits CNN, at the same FLOPs.

    python bench/bench_gates.py                          # targets 0.26 and 0.4, table on stdout
    python bench/bench_gates.py --targets 0.4 --json g.json

For each FLOPs target T (kept FLOPs / original):

1. **gates**: :func:`optc.train.gates.prune_train` (``optc prune-train``): hard-concrete gates
   per channel group, distillation from the original plus cross-entropy to the labels
   (label weight 0.5), ``--epochs`` epochs, kept channels rounded to ``--multiple`` M (8: the
   AVX2 fp32 lanes; odd counts fall off TVM's vectorized schedules), then ``--finetune-epochs``
   of distillation after pruning; its measured FLOPs F_g;
2. **magnitude**: ``prune<ratio=r;multiple=M>`` (L1, every prunable layer alike) with the smallest r whose
   FLOPs do not exceed F_g (found by bisection on the pruned models' FLOPs), fine-tuned with
   cross-entropy by :func:`optc.train.finetune.prune_finetune` for the same number of epochs in
   total (``--epochs`` + ``--finetune-epochs``), same learning rate and seed;
3. the original and every result are compiled with optc for ``cpu`` (input 1x1x8x8, verified
   against onnxruntime, ``--eval models/digits_eval.npz``: the compiled artifact's top-1) and
   timed A/B with ``optc.bench`` as ``bench/bench_prune.py`` does (rounds alternating the
   packages, median of round medians, min-max over rounds, numpy in to numpy out).

Training data: the digits training split the bundled model was trained on
(``optc.models.digits.load_digits_split``, 1257 images); evaluation: ``models/digits_eval.npz``
(540 images: one image is 0.185 points).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_prune  # noqa: E402  (its A/B timing helpers)

MODEL = REPO / "models" / "digits_cnn.onnx"
EVAL = REPO / "models" / "digits_eval.npz"


def log(msg: str) -> None:
    print(f"[bench_gates {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _flops_at(ratio: float, multiple: int) -> int:
    import onnx
    import onnx_ir as ir

    from optc.passes.prune import Prune

    irm = ir.serde.deserialize_model(onnx.load(str(MODEL)))
    return Prune(ratio=ratio, multiple=multiple)(irm).details["flops_after"]


def matching_ratio(flops: int, multiple: int) -> float:
    """The smallest uniform ratio (to 1e-3) whose pruned model has at most ``flops`` FLOPs."""
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        if _flops_at(mid, multiple) <= flops:
            hi = mid
        else:
            lo = mid
    return round(hi, 3)


def _compile(optc, path: Path, out: Path) -> dict:
    """Compile for cpu (input 1x1x8x8, verified), top-1 of the artifact on the eval set."""
    t0 = time.perf_counter()
    report = optc.compile(str(path), "cpu", str(out), input_shapes={"input": (1, 1, 8, 8)},
                          options=optc.CompileOptions.of(measure=False, force=True, eval_data=str(EVAL)))
    return {"package": str(out), "compile_seconds": round(time.perf_counter() - t0, 1),
            "verify_passed": report["verify"].get("passed"), "accuracy": report.get("accuracy")}


def run_gates(args, target: float, train: Path, work: Path) -> dict:
    from optc.train import TrainConfig
    from optc.train.distill import Distillation
    from optc.train.finetune import Evaluation
    from optc.train.gates import GateConfig, prune_train

    out = work / f"gates_{target:g}.onnx"
    log(f"gates: target {target:g}, {args.epochs} + {args.finetune_epochs} epochs")
    gates = GateConfig(target, finetune_epochs=args.finetune_epochs, multiple=args.multiple,
                       distill=Distillation(label_weight=0.5))
    rep = prune_train(MODEL, train, out, gates=gates,
                      config=TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed),
                      evaluation=Evaluation(EVAL), force=True)
    return {"path": str(out), "report": rep}


def run_magnitude(args, flops: int, train: Path, work: Path) -> dict:
    from optc.train import TrainConfig
    from optc.train.finetune import Evaluation, prune_finetune

    ratio = matching_ratio(flops, args.multiple)
    passes = f"prune<ratio={ratio:g}" + (f";multiple={args.multiple}>" if args.multiple > 1 else ">")
    out = work / f"magnitude_{ratio:g}.onnx"
    epochs = args.epochs + args.finetune_epochs
    log(f"magnitude: {passes} (FLOPs <= {flops:,}), {epochs} epochs")
    rep = prune_finetune(MODEL, passes, train, out, evaluation=Evaluation(EVAL),
                         config=TrainConfig(epochs=epochs, lr=args.lr, seed=args.seed), force=True)
    return {"path": str(out), "report": rep, "ratio": ratio, "passes": passes}


def _row(label: str, stats: dict, top1: float, compiled: dict) -> str:
    acc = compiled.get("accuracy") or {}
    ctop = f"{100 * acc['top1']:.2f}%" if "top1" in acc else "-"
    return (f"| {label} | {stats['params']:,} | {stats['flops']:,} | {top1:.2f}% | {ctop} "
            f"| {bench_prune._ms(compiled['optc'])} | {bench_prune._ms(compiled['onnxruntime'])} |")


def table(res: dict, args) -> str:
    n = args.thread_counts[0]
    for e in res["compiled"].values():
        e.update(e["by_threads"][n])
    loads = [v for e in res["compiled"].values() for v in e["load_average_1min_per_round"]]
    c = res["compiled"]
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {n} thread(s) "
             f"per runtime; latency: optc.bench, {args.rounds} rounds alternating the packages, {args.repeat} "
             f"calls per runtime per round, median of round medians (min-max) in ms, numpy in to numpy out; "
             f"load average (1 min) per round {min(loads):.2f}-{max(loads):.2f}", "",
             "| model | params | FLOPs | top-1 (onnxruntime) | top-1 (compiled) | optc ms | onnxruntime ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = res["targets"][0]["gates"]["report"]["original"]
    lines.append(_row("digits CNN", base, base["top1"], c["original"]))
    for t in res["targets"]:
        g, m = t["gates"]["report"], t["magnitude"]["report"]
        gl = "finetuned" if "finetuned" in g else "pruned"
        lines.append(_row(f"gates, target {t['target']:g}", g[gl], g[gl]["top1"], c[f"gates_{t['target']:g}"]))
        lines.append(_row(f"magnitude {t['magnitude']['passes']} + fine-tune", m["finetuned"],
                          m["finetuned"]["top1"], c[f"magnitude_{t['target']:g}"]))
    lines.append("")
    b = c["original"]["optc"]["median_ms"]
    for t in res["targets"]:
        g, m = t["gates"]["report"], t["magnitude"]["report"]
        gl = "finetuned" if "finetuned" in g else "pruned"
        gs = g["gates"]
        gk, mk = f"gates_{t['target']:g}", f"magnitude_{t['target']:g}"
        lines.append(
            f"target {t['target']:g}: gates keep {100 * g[gl]['flops'] / base['flops']:.1f}% of the FLOPs "
            f"({base['flops'] / g[gl]['flops']:.2f}x fewer), top-1 drop {base['top1'] - g[gl]['top1']:+.2f} points "
            f"(before the fine-tune {base['top1'] - g['pruned']['top1']:+.2f}); gates exactly 0/1: "
            f"{100 * gs['fraction_zero']:.0f}%/{100 * gs['fraction_one']:.0f}%, {gs['closed_to_reach_target']} closed "
            f"after training to reach the target, kept per group {[x['kept'] for x in gs['groups']]}; magnitude "
            f"{100 * m['finetuned']['flops'] / base['flops']:.1f}% of the FLOPs, drop {m['drop_points']:+.2f} points; "
            f"optc latency {b / c[gk]['optc']['median_ms']:.2f}x lower (gates), "
            f"{b / c[mk]['optc']['median_ms']:.2f}x (magnitude)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="0.26,0.4", help="FLOPs targets (default 0.26,0.4)")
    p.add_argument("--epochs", type=int, default=30, help="gate training epochs (default 30)")
    p.add_argument("--finetune-epochs", type=int, default=10, help="fine-tune epochs after pruning (default 10)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--multiple", type=int, default=8,
                   help="kept channels per layer rounded to a multiple, both methods (default 8: AVX2 fp32 lanes)")
    p.add_argument("--threads", type=int, default=1, help="threads per runtime (default 1)")
    bench_prune.add_ab_options(p, rounds=6)
    args = p.parse_args(argv)
    args.thread_counts = [args.threads]
    import optc
    from optc.models.digits import load_digits_split

    res: dict = {"targets": [], "compiled": {}}
    with tempfile.TemporaryDirectory(prefix="bench_gates_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        x, y, _, _ = load_digits_split()
        train = work / "digits_train.npz"
        np.savez(train, input=x, label=y)
        paths = {"original": MODEL}
        for target in [float(t) for t in args.targets.split(",") if t.strip()]:
            g = run_gates(args, target, train, work)
            last = g["report"].get("finetuned", g["report"]["pruned"])
            m = run_magnitude(args, last["flops"], train, work)
            res["targets"].append({"target": target, "gates": g, "magnitude": m})
            paths[f"gates_{target:g}"], paths[f"magnitude_{target:g}"] = Path(g["path"]), Path(m["path"])
        for key, path in paths.items():
            log(f"compile {key}")
            res["compiled"][key] = _compile(optc, path, work / f"{key}.cpu")
        log("bench")
        bench_prune.log = log
        bench_prune._ab_bench(optc, res["compiled"], args)
        text = table(res, args)
    return bench_prune.finish(args, res, text)


if __name__ == "__main__":
    sys.exit(main())

"""CPU benchmark: optc (TVM, untuned, optc's CPU schedules) against onnxruntime.

For each model: compile with optc (``optc.api.compile``, verification on, latency off) and
time the compile; then ``optc.api.bench`` measures optc and onnxruntime (same thread count,
ORT graph optimizations on) interleaved in one run. Prints a table and writes JSON to
``bench/results/``. See bench/README.md.

    python bench/bench_cpu.py                       # all models, 2 threads
    python bench/bench_cpu.py --threads 1,2         # each package at 1 and at 2 threads
    python bench/bench_cpu.py --models resnet18,minilm --threads 2 --repeat 50
    python bench/bench_cpu.py --quick               # fewer repetitions
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = RESULTS / "models"  # exported ONNX files (gitignored with results/)

MODELS = ("digits_cnn", "digits_mlp", "resnet18", "mobilenet", "minilm")

# MiniLM-sized encoder (all-MiniLM-L6 shapes): 6 layers, hidden 384, 12 heads, FFN 1536.
MINILM = {"layers": 6, "hidden": 384, "heads": 12, "ffn": 1536, "seq": 128}


def _minilm_module(cfg: dict):
    """A BERT-style post-LN encoder stack in plain torch ops (explicit attention so the
    TorchScript exporter emits MatMul/Softmax/LayerNormalization/Erf, no fused kernels).
    Input: hidden states ``1 x seq x hidden`` (what the embedding layer would produce)."""
    import math

    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, d, h, f):
            super().__init__()
            self.h, self.dk = h, d // h
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
            self.ff1, self.ff2 = nn.Linear(d, f), nn.Linear(f, d)

        def forward(self, x):
            b, s, d = x.shape
            split = lambda t: t.view(b, s, self.h, self.dk).transpose(1, 2)  # noqa: E731
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dk), dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
            x = self.ln1(x + self.o(ctx))
            return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer(cfg["hidden"], cfg["heads"], cfg["ffn"])
                                        for _ in range(cfg["layers"]))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    return Encoder().eval()


def export_minilm(path: Path) -> Path:
    import torch

    from optc.train.export import export_torch

    cfg = MINILM
    x = torch.randn(1, cfg["seq"], cfg["hidden"], generator=torch.Generator().manual_seed(0))
    return export_torch(_minilm_module(cfg), (x,), path, input_names=["hidden"],
                        output_names=["output"], overwrite=True)


def model_file(name: str) -> tuple[Path, dict | None, str]:
    """(ONNX path, input shapes to bind, description); exports what is not cached."""
    from optc.models import MODELS_DIR
    from optc.models import build as mb

    CACHE.mkdir(parents=True, exist_ok=True)
    if name in ("digits_cnn", "digits_mlp"):
        return Path(MODELS_DIR) / f"{name}.onnx", {"input": (1, 1, 8, 8)}, "batch 1, 1x8x8"
    path = CACHE / f"{name}.onnx"
    if name == "resnet18":
        if not path.exists():
            mb.export_resnet18(path, overwrite=True)
        return path, None, "ResNet-18, 1x3x224x224"
    if name == "mobilenet":
        if not path.exists():
            mb.export_mobilenet(path, overwrite=True)
        return path, None, "MobileNetV2-style (width 0.75), 1x3x224x224"
    if name == "minilm":
        if not path.exists():
            export_minilm(path)
        c = MINILM
        return path, None, (f"encoder {c['layers']}x(hidden {c['hidden']}, {c['heads']} heads, "
                            f"FFN {c['ffn']}), seq {c['seq']}")
    raise SystemExit(f"unknown model {name!r}; models: {', '.join(MODELS)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    ap.add_argument("--threads", default="2",
                    help="threads for optc and onnxruntime, or a comma list (e.g. 1,2: each package is "
                         "benched at each count, one after the other; default 2)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per runtime (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="repeat 10, 2 rounds")
    ap.add_argument("--tune-seconds", type=float, default=0, metavar="S",
                    help="also MetaSchedule-tune each model for S seconds (database bench/results/tuning) "
                         "and measure tuned beside untuned and onnxruntime, interleaved")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/cpu-<time>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.rounds = 10, 2
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]

    # optc.bench sets TVM's pool for real (runtime.config_threadpool) and records the count in
    # use after a warm-up call (threads_applied); onnxruntime gets intra_op_num_threads.
    import optc

    work = RESULTS / "packages"
    rows = []
    for name in names:
        path, shapes, desc = model_file(name)
        print(f"[{name}] compiling {path.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        report = optc.compile(path, "cpu", work / f"{name}.optc", input_shapes=shapes, options=optc.CompileOptions.of(measure=False, force=True, tuning_db=RESULTS / "no-tuning"))
        compile_s = time.perf_counter() - t0
        print(f"[{name}] compiled in {compile_s:.1f} s; benchmarking ...", file=sys.stderr, flush=True)
        tuned = None
        if args.tune_seconds:
            print(f"[{name}] tuning for {args.tune_seconds:.0f} s ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            tuned = optc.compile(path, "cpu", work / f"{name}.tuned.optc", input_shapes=shapes, options=optc.CompileOptions.of(measure=False, force=True, tune=100000, tune_seconds=args.tune_seconds, tuning_db=RESULTS / "tuning"))
            tuned["wall_s"] = time.perf_counter() - t0
        for th in thread_counts:  # one package, benched at each thread count
            if tuned is None:
                res = optc.bench(report["package"], optc.BenchOptions(threads=th, repeat=args.repeat,
                                                                      rounds=args.rounds, warmup=5))
            else:  # untuned+ort and tuned+ort benches alternate, one round each
                import statistics

                per = max(1, args.repeat // args.rounds)
                parts = {"u": [], "t": []}
                for _ in range(args.rounds):
                    once = optc.BenchOptions(threads=th, repeat=per, rounds=1, warmup=3)
                    parts["u"].append(optc.bench(report["package"], once))
                    parts["t"].append(optc.bench(tuned["package"], once))
                med = lambda rs, k: statistics.median(r[k]["median_ms"] for r in rs)  # noqa: E731
                res = {"optc": {"median_ms": med(parts["u"], "optc")},
                       "onnxruntime": {"median_ms": statistics.median([med(parts["u"], "onnxruntime"),
                                                                        med(parts["t"], "onnxruntime")])}}
                res["ratio_optc_over_ort"] = res["optc"]["median_ms"] / res["onnxruntime"]["median_ms"]
                res["tuned_ms"] = med(parts["t"], "optc")
                res.update({k: parts["u"][0].get(k) for k in ("threads_applied", "method", "baselines")})
            rows.append({
                **({"tuned_ms": res["tuned_ms"], "tuned_ratio": res["tuned_ms"] / res["onnxruntime"]["median_ms"],
                    "tuning": tuned.get("tuning"), "tuned_compile_s": tuned["wall_s"]} if tuned else {}),
                "model": name, "threads": th, "description": desc, "compile_s": compile_s,
                "compile_stage_seconds": report["stage_seconds"],
                "verify_max_abs_error": max(o.get("max_abs_error", 0) for o in report["verify"]["outputs"]),
                "optc_ms": res["optc"]["median_ms"], "ort_ms": res["onnxruntime"]["median_ms"],
                "ratio": res["ratio_optc_over_ort"], "optc": res["optc"], "onnxruntime": res["onnxruntime"],
                "baselines": res.get("baselines"), "threads_applied": res.get("threads_applied"),
                "method": res.get("method"), "loadavg": os.getloadavg(),
            })

    print(f"\noptc vs onnxruntime on the package's deployable model, threads {args.threads}, "
          f"median of {args.repeat} runs ({args.rounds} interleaved rounds); ratio = optc / ort (lower is better)")
    print("timing boundary: numpy inputs to numpy outputs on both sides (optc.bench)")
    for r in rows:
        print(f"  {r['model']} ({r['threads']} requested): threads in use {r['threads_applied']}; load average "
              + " ".join(f"{x:.2f}" for x in r["loadavg"]))
    print(f"{'model':<12} {'threads':>7} {'compile s':>9} {'optc ms':>10} {'ort ms':>10} {'ratio':>7} "
          f"{'vs orig':>7} {'load':>5}")
    for r in rows:
        orig = (r["baselines"] or {}).get("original")
        print(f"{r['model']:<12} {r['threads']:>7} {r['compile_s']:>9.1f} {r['optc_ms']:>10.3f} {r['ort_ms']:>10.3f} "
              f"{r['ratio']:>6.2f}x {(format(orig['ratio_optc_over_this'], '6.2f') + 'x') if orig else '      -':>7} "
              f"{r['loadavg'][0]:>5.2f}")
        if "tuned_ms" in r:
            t = r["tuning"] or {}
            print(f"{'  tuned':<12} {r['threads']:>7} {r['tuned_compile_s']:>9.1f} {r['tuned_ms']:>10.3f} {r['ort_ms']:>10.3f} "
                  f"{r['tuned_ratio']:>6.2f}x  ({t.get('functions_from_database', 0)} of "
                  f"{t.get('functions', '?')} functions tuned)")

    write_results("cpu", args, thread_counts, {"models": rows})
    return 0


def write_results(prefix: str, args, thread_counts: list[int], results: dict) -> Path:
    """Write ``results`` with the machine, versions and run settings to ``args.out`` (default
    ``bench/results/PREFIX-DATE.json``); returns the path. Shared by the CPU benchmarks."""
    import onnxruntime
    import tvm

    import optc

    out = Path(args.out) if args.out else RESULTS / (
        f"{prefix}-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": tvm.target.codegen.llvm_get_system_cpu(),
                    "cores": os.cpu_count()},
        "versions": {"optc": optc.__version__, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__},
        "threads": thread_counts, "repeat": args.repeat, "rounds": args.rounds,
        "timing_boundary": "numpy inputs to numpy outputs, both sides (optc.bench)",
        **results,
    }, indent=2, default=str))
    print(f"\nwrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(main())

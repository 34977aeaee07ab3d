"""scikit-learn tree ensembles exported by skl2onnx, compiled by optc (untuned) and timed beside
onnxruntime.

The models are trained here (seeded, synthetic ``make_classification`` / ``make_regression``
data, nothing downloaded) and exported as users export them: ``skl2onnx.to_onnx`` with
``zipmap=False`` (a ZipMap output is refused by name), which writes ai.onnx.ml 3
TreeEnsembleClassifier / TreeEnsembleRegressor nodes. Forests are walked by one optc kernel
(``ml_ops.forest_walk``); the figures below come from ``optc.bench`` (interleaved rounds, both
sides numpy in to numpy out, the same thread count).

    python bench/bench_trees.py                     # every model, batch 1 and 64, 1 and 2 threads
    python bench/bench_trees.py --models rf_cls --batches 1 --threads 2 --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FEATURES = 20


def _models() -> dict:
    """name -> (estimator factory, classifier?): the common forest kinds at their defaults."""
    from sklearn.ensemble import (ExtraTreesRegressor, GradientBoostingClassifier, RandomForestClassifier,
                                  RandomForestRegressor)

    return {
        "rf_cls": (lambda: RandomForestClassifier(n_estimators=100, random_state=0), True),
        "rf_reg": (lambda: RandomForestRegressor(n_estimators=100, max_depth=12, random_state=0), False),
        "et_reg": (lambda: ExtraTreesRegressor(n_estimators=200, max_depth=10, random_state=0), False),
        "gb_cls": (lambda: GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0), True),
    }


def export(name: str, out: Path) -> Path:
    """Train model ``name`` on 4,000 synthetic rows and write its ONNX file (float32 input
    ``X`` [N, 20]; classifiers: 4 classes, ``zipmap=False``)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification, make_regression

    factory, classifier = _models()[name]
    if classifier:
        x, y = make_classification(4000, FEATURES, n_informative=10, n_classes=4, random_state=0)
    else:
        x, y = make_regression(4000, FEATURES, n_informative=10, noise=0.1, random_state=0)
    est = factory().fit(x.astype(np.float32), y)
    options = {id(est): {"zipmap": False}} if classifier else None
    onx = to_onnx(est, x[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    path = out / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def main(argv: list[str] | None = None) -> int:
    import optc

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(_models()), help=f"comma list of {','.join(_models())}")
    ap.add_argument("--batches", default="1,64", help="rows per call, comma list (default 1,64)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma list (default 1,2)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per runtime (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="repeat 10, 2 rounds")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/trees-<time>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.rounds = 10, 2
    work = RESULTS / "packages" / "trees"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        path = export(name, work)
        for batch in [int(b) for b in args.batches.split(",")]:
            t0 = time.perf_counter()
            rng = np.random.default_rng(0)
            report = optc.compile(path, "cpu", work / f"{name}_b{batch}.optc", input_shapes={"X": [batch, FEATURES]},
                                  inputs={"X": rng.standard_normal((batch, FEATURES)).astype(np.float32)},
                                  options=optc.CompileOptions.of(measure=False, force=True))
            compile_s = time.perf_counter() - t0
            for th in [int(t) for t in args.threads.split(",")]:
                res = optc.bench(report["package"], optc.BenchOptions(threads=th, repeat=args.repeat,
                                                                      rounds=args.rounds, warmup=5))
                rows.append({"model": name, "batch": batch, "threads": th, "compile_s": compile_s,
                             "optc_ms": res["optc"]["median_ms"], "ort_ms": res["onnxruntime"]["median_ms"],
                             "ratio": res["ratio_optc_over_ort"], "threads_applied": res.get("threads_applied"),
                             "loadavg": os.getloadavg()})
                r = rows[-1]
                print(f"| {name} | {batch} | {th} | {compile_s:.1f} | {r['optc_ms']:.3f} | {r['ort_ms']:.3f} "
                      f"| {r['ratio']:.2f}x | {r['loadavg'][0]:.1f} |", flush=True)
    sys.path.insert(0, str(HERE))
    from bench_cpu import write_results

    write_results("trees", args, [int(t) for t in args.threads.split(",")], {"models": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

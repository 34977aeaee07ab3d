"""Mixed precision under an accuracy budget.

Metric: with labels, the top-1 drop in points against the float model on the same samples;
without labels, ``100 * (1 - top-1 agreement)`` with the float model. Top-1 is taken over the
last axis of a 3-D output ``[N, T, classes]`` (a sequence: one decision per time step, as a
CTC recognizer makes them) and over everything but the batch axis otherwise (``[N, classes]``).
SQNR of the first output against the float model is recorded beside it (and breaks ties
between layers).

1. Quantize everything at the requested weight bits; if the drop is within the budget, stop.
2. Sensitivity: quantize one layer at a time (the others float) and measure drop and SQNR.
3. Raise the most sensitive layers one step of the ladder ``requested bits -> 8 -> float``
   (most drop first, then lowest SQNR): bisection over k finds the fewest k such that raising
   the k most sensitive layers meets the budget (the chosen configuration is always one that
   was measured; with every layer float it holds trivially). Evaluations: one per layer plus
   about log2(layers) per ladder step.

Every evaluation runs the QDQ model in onnxruntime (graph optimizations off) over the
evaluation samples, so what is chosen is what the QDQ artifact computes.
"""

from __future__ import annotations

import math
import time
from typing import Mapping

import numpy as np
import onnx

from optc.accuracy import align_labels, top1
from optc.accuracy import sqnr_db as _sqnr

from . import calibrate
from .core import FP32, Quantizer

__all__ = ["Evaluator", "search"]




class Evaluator:
    """Scores QDQ models against the float model on fixed samples."""

    def __init__(self, float_model: onnx.ModelProto, data: Mapping[str, np.ndarray],
                 labels: np.ndarray | None, limit: int = 0):
        self.data, self.limit = data, limit
        self.n = calibrate.samples_used(data, float_model, limit)
        self.reference = self.outputs(float_model)
        self.ref_top1 = top1(self.reference)
        self.labels = None if labels is None else align_labels(labels, self.ref_top1)
        self.ref_acc = None if self.labels is None else float(np.mean(self.ref_top1 == self.labels))
        self.count = 0

    def outputs(self, model: onnx.ModelProto) -> np.ndarray:
        runner = calibrate.TensorRunner(model)
        first = runner.names[0]
        outs = [runner.run(f)[first] for f in calibrate.iter_batches(self.data, model, self.limit)]
        return np.concatenate(outs)

    def score(self, model: onnx.ModelProto) -> dict:
        self.count += 1
        out = self.outputs(model)
        top = top1(out)
        agree = float(np.mean(top == self.ref_top1))
        res = {"agreement": agree, "sqnr_db": round(_sqnr(self.reference, out), 2)}
        if self.labels is not None:
            acc = float(np.mean(top == self.labels))
            res["top1"] = acc
            res["drop_points"] = round(100.0 * (self.ref_acc - acc), 4)
        else:
            res["drop_points"] = round(100.0 * (1.0 - agree), 4)
        return res


def search(q: Quantizer, evaluator: Evaluator, budget: float) -> tuple[dict[str, int], dict]:
    """Per-layer bits meeting ``budget`` (points of top-1) and the record of the search."""
    t0 = time.perf_counter()
    base = q.default_bits()
    record: dict = {"budget_points": budget, "samples": evaluator.n,
                    "metric": "top-1 drop vs labels (points)" if evaluator.labels is not None
                    else "100 x (1 - top-1 agreement with float)"}
    if evaluator.ref_acc is not None:
        record["float_top1"] = evaluator.ref_acc
    full = evaluator.score(q.build(base)[0])
    record["all_quantized"] = full
    bits = dict(base)
    sens: dict[str, dict] = {}
    steps = []
    current = full
    if full["drop_points"] > budget:
        for l in q.layers:
            if base[l.name] == FP32:
                continue
            sens[l.name] = evaluator.score(q.build({l.name: base[l.name]})[0])
        order = sorted(sens, key=lambda n: (-sens[n]["drop_points"], sens[n]["sqnr_db"]))
        for level, up in ((4, 8), (8, FP32)):
            cands = [n for n in order if bits[n] == level]
            if not cands or current["drop_points"] <= budget:
                continue

            def promoted(k: int) -> dict[str, int]:
                return {**bits, **{n: up for n in cands[:k]}}

            def score(k: int) -> dict:
                b = promoted(k)
                r = evaluator.score(q.build(b)[0]) if any(v != FP32 for v in b.values()) else \
                    {"drop_points": 0.0, "agreement": 1.0, "sqnr_db": math.inf}
                steps.append({"raise": k, "from": level, "to": "float" if up == FP32 else up,
                              "drop_points": r["drop_points"], "sqnr_db": r["sqnr_db"]})
                return r

            # bisection for the fewest most-sensitive layers to raise: lo fails, hi meets
            lo, hi = 0, len(cands)
            best = score(hi)
            if best["drop_points"] > budget:
                bits, current = promoted(hi), best
                continue
            while hi - lo > 1:
                mid = (lo + hi) // 2
                r = score(mid)
                if r["drop_points"] <= budget:
                    hi, best = mid, r
                else:
                    lo = mid
            bits, current = promoted(hi), best
    record["final"] = current
    record["budget_met"] = current["drop_points"] <= budget
    record["layers"] = [
        {"name": l.name, "op": l.op_type, "bits": "float" if bits[l.name] == FP32 else bits[l.name],
         **({"alone_drop_points": sens[l.name]["drop_points"], "alone_sqnr_db": sens[l.name]["sqnr_db"]}
            if l.name in sens else {})}
        for l in q.layers]
    record["steps"] = steps
    record["evaluations"] = evaluator.count
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return bits, record

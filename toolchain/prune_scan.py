"""Pruning sensitivity scan: prune each channel group alone at several ratios, measure the
accuracy (or, without labels, the fidelity) with onnxruntime, and propose per-layer ratios
that reach a FLOP target within an accuracy budget.

Method (a standard sensitivity analysis):

1. The model is analysed once (:func:`optc.passes.prune_groups.analyze`); every prunable
   channel group (a layer, or the layers a residual Add ties together) is a candidate.
2. For each group g and ratio r: ``prune<ratios=g:r>`` alone; FLOPs from
   :mod:`optc.analysis` (dynamic input dims counted as 1) and the metric on the evaluation
   data: top-1 accuracy with labels, else top-1 agreement with the unpruned model. The drop
   is in percentage points against the unpruned model.
3. Proposal, greedy: starting from nothing pruned, repeatedly raise one group to its next
   ratio, choosing the step with the least measured accuracy loss per FLOP saved whose
   summed (single-layer) losses stay within ``max_accuracy_drop``, until the estimated
   FLOPs reach ``target_flops`` (a fraction of the original) or no step fits. The combined
   proposal is then pruned and measured for real (savings compound; losses need not add);
   while its measured drop exceeds the budget the last step is undone.

The result names its method and gives the measured figures of the proposal, so a claim of
"x% fewer FLOPs at y points" rests on a measurement, not on the additive estimate.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from . import frontend, verify
from .accuracy import find_labels, near_chance
from .errors import InvalidModelError, UsageError
from .progress import SILENT, Progress

__all__ = ["scan", "evaluate_model", "EvalData", "proposal_pipeline"]

_BATCH = 256


class EvalData:
    """Evaluation arrays for a model: inputs by name (samples on axis 0), labels or None.

    Static batch dims (after binding) are fed in batches of that size (leftover samples are
    left out and counted); dynamic ones in chunks of up to 256 samples.
    """

    def __init__(self, path: str | os.PathLike, model: onnx.ModelProto, limit: int | None = None):
        data = verify.load_inputs(path)
        self.path = str(path)
        self.inputs = {}
        self.batch: int | None = None
        self.classes: int | None = None  # the first output's size per sample (set by predictions)
        used = set()
        for vi in frontend.graph_inputs(model):
            if vi.name not in data:
                key = "input" if "input" in data and len(frontend.graph_inputs(model)) == 1 else None
                if key is None:
                    raise InvalidModelError(f"{path}: missing input array {vi.name!r} (has {', '.join(data)})")
                arr = data[key]
                used.add(key)
            else:
                arr = data[vi.name]
                used.add(vi.name)
            dt = frontend._np_dtype(vi.type.tensor_type.elem_type)
            self.inputs[vi.name] = np.asarray(arr).astype(dt, copy=False)
            dims = vi.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                self.batch = dims[0].dim_value
        self.labels = find_labels(data, used, str(path))[1]
        n = min(len(a) for a in self.inputs.values())
        if limit is not None:
            n = min(n, limit)
        step = self.batch or _BATCH
        self.used = n if self.batch is None else (n // self.batch) * self.batch
        if self.used == 0:
            raise InvalidModelError(f"{path}: {n} samples, fewer than the model's batch size {self.batch}")
        self.step = step
        self.left_out = n - self.used

    def predictions(self, model: onnx.ModelProto | str | Path) -> np.ndarray:
        """Top-1 class of the first output for every used sample (onnxruntime, optimized)."""
        sess = verify.ort_session(model, optimize=True)
        preds = []
        for start in range(0, self.used, self.step):
            end = min(start + self.step, self.used)
            feeds = {k: np.ascontiguousarray(v[start:end]) for k, v in self.inputs.items()}
            out = np.asarray(sess.run(None, feeds)[0])
            out = out.reshape(len(out), -1)
            self.classes = out.shape[1]
            preds.append(out.argmax(1))
        return np.concatenate(preds)

    def metric(self, preds: np.ndarray, reference: np.ndarray) -> float:
        """Top-1 accuracy in percent with labels, else agreement with ``reference`` in percent."""
        if self.labels is not None:
            return 100.0 * float(np.mean(preds == np.asarray(self.labels)[:self.used].reshape(-1)))
        return 100.0 * float(np.mean(preds == reference))

    @property
    def metric_name(self) -> str:
        return "top1" if self.labels is not None else "top1_agreement"

    @property
    def chance(self) -> float | None:
        """The metric of a uniform guess in percent (100 / classes; None before predictions)."""
        return 100.0 / self.classes if self.classes and self.classes >= 2 else None


def evaluate_model(model: onnx.ModelProto | str | Path, data: EvalData,
                   reference: np.ndarray | None = None) -> float:
    """The metric of ``model`` on ``data`` in percent (see :meth:`EvalData.metric`)."""
    preds = data.predictions(model)
    return data.metric(preds, preds if reference is None else reference)


def _fmt_name_ok(name: str) -> bool:
    return bool(name) and not any(c in name for c in ",;<>")


def proposal_pipeline(ratios: Mapping[str, float], criterion: str = "l1", *, multiple: int = 1,
                      min_channels: int = 1) -> str:
    """``prune<ratios=...>`` pipeline text for per-group ratios ("" when empty)."""
    from .pipeline import PassSpec

    if not ratios:
        return ""
    params: list[tuple[str, object]] = [("ratios", {k: round(float(v), 4) for k, v in ratios.items()})]
    if criterion != "l1":
        params.append(("criterion", criterion))
    if multiple != 1:
        params.append(("multiple", multiple))
    if min_channels != 1:
        params.append(("min-channels", min_channels))
    return PassSpec("prune", tuple(params)).format()


@dataclass(frozen=True)
class PruneSettings:
    """The ``prune`` pass parameters a scan uses besides the ratios: channel-ranking
    ``criterion``, kept channels rounded to a ``multiple``, at least ``min_channels`` kept."""

    criterion: str = "l1"
    multiple: int = 1
    min_channels: int = 1


@dataclass(frozen=True)
class ScanBudget:
    """What the proposal aims for: ``target_flops``, the FLOPs to reach as a fraction of the
    original (0.5 = half; None: prune as much as the budget allows), and ``max_accuracy_drop``,
    the budget in percentage points of the metric."""

    target_flops: float | None = None
    max_accuracy_drop: float = 1.0


@dataclass(frozen=True)
class _Baseline:
    preds: np.ndarray
    metric: float
    flops: int


def _prune(proto: onnx.ModelProto, ratios: Mapping[str, float],
           settings: PruneSettings) -> tuple[onnx.ModelProto, dict]:
    import onnx_ir as ir

    from optc.passes.prune import Prune

    irm = ir.serde.deserialize_model(proto)
    result = Prune(ratios=dict(ratios), criterion=settings.criterion, multiple=settings.multiple,
                   min_channels=settings.min_channels)(irm)
    return ir.serde.serialize_model(irm), result.details


def scan(
    model: str | os.PathLike | onnx.ModelProto,
    eval_data: str | os.PathLike,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    settings: PruneSettings = PruneSettings(),
    budget: ScanBudget = ScanBudget(),
    eval_limit: int | None = None,
    progress: Progress = SILENT,
) -> dict:
    """Sensitivity of each channel group to pruning, and a proposal (see the module doc).

    ``settings``: the prune pass's criterion, multiple and minimum channels (:class:`PruneSettings`).
    ``budget``: the FLOPs target and the accuracy budget of the proposal (:class:`ScanBudget`).
    ``eval_limit``: evaluate on at most that many samples.
    """
    import onnx_ir as ir

    from optc.passes.prune import CRITERIA, model_costs
    from optc.passes.prune_groups import analyze

    criterion, target_flops, max_accuracy_drop = settings.criterion, budget.target_flops, budget.max_accuracy_drop
    ratios = sorted({float(r) for r in ratios})
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise UsageError(f"ratios must be in (0, 1), got {ratios}")
    if criterion not in CRITERIA:
        raise UsageError(f"criterion must be one of {', '.join(CRITERIA)}")
    if target_flops is not None and not 0.0 < target_flops <= 1.0:
        raise UsageError(f"target FLOPs must be a fraction in (0, 1], got {target_flops}")
    if max_accuracy_drop < 0:
        raise UsageError("the accuracy budget must be >= 0 points")

    proto = model if isinstance(model, onnx.ModelProto) else frontend.load_model(model)
    source = "model" if isinstance(model, onnx.ModelProto) else str(model)
    if input_shapes:
        proto, _ = frontend.bind_input_shapes(proto, input_shapes)
    data = EvalData(eval_data, proto, eval_limit)

    with progress.step("baseline"):
        base_preds = data.predictions(proto)
        base_metric = data.metric(base_preds, base_preds)
        an = analyze(ir.serde.deserialize_model(proto))
        base_costs = model_costs(ir.serde.deserialize_model(proto))
    base_flops = base_costs["flops"] or 0

    groups, skipped = [], []
    for g in an.roots():
        if not g.prunable:
            skipped.append({"name": g.name, "channels": g.channels,
                            "reason": "; ".join(g.frozen) or "a single channel"})
        elif not _fmt_name_ok(g.name):
            skipped.append({"name": g.name, "channels": g.channels,
                            "reason": "its name cannot be written in a pipeline (',', ';', '<' or '>')"})
        else:
            groups.append(g)

    rows = []
    for i, g in enumerate(groups):
        with progress.step(f"[{i + 1}/{len(groups)}] {g.name} ({g.channels} channels)"):
            for r in ratios:
                pruned, details = _prune(proto, {g.name: r}, settings)
                kept = next(row["kept"] for row in details["groups"] if row["name"] == g.name)
                if kept == g.channels:
                    continue  # rounding keeps everything at this ratio
                m = evaluate_model(pruned, data, base_preds)
                flops = details["flops_after"] or 0
                rows.append({"group": g.name, "channels": g.channels, "ratio": r, "kept": kept,
                             "flops": flops, "flops_fraction": flops / base_flops if base_flops else None,
                             "params": details["params_after"], "metric": m,
                             "drop_points": base_metric - m,
                             "at_chance": near_chance(m, base_metric, data.chance)})

    proposal = _propose(proto, rows, data, _Baseline(base_preds, base_metric, base_flops), budget, settings, progress)
    notes = []
    at_chance = [r for r in rows if r["at_chance"]]
    if at_chance:
        worst = ", ".join(f"{r['group']} at {r['ratio']:g}" for r in at_chance[:4])
        notes.append(f"{len(at_chance)} of {len(rows)} scans fall to chance level ({data.chance:.1f}% for "
                     f"{data.classes} classes: the model no longer classifies): {worst}"
                     + (", ..." if len(at_chance) > 4 else "") + ". Pruning without retraining cannot go "
                     "that far; fine-tune after pruning: optc prune-finetune MODEL --passes 'prune<...>' "
                     "--train TRAIN.npz --eval DATA.npz")
    if proposal.get("at_chance"):
        notes.append("the proposal itself is at chance level: fine-tune it (optc prune-finetune)")
    return {
        "model": source,
        "eval": {"data": data.path, "samples": data.used, "samples_left_out": data.left_out,
                 "metric": data.metric_name,
                 "metric_note": "top-1 accuracy in percent" if data.labels is not None else
                 "no labels: top-1 agreement with the unpruned model in percent"},
        "criterion": criterion,
        "ratios": ratios,
        "baseline": {"metric": base_metric, "flops": base_flops, "params": base_costs["params"]},
        "groups": [{"name": g.name, "channels": g.channels,
                    "members": [p.node.name for p in g.producers]} for g in groups],
        "skipped": skipped,
        "rows": rows,
        "proposal": proposal,
        "chance_metric": data.chance,
        "notes": notes,
        "method": "each group pruned alone per ratio and evaluated with onnxruntime; greedy "
                  "proposal by measured loss per FLOP saved, then the combined proposal measured",
    }


def _propose(proto, rows, data, base: _Baseline, goal: ScanBudget, settings: PruneSettings, progress) -> dict:
    base_preds, base_metric, base_flops = base.preds, base.metric, base.flops
    target_flops, budget = goal.target_flops, goal.max_accuracy_drop
    options: dict[str, list[dict]] = {}
    for row in rows:
        options.setdefault(row["group"], []).append(row)
    for opts in options.values():
        opts.sort(key=lambda r: r["ratio"])
    level = {g: -1 for g in options}  # index into options[g]; -1 = not pruned

    def saved(g, i):
        return 0 if i < 0 else base_flops - options[g][i]["flops"]

    def loss(g, i):
        return 0.0 if i < 0 else max(options[g][i]["drop_points"], 0.0)

    est_loss, est_saved = 0.0, 0
    target_saved = None if target_flops is None else (1.0 - target_flops) * base_flops
    history: list[tuple[str, int]] = []
    while target_saved is None or est_saved < target_saved:
        best = None
        for g, opts in options.items():
            for j in range(level[g] + 1, len(opts)):
                d_saved = saved(g, j) - saved(g, level[g])
                d_loss = loss(g, j) - loss(g, level[g])
                if d_saved <= 0 or est_loss + d_loss > budget + 1e-9:
                    continue
                key = (max(d_loss, 0.0) / d_saved, -d_saved)
                if best is None or key < best[0]:
                    best = (key, g, j, d_saved, d_loss)
        if best is None:
            break
        _, g, j, d_saved, d_loss = best
        history.append((g, level[g]))
        level[g] = j
        est_saved += d_saved
        est_loss += d_loss

    def current():
        return {g: options[g][i]["ratio"] for g, i in level.items() if i >= 0}

    measured = None
    with progress.step("measure the proposal"):
        while True:
            chosen = current()
            if not chosen:
                break
            pruned, details = _prune(proto, chosen, settings)
            m = evaluate_model(pruned, data, base_preds)
            measured = {"metric": m, "drop_points": base_metric - m, "flops": details["flops_after"],
                        "params": details["params_after"]}
            if measured["drop_points"] <= budget + 1e-9 or not history:
                break
            g, prev = history.pop()  # over budget once combined: undo the last step
            level[g] = prev
            measured = None
    chosen = current()
    flops = measured["flops"] if measured else base_flops
    out = {
        "ratios": chosen,
        "pipeline": proposal_pipeline(chosen, settings.criterion, multiple=settings.multiple,
                                      min_channels=settings.min_channels),
        "target_flops": target_flops,
        "max_accuracy_drop": budget,
        "estimated_drop_points": est_loss,
        "flops": flops,
        "flops_fraction": flops / base_flops if base_flops else None,
        "metric": measured["metric"] if measured else base_metric,
        "drop_points": measured["drop_points"] if measured else 0.0,
        "params": measured["params"] if measured else None,
    }
    out["at_chance"] = near_chance(out["metric"], base_metric, data.chance)
    out["target_reached"] = target_flops is None or (out["flops_fraction"] is not None
                                                     and out["flops_fraction"] <= target_flops + 1e-9)
    if not chosen:
        out["note"] = "no group can be pruned within the accuracy budget at the scanned ratios"
    elif not out["target_reached"]:
        out["note"] = (f"the FLOP target {target_flops:g} is not reached within {budget:g} points; "
                       "this is the most the scan found (fine-tuning usually recovers accuracy: "
                       "optc prune-finetune)")
    if math.isnan(out["drop_points"]):  # pragma: no cover - defensive
        out["drop_points"] = None
    return out

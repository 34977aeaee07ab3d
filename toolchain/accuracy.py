"""Accuracy and fidelity of a compiled or transformed model against the fp32 original.

With labels (an ``.npz`` with the model's input arrays and the labels under one of
:data:`LABEL_KEYS`: ``label``, ``labels``, ``y``, ``target``, ``targets``): top-1 accuracy of the
reference (onnxruntime on the original model) and of the candidate, and the drop in points.
Without labels: fidelity, i.e. top-1 agreement of the candidate with the reference and the
signal-to-quantization-noise ratio per output, SQNR = 10 log10(sum(ref^2) / sum((ref - x)^2)).
An array that is neither an input nor a label is a warning (a misnamed label array would
otherwise turn accuracy into agreement without a word).

A candidate whose top-1 is near chance level (1 / classes; see :func:`near_chance`) is flagged:
the compression destroyed the model (e.g. pruning without fine-tuning).

Top-1 figures are given only where they mean something: when the first output is class scores
(:func:`output_kind`, the one definition of "classifier-like" that fidelity, evaluation and
reports share). A text detector's probability map or a YOLO head gets SQNR and, for outputs
whose values lie in [0, 1] (probabilities, masks), the IoU of the masks thresholded at
:data:`MASK_THRESHOLD` instead (:func:`fidelity_figures`).

Samples are fed in batches of the candidate's bound batch size (axis 0); samples that do not
fill a last batch are left out and counted in ``samples_left_out``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import InvalidModelError
from .frontend import TensorSpec
from .progress import warn

LABEL_KEY = "label"  # the name optc writes (models/build.py)
LABEL_KEYS = ("label", "labels", "y", "target", "targets")  # the names read, in this order


def find_labels(data: Mapping[str, np.ndarray], inputs=(), where: str = "evaluation data"
                ) -> tuple[str | None, np.ndarray | None]:
    """The label array of ``data`` and its key, or (None, None) without labels.

    Any of :data:`LABEL_KEYS` that is not one of the model's ``inputs`` names the labels; two
    of them at once is an error (which one is meant?). Without labels, arrays that are neither
    inputs nor labels are named in a warning: a misnamed label array would otherwise give
    top-1 agreement where accuracy was meant."""
    inputs = set(inputs)
    keys = [k for k in LABEL_KEYS if k in data and k not in inputs]
    if len(keys) > 1:
        raise InvalidModelError(f"{where}: several label arrays ({', '.join(map(repr, keys))}); keep one "
                                f"(labels are read from {', '.join(LABEL_KEYS)})")
    if keys:
        return keys[0], np.asarray(data[keys[0]])
    extra = [k for k in data if k not in inputs]
    if extra:
        warn(f"{where}: no labels (an array named {', '.join(LABEL_KEYS[:-1])} or {LABEL_KEYS[-1]}); "
             f"array(s) {', '.join(map(repr, extra))} are not model inputs and are ignored: reporting "
             "fidelity (top-1 agreement with the original), not accuracy")
    return None, None

RunFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def load_eval(path: str | Path, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Input arrays (keyed by input name, samples on axis 0) and labels (or None)."""
    from .verify import load_inputs

    data = load_inputs(path)
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise InvalidModelError(f"{path}: missing input array(s) {', '.join(map(repr, missing))} "
                                f"(has {', '.join(map(repr, data))})")
    inputs = {s.name: data[s.name] for s in specs}
    counts = {len(a) for a in inputs.values()}
    _, labels = find_labels(data, inputs, str(path))
    if labels is not None:
        counts.add(len(labels))
    if len(counts) != 1:
        raise InvalidModelError(f"{path}: arrays disagree on the number of samples ({sorted(counts)})")
    return inputs, labels


def batched_outputs(run: RunFn, inputs: Mapping[str, np.ndarray], specs: list[TensorSpec],
                    limit: int | None = None) -> tuple[list[np.ndarray], int]:
    """Run ``run`` over the samples in batches of the specs' batch size; concatenated outputs
    and the number of samples used."""
    n = len(next(iter(inputs.values())))
    if limit is not None:
        n = min(n, limit)
    batch = specs[0].shape[0] if specs and specs[0].shape else 1
    used = (n // batch) * batch
    if used == 0:
        raise InvalidModelError(f"evaluation data has {n} samples, fewer than the model's batch size {batch}")
    chunks: list[list[np.ndarray]] = []
    for start in range(0, used, batch):
        feeds = {s.name: np.ascontiguousarray(inputs[s.name][start:start + batch]).astype(s.dtype, copy=False)
                 for s in specs}
        chunks.append(run(feeds))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))], used


# Kinds of output (output_kind). The first two are "classifier-like": top-1 figures apply.
CLASS_SCORES = "class scores"  # [N, C], C >= 2 (singleton axes after the batch ignored)
SEQUENCE_SCORES = "class scores per step"  # [N, T, C]: a sequence model decides once per step
PROBABILITY_MAP = "probability map"  # any other output whose values lie in [0, 1]: masks, heat maps
DENSE = "dense"  # anything else: regression and detection heads, feature maps, embeddings
CLASSIFIER_KINDS = (CLASS_SCORES, SEQUENCE_SCORES)
MASK_THRESHOLD = 0.5
_DIST_TOL = 1e-3  # |sum - 1| of a softmax row (float32 rounding), |logsumexp| of a log-softmax row


def _core_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The batch axis, then the axes longer than 1 (``[N, C, 1, 1]`` and ``[N, 1, 1, C]`` are
    ``[N, C]``)."""
    return tuple(shape[:1]) + tuple(d for d in shape[1:] if d != 1)


def _rows_are_distributions(x: np.ndarray) -> bool:
    """Every row along the last axis is a probability distribution (softmax) or the log of one
    (log-softmax)."""
    x = np.asarray(x, np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        return False
    if x.min() >= -1e-6 and x.max() <= 1 + 1e-6:
        return bool(np.all(np.abs(x.sum(-1) - 1.0) <= _DIST_TOL))
    if x.max() <= 1e-6:
        m = x.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
        return bool(np.all(np.abs(lse) <= _DIST_TOL))
    return False


def output_kind(output: np.ndarray, labels: np.ndarray | None = None) -> str:
    """What a model output is, from the reference model's values (samples on axis 0): the one
    definition of "classifier-like" (:data:`CLASSIFIER_KINDS`) that fidelity, evaluation and
    reports use.

    * :data:`CLASS_SCORES`: shape ``[N, C]`` with ``C >= 2`` once singleton axes after the batch
      are dropped (logits or probabilities, one decision per sample);
    * :data:`SEQUENCE_SCORES`: ``[N, T, C]`` (``C >= 2``) whose every step is a probability
      distribution or log-distribution (a CTC recognizer's softmax), or whose ``labels`` hold one
      class per step. Raw rank-3 scores are not taken as steps: a detection head
      ``[N, anchors, 4 + 1 + classes]`` has that shape too;
    * :data:`PROBABILITY_MAP`: anything else with every value in [0, 1] (a text detector's
      probability map ``[N, 1, H, W]``, segmentation masks, one sigmoid score per sample);
    * :data:`DENSE`: the rest (box regressions, YOLO heads, feature maps).
    """
    a = np.asarray(output)
    core = _core_shape(a.shape)
    if len(core) == 2 and core[1] >= 2:
        return CLASS_SCORES
    if len(core) == 3 and core[2] >= 2:
        steps = core[0] * core[1]
        if (labels is not None and np.asarray(labels).size == steps) or _rows_are_distributions(a.reshape(core)):
            return SEQUENCE_SCORES
    if a.size and np.issubdtype(a.dtype, np.number) and np.all(np.isfinite(a)) \
            and float(a.min()) >= 0.0 and float(a.max()) <= 1.0:
        return PROBABILITY_MAP
    return DENSE


def classifier_like(output: np.ndarray, labels: np.ndarray | None = None) -> bool:
    """Whether top-1 figures mean something for ``output`` (see :func:`output_kind`)."""
    return output_kind(output, labels) in CLASSIFIER_KINDS


def top1(logits: np.ndarray) -> np.ndarray:
    """Top-1 decisions: per time step of a ``[N, T, classes]`` output (a sequence model such as
    a CTC recognizer decides once per step), per sample otherwise (``[N, classes]``; any other
    shape flattened per sample). Singleton axes after the batch are ignored. Meaningful only for
    classifier-like outputs (:func:`classifier_like`)."""
    logits = np.asarray(logits)
    core = _core_shape(logits.shape)
    if len(core) == 3:
        return logits.reshape(core).argmax(-1)
    return logits.reshape(len(logits), -1).argmax(axis=1)


def mask_iou(ref: np.ndarray, x: np.ndarray, threshold: float = MASK_THRESHOLD) -> float:
    """IoU of the masks ``ref > threshold`` and ``x > threshold`` over all elements (1.0 when
    both are empty)."""
    a = np.asarray(ref) > threshold
    b = np.asarray(x) > threshold
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def align_labels(labels: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Labels for the top-1 decisions ``top`` (one per sample, or one per time step of a
    sequence output), in ``top``'s shape; ValueError when their sizes differ."""
    lab = np.asarray(labels)[: len(top)]
    if lab.size != top.size:
        raise ValueError(f"labels of shape {lab.shape} do not match the model's top-1 decisions {top.shape}")
    return lab.reshape(top.shape)


def chance_level(scores: np.ndarray, labels: np.ndarray | None = None) -> float | None:
    """Top-1 of a uniform guess: 1 / the number of classes (the class axis of ``scores``, the
    last one; else the distinct labels); None when there are fewer than two classes."""
    scores = np.asarray(scores)
    classes = scores.shape[-1] if scores.ndim >= 2 else (len(np.unique(labels)) if labels is not None else 0)
    return 1.0 / classes if classes >= 2 else None


def near_chance(value: float, reference: float, chance: float | None) -> bool:
    """Has a model that scored ``reference`` (top-1 fraction) fallen to chance at ``value``?
    True when it keeps less than a tenth of the reference's margin over chance (digits, 10
    classes, reference 99%: below 18.9%)."""
    if chance is None or reference <= chance:
        return False
    return value - chance <= 0.1 * (reference - chance)


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(x, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def fidelity_figures(ref: list[np.ndarray], cand: list[np.ndarray], output_names: list[str],
                     labels: np.ndarray | None = None) -> dict:
    """Fidelity of ``cand`` to ``ref`` (outputs in ``output_names`` order, samples on axis 0):
    ``output_kinds`` (:func:`output_kind` of each reference output), ``sqnr_db`` per output,
    ``top1_agreement`` when the first output is classifier-like (else ``top1_note`` says why
    not), ``mask_iou`` per probability-map output (masks thresholded at ``mask_threshold``)."""
    kinds = {n: output_kind(r, labels if i == 0 else None) for i, (n, r) in enumerate(zip(output_names, ref))}
    out: dict = {"output_kinds": kinds}
    first = output_names[0] if output_names else None
    if first is not None and kinds[first] in CLASSIFIER_KINDS:
        out["top1_output"] = first
        out["top1_agreement"] = float(np.mean(top1(ref[0]) == top1(cand[0])))
    elif first is not None:
        out["top1_note"] = (f"no top-1 figures: the first output {first!r} {list(np.shape(ref[0]))} is a "
                            f"{kinds[first]}, not class scores")
    out["sqnr_db"] = {n: sqnr_db(r, c) for n, r, c in zip(output_names, ref, cand)}
    iou = {n: mask_iou(r, c) for n, r, c in zip(output_names, ref, cand) if kinds[n] == PROBABILITY_MAP}
    if iou:
        out["mask_iou"] = iou
        out["mask_threshold"] = MASK_THRESHOLD
    return out


def fidelity(ref: list[np.ndarray], out: list[np.ndarray], output_names: list[str]) -> dict:
    """The report's ``fidelity`` section of a lossy pipeline: the optimized ONNX model's outputs
    (``out``) against the original model's (``ref``) on the sample inputs (no labels needed);
    figures as :func:`fidelity_figures`."""
    return {"reference": "the original model in onnxruntime", "data": "the sample inputs",
            "evaluated_on": "the optimized ONNX model in onnxruntime (the artifact is verified against it)",
            "samples": int(len(ref[0])) if ref and np.ndim(ref[0]) else 1} | fidelity_figures(ref, out, output_names)


def summary_text(section: dict | None) -> str | None:
    """One line for a report table: the figures of an ``accuracy`` or ``fidelity`` report
    section that apply to its kind of output (top-1 only for class scores, see
    :func:`output_kind`); None when it has none."""
    if not section:
        return None
    if "top1_drop_points" in section:
        return f"top-1 {100 * section['top1']:.2f}% (drop {section['top1_drop_points']:.2f} pts vs original)"
    kinds = section.get("output_kinds") or {}
    parts = []
    if "top1_agreement" in section:
        parts.append(f"agreement {100 * section['top1_agreement']:.2f}%")
    else:
        parts += [f"mask IoU {v:.3f} ({n}, > {section.get('mask_threshold', MASK_THRESHOLD):g})"
                  for n, v in (section.get("mask_iou") or {}).items()]
        parts += [f"SQNR {v:.1f} dB ({n}: {kinds.get(n, 'output')})" for n, v in (section.get("sqnr_db") or {}).items()]
    return "; ".join(parts) + " (fidelity, no labels)" if parts else None


def compare_models(reference: RunFn, candidate: RunFn, inputs: Mapping[str, np.ndarray],
                   labels: np.ndarray | None, ref_specs: list[TensorSpec], cand_specs: list[TensorSpec],
                   output_names: list[str], limit: int | None = None) -> dict:
    """Accuracy (with labels) and fidelity (always, :func:`fidelity_figures`) of ``candidate``
    against ``reference``.

    The first output is taken as the class scores for top-1 figures when it is classifier-like
    (:func:`output_kind`); other outputs get no top-1 figures, and labels are then not used.
    """
    cand, used = batched_outputs(candidate, inputs, cand_specs, limit)
    sub = {k: v[:used] for k, v in inputs.items()}
    ref, _ = batched_outputs(reference, sub, ref_specs)
    out: dict = {"samples": used, "samples_left_out": len(next(iter(inputs.values()))) - used}
    out |= fidelity_figures(ref, cand, output_names, np.asarray(labels)[:used] if labels is not None else None)
    if "top1_agreement" not in out:  # not class scores: SQNR / mask IoU only
        if labels is not None:
            out["top1_note"] += "; the labels were not used"
        return out
    ref_top, cand_top = top1(ref[0]), top1(cand[0])
    chance = chance_level(ref[0], labels)
    if labels is not None:
        lab = align_labels(labels, ref_top)
        out["top1_reference"] = float(np.mean(ref_top == lab))
        out["top1"] = float(np.mean(cand_top == lab))
        out["top1_drop_points"] = 100.0 * (out["top1_reference"] - out["top1"])
        value, reference, what = out["top1"], out["top1_reference"], "top-1"
    else:
        value, reference, what = out["top1_agreement"], 1.0, "top-1 agreement with the original"
    if chance is not None:
        out["chance_top1"] = chance
        out["near_chance"] = near_chance(value, reference, chance)
        if out["near_chance"]:
            out["note"] = (f"{what} {100 * value:.1f}% is near chance level ({100 * chance:.1f}% for "
                           f"{round(1 / chance)} classes): the model no longer classifies")
    return out

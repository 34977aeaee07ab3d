"""Accuracy and fidelity of a compiled or transformed model against the fp32 original.

With labels (an ``.npz`` with the model's input arrays and ``label``): top-1 accuracy of the
reference (onnxruntime on the original model) and of the candidate, and the drop in points.
Without labels: fidelity, i.e. top-1 agreement of the candidate with the reference and the
signal-to-quantization-noise ratio per output, SQNR = 10 log10(sum(ref^2) / sum((ref - x)^2)).

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

LABEL_KEY = "label"

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
    labels = data.get(LABEL_KEY)
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


def top1(logits: np.ndarray) -> np.ndarray:
    """Top-1 decisions: per time step of a ``[N, T, classes]`` output (a sequence model such as
    a CTC recognizer decides once per step), per sample otherwise (``[N, classes]``; any other
    shape flattened per sample)."""
    logits = np.asarray(logits)
    return logits.argmax(-1) if logits.ndim == 3 else logits.reshape(len(logits), -1).argmax(axis=1)


def align_labels(labels: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Labels for the top-1 decisions ``top`` (one per sample, or one per time step of a
    sequence output), in ``top``'s shape; ValueError when their sizes differ."""
    lab = np.asarray(labels)[: len(top)]
    if lab.size != top.size:
        raise ValueError(f"labels of shape {lab.shape} do not match the model's top-1 decisions {top.shape}")
    return lab.reshape(top.shape)


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(x, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def compare_models(reference: RunFn, candidate: RunFn, inputs: Mapping[str, np.ndarray],
                   labels: np.ndarray | None, ref_specs: list[TensorSpec], cand_specs: list[TensorSpec],
                   output_names: list[str], limit: int | None = None) -> dict:
    """Accuracy (with labels) and fidelity (always) of ``candidate`` against ``reference``.

    The first output is taken as the class scores for top-1 figures.
    """
    cand, used = batched_outputs(candidate, inputs, cand_specs, limit)
    sub = {k: v[:used] for k, v in inputs.items()}
    ref, _ = batched_outputs(reference, sub, ref_specs)
    out: dict = {"samples": used, "samples_left_out": len(next(iter(inputs.values()))) - used}
    ref_top, cand_top = top1(ref[0]), top1(cand[0])
    out["top1_agreement"] = float(np.mean(ref_top == cand_top))
    out["sqnr_db"] = {name: sqnr_db(r, c) for name, r, c in zip(output_names, ref, cand)}
    if labels is not None:
        lab = align_labels(labels, ref_top)
        out["top1_reference"] = float(np.mean(ref_top == lab))
        out["top1"] = float(np.mean(cand_top == lab))
        out["top1_drop_points"] = 100.0 * (out["top1_reference"] - out["top1"])
    return out

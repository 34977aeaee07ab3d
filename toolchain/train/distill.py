"""Label-free distillation: train a student to match a float teacher on unlabelled inputs.

One training loop for every training-time compression in optc (quantization-aware training,
learned channel gates, fine-tuning after pruning): the teacher is the original float model, the
data is an array of inputs (an ``.npz`` is enough), labels are optional.

* :func:`loss_kind` picks the output loss from the teacher's outputs with
  :func:`optc.accuracy.output_kind`: class scores (``[N, C]``, one decision per sample) use the
  temperature-scaled KL divergence of Hinton et al.; per-step class scores (``[N, T, C]``, a CTC
  recognizer) use the mean squared error between the output *probabilities* (measured on the
  PP-OCR recognizer, ``bench/README_quant.md``: KL over a 6625-class softmax is dominated by the
  many confident steps whose argmax never changes and fidelity falls after a few updates; the
  squared probability difference is largest at the near-ties that decide top-1 agreement, and
  fidelity rises steadily); every other output (detection maps, regressions, features) uses
  the mean squared error. MSE is normalised by the teacher's mean square so that losses of
  outputs with different scales add up. :attr:`Distillation.kinds` overrides the choice.
* :func:`distillation_loss` is that loss (plus ``label_weight`` x cross-entropy when labels
  are given and the output is a class-score output);
* :func:`teacher_outputs` runs the teacher in batches (never one forward pass over a whole
  data set: the recognizer's activations for a few hundred lines do not fit in memory);
* :func:`fit` is the loop: Adam, cosine learning rate to 0 (per epoch, or per step), seeded
  shuffling, one thread, an optional extra loss term (a sparsity penalty, ...), a step hook,
  fresh data per epoch (inputs and their teacher outputs from a callback, so that a model is
  not trained over and over on a few samples it then overfits), keeping the parameters of the
  epoch with the best fidelity, a wall-clock budget, and one progress line per epoch (loss,
  fidelity). It returns the recipe and the loss history, which reports record as they are.

torch is imported inside the functions only (see :mod:`optc.train`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UsageError
from . import TrainConfig

__all__ = ["Distillation", "KINDS", "loss_kind", "resolve_kinds", "check_kinds", "distillation_loss", "teacher_outputs", "fit", "FitHooks", "FitResult"]

KL = "kl"
KL_PROBS = "kl-probs"  # KL on outputs that are probabilities already (a softmax output): log taken
MSE = "mse"
MSE_PROBS = "mse-probs"  # MSE on softmax(output): logits or log-probabilities made probabilities
KINDS = (KL, KL_PROBS, MSE, MSE_PROBS)
_LOG_EPS = 1e-12


@dataclass(frozen=True)
class Distillation:
    """How the student is compared with the teacher.

    ``temperature`` scales the logits of the KL loss; ``label_weight`` in [0, 1] mixes in
    cross-entropy to labels when there are labels (0: labels ignored, pure distillation);
    ``kinds`` forces the loss per output (one of :data:`KINDS`; one kind for every output when
    a single one is given) instead of choosing it from the teacher's outputs (:func:`loss_kind`).
    ``"kl"`` and ``"mse-probs"`` compare class distributions: on outputs that are probabilities
    already they become ``"kl-probs"`` and ``"mse"`` (:func:`resolve_kinds`)."""

    temperature: float = 2.0
    label_weight: float = 0.0
    kinds: tuple[str, ...] | None = None


def _are_probabilities(t: np.ndarray) -> bool:
    """Every row along the last axis in [0, 1] and summing to 1 (a softmax output)."""
    rows = np.asarray(t).reshape(-1, t.shape[-1]).astype(np.float64)
    return bool(rows.size and rows.min() >= 0.0 and rows.max() <= 1.0
                and np.all(np.abs(rows.sum(-1) - 1.0) <= 1e-3))


def loss_kind(teacher_output: np.ndarray) -> str:
    """Class scores ``[N, C]``: ``"kl"``, or ``"kl-probs"`` when they are probabilities already
    (the loss then takes their log as the logits). Per-step class scores ``[N, T, C]``: MSE on
    the probabilities, ``"mse"`` when the outputs are probabilities, ``"mse-probs"`` (softmax
    first) when they are log-probabilities. Anything else: ``"mse"``."""
    from ..accuracy import CLASS_SCORES, SEQUENCE_SCORES, output_kind

    t = np.asarray(teacher_output)
    kind = output_kind(t)
    if kind == CLASS_SCORES:
        return KL_PROBS if _are_probabilities(t) else KL
    if kind == SEQUENCE_SCORES:
        return MSE if _are_probabilities(t) else MSE_PROBS
    return MSE


def resolve_kinds(forced: Sequence[str] | None, teacher_out: Sequence[np.ndarray]) -> list[str]:
    """The loss per output: :func:`loss_kind`, or ``forced`` (one kind per output, or one for
    all) with ``"kl"`` -> ``"kl-probs"`` and ``"mse-probs"`` -> ``"mse"`` on outputs that are
    probabilities already. UsageError for an unknown kind or a count that does not match."""
    if not forced:
        return [loss_kind(t) for t in teacher_out]
    check_kinds(forced)
    kinds = list(forced) * len(teacher_out) if len(forced) == 1 else list(forced)
    if len(kinds) != len(teacher_out):
        raise UsageError(f"{len(kinds)} loss kinds for {len(teacher_out)} outputs")
    probs = {KL: KL_PROBS, MSE_PROBS: MSE}
    return [probs[k] if k in probs and _are_probabilities(t) else k for k, t in zip(kinds, teacher_out)]


def check_kinds(kinds: Sequence[str]) -> None:
    """UsageError naming an unknown loss kind and the known ones (:data:`KINDS`)."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UsageError(f"unknown distillation loss {bad[0]!r} (one of {', '.join(KINDS)})")


def _softmax_np(t: np.ndarray) -> np.ndarray:
    e = np.exp(t.astype(np.float64) - t.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _class_axis_last(t):
    """Logits with the class axis last and every other axis flattened: ``[rows, C]``."""
    return t.reshape(-1, t.shape[-1])


def distillation_loss(student_outputs: Sequence, teacher_outputs: Sequence, kinds: Sequence[str], *,
                      config: Distillation = Distillation(), labels=None, scales: Sequence[float] | None = None):
    """The distillation loss summed over outputs (torch tensors, same order as ``kinds``).

    KL outputs (``"kl"``; ``"kl-probs"``: the same on ``log t`` and ``log s``):
    ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last axis (batch-mean), plus
    ``label_weight * CE(s, labels)`` on the first KL output when ``labels`` is given. MSE outputs:
    ``mean((s - t)^2) / scale`` with ``scale`` the teacher's mean square over the whole data set
    (``scales``; 1 if not given); ``"mse-probs"``: the same on ``softmax(s)`` and ``softmax(t)``
    over the last axis."""
    import torch.nn.functional as F

    total = 0.0
    used_labels = False
    for k, (s, t, kind) in enumerate(zip(student_outputs, teacher_outputs, kinds)):
        if kind in (KL, KL_PROBS):
            temp = config.temperature
            s2, t2 = _class_axis_last(s), _class_axis_last(t)
            if kind == KL_PROBS:  # log-probabilities are logits (softmax(log p) = p)
                s2, t2 = s2.clamp_min(_LOG_EPS).log(), t2.clamp_min(_LOG_EPS).log()
            kd = F.kl_div(F.log_softmax(s2 / temp, dim=1), F.log_softmax(t2 / temp, dim=1),
                          reduction="batchmean", log_target=True) * (temp * temp)
            if labels is not None and config.label_weight > 0 and not used_labels:
                used_labels = True
                kd = (1 - config.label_weight) * kd + config.label_weight * F.cross_entropy(s2, labels.reshape(-1))
            total = total + kd
        else:
            if kind == MSE_PROBS:
                s, t = s.softmax(-1), t.softmax(-1)
            scale = scales[k] if scales is not None else 1.0
            total = total + F.mse_loss(s, t) / max(scale, 1e-12)
    return total


TEACHER_BATCH = 16  # samples per teacher forward pass: the PP-OCR recognizer needs ~30 MB each


def teacher_outputs(teacher, x: np.ndarray, batch_size: int = TEACHER_BATCH) -> list[np.ndarray]:
    """The teacher's outputs on ``x`` (a torch module taking one input, eval mode, no grad), as
    numpy arrays, one per model output, computed ``batch_size`` samples at a time (only the
    outputs are kept for the whole of ``x``)."""
    import torch

    teacher.eval()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = teacher(torch.as_tensor(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append([o.detach().numpy() for o in outs])
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def _trainable(parameters) -> list:
    """Parameters that require grad, or parameter groups (dicts with ``params``) reduced to those."""
    items = list(parameters)
    if items and isinstance(items[0], dict):
        return [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
    return [p for p in items if p.requires_grad]


@dataclass
class FitResult:
    """What :func:`fit` did: the recipe and, per epoch, the mean loss and the fidelity callback's
    value; ``stopped_by_budget`` when the wall-clock budget ended training early."""

    recipe: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_budget: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "history": self.history, "seconds": round(self.seconds, 2),
                "stopped_by_budget": self.stopped_by_budget}


@dataclass(frozen=True)
class FitHooks:
    """What a caller of :func:`fit` adds to the plain loop: ``extra_loss()`` added to every
    step's loss (a sparsity penalty), ``after_step(step)`` after every optimiser step (clamping,
    projection), ``before_epoch(epoch)`` (0-based; e.g. freezing parameters for the last
    epoch), ``fidelity()`` evaluated and recorded after every epoch, a wall-clock
    ``time_budget_s`` (training stops after the epoch in which it ran out), and
    ``progress_step`` (a :class:`optc.progress.Step`) that gets one phase line per epoch.

    ``epoch_data(epoch)``: fresh training data for epoch ``epoch`` >= 1 (0-based), as
    ``(inputs, teacher outputs)`` (label-free); epoch 0 trains on ``fit``'s own ``x``.
    ``keep_best``: evaluate ``fidelity()`` before training too and, at the end, put back the
    parameters of the epoch with the highest fidelity (0: the untrained model); ``fidelity``
    should then be measured on held-out inputs, neither trained on nor the final test set.
    ``lr_per_step``: the cosine schedule decays over optimiser steps instead of epochs."""

    extra_loss: Callable[[], Any] | None = None
    after_step: Callable[[int], None] | None = None
    fidelity: Callable[[], float] | None = None
    time_budget_s: float | None = None
    progress_step: Any = None
    before_epoch: Callable[[int], None] | None = None
    epoch_data: Callable[[int], tuple[np.ndarray, Sequence[np.ndarray]]] | None = None
    keep_best: bool = False
    lr_per_step: bool = False


@dataclass
class _Batches:
    """The training tensors and the per-output loss set-up of one :func:`fit`."""

    x: Any
    teacher: list
    labels: Any
    kinds: list[str]
    scales: list[float]


def fit(student, x: np.ndarray, teacher_out: Sequence[np.ndarray], config: TrainConfig, *,
        distill: Distillation = Distillation(), labels: np.ndarray | None = None,
        hooks: FitHooks = FitHooks(), parameters=None) -> FitResult:
    """Train ``student`` (a torch module taking one input) to match ``teacher_out`` on ``x``.

    Adam (``config.lr``, ``config.weight_decay``) over ``parameters`` (default: all of the
    student's; or torch parameter groups, dicts with their own ``lr``), cosine learning rate
    to 0 over ``config.epochs`` (or over the steps, ``hooks.lr_per_step``), batches of
    ``config.batch_size`` in a seeded order, one thread, with the caller's ``hooks``
    (:class:`FitHooks`: fresh data per epoch, best epoch kept, ...). Returns a
    :class:`FitResult`; the student is left in eval mode."""
    import torch

    _check_fit_args(x, config, labels, hooks)
    data = _batches(x, teacher_out, labels, distill)
    result = FitResult(_recipe(x, config, distill, data.kinds, labels, hooks))
    params = _trainable(parameters if parameters is not None else student.parameters())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            _loop(student, data, params, config, (distill, hooks, result, t0))
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - t0
    student.eval()
    return result


def _check_fit_args(x: np.ndarray, config: TrainConfig, labels, hooks: FitHooks) -> None:
    if config.epochs < 0 or config.lr <= 0 or config.batch_size < 1:
        raise UsageError("epochs must be >= 0, lr > 0 and batch size >= 1")
    if len(x) == 0:
        raise UsageError("training needs at least one input sample")
    if hooks.epoch_data is not None and labels is not None:
        raise UsageError("fresh data per epoch is label-free: give no labels with it")
    if hooks.keep_best and hooks.fidelity is None:
        raise UsageError("keeping the best epoch needs a fidelity measure")


def _batches(x: np.ndarray, teacher_out: Sequence[np.ndarray], labels, distill: Distillation,
             like: _Batches | None = None) -> _Batches:
    """The tensors of one epoch's data; ``like``: an earlier epoch's, whose loss kinds and
    scales are kept (the loss stays the same function across epochs)."""
    import torch

    teacher_out = [np.asarray(t, np.float32) for t in teacher_out]
    if like is not None:
        kinds, scales = like.kinds, like.scales
        if len(teacher_out) != len(kinds) or len(x) != len(teacher_out[0]):
            raise UsageError(f"epoch data: {len(x)} inputs and {len(teacher_out)} teacher outputs do not match")
    else:
        kinds = resolve_kinds(distill.kinds, teacher_out)
        scales = [float(np.mean(np.square(_softmax_np(t) if k == MSE_PROBS else t))) or 1.0
                  for k, t in zip(kinds, teacher_out)]
    return _Batches(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)),
                    [torch.as_tensor(t) for t in teacher_out],
                    torch.as_tensor(np.asarray(labels, np.int64)) if labels is not None else None,
                    kinds, scales)


def _recipe(x, config: TrainConfig, distill: Distillation, kinds: list[str], labels, hooks: FitHooks) -> dict:
    fresh = hooks.epoch_data is not None
    return {"epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size,
            "seed": config.seed, "weight_decay": config.weight_decay, "samples": int(len(x)),
            "samples_per_epoch": "fresh" if fresh else "the same", "labels": labels is not None and distill.label_weight > 0,
            "loss": {**asdict(distill), "kinds": kinds}, "keep_best_epoch": hooks.keep_best,
            "optimizer": f"Adam, cosine learning rate to 0 per {'step' if hooks.lr_per_step else 'epoch'}, "
                         "seeded order, 1 thread"}


def _steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of ``n`` samples (a last batch of one is skipped)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 or (rest == 1 and n < 2) else 0)


def _loop(student, data: _Batches, params, config: TrainConfig, ctx: tuple) -> None:
    """The epochs of :func:`fit` (``ctx``: distillation, hooks, result, start time)."""
    import math

    import torch

    distill, hooks, result, t0 = ctx
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    total = max(config.epochs * _steps_per_epoch(len(data.x), config.batch_size), 1) if hooks.lr_per_step \
        else max(config.epochs, 1)
    if hooks.lr_per_step:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    best = _Best.start(student, hooks, result)
    step = 0
    for epoch in range(config.epochs):
        if epoch > 0 and hooks.epoch_data is not None:
            data = _batches(*hooks.epoch_data(epoch), None, distill, like=data)
        if hooks.before_epoch is not None:
            hooks.before_epoch(epoch)
        entry, step = _epoch(student, data, (opt, gen, step, sched if hooks.lr_per_step else None),
                             config, distill, hooks, epoch)
        if not hooks.lr_per_step:
            sched.step()
        result.history.append(entry)
        best.update(student, entry)
        if hooks.time_budget_s is not None and time.perf_counter() - t0 > hooks.time_budget_s \
                and epoch + 1 < config.epochs:
            result.stopped_by_budget = True
            break
    best.restore(student, result)


@dataclass
class _Best:
    """The parameters of the epoch with the highest fidelity so far (``hooks.keep_best``)."""

    enabled: bool
    fidelity: float = float("-inf")
    epoch: int = 0
    state: dict | None = None

    @classmethod
    def start(cls, student, hooks: FitHooks, result: FitResult) -> "_Best":
        best = cls(hooks.keep_best)
        if best.enabled:
            student.eval()
            entry = {"epoch": 0, "fidelity": float(hooks.fidelity())}
            result.history.append(entry)
            best.update(student, entry)
        return best

    def update(self, student, entry: dict) -> None:
        if self.enabled and entry.get("fidelity", float("-inf")) > self.fidelity:
            self.fidelity, self.epoch = entry["fidelity"], entry["epoch"]
            self.state = {k: v.detach().clone() for k, v in student.state_dict().items()}

    def restore(self, student, result: FitResult) -> None:
        if self.enabled and self.state is not None:
            student.load_state_dict(self.state)
            result.recipe["kept_epoch"] = self.epoch


def _epoch(student, data: _Batches, state: tuple, config: TrainConfig, distill: Distillation,
           hooks: FitHooks, epoch: int) -> tuple[dict, int]:
    """One pass over the data in a seeded order (``state``: optimiser, generator, steps so
    far, the scheduler when it steps per update); returns the epoch's history entry and the
    step count."""
    import torch

    opt, gen, step, sched = state
    student.train()
    n = len(data.x)
    perm = torch.randperm(n, generator=gen)
    total, batches = 0.0, 0
    for start in range(0, n, config.batch_size):
        idx = perm[start:start + config.batch_size]
        if len(idx) < 2 and n >= 2:
            continue
        opt.zero_grad(set_to_none=True)
        out = student(data.x[idx])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = distillation_loss(outs, [t[idx] for t in data.teacher], data.kinds, config=distill,
                                 labels=data.labels[idx] if data.labels is not None else None, scales=data.scales)
        if hooks.extra_loss is not None:
            loss = loss + hooks.extra_loss()
        if not torch.isfinite(loss):
            raise UsageError(f"training diverged at epoch {epoch + 1} (loss {float(loss)}); lower the learning rate")
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        step += 1
        if hooks.after_step is not None:
            hooks.after_step(step)
        total += float(loss.detach())
        batches += 1
    student.eval()
    entry = {"epoch": epoch + 1, "loss": total / max(batches, 1)}
    if hooks.fidelity is not None:
        entry["fidelity"] = float(hooks.fidelity())
    if hooks.progress_step is not None:
        fid = f", fidelity {entry['fidelity']:.4f}" if "fidelity" in entry else ""
        hooks.progress_step.phase(f"epoch {epoch + 1}/{config.epochs}: loss {entry['loss']:.4g}{fid}")
    return entry, step

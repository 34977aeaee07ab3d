"""Pruning passes: structured channel pruning, removal of exactly-constant channels, and
unstructured magnitude sparsity.

* ``prune`` removes whole output channels of Conv/Gemm/MatMul layers and the matching input
  channels of every consumer, so the result is a smaller *dense* model: fewer parameters,
  fewer FLOPs, and real speed-ups on any backend.
* ``prune-zero`` removes channels whose output is exactly constant (all-zero filters, or a
  BatchNorm scale of 0), folding the constant into the consumers: outputs are unchanged.
* ``sparsify`` zeroes the smallest weights (edge sparsity). It saves storage only after
  compression; optc's TVM backend has dense kernels only, so it saves no time.

The work is split in three steps, each testable on its own:

1. dependency analysis (:mod:`optc.passes.prune_groups`): channel groups, i.e. which tensors'
   channel axes are tied (residual ``Add``, ``Concat`` offsets, depthwise and grouped
   convolutions, Flatten into a Gemm), and every constant a removal must slice; patterns it
   does not understand *freeze* the groups involved, with the reason in the pass details;
2. a criterion scores the channels of each group (:func:`channel_scores`) and
   :func:`select_channels` picks the kept ones under the ratio, ``min-channels``,
   ``multiple`` and per-group-block constraints;
3. the rewrite (:meth:`ChannelAnalysis.apply`) slices the constants.
"""

from __future__ import annotations

import fnmatch
import math
import zlib
from dataclasses import field
from typing import ClassVar, Optional

import numpy as np
import onnx_ir as ir

from optc.errors import UsageError
from optc.pipeline import Pass, PassResult, register_pass

from .prune_groups import ChannelAnalysis, ChannelGroup, Flat, analyze, const_array

__all__ = [
    "Prune",
    "PruneZero",
    "Sparsify",
    "CRITERIA",
    "channel_scores",
    "select_channels",
    "model_costs",
    "keep_count",
]

CRITERIA = ("l1", "l2", "bn-scale", "random")


# ---------------------------------------------------------------------------------------------
# Costs (for details)


def model_costs(model: ir.Model) -> dict:
    """Parameters, FLOPs and serialized size of ``model``; dynamic input dims count as 1."""
    from optc import analysis

    from optc.onnx_utils import unit_dynamic_dims

    proto = ir.serde.serialize_model(model)
    size = proto.ByteSize()
    proto = unit_dynamic_dims(proto)
    try:
        s = analysis.summarize(proto, per_layer=False)
        return {"params": s["params"], "flops": s["flops"], "onnx_bytes": size}
    except Exception:  # costs are informative only
        return {"params": analysis.parameter_count(proto), "flops": None, "onnx_bytes": size}


# ---------------------------------------------------------------------------------------------
# Names: ratios=..., exclude=...


def _matches(group: ChannelGroup, pattern: str) -> bool:
    return any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in [group.name, *group.names])


def _check_patterns(groups: list[ChannelGroup], patterns, what: str) -> None:
    unknown = [p for p in patterns if not any(_matches(g, p) for g in groups)]
    if unknown:
        names = ", ".join(g.name for g in groups) or "none"
        raise UsageError(f"prune: {what} {', '.join(map(repr, unknown))} match no layer "
                         f"(channel groups: {names})")


# ---------------------------------------------------------------------------------------------
# Criteria


def _rows(arr: np.ndarray, axis: int) -> np.ndarray:
    """``arr`` with ``axis`` first and the rest flattened: one row per channel."""
    return np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1).astype(np.float64)


def channel_scores(analysis: ChannelAnalysis, group: ChannelGroup, criterion: str,
                   seed: int = 0) -> tuple[np.ndarray, str]:
    """Importance of each channel of ``group`` (higher = keep) and the criterion used.

    * ``l1`` / ``l2``: norm of each producer's filter (weight slice of the output channel),
      divided by that producer's mean filter norm so tied producers weigh alike, summed over
      the group's producers;
    * ``bn-scale`` (network slimming): ``|gamma|`` of the BatchNorms applied to the group's
      channels, normalised and summed the same way; a group without BatchNorm falls back to
      ``l1`` (run ``prune`` before ``fuse-bn`` to use this criterion);
    * ``random``: a seeded random order (a baseline).
    """
    c = group.channels
    if criterion == "random":
        return np.random.default_rng([seed, group.id]).random(c), "random"
    if criterion == "bn-scale":
        scores = np.zeros(c)
        found = False
        for step in analysis.steps:
            if step.role == "bn" and len(step.output.layout) == 1 and analysis.find(step.output.layout[0]) == group.id:
                gamma = np.abs(const_array(step.node.inputs[1]).astype(np.float64))
                scores += gamma / max(gamma.mean(), 1e-12)
                found = True
        if found:
            return scores, "bn-scale"
        criterion = "l1"
    scores = np.zeros(c)
    for p in group.producers:
        w = const_array(p.node.inputs[p.weight])
        rows = _rows(w, p.axis)
        norm = np.abs(rows).sum(1) if criterion == "l1" else np.sqrt((rows ** 2).sum(1))
        scores += norm / max(norm.mean(), 1e-12)
    return scores / max(len(group.producers), 1), criterion


def select_channels(scores: np.ndarray, keep: int, blocks: int = 1) -> np.ndarray:
    """The ``keep`` highest-scoring channel indices (sorted), the same number in each of
    ``blocks`` contiguous blocks (``keep`` must be a multiple of ``blocks``). Ties keep the
    lower index."""
    c = len(scores)
    per = keep // blocks
    size = c // blocks
    kept = []
    for b in range(blocks):
        s = scores[b * size:(b + 1) * size]
        order = np.lexsort((np.arange(size), -s))  # descending score, then ascending index
        kept.append(np.sort(order[:per]) + b * size)
    return np.concatenate(kept).astype(np.int64)


def keep_count(channels: int, ratio: float, *, min_channels: int = 1, multiple: int = 1,
               blocks: int = 1) -> int:
    """Channels kept when removing ``ratio`` of ``channels``. Exact counts (``multiple`` and
    ``blocks`` 1): ``C - floor(ratio * C)``, at least ``min_channels`` (and 1). With a step
    (the lcm of ``multiple`` and ``blocks``): the multiple of the step *nearest* to
    ``C * (1 - ratio)`` (ties up), at least one step and ``min_channels`` rounded up, never
    above ``channels``. Nearest, not up: rounding up to 8 kept every channel of the 16-, 32-
    and 64-channel layers at ratio 0.1 (YOLOv8n lost 2 % of its FLOPs for a 10 % request)."""
    step = math.lcm(max(multiple, 1), max(blocks, 1))
    floor_keep = max(channels - int(math.floor(ratio * channels + 1e-9)), min_channels, 1)
    if step == 1:
        return min(floor_keep, channels)
    nearest = int(math.floor(channels * (1.0 - ratio) / step + 0.5 + 1e-9)) * step
    keep = max(nearest, step, int(math.ceil(max(min_channels, 1) / step)) * step)
    return channels if keep >= channels else keep


# ---------------------------------------------------------------------------------------------
# prune


def _fraction(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


@register_pass("prune")
class Prune(Pass):
    """Structured pruning: remove whole output channels of Conv/Gemm/MatMul and the consumers' inputs.

    Assumes: constant weights; channels on axis 1 (NCHW) for convolutions, the last axis for
    MatMul. Guarantees: a valid model with the same inputs and outputs (graph outputs'
    channels are never pruned, so the last layer keeps its outputs); pruned channels are
    exactly those whose removal equals zeroing their filters *and* everything they feed
    (tests check: the pruned model equals the original with the removed channels' producer
    filters, biases and BatchNorm shifts zeroed where the channel reaches a consumer only
    through channel-wise ops). Channels tied by a residual Add, a Concat, a depthwise or a
    grouped convolution are removed together (a *group*); a group the analysis does not
    understand is left alone, with the reason in the details.

    Math: a group with C channels and ratio r keeps ``max(C - floor(r C), min-channels)``
    channels, or with ``multiple`` (and the convolution groups it feeds) the multiple nearest
    to ``C (1 - r)`` (:func:`keep_count`); the kept ones have the highest criterion scores (see :func:`channel_scores`).
    ``scope=global``: one threshold on the normalised scores of all prunable groups removes
    ``floor(r * total)`` channels overall, then each group's count is rounded as above
    (with ``ratios`` given, the per-layer mode is used).
    Not idempotent: each run removes ``ratio`` of what is left.

    ``multiple`` left unset in a compile pipeline is the target's fp32 SIMD lanes (8 on AVX2,
    16 on AVX-512, 4 on NEON; ``Pass.target_params``), so kept counts stay on the vectorized
    schedules (45 of 64 channels kept would fall off them and run slower than all 64); the
    package's pipeline records the value used. ``multiple=1`` asks for exact counts.
    """

    idempotent: ClassVar[bool] = False
    lossy: ClassVar[bool] = True  # outputs change: compile verifies against the pruned ONNX
    compression: ClassVar[bool] = True
    target_params: ClassVar[dict[str, str]] = {"multiple": "channel_multiple"}

    ratio: float = field(default=0.0, metadata={"doc": "fraction of channels to remove in every group"})
    # Optional (default none) rather than an empty dict: an empty dict has no pipeline text
    # that parses back, and artifacts record every parameter spelled out.
    ratios: Optional[dict[str, float]] = field(default=None, metadata={
        "doc": "per-layer ratios NAME:R,... (node or weight names, glob patterns); override ratio"})
    criterion: str = field(default="l1", metadata={"doc": "l1, l2, bn-scale (|BatchNorm gamma|) or random"})
    scope: str = field(default="layer", metadata={"doc": "layer: ratio per group; global: one threshold over all"})
    exclude: tuple[str, ...] = field(default=(), metadata={"doc": "layers never pruned (names or globs)"})
    min_channels: int = field(default=1, metadata={"doc": "channels every group keeps at least"})
    multiple: int = field(default=1, metadata={
        "doc": "round kept channels to the nearest multiple of this (compile: the target's fp32 SIMD lanes unless set)"})
    seed: int = field(default=0, metadata={"doc": "seed of the random criterion"})

    def __post_init__(self):
        _fraction("ratio", self.ratio)
        self.ratios = dict(self.ratios or {})
        for k, v in self.ratios.items():
            _fraction(f"ratio of {k!r}", v)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)} (prune-zero removes zero channels)")
        if self.scope not in ("layer", "global"):
            raise ValueError("scope must be layer or global")
        if self.min_channels < 1 or self.multiple < 1:
            raise ValueError("min-channels and multiple must be >= 1")

    def cleanup_exclusions(self) -> frozenset[str]:
        # bn-scale reads the BatchNorms' gamma: fuse-bn must not fold them away first
        return frozenset({"fuse-bn"}) if self.criterion == "bn-scale" else frozenset()

    def call(self, model: ir.Model) -> PassResult:
        before = model_costs(model)
        an = analyze(model)
        groups = an.roots()
        _check_patterns(groups, list(self.ratios), "ratios for")
        _check_patterns(groups, self.exclude, "exclude")
        plan = self.plan(an)
        kept = {gid: k for gid, (k, _, _) in plan.items() if len(k) < an.groups[gid].channels}
        changed = an.apply(kept) if kept else 0
        after = model_costs(model) if changed else before
        rows = []
        for g in groups:
            k, ratio, used = plan.get(g.id, (None, None, None))
            rows.append({"name": g.name, "members": [p.node.name for p in g.producers],
                         "channels": g.channels, "kept": g.channels if k is None else int(len(k)),
                         "ratio": ratio, "criterion": used,
                         **({"frozen": g.frozen} if g.frozen else {})})
        details = {
            "criterion": self.criterion, "scope": self.scope, "multiple": self.multiple,
            "params_before": before["params"], "params_after": after["params"],
            "flops_before": before["flops"], "flops_after": after["flops"],
            "costs_note": "FLOPs per inference with dynamic input dims (batch) counted as 1",
            "onnx_bytes_before": before["onnx_bytes"], "onnx_bytes_after": after["onnx_bytes"],
            "channels_removed": int(sum(r["channels"] - r["kept"] for r in rows)),
            "groups": rows,
        }
        if not changed:
            details["unchanged"] = self._why_unchanged(groups, plan)
        return PassResult(model, bool(changed), details)

    def _why_unchanged(self, groups: list[ChannelGroup], plan: dict) -> str:
        """Why no channel was removed (for the pipeline's warning)."""
        if not any(g.prunable for g in groups):
            frozen = [f"{g.name}: {'; '.join(g.frozen)}" for g in groups if g.frozen][:3]
            return "no prunable channel group" + (f" ({', '.join(frozen)})" if frozen else "")
        if not plan:
            return "every prunable channel group is excluded"
        if self.ratio == 0 and not any(self.ratios.values()):
            return "ratio is 0"
        return "after rounding (min-channels, multiple) every group keeps all its channels"

    def ratio_of(self, group: ChannelGroup) -> float | None:
        """The ratio for ``group`` (None: excluded). A per-layer ratio naming any member of a
        tied group applies to the group; if several do, the smallest wins."""
        if any(_matches(group, p) for p in self.exclude):
            return None
        given = [r for p, r in self.ratios.items() if _matches(group, p)]
        return min(given) if given else self.ratio

    def plan(self, an: ChannelAnalysis) -> dict[int, tuple[np.ndarray, float, str]]:
        """Group id -> (kept indices, ratio, criterion used) for every prunable group."""
        out = {}
        cands = [(g, self.ratio_of(g)) for g in an.roots() if g.prunable]
        cands = [(g, r) for g, r in cands if r is not None]
        scored = {g.id: channel_scores(an, g, self.criterion, self.seed) for g, _ in cands}
        if self.scope == "global" and not self.ratios:
            allscores = np.concatenate([scored[g.id][0] for g, _ in cands]) if cands else np.zeros(0)
            remove = int(math.floor(self.ratio * len(allscores) + 1e-9))
            thresh = np.sort(allscores)[remove - 1] if remove else -np.inf
            for g, _ in cands:
                s, used = scored[g.id]
                r = float(np.count_nonzero(s <= thresh)) / g.channels
                keep = keep_count(g.channels, r, min_channels=self.min_channels,
                                  multiple=self.multiple, blocks=g.blocks)
                out[g.id] = (select_channels(s, keep, g.blocks), round(r, 4), used)
            return out
        for g, r in cands:
            s, used = scored[g.id]
            keep = keep_count(g.channels, r, min_channels=self.min_channels, multiple=self.multiple,
                              blocks=g.blocks)
            out[g.id] = (select_channels(s, keep, g.blocks), r, used)
        return out


# ---------------------------------------------------------------------------------------------
# prune-zero: constant channels


def _unary_const(node: ir.Node, k: np.ndarray) -> np.ndarray:
    """The op applied to per-channel constants (NaN: not computed, i.e. not constant)."""
    op = node.op_type
    a = lambda n, d: float(node.attributes[n].value) if n in node.attributes else d  # noqa: E731
    with np.errstate(all="ignore"):
        if op in ("Identity", "Dropout"):
            return k
        if op == "Relu":
            return np.where(np.isnan(k), np.nan, np.maximum(k, 0.0))
        if op == "LeakyRelu":
            return np.where(k >= 0, k, a("alpha", 0.01) * k)
        if op == "Clip":
            lo = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            hi = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            if (len(node.inputs) > 1 and node.inputs[1] is not None and lo is None) or \
               (len(node.inputs) > 2 and node.inputs[2] is not None and hi is None):
                return np.full_like(k, np.nan)
            out = k
            if lo is not None:
                out = np.where(np.isnan(out), np.nan, np.maximum(out, float(lo)))
            if hi is not None:
                out = np.where(np.isnan(out), np.nan, np.minimum(out, float(hi)))
            return out
        if op == "Sigmoid":
            return 1.0 / (1.0 + np.exp(-k))
        if op == "HardSigmoid":
            return np.clip(a("alpha", 0.2) * k + a("beta", 0.5), 0, 1)
        if op == "HardSwish":
            return k * np.clip(k / 6 + 0.5, 0, 1)
        if op == "Tanh":
            return np.tanh(k)
        if op == "Neg":
            return -k
        if op == "Abs":
            return np.abs(k)
    return np.full_like(k, np.nan)


def _channel_values(c: np.ndarray, axis: int, out_rank: int, channels: int) -> np.ndarray | None:
    """Per-channel values of a constant operand broadcast over a tensor of rank ``out_rank``
    with channels on ``axis``; None if it varies along another axis."""
    cax = axis - (out_rank - c.ndim)
    other = [d for i, d in enumerate(c.shape) if i != cax]
    if any(d != 1 for d in other):
        return None
    if cax < 0 or c.shape[cax] == 1:
        return np.full(channels, float(np.asarray(c).reshape(-1)[0]) if c.size else np.nan)
    return np.asarray(c, np.float64).reshape(-1)


def _eltwise_const(op: str, ks: list[np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"):
        if op == "Mul":  # x * 0 = 0 whatever x is (finite activations)
            zero = np.any([k == 0 for k in ks], axis=0)
            return np.where(zero, 0.0, np.prod(ks, axis=0))
        if op in ("Add", "Sum"):
            return np.sum(ks, axis=0)
        if op == "Mean":
            return np.mean(ks, axis=0)
        if op == "Sub":
            return ks[0] - ks[1]
        if op == "Div":
            return ks[0] / ks[1]
        if op == "Max":
            return np.max(ks, axis=0)
        if op == "Min":
            return np.min(ks, axis=0)
        if op == "PRelu":
            return np.where(ks[0] >= 0, ks[0], ks[1] * ks[0])
        if op == "Pow":
            return np.power(ks[0], ks[1])
    return np.full_like(ks[0], np.nan)


def _no_padding(node: ir.Node) -> bool:
    auto = node.attributes.get("auto_pad")
    if auto is not None and auto.value not in ("NOTSET", "VALID"):
        return False
    pads = node.attributes.get("pads")
    return pads is None or not any(pads.value)


class _ConstantChannels:
    """Follows per-channel constants through the steps of an analysis (NaN = not constant) and
    finds, per group, the channels every consumer sees as an absorbable constant."""

    def __init__(self, an: ChannelAnalysis, atol: float):
        self.an = an
        self.atol = atol
        self.values: dict[ir.Value, np.ndarray] = {}
        self.bad: dict[int, np.ndarray] = {g.id: np.zeros(g.channels, bool) for g in an.roots()}
        self.folds: list[tuple] = []  # (step, input state, constants per position)

    def _positions(self, state) -> list[tuple[int, int]]:
        out = []
        for g in state.layout:
            r = self.an.find(g)
            out += [(r, c) for c in range(self.an.groups[r].channels)]
        return out

    def mark(self, state, ok: np.ndarray) -> None:
        for (r, c), good in zip(self._positions(state), ok):
            if not good:
                self.bad[r][c] = True

    def run(self) -> dict[int, np.ndarray]:
        an = self.an
        for step in an.steps:
            node = step.node
            x = node.inputs[0]
            k_in = self.values.get(x) if step.inputs and step.inputs[0] is not None else None
            if step.inputs and step.inputs[0] is not None:
                self.consume(step, k_in)
            out = node.outputs[0]
            n = an.layout_channels(step.output.layout) if step.output is not None else 0
            if step.role == "producer":
                self.values[out] = self.producer_const(step)
            elif step.role == "depthwise":
                w = const_array(node.inputs[1]).astype(np.float64)
                b = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
                b = np.zeros(n) if b is None else b.astype(np.float64)
                zero = np.all(np.abs(w.reshape(n, -1)) <= self.atol, axis=1)
                pass_k = np.where((k_in == 0) | _no_padding(node), k_in * w.reshape(n, -1).sum(1) + b, np.nan)
                self.values[out] = np.where(zero, b, pass_k)
            elif step.role == "bn":
                g, beta, mean, var = (const_array(v).astype(np.float64) for v in node.inputs[1:5])
                eps = float(node.attributes["epsilon"].value) if "epsilon" in node.attributes else 1e-5
                s = g / np.sqrt(var + eps)
                self.values[out] = np.where(g == 0, beta, (k_in - mean) * s + beta)
            elif step.role == "unary":
                self.values[out] = _unary_const(node, k_in)
            elif step.role == "pool":
                keep = node.op_type in ("MaxPool", "GlobalMaxPool", "GlobalAveragePool") or (
                    node.op_type == "AveragePool" and (_no_padding(node) or int(
                        node.attributes["count_include_pad"].value if "count_include_pad" in node.attributes else 0) == 0))
                self.values[out] = k_in if keep else np.where(k_in == 0, 0.0, np.nan)
            elif step.role == "reshape":
                self.values[out] = k_in
            elif step.role == "concat":
                ks = [self.values[v] for v in node.inputs]
                st = step.output
                axis = int(node.attributes["axis"].value) % st.rank
                if axis == st.axis:
                    self.values[out] = np.concatenate(ks)
                else:
                    self.values[out] = np.where(np.all([k == ks[0] for k in ks], axis=0), ks[0], np.nan)
            elif step.role == "eltwise":
                st = step.output
                ks = []
                for v, s in zip(node.inputs, step.inputs):
                    if s is not None:
                        ks.append(self.values[v])
                    else:
                        cv = _channel_values(const_array(v), st.axis, st.rank, n)
                        ks.append(np.full(n, np.nan) if cv is None else cv)
                self.values[out] = _eltwise_const(node.op_type, ks)
        return {gid: ~bad for gid, bad in self.bad.items()}

    def producer_const(self, step) -> np.ndarray:
        p = step.producer
        node = p.node
        w = const_array(node.inputs[p.weight]).astype(np.float64)
        zero = np.all(np.abs(_rows(w, p.axis)) <= self.atol, axis=1)
        n = len(zero)
        b = const_array(node.inputs[p.bias]) if p.bias is not None and len(node.inputs) > p.bias \
            and node.inputs[p.bias] is not None else None
        if b is None:
            bias = np.zeros(n)
        elif p.kind == "gemm":
            beta = float(node.attributes["beta"].value) if "beta" in node.attributes else 1.0
            b2 = np.broadcast_to(np.asarray(b, np.float64), (1, n) if b.ndim <= 1 else b.shape)
            rows_equal = np.all(b2 == b2[:1], axis=0)
            bias = np.where(rows_equal, beta * b2[0], np.nan)
        else:
            bias = np.asarray(b, np.float64).reshape(-1)
        return np.where(zero, bias, np.nan)

    def consume(self, step, k: np.ndarray) -> None:
        """Check a consumer of a tracked input; record the folds it needs."""
        st = step.inputs[0]
        node = step.node
        if step.role not in ("producer",):
            return  # channel-wise ops only pass constants on
        finite = ~np.isnan(k)
        if node.op_type == "MatMul" or (node.op_type == "Conv" and not _no_padding(node)):
            ok = finite & (k == 0)
        else:
            ok = finite
        if node.op_type == "Gemm":
            beta = float(node.attributes["beta"].value) if "beta" in node.attributes else 1.0
            if beta == 0:
                ok = finite & (k == 0)
        self.mark(st, ok)
        self.folds.append((step, st, k))


def _fold(an: ChannelAnalysis, folds, removed: dict[int, np.ndarray], writer) -> int:
    """Add the contribution of removed constant channels to the consumers' biases."""
    count = 0
    for step, st, k in folds:
        node = step.node
        idx_keep, full = an.indices(st.layout, {g: np.setdiff1d(np.arange(an.groups[g].channels), r)
                                                for g, r in removed.items()})
        gone = np.setdiff1d(np.arange(full), idx_keep)
        kk = np.where(np.isnan(k), 0.0, k)[gone]
        if not len(gone) or not np.any(kk):
            continue
        w = const_array(node.inputs[1]).astype(np.float64)
        if node.op_type == "Conv":
            g = int(node.attributes["group"].value) if "group" in node.attributes else 1
            cin_g, rows_g = w.shape[1], w.shape[0] // g
            delta = np.zeros(w.shape[0])
            wsum = w.reshape(w.shape[0], cin_g, -1).sum(2)
            for c, val in zip(gone, kk):
                j = c // cin_g
                delta[j * rows_g:(j + 1) * rows_g] += val * wsum[j * rows_g:(j + 1) * rows_g, c - j * cin_g]
            bias_index = 2
        else:  # Gemm (MatMul only accepts zero constants)
            alpha = float(node.attributes["alpha"].value) if "alpha" in node.attributes else 1.0
            beta = float(node.attributes["beta"].value) if "beta" in node.attributes else 1.0
            bt = w.T if (int(node.attributes["transB"].value) if "transB" in node.attributes else 0) else w
            spatial = st.spatial if isinstance(st, Flat) else 1
            rows = bt.reshape(full, spatial, -1).sum(1)  # channel -> summed rows of its block
            delta = alpha * (kk[:, None] * rows[gone]).sum(0) / (beta if beta else 1.0)
            bias_index = 2
        old = const_array(node.inputs[bias_index]) if len(node.inputs) > bias_index and \
            node.inputs[bias_index] is not None else None
        dt = const_array(node.inputs[1]).dtype
        new = (delta if old is None else np.asarray(old, np.float64) + delta).astype(dt)
        writer.write(node, bias_index, new)
        count += 1
    return count


@register_pass("prune-zero")
class PruneZero(Pass):
    """Remove channels whose output is exactly constant (zero filters), folding the constant into consumers.

    Assumes: structures already zeroed by training (Bernoulli gates, STE masks, L0/L1
    penalties): a producer filter and bias of exactly 0 (``|w| <= atol``), or a BatchNorm
    scale gamma of 0. Guarantees: outputs unchanged (up to float rounding of the folded
    biases) when ``atol`` is 0. Idempotent: a second run finds nothing.

    Math: a channel is followed through the channel-wise ops with its constant value k
    (zero filter + bias b gives k = b; BatchNorm maps k to (k - mean) gamma / sqrt(var + eps)
    + beta, or to beta when gamma = 0; ReLU to max(k, 0); pooling keeps k; a residual Add
    adds the constants of both operands). It is removable if every consumer sees a constant
    it can absorb: k = 0 always; k != 0 into a Gemm (bias += alpha k B[c, :] / beta, a
    flattened C*H*W block sums its rows) or into an unpadded Conv (bias[o] += k sum W[o, c]);
    a padded Conv sees k only inside the image, so k != 0 there is *not* exactly removable
    and the channel stays (the reason is counted in the details).
    """

    compression: ClassVar[bool] = True

    atol: float = field(default=0.0, metadata={"doc": "weights with |w| <= atol count as zero"})

    def __post_init__(self):
        if self.atol < 0:
            raise ValueError("atol must be >= 0")

    def call(self, model: ir.Model) -> PassResult:
        from .prune_groups import _ConstWriter

        before = model_costs(model)
        an = analyze(model)
        cc = _ConstantChannels(an, self.atol)
        ok = cc.run()
        removed: dict[int, np.ndarray] = {}
        rows = []
        for g in an.roots():
            cand = ok[g.id]
            row = {"name": g.name, "channels": g.channels, "constant": int(cand.sum())}
            if g.frozen:
                row["frozen"] = g.frozen
                rows.append(row | {"kept": g.channels})
                continue
            size = g.channels // g.blocks
            per_block = [np.flatnonzero(cand[b * size:(b + 1) * size]) + b * size for b in range(g.blocks)]
            n = min(min(len(p) for p in per_block), size - 1)  # keep >= 1 channel per block
            gone = np.concatenate([p[:n] for p in per_block]) if n > 0 else np.zeros(0, np.int64)
            if len(gone):
                removed[g.id] = gone
            rows.append(row | {"kept": g.channels - len(gone)})
        changed = 0
        if removed:
            writer = _ConstWriter(model.graph)
            _fold(an, cc.folds, removed, writer)
            writer.drop_unused()
            kept = {gid: np.setdiff1d(np.arange(an.groups[gid].channels), r) for gid, r in removed.items()}
            changed = an.apply(kept) or 1
        after = model_costs(model) if changed else before
        details = {
            "params_before": before["params"], "params_after": after["params"],
            "flops_before": before["flops"], "flops_after": after["flops"],
            "channels_removed": int(sum(len(r) for r in removed.values())),
            "groups": rows,
        }
        if not changed:
            details["unchanged"] = "no channel is exactly constant (or none can be folded exactly)"
        return PassResult(model, bool(changed), details)


# ---------------------------------------------------------------------------------------------
# sparsify


_WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _compressed_bytes(arrays) -> int:
    return sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6)) for a in arrays)


@register_pass("sparsify")
class Sparsify(Pass):
    """Unstructured magnitude sparsity: zero the smallest weights of Conv/Gemm/MatMul (storage only, no speed-up).

    Assumes: constant weights (input 1 of Conv, ConvTranspose, Gemm, MatMul; biases are left
    dense). Guarantees: in each weight tensor (``scope=layer``) or over all of them
    (``scope=global``) at least ``floor(sparsity * n)`` weights are exactly 0, the ones of
    smallest |w| (ties: lower flat index first); idempotent (a second run finds the zeros
    already there and changes nothing).

    Honest accounting: the dense tensors keep their size; the saving is in *compressed*
    storage (the details give zlib-compressed bytes before/after). optc's TVM backend has no
    sparse kernels, so a sparse model runs exactly as fast as the dense one; use ``prune``
    (structured) for speed.
    """

    lossy: ClassVar[bool] = True
    compression: ClassVar[bool] = True

    sparsity: float = field(default=0.5, metadata={"doc": "fraction of weights set to zero"})
    ratios: Optional[dict[str, float]] = field(default=None, metadata={"doc": "per-layer sparsity NAME:S,..."})
    scope: str = field(default="layer", metadata={"doc": "layer: per tensor; global: one magnitude threshold"})
    exclude: tuple[str, ...] = field(default=(), metadata={"doc": "layers left dense (names or globs)"})

    def __post_init__(self):
        _fraction("sparsity", self.sparsity)
        self.ratios = dict(self.ratios or {})
        for k, v in self.ratios.items():
            _fraction(f"sparsity of {k!r}", v)
        if self.scope not in ("layer", "global"):
            raise ValueError("scope must be layer or global")

    def _layers(self, model: ir.Model) -> list[tuple[ir.Node, ir.Value, np.ndarray]]:
        out, seen = [], set()
        for node in model.graph:
            i = _WEIGHT_OPS.get(node.op_type)
            if i is None or node.domain not in ("", "ai.onnx") or len(node.inputs) <= i:
                continue
            v = node.inputs[i]
            arr = const_array(v)
            if arr is None or arr.dtype.kind != "f" or arr.ndim < 2 or id(v) in seen:
                continue
            seen.add(id(v))
            out.append((node, v, arr))
        return out

    @staticmethod
    def _names(node: ir.Node, v: ir.Value) -> list[str]:
        return [n for n in (node.name, v.name) if n]

    def _match(self, node, v, pattern) -> bool:
        return any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in self._names(node, v))

    def call(self, model: ir.Model) -> PassResult:
        layers = self._layers(model)
        for what, pats in (("ratios for", list(self.ratios)), ("exclude", self.exclude)):
            bad = [p for p in pats if not any(self._match(n, v, p) for n, v, _ in layers)]
            if bad:
                raise UsageError(f"sparsify: {what} {', '.join(map(repr, bad))} match no weight "
                                 f"(layers: {', '.join(n.name or v.name for n, v, _ in layers)})")
        chosen = []
        for node, v, arr in layers:
            if any(self._match(node, v, p) for p in self.exclude):
                continue
            given = [s for p, s in self.ratios.items() if self._match(node, v, p)]
            chosen.append((node, v, arr, min(given) if given else self.sparsity))
        before_c = _compressed_bytes(a for _, _, a, _ in chosen)
        new = {}
        if self.scope == "global" and not self.ratios:
            flat = np.concatenate([np.abs(a).reshape(-1) for _, _, a, _ in chosen]) if chosen else np.zeros(0)
            k = int(math.floor(self.sparsity * flat.size + 1e-9))
            if k and np.count_nonzero(flat == 0) < k:
                order = np.argsort(flat, kind="stable")
                mask = np.zeros(flat.size, bool)
                mask[order[:k]] = True
                off = 0
                for node, v, a, _ in chosen:
                    m = mask[off:off + a.size].reshape(a.shape)
                    off += a.size
                    if np.any(a[m] != 0):
                        new[id(v)] = np.where(m, 0, a).astype(a.dtype)
        else:
            for node, v, a, s in chosen:
                k = int(math.floor(s * a.size + 1e-9))
                if not k or np.count_nonzero(a == 0) >= k:
                    continue
                order = np.argsort(np.abs(a).reshape(-1), kind="stable")
                flat = a.reshape(-1).copy()
                flat[order[:k]] = 0
                new[id(v)] = flat.reshape(a.shape)
        from .prune_groups import _ConstWriter

        writer = _ConstWriter(model.graph)
        rows = []
        total = zeros = 0
        for node, v, a, s in chosen:
            arr = new.get(id(v), a)
            if id(v) in new:
                for user, idx in list(v.uses()):
                    writer.write(user, idx, arr)
            z = int(np.count_nonzero(arr == 0))
            total += arr.size
            zeros += z
            rows.append({"name": node.name or v.name, "weight": v.name, "size": int(arr.size),
                         "sparsity": round(z / arr.size, 4)})
        writer.drop_unused()
        after_c = _compressed_bytes(new.get(id(v), a) for _, v, a, _ in chosen)
        details = {
            "scope": self.scope,
            "sparsity": round(zeros / total, 4) if total else 0.0,
            "layers": rows,
            "weights_dense_bytes": int(sum(a.nbytes for _, _, a, _ in chosen)),
            "weights_zlib_bytes_before": before_c,
            "weights_zlib_bytes_after": after_c,
            "note": "saves storage only (zlib-compressed weights); optc's TVM backend has no sparse "
                    "kernels, so latency is unchanged",
        }
        if not new:
            details["unchanged"] = ("no weight was zeroed: sparsity 0, no weight layer, or the weights "
                                    "already hold that many zeros")
        return PassResult(model, bool(new), details)

"""Quantization-aware training (QAT) of an ONNX model, with labels or without (distillation).

The QDQ graph is the seam (style #7): QAT starts from the model optc's own ``quantize`` writes
and ends in that same graph with learned numbers, so everything downstream (``integerize``,
``optc compile``, onnxruntime) takes the result exactly as it takes post-training quantization.

1. :func:`prepare_float`: the float model is bound to batch 1 (the other input dimensions from
   the data) and cleaned up by optc's default pipeline, as ``optc compile`` does; ``fuse-bn``
   folds BatchNorm into the convolutions, so QAT trains the folded weights the integer kernels
   compute with.
2. :func:`post_training_quantize`: optc's ``quantize`` (same layer choice, observers, per-channel
   symmetric int8 weights, activation ranges, int32 biases, bias correction) on the training
   inputs: the starting point and the baseline ("before").
3. :func:`training_graph`: that QDQ model rewritten for training: each int8 weight ``DQ(w_q)``
   becomes ``DQ(Q(w))`` with ``w = u * unit`` a latent float weight (the "QDQ pair on the
   weight" form of ONNX; ``u`` is trained in units of the channel's post-training step, so one
   learning rate suits every channel; it starts at the float weight the codes were rounded
   from, off the grid, see :func:`_latent_start`), each int32 bias ``DQ(b_q)`` a float bias
   ``b`` fake-quantized on the accumulator grid of the trained scales, ``DQ(Q(b, s_x * s_w))``
   (:func:`_bias_float`: the grid the export writes the int32 codes on, so the student computes
   what onnxruntime computes on the export); activation
   Q/DQ pairs stay; scales the quantizer shared (a MaxPool's output reuses its input's) are
   tied to one; scales of dead channels (~1e-42) get their layer's median (:func:`_revive`).
4. :func:`optc.train.finetune.onnx_to_torch` makes it torch: Q/DQ are LSQ fake quantizers
   (straight-through estimator, learned step size with gradient scale ``1/sqrt(N Qp)``),
   weights, biases and scales are parameters, zero points stay fixed. The torch model must
   reproduce onnxruntime on that QDQ model before training starts (:func:`check_agreement`).
5. :func:`optc.train.distill.fit` trains it against the float teacher (the same bound model in
   torch): KL on class scores, MSE on the probabilities of per-step class scores (a CTC
   recognizer), scaled MSE otherwise (:func:`optc.train.distill.loss_kind`), cross-entropy
   mixed in with labels. Learning
   rates are in units of each tensor's own quantization step (:func:`param_groups`), and after
   every step each weight is projected into its narrow int8 range ``[-127 s, 127 s]``, so the
   exported codes are exactly the trained ones. The fidelity after each epoch (epoch 0: before
   training) is the torch student's top-1 agreement with the teacher (SQNR without class
   scores) on up to 128 evaluation inputs, or validation inputs (``QatOptions.val_data``),
   which then choose the epoch kept. ``QatOptions.fresh_inputs`` gives each later epoch new
   inputs (the teacher runs in batches on each epoch's inputs only).
6. :func:`export_qdq`: the learned values are written into the post-training model's
   initializers (weight codes ``quantize(w, s_w)``, scales, int32 biases on the grid
   ``s_x * s_w``); :func:`check_export` refuses a result that is not that graph with valid
   parameters, or that onnxruntime runs differently from the trained torch model.

:func:`qat` is the whole flow behind ``optc qat``; the report holds the recipe (epochs, data
size, loss, seed, time) and the fidelity (accuracy with labels) of the post-training and the
QAT model against the float original, measured by onnxruntime with
:func:`optc.accuracy.compare_models`. torch is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InternalError, InvalidModelError, UnsupportedModelError, UsageError, VerificationError
from . import TrainConfig
from .distill import Distillation

__all__ = ["QatOptions", "QatPlan", "load_data", "prepare_float", "post_training_quantize", "training_graph",
           "param_groups", "export_qdq", "check_export", "check_agreement", "check_options", "qat"]

_MIN_AGREEMENT = 0.98  # top-1 agreement torch <-> onnxruntime on the same QDQ graph
_MIN_SQNR_DB = 25.0  # ... or, for outputs without top-1, the SQNR between them
_CHECK_SAMPLES = 32
_FIDELITY_SAMPLES = 128
_SCALE_FLOOR = 1e-2  # a learned scale never falls below this fraction of its initial value
_DEAD_SCALE = 1e-12  # a scale below this belongs to a dead channel or tensor (1e-42 is seen in PP-OCR)
_DEAD_FILL = 1e-6  # ... and is replaced by the median of the live channels' scales, else by this


@dataclass(frozen=True)
class QatOptions:
    """How :func:`qat` trains: ``train`` (epochs, lr in quantization steps per update, batch,
    seed), ``distill`` (loss; ``label_weight`` > 0 mixes in cross-entropy when there are labels),
    ``quant_params`` (``quantize`` pass parameters as pipeline text, e.g. ``observer=percentile``),
    ``time_budget_s`` (training stops after the epoch that exceeds it), ``labels_key`` (the label
    array in the data; None: label-free), ``eval_data`` (an .npz to measure before/after on; None:
    the training inputs), ``force`` (overwrite the output).

    ``fresh_inputs(epoch)``: new unlabelled inputs for each epoch after the first (0-based
    epoch >= 1; e.g. newly rendered text lines, seeded by the epoch), so that a few training
    samples are not seen over and over (the student overfits them); None: ``data`` every
    epoch. ``val_data``: held-out inputs (an .npz, neither trained on nor the test set) whose
    fidelity chooses the epoch kept (the untrained model included); None: the last epoch.
    ``lr_per_step``: cosine decay over updates instead of epochs; ``freeze_scales_last``:
    activation step sizes fixed in the last epoch; ``train_weights`` False: the latent weights
    are not trained, only step sizes and biases (a code changes only where its step size moved);
    ``weight_lr``: the latent weights' learning rate in steps per update (None: ``train.lr``;
    scales and biases keep ``train.lr / 10`` of their size). ``fidelity``: the per-epoch
    measure (and the one ``val_data`` picks the epoch by): ``"auto"``, top-1 agreement with the
    teacher for class scores, SQNR otherwise; ``"sqnr"``, the SQNR in dB always (continuous:
    on a two-class output the top-1 agreement of ~100 held-out samples moves in 1 % steps)."""

    train: TrainConfig = TrainConfig(epochs=5, lr=3e-3, batch_size=32)
    distill: Distillation = Distillation(label_weight=0.5)
    quant_params: str = ""
    time_budget_s: float | None = None
    labels_key: str | None = None
    eval_data: str | os.PathLike | None = None
    force: bool = False
    fresh_inputs: Callable[[int], np.ndarray] | None = None
    val_data: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    lr_per_step: bool = False
    freeze_scales_last: bool = False
    train_weights: bool = True
    weight_lr: float | None = None
    fidelity: str = "auto"


@dataclass
class QatPlan:
    """Where the trained values go in the QDQ model.

    ``weights``: trained weight (training graph) -> (codes, scale, zero point, axis, qmax) names
    in the QDQ model; ``units``: trained weight -> its unit, the post-training step (broadcast
    shape): the graph trains ``u`` with ``w = u * unit`` (``u`` starts at the float weight), so that one
    learning rate moves every channel by the same number of its own steps; ``biases``: float
    bias -> (int32 codes, bias scale, activation scale, weight scale); ``scales``: every trained
    scale; ``ties``: QDQ scale name -> the trained scale it takes its value from."""

    weights: dict[str, tuple[str, str, str, int | None, int]] = field(default_factory=dict)
    units: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, tuple[str, str, str | None, str | None]] = field(default_factory=dict)
    scales: list[str] = field(default_factory=list)
    ties: dict[str, str] = field(default_factory=dict)

    @property
    def trainable(self) -> list[str]:
        return list(self.weights) + list(self.biases) + list(self.scales)


# ---------------------------------------------------------------------------------------------
# data and the float model


def load_data(path: str | os.PathLike | Mapping[str, np.ndarray], input_name: str,
              labels_key: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(inputs, labels or None)`` from an .npz (or arrays) holding ``input_name`` (or ``input``)
    and, when ``labels_key`` is given, that label array (one label per sample, or per step)."""
    from ..verify import load_inputs

    data = load_inputs(path) if not isinstance(path, Mapping) else dict(path)
    where = str(path) if not isinstance(path, Mapping) else "data"
    key = input_name if input_name in data else "input" if "input" in data else None
    if key is None:
        raise InvalidModelError(f"{where}: no array {input_name!r} (the model's input) or 'input' "
                                f"(has {', '.join(map(repr, data)) or 'nothing'})")
    x = np.asarray(data[key], np.float32)
    if x.ndim < 1 or len(x) == 0:
        raise InvalidModelError(f"{where}: {key!r} holds no samples (shape {list(x.shape)})")
    if labels_key is None:
        return x, None
    if labels_key not in data:
        raise InvalidModelError(f"{where}: no label array {labels_key!r} (has {', '.join(map(repr, data))})")
    y = np.asarray(data[labels_key])
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidModelError(f"{where}: labels {labels_key!r} must be integer class indices, not {y.dtype}")
    if len(y) != len(x):
        raise InvalidModelError(f"{where}: {len(x)} inputs but {len(y)} labels in {labels_key!r}")
    return x, y.astype(np.int64)


def prepare_float(model: onnx.ModelProto, sample_shape: tuple[int, ...]) -> onnx.ModelProto:
    """``model`` bound to ``[1, *sample_shape]`` and cleaned up by optc's default pipeline (what
    ``optc compile`` runs first: BatchNorm folded, constants folded)."""
    import onnx_ir as ir

    from .. import DEFAULT_PIPELINE, frontend, pipeline

    inputs = frontend.graph_inputs(model)
    if len(inputs) != 1:
        raise UnsupportedModelError(f"qat supports models with one input (this one has {len(inputs)})")
    bound, _ = frontend.bind_input_shapes(model, {inputs[0].name: (1, *sample_shape)})
    irm, _ = pipeline.run_pipeline(ir.serde.deserialize_model(bound), DEFAULT_PIPELINE)
    return ir.serde.serialize_model(irm)


def post_training_quantize(model: onnx.ModelProto, x: np.ndarray, quant_params: str = ""
                           ) -> tuple[onnx.ModelProto, dict]:
    """optc's ``quantize`` pass on ``model`` calibrated on ``x``: ``quant_params`` is its
    parameter text (``observer=percentile;symmetric``); returns (QDQ model, details)."""
    from .. import pipeline
    from optc.passes.quant import run_quantizer

    spec = pipeline.parse_pipeline(f"quantize<{quant_params}>" if quant_params.strip() else "quantize")[0]
    given = {k for k, _ in spec.params}
    bad = sorted(given & {"calib", "max-accuracy-drop", "eval", "eval-samples"})
    if bad:
        raise UsageError(f"qat: quantize parameter(s) {', '.join(bad)} do not apply (the training data "
                         "calibrates; every layer is trained in int8)")
    cfg = pipeline.instantiate(spec)._config()
    name = model.graph.input[0].name
    qdq, details, _ = run_quantizer(model, {name: x}, **cfg.__dict__)
    if qdq is None:
        raise UnsupportedModelError(f"qat: nothing to quantize ({details.get('note', 'no quantizable layer')})")
    return qdq, details


# ---------------------------------------------------------------------------------------------
# the training graph


def _init_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and the tensor values of Constant nodes, by name."""
    out = _init_map(model)
    for n in model.graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                out[n.output[0]] = value
    return out


def _ties(model: onnx.ModelProto, inits: dict) -> dict[str, str]:
    """Activation scale -> the scale of the tensor it was copied from: a QuantizeLinear whose
    input comes, through value-preserving ops only (MaxPool, Reshape, ...), from a
    DequantizeLinear with the same scale and zero point values (the quantizer shared them)."""
    from optc.passes.quant.qdq import VALUE_PRESERVING

    producers = {o: n for n in model.graph.node for o in n.output}
    ties: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        src, hops = n.input[0], 0
        while src in producers and producers[src].op_type in VALUE_PRESERVING and hops < 16:
            src, hops = producers[src].input[0], hops + 1
        p = producers.get(src)
        if hops == 0 or p is None or p.op_type != "DequantizeLinear":
            continue
        same = all(a in inits and b in inits and
                   np.array_equal(numpy_helper.to_array(inits[a]), numpy_helper.to_array(inits[b]))
                   for a, b in zip(n.input[1:3], p.input[1:3]))
        if same and n.input[1] != p.input[1]:
            ties[n.input[1]] = ties.get(p.input[1], p.input[1])
    return ties


def _weight_qmax(model: onnx.ModelProto, details: dict | None) -> dict[str, int]:
    """Weight codes initializer -> its largest code (127 for int8, 7 for int4 in int8), from the
    quantizer's per-layer bits (default 8)."""
    bits_of = {r["name"]: int(r.get("weight_bits", 8)) for r in (details or {}).get("layers", [])}
    producers = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        dq = producers.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        name = n.name or n.output[0]
        bits = bits_of.get(name, bits_of.get(n.output[0].removesuffix("__fp32"), 8))
        out[dq.input[0]] = 2 ** (bits - 1) - 1
    return out


def training_graph(qdq: onnx.ModelProto, details: dict | None = None,
                   float_model: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, QatPlan]:
    """The float-weight training graph of ``qdq`` (see the module doc) and the :class:`QatPlan`
    that maps its trained values back. ``details``: the quantizer's (for the weights' bits);
    ``float_model``: the model ``qdq`` was quantized from, whose float weights are where the
    latent weights start (:func:`_latent_start`; without it they start on their codes)."""
    model = onnx.ModelProto.FromString(qdq.SerializeToString())
    g = model.graph
    inits = _init_map(model)
    producers = {o: n for n in g.node for o in n.output}
    qmax_of = _weight_qmax(model, details)
    plan = QatPlan(ties=_ties(model, inits))
    floats = _constants(float_model) if float_model is not None else {}
    new_nodes, drop, added = [], set(), []
    for n in g.node:
        codes = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if codes is not None and codes.data_type == onnx.TensorProto.INT8:
            new_nodes.extend(_weight_q(n, codes, (inits, floats), plan, qmax_of, added))
            drop.add(codes.name)
        elif codes is not None and codes.data_type == onnx.TensorProto.INT32:
            new_nodes.extend(_bias_float(n, codes, model, inits, producers, plan, added))
            drop.add(codes.name)
            continue
        new_nodes.append(n)
    for n in new_nodes:  # tied scales read the scale they follow
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in plan.ties:
            n.input[1] = plan.ties[n.input[1]]
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [t for t in g.initializer if t.name not in drop and t.name not in plan.ties]
    del g.initializer[:]
    g.initializer.extend(keep + added)
    plan.scales = sorted({n.input[1] for n in new_nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                          and n.input[1] in {t.name for t in g.initializer}})
    for t in g.initializer:
        if t.name in plan.scales:
            _revive(t)
    return model, plan


def _revive(scale: onnx.TensorProto) -> None:
    """Give the dead entries of a scale (< :data:`_DEAD_SCALE`: a channel of ~1e-40 weights,
    a tensor of ~1e-38 values) the median of the live ones (else :data:`_DEAD_FILL`). Their
    values then quantize to code 0 (the outputs move by ~1e-38), while s^2 in the LSQ
    gradient no longer underflows to 0 (NaN), no denormal slows training down, and the
    requantization multiplier ``s_x * s_w / s_y`` of the layer is one integer kernels can
    hold (post-training quantization leaves such layers float: multiplier out of range)."""
    v = numpy_helper.to_array(scale)
    dead = ~(v >= _DEAD_SCALE)
    if not np.any(dead):
        return
    fill = np.median(v[~dead]) if np.any(~dead) else _DEAD_FILL
    scale.CopyFrom(numpy_helper.from_array(np.where(dead, fill, v).astype(np.float32), scale.name))


def _weight_q(dq, codes, init_maps: tuple[dict, dict], plan: QatPlan, qmax_of: dict, added: list):
    """``DQ(w_q)`` -> ``DQ(Q(w))``: returns the new QuantizeLinear (the DQ now reads it).
    ``init_maps``: the QDQ model's initializers and the float model's (may be empty)."""
    from optc.onnx_utils import attr

    inits, floats = init_maps
    s = numpy_helper.to_array(inits[dq.input[1]])
    axis = attr(dq, "axis", 1) if s.size > 1 else None
    zp_name = dq.input[2] if len(dq.input) > 2 else ""
    if not zp_name:  # int8 codes need an int8 zero point on the QuantizeLinear
        zp_name = f"{codes.name}__qat_zero_point"
        added.append(numpy_helper.from_array(np.zeros(s.shape, np.int8), zp_name))
        dq.input.extend([""] * (3 - len(dq.input)))
        dq.input[2] = zp_name
    zp = inits[zp_name] if zp_name in inits else added[-1]
    zp = numpy_helper.to_array(zp)
    q_int = numpy_helper.to_array(codes)
    shape = [1] * q_int.ndim
    if axis is not None:
        shape[axis % q_int.ndim] = -1
    unit = np.asarray(s, np.float32).reshape(shape)
    unit = np.where(unit >= _DEAD_SCALE, unit, np.float32(1.0))  # dead channels: codes of ~1e-40 weights
    qmax = qmax_of.get(codes.name, 127)
    u = _latent_start(q_int, (s, zp, axis, qmax), unit, floats.get(re.sub(r"__q(_\d+)?$", "", codes.name)))
    uf, un, wf, out = (f"{codes.name}__qat_{k}" for k in ("units", "unit", "float", "codes"))
    added += [numpy_helper.from_array(u, uf), numpy_helper.from_array(unit.astype(np.float32), un)]
    plan.weights[uf] = (codes.name, dq.input[1], zp_name, axis, qmax)
    plan.units[uf] = unit
    attrs = {"axis": axis} if axis is not None else {}
    mul = onnx.helper.make_node("Mul", [uf, un], [wf], name=f"{wf}/Mul")
    q = onnx.helper.make_node("QuantizeLinear", [wf, dq.input[1], zp_name], [out], name=f"{wf}/QuantizeLinear", **attrs)
    dq.input[0] = out
    return [mul, q]


def _latent_start(q_int: np.ndarray, qp: tuple, unit: np.ndarray, w: onnx.TensorProto | None) -> np.ndarray:
    """Where a latent weight ``u`` (in units of its step) starts: at the float weight ``w`` the
    codes were rounded from (the float model's initializer named as the codes without their
    ``__q`` suffix), clipped to the code range, wherever it quantizes to exactly the same code;
    elsewhere (and without ``w``) on the code itself. ``qp``: scale, zero point, axis, qmax.

    Starting on the codes would put every weight exactly on the grid, half a step from the
    nearest rounding boundary: updates adding up to less than half a step (Adam at a few
    hundredths of a step per update) then change no code at all, and QAT trains only scales
    and biases. The float weights keep their rounding residuals, so small updates flip codes."""
    from optc.passes.quant import qparams

    s, zp, axis, qmax = qp
    on_codes = qparams.dequantize(q_int, s, zp, axis) / unit
    if w is None or tuple(w.dims) != q_int.shape:
        return on_codes.astype(np.float32)
    wf = np.clip(numpy_helper.to_array(w).astype(np.float32) / unit, -qmax, qmax) * unit
    same = qparams.quantize(wf, s, zp, qparams.QType(8, True, -qmax, qmax), axis) == q_int
    return np.where(same, wf / unit, on_codes).astype(np.float32)


def _bias_float(dq, codes, model, inits, producers, plan: QatPlan, added: list) -> list:
    """``DQ(b_q int32)`` -> its float value ``b``, read by the layer through a fake quantizer
    on the accumulator grid of the trained scales, ``DQ(Q(b, s_x * s_w))`` (returned: the Mul
    and the Q/DQ pair), where the layer's input and weight come from DequantizeLinear: the
    grid :func:`export_qdq` writes the int32 codes on, so that the student computes with the
    bias onnxruntime and the integer kernels get (a float bias is up to half a step
    ``s_x * s_w`` off it, which flips rounding in the layer's output quantizer). Without such
    a pair of scales the bias stays float (as :func:`_bias_codes` writes it: a fine grid)."""
    s = numpy_helper.to_array(inits[dq.input[1]])
    b = (numpy_helper.to_array(codes).astype(np.float64) * s.astype(np.float64)).astype(np.float32)
    bf = f"{codes.name}__qat_float"
    added.append(numpy_helper.from_array(b, bf))
    consumers, s_x, s_w = [], None, None
    for n in model.graph.node:
        if len(n.input) > 2 and n.input[2] == dq.output[0]:
            consumers.append(n)
            px, pw = producers.get(n.input[0]), producers.get(n.input[1])
            if px is not None and px.op_type == "DequantizeLinear" and s_x is None:
                s_x = px.input[1]
            if pw is not None and pw.op_type == "DequantizeLinear" and s_w is None:
                s_w = pw.input[1]
    plan.biases[bf] = (codes.name, dq.input[1], s_x, s_w)
    on_grid = s_x in inits and s_w in inits
    nodes, read = _bias_grid_nodes(bf, (s_x, s_w), inits, plan) if on_grid else ([], bf)
    for n in consumers:
        n.input[2] = read
    if nodes:
        added.append(numpy_helper.from_array(np.zeros(_bias_grid_shape(inits, s_x, s_w), np.int32),
                                             f"{bf}__zero_point"))
    return nodes


def _bias_grid_shape(inits: dict, s_x: str, s_w: str) -> tuple[int, ...]:
    """Shape of ``s_x * s_w`` (a scalar, or one value per output channel)."""
    return np.broadcast_shapes(tuple(inits[s_x].dims), tuple(inits[s_w].dims))


def _bias_grid_nodes(bf: str, names: tuple[str, str], inits: dict, plan: QatPlan) -> tuple[list, str]:
    """``Mul(s_x, s_w) -> Q -> DQ`` on the float bias ``bf`` (int32 codes, zero point 0; tied
    scales read the scale they follow); returns the nodes and the fake-quantized bias name."""
    s_x, s_w = (plan.ties.get(n, n) for n in names)
    h = onnx.helper
    grid, q, out = f"{bf}__grid", f"{bf}__codes", f"{bf}__fq"
    axis = {"axis": 0} if len(_bias_grid_shape(inits, *names)) == 1 else {}
    return [h.make_node("Mul", [s_x, s_w], [grid], name=f"{grid}/Mul"),
            h.make_node("QuantizeLinear", [bf, grid, f"{bf}__zero_point"], [q], name=f"{q}/QuantizeLinear", **axis),
            h.make_node("DequantizeLinear", [q, grid, f"{bf}__zero_point"], [out], name=f"{out}/DequantizeLinear",
                        **axis)], out


# ---------------------------------------------------------------------------------------------
# training


def param_groups(module, plan: QatPlan, lr: float, weight_lr: float | None = None) -> list[dict]:
    """Adam parameter groups with learning rates in units of each tensor's quantization step:
    a weight moves by up to ``weight_lr`` (default ``lr``) of its channel's step per update (it
    is trained in those units, :attr:`QatPlan.units`), a scale and a bias by ``lr/10`` of their
    own mean magnitude; other parameters (PRelu slopes, ...) by ``lr/100``."""
    import torch

    groups, seen = [], set()
    for name in plan.trainable:
        p = getattr(module, module._attr_of[name])
        if not isinstance(p, torch.nn.Parameter) or id(p) in seen:
            continue
        seen.add(id(p))
        if name in plan.weights:
            rate = lr if weight_lr is None else weight_lr
        else:
            rate = lr / 10 * max(float(p.detach().abs().mean()), 1e-8)
        groups.append({"params": [p], "lr": rate})
    rest = [p for p in module.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr / 100})
    return groups


def _groups(module, plan: QatPlan, options: QatOptions) -> list[dict]:
    """:func:`param_groups`, without the latent weights when ``options.train_weights`` is off."""
    groups = param_groups(module, plan, options.train.lr, options.weight_lr)
    if options.train_weights:
        return groups
    weights = {id(getattr(module, module._attr_of[n])) for n in plan.weights}
    return [g for g in groups if not any(id(p) in weights for p in g["params"])]


def _projector(module, plan: QatPlan):
    """After each step: scales above a floor, each weight within ``[-qmax s, qmax s]`` (in its
    units: ``[-qmax s / unit, qmax s / unit]``)."""
    import torch

    scales = {n: getattr(module, module._attr_of[n]) for n in plan.scales}
    floors = {n: (p.detach().abs() * _SCALE_FLOOR).clamp_min(1e-12) for n, p in scales.items()}
    weights = []
    for uf, (_, s_name, _, axis, qmax) in plan.weights.items():
        s = scales[plan.ties.get(s_name, s_name)]
        u = getattr(module, module._attr_of[uf])
        shape = [1] * u.dim()
        if axis is not None:
            shape[axis % u.dim()] = -1
        weights.append((u, s, shape, qmax, torch.from_numpy(plan.units[uf])))

    def after_step(_step: int) -> None:
        with torch.no_grad():
            for n, p in scales.items():
                p.copy_(torch.maximum(p, floors[n]))
            for u, s, shape, qmax, unit in weights:
                bound = (s.reshape(shape) if s.dim() else s) * qmax / unit
                u.copy_(torch.minimum(torch.maximum(u, -bound), bound))

    return after_step


def _run_torch(module, x: np.ndarray) -> list[np.ndarray]:
    """``module`` (eval mode, no grad) over ``x`` in batches (:data:`distill.TEACHER_BATCH`)."""
    from .distill import teacher_outputs

    return teacher_outputs(module, x)


def _run_ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime (graph optimizations off: QDQ emulated as written) over ``x``, batch 1."""
    from ..verify import ort_session

    sess = ort_session(model, threads=2)
    name = model.graph.input[0].name
    chunks = [sess.run(None, {name: np.ascontiguousarray(x[i:i + 1])}) for i in range(len(x))]
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def _agreement(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    from ..accuracy import fidelity_figures

    names = [f"output{k}" for k in range(len(ref))]
    fig = fidelity_figures(ref, out, names)
    res = {"sqnr_db": round(min(fig["sqnr_db"].values()), 2)}
    if "top1_agreement" in fig:
        res["top1_agreement"] = fig["top1_agreement"]
    return res


def check_agreement(ref: list[np.ndarray], out: list[np.ndarray], what: str) -> dict:
    """Top-1 agreement (class scores) and SQNR of two runs of the same QDQ graph (torch and
    onnxruntime round a few values differently, and such one-step flips propagate);
    VerificationError naming ``what`` when both are low: top-1 agreement below
    :data:`_MIN_AGREEMENT` (or no top-1: not class scores) and SQNR below :data:`_MIN_SQNR_DB`
    (a two-class model's near-ties flip top-1 on a few samples at a high SQNR)."""
    a = _agreement(ref, out)
    if a.get("top1_agreement", 0.0) < _MIN_AGREEMENT and not a["sqnr_db"] >= _MIN_SQNR_DB:
        raise VerificationError(f"qat: {what}: {a} (needs top-1 agreement >= {_MIN_AGREEMENT} or "
                                f"SQNR >= {_MIN_SQNR_DB} dB)")
    return a


# ---------------------------------------------------------------------------------------------
# back to QDQ


def trained_values(module, plan: QatPlan) -> dict[str, np.ndarray]:
    """The trained float weights (``u * unit``), biases and scales of ``module`` by
    training-graph name."""
    values = {n: getattr(module, module._attr_of[n]).detach().numpy().copy() for n in plan.trainable}
    for n, unit in plan.units.items():
        values[n] = (values[n] * unit).astype(np.float32)
    return values


def export_qdq(qdq: onnx.ModelProto, plan: QatPlan, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``qdq`` (the post-training model) with the trained ``values`` written into its
    initializers: scales (tied ones too), weight codes ``quantize(w, s_w)`` in the narrow range,
    int32 biases ``rint(b / (s_x * s_w))`` with scale ``s_x * s_w`` (:mod:`optc.passes.quant.qparams`)."""
    from optc.passes.quant import qparams

    model = onnx.ModelProto.FromString(qdq.SerializeToString())
    inits = _init_map(model)
    scale: dict[str, np.ndarray] = {}
    for name in list(plan.scales) + list(plan.ties):
        v = np.asarray(values[plan.ties.get(name, name)], np.float32)
        scale[name] = v.reshape(numpy_helper.to_array(inits[name]).shape)
        _set(inits[name], scale[name])
    for wf, (codes, s_name, zp_name, axis, qmax) in plan.weights.items():
        zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else np.zeros(scale[s_name].shape, np.int8)
        qt = qparams.QType(8, True, -qmax, qmax)
        _set(inits[codes], qparams.quantize(values[wf], scale[s_name], zp, qt, axis))
    for bf, (codes, bs_name, sx_name, sw_name) in plan.biases.items():
        _set(inits[codes], _bias_codes(values[bf], inits, _init_map(qdq), (bs_name, sx_name, sw_name), scale))
    return model


def _bias_codes(b: np.ndarray, inits: dict, ref: dict, names: tuple[str, str | None, str | None],
                scale: dict[str, np.ndarray]) -> np.ndarray:
    """int32 codes of the trained bias ``b`` on the trained accumulator grid ``s_x * s_w`` (what
    integer kernels need), or, where the layer has no such pair of scales or the codes would not
    fit int32, on a grid of ``max|b| / 2^30`` (per channel where the post-training model's bias
    scale ``ref`` is); the scale is written into ``inits``. ``names``: the bias scale,
    activation scale and weight scale initializers."""
    from optc.passes.quant import qparams

    bs_name, sx_name, sw_name = names
    s_b = numpy_helper.to_array(ref[bs_name])
    if sx_name in scale and sw_name in scale:
        q, new_s, fits = qparams.bias_qparams(b.reshape(-1), scale[sx_name].reshape(-1)[0], scale[sw_name].reshape(-1))
        if fits and new_s.size in (1, s_b.size):
            q = np.rint(b.astype(np.float32).reshape(-1) / new_s).astype(np.int32)  # float32, as the student's Q
            _set(inits[bs_name], np.broadcast_to(new_s.reshape(-1), (s_b.size,)).reshape(s_b.shape))
            return q
    # off the accumulator grid (the layer is not an integer kernel): a grid fine enough for b
    flat = np.abs(b.astype(np.float64).reshape(-1))
    amax = flat.reshape(s_b.size, -1).max(axis=1) if flat.size % max(s_b.size, 1) == 0 else np.full(s_b.size, flat.max())
    grid = np.where(amax > 0, amax / 2.0 ** 30, 1.0).astype(np.float32)
    _set(inits[bs_name], grid.reshape(s_b.shape))
    q = np.rint(b.astype(np.float64).reshape(-1) / np.broadcast_to(grid.astype(np.float64).repeat(flat.size // grid.size), flat.shape))
    return np.clip(q, qparams.INT32.qmin + 1, qparams.INT32.qmax - 1).astype(np.int32)


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    old = numpy_helper.to_array(tensor)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(old.dtype).reshape(old.shape), tensor.name))


def _structure(model: onnx.ModelProto) -> list[tuple]:
    return [(n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def check_export(exported: onnx.ModelProto, ptq: onnx.ModelProto) -> None:
    """Refuse (VerificationError) an exported QAT model that is not the post-training QDQ graph
    ``ptq`` node for node with valid parameters: checker-valid (structure; shapes are the post-
    training model's, whose declared output shapes may already differ from inference), same nodes and initializer
    names, every Q/DQ scale finite and > 0, every weight code within its narrow range, every
    int32 bias scale equal to ``s_x * s_w`` where the post-training model had that."""
    try:
        onnx.checker.check_model(exported)
    except onnx.checker.ValidationError as err:
        raise VerificationError(f"qat: the exported model is not valid ONNX: {err}") from None
    if _structure(exported) != _structure(ptq):
        raise VerificationError("qat: the exported model's nodes differ from the QDQ graph optc's quantize wrote")
    inits, ref = _init_map(exported), _init_map(ptq)
    if set(inits) != set(ref):
        raise VerificationError("qat: the exported model's initializers differ from the QDQ graph's: "
                                f"{sorted(set(inits) ^ set(ref))[:5]}")
    for n in exported.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[1] not in inits:
            continue
        s = numpy_helper.to_array(inits[n.input[1]])
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise VerificationError(f"qat: {n.name or n.output[0]}: scale {n.input[1]!r} is not finite and > 0")
        codes = inits.get(n.input[0])
        if codes is not None and codes.data_type == onnx.TensorProto.INT8:
            qmax = 7 if np.abs(numpy_helper.to_array(ref[n.input[0]]).astype(np.int64)).max(initial=0) <= 7 else 127
            if np.abs(numpy_helper.to_array(codes).astype(np.int64)).max(initial=0) > qmax:
                raise VerificationError(f"qat: weight codes {n.input[0]!r} leave their range [-{qmax}, {qmax}]")
    _check_bias_grid(exported, ptq)


def _check_bias_grid(exported: onnx.ModelProto, ptq: onnx.ModelProto) -> None:
    """Every layer that ``integerize`` turns into an integer kernel in the post-training model
    (int8 weights, int32 bias on ``s_x * s_w``, output QuantizeLinear, ...) must still be one."""
    from optc.passes.quant.integerize import integerize_model

    def float_layers(model):
        return {f["name"]: f["reason"] for f in integerize_model(model)[1].get("float_layers", [])}

    before = float_layers(ptq)
    lost = {k: v for k, v in float_layers(exported).items() if k not in before}
    if lost:
        raise VerificationError("qat: layer(s) no longer in the integer-kernel form optc's quantize wrote: "
                                + "; ".join(f"{k} ({v})" for k, v in list(lost.items())[:5]))


# ---------------------------------------------------------------------------------------------
# the whole flow


def _evaluate(float_model: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray,
              labels: np.ndarray | None) -> dict:
    """optc's evaluation (:func:`optc.accuracy.compare_models`) of ``candidate`` against the
    float model, both in onnxruntime (graph optimizations off: QDQ emulated as written)."""
    from .. import frontend
    from ..accuracy import compare_models
    from ..verify import ort_session

    def runner(model):
        sess = ort_session(model, threads=2)
        return lambda feeds: sess.run(None, feeds)

    def specs(model):
        return frontend.bind_input_shapes(model)[1]

    name = float_model.graph.input[0].name
    outputs = [o.name for o in float_model.graph.output]
    res = compare_models(runner(float_model), runner(candidate), {name: x}, labels, specs(float_model),
                         specs(candidate), outputs)
    keep = ("samples", "top1_agreement", "sqnr_db", "top1", "top1_reference", "top1_drop_points", "mask_iou")
    return {k: res[k] for k in keep if k in res}


def _eval_set(options: QatOptions, name: str, x: np.ndarray, labels: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray | None, str]:
    if options.eval_data is None:
        return x, labels, "the training inputs"
    from ..accuracy import find_labels
    from ..verify import load_inputs

    data = load_inputs(options.eval_data)
    ex, _ = load_data(data, name)
    key = name if name in data else "input"
    _, ey = find_labels(data, {key}, str(options.eval_data))
    if ey is not None and len(ey) != len(ex):
        raise InvalidModelError(f"{options.eval_data}: {len(ex)} inputs but {len(ey)} labels")
    return ex, ey, str(options.eval_data)


def _val_set(options: QatOptions, name: str, shape: tuple[int, ...], ex: np.ndarray) -> np.ndarray:
    """The inputs the per-epoch fidelity is measured on: ``options.val_data`` (same sample
    shape as the training inputs), else the evaluation inputs."""
    if options.val_data is None:
        return ex
    vx = load_data(options.val_data, name)[0]
    if vx.shape[1:] != shape:
        raise InvalidModelError(f"validation inputs have shape {list(vx.shape)}, the training inputs "
                                f"[N, {', '.join(map(str, shape))}]")
    return vx


def _atomic_save(model: onnx.ModelProto, out: Path) -> None:
    """Write ``model`` to ``out`` through a temporary file renamed into place."""
    from ..artifact import save_onnx_atomic

    save_onnx_atomic(model, out)


@contextlib.contextmanager
def _flush_denormals():
    """Denormal floats (tiny activations of dead channels) cost 10-100x per op on x86: flushed
    to zero while training (torch's default, off, is restored after)."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


FIDELITY_MEASURES = ("auto", "sqnr")


def _fidelity_value(a: dict, measure: str = "auto") -> float:
    """The per-epoch fidelity: top-1 agreement where there is one (``"auto"``), else SQNR (dB)."""
    return a["top1_agreement"] if "top1_agreement" in a and measure == "auto" else a["sqnr_db"]


def _torch_models(ptq: onnx.ModelProto, details: dict, fp: onnx.ModelProto, x: np.ndarray, *,
                  float_latents: bool = True):
    """(student, plan, teacher): the QAT student must reproduce onnxruntime on the QDQ graph.
    ``float_latents``: latent weights start at ``fp``'s float weights (else on the codes)."""
    from .finetune import onnx_to_torch

    train_model, plan = training_graph(ptq, details, fp if float_latents else None)
    student = onnx_to_torch(train_model, trainable=plan.trainable, rebatch=True)
    teacher = onnx_to_torch(fp, rebatch=True)
    xs = x[:_CHECK_SAMPLES]
    try:
        check_agreement(_run_ort(ptq, xs), _run_torch(student, xs),
                        "the torch copy of the QDQ graph disagrees with onnxruntime before training")
    except VerificationError as err:
        raise InternalError("qat", str(err)) from err
    return student, plan, teacher


def _fresh_data(teacher, options: QatOptions, shape: tuple[int, ...]):
    """``epoch -> (inputs, teacher outputs)`` from ``options.fresh_inputs`` (None without it);
    the teacher runs in batches on each epoch's inputs only."""
    from .distill import teacher_outputs

    if options.fresh_inputs is None:
        return None

    def epoch_data(epoch: int):
        xk = np.asarray(options.fresh_inputs(epoch), np.float32)
        if xk.ndim < 1 or len(xk) == 0 or xk.shape[1:] != shape:
            raise UsageError(f"qat: fresh inputs for epoch {epoch + 1} have shape {list(xk.shape)}, "
                             f"not [N, {', '.join(map(str, shape))}]")
        return xk, teacher_outputs(teacher, xk)

    return epoch_data


def _freezer(module, plan: QatPlan, options: QatOptions):
    """``before_epoch`` hook: with ``options.freeze_scales_last``, the activation step sizes
    stop training for the last epoch (the weights settle on fixed grids)."""
    weight_scales = {s for _, s, _, _, _ in plan.weights.values()}
    acts = [getattr(module, module._attr_of[n]) for n in plan.scales if n not in weight_scales]
    last = options.train.epochs - 1

    def before_epoch(epoch: int) -> None:
        for p in acts:
            p.requires_grad_(not (options.freeze_scales_last and epoch == last))

    return before_epoch


def _train(ptq, details, fp, x, labels, fx, options: QatOptions, progress):
    """Torch student and teacher, :func:`fit`, export and its checks. ``fx``: the inputs the
    per-epoch fidelity is measured on (the validation inputs with ``options.val_data``, which
    then also choose the epoch kept)."""
    from .distill import FitHooks, fit, teacher_outputs

    with progress.step("torch models (student: fake-quantized QDQ graph; teacher: float)"):
        student, plan, teacher = _torch_models(ptq, details, fp, x)
        t_out = teacher_outputs(teacher, x)
        fx = fx[:_FIDELITY_SAMPLES]
        f_ref = teacher_outputs(teacher, fx)
    cfg = options.train

    def fidelity() -> float:
        return _fidelity_value(_agreement(f_ref, _run_torch(student, fx)), options.fidelity)

    start = fidelity()
    hooks = FitHooks(after_step=_projector(student, plan), fidelity=fidelity, time_budget_s=options.time_budget_s,
                     before_epoch=_freezer(student, plan, options),
                     epoch_data=_fresh_data(teacher, options, x.shape[1:]),
                     keep_best=options.val_data is not None, lr_per_step=options.lr_per_step)
    with progress.step(f"QAT: {cfg.epochs} epochs on {len(x)} samples (fidelity before: {start:.4f})") as step:
        result = fit(student, x, t_out, cfg, distill=options.distill, labels=labels,
                     hooks=dataclasses.replace(hooks, progress_step=step),
                     parameters=_groups(student, plan, options))
    if not result.history or result.history[0]["epoch"] != 0:
        result.history.insert(0, {"epoch": 0, "fidelity": start})
    with progress.step("export QDQ and check it"):
        exported = export_qdq(ptq, plan, trained_values(student, plan))
        check_export(exported, ptq)
        xs = x[:_CHECK_SAMPLES]
        export_check = check_agreement(_run_torch(student, xs), _run_ort(exported, xs),
                                       "onnxruntime on the exported model disagrees with the trained torch model")
    return student, plan, result, exported, export_check


def qat(model: str | os.PathLike | onnx.ModelProto, data: str | os.PathLike | Mapping[str, np.ndarray],
        out: str | os.PathLike, *, options: QatOptions = QatOptions(), progress=None) -> dict:
    """Quantization-aware training of ``model`` on ``data`` (inputs, optional labels), written
    to ``out`` as optc's QDQ graph (see the module doc); returns the report."""
    from .. import frontend
    from ..progress import SILENT
    from .finetune import _import_torch, _load

    _import_torch()
    check_options(options)
    progress = progress or SILENT
    out = Path(out)
    if out.exists() and not options.force:
        raise UsageError(f"{out} already exists (use --force)")
    t0 = time.perf_counter()
    original = _load(model)
    inputs = frontend.graph_inputs(original)
    if len(inputs) != 1:
        raise UnsupportedModelError(f"qat supports models with one input (this one has {len(inputs)})")
    name = inputs[0].name
    x, labels = load_data(data, name, options.labels_key)
    ex, ey, eval_source = _eval_set(options, name, x, labels)
    with progress.step("bind shapes, cleanup (fuse-bn), post-training quantization"):
        fp = prepare_float(original, x.shape[1:])
        ptq, details = post_training_quantize(fp, x, options.quant_params)
    with _flush_denormals():
        fx = _val_set(options, name, x.shape[1:], ex)
        _, _, result, exported, export_check = _train(ptq, details, fp, x, labels, fx, options, progress)
    with progress.step(f"evaluate post-training and QAT models on {eval_source}"):
        before, after = _evaluate(fp, ptq, ex, ey), _evaluate(fp, exported, ex, ey)
    _atomic_save(exported, out)
    return _report(model, out, details, result, before, after, export_check,
                   {"data": str(data) if not isinstance(data, Mapping) else "arrays", "samples": int(len(x)),
                    "labels": options.labels_key, "eval": eval_source, "eval_samples": int(len(ex)),
                    "fresh_inputs_per_epoch": options.fresh_inputs is not None,
                    "validation": _source(options.val_data), "lr_per_step": options.lr_per_step,
                    "freeze_scales_last": options.freeze_scales_last, "train_weights": options.train_weights,
                    "weight_lr": options.weight_lr, "fidelity": options.fidelity,
                    "quant_params": options.quant_params, "time_budget_s": options.time_budget_s,
                    "seconds_total": round(time.perf_counter() - t0, 2), "onnx_bytes": out.stat().st_size})


def check_options(options: QatOptions) -> None:
    """UsageError naming the first option with a value :func:`qat` cannot train with (checked
    before the post-training quantization, which takes minutes on a large model)."""
    from .distill import check_kinds

    cfg, dist = options.train, options.distill
    bad = [(cfg.epochs < 0, "epochs", cfg.epochs, ">= 0"), (not cfg.lr > 0, "lr", cfg.lr, "> 0"),
           (cfg.batch_size < 1, "batch size", cfg.batch_size, ">= 1"),
           (not dist.temperature > 0, "temperature", dist.temperature, "> 0"),
           (not 0 <= dist.label_weight <= 1, "label weight", dist.label_weight, "in [0, 1]"),
           (options.time_budget_s is not None and not options.time_budget_s > 0, "time budget",
            options.time_budget_s, "> 0 seconds"),
           (options.weight_lr is not None and not options.weight_lr > 0, "weight lr", options.weight_lr, "> 0"),
           (options.fidelity not in FIDELITY_MEASURES, "fidelity", repr(options.fidelity),
            f"one of {', '.join(FIDELITY_MEASURES)}")]
    for wrong, what, value, need in bad:
        if wrong:
            raise UsageError(f"qat: {what} must be {need} (got {value})")
    check_kinds(dist.kinds or ())


def _source(data) -> str | None:
    return None if data is None else "arrays" if isinstance(data, Mapping) else str(data)


def _report(model, out: Path, details: dict, result, before: dict, after: dict, export_check: dict,
            extra: dict) -> dict:
    metric = "top1" if "top1" in after else "top1_agreement" if "top1_agreement" in after else None
    rep: dict[str, Any] = {"model": str(model) if not isinstance(model, onnx.ModelProto) else "model",
                           "output": str(out), **extra,
                           "layers_int8": len(details.get("layers", [])),
                           "layers_skipped": details.get("skipped", []),
                           "quantize": {k: details[k] for k in ("weights", "activations", "calibration")
                                        if k in details},
                           "training": result.as_dict(), "export_check": export_check,
                           "post_training": before, "qat": after, "metric": metric}
    if metric is not None:
        ref = after.get("top1_reference", 1.0)
        gap = ref - before[metric]
        rep["gap_closed"] = None if gap <= 0 else round((after[metric] - before[metric]) / gap, 4)
    return rep

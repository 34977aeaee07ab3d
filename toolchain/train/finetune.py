"""Recover accuracy after pruning: ONNX -> torch, fine-tune on user data, export to ONNX.

torch is optional for optc, so it is imported inside the functions here only (``import
optc`` and ``import optc.train.finetune`` work without it).

:func:`onnx_to_torch` turns an ONNX model into a ``torch.nn.Module`` that interprets the
graph node by node with torch ops. Weights become parameters: Conv/ConvTranspose/Gemm/MatMul
weights and biases, BatchNorm scale and shift, PRelu slopes, and a constant added right after
a MatMul (a bias); BatchNorm running statistics are buffers that training updates; every
other constant (shapes, clip bounds, ...) is a fixed buffer. Supported ops: Conv,
BatchNormalization, Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh, Softmax,
MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Flatten, Gemm, MatMul, Add, Sub, Mul,
Div, Pow, Sqrt, Max, Min, Sum, Mean, ReduceMean, PRelu, Reshape, Slice, Concat, Squeeze, Unsqueeze,
Transpose, Identity, Dropout, Constant, QuantizeLinear, DequantizeLinear. (``onnx2torch`` from
PyPI was considered: it requires torchvision,
whose install replaces optc's pinned CPU torch 2.13 with a newer CUDA build.)

QuantizeLinear/DequantizeLinear are fake quantization with ONNX's numbers (float32 division,
round half to even, saturation to the zero point's type) and the straight-through estimator:
the gradient passes through the rounding and stops where the value saturates. A scale that is a
parameter (``onnx_to_torch(..., trainable=[scale names])``) gets the LSQ gradient (Esser et al.,
"Learned Step Size Quantization", 2020), scaled by ``1 / sqrt(N * Qp)`` (N: values per scale --
per output channel for per-channel weights, per sample for activations; Qp: the largest positive
code), which is what :mod:`optc.train.qat` trains. An int32 quantizer (a bias fake-quantized on
the accumulator grid ``s_x * s_w``, computed from trained scales) passes its gradient to the
value only, not to its scale.

:func:`finetune` trains it with :func:`optc.models.digits.train` (Adam, cosine schedule,
cross-entropy, one thread, seeded) on an ``.npz`` with the input array and ``label`` (without
labels: distillation from a teacher, the unpruned model in :func:`prune_finetune`, with
:func:`optc.train.distill.fit`), and
:func:`optc.train.export.export_torch` writes the result back to checked ONNX (BatchNorm kept as
nodes, the original input/output names and dynamic axes). :func:`prune_finetune` is the
one-command flow behind ``optc prune-finetune``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

from ..errors import InvalidModelError, ToolchainError, UnsupportedModelError, UsageError
from ..onnx_utils import attrs
from . import TrainConfig

__all__ = ["SUPPORTED_OPS", "onnx_to_torch", "finetune", "prune_finetune", "load_training_data",
           "load_training_inputs"]

SUPPORTED_OPS = frozenset({
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Gemm",
    "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Reshape",
    "Concat", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout", "Constant",
    "Sqrt", "ReduceMean", "Slice", "QuantizeLinear", "DequantizeLinear",
})

# (op, input index) whose constant is a trainable weight
_TRAINABLE = {("Conv", 1), ("Conv", 2), ("Gemm", 1), ("Gemm", 2), ("MatMul", 1),
              ("BatchNormalization", 1), ("BatchNormalization", 2), ("PRelu", 1)}


def _import_torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ToolchainError("fine-tuning needs torch: pip install 'optc[torch]'") from exc
    return torch


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from ..frontend import load_model

    return load_model(model)


def onnx_to_torch(model: onnx.ModelProto | str | os.PathLike, *, trainable: Iterable[str] = (),
                  rebatch: bool = False):
    """A ``torch.nn.Module`` computing ``model`` (see the module doc for ops and parameters).

    ``forward`` takes the graph inputs in order and returns the single output (or a tuple).
    ``trainable``: more float initializers to make parameters (e.g. the weights and scales of a
    QDQ graph). ``rebatch``: the model is bound to batch size 1 (as ``optc compile`` binds it) but
    is run on batches: a Reshape whose constant target starts with that 1 takes the batch from
    its input instead (-1, or the input's first dimension when the target already holds a -1).
    Raises UnsupportedModelError listing every op outside :data:`SUPPORTED_OPS`.
    """
    _import_torch()
    from onnx import numpy_helper

    proto = _load(model)
    graph = proto.graph
    bad = sorted({n.op_type for n in graph.node if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")})
    if bad:
        raise UnsupportedModelError(f"fine-tuning cannot convert op(s) {', '.join(bad)} to torch "
                                    f"(supported: {', '.join(sorted(SUPPORTED_OPS))})")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            a = attrs(n)
            if "value" not in a:
                raise UnsupportedModelError(f"Constant node {n.name!r}: only tensor values are supported")
            inits[n.output[0]] = numpy_helper.to_array(a["value"])
    producers = {o: n for n in graph.node for o in n.output}
    trainable_extra, trainable = set(trainable), set()
    for n in graph.node:
        for i, name in enumerate(n.input):
            if (n.op_type, i) in _TRAINABLE and name in inits:
                trainable.add(name)
        if n.op_type == "Add":  # MatMul + constant: the constant is the layer's bias
            for i, name in enumerate(n.input):
                other = n.input[1 - i] if len(n.input) == 2 else ""
                if name in inits and other in producers and producers[other].op_type == "MatMul":
                    trainable.add(name)
    trainable.update(n for n in trainable_extra if n in inits)
    inputs = [i.name for i in graph.input if i.name not in inits]
    module = _OnnxModule(graph, inits, trainable, inputs, [o.name for o in graph.output])
    module.rebatch = rebatch
    return module


def _node_attrs(node: onnx.NodeProto, graph: onnx.GraphProto, inits: dict) -> dict[str, Any]:
    """The node's attributes; a QuantizeLinear/DequantizeLinear also gets ``_constant``: whether
    it quantizes a constant (a weight: an initializer, or a QuantizeLinear of one), which decides
    the N of its LSQ gradient scale (the whole tensor, not one sample)."""
    a = attrs(node)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        a["_constant"] = _computed_from_constants(node.input[0], graph, inits)
    return a


def _computed_from_constants(name: str, graph: onnx.GraphProto, inits: dict, depth: int = 4) -> bool:
    """Whether tensor ``name`` depends on initializers only (within ``depth`` nodes)."""
    if name in inits:
        return True
    prod = next((n for n in graph.node if name in n.output), None)
    if prod is None or depth == 0 or not prod.input:
        return False
    return all(not i or _computed_from_constants(i, graph, inits, depth - 1) for i in prod.input)


def _fake_quant_tools():
    """Straight-through rounding, the LSQ gradient scale and the code range of a zero point."""
    torch = _import_torch()

    def round_ste(v):
        return v + (torch.round(v) - v).detach()

    def grad_scaled(s, g: float):
        return s if not s.requires_grad else (s - s * g).detach() + s * g

    def code_range(zp) -> tuple[int, int]:
        if zp is None or zp.dtype == torch.uint8:
            return 0, 255
        if zp.dtype == torch.int8:
            return -128, 127
        if zp.dtype == torch.int32:
            return -(2 ** 31), 2 ** 31 - 1
        raise UnsupportedModelError(f"fake quantization to {zp.dtype} is not supported (int8, uint8, int32)")

    return round_ste, grad_scaled, code_range


def _OnnxModule(graph, inits, trainable, inputs, outputs):
    torch = _import_torch()
    import torch.nn.functional as F

    class OnnxModule(torch.nn.Module):
        """Interprets an ONNX graph with torch ops; weights are parameters (see optc.train.finetune)."""

        def __init__(self):
            super().__init__()
            self.input_names = list(inputs)
            self.output_names = list(outputs)
            self.rebatch = False
            self.nodes = [(n.op_type, list(n.input), list(n.output), _node_attrs(n, graph, inits), n.name)
                          for n in graph.node if n.op_type != "Constant"]
            self._attr_of: dict[str, str] = {}
            used: set[str] = set()
            for name, arr in inits.items():
                attr = re.sub(r"\W", "_", name).strip("_") or "w"
                if attr[0].isdigit():
                    attr = "w_" + attr
                base, k = attr, 1
                while attr in used or hasattr(torch.nn.Module, attr):
                    k += 1
                    attr = f"{base}_{k}"
                used.add(attr)
                self._attr_of[name] = attr
                t = torch.from_numpy(np.array(arr))
                if name in trainable and t.is_floating_point():
                    self.register_parameter(attr, torch.nn.Parameter(t))
                else:
                    self.register_buffer(attr, t)

        def _get(self, env, name):
            if not name:
                return None
            if name in env:
                return env[name]
            return getattr(self, self._attr_of[name])

        def forward(self, *args):
            env = dict(zip(self.input_names, args))
            for op, ins, outs, a, name in self.nodes:
                xs = [self._get(env, i) for i in ins]
                env[outs[0]] = _run(op, xs, a, self, name)
            res = tuple(env[o] for o in self.output_names)
            return res[0] if len(res) == 1 else res

    def _pads(a, nd):
        pads = list(a.get("pads", [0] * (2 * nd)))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID"):
            raise UnsupportedModelError(f"auto_pad={auto} is not supported for fine-tuning")
        begin, end = pads[:nd], pads[nd:]
        return begin, end

    def _padded(x, begin, end, value=0.0):
        if begin == end:
            return x, tuple(begin)
        pad = []
        for b, e in zip(reversed(begin), reversed(end)):
            pad += [b, e]
        return F.pad(x, pad, value=value), (0,) * len(begin)

    round_ste, grad_scaled, code_range = _fake_quant_tools()

    def _slice(x, xs):
        starts, ends = xs[1].tolist(), xs[2].tolist()
        axes = xs[3].tolist() if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = xs[4].tolist() if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            if sp <= 0:
                raise UnsupportedModelError("Slice with a step <= 0 is not supported for fine-tuning")
            n = x.shape[ax]
            st, en = max(min(st + n if st < 0 else st, n), 0), max(min(en + n if en < 0 else en, n), 0)
            index[ax] = slice(st, en, sp)
        return x[tuple(index)]

    def _fake_quant(op, x, xs, a):
        s, zp = xs[1], xs[2] if len(xs) > 2 else None
        axis = a.get("axis", 1) % max(x.dim(), 1)
        shape = [1] * x.dim()
        per_axis = s.dim() == 1 and s.numel() > 1
        if per_axis:
            shape[axis] = s.numel()
        qmin, qmax = code_range(zp) if op == "QuantizeLinear" or zp is not None else (0, 255)
        per_scale = x.numel() // max(s.numel(), 1) if a.get("_constant") or x.dim() == 0 \
            else x[0].numel() // (s.numel() if per_axis and axis != 0 else 1)
        g = 1.0 / float(np.sqrt(max(per_scale, 1) * max(qmax, 1)))
        if zp is not None and zp.dtype == torch.int32:  # a bias on the accumulator grid s_x * s_w:
            s = s.detach()  # the step sizes learn from their own quantizers, not from this one
        s = grad_scaled(s, g).reshape(shape) if per_axis else grad_scaled(s, g)
        z = 0.0 if zp is None else (zp.reshape(shape) if per_axis else zp).to(s.dtype)
        if op == "QuantizeLinear":
            return torch.clamp(round_ste(x / s) + z, qmin, qmax)
        return (x.to(s.dtype) - z) * s

    def _run(op, xs, a, mod, name):
        x = xs[0] if xs else None
        if op == "Conv":
            nd = xs[1].dim() - 2
            begin, end = _pads(a, nd)
            x, pad = _padded(x, begin, end)
            conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
            return conv(x, xs[1], xs[2] if len(xs) > 2 else None, stride=a.get("strides", 1),
                        padding=pad, dilation=a.get("dilations", 1), groups=a.get("group", 1))
        if op == "BatchNormalization":
            return F.batch_norm(x, xs[3], xs[4], xs[1], xs[2], training=mod.training,
                                momentum=1.0 - a.get("momentum", 0.9), eps=a.get("epsilon", 1e-5))
        if op == "Relu":
            return F.relu(x)
        if op == "LeakyRelu":
            return F.leaky_relu(x, a.get("alpha", 0.01))
        if op == "Clip":
            lo = xs[1] if len(xs) > 1 and xs[1] is not None else a.get("min")
            hi = xs[2] if len(xs) > 2 and xs[2] is not None else a.get("max")
            return torch.clamp(x, lo, hi)
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "HardSigmoid":
            return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0)
        if op == "HardSwish":
            return F.hardswish(x)
        if op == "Tanh":
            return torch.tanh(x)
        if op == "Softmax":
            return torch.softmax(x, a.get("axis", -1))
        if op in ("MaxPool", "AveragePool"):
            k = a["kernel_shape"]
            nd = len(k)
            begin, end = _pads(a, nd)
            if op == "MaxPool":
                x, pad = _padded(x, begin, end, value=float("-inf"))
                fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
                return fn(x, k, stride=a.get("strides", k), padding=pad, dilation=a.get("dilations", 1),
                          ceil_mode=bool(a.get("ceil_mode", 0)))
            include = bool(a.get("count_include_pad", 0))
            if begin != end:
                raise UnsupportedModelError(f"AveragePool {name!r}: asymmetric pads")
            fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
            return fn(x, k, stride=a.get("strides", k), padding=tuple(begin),
                      ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=include)
        if op == "GlobalAveragePool":  # adaptive pools export as GlobalAveragePool/GlobalMaxPool
            if x.dim() == 4:
                return F.adaptive_avg_pool2d(x, 1)
            return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        if op == "GlobalMaxPool":
            if x.dim() == 4:
                return F.adaptive_max_pool2d(x, 1)
            return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)
        if op == "Flatten":
            axis = a.get("axis", 1) % max(x.dim(), 1)
            return torch.flatten(x, axis) if axis == 1 else x.reshape(int(np.prod(x.shape[:axis])), -1)
        if op == "Gemm":
            A = x.t() if a.get("transA", 0) else x
            W = xs[1] if a.get("transB", 0) else xs[1].t()  # F.linear exports as Gemm
            alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
            c = xs[2] if len(xs) > 2 else None
            if alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1):
                return F.linear(A, W, c)
            y = alpha * F.linear(A, W)
            return y if c is None else y + beta * c
        if op == "MatMul":
            return torch.matmul(x, xs[1])
        if op == "Add":
            return xs[0] + xs[1]
        if op == "Sub":
            return xs[0] - xs[1]
        if op == "Mul":
            return xs[0] * xs[1]
        if op == "Div":
            return xs[0] / xs[1]
        if op == "Pow":
            return torch.pow(xs[0], xs[1])
        if op == "Sqrt":
            return torch.sqrt(x)
        if op == "ReduceMean":
            axes = xs[1].tolist() if len(xs) > 1 and xs[1] is not None else a.get("axes")
            dims = tuple(range(x.dim())) if not axes else tuple(int(d) for d in axes)
            return x.mean(dim=dims, keepdim=bool(a.get("keepdims", 1)))
        if op == "Slice":
            return _slice(x, xs)
        if op in ("QuantizeLinear", "DequantizeLinear"):
            return _fake_quant(op, x, xs, a)
        if op in ("Max", "Min", "Sum", "Mean"):
            y = xs[0]
            for t in xs[1:]:
                y = torch.maximum(y, t) if op == "Max" else torch.minimum(y, t) if op == "Min" else y + t
            return y / len(xs) if op == "Mean" else y
        if op == "PRelu":
            return torch.where(x >= 0, x, xs[1] * x)
        if op == "Reshape":
            shape = [int(s) for s in xs[1].tolist()]
            if mod.rebatch and shape and shape[0] == 1 and x.dim() and x.shape[0] != 1:
                shape[0] = x.shape[0] if -1 in shape else -1
            if not a.get("allowzero", 0):
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return x.reshape(shape)
        if op == "Concat":
            return torch.cat(xs, dim=a["axis"])
        if op in ("Squeeze", "Unsqueeze"):
            axes = xs[1].tolist() if len(xs) > 1 and xs[1] is not None else a.get("axes")
            if op == "Squeeze":
                if axes is None:
                    return torch.squeeze(x)
                for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
                    x = x.squeeze(ax)
                return x
            rank = x.dim() + len(axes)
            for ax in sorted(ax % rank for ax in axes):
                x = x.unsqueeze(ax)
            return x
        if op == "Transpose":
            return x.permute(*(a.get("perm") or reversed(range(x.dim()))))
        if op in ("Identity", "Dropout"):
            return x
        raise UnsupportedModelError(f"op {op} ({name!r}) is not supported for fine-tuning")  # pragma: no cover

    return OnnxModule()


# ---------------------------------------------------------------------------------------------
# fine-tuning


def load_training_data(path: str | os.PathLike, input_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` from an ``.npz`` holding ``input_name`` (or ``input``) and ``label``."""
    from ..verify import load_inputs

    data = load_inputs(path)
    key = input_name if input_name in data else "input" if "input" in data else None
    if key is None or "label" not in data:
        raise InvalidModelError(f"{path}: needs arrays {input_name!r} (or 'input') and 'label' "
                                f"(has {', '.join(data)})")
    x, y = np.asarray(data[key], np.float32), np.asarray(data["label"]).reshape(-1).astype(np.int64)
    if len(x) != len(y):
        raise InvalidModelError(f"{path}: {len(x)} inputs but {len(y)} labels")
    return x, y


def load_training_inputs(path: str | os.PathLike, input_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(inputs, labels)`` from an ``.npz`` holding ``input_name`` (or ``input``) and optionally
    labels (any of :data:`optc.accuracy.LABEL_KEYS`); labels are None when there are none."""
    from ..accuracy import find_labels
    from ..verify import load_inputs

    data = load_inputs(path)
    key = input_name if input_name in data else "input" if "input" in data else None
    if key is None:
        raise InvalidModelError(f"{path}: needs an array {input_name!r} (or 'input') (has {', '.join(data) or 'none'})")
    x = np.asarray(data[key])
    if x.dtype.kind not in "fiu" or x.ndim < 1 or len(x) == 0:
        raise InvalidModelError(f"{path}: {key!r} must be a non-empty numeric array (got {x.dtype} {x.shape})")
    _, y = find_labels(data, [key], str(path))
    if y is not None:
        y = np.asarray(y).reshape(-1).astype(np.int64)
        if len(x) != len(y):
            raise InvalidModelError(f"{path}: {len(x)} inputs but {len(y)} labels")
    return x.astype(np.float32), y


def _dynamic_axes(proto: onnx.ModelProto) -> dict[str, dict[int, str]]:
    axes = {}
    inits = {i.name for i in proto.graph.initializer}
    for vi in [i for i in proto.graph.input if i.name not in inits] + list(proto.graph.output):
        dyn = {k: (d.dim_param or f"d{k}") for k, d in enumerate(vi.type.tensor_type.shape.dim)
               if not d.HasField("dim_value") or d.dim_value <= 0}
        if dyn:
            axes[vi.name] = dyn
    return axes


def finetune(
    model: onnx.ModelProto | str | os.PathLike,
    train_data: str | os.PathLike | tuple[np.ndarray, np.ndarray | None],
    out: str | os.PathLike,
    *,
    config: TrainConfig = TrainConfig(),
    overwrite: bool = False,
    teacher: onnx.ModelProto | str | os.PathLike | None = None,
) -> onnx.ModelProto:
    """Fine-tune ``model`` on ``train_data`` as ``config`` says and write it to ``out`` (checked
    ONNX); returns it.

    The model must have one input; the first output is taken as the class scores. With labels
    the loss is cross-entropy (:func:`optc.models.digits.train`); without labels (``train_data``
    has none) the model is distilled from ``teacher`` (e.g. the unpruned original) with
    :func:`optc.train.distill.fit` (KL on class scores, scaled MSE otherwise).
    Deterministic for a given seed.
    """
    torch = _import_torch()
    from .export import ExportOptions, export_torch
    from optc.models import digits

    epochs, lr, batch_size, seed = config.epochs, config.lr, config.batch_size, config.seed
    if epochs < 0 or lr <= 0 or batch_size < 2:
        raise UsageError("epochs must be >= 0, lr > 0 and batch size >= 2")
    proto = _load(model)
    module = onnx_to_torch(proto)
    if len(module.input_names) != 1:
        raise UnsupportedModelError("fine-tuning supports models with one input")
    name = module.input_names[0]
    x, y = train_data if isinstance(train_data, tuple) else load_training_inputs(train_data, name)
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists (use --force / overwrite=True)")
    if y is None and teacher is None:
        raise InvalidModelError("the training data has no labels ('label'); label-free fine-tuning "
                                "distils from a teacher model, and none was given")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if epochs and y is None:
            from .distill import fit, teacher_outputs

            fit(module, x, teacher_outputs(onnx_to_torch(_load(teacher)), x), config)
        elif epochs:
            head = _FirstOutput(module) if len(module.output_names) > 1 else module
            digits.train(head, x, y, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size,
                         weight_decay=config.weight_decay)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    example = torch.from_numpy(np.ascontiguousarray(x[:1]))
    export_torch(module, (example,), out, input_names=[name], output_names=module.output_names,
                 overwrite=overwrite,
                 options=ExportOptions(dynamic_axes=_dynamic_axes(proto) or None, opset=max(opset, 13),
                                       keep_batchnorm=True))
    return onnx.load(str(out))


def _FirstOutput(module):
    torch = _import_torch()

    class FirstOutput(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)[0]

    return FirstOutput(module)


# ---------------------------------------------------------------------------------------------
# the one-command flow


@dataclass(frozen=True)
class Evaluation:
    """Where :func:`prune_finetune` measures accuracy: the ``data`` file (evaluated with
    onnxruntime), at most ``limit`` samples of it, and the budget ``max_accuracy_drop`` in
    points (None: no budget)."""

    data: str | os.PathLike
    limit: int | None = None
    max_accuracy_drop: float | None = None


def prune_finetune(
    model: str | os.PathLike,
    passes: str,
    train_data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    evaluation: Evaluation | None = None,
    config: TrainConfig = TrainConfig(),
    force: bool = False,
    progress=None,
) -> dict:
    """Run ``passes`` (e.g. ``prune<ratio=0.5>``) on ``model``, fine-tune on ``train_data`` as
    ``config`` says (cross-entropy with labels; without labels, distillation from ``model``),
    write ``out``, and report parameters, FLOPs, file size and accuracy of the original, the
    pruned and the fine-tuned model (accuracy on ``evaluation.data`` with onnxruntime).

    ``evaluation.max_accuracy_drop`` (points): the report says whether the fine-tuned model's
    metric is within that many points of the original's (``budget_passed``); ``out`` is written
    either way (the CLI then exits with code 6).
    """
    import onnx_ir as ir

    from .. import pipeline
    from ..frontend import graph_inputs
    from ..prune_scan import EvalData, evaluate_model
    from ..progress import SILENT
    from optc.passes.prune import model_costs

    progress = progress or SILENT
    eval_data = evaluation.data if evaluation is not None else None
    eval_limit = evaluation.limit if evaluation is not None else None
    max_accuracy_drop = evaluation.max_accuracy_drop if evaluation is not None else None
    epochs = config.epochs
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} already exists (use --force)")
    specs = pipeline.parse_pipeline(passes)
    original = _load(model)
    with progress.step(f"passes: {pipeline.format_pipeline(specs)}"):
        irm = ir.serde.deserialize_model(original)
        irm, records = pipeline.run_pipeline(irm, specs)
        pruned = ir.serde.serialize_model(irm)
        onnx.checker.check_model(pruned, full_check=True)

    def costs(proto):
        return model_costs(ir.serde.deserialize_model(proto))

    data = EvalData(eval_data, original, eval_limit) if eval_data is not None else None
    report: dict = {"model": str(model), "passes": pipeline.format_pipeline(specs),
                    "passes_explicit": pipeline.format_pipeline(specs, explicit=True),
                    "records": [r.__dict__ for r in records], "output": str(out),
                    "finetune": {"train": str(train_data), "epochs": epochs, "lr": config.lr,
                                 "batch_size": config.batch_size, "seed": config.seed,
                                 "weight_decay": config.weight_decay,
                                 "optimizer": "Adam, cosine schedule to 0, cross-entropy, 1 thread"}}
    train = load_training_inputs(train_data, graph_inputs(original)[0].name)
    report["finetune"]["labels"] = train[1] is not None
    report["finetune"]["samples"] = int(len(train[0]))
    if train[1] is None:
        report["finetune"]["optimizer"] = ("Adam, cosine schedule to 0, 1 thread; no labels: distillation from "
                                           "the original model (optc.train.distill: KL at T=2 on class scores, "
                                           "scaled MSE otherwise)")
    stages = {"original": original, "pruned": pruned}
    ref = None
    if data is not None:
        with progress.step(f"evaluate original and pruned on {eval_data}"):
            ref = data.predictions(original)
    with progress.step(f"fine-tune {epochs} epochs"):
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            tuned = finetune(pruned, train, Path(tmp) / "tuned.onnx", config=config, teacher=original)
    stages["finetuned"] = tuned
    for key, proto in stages.items():
        entry = costs(proto)
        if data is not None:
            entry[data.metric_name] = evaluate_model(proto, data, ref)
        report[key] = entry
    if data is not None:
        report["eval"] = {"data": str(eval_data), "samples": data.used, "metric": data.metric_name}
        m = data.metric_name
        report["drop_points_pruned"] = report["original"][m] - report["pruned"][m]
        report["drop_points"] = report["original"][m] - report["finetuned"][m]
    from ..artifact import save_onnx_atomic

    report["finetuned"]["onnx_bytes"] = save_onnx_atomic(tuned, out)
    if max_accuracy_drop is not None and data is not None:
        report["max_accuracy_drop"] = max_accuracy_drop
        report["budget_passed"] = bool(report["drop_points"] <= max_accuracy_drop)
    return report

"""Converters for indexing ops that TVM's Relax importer lacks or gets wrong: TensorScatter
(a KV-cache write, opset 24), EyeLike with an output ``dtype`` other than the input's, and
Dropout's mask (bool, all true in inference mode).

TensorScatter(past_cache, update, write_indices): ``past_cache`` ``[B, ..., M, ...]`` with
``update`` ``[B, ..., S, ...]`` written along ``axis`` (default -2) from position
``write_indices[b]`` (default 0) of each batch row ``b``; ``mode="circular"`` wraps the
positions modulo ``M``. Lowered as a gather, not a scatter: each cache position ``j`` of
row ``b`` reads ``update[..., t, ...]`` with ``t = j - write_indices[b]`` (circular:
``t mod M``) where ``0 <= t < S``, and keeps ``past_cache`` elsewhere (one ``gather_elements``
along ``axis`` with the indices broadcast over the other dimensions, one ``where``). In linear
mode, positions past ``M`` are outside the cache (an error in the reference): nothing is
written there.

EyeLike: TVM's converter refuses a ``dtype`` attribute that differs from the input's type,
and TVM's legalization of ``eye_like(x, k, dtype)`` ignores ``dtype`` (the result keeps the
input's type): the identity is built in the input's type and cast.

Dropout: TVM's ``nn.dropout`` gives its mask in the input's type (the spec: bool) and
``DecomposeOpsForInference`` makes it the identity: here ``y = x`` and the mask all true
(bool), as in inference mode. Training mode with a constant ``training_mode`` true and a
constant ratio above 0 is random: refused by name. (A run-time ``training_mode`` is taken as
inference; optc's verification against onnxruntime refuses a model where that is wrong.)
"""

from __future__ import annotations

from .lower import register_converter, register_if_available
from .onnx_ops import _dtype, _rank


def register() -> None:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import get_constant, get_type

    op = relax.op

    @register_converter("", "TensorScatter")
    def tensor_scatter(bb, inputs, attr, params):
        past, update = inputs[0], inputs[1]
        write = inputs[2] if len(inputs) > 2 else None
        r = _rank(past)
        axis = int(attr.get("axis", -2)) % r
        mode = attr.get("mode", b"linear")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if axis == 0 or mode not in ("linear", "circular"):
            raise ValueError(f"TensorScatter: axis {axis} / mode {mode!r}: a sequence axis after the batch "
                             "axis and mode linear or circular are lowered")
        shape = [int(v) for v in past.ty.shape]
        batch, m, s = shape[0], shape[axis], int(update.ty.shape[axis])
        pos = op.expand_dims(op.arange(0, m, 1, "int64"), [0])  # [1, M]
        start = op.zeros([batch, 1], "int64") if write is None else \
            op.reshape(op.astype(write, "int64"), [batch, 1])
        t = op.subtract(pos, start)  # [B, M]
        if mode == "circular":
            t = op.floor_mod(t, relax.const(m, "int64"))
        valid = op.logical_and(op.greater_equal(t, relax.const(0, "int64")), op.less(t, relax.const(s, "int64")))
        idx = op.clip(t, 0, s - 1)
        # [B, M] -> [B, 1, .., M, 1, ..] -> the cache's shape
        at = [batch] + [1] * (r - 1)
        at[axis] = m
        idx = op.broadcast_to(op.reshape(idx, at), shape)
        valid = op.broadcast_to(op.reshape(valid, at), shape)
        return op.where(valid, op.gather_elements(update, idx, axis), past)

    @register_converter("", "EyeLike")
    def eye_like(bb, inputs, attr, params):
        x = inputs[0]
        dtype = get_type(attr["dtype"]) if "dtype" in attr else _dtype(x)
        # TVM's legalization of eye_like ignores its dtype (the kernel writes the input's
        # type): build it in the input's type, then cast (0 and 1 are exact in every type)
        return op.astype(op.eye_like(x, int(attr.get("k", 0))), dtype)

    @register_converter("", "Dropout")
    def dropout(bb, inputs, attr, params):
        def constant(k):  # ratio and training_mode are inputs from opset 12 on, attributes before
            if len(inputs) <= k or inputs[k] is None:
                return None
            c = get_constant(inputs[k], params)
            return float(c.value.numpy()) if isinstance(c, tvm.ir.GenericConst) else None

        ratio, training = constant(1), constant(2)
        if training and (ratio is None or ratio > 0):
            raise ValueError(f"Dropout in training mode (ratio {0.5 if ratio is None else ratio:g}) is random: "
                             "not compiled (inference mode and ratio 0 are)")
        x = inputs[0]
        if attr.get("tvm_custom", {}).get("num_outputs", 1) < 2:
            return x
        return relax.Tuple([x, op.ones(x.ty.shape, "bool")])

register_if_available(register)

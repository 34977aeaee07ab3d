"""Converters for the ``com.microsoft`` ops that onnxruntime's own graph optimizer writes into
the models it saves (``SessionOptions.optimized_model_filepath`` at the "extended" level,
``onnxruntime.transformers.optimizer``): third-party models are shipped that way.

- FusedConv: ``activation(Conv(X, W, B) + Z)``; the activation (Relu, Tanh, Sigmoid,
  LeakyRelu, Clip, HardSigmoid) and its ``activation_params`` are attributes, ``Z`` an
  optional fourth input added before it. The Conv is TVM's own converter.
- FusedGemm: ``activation(Gemm(A, B, C))``, the same activations (parameters as
  ``activation_alpha`` / ``activation_beta``).
- QuickGelu: ``x * sigmoid(alpha * x)``.
- BiasGelu, FastGelu, Gelu, SkipLayerNormalization: TVM's importer has converters for these
  com.microsoft ops under their bare names, but a node's domain kept them out of
  ``supported_ops``; they are registered here under ``com.microsoft`` and dispatch to TVM's.

Every one is verified against onnxruntime running the same node like any other op.
"""

from __future__ import annotations

from .lower import CUSTOM_CONVERTERS, register_converter, register_if_available

MS = "com.microsoft"
ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid")
TVM_ALIASES = ("BiasGelu", "FastGelu", "Gelu", "SkipLayerNormalization")


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def activation(x, attr: dict, op_type: str):
    """``attr["activation"]`` applied to ``x`` with its ``activation_params`` (FusedConv) or
    ``activation_alpha`` / ``activation_beta`` (FusedGemm); an activation outside
    :data:`ACTIVATIONS` is refused by name."""
    from tvm import relax

    op = relax.op
    name = _text(attr.get("activation", ""))
    params = [float(p) for p in attr.get("activation_params", [])]
    if not params and "activation_alpha" in attr:  # FusedGemm's form
        params = [float(attr[k]) for k in ("activation_alpha", "activation_beta") if k in attr]
    dt = x.ty.dtype
    const = lambda v: relax.const(v, dt)  # noqa: E731
    if name == "Relu":
        return op.nn.relu(x)
    if name == "Tanh":
        return op.tanh(x)
    if name == "Sigmoid":
        return op.sigmoid(x)
    if name == "LeakyRelu":
        return op.nn.leakyrelu(x, params[0] if params else 0.01)
    if name == "Clip":
        lo, hi = (params + [float("-inf"), float("inf")][len(params):])[:2]
        return op.minimum(op.maximum(x, const(lo)), const(hi))
    if name == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return op.clip(op.add(op.multiply(x, const(alpha)), const(beta)), 0.0, 1.0)
    raise ValueError(f"{op_type}: activation {name or '(none)'!r} is not lowered ({', '.join(ACTIVATIONS)} are)")


def _plain(attr: dict) -> dict:
    """``attr`` without the fused activation's attributes (what the plain op takes)."""
    return {k: v for k, v in attr.items() if not k.startswith("activation")}


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op
    tvm_map = onnx_frontend._get_convert_map()

    @register_converter(MS, "FusedConv")
    class FusedConv(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            conv = CUSTOM_CONVERTERS.get("::Conv", tvm_map["Conv"]).get_converter(11)(  # optc's Conv if it has one
                bb, list(inputs[:3]), _plain(attr), params)
            y = bb.normalize(conv)
            if len(inputs) > 3 and inputs[3] is not None:
                y = bb.normalize(op.add(y, inputs[3]))
            return activation(y, attr, "FusedConv")

    @register_converter(MS, "FusedGemm")
    class FusedGemm(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            gemm = CUSTOM_CONVERTERS.get("::Gemm", tvm_map["Gemm"]).get_converter(13)(bb, list(inputs), _plain(attr), params)
            return activation(bb.normalize(gemm), attr, "FusedGemm")

    @register_converter(MS, "QuickGelu")
    class QuickGelu(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            alpha = relax.const(float(attr.get("alpha", 1.702)), x.ty.dtype)
            return op.multiply(x, op.sigmoid(op.multiply(x, alpha)))

    for name in TVM_ALIASES:  # dispatch is by op type: an optc converter of the bare name stays first
        if name in tvm_map and f"::{name}" not in CUSTOM_CONVERTERS:
            register_converter(MS, name)(tvm_map[name])


register_if_available(register)

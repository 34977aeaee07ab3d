"""Converters for standard ONNX ops that TVM's Relax ONNX importer lacks or gets wrong.

Registered in the default domain (``lower.register_converter("", op)``), they replace or add
to the importer's table for optc's imports only (``lower._from_onnx``). Each is a few
Relax ops with the ONNX definition in its docstring; each is checked against onnxruntime by
the ONNX node tests (``tests/test_node_tests.py``).

- LpNormalization (missing): ``x / ||x||_p`` along ``axis`` (p = 1 or 2; 0 where the norm is 0).
- Swish (missing, opset 24): ``x * sigmoid(alpha * x)``.
- Cosh, Sinh: TVM's ``tirx.cosh`` / ``sinh`` intrinsics have no LLVM lowering (the build
  failed); ``(e^x +- e^-x) / 2`` instead.
- IsInf: TVM ignored ``detect_positive`` / ``detect_negative``.
- SpaceToDepth: TVM ignored ``mode`` (CRD, opset 25: channels ``c * bs * bs + by * bs + bx``).
- LayerNormalization: TVM returned 0-d placeholders for the optional ``Mean`` / ``InvStdDev``
  outputs; they are computed (shape of X with the normalized axes 1, in the stash type).
- RMSNormalization: ``X / sqrt(mean(X^2 over axes >= axis) + epsilon) * scale`` in plain ops
  (TVM's fused ``rms_norm`` failed to build when ``axis`` is 0).
- Elu: TVM's constants were float32 whatever the input (float16 models failed to import).
- ConvTranspose: TVM ignored ``output_shape``; the pads it implies are computed (ONNX:
  ``total = stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - out``, split
  ``total - total // 2`` first unless ``auto_pad`` is SAME_UPPER; a negative total becomes
  extra ``output_padding``), then TVM's converter runs.
- Pow: integer bases (TVM's ``power`` takes floats only) through float64, rounded back; an
  exponent of another type than the base is cast to it (the output has the base's type).
"""

from __future__ import annotations

from .lower import register_converter, register_if_available


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _rank(expr) -> int:
    return len(expr.ty.shape)


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op

    def const(value, like):
        return relax.const(value, _dtype(like))

    @register_converter("", "LpNormalization")
    class LpNormalization(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            axis, p = int(attr.get("axis", -1)), int(attr.get("p", 2))
            if p not in (1, 2):
                raise ValueError(f"LpNormalization p must be 1 or 2, not {p}")
            norm = (op.sum(op.abs(x), axis=[axis], keepdims=True) if p == 1
                    else op.sqrt(op.sum(op.multiply(x, x), axis=[axis], keepdims=True)))
            zero = const(0.0, x)
            safe = op.where(op.equal(norm, zero), const(1.0, x), norm)
            return op.where(op.equal(norm, zero), op.zeros_like(x), op.divide(x, safe))

    @register_converter("", "Swish")
    class Swish(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            alpha = float(attr.get("alpha", 1.0))
            return op.multiply(x, op.sigmoid(op.multiply(x, const(alpha, x))))

    def _half_exp_pair(name: str, combine):
        """Cosh / Sinh: (exp(x) combine exp(-x)) / 2."""

        @register_converter("", name)
        class _HalfExpPair(OnnxOpConverter):
            @classmethod
            def _impl_v9(cls, bb, inputs, attr, params):
                x = inputs[0]
                return op.multiply(combine(op.exp(x), op.exp(op.negative(x))), const(0.5, x))

        _HalfExpPair.__name__ = _HalfExpPair.__qualname__ = name
        return _HalfExpPair

    _half_exp_pair("Cosh", op.add)
    _half_exp_pair("Sinh", op.subtract)

    @register_converter("", "IsInf")
    class IsInf(OnnxOpConverter):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x = inputs[0]
            pos, neg = int(attr.get("detect_positive", 1)), int(attr.get("detect_negative", 1))
            inf = op.isinf(x)
            if pos and neg:
                return inf
            if not pos and not neg:
                return op.zeros(x.ty.shape, "bool")
            sign = op.greater(x, const(0.0, x)) if pos else op.less(x, const(0.0, x))
            return op.logical_and(inf, sign)

    @register_converter("", "SpaceToDepth")
    class SpaceToDepth(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            bs = int(attr["blocksize"])
            mode = attr.get("mode", b"DCR")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            b, c, h, w = inputs[0].ty.shape
            x = op.reshape(inputs[0], (b, c, h // bs, bs, w // bs, bs))
            perm = [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4]
            return op.reshape(op.permute_dims(x, perm), (b, c * bs * bs, h // bs, w // bs))

    base_layer_norm = tvm_onnx.LayerNormalization

    @register_converter("", "LayerNormalization")
    class LayerNormalization(OnnxOpConverter):
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):
            out = base_layer_norm._impl_v17(bb, inputs, attr, params)
            x = inputs[0]
            rank = _rank(x)
            axis = int(attr.get("axis", -1)) % rank
            axes = list(range(axis, rank))
            stash = "float32" if int(attr.get("stash_type", 1)) == 1 else _dtype(x)
            xs = op.astype(x, stash) if stash != _dtype(x) else x
            mean = op.mean(xs, axis=axes, keepdims=True)
            centered = op.subtract(xs, mean)
            var = op.mean(op.multiply(centered, centered), axis=axes, keepdims=True)
            eps = relax.const(float(attr.get("epsilon", 1e-5)), stash)
            inv = op.divide(relax.const(1.0, stash), op.sqrt(op.add(var, eps)))
            return relax.Tuple([out.fields[0] if isinstance(out, relax.Tuple) else out, mean, inv])

    @register_converter("", "RMSNormalization")
    class RMSNormalization(OnnxOpConverter):
        @classmethod
        def _impl_v23(cls, bb, inputs, attr, params):
            x, scale = inputs[0], inputs[1]
            rank = _rank(x)
            axes = list(range(int(attr.get("axis", -1)) % rank, rank))
            stash = "float32" if int(attr.get("stash_type", 1)) == 1 else _dtype(x)
            xs = op.astype(x, stash) if stash != _dtype(x) else x
            ss = op.astype(scale, stash) if stash != _dtype(scale) else scale
            ms = op.mean(op.multiply(xs, xs), axis=axes, keepdims=True)
            eps = relax.const(float(attr.get("epsilon", 1e-5)), stash)
            y = op.multiply(op.divide(xs, op.sqrt(op.add(ms, eps))), ss)
            return op.astype(y, _dtype(x)) if stash != _dtype(x) else y

    @register_converter("", "Elu")
    class Elu(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            alpha = float(attr.get("alpha", 1.0))
            neg = op.multiply(const(alpha, x), op.subtract(op.exp(x), const(1.0, x)))
            return op.where(op.greater(x, const(0.0, x)), x, neg)

    base_conv_transpose = tvm_onnx.ConvTranspose

    @register_converter("", "ConvTranspose")
    class ConvTranspose(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if "output_shape" in attr:
                attr = dict(attr)
                spatial = _rank(inputs[0]) - 2
                out = [int(v) for v in attr.pop("output_shape")][-spatial:]
                size = [int(v) for v in inputs[0].ty.shape][2:]
                kernel = list(attr.get("kernel_shape") or [int(v) for v in inputs[1].ty.shape][2:])
                strides = list(attr.get("strides", [1] * spatial))
                dil = list(attr.get("dilations", [1] * spatial))
                opad = list(attr.get("output_padding", [0] * spatial))
                mode = attr.pop("auto_pad", b"NOTSET")
                mode = mode.decode() if isinstance(mode, bytes) else str(mode)
                begin, end = [], []
                for i in range(spatial):
                    total = strides[i] * (size[i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - out[i]
                    if total < 0:
                        opad[i] -= total
                        total = 0
                    first = total // 2 if mode == "SAME_UPPER" else total - total // 2
                    begin.append(first)
                    end.append(total - first)
                attr["pads"], attr["output_padding"] = begin + end, opad
            return base_conv_transpose._impl_v1(bb, inputs, attr, params)

    base_pow = tvm_onnx.Pow

    @register_converter("", "Pow")
    class Pow(OnnxOpConverter):
        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):
            x, y = inputs
            if not all(isinstance(getattr(v, "ty", None), relax.TensorType) for v in (x, y)):
                return base_pow._impl_v7(bb, inputs, attr, params)
            dx, dy = _dtype(x), _dtype(y)
            if dx.startswith(("int", "uint")):
                r = op.power(op.astype(x, "float64"), op.astype(y, "float64") if dy != "float64" else y)
                return op.astype(op.round(r), dx)
            if dy != dx:
                y = op.astype(y, dx)
            return op.power(x, y)


register_if_available(register)

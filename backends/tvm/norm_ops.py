"""BatchNormalization in training mode (``training_mode=1``), which TVM's importer turns into
``nn.batch_norm(training=True)`` that optc's ``DecomposeOpsForInference`` then computes with
the running statistics (the inference formula): wrong ``Y`` and running statistics.

Here, per the ONNX spec (BatchNormalization-15): the batch statistics over every axis but the
channel axis 1, ``mean_b = mean(X)``, ``var_b = mean((X - mean_b)^2)`` (population variance),
``Y = (X - mean_b) / sqrt(var_b + epsilon) * scale + B``, and the running statistics
``running_mean = input_mean * momentum + mean_b * (1 - momentum)`` (``running_var`` alike), in
float32 for float16 data (the spec's rule for float16 training statistics). Inference mode
keeps TVM's converter.
"""

from __future__ import annotations

from .lower import register_converter, register_if_available
from .onnx_ops import _rank


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import BatchNormalization as TvmBatchNormalization

    op = relax.op

    @register_converter("", "BatchNormalization")
    def batch_normalization(bb, inputs, attr, params):
        if not attr.get("training_mode", 0):
            return TvmBatchNormalization._impl_v15(bb, inputs, attr, params)
        x, scale, bias, mean, var = inputs[:5]
        dtypes = [v.ty.dtype for v in (x, scale, mean)]
        work = "float32" if "float16" in dtypes else dtypes[0]
        x, scale, bias, mean, var = (v if v.ty.dtype == work else op.astype(v, work)
                                     for v in (x, scale, bias, mean, var))
        r = _rank(x)
        axes = [0] + list(range(2, r))
        channels = [1, -1] + [1] * (r - 2)
        m = bb.normalize(op.mean(x, axis=axes, keepdims=True))
        d = bb.normalize(op.subtract(x, m))
        v = bb.normalize(op.mean(op.multiply(d, d), axis=axes, keepdims=True))
        eps = relax.const(float(attr.get("epsilon", 1e-5)), work)
        y = op.add(op.multiply(op.divide(d, op.sqrt(op.add(v, eps))), op.reshape(scale, channels)),
                   op.reshape(bias, channels))
        k = float(attr.get("momentum", 0.9))
        keep, take = relax.const(k, work), relax.const(1.0 - k, work)
        run_m = op.add(op.multiply(mean, keep), op.multiply(op.reshape(m, [-1]), take))
        run_v = op.add(op.multiply(var, keep), op.multiply(op.reshape(v, [-1]), take))
        outs = [(y, dtypes[0]), (run_m, dtypes[2]), (run_v, dtypes[2])]
        return relax.Tuple([e if t == work else op.astype(e, t) for e, t in outs])


register_if_available(register)

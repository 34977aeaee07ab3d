"""``ai.optc::SignThreshold``: a bipolar activation with a per-channel threshold (what
BatchNormalization followed by Sign folds into; emitted by ``sign-to-threshold``)."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from optc.ops import DOMAIN, Cost, Operand, define, elementwise_surrogate

from ._common import F32, optional_input


def lower_tvm(bb, inputs: list, attr: dict, params):  # noqa: ARG001
    """Relax ops: ``where(D * X >= D * T, 1, -1)`` with T and D broadcast on axis 1."""
    from tvm import relax

    from optc.backends.tvm.lower import static_shape

    x, t, d = inputs[0], inputs[1], optional_input(inputs, 2)
    shape = [1, -1] + [1] * (len(static_shape(x)) - 2)
    t = bb.normalize(relax.op.reshape(t, shape))
    if d is None:
        cond = relax.op.greater_equal(x, t)
    else:
        d = bb.normalize(relax.op.reshape(d, shape))
        cond = relax.op.greater_equal(relax.op.multiply(d, x), relax.op.multiply(d, t))
    one = relax.const(1.0, "float32")
    return relax.op.where(cond, one, relax.op.negative(one))


def _example(rng) -> tuple[list, dict]:
    return [rng.standard_normal((2, 3, 4, 4)).astype(np.float32), np.array([0.5, -np.inf, 0.0], np.float32),
            np.array([1, -1, -1], np.float32)], {}


@define(inputs=(Operand("X", F32), Operand("T", F32), Operand("D", F32, optional=True)),
        outputs=(Operand("Y", F32),), cost=Cost("fp32", elementwise_surrogate, ops_per_output=1),
        lowering={"tvm": lower_tvm}, example=_example)
class SignThreshold(OpRun):
    """``SignThreshold(X, T[, D]) -> Y``

    Bipolar activation with a per-channel threshold (what BatchNormalization followed by Sign
    folds into). ``X`` float32 of rank >= 2, ``T`` and ``D`` float32 ``[C]`` with C = X.shape[1]
    (the channel axis, as for BatchNormalization). ``D`` is +1 or -1 (the sign of the BN
    scale; absent = all +1). ``Y = +1 where D[c] * X >= D[c] * T[c] else -1`` (float32, same
    shape as X). T may be +-inf (a constant channel). When X is the integer output of a binary
    op whose scale was folded in (see ``binarize``), T holds integers (ceil for D = +1, floor
    for D = -1): an integer comparator.
    """

    op_domain = DOMAIN

    def _run(self, X, T, D=None):  # noqa: N803
        shape = [1] * X.ndim
        shape[1] = -1
        t = np.asarray(T, np.float32).reshape(shape)
        d = np.ones_like(t) if D is None else np.asarray(D, np.float32).reshape(shape)
        return (np.where(d * X >= d * t, np.float32(1), np.float32(-1)).astype(np.float32),)

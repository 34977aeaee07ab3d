"""Idempotence, checked the same way for every registered pass: a pass declared
``idempotent`` is run twice in a row (the same pass object, in place, as a pipeline
``p,p`` would) on a small model it rewrites, and the second run must change nothing:
``modified`` false and the same serialized model. A pass declared not idempotent is listed in
:data:`NOT_IDEMPOTENT` with the reason, and the test shows that it is not."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from optc.pipeline import PassResult, instantiate, parse_pipeline, registered_passes, run_pipeline
from tests.conftest import make_conv_model
from tests.passes.test_binarize import bnn_mlp, bnn_pool_cnn
from tests.test_control_flow import loop_model
from tests.test_dynamic_quant import nbits_model
from tests.test_dynamic_lstm import dynamic_lstm_model
from tests.test_qoperator import qlinear_conv_model


def untidy_model() -> onnx.ModelProto:
    """Conv -> BatchNorm -> Identity -> Relu -> GlobalAveragePool -> Reshape to a shape computed
    by Shape/Gather/Unsqueeze/Concat -> Gemm whose weight is Transpose(constant), plus a dead
    Relu: something to do for every cleanup pass."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        untidy (float[2, 3, 8, 8] x) => (float[2, 4] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            n = BatchNormalization (c, gamma, beta, mean, var)
            i = Identity (n)
            r = Relu (i)
            p = GlobalAveragePool (r)
            s = Shape (p)
            b0 = Gather <axis = 0> (s, zero)
            b1 = Unsqueeze (b0, axes)
            shape = Concat <axis = 0> (b1, minus1)
            f = Reshape (p, shape)
            fc_w = Transpose <perm = [1, 0]> (fc_wt)
            y = Gemm <transB = 1> (f, fc_w, fc_b)
            dead = Relu (x)
        }
    """)
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b": rng.standard_normal(8) * 0.1,
              "gamma": rng.uniform(0.5, 1.5, 8), "beta": rng.standard_normal(8) * 0.1,
              "mean": rng.standard_normal(8) * 0.1, "var": rng.uniform(0.5, 2.0, 8),
              "fc_wt": rng.standard_normal((8, 4)), "fc_b": rng.standard_normal(4)}
    model.graph.initializer.extend(numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items())
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                                    numpy_helper.from_array(np.array([0], np.int64), "axes"),
                                    numpy_helper.from_array(np.array([-1], np.int64), "minus1")])
    onnx.checker.check_model(model, full_check=True)
    return model


def zero_channel_model() -> onnx.ModelProto:
    """The conv model with output channel 2 of the Conv all zero (filter and bias)."""
    model = make_conv_model(with_bn=False)
    for init in model.graph.initializer:
        if init.name in ("w", "b"):
            arr = numpy_helper.to_array(init).copy()
            arr[2] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return model


def float_mlp() -> onnx.ModelProto:
    """Four float Gemm layers with ReLUs: post-training binarization keeps the first and last."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        mlp (float[4, 8] x) => (float[4, 3] y) {
            h0 = Gemm <transB = 1> (x, w0)
            r0 = Relu (h0)
            h1 = Gemm <transB = 1> (r0, w1)
            r1 = Relu (h1)
            h2 = Gemm <transB = 1> (r1, w2)
            r2 = Relu (h2)
            y = Gemm <transB = 1> (r2, w3)
        }
    """)
    rng = np.random.default_rng(1)
    shapes = {"w0": (16, 8), "w1": (12, 16), "w2": (10, 12), "w3": (3, 10)}
    model.graph.initializer.extend(numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k)
                                   for k, s in shapes.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def unrolled_rnn() -> onnx.ModelProto:
    """Six per-step input projections on one weight and a recurrence (tests/passes/test_cleanup.py)."""
    from tests.passes.test_cleanup import _unrolled_rnn

    return _unrolled_rnn(17)


def calib(tmp_path: Path) -> str:
    """Calibration data for the conv model's input ``x`` [1, 3, 8, 8], written to tmp_path."""
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.abs(np.random.default_rng(2).standard_normal((16, 3, 8, 8))).astype(np.float32))
    return str(path)


def conv_model() -> onnx.ModelProto:
    return make_conv_model(with_bn=False)


# pass text -> (model builder, pipeline run first to give the pass something to rewrite);
# "{calib}" stands for calibration data written to tmp_path
CASES: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "simplify": (untidy_model, ""),
    "fold-constants": (untidy_model, ""),
    "remove-identity": (untidy_model, ""),
    "fuse-bn": (untidy_model, ""),
    "dce": (untidy_model, ""),
    "batch-matmuls": (unrolled_rnn, ""),
    "prune-zero": (zero_channel_model, ""),
    "sparsify<sparsity=0.5>": (conv_model, ""),
    "quantize<calib={calib}>": (conv_model, ""),
    "integerize": (conv_model, "quantize<calib={calib}>"),
    "sign-to-threshold": (lambda: bnn_mlp()[0], ""),
    "binarize": (lambda: bnn_mlp()[0], "sign-to-threshold"),
    "binarize<post-training>": (float_mlp, ""),
    "fuse-binary-threshold": (lambda: bnn_pool_cnn()[0], "sign-to-threshold,binarize"),
    "expand-qoperator": (qlinear_conv_model, ""),
    "expand-matmul-nbits": (nbits_model, ""),
    "expand-dynamic-lstm": (dynamic_lstm_model, ""),
    "unroll-loops": (loop_model, ""),
}

# passes declared not idempotent: name -> (why, pass text, a model a second run rewrites again)
NOT_IDEMPOTENT: dict[str, tuple[str, str, Callable[[], onnx.ModelProto]]] = {
    "prune": ("each run removes `ratio` of the channels that are left: prune<ratio=0.5> twice keeps a quarter",
              "prune<ratio=0.5>", conv_model),
}


def test_every_pass_declares_idempotence_and_has_a_case():
    declared = {name: cls.idempotent for name, cls in registered_passes().items()}
    assert {text.partition("<")[0] for text in CASES} == {name for name, idem in declared.items() if idem}
    assert set(NOT_IDEMPOTENT) == {name for name, idem in declared.items() if not idem}


@pytest.mark.parametrize("text", list(CASES))
def test_a_second_run_changes_nothing(text, tmp_path):
    build, before = CASES[text]
    data = calib(tmp_path)
    model = ir.serde.deserialize_model(build())
    if before:
        model, _ = run_pipeline(model, before.format(calib=data))
    text = text.format(calib=data)
    (spec,) = parse_pipeline(text)
    p = instantiate(spec)
    config = dict(vars(p))
    first = p(model)
    assert isinstance(first, PassResult) and isinstance(first.details, dict)
    assert first.modified, f"{text}: the model gives the pass nothing to do"
    once = ir.serde.serialize_model(first.model)
    onnx.checker.check_model(once)
    second = p(first.model)
    assert isinstance(second, PassResult) and not second.modified
    assert ir.serde.serialize_model(second.model) == once
    assert vars(p) == config  # the results are in the PassResult, not on the pass object


@pytest.mark.parametrize("name", list(NOT_IDEMPOTENT))
def test_a_pass_declared_not_idempotent_is_not(name):
    _, text, build = NOT_IDEMPOTENT[name]
    p = instantiate(parse_pipeline(text)[0])
    model = ir.serde.deserialize_model(build())
    assert p(model).modified and p(model).modified

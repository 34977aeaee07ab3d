"""Cleanup passes: each is checked for numerical equivalence with onnxruntime (graph
optimizations off), for doing what it says (op counts), and for idempotence."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.pipeline import instantiate, parse_pipeline
from optc.verify import reference_outputs
from tests.conftest import make_conv_model

ATOL_FP32 = 1e-5


def _run(model: onnx.ModelProto, text: str):
    """Run a one-pass pipeline; return (new proto, modified, modified on a second run)."""
    (spec,) = parse_pipeline(text)
    irm = ir.serde.deserialize_model(model)
    first = instantiate(spec)(irm)
    second = instantiate(spec)(first.model)
    out = ir.serde.serialize_model(second.model)
    onnx.checker.check_model(out)
    return out, first.modified, second.modified


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds, atol=ATOL_FP32):
    for x, y in zip(reference_outputs(a, feeds), reference_outputs(b, feeds)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


def _feeds(shape=(2, 3, 8, 8)):
    return {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}


def _model(nodes, inits, inputs, outputs, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])


def test_fuse_bn_into_conv():
    model = make_conv_model(batch=2, with_bn=True)
    out, modified, again = _run(model, "fuse-bn")
    assert modified and not again
    assert "BatchNormalization" not in _ops(out)
    assert _ops(out).count("Conv") == 1
    _assert_same_outputs(model, out, _feeds())


def test_fuse_bn_into_gemm():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "v")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("BatchNormalization", ["h", "g", "beta", "m", "v"], ["y"], epsilon=1e-3)]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])])
    out, modified, again = _run(model, "fuse-bn")
    assert modified and not again and _ops(out) == ["Gemm"]
    _assert_same_outputs(model, out, {"x": np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)})


def test_fuse_bn_leaves_shared_producer_alone():
    """A Conv output used by BN *and* another node cannot be folded (its value would change)."""
    model = make_conv_model(batch=2, with_bn=True)
    g = model.graph
    g.node.append(helper.make_node("Relu", ["c"], ["side"], name="side"))
    g.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [2, 8, 8, 8]))
    out, modified, _ = _run(model, "fuse-bn")
    assert not modified and "BatchNormalization" in _ops(out)


def test_fold_constants():
    inits = [numpy_helper.from_array(np.full((8,), 2.0, np.float32), "a"),
             numpy_helper.from_array(np.full((8,), 3.0, np.float32), "b")]
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]),  # constant
             helper.make_node("Mul", ["ab", "ab"], ["sq"]),  # constant
             helper.make_node("Add", ["x", "sq"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    model = _model(nodes, inits, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    out, modified, again = _run(model, "fold-constants")
    assert modified and not again and _ops(out) == ["Add"]
    _assert_same_outputs(model, out, {"x": np.ones((2, 8), np.float32)})


def test_fold_constants_folds_a_split_of_shape_arithmetic():
    """tf2onnx's pad amounts: Shape -> Split (several outputs) -> Concat -> Pad. onnxscript's
    folder skips multi-output nodes; the pass folds constant Splits itself, so the Pad gets
    constant pads (TVM's importer refused "Dynamic pads")."""
    inits = [numpy_helper.from_array(np.array([2, 2], np.int64), "halves"),
             numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), "lo")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Split", ["s", "halves"], ["s0", "s1"], axis=0),
             helper.make_node("Sub", ["s1", "s1"], ["zero"]),  # [0, 0] from the second half
             helper.make_node("Concat", ["zero", "s0", "lo"], ["pads8"], axis=0),  # [0, 0, 2, 3, 0, 0, 1, 1]
             helper.make_node("Pad", ["x", "pads8"], ["y"])]
    model = _model(nodes, inits, [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 11, 12])])
    out, modified, again = _run(model, "fold-constants")
    assert modified and not again and _ops(out) == ["Pad"], _ops(out)
    _assert_same_outputs(model, out, _feeds())


def test_fold_constants_keeps_the_folders_evaluation_warnings_off_stderr(caplog):
    """A constant CumSum whose axis is a 1-element tensor (onnxruntime accepts it; onnx's
    reference evaluator does not) stays unfolded, without onnxscript's "Evaluation failed"
    warning on the user's terminal, and the folder's log level is restored."""
    import logging

    inits = [numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axis")]
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("CumSum", ["c", "axis"], ["cs"]), helper.make_node("Add", ["x2", "cs"], ["y"])]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    log = logging.getLogger("onnxscript.optimizer._constant_folding")
    before = log.level
    with caplog.at_level(logging.WARNING):  # no handler of its own: the record would reach stderr
        _run(model, "fold-constants")
    assert not [r for r in caplog.records if "Evaluation failed" in r.getMessage()] and log.level == before


def test_remove_identity():
    nodes = [helper.make_node("Identity", ["x"], ["i1"]), helper.make_node("Relu", ["i1"], ["r"]),
             helper.make_node("Identity", ["r"], ["i2"]), helper.make_node("Neg", ["i2"], ["y"])]
    model = _model(nodes, [], [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8, 8])])
    out, modified, again = _run(model, "remove-identity")
    assert modified and not again and _ops(out) == ["Relu", "Neg"]
    _assert_same_outputs(model, out, _feeds())


def test_dce_removes_dead_nodes_and_initializers():
    inits = [numpy_helper.from_array(np.ones((8, 3), np.float32), "unused_w")]
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["dead"]),
             helper.make_node("MatMul", ["dead", "unused_w"], ["dead2"])]
    model = _model(nodes, inits, [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8, 8])])
    out, modified, again = _run(model, "dce")
    assert modified and not again and _ops(out) == ["Relu"] and not out.graph.initializer
    _assert_same_outputs(model, out, _feeds())


def test_simplify_folds_shape_computation():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (what torch exports for x.view(b, -1))."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    model = _model(nodes, inits, [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 192])])
    out, modified, again = _run(model, "simplify")
    assert modified and not again and _ops(out) == ["Reshape"]
    _assert_same_outputs(model, out, _feeds())


@pytest.mark.parametrize("text", ["simplify", "fold-constants", "fuse-bn", "remove-identity", "dce"])
def test_each_pass_is_idempotent_on_a_real_model(text):
    from tests.conftest import MODELS

    path = MODELS / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("bundled model not built")
    from optc.frontend import bind_input_shapes, load_model

    model, _ = bind_input_shapes(load_model(path), {"input": (2, 1, 8, 8)})
    out, _, again = _run(model, text)
    assert not again
    feeds = {"input": np.random.default_rng(3).random((2, 1, 8, 8), np.float32)}
    for x, y in zip(reference_outputs(model, feeds), reference_outputs(out, feeds)):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4)


def _unrolled_rnn(opset: int, steps: int = 6, row_bias: bool = False) -> onnx.ModelProto:
    """An RNN exported step by step: ``y_t = x_t @ W^T + b`` per step (independent), then
    ``h_t = tanh(h_{t-1} @ R^T + y_t)`` (each step reads the last): what an unrolled LSTM
    export looks like. ``row_bias``: a bias with one row per row of the output."""
    rng = np.random.default_rng(0)
    bias = rng.standard_normal((2, 16) if row_bias else (16,)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 512)).astype(np.float32) * 0.05, "W"),
             numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.2, "R"),
             numpy_helper.from_array(np.zeros((2, 16), np.float32), "h_init")]
    nodes, h = [], "h_init"
    for t in range(steps):
        inits.append(numpy_helper.from_array(np.array(t, np.int64), f"t{t}"))
        nodes += [helper.make_node("Gather", ["x", f"t{t}"], [f"x{t}"], axis=0),
                  helper.make_node("Gemm", [f"x{t}", "W", "b"], [f"y{t}"], transB=1),
                  helper.make_node("Gemm", [h, "R"], [f"r{t}"], transB=1),
                  helper.make_node("Add", [f"r{t}", f"y{t}"], [f"a{t}"]),
                  helper.make_node("Tanh", [f"a{t}"], [f"h{t}"])]
        h = f"h{t}"
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 2, 512])],
                  [helper.make_tensor_value_info(h, TensorProto.FLOAT, [2, 16]),
                   helper.make_tensor_value_info("y0", TensorProto.FLOAT, [2, 16])], opset=opset)


@pytest.mark.parametrize("opset", [11, 17])  # Split's sizes: an attribute before 13, an input since
def test_batch_matmuls_batches_independent_steps_never_the_recurrence(opset):
    """The six input projections (same weight, independent) become one Gemm over 12 rows; the
    recurrent Gemms, each reading the last step's output, stay one per step; a graph output
    among the batched values (y0) keeps its name; same outputs; a second run changes nothing."""
    model = _unrolled_rnn(opset)
    out, modified, again = _run(model, "batch-matmuls")
    assert modified and not again
    gemms = [n for n in out.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 1 + 6 and _ops(out).count("Split") == 1 and _ops(out).count("Concat") == 1
    assert [o.name for o in out.graph.output] == ["h5", "y0"]
    feeds = {"x": np.random.default_rng(2).standard_normal((6, 2, 512)).astype(np.float32)}
    _assert_same_outputs(model, out, feeds)


def test_batch_matmuls_leaves_a_bias_with_a_row_per_output_row_and_small_weights():
    out, modified, _ = _run(_unrolled_rnn(17, row_bias=True), "batch-matmuls")
    assert not modified and _ops(out).count("Gemm") == 12
    small = _unrolled_rnn(17)
    for t in small.graph.initializer:
        if t.name == "W":  # 16 x 256 = 4,096 elements: batched; 16 x 255: left alone
            t.CopyFrom(numpy_helper.from_array(np.ones((16, 255), np.float32), "W"))
    small.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 255
    out, modified, _ = _run(small, "batch-matmuls")
    assert not modified


def test_batch_matmuls_groups_of_unnamed_nodes_get_distinct_split_sizes():
    """Two weights, two unnamed Gemms each: two batched Gemms whose Split sizes are distinct
    initializers; same outputs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), w) for w in ("W1", "W2")]
    nodes = [helper.make_node("Gemm", [f"x{t}", w], [f"y{w}{t}"], transB=1) for w in ("W1", "W2") for t in range(2)]
    model = _model(nodes, inits, [helper.make_tensor_value_info(f"x{t}", TensorProto.FLOAT, [1, 128]) for t in range(2)],
                   [helper.make_tensor_value_info(f"y{w}{t}", TensorProto.FLOAT, [1, 64]) for w in ("W1", "W2")
                    for t in range(2)])
    out, modified, again = _run(model, "batch-matmuls")
    assert modified and not again and _ops(out).count("Gemm") == 2
    feeds = {f"x{t}": rng.standard_normal((1, 128)).astype(np.float32) for t in range(2)}
    _assert_same_outputs(model, out, feeds)

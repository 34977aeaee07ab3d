"""ONNX control flow: If folded or lowered to a Relax If, Loop and Scan unrolled
(``unroll-loops``, ``optc.passes.control_flow``), the rest refused by name.

Pass tests compare the unrolled model with onnxruntime on the original; compile tests go
through ``optc.compile`` (its verification against onnxruntime must pass)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import optc
from optc.errors import UnsupportedModelError
from optc.pipeline import run_pipeline

ort = pytest.importorskip("onnxruntime")


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    g = h.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _const(name, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def loop_model(trip: int = 3, m_input: bool = False) -> onnx.ModelProto:
    """y_final = x + sum_k (k + 1) * w (carried), ys = the carried value after each iteration
    (scan output); the body computes with its iteration number and an outer value w."""
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]),
         h.make_node("Cast", ["iter"], ["kf"], to=T.FLOAT),
         h.make_node("Add", ["kf", "one"], ["k1"]),
         h.make_node("Mul", ["k1", "w"], ["step"]),
         h.make_node("Add", ["acc_in", "step"], ["acc_out"]),
         h.make_node("Relu", ["acc_out"], ["scan_out"])],
        "body",
        [h.make_tensor_value_info("iter", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("acc_in", T.FLOAT, [2, 3])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc_out", T.FLOAT, [2, 3]),
         h.make_tensor_value_info("scan_out", T.FLOAT, [2, 3])],
        initializer=[_const("one", np.float32(1))])
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [2, 3])]
    inits = [_const("w", np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)), _const("cond", np.array(True))]
    if m_input:
        inputs.append(h.make_tensor_value_info("M", T.INT64, []))
    else:
        inits.append(_const("M", np.int64(trip)))
    outputs = [h.make_tensor_value_info("y", T.FLOAT, [2, 3]), h.make_tensor_value_info("ys", T.FLOAT, ["K", 2, 3])]
    return _model([h.make_node("Loop", ["M", "cond", "x"], ["y", "ys"], name="loop", body=body)], inputs, outputs,
                  inits)


def scan_model() -> onnx.ModelProto:
    """A running sum over axis 1 of x (forward) and a reverse scan of r (axis 0), with scan
    outputs stacked on axis 1 (one reversed)."""
    body = h.make_graph(
        [h.make_node("Add", ["s_in", "xs"], ["s_out"]),
         h.make_node("Mul", ["s_out", "rs"], ["o1"]),
         h.make_node("Identity", ["s_out"], ["o2"])],
        "body",
        [h.make_tensor_value_info("s_in", T.FLOAT, [2]), h.make_tensor_value_info("xs", T.FLOAT, [2]),
         h.make_tensor_value_info("rs", T.FLOAT, [2])],
        [h.make_tensor_value_info("s_out", T.FLOAT, [2]), h.make_tensor_value_info("o1", T.FLOAT, [2]),
         h.make_tensor_value_info("o2", T.FLOAT, [2])])
    node = h.make_node("Scan", ["s0", "x", "r"], ["s", "y1", "y2"], name="scan", body=body, num_scan_inputs=2,
                       scan_input_axes=[1, 0], scan_input_directions=[0, 1], scan_output_axes=[1, -1],
                       scan_output_directions=[0, 1])
    inputs = [h.make_tensor_value_info("s0", T.FLOAT, [2]), h.make_tensor_value_info("x", T.FLOAT, [2, 4]),
              h.make_tensor_value_info("r", T.FLOAT, [4, 2])]
    outputs = [h.make_tensor_value_info("s", T.FLOAT, [2]), h.make_tensor_value_info("y1", T.FLOAT, [2, 4]),
               h.make_tensor_value_info("y2", T.FLOAT, [2, 4])]
    return _model([node], inputs, outputs)


def if_model(constant_after_binding: bool) -> onnx.ModelProto:
    """y = relu(2x) if cond else relu(-x); cond = (batch == 1) (constant once the batch is
    bound) or sum(x) > 0 (data-dependent)."""
    then_g = h.make_graph([h.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, ["N", 3])],
                          initializer=[_const("two", np.float32(2))])
    else_g = h.make_graph([h.make_node("Neg", ["x"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, ["N", 3])])
    if constant_after_binding:
        cond = [h.make_node("Shape", ["x"], ["shape"]), h.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                h.make_node("Equal", ["n", "one"], ["c"])]
        inits = [_const("zero", np.int64(0)), _const("one", np.int64(1))]
    else:
        cond = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"])]
        inits = [_const("zero", np.float32(0))]
    nodes = [*cond, h.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g),
             h.make_node("Relu", ["y0"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])], inits)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _unrolled(model: onnx.ModelProto, text: str = "unroll-loops"):
    irm, records = run_pipeline(ir.serde.deserialize_model(model), text)
    out = ir.serde.serialize_model(irm)
    onnx.checker.check_model(out)
    return out, records[-1]


# ----------------------------------------------------------------------------- the pass
def test_loop_is_unrolled_with_carried_values_and_scan_outputs():
    model = loop_model(trip=3)
    out, rec = _unrolled(model)
    assert rec.modified and rec.details["unrolled"] == 1 and "Loop" not in _ops(out)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
    want, got = _ort(model, feeds), _ort(out, feeds)
    assert got[1].shape == (3, 2, 3)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_scan_is_unrolled_with_axes_and_directions():
    model = scan_model()
    out, rec = _unrolled(model)
    assert rec.details["unrolled"] == 1 and "Scan" not in _ops(out)
    rng = np.random.default_rng(1)
    feeds = {"s0": rng.standard_normal(2).astype(np.float32), "x": rng.standard_normal((2, 4)).astype(np.float32),
             "r": rng.standard_normal((4, 2)).astype(np.float32)}
    want, got = _ort(model, feeds), _ort(out, feeds)
    assert [g.shape for g in got] == [(2,), (2, 4), (2, 4)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_loops_it_cannot_unroll_are_kept_with_the_reason():
    out, rec = _unrolled(loop_model(m_input=True))
    assert "Loop" in _ops(out) and not rec.details["unrolled"]
    assert "dynamic trip count" in rec.details["kept"][0]["reason"]
    out, rec = _unrolled(loop_model(trip=5), "unroll-loops<max-iterations=4>")
    assert "Loop" in _ops(out)
    assert "5 iterations exceed the unroll bound (4" in rec.details["kept"][0]["reason"]


def test_a_second_run_changes_nothing():
    out, _ = _unrolled(loop_model())
    again, rec = _unrolled(out)
    assert not rec.modified and again == out


# ----------------------------------------------------------------------------- compile
def _compile(model: onnx.ModelProto, tmp_path, **kw) -> dict:
    pytest.importorskip("tvm")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return optc.compile(str(path), "cpu", str(tmp_path / "pkg"), options=optc.CompileOptions.of(measure=False), **kw)


def _optimized(tmp_path) -> onnx.ModelProto:
    return onnx.load(tmp_path / "pkg" / "model.onnx")


@pytest.mark.tvm
def test_compile_unrolls_a_static_loop(tmp_path):
    report = _compile(loop_model(trip=4), tmp_path)
    assert report["verify"]["passed"] is True
    assert "unroll-loops" in report["pipeline"].split(",") and "Loop" not in _ops(_optimized(tmp_path))


@pytest.mark.tvm
def test_compile_unrolls_a_scan(tmp_path):
    report = _compile(scan_model(), tmp_path)
    assert report["verify"]["passed"] is True and "Scan" not in _ops(_optimized(tmp_path))


@pytest.mark.tvm
def test_compile_folds_an_if_whose_condition_is_constant_after_binding(tmp_path):
    report = _compile(if_model(constant_after_binding=True), tmp_path)  # batch bound to 1: then branch
    assert report["verify"]["passed"] is True and "If" not in _ops(_optimized(tmp_path))


@pytest.mark.tvm
def test_compile_lowers_a_data_dependent_if(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5
    report = _compile(if_model(constant_after_binding=False), tmp_path, inputs={"x": x})
    assert report["verify"]["passed"] is True and "If" in _ops(_optimized(tmp_path))
    for feeds in ({"x": x}, {"x": -x}):  # both branches
        got = optc.run(str(tmp_path / "pkg"), feeds)["y"]
        np.testing.assert_allclose(got, _ort(if_model(False), feeds)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.tvm
@pytest.mark.parametrize("kind", ["dynamic", "too long"])
def test_compile_refuses_loops_it_cannot_unroll_by_name(tmp_path, kind):
    model = loop_model(m_input=True) if kind == "dynamic" else loop_model(trip=300)
    with pytest.raises(UnsupportedModelError) as err:
        _compile(model, tmp_path, inputs={"x": np.ones((2, 3), np.float32), "M": np.array(3, np.int64)}
                 if kind == "dynamic" else None)
    msg = str(err.value)
    assert "Loop (loop: " in msg
    assert ("dynamic trip count" if kind == "dynamic" else "300 iterations exceed the unroll bound (256") in msg



@pytest.mark.tvm
def test_compile_adds_unroll_loops_to_a_pipeline_without_it(tmp_path):
    pytest.importorskip("tvm")
    path = tmp_path / "m.onnx"
    onnx.save(loop_model(trip=2), path)
    report = optc.compile(str(path), "cpu", str(tmp_path / "pkg"), passes="",
                          options=optc.CompileOptions.of(measure=False, cleanup=False))
    assert report["pipeline"] == "unroll-loops" and report["verify"]["passed"] is True


def test_if_is_costed_by_its_costlier_branch():
    """Static analysis (and so modeled latency and energy) sees the work inside an If: the
    costlier branch's MACs, not zero."""
    from optc.analysis import layer_costs

    w = numpy_helper.from_array(np.ones((16, 16), np.float32), "w")
    then = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y1"])], "then", [],
                             [h.make_tensor_value_info("y1", T.FLOAT, [4, 16])])
    other = h.make_graph([h.make_node("Relu", ["x"], ["y2"])], "else", [],
                              [h.make_tensor_value_info("y2", T.FLOAT, [4, 16])])
    graph = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                              [h.make_tensor_value_info("c", T.BOOL, []),
                               h.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                              [h.make_tensor_value_info("y", T.FLOAT, [4, 16])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    (cost,) = layer_costs(model)
    assert cost.op == "If" and "then branch" in cost.name
    assert cost.macs == 4 * 16 * 16 and cost.params == 256 and cost.bytes_in > 0


def test_branch_coverage_counts_the_branch_each_call_took():
    from optc.verify import branch_coverage

    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5
    model = if_model(constant_after_binding=False)
    assert branch_coverage(model, [{"x": x}, {"x": -x}, {"x": x}]) == {"y0": {"then": 2, "else": 1}}
    assert branch_coverage(if_model(constant_after_binding=True), [{"x": x}])  # Shape-based: still data to ORT
    assert branch_coverage(_model([h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [2])],
                                  [h.make_tensor_value_info("y", T.FLOAT, [2])]), [{"x": x[0, :2]}]) == {}


@pytest.mark.tvm
def test_compile_warns_when_verification_never_took_a_branch(tmp_path):
    """Inputs that all take the then branch leave the else branch unverified: the report says
    which branch each If took and the compile warns (it does not pass silently)."""
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3))).astype(np.float32) + 0.1
    with pytest.warns(UserWarning, match="else branch was taken by none"):
        report = _compile(if_model(constant_after_binding=False), tmp_path, inputs={"x": x})
    assert report["verify"]["passed"] is True
    assert report["verify"]["if_branches"] == {"y0": {"then": 2, "else": 0}}  # batch 1: two calls

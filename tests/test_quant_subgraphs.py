"""``quantize`` and ``integerize`` inside If branches (``optc.passes.quant.subgraphs``; issue 13).

A tiny model whose every layer sits in the branches of a data-dependent If (as Silero VAD's):
the branches are quantized as models of their own, calibrated on the values they read from
the enclosing graph on the feeds that took them; integerize turns their QDQ layers into integer
convolutions; the artifact is verified (both branches taken) exactly against optc's integer
reference; a wrong integer convolution inside a branch is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc.errors import VerificationError
from optc.passes.quant import quantize_model
from optc.passes.quant.core import QuantConfig
from optc.passes.quant.subgraphs import outer_reads, quantize_with_branches

ort = pytest.importorskip("onnxruntime")


def if_model() -> onnx.ModelProto:
    """``If(sum(x) > 0)``: then Conv+Relu -> Conv (outer-scope weights, then a Constant-node
    weight inside the branch), else a 1x1 Conv; nothing to quantize in the main graph."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(6) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * 0.5).astype(np.float32), "w3"),
             numpy_helper.from_array(np.array(0, np.float32), "zero")]
    w2 = numpy_helper.from_array((rng.standard_normal((4, 6, 3, 3)) * 0.2).astype(np.float32))
    then = helper.make_graph([
        helper.make_node("Conv", ["x", "w1", "b1"], ["t1"], pads=[1, 1, 1, 1], name="then_conv1"),
        helper.make_node("Relu", ["t1"], ["t2"]),
        helper.make_node("Constant", [], ["w2"], value=w2),
        helper.make_node("Conv", ["t2", "w2"], ["ty"], pads=[1, 1, 1, 1], name="then_conv2")],
        "then", [], [helper.make_tensor_value_info("ty", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Conv", ["x", "w3"], ["ey"], name="else_conv")],
                              "else", [], [helper.make_tensor_value_info("ey", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _calib(sign: float | None = None) -> dict:
    """16 samples; ``sign`` forces every sum positive (+1) or negative (-1)."""
    x = np.random.default_rng(5).standard_normal((16, 3, 8, 8)).astype(np.float32)
    return {"x": x if sign is None else sign * np.abs(x)}


def _quantize(model, calib):
    out, details = quantize_model(model, calib)
    return quantize_with_branches(model, out, calib, QuantConfig(), details)


def _branch_ops(model) -> dict[str, list[str]]:
    node = next(n for n in model.graph.node if n.op_type == "If")
    return {a.name: [n.op_type for n in a.g.node] for a in node.attribute}


def _run(model, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})[0]


def test_outer_reads():
    node = next(n for n in if_model().graph.node if n.op_type == "If")
    branches = {a.name: a.g for a in node.attribute}
    assert outer_reads(branches["then_branch"]) == ["b1", "w1", "x"]
    assert outer_reads(branches["else_branch"]) == ["w3", "x"]


def test_layers_in_both_branches_are_quantized():
    """Both branches get QDQ layers (weights from the outer scope and from a Constant node
    inside the branch); the main graph has none; onnxruntime runs the result and it stays
    close to the float model on either branch (within the int8 error, 5 % of the range)."""
    model = if_model()
    out, details = _quantize(model, _calib())
    onnx.checker.check_model(out, full_check=True)
    ops = _branch_ops(out)
    assert ops["then_branch"].count("QuantizeLinear") == 3 and ops["else_branch"].count("QuantizeLinear") == 2
    assert not any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert [l["name"] for l in details["branches"]["branch/then_branch"]["layers"]] == ["then_conv1", "then_conv2"]
    assert not {"w1", "b1", "w3"} & {t.name for t in out.graph.initializer}  # float weights gone
    for x in _calib()["x"][:4]:
        ref, got = _run(model, x[None]), _run(out, x[None])
        assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_branch_no_feed_took_stays_float():
    out, details = _quantize(if_model(), _calib(+1.0))
    assert "no calibration feed took this branch" in details["branches"]["branch/else_branch"]["skipped"]
    ops = _branch_ops(out)
    assert "QuantizeLinear" in ops["then_branch"] and ops["else_branch"] == ["Conv"]


@pytest.mark.tvm
def test_compile_integerizes_branches(tmp_path):
    """quantize + integerize (appended for cpu): IntConv2d in both branches, verified exactly
    against optc's integer reference with both branches taken."""
    src, calib = tmp_path / "if.onnx", tmp_path / "calib.npz"
    onnx.save(if_model(), src)
    np.savez(calib, **_calib())
    report = optc.compile(src, "cpu", tmp_path / "pkg", passes=f"quantize<calib={calib}>",
                          options=optc.CompileOptions.of(measure=False))
    integ = next(p for p in report["passes"] if p["name"] == "integerize")["details"]
    ops = {b: [l["op"] for l in d["layers"]] for b, d in integ["branches"].items()}
    assert ops == {"branch/then_branch": ["IntConv2d", "IntConv2d"], "branch/else_branch": ["IntConv2d"]}
    v = report["verify"]
    assert v["passed"] and v["max_abs_error"] == 0
    assert v["if_branches"]["branch"]["then"] > 0 and v["if_branches"]["branch"]["else"] > 0


@pytest.mark.tvm
def test_wrong_integer_conv_in_a_branch_is_refused(tmp_path, monkeypatch):
    """An IntConv2d lowering that adds one code: the artifact differs from the integer
    reference inside the branches, and verification refuses it."""
    from tvm import relax

    from optc.backends.tvm import lower

    real = lower.load_converters()["ai.optc::IntConv2d"]

    def wrong(bb, inputs, attr, params):
        out = bb.normalize(real.convert(bb, inputs, attr, params))
        return relax.op.add(out, relax.const(1, str(out.ty.dtype)))

    monkeypatch.setitem(lower.CUSTOM_CONVERTERS, "ai.optc::IntConv2d", lower.OpLowering(wrong))
    src, calib = tmp_path / "if.onnx", tmp_path / "calib.npz"
    onnx.save(if_model(), src)
    np.savez(calib, **_calib())
    with pytest.raises(VerificationError, match="artifact output differs"):
        optc.compile(src, "cpu", tmp_path / "bad", passes=f"quantize<calib={calib}>",
                     options=optc.CompileOptions.of(measure=False))

"""Written-out layer norms lowered as one kernel (``backends/tvm/norm_fusion.py``): what is fused
(torch's opset <= 16 export, both ReduceMean forms, Pow or Mul, commuted operands), what is not
(another axis, a broadcast scale, a scale over two axes, another exponent), and that the comparison with
onnxruntime on the original graph still judges the fused kernel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc

pytest.importorskip("tvm")

SHAPE = [2, 5, 8]


def _ln_model(opset: int = 13, *, axis: int = -1, square: str = "pow", exponent: float = 2.0,
              scale_shape: tuple[int, ...] = (8,), keepdims: int = 1, swap: bool = False) -> onnx.ModelProto:
    """x -> the torch (opset <= 16) export of nn.LayerNorm(8) -> Relu; ``opset`` 18 gives
    ReduceMean's axes as an input. The knobs make forms that must not be fused."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, scale_shape).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
             numpy_helper.from_array(np.float32(exponent), "two"), numpy_helper.from_array(np.float32(1e-5), "eps")]

    def mean(src: str, out: str) -> list:
        if opset >= 18:
            inits.append(numpy_helper.from_array(np.array([axis], np.int64), f"{out}_axes"))
            return [helper.make_node("ReduceMean", [src, f"{out}_axes"], [out], keepdims=keepdims)]
        return [helper.make_node("ReduceMean", [src], [out], axes=[axis], keepdims=keepdims)]

    sq = (helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "pow" else helper.make_node("Mul", ["d", "d"], ["sq"]))
    nodes = [*mean("x", "mean"), helper.make_node("Sub", ["x", "mean"], ["d"]), sq, *mean("sq", "var"),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["scale", "n"] if swap else ["n", "scale"], ["ns"]),
             helper.make_node("Add", ["bias", "ns"] if swap else ["ns", "bias"], ["y0"]),
             helper.make_node("Relu", ["y0"], ["y"])]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "ln", [vi("x", TensorProto.FLOAT, ["n", 5, 8])],
                              [vi("y", TensorProto.FLOAT, ["n", 5, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


FUSED = {
    "torch-opset13-pow": {}, "opset18-axes-input": dict(opset=18), "mul-square-commuted-scale-bias": dict(
        square="mul", swap=True), "axis-2-of-rank-3": dict(axis=2),
}
KEPT = {
    "middle-axis": dict(axis=1), "broadcast-scale": dict(scale_shape=(1,)), "cube": dict(exponent=3.0),
    "scale-over-two-axes": dict(scale_shape=(5, 8)),
}


@pytest.mark.parametrize("name", list(FUSED) + list(KEPT))
def test_which_written_out_layer_norms_are_fused(name):
    from optc.backends.tvm.norm_fusion import fuse_layer_norms

    model = _ln_model(**{**FUSED, **KEPT}[name])
    before = onnx.ModelProto.FromString(model.SerializeToString())
    out, count = fuse_layer_norms(model, {"x": SHAPE})
    assert model == before  # the caller's model is left as it was
    ops = [n.op_type for n in out.graph.node]
    if name in FUSED:
        assert count == 1 and ops.count("LayerNorm") == 1 and "ReduceMean" not in ops, ops
    else:
        assert count == 0 and "LayerNorm" not in ops, ops


@pytest.mark.tvm
@pytest.mark.parametrize("name", ["torch-opset13-pow", "opset18-axes-input", "middle-axis"])
def test_fused_and_kept_layer_norms_match_onnxruntime(tmp_path, name):
    """Compiled (verification against onnxruntime on the original graph included) and run:
    a fused one imports as one layer_norm kernel, a kept one as written."""
    from optc.backends.tvm import lower
    from optc.frontend import TensorSpec
    from optc.targets import get_target

    model = _ln_model(**{**FUSED, **KEPT}[name])
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = (np.random.default_rng(1).standard_normal(SHAPE) * 3 + 2).astype(np.float32)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]
    mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", tuple(SHAPE))], get_target("cpu"),
                                  embed_params=True)
    text = str(mod["main"])
    assert ("R.nn.layer_norm" in text) == (name in FUSED), text
    n = x - x.mean(-1, keepdims=True)
    if name in FUSED:
        want = np.maximum(n / np.sqrt((n * n).mean(-1, keepdims=True) + 1e-5) * _scale(model) + _bias(model), 0)
        np.testing.assert_allclose(optc.run(tmp_path / "pkg", {"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def _scale(model):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "scale"))


def _bias(model):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "bias"))


@pytest.mark.tvm
def test_a_wrong_fusion_is_refused_by_verification(tmp_path, monkeypatch):
    """The fused kernel is vouched for by the comparison with onnxruntime on the original graph:
    a fusion that drops the epsilon's place (epsilon 1.0, a deliberate bug) is refused."""
    from optc.backends.tvm import norm_fusion
    from optc.errors import VerificationError

    real = norm_fusion.fuse_layer_norms

    def wrong(model, shapes):
        out, count = real(model, shapes)
        for node in out.graph.node:
            for a in node.attribute:
                if node.op_type == "LayerNorm" and a.name == "epsilon":
                    a.f = 1.0
        return out, count

    monkeypatch.setattr(norm_fusion, "fuse_layer_norms", wrong)
    model = _ln_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    with pytest.raises(VerificationError, match="differs from onnxruntime"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": x},
                     options=optc.CompileOptions.of(measure=False))

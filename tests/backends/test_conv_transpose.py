"""ConvTranspose lowered in polyphase form (``onnx_ops._conv_transpose_as_shuffle``): one
convolution of the ``s x s`` (1-D: ``s``) output phases, a pixel shuffle and a crop, checked against
onnxruntime on the cases that change its arithmetic (kernel equal to, larger than, smaller
than and not a multiple of the stride; pads, asymmetric pads, output_padding; stride 1; no
bias), in 2-D and 1-D, and left to TVM's converter where it does not apply (groups, dilation)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import optc  # noqa: E402
from optc.frontend import TensorSpec  # noqa: E402

pytestmark = pytest.mark.tvm

CIN = 4
# name: (Cout, kernel, stride, extra attributes, bias); all on one 1x4x5x5 input
CASES = {
    "k2s2": (3, 2, 2, {}, True),
    "k2s2_cout1_nobias": (1, 2, 2, {}, False),
    "k4s2p1": (2, 4, 2, {"pads": [1, 1, 1, 1]}, True),
    "k3s2p1_opad1": (2, 3, 2, {"pads": [1, 1, 1, 1], "output_padding": [1, 1]}, True),
    "k1s2_opad1": (2, 1, 2, {"output_padding": [1, 0]}, True),
    "k5s3_asym": (2, 5, 3, {"pads": [2, 1, 0, 3]}, True),
    "k3s1p1": (2, 3, 1, {"pads": [1, 1, 1, 1]}, True),
    "group2": (4, 2, 2, {"group": 2}, True),  # TVM's converter
    "dilated": (2, 2, 2, {"dilations": [2, 2]}, True),  # TVM's converter
}
FALLBACK = {"group2", "dilated"}


def _one_d(extra: dict) -> dict:
    """A 2-D case's attributes for a 1-D ConvTranspose: its second axis (pads: begin, end)."""
    return {key: [v[1], v[3]] if key == "pads" else [v[1]] if key in ("output_padding", "dilations") else v
            for key, v in extra.items()}


def _model(rank: int = 4) -> onnx.ModelProto:
    """Every case on one input: 1x4x5x5 (rank 4) or 1x4x5 (rank 3, the cases' second axis)."""
    rng = np.random.default_rng(0)
    d = rank - 2
    nodes, inits, outs = [], [], []
    for name, (cout, k, s, extra, bias) in CASES.items():
        group = extra.get("group", 1)
        w = rng.standard_normal((CIN, cout // group, *[k] * d)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        ins = ["x", f"{name}_w"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}_b"))
            ins.append(f"{name}_b")
        nodes.append(helper.make_node("ConvTranspose", ins, [name], kernel_shape=[k] * d, strides=[s] * d,
                                      **(extra if d == 2 else _one_d(extra))))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CIN, *[5] * d])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("rank", [4, 3])
def test_conv_transpose_phases_match_onnxruntime(tmp_path, rank):
    path = tmp_path / "ct.onnx"
    onnx.save(_model(rank), path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    assert {o["name"] for o in report["verify"]["outputs"]} == set(CASES)


@pytest.mark.parametrize("rank", [4, 3])
def test_conv_transpose_lowered_without_tvm_conv2d_transpose(rank):
    """Only the grouped and the dilated ConvTranspose reach TVM's conv2d_transpose /
    conv1d_transpose."""
    from optc import targets
    from optc.backends.tvm import lower

    op = "conv2d_transpose" if rank == 4 else "conv1d_transpose"
    for name in CASES:
        model = _model(rank)
        keep = [n for n in model.graph.node if n.output[0] == name]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        kept_out = [o for o in model.graph.output if o.name == name]
        del model.graph.output[:]
        model.graph.output.extend(kept_out)
        mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", (1, CIN, *[5] * (rank - 2)))],
                                      targets.get_target("cpu"), embed_params=True)
        assert (op in mod.script()) == (name in FALLBACK), name


def _qdq_conv_transpose(zero_point: int = 131) -> onnx.ModelProto:
    """Q/DQ activations around a ConvTranspose whose weight is DequantizeLinear(uint8 codes,
    per-tensor scale, zero point): a layer ``integerize`` leaves in float."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.integers(0, 256, (CIN, 3, 2, 2)).astype(np.uint8), "wq"),
             numpy_helper.from_array(np.float32(0.01), "ws"), numpy_helper.from_array(np.uint8(zero_point), "wz"),
             numpy_helper.from_array(np.float32(0.02), "xs"), numpy_helper.from_array(np.uint8(128), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
             helper.make_node("ConvTranspose", ["xd", "w"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "qct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CIN, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dequantized_constant_weights_are_folded_for_the_import(tmp_path):
    """A DequantizeLinear of initializers (the weight) becomes a float constant in the model
    handed to TVM, equal to onnxruntime's dequantization, so the ConvTranspose takes the phase
    form; the activations' DequantizeLinear (a run-time value) stays. The package's ONNX model
    keeps the uint8 codes; the compiled model matches onnxruntime."""
    import onnxruntime as ort

    from optc import targets
    from optc.backends.tvm import lower
    from optc.backends.tvm.weight_folding import fold_constant_dequantize

    model = _qdq_conv_transpose()
    folded, count = fold_constant_dequantize(model)
    assert count == 1 and [n.op_type for n in folded.graph.node].count("DequantizeLinear") == 1
    w = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == "w"))
    probe = helper.make_model(helper.make_graph([model.graph.node[2]], "dq", [],
                                                [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                                                list(model.graph.initializer)),
                              opset_imports=[helper.make_opsetid("", 17)])
    np.testing.assert_array_equal(w, ort.InferenceSession(probe.SerializeToString()).run(None, {})[0])
    mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", (1, CIN, 5, 5))], targets.get_target("cpu"),
                                  embed_params=True)
    assert "conv2d_transpose" not in mod.script()
    onnx.save(model, tmp_path / "qct.onnx")
    report = optc.compile(tmp_path / "qct.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    kept = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    assert any(t.data_type == TensorProto.UINT8 and t.name == "wq" for t in kept.graph.initializer)


def test_a_wrong_weight_fold_is_refused_by_verification(tmp_path, monkeypatch):
    """The folded weights are vouched for by the comparison with onnxruntime: a fold that
    ignores the zero point (a deliberate bug) is refused."""
    from optc.backends.tvm import weight_folding
    from optc.errors import VerificationError

    real = weight_folding.fold_constant_dequantize

    def no_zero_point(model):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for t in model.graph.initializer:
            if t.name == "wz":
                t.CopyFrom(numpy_helper.from_array(np.uint8(0), "wz"))
        return real(model)

    monkeypatch.setattr(weight_folding, "fold_constant_dequantize", no_zero_point)
    onnx.save(_qdq_conv_transpose(), tmp_path / "qct.onnx")
    with pytest.raises(VerificationError):
        optc.compile(tmp_path / "qct.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))

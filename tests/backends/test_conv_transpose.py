"""ConvTranspose lowered in polyphase form (``onnx_ops._conv_transpose_as_shuffle``): one
convolution of the ``s x s`` output phases, a pixel shuffle and a crop, checked against
onnxruntime on the cases that change its arithmetic (kernel equal to, larger than, smaller
than and not a multiple of the stride; pads, asymmetric pads, output_padding; stride 1; no
bias), and left to TVM's converter where it does not apply (groups, dilation)."""

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


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, outs = [], [], []
    for name, (cout, k, s, extra, bias) in CASES.items():
        group = extra.get("group", 1)
        inits.append(numpy_helper.from_array(rng.standard_normal((CIN, cout // group, k, k)).astype(np.float32), f"{name}_w"))
        ins = ["x", f"{name}_w"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}_b"))
            ins.append(f"{name}_b")
        nodes.append(helper.make_node("ConvTranspose", ins, [name], kernel_shape=[k, k], strides=[s, s], **extra))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CIN, 5, 5])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_conv_transpose_phases_match_onnxruntime(tmp_path):
    path = tmp_path / "ct.onnx"
    onnx.save(_model(), path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    assert {o["name"] for o in report["verify"]["outputs"]} == set(CASES)


def test_conv_transpose_lowered_without_tvm_conv2d_transpose():
    """Only the grouped and the dilated ConvTranspose reach TVM's conv2d_transpose."""
    from optc import targets
    from optc.backends.tvm import lower

    for name in CASES:
        model = _model()
        keep = [n for n in model.graph.node if n.output[0] == name]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        kept_out = [o for o in model.graph.output if o.name == name]
        del model.graph.output[:]
        model.graph.output.extend(kept_out)
        mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", (1, CIN, 5, 5))],
                                      targets.get_target("cpu"), embed_params=True)
        assert ("conv2d_transpose" in mod.script()) == (name in FALLBACK), name

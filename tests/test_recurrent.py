"""LSTM / GRU / RNN converters (``backends/tvm/recurrent.py``): small random models through
``optc.compile`` (whose verification against onnxruntime must pass) and ``optc.run``, compared
with onnxruntime again at an explicit float32 tolerance. The ONNX node tests of these ops run in
``tests/test_node_tests.py`` (listed in ``node_tests_known.json``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, B, I, H = 4, 3, 5, 3
ATOL, RTOL = 1e-5, 1e-4


def _model(op_type: str, *, direction: str = "forward", attrs: dict | None = None, bias: bool = True,
           seq: str | None = None, initial: bool = False, peepholes: bool = False,
           outputs: tuple[str, ...] = ("Y", "Y_h"), layout: int = 0, seed: int = 0) -> onnx.ModelProto:
    """One recurrent node; weights are initializers. ``seq``: None, "input" (graph input
    ``sequence_lens``) or "full" (a constant T for every sequence)."""
    rng = np.random.default_rng(seed)
    d, g = (2 if direction == "bidirectional" else 1), GATES[op_type]
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (d, g * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-1, 1, (d, g * H, H)).astype(np.float32), "R")]
    names = ["X", "W", "R", "", "", "", "", ""]
    x_shape = [T, B, I] if layout == 0 else [B, T, I]
    state = [d, B, H] if layout == 0 else [B, d, H]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (d, 2 * g * H)).astype(np.float32), "B"))
        names[3] = "B"
    if seq == "input":
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
        names[4] = "sequence_lens"
    elif seq == "full":
        inits.append(numpy_helper.from_array(np.full(B, T, np.int32), "sequence_lens"))
        names[4] = "sequence_lens"
    if initial:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, state).astype(np.float32), "initial_h"))
        names[5] = "initial_h"
        if op_type == "LSTM":
            inits.append(numpy_helper.from_array(rng.uniform(-1, 1, state).astype(np.float32), "initial_c"))
            names[6] = "initial_c"
    if peepholes:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (d, 3 * H)).astype(np.float32), "P"))
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    all_outputs = ["Y", "Y_h", "Y_c"][: 3 if op_type == "LSTM" else 2]
    node_outputs = [o if o in outputs else "" for o in all_outputs]
    while node_outputs[-1] == "":
        node_outputs.pop()
    node = helper.make_node(op_type, names, node_outputs, hidden_size=H, direction=direction,
                            **({"layout": layout} if layout else {}), **(attrs or {}))
    shapes = {"Y": [T, d, B, H] if layout == 0 else [B, T, d, H], "Y_h": state, "Y_c": state}
    graph = helper.make_graph([node], op_type.lower(), graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model: onnx.ModelProto, lens=None, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    x = model.graph.input[0].type.tensor_type.shape
    feeds = {"X": rng.uniform(-2, 2, [v.dim_value for v in x.dim]).astype(np.float32)}
    if lens is not None:
        feeds["sequence_lens"] = np.asarray(lens, np.int32)
    return feeds


def _ort(model: onnx.ModelProto, feeds: dict) -> dict:
    from optc import verify

    sess = verify.ort_session(model)
    return dict(zip([o.name for o in model.graph.output], sess.run(None, feeds)))


def _compile_and_compare(tmp_path, model: onnx.ModelProto, feeds: dict, **options) -> dict:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    optc.compile(path, "cpu", tmp_path / "pkg", inputs=feeds,
                 options=optc.CompileOptions.of(measure=False, **options))
    got = optc.run(tmp_path / "pkg", feeds)
    if options.get("verify_outputs", True):
        for name, want in _ort(model, feeds).items():
            np.testing.assert_allclose(got[name], want, atol=ATOL, rtol=RTOL, err_msg=name)
    return got


CASES = {
    # name: (op, model kwargs, sequence lengths fed)
    "lstm-bidirectional-all-inputs-variable-lengths": (
        "LSTM", dict(direction="bidirectional", seq="input", initial=True, peepholes=True,
                     outputs=("Y", "Y_h", "Y_c")), [4, 1, 2]),
    "lstm-reverse-activations-clip-input-forget": (
        "LSTM", dict(direction="reverse", peepholes=True, outputs=("Y", "Y_h", "Y_c"),
                     attrs=dict(activations=["HardSigmoid", "ScaledTanh", "Softsign"], activation_alpha=[0.3, 0.8],
                                activation_beta=[0.4, 1.5], clip=0.7, input_forget=1)), None),
    "lstm-forward-constant-full-lengths-y-c-only": (
        "LSTM", dict(seq="full", initial=True, outputs=("Y_c",)), None),
    "lstm-bidirectional-per-direction-activations": (
        "LSTM", dict(direction="bidirectional", bias=False, outputs=("Y",),
                     attrs=dict(activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Elu", "Softplus"],
                                activation_alpha=[0.25, 0.9], activation_beta=[0.45])), None),
    "gru-bidirectional-linear-before-reset-variable-lengths": (
        "GRU", dict(direction="bidirectional", seq="input", initial=True,
                    attrs=dict(linear_before_reset=1)), [2, 4, 3]),
    "gru-forward-clip-activations": (
        "GRU", dict(attrs=dict(activations=["HardSigmoid", "Affine"], activation_alpha=[0.3, 0.5],
                               activation_beta=[0.5, 0.1], clip=0.9)), None),
    "gru-reverse-variable-lengths": ("GRU", dict(direction="reverse", seq="input", initial=True), [1, 3, 4]),
    "rnn-bidirectional-relu-leakyrelu-variable-lengths": (
        "RNN", dict(direction="bidirectional", seq="input", initial=True,
                    attrs=dict(activations=["Relu", "LeakyRelu"], activation_alpha=[0.2])), [3, 4, 2]),
    "rnn-forward-thresholdedrelu": (
        "RNN", dict(attrs=dict(activations=["ThresholdedRelu"], activation_alpha=[0.4])), None),
    "rnn-reverse-sigmoid-clip": (
        "RNN", dict(direction="reverse", outputs=("Y_h",), attrs=dict(activations=["Sigmoid"], clip=0.5)), None),
}


@pytest.mark.tvm
@pytest.mark.parametrize("name", list(CASES))
def test_recurrent_matches_onnxruntime(tmp_path, name):
    op_type, kwargs, lens = CASES[name]
    model = _model(op_type, **kwargs)
    _compile_and_compare(tmp_path, model, _feeds(model, lens))


@pytest.mark.tvm
@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
def test_batch_first_layout(tmp_path, op_type):
    """layout 1 (onnxruntime's CPU provider refuses it): the same weights as layout 0 on the
    transposed input must give the transposed outputs."""
    outputs = ("Y", "Y_h", "Y_c") if op_type == "LSTM" else ("Y", "Y_h")
    kw = dict(direction="bidirectional", initial=True, outputs=outputs)
    ref_model = _model(op_type, **kw)
    x = _feeds(ref_model)["X"]
    want = _ort(ref_model, {"X": x})
    model = _model(op_type, layout=1, **kw)
    ref_inits = {i.name: numpy_helper.to_array(i) for i in ref_model.graph.initializer}
    for init in model.graph.initializer:  # the same weights; states batch first
        value = ref_inits[init.name]
        init.CopyFrom(numpy_helper.from_array(value.transpose(1, 0, 2) if init.name.startswith("initial_")
                                              else value, init.name))
    got = _compile_and_compare(tmp_path, model, {"X": x.transpose(1, 0, 2).copy()}, verify_outputs=False)
    np.testing.assert_allclose(got["Y"], want["Y"].transpose(2, 0, 1, 3), atol=ATOL, rtol=RTOL)
    for name in outputs[1:]:
        np.testing.assert_allclose(got[name], want[name].transpose(1, 0, 2), atol=ATOL, rtol=RTOL)


def test_activation_parameters_consumed_in_order():
    from optc.backends.tvm.recurrent import activation_specs

    specs = activation_specs("LSTM", {"activations": [b"HardSigmoid", b"Tanh", b"LeakyRelu"],
                                      "activation_alpha": [0.3, 0.1], "activation_beta": [0.4]}, 1)
    assert specs == [[("hardsigmoid", 0.3, 0.4), ("tanh", 0.0, 0.0), ("leakyrelu", 0.1, 0.0)]]
    defaults = activation_specs("GRU", {}, 2)
    assert defaults == [[("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0)]] * 2
    with pytest.raises(ValueError, match="unsupported activation"):
        activation_specs("RNN", {"activations": [b"Gelu"]}, 1)


@pytest.mark.tvm
@pytest.mark.qemu
def test_lstm_on_arm(tmp_path):
    """A small bidirectional LSTM with variable lengths, cross-compiled for aarch64 and verified
    under qemu-user against onnxruntime."""
    import shutil

    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    model = _model("LSTM", direction="bidirectional", seq="input", initial=True, peepholes=True,
                   outputs=("Y", "Y_h", "Y_c"))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    report = optc.compile(path, "arm", tmp_path / "pkg", inputs=_feeds(model, [4, 2, 3]),
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]

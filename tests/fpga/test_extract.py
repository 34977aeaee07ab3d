"""ONNX -> FPGA IR: partition into host head / hardware / host tail, thresholds by evaluation,
and the IR's numpy reference against onnxruntime (integer layers bit for bit)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from optc import verify
from optc.backends.fpga import extract, ir
from optc.errors import UnsupportedModelError

from .tiny_models import binary_cnn, binary_mlp, qdq_mlp, ternary_mlp


def _run_partition(p, x):
    head = verify.ort_session(p.head)
    boundary = head.run([p.head_output], {"x": x})[0]
    y = p.decode_output(ir.execute(p.graph, p.encode_input(boundary)))
    if p.tail is None:
        return y
    return verify.ort_session(p.tail).run(None, {p.decode.tensor: y})[0]


def _check_against_ort(model, shape, n=40, seed=1):
    p = extract.partition(model)
    full = verify.ort_session(model)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.standard_normal(shape).astype(np.float32)
        ref = full.run(None, {"x": x})[0]
        out = _run_partition(p, x)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 + 1e-5 * np.abs(ref).max())
    return p


def _with_output(model, name):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def test_binary_mlp_partition_and_exact_thresholds():
    model = binary_mlp()
    p = _check_against_ort(model, (1, 1, 4, 4))
    assert [layer.kind for layer in p.graph.layers] == ["mvau", "mvau"]
    m0, m1 = p.graph.layers
    assert m0.xnor and m0.idtype.kind == "bipolar" and m0.odtype.kind == "bipolar" and m0.nt == 1
    assert m1.thresholds is None  # the last layer's accumulator goes to the host
    assert [n["op"] for n in p.host_head] == ["Flatten", "Sub", "Sign"]
    assert [n["op"] for n in p.host_tail] == ["BatchNormalization"]
    # the hidden Sign output is reproduced bit for bit by the thresholds
    sess = verify.ort_session(_with_output(model, "a1"))
    head = verify.ort_session(p.head)
    rng = np.random.default_rng(2)
    for _ in range(50):
        x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
        a1 = sess.run(["a1"], {"x": x})[0]
        hw = ir.execute(p.graph, p.encode_input(head.run(None, {"x": x})[0]), upto=1)
        np.testing.assert_array_equal(hw.reshape(a1.shape), a1)


def test_negative_batchnorm_scale_flips_weight_rows():
    model = binary_mlp(negative_gamma=True)
    p = _check_against_ort(model, (1, 1, 4, 4))
    w = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w0")).T
    m0 = p.graph.layers[0]
    flipped = [(m0.weights[r] == -np.sign(w[r])).all() for r in range(m0.mh)]
    assert any(flipped) and not all(flipped)


def test_binary_cnn_sliding_windows_pool_flatten():
    p = _check_against_ort(binary_cnn(), (1, 2, 6, 6))
    kinds = [layer.kind for layer in p.graph.layers]
    assert kinds == ["swg", "mvau", "swg", "pool", "swg", "mvau"]
    swg0, conv = p.graph.layers[0], p.graph.layers[1]
    assert (swg0.kh, swg0.kw, swg0.oh, swg0.ow) == (3, 3, 4, 4) and conv.vecs == 16 and conv.mw == 18
    assert p.graph.layers[3].is_max.all()  # max pool on bipolar data: OR
    assert p.tail is None  # Gemm bias applied when decoding the accumulator


def test_qdq_low_bit_layers():
    p = _check_against_ort(qdq_mlp(), (1, 12))
    m0, m1 = p.graph.layers
    assert m0.idtype == ir.DType("uint", 2) and m0.wdtype.kind == "int" and not m0.xnor
    assert m0.odtype == ir.DType("uint", 2) and m0.nt == 3
    assert [n["op"] for n in p.host_head] == ["Clip", "QuantizeLinear"]


def test_sign_of_exact_zero_gives_ternary_activations():
    p = extract.partition(ternary_mlp())
    assert p.graph.layers[0].odtype == ir.DType("uint", 2)
    assert any("ternary" in n for n in p.notes)
    full = verify.ort_session(ternary_mlp())
    for bits in range(64):  # every input: the dot product hits the BatchNorm mean exactly
        x = np.array([[1.0 if bits >> i & 1 else -1.0 for i in range(6)]], np.float32)
        np.testing.assert_array_equal(_run_partition(p, x), full.run(None, {"x": x})[0])


def test_sign_zero_at_the_input_is_refused_clearly():
    p = extract.partition(binary_mlp())
    with pytest.raises(ValueError, match="Sign"):
        p.encode_input(np.zeros((1, 16), np.float32))


def test_float_model_is_unsupported():
    from tests.conftest import make_conv_model

    with pytest.raises(UnsupportedModelError, match="no layer for the FPGA"):
        extract.partition(make_conv_model())


def test_padded_binary_conv_is_exact():
    """ONNX pads a +-1 tensor with 0: the padding layer re-encodes it as ternary codes."""
    p = _check_against_ort(binary_cnn(pads=1), (1, 2, 6, 6))
    kinds = [layer.kind for layer in p.graph.layers]
    assert kinds[:3] == ["pad", "swg", "mvau"]
    pad, swg, conv = p.graph.layers[:3]
    assert pad.recode and pad.odtype == ir.DType("uint", 2) and pad.pad_value == 1
    assert (swg.h, swg.w, conv.vecs) == (8, 8, 36) and not conv.xnor


def test_stream_words_roundtrip():
    rng = np.random.default_rng(0)
    for dt in (ir.BIPOLAR, ir.DType("uint", 3), ir.DType("int", 5)):
        v = rng.choice(dt.values(), size=(7, 11))
        np.testing.assert_array_equal(ir.unpack_words(ir.pack_words(v, dt), 11, dt), v)

"""DFT, STFT and Col2Im (``optc.backends.tvm.signal_ops``), function bodies with a Scan
(LinearAttention: ``expand._inline`` renames the body's outer references, the Scan is
unrolled before the import), and QLinearMatMul with run-time per-tensor or float16 scales
(``optc.passes.quant.qoperator``).

The matrix helpers are checked against numpy's FFT without TVM; compile tests go through
``optc.compile`` (its verification against onnxruntime must pass) and compare with numpy;
each rule has a model it must refuse by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import optc
from optc.errors import UnsupportedModelError

ort = pytest.importorskip("onnxruntime")


def _model(nodes, inputs, outputs, inits=(), opset=20) -> onnx.ModelProto:
    g = h.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def _compile_run(model, tmp_path, feeds: dict, **kw) -> list[np.ndarray]:
    pytest.importorskip("tvm")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    pkg = tmp_path / "pkg"
    optc.compile(str(path), "cpu", str(pkg), inputs=feeds, options=optc.CompileOptions.of(measure=False), **kw)
    return list(optc.run(str(pkg), feeds).values())


# ----------------------------------------------------------------------------- matrices (no TVM)
@pytest.mark.parametrize("m,n", [(8, 8), (6, 8), (10, 7)])
def test_dft_matrices_match_numpy(m, n):
    from optc.backends.tvm.signal_ops import dft_matrices

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, m)) + 1j * rng.standard_normal((3, m))
    for inverse, onesided in [(False, False), (False, True), (True, False)]:
        c, s = dft_matrices(m, n, onesided=onesided, inverse=inverse)
        sign = 1.0 if inverse else -1.0
        got = x @ (c + 1j * sign * s)
        want = (np.fft.ifft if inverse else np.fft.fft)(x, n=n, axis=1)
        if onesided:
            want = want[:, : n // 2 + 1]
        np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("m,n", [(5, 8), (4, 7), (6, 6)])
def test_irfft_matrices_match_numpy(m, n):
    from optc.backends.tvm.signal_ops import irfft_matrices

    x = np.fft.rfft(np.random.default_rng(1).standard_normal((2, n)), axis=1)[:, :m]
    x = np.pad(x, ((0, 0), (0, max(0, m - x.shape[1]))))
    a_re, a_im = irfft_matrices(m, n)
    np.testing.assert_allclose(x.real @ a_re + x.imag @ a_im, np.fft.irfft(x, n=n, axis=1), atol=1e-9)


def test_col2im_kernel_is_one_hot_per_block_position():
    from optc.backends.tvm.signal_ops import col2im_kernel

    k = col2im_kernel(2, [2, 3])
    assert k.shape == (12, 1, 2, 3)
    assert (k.reshape(12, 6) == np.tile(np.eye(6), (2, 1))).all()


# ----------------------------------------------------------------------------- compiled
def _dft_model(n_input=False, axis=1, inverse=0, onesided=0, comps=2, length=None):
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [2, 6, 3, comps])]
    inits = [numpy_helper.from_array(np.array(axis, np.int64), "axis")]
    ins = ["x", "", "axis"]
    if length is not None:
        ins[1] = "n"
        if n_input:
            inputs.append(h.make_tensor_value_info("n", T.INT64, []))
        else:
            inits.append(numpy_helper.from_array(np.array(length, np.int64), "n"))
    node = h.make_node("DFT", ins, ["y"], inverse=inverse, onesided=onesided)
    return _model([node], inputs, [h.make_tensor_value_info("y", T.FLOAT, ["d0", "d1", "d2", "d3"])], inits)


def test_dft_compiles_and_matches_numpy(tmp_path):
    """Complex input, axis 1, zero padded to 8 points, inverse: numpy's ifft."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 3, 2)).astype(np.float32)
    (y,) = _compile_run(_dft_model(inverse=1, length=8), tmp_path, {"x": x})
    want = np.fft.ifft(x[..., 0] + 1j * x[..., 1], n=8, axis=1)
    np.testing.assert_allclose(y, np.stack([want.real, want.imag], -1), atol=1e-5)


def test_rfft_of_a_real_signal_along_axis_2(tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 6, 3, 1)).astype(np.float32)
    (y,) = _compile_run(_dft_model(axis=2, onesided=1, comps=1), tmp_path, {"x": x})
    want = np.fft.rfft(x[..., 0], axis=2)
    np.testing.assert_allclose(y, np.stack([want.real, want.imag], -1), atol=1e-5)


def test_dft_length_at_run_time_is_refused_by_name(tmp_path):
    x = np.zeros((2, 6, 3, 2), np.float32)
    with pytest.raises(UnsupportedModelError, match="dft_length must be a constant"):
        _compile_run(_dft_model(n_input=True, length=8), tmp_path, {"x": x, "n": np.array(8, np.int64)})


def test_dft_along_the_complex_axis_is_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedModelError, match="must not be the last"):
        _compile_run(_dft_model(axis=3), tmp_path, {"x": np.zeros((2, 6, 3, 2), np.float32)})


def test_stft_with_a_window_matches_numpy(tmp_path):
    signal = np.random.default_rng(4).standard_normal((1, 40, 1)).astype(np.float32)
    window = np.hanning(16).astype(np.float32)
    model = _model([h.make_node("STFT", ["x", "step", "w"], ["y"])],
                   [h.make_tensor_value_info("x", T.FLOAT, [1, 40, 1]), h.make_tensor_value_info("w", T.FLOAT, [16])],
                   [h.make_tensor_value_info("y", T.FLOAT, ["d0", "d1", "d2", "d3"])],
                   [numpy_helper.from_array(np.array(8, np.int64), "step")], opset=17)
    (y,) = _compile_run(model, tmp_path, {"x": signal, "w": window})
    frames = np.stack([signal[0, f * 8:f * 8 + 16, 0] * window for f in range(1 + (40 - 16) // 8)])
    want = np.fft.rfft(frames, axis=1)[None]
    np.testing.assert_allclose(y, np.stack([want.real, want.imag], -1), atol=1e-4)


def _col2im_model(cols: int, strides=(1, 1), pads=(0, 0, 0, 0)):
    return _model([h.make_node("Col2Im", ["x", "image", "block"], ["y"], strides=list(strides), pads=list(pads))],
                  [h.make_tensor_value_info("x", T.FLOAT, [1, 2 * 4, cols])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["d0", "d1", "d2", "d3"])],
                  [numpy_helper.from_array(np.array([5, 4], np.int64), "image"),
                   numpy_helper.from_array(np.array([2, 2], np.int64), "block")], opset=18)


def test_col2im_strided_padded_matches_a_loop(tmp_path):
    """Image 5x4, block 2x2, stride 2, pads 1: blocks added where they land, grid 3x3."""
    x = np.random.default_rng(5).standard_normal((1, 8, 9)).astype(np.float32)
    (y,) = _compile_run(_col2im_model(9, (2, 2), (1, 1, 1, 1)), tmp_path, {"x": x})
    want = np.zeros((1, 2, 7, 6), np.float32)  # padded image
    cols = x.reshape(1, 2, 2, 2, 3, 3)
    for i in range(3):
        for j in range(3):
            want[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] += cols[:, :, :, :, i, j]
    np.testing.assert_allclose(y, want[:, :, 1:6, 1:5], atol=1e-5)


def test_col2im_with_the_wrong_number_of_blocks_is_refused_by_name(tmp_path):
    """Image 5x4, block 2x2, stride 1 gives a 4x3 grid: 11 columns cannot be placed."""
    model = _col2im_model(11)
    with pytest.raises(UnsupportedModelError, match="does not fit blocks"):
        _compile_run(model, tmp_path, {"x": np.zeros((1, 8, 11), np.float32)})


# ----------------------------------------------------------------------------- function bodies with a Scan
def _linear_attention(opset=27, steps=3):
    """Batch 1, 3 steps, 2 heads of 4: output [1, 3, 8] and the final state [1, 2, 4, 4]."""
    q = [h.make_tensor_value_info(n, T.FLOAT, [1, steps, 8]) for n in ("q", "k", "v")]
    node = h.make_node("LinearAttention", ["q", "k", "v"], ["y", "state"], q_num_heads=2, kv_num_heads=2,
                       update_rule="linear")
    return _model([node], q, [h.make_tensor_value_info("y", T.FLOAT, [1, steps, 8]),
                              h.make_tensor_value_info("state", T.FLOAT, [1, 2, 4, 4])], opset=opset)


def _has_schema(op: str) -> bool:
    try:
        onnx.defs.get_schema(op, onnx.defs.onnx_opset_version(), "")
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _has_schema("LinearAttention"), reason="onnx without LinearAttention")
def test_expanded_scan_body_reads_the_renamed_outer_values():
    """The body's references to function-scope values follow ``_inline``'s renaming (it left
    them dangling: 'NegOne1D' undefined), so the expanded model passes the full checker."""
    from optc.backends.tvm import expand

    model, ops = expand.expand_functions(_linear_attention(), set())
    assert "LinearAttention" in ops
    scans = [n for n in model.graph.node if n.op_type == "Scan"]
    assert scans
    outer = {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    outer |= {o for n in model.graph.node for o in n.output}
    for scan in scans:
        body = next(a.g for a in scan.attribute if a.name == "body")
        local = {v.name for v in body.input} | {t.name for t in body.initializer}
        local |= {o for n in body.node for o in n.output}
        dangling = {i for n in body.node for i in n.input if i and i not in local | outer}
        assert not dangling, f"the Scan body reads undefined values {sorted(dangling)}"


@pytest.mark.skipif(not _has_schema("LinearAttention"), reason="onnx without LinearAttention")
def test_linear_attention_compiles_its_scan_unrolled(tmp_path):
    rng = np.random.default_rng(6)
    feeds = {n: rng.standard_normal((1, 3, 8)).astype(np.float32) for n in ("q", "k", "v")}
    model = _linear_attention()
    got = _compile_run(model, tmp_path, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)


@pytest.mark.skipif(not _has_schema("LinearAttention"), reason="onnx without LinearAttention")
def test_a_body_scan_over_the_unroll_bound_is_refused_by_name(tmp_path):
    """300 steps exceed unroll-loops' 256: the body's Scan stays, and the refusal says why."""
    feeds = {n: np.zeros((1, 300, 8), np.float32) for n in ("q", "k", "v")}
    with pytest.raises(UnsupportedModelError, match="cannot be unrolled: Scan .* exceed the unroll bound"):
        _compile_run(_linear_attention(steps=300), tmp_path, feeds)


# ----------------------------------------------------------------------------- QLinearMatMul scales
def _qlinear_matmul(scale_type=T.FLOAT, b_scale_shape=()):
    names = ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"]
    shapes = {"a": [2, 4], "b": [4, 3], "b_scale": list(b_scale_shape)}
    types = {"a": T.UINT8, "b": T.UINT8, "a_zp": T.UINT8, "b_zp": T.UINT8, "y_zp": T.UINT8}
    inputs = [h.make_tensor_value_info(n, types.get(n, scale_type), shapes.get(n, [])) for n in names]
    return _model([h.make_node("QLinearMatMul", names, ["y"])], inputs,
                  [h.make_tensor_value_info("y", T.UINT8, [2, 3])], opset=21)


def _qfeeds(scale_dtype, b_scale_size=None):
    rng = np.random.default_rng(7)
    f = {"a": rng.integers(0, 255, (2, 4), np.uint8), "a_scale": np.array(0.05, scale_dtype),
         "a_zp": np.array(113, np.uint8), "b": rng.integers(0, 255, (4, 3), np.uint8),
         "b_scale": np.array(0.02, scale_dtype), "b_zp": np.array(114, np.uint8),
         "y_scale": np.array(0.3, scale_dtype), "y_zp": np.array(118, np.uint8)}
    if b_scale_size:
        f["b_scale"] = np.full(b_scale_size, 0.02, scale_dtype)
    return f


def test_expand_takes_run_time_per_tensor_scales_and_casts_float16_ones():
    from optc.passes.quant.qoperator import expand_qoperator

    model, details = expand_qoperator(_qlinear_matmul(T.FLOAT16))
    assert details["expanded"] == {"QLinearMatMul": 1}, details
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 3  # a, b and y scales computed in float32
    plain, _ = expand_qoperator(_qlinear_matmul(T.FLOAT))
    assert not [n for n in plain.graph.node if n.op_type == "Cast"]  # float32 scales are used as they are
    feeds = _qfeeds(np.float16)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(run(model), run(_qlinear_matmul(T.FLOAT16)))


def test_run_time_per_column_scale_is_not_expanded():
    """A B scale given at run time with 3 values (per column): its axis needs B constant."""
    from optc.passes.quant.qoperator import expand_qoperator

    _, details = expand_qoperator(_qlinear_matmul(b_scale_shape=(3,)))
    assert not details["expanded"]
    assert "per-column scale" in next(iter(details["skipped"].values()))


def test_qlinear_matmul_float16_scales_compile_exactly(tmp_path):
    feeds = _qfeeds(np.float16)
    model = _qlinear_matmul(T.FLOAT16)
    (y,) = _compile_run(model, tmp_path, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(y, want)


# ----------------------------------------------------------------------------- empty Concat inputs
def test_zero_length_concat_inputs_are_dropped_and_one_is_always_kept():
    """A body's zero padding of length 0 (CausalConvWithState, kernel 1) leaves the Concat; an
    all-empty Concat keeps its inputs (its result is empty either way)."""
    from optc.backends.tvm.expand import _drop_empty_concat_inputs

    vi = h.make_tensor_value_info
    empty = numpy_helper.from_array(np.zeros((2, 0), np.float32), "pad")
    nodes = [h.make_node("Concat", ["pad", "x"], ["y"], axis=1), h.make_node("Concat", ["pad", "pad"], ["z"], axis=1)]
    g = h.make_graph(nodes, "m", [vi("x", T.FLOAT, [2, 3])], [vi("y", T.FLOAT, [2, 3]), vi("z", T.FLOAT, [2, 0])],
                     initializer=[empty])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    out = _drop_empty_concat_inputs(model)
    assert [list(n.input) for n in out.graph.node] == [["x"], ["pad", "pad"]]

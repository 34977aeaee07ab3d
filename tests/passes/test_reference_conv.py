"""The spec reference's ConvInteger / Conv / ConvTranspose (``optc.passes.quant.int_ops``)
against onnx's own reference implementations: bit for bit for ConvInteger, to float32 rounding
for the float ops, over 1-d / 2-d / 3-d, groups, dilations, strides, pads and every auto_pad
mode; and proof that the comparison catches a wrong implementation."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from optc.passes.optc_ops import reference_evaluator
from optc.passes.quant import int_ops

_TYPES = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8, np.float32: TensorProto.FLOAT,
          np.float64: TensorProto.DOUBLE}


def _model(op: str, x: np.ndarray, consts: list[np.ndarray | None], out_type: int, attrs: dict):
    """One ``op`` node: graph input ``x``, then ``consts`` as initializers (None: input omitted)."""
    names = ["x"] + [f"c{i}" if c is not None else "" for i, c in enumerate(consts)]
    while names[-1] == "":
        names.pop()
    inits = [numpy_helper.from_array(np.asarray(c), f"c{i}") for i, c in enumerate(consts) if c is not None]
    graph = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", _TYPES[x.dtype.type], x.shape)],
                              [helper.make_tensor_value_info("y", out_type, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ours(model, x, op_class=None) -> np.ndarray:
    """``model`` through optc's spec reference (or with ``op_class`` standing in for its op);
    checks that optc's op, not onnx's, ran."""
    ev = reference_evaluator(model) if op_class is None else ReferenceEvaluator(model, new_ops=[op_class])
    assert isinstance(ev.rt_nodes_[0], int_ops.ConvInteger | int_ops.Conv | int_ops.ConvTranspose)
    return ev.run(None, {"x": x})[0]


def _onnx(model, x) -> np.ndarray:
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def _float_case(op, xs, ws, bias, dtype, attrs, seed=3):
    """(model, x) for a float ``op`` with random data; the bias has ``bias`` channels (0: none)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    consts = [rng.standard_normal(ws).astype(dtype), rng.standard_normal(bias).astype(dtype) if bias else None]
    return _model(op, x, consts, _TYPES[dtype], attrs), x, consts


def _assert_close(got, want):
    """Equal to float rounding of the sums (onnx's run in the input's type, ours in float64)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * np.finfo(want.dtype).eps * scale)


def _conv_integer(rng, nd, c, m, k, x_dtype, w_dtype, xz, wz, attrs):
    """(model, x) for ConvInteger with random full-range codes; ``wz``: None, "scalar" or "channel"."""
    spatial = (11, 9, 7)[:nd]
    xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
    x = rng.integers(xi.min, xi.max + 1, (2, c, *spatial)).astype(x_dtype)
    w = rng.integers(wi.min, wi.max + 1, (m, c // attrs.get("group", 1), *k)).astype(w_dtype)
    xzp = None if xz is None else x_dtype(xz)
    wzp = {None: None, "scalar": w_dtype(-3 if wi.min < 0 else 5),
           "channel": rng.integers(wi.min, wi.max + 1, m).astype(w_dtype)}[wz]
    return _model("ConvInteger", x, [w, xzp, wzp], TensorProto.INT32, attrs), x, (w, xzp, wzp)


CONV_INTEGER_CASES = {  # name: (nd, C, M, kernel, x dtype, w dtype, x zero point, w zero point, attributes)
    "1d-dilated-padded": (1, 4, 6, (3,), np.uint8, np.int8, 131, "scalar", {"dilations": [3], "pads": [5, 1]}),
    "1d-stride-same-upper": (1, 4, 6, (2,), np.int8, np.int8, -5, "scalar",
                             {"strides": [2], "auto_pad": "SAME_UPPER", "group": 2}),
    "1d-same-lower-even-kernel": (1, 3, 2, (4,), np.uint8, np.uint8, 128, None,
                                  {"auto_pad": "SAME_LOWER", "dilations": [3]}),
    "1d-defaults": (1, 5, 3, (3,), np.uint8, np.int8, None, None, {}),
    "2d-asym-pads-stride-dilation": (2, 6, 4, (3, 2), np.uint8, np.int8, 17, "channel",
                                     {"pads": [1, 0, 2, 3], "strides": [2, 1], "dilations": [1, 2], "group": 2}),
    "2d-depthwise-same-lower": (2, 5, 5, (3, 3), np.uint8, np.uint8, 3, "scalar",
                                {"group": 5, "auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    "2d-depthwise-multiplier-valid": (2, 3, 6, (2, 3), np.int8, np.int8, 0, "channel",
                                      {"group": 3, "auto_pad": "VALID", "strides": [1, 2]}),
    "2d-same-upper-kernel-shape": (2, 4, 3, (2, 2), np.int8, np.int8, 7, "scalar",
                                   {"auto_pad": "SAME_UPPER", "kernel_shape": [2, 2], "dilations": [2, 3]}),
    "3d-groups-pads": (3, 6, 3, (2, 3, 2), np.int8, np.int8, -128, "scalar",
                       {"group": 3, "pads": [1, 0, 2, 0, 1, 1], "strides": [2, 1, 2], "dilations": [1, 2, 1]}),
    "3d-same-upper": (3, 2, 4, (3, 2, 2), np.uint8, np.int8, 255, None,
                      {"auto_pad": "SAME_UPPER", "strides": [2, 2, 1]}),
}


@pytest.mark.parametrize("name", list(CONV_INTEGER_CASES))
def test_conv_integer_matches_onnx(name):
    model, x, _ = _conv_integer(np.random.default_rng(0), *CONV_INTEGER_CASES[name])
    want = _onnx(model, x)
    got = _ours(model, x)
    assert got.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("nd", [1, 3])
def test_conv_integer_per_channel_zero_point(nd):
    """onnx's reference refuses per-output-channel weight zero points but for 2-d convs (it
    broadcasts them as ``[M, 1, 1, 1]``); output channel m is then ConvInteger of ``w[m]`` with
    the scalar zero point ``wz[m]``."""
    attrs = {"dilations": [2] * nd, "pads": [1] * nd + [0] * nd, "strides": [1] * (nd - 1) + [2]}
    model, x, (w, xz, wz) = _conv_integer(np.random.default_rng(1), nd, 3, 4, (2,) * nd, np.uint8, np.int8, 9,
                                          "channel", attrs)
    want = np.concatenate([_onnx(_model("ConvInteger", x, [w[i:i + 1], xz, wz[i]], TensorProto.INT32, attrs), x)
                           for i in range(len(w))], axis=1)
    np.testing.assert_array_equal(_ours(model, x), want)


def test_conv_integer_chunks(monkeypatch):
    """An im2col budget of a few rows splits the output into chunks; the result is the same."""
    monkeypatch.setattr(int_ops, "_COLS_BUDGET", 200)
    for name in ("1d-dilated-padded", "2d-asym-pads-stride-dilation", "3d-groups-pads"):
        model, x, _ = _conv_integer(np.random.default_rng(2), *CONV_INTEGER_CASES[name])
        np.testing.assert_array_equal(_ours(model, x), _onnx(model, x))


CONV_CASES = {  # name: (x shape, w shape, bias, dtype, attributes)
    "1d-dilated-bias": ((2, 4, 30), (5, 4, 3), True, np.float32, {"dilations": [4], "pads": [3, 8], "strides": [2]}),
    "2d-depthwise-same-lower": ((1, 6, 9, 8), (6, 1, 2, 3), True, np.float32,
                                {"group": 6, "auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    "2d-groups-valid": ((2, 4, 7, 7), (6, 2, 3, 3), False, np.float32, {"group": 2, "auto_pad": "VALID"}),
    "3d-same-upper": ((1, 3, 6, 5, 7), (4, 3, 2, 3, 2), True, np.float32,
                      {"auto_pad": "SAME_UPPER", "strides": [2, 1, 2], "dilations": [1, 2, 1]}),
    "2d-float64": ((1, 3, 8, 6), (4, 3, 3, 3), True, np.float64, {"pads": [0, 1, 2, 1], "dilations": [2, 1]}),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_matches_onnx(name):
    xs, ws, bias, dtype, attrs = CONV_CASES[name]
    model, x, _ = _float_case("Conv", xs, ws, ws[0] if bias else 0, dtype, attrs)
    _assert_close(_ours(model, x), _onnx(model, x))


CONV_TRANSPOSE_CASES = {  # name: (x shape, w shape, bias channels, attributes)
    "1d-dilated-output-padding": ((2, 3, 10), (3, 4, 3), 4,
                                  {"strides": [2], "pads": [1, 2], "dilations": [2], "output_padding": [1]}),
    "2d-asym-pads": ((2, 3, 6, 5), (3, 2, 3, 2), 0, {"strides": [2, 3], "pads": [1, 0, 0, 2]}),
    "2d-depthwise": ((1, 4, 6, 5), (4, 1, 3, 2), 0, {"strides": [2, 1], "group": 4}),  # onnx: bias 0 for all groups
    "3d-stride-dilation": ((1, 2, 3, 4, 5), (2, 3, 2, 3, 2), 3,
                           {"strides": [1, 2, 3], "dilations": [2, 1, 1], "pads": [0, 1, 0, 1, 0, 2]}),
    "1d-same-upper-odd": ((1, 3, 7), (3, 2, 3), 2, {"strides": [2], "auto_pad": "SAME_UPPER"}),
    "1d-same-lower-odd": ((1, 3, 7), (3, 2, 3), 0, {"strides": [2], "auto_pad": "SAME_LOWER"}),
    "1d-same-upper-stride-beyond-kernel": ((1, 3, 7), (3, 2, 2), 2, {"strides": [5], "auto_pad": "SAME_UPPER"}),
    "2d-output-shape-same-lower": ((1, 2, 5, 4), (2, 3, 3, 3), 3,
                                   {"strides": [2, 2], "output_shape": [10, 8], "auto_pad": "SAME_LOWER"}),
}


@pytest.mark.parametrize("name", list(CONV_TRANSPOSE_CASES))
def test_conv_transpose_matches_onnx(name):
    xs, ws, bias, attrs = CONV_TRANSPOSE_CASES[name]
    model, x, _ = _float_case("ConvTranspose", xs, ws, bias, np.float32, attrs)
    _assert_close(_ours(model, x), _onnx(model, x))


def test_conv_transpose_groups():
    """Groups of several output channels, with a bias (onnx's reference fails on the first and
    adds group 0's bias to every group): group g is the ConvTranspose of its input channels
    with its weights and bias."""
    attrs = {"strides": [2, 1], "pads": [0, 1, 1, 0], "group": 2}
    model, x, (w, b) = _float_case("ConvTranspose", (2, 4, 5, 6), (4, 3, 2, 3), 6, np.float32, attrs)
    single = {**attrs, "group": 1}
    parts = [(x[:, 2 * g:2 * g + 2], w[2 * g:2 * g + 2], b[3 * g:3 * g + 3]) for g in range(2)]
    want = np.concatenate([_onnx(_model("ConvTranspose", xg, [wg, bg], TensorProto.FLOAT, single), xg)
                           for xg, wg, bg in parts], axis=1)
    _assert_close(_ours(model, x), want)


def test_conv_transpose_output_shape():
    """``output_shape`` without auto_pad sets the pads by the spec's equation (odd one at the
    beginning), as onnxruntime computes it; onnx's reference refuses it."""
    import onnxruntime as ort

    attrs = {"strides": [2], "output_shape": [15]}
    model, x, _ = _float_case("ConvTranspose", (1, 3, 7), (3, 2, 4), 2, np.float32, attrs)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    _assert_close(_ours(model, x), want)


def _mutant(base, wrong):
    """A subclass of ``base`` named like it (so the evaluator runs it) whose ``_run`` gets its
    arguments through ``wrong(args, attrs)`` first."""
    def _run(self, *args, **attrs):
        args, attrs = wrong(list(args), dict(attrs))
        return base._run(self, *args, **attrs)

    return type(base.__name__, (base,), {"_run": _run})


def _swap_strides(args, attrs):
    return args, {**attrs, "strides": attrs["strides"][::-1]}


def _zero_point_plus_one(args, attrs):
    args[2] = args[2] + 1
    return args, attrs


def _same_upper_as_lower(args, attrs):
    return args, {**attrs, "auto_pad": {"SAME_UPPER": "SAME_LOWER", "SAME_LOWER": "SAME_UPPER"}[attrs["auto_pad"]]}


def _dilation_ignored(args, attrs):
    return args, {**attrs, "dilations": None}


@pytest.mark.parametrize(("name", "wrong"), [("2d-asym-pads-stride-dilation", _swap_strides),
                                             ("1d-dilated-padded", _zero_point_plus_one),
                                             ("1d-same-lower-even-kernel", _same_upper_as_lower),
                                             ("3d-groups-pads", _dilation_ignored)])
def test_comparison_catches_wrong_conv_integer(name, wrong):
    """The harness is not vacuous: a ConvInteger with one argument wrong fails it."""
    model, x, _ = _conv_integer(np.random.default_rng(0), *CONV_INTEGER_CASES[name])
    got = _ours(model, x, _mutant(int_ops.ConvInteger, wrong))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, _onnx(model, x))


def _no_output_padding(args, attrs):
    return args, {**attrs, "output_padding": None}


@pytest.mark.parametrize(("op", "name", "wrong"), [("Conv", "2d-depthwise-same-lower", _same_upper_as_lower),
                                                   ("ConvTranspose", "1d-same-lower-odd", _same_upper_as_lower),
                                                   ("ConvTranspose", "1d-dilated-output-padding", _no_output_padding),
                                                   ("ConvTranspose", "3d-stride-dilation", _swap_strides)])
def test_comparison_catches_wrong_float_conv(op, name, wrong):
    """Likewise for Conv and ConvTranspose: one wrong attribute fails the comparison."""
    if op == "Conv":
        xs, ws, bias, dtype, attrs = CONV_CASES[name]
        model, x, _ = _float_case(op, xs, ws, ws[0] if bias else 0, dtype, attrs)
    else:
        xs, ws, bias, attrs = CONV_TRANSPOSE_CASES[name]
        model, x, _ = _float_case(op, xs, ws, bias, np.float32, attrs)
    got = _ours(model, x, _mutant(getattr(int_ops, op), wrong))
    with pytest.raises(AssertionError):
        _assert_close(got, _onnx(model, x))


def test_conv_pads():
    """auto_pad over the dilated kernel: 10 steps at stride 3 give 4 outputs, which a span of
    (3 - 1) * 2 + 1 = 5 needs 3 * 3 + 5 - 10 = 4 pads for, (2, 2); an odd count puts the extra
    pad at the end (SAME_UPPER) or at the beginning (SAME_LOWER)."""
    assert int_ops.conv_pads([10], [3], "SAME_UPPER", None, [3], [2]) == [2, 2]
    assert int_ops.conv_pads([10], [2], "SAME_UPPER", None, [1], [1]) == [0, 1]
    assert int_ops.conv_pads([10], [2], b"SAME_LOWER", None, [1], [1]) == [1, 0]
    assert int_ops.conv_pads([10, 4], [3, 3], "VALID", [1, 1, 1, 1], [1, 1], [1, 1]) == [0, 0, 0, 0]
    assert int_ops.conv_pads([10], [3], "NOTSET", [2, 1], [1], [1]) == [2, 1]
    assert int_ops.conv_pads([10], [3], None, None, [1], [1]) == [0, 0]

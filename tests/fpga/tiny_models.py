"""Tiny binarized / low-bit ONNX models built inline (no training), in the trained-BNN pattern
the FPGA backend reads, plus a hand-made reference pipeline for the golden snapshots."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.backends.fpga.ir import BIPOLAR, MVAU, SWG, DType, FpgaGraph, Pool


def _bn(rng, name, c, inits, gamma_sign=None):
    g = rng.uniform(0.5, 1.5, c).astype(np.float32)
    if gamma_sign is not None:
        g = g * gamma_sign
    inits += [numpy_helper.from_array(g, f"{name}_g"),
              numpy_helper.from_array((rng.standard_normal(c) * 0.3).astype(np.float32), f"{name}_b"),
              numpy_helper.from_array((rng.standard_normal(c) * 1.5).astype(np.float32), f"{name}_m"),
              numpy_helper.from_array(rng.uniform(1.0, 4.0, c).astype(np.float32), f"{name}_v")]
    return [f"{name}_g", f"{name}_b", f"{name}_m", f"{name}_v"]


def _binary(rng, shape, axis_out):
    """+-alpha per output channel (axis ``axis_out``)."""
    w = np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0)
    alpha_shape = [1] * len(shape)
    alpha_shape[axis_out] = shape[axis_out]
    return (w * rng.uniform(0.05, 0.3, alpha_shape)).astype(np.float32)


def _model(nodes, inits, in_shape, out_name, out_shape, name):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def binary_mlp(seed=0, sizes=(16, 8, 4), negative_gamma=False) -> onnx.ModelProto:
    """Sign(x - 0.1) -> [MatMul(+-alpha) -> BN -> Sign] ... -> MatMul -> BN (logits)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.float32(0.1), "thr")]
    nodes = [helper.make_node("Flatten", ["x"], ["xf"]), helper.make_node("Sub", ["xf", "thr"], ["xs"]),
             helper.make_node("Sign", ["xs"], ["a0"])]
    cur = "a0"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits.append(numpy_helper.from_array(_binary(rng, (k, n), 1), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"mm{i}"]))
        gs = np.where(np.arange(n) % 2 == 0, -1.0, 1.0).astype(np.float32) if negative_gamma else None
        out = f"bn{i}" if i < len(sizes) - 2 else "y"
        nodes.append(helper.make_node("BatchNormalization", [f"mm{i}"] + _bn(rng, f"bn{i}", n, inits, gs), [out]))
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Sign", [out], [f"a{i + 1}"]))
            cur = f"a{i + 1}"
    return _model(nodes, inits, [1, 1, 4, 4] if sizes[0] == 16 else [1, sizes[0]], "y", [1, sizes[-1]], "tiny_bmlp")


def binary_cnn(seed=0, c1=2, c2=4, n_out=3, h=6, pads=0) -> onnx.ModelProto:
    """Sign(x) -> binary Conv3x3 (``pads``) -> BN -> Sign -> MaxPool2 -> Flatten -> Gemm(+-alpha) -> logits."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_binary(rng, (c2, c1, 3, 3), 0), "wc"),
             numpy_helper.from_array(rng.standard_normal(c2).astype(np.float32) * 0.1, "bc")]
    nodes = [helper.make_node("Sign", ["x"], ["a0"]),
             helper.make_node("Conv", ["a0", "wc", "bc"], ["c"], kernel_shape=[3, 3], pads=[pads] * 4),
             helper.make_node("BatchNormalization", ["c"] + _bn(rng, "bnc", c2, inits), ["cb"]),
             helper.make_node("Sign", ["cb"], ["a1"]),
             helper.make_node("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"])]
    hp = (h + 2 * pads - 2) // 2
    inits.append(numpy_helper.from_array(_binary(rng, (n_out, c2 * hp * hp), 0), "wf"))
    inits.append(numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "bf"))
    nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1))
    return _model(nodes, inits, [1, c1, h, h], "y", [1, n_out], "tiny_bcnn")


def qdq_mlp(seed=0, sizes=(12, 6, 3), bits=2) -> onnx.ModelProto:
    """Clip/QuantizeLinear input (bits, uint) -> [DQ(int codes) weights -> MatMul -> Add -> Relu ->
    Clip -> Q -> DQ] -> MatMul -> Add (float logits)."""
    rng = np.random.default_rng(seed)
    amax = 2 ** bits - 1
    inits = [numpy_helper.from_array(np.float32(0), "z"), numpy_helper.from_array(np.float32(1), "o"),
             numpy_helper.from_array(np.float32(1 / amax), "s0"), numpy_helper.from_array(np.uint8(0), "zp"),
             numpy_helper.from_array(np.float32(0.25), "s1"), numpy_helper.from_array(np.float32(0.25 * amax), "hi")]
    nodes = [helper.make_node("Clip", ["x", "z", "o"], ["xc"]),
             helper.make_node("QuantizeLinear", ["xc", "s0", "zp"], ["q0"]),
             helper.make_node("DequantizeLinear", ["q0", "s0", "zp"], ["x0"])]
    cur = "x0"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        wq = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(k, n)).astype(np.int8)
        inits += [numpy_helper.from_array(wq, f"wq{i}"),
                  numpy_helper.from_array((rng.uniform(0.5, 1.5, n) / np.sqrt(k)).astype(np.float32), f"ws{i}"),
                  numpy_helper.from_array(np.zeros(n, np.int8), f"wz{i}"),
                  numpy_helper.from_array((rng.standard_normal(n) * 0.3).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"w{i}"], axis=1),
                  helper.make_node("MatMul", [cur, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], ["y" if i == len(sizes) - 2 else f"z{i}"])]
        if i < len(sizes) - 2:
            nodes += [helper.make_node("Relu", [f"z{i}"], [f"r{i}"]),
                      helper.make_node("Clip", [f"r{i}", "z", "hi"], [f"rc{i}"]),
                      helper.make_node("QuantizeLinear", [f"rc{i}", "s1", "zp"], [f"q{i + 1}"]),
                      helper.make_node("DequantizeLinear", [f"q{i + 1}", "s1", "zp"], [f"x{i + 1}"])]
            cur = f"x{i + 1}"
    return _model(nodes, inits, [1, sizes[0]], "y", [1, sizes[-1]], "tiny_qmlp")


def ternary_mlp() -> onnx.ModelProto:
    """A binary layer whose BatchNorm output is exactly 0 at an accumulator value (mean = 2, an
    even dot product of 6 bipolar inputs), so Sign gives 0 there: ternary activations."""
    inits = [numpy_helper.from_array(np.ones((6, 2), np.float32), "w0"),
             numpy_helper.from_array(np.ones(2, np.float32), "g"), numpy_helper.from_array(np.zeros(2, np.float32), "b"),
             numpy_helper.from_array(np.array([2.0, -2.0], np.float32), "m"), numpy_helper.from_array(np.ones(2, np.float32), "v"),
             numpy_helper.from_array(np.array([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]], np.float32), "w1")]
    nodes = [helper.make_node("Sign", ["x"], ["a0"]), helper.make_node("MatMul", ["a0", "w0"], ["m0"]),
             helper.make_node("BatchNormalization", ["m0", "g", "b", "m", "v"], ["n0"], epsilon=0.0),
             helper.make_node("Sign", ["n0"], ["a1"]), helper.make_node("MatMul", ["a1", "w1"], ["y"])]
    return _model(nodes, inits, [1, 6], "y", [1, 3], "tiny_ternary")


def reference_pipeline() -> FpgaGraph:
    """A fixed tiny pipeline for the golden snapshots: 4x4x2 bipolar image -> 3x3 windows ->
    binary MVAU (4 channels, PE 2, SIMD 9) -> 2x2 max pool (OR) -> 2-bit MVAU -> accumulators."""
    rng = np.random.default_rng(1234)
    s0 = SWG("swg0", 4, 4, 2, 3, 3, 1, 1, BIPOLAR)
    w0 = np.where(rng.standard_normal((4, 18)) >= 0, 1, -1)
    t0 = rng.integers(5, 14, size=(4, 1))
    m0 = MVAU("mvau0", 18, 4, 4, BIPOLAR, BIPOLAR, w0, t0, BIPOLAR, 0, 18, pe=2, simd=9)
    s1 = SWG("swg1", 2, 2, 4, 2, 2, 2, 2, BIPOLAR)
    p0 = Pool("pool0", 4, 4, 1, BIPOLAR, np.array([True, True, False, True]))
    w1 = rng.integers(-2, 2, size=(3, 4))
    m1 = MVAU("mvau1", 4, 3, 1, DType("int", 2), BIPOLAR, w1, None, DType("int", 5), -8, 8, pe=1, simd=2)
    g = FpgaGraph([s0, m0, s1, p0, m1], BIPOLAR, 16, 2)
    g.check()
    return g

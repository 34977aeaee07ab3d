"""int8 kernels on AArch64 cores without the dot product (Cortex-A72 / A53, ``isa_of`` ->
``"smull"``): NEON widening multiply (``smull`` int8 x int8 -> int16) + pairwise accumulate
(``sadalp`` int16 pairs -> int32) in the generated code, bit-exact against the numpy integer
reference under ``qemu-aarch64 -cpu cortex-a72`` (stride, padding, dilation, channel counts off
the 4 / 16 blocks, uint8 and int8 activations, NCHW and NHWC, dense), including the extreme
codes (-128 x -128 everywhere) at which an int16 accumulation of two products would wrap, and
fewer executed instructions than the fp32 kernel of the same layer."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")

from optc.backends.tvm import int8, lower  # noqa: E402
from optc.frontend import TensorSpec  # noqa: E402
from optc.passes.optc_ops import reference_evaluator  # noqa: E402
from optc.targets import get_target  # noqa: E402

from .test_int8 import _input, _int_model, _nhwc_chain_model  # noqa: E402

CONVS = {  # name -> (x shape, in dtype, out dtype, conv attributes)
    "3x3-pad-u8": ((1, 8, 9, 7), "uint8", "uint8", dict(n=20, kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "3x3-s2-asym-pad-s8": ((2, 5, 8, 8), "int8", "int8",
                           dict(n=16, kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 2])),
    "1x3-dilated-u8-to-s8": ((1, 36, 5, 6), "uint8", "int8", dict(n=33, kernel_shape=[1, 3], dilations=[1, 2])),
    "1x1-s8": ((1, 12, 4, 9), "int8", "uint8", dict(n=40, kernel_shape=[1, 1])),
    "1x1-even-groups-u8": ((1, 16, 6, 5), "uint8", "uint8", dict(n=16, kernel_shape=[1, 1])),  # cb loop split by 2
    "1x1-two-groups-u8": ((1, 8, 3, 4), "uint8", "int8", dict(n=24, kernel_shape=[1, 1])),  # cb: one trip of 2
}
DENSES = {"u8-odd": (2, 10, 21, "uint8"), "s8": (3, 64, 16, "int8")}


def _asm(ex) -> str:
    return "\n".join(m.inspect_source("asm") for m in ex.mod.imports)


def _build(model, target: str):
    x = _input(model)
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], get_target(target), embed_params=True)
    return ex, x


def _qemu_tools():
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    return arm


def _run_a72(ex, x, tmp_path, name="model", cpu="cortex-a72"):
    arm = _qemu_tools()
    lib = tmp_path / f"{name}.so"
    arm.export_aarch64(ex, lib)
    outs, _ = arm.run_qemu(lib, [x], qemu=arm.QemuRun(cpu=cpu))
    return outs[0], lib


def test_isa_per_arm_core():
    isa = {t: int8.isa_of(lower.tvm_target(get_target(t))) for t in ("arm", "arm-a53", "arm-a72", "arm-a76")}
    assert isa == {"arm": "smull", "arm-a53": "smull", "arm-a72": "smull", "arm-a76": "sdot"}
    assert int8.kernel_dtype("smull") == "int8" and int8.acc_halves("smull") == 2
    assert int8.acc_halves("sdot") == int8.acc_halves("vnni") == int8.acc_halves("generic") == 1


def test_a72_assembly_is_widening_multiply_pairwise_accumulate():
    """The conv kernel's inner product is smull + sadalp on 8-byte vectors; no dot product, no
    int32 multiply-add (the former fallback), no SVE."""
    shape, din, dout, conv = CONVS["3x3-pad-u8"]
    ex, _ = _build(_int_model("IntConv2d", shape, din, dout, **dict(conv)), "arm-a72")
    asm = _asm(ex)
    assert "sadalp\tv" in asm and "smull\tv" in asm and ".8b" in asm
    assert "sdot" not in asm and "\tmla\tv" not in asm and "z0." not in asm


def test_wrong_intrinsic_is_refused():
    """The smull intrinsic only matches its (2 lanes, 2 halves, 2 bytes) int8 block: tensorizing
    the (4 lanes x 4 bytes) block of the dot-product accumulator (``halves=1``) with it is
    refused by TVM, so a schedule that puts it in the wrong place cannot build silently."""
    import tvm
    from tvm import te

    from optc.passes.optc_ops import ConvGeometry
    from optc.passes.quant.int_ops import Requant

    geom = ConvGeometry((3, 3), (1, 1, 1, 1), (1, 1), (1, 1), 1, "NCHW", "NCHW")
    rq = Requant(x_zero_point=3, y_zero_point=0, out_min=0, out_max=255, out_dtype="uint8")
    ins, y = int8.conv_te((1, 8, 9, 7), 20, geom, rq, in_dtype="uint8", isa="sdot")
    sch = tvm.s_tir.Schedule(te.create_prim_func([*ins, y]))
    acc = sch.get_sblock("Acc")
    b, nb, oh, ow, lane, kh, kw, cb, g = sch.get_loops(acc)
    sch.reorder(kh, kw, cb, lane, g)
    _, li = sch.split(lane, [None, 4])
    int8._register_intrinsics()
    with pytest.raises(Exception):
        sch.tensorize(li, int8.SMULL_INTRIN)


@pytest.mark.qemu
@pytest.mark.parametrize("name", list(CONVS))
def test_a72_conv_exact_under_qemu(tmp_path, name):
    shape, din, dout, conv = CONVS[name]
    model = _int_model("IntConv2d", shape, din, dout, seed=len(name), **dict(conv))
    ex, x = _build(model, "arm-a72")
    out, _ = _run_a72(ex, x, tmp_path)
    ref = reference_evaluator(model).run(None, {"x": x})[0]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert np.array_equal(out, ref)
    assert len(np.unique(ref)) > 20  # not a saturated, trivially equal output


@pytest.mark.qemu
def test_a53_conv_exact_under_qemu(tmp_path):
    """The same kernel for --target arm-a53 (qemu -cpu cortex-a53)."""
    shape, din, dout, conv = CONVS["3x3-s2-asym-pad-s8"]
    model = _int_model("IntConv2d", shape, din, dout, seed=3, **dict(conv))
    ex, x = _build(model, "arm-a53")
    assert "sadalp" in _asm(ex)
    out, _ = _run_a72(ex, x, tmp_path, cpu="cortex-a53")
    assert np.array_equal(out, reference_evaluator(model).run(None, {"x": x})[0])


@pytest.mark.qemu
@pytest.mark.parametrize("name", list(DENSES))
def test_a72_dense_exact_under_qemu(tmp_path, name):
    m, k, n, din = DENSES[name]
    model = _int_model("IntDense", (m, k), din, "uint8", seed=k, n=n)
    ex, x = _build(model, "arm-a72")
    out, _ = _run_a72(ex, x, tmp_path)
    ref = reference_evaluator(model).run(None, {"x": x})[0]
    assert np.array_equal(out, ref) and len(np.unique(ref)) > 3


@pytest.mark.qemu
def test_a72_nhwc_chain_exact_under_qemu(tmp_path):
    """NCHW -> NHWC -> NCHW (every layout path of the conv kernel) on the A72 kernel."""
    model = _nhwc_chain_model()
    ex, x = _build(model, "arm-a72")
    out, _ = _run_a72(ex, x, tmp_path)
    assert np.array_equal(out, reference_evaluator(model).run(None, {"x": x})[0])


def _extreme_model(c: int = 16, n: int = 16) -> onnx.ModelProto:
    """IntConv2d 1x1, int8 input (the kernel's dtype: not flipped), even output channels' weights
    all -128, odd ones 127: at x = -128 every product is 2^14 (two overflow int16) or
    -16256; the bias cancels the sum there, the requantization is a plain shift by 8 (multiplier 1)."""
    w = np.full((n, c, 1, 1), -128, np.int8)
    w[1::2] = 127  # odd channels: -128 x 127 (the other extreme)
    b = (c * 128 * w[:, 0, 0, 0].astype(np.int32)).astype(np.int32)  # cancels the sum at x = -128: output 0
    mult, shift = np.ones(n, np.int32), np.full(n, 8, np.int32)
    inits = [numpy_helper.from_array(a, nm) for a, nm in ((w, "w"), (b, "b"), (mult, "m"), (shift, "s"))]
    node = helper.make_node("IntConv2d", ["x", "w", "b", "m", "s"], ["y"], domain="ai.optc", kernel_shape=[1, 1],
                            x_zero_point=0, y_zero_point=0, out_min=-128, out_max=127, to=TensorProto.INT8)
    graph = helper.make_graph([node], "extreme", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, c, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [None] * 4)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])


@pytest.mark.qemu
def test_a72_extreme_codes_exact_under_qemu(tmp_path):
    """-128 x -128 products (2^14 each) on every lane: exact (int16 holds one product, sadalp
    widens before adding); one input code off the extreme changes the output by exactly its
    share, so a kernel that wrapped or saturated anywhere would differ."""
    model = _extreme_model()
    ex, _ = _build(model, "arm-a72")
    x = np.full((1, 16, 3, 4), -128, np.int8)
    x[0, 3, 1, 2] = -120  # one pixel: the sum there moves by 8 x w
    out, _ = _run_a72(ex, x, tmp_path)
    ref = reference_evaluator(model).run(None, {"x": x})[0]
    assert np.array_equal(out, ref)
    assert ref[0, 0, 1, 2] != ref[0, 0, 0, 0]  # the changed pixel is visible in the reference


@pytest.mark.slow  # ~28 s on 2 busy cores: 4 counted qemu runs
@pytest.mark.qemu
def test_a72_int8_executes_fewer_instructions_than_fp32(tmp_path):
    """One ResNet-shaped layer (16 -> 32 channels, 3x3, 14 x 14): the int8 kernel executes
    fewer aarch64 instructions than TVM's fp32 convolution (qemu insn plugin count); it
    executed ~2.8x more before the smull kernel."""
    from optc.backends.tvm import qemu_plugin
    from optc.errors import ToolchainError

    _qemu_tools()
    try:
        qemu_plugin.ensure_plugin()
    except ToolchainError as err:
        pytest.skip(f"qemu insn plugin not available: {err}")
    shape, n = (1, 16, 14, 14), 32
    qmodel = _int_model("IntConv2d", shape, "uint8", "uint8", n=n, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    ex, x = _build(qmodel, "arm-a72")
    _, lib = _run_a72(ex, x, tmp_path, "int8")
    n_int8 = qemu_plugin.count_instructions(lib, [x])["count"]
    prof = _qemu_tools().kernel_profile(lib)  # what the latency model reads from the library
    assert prof["dot_product"] == 0 and prof["int_widening_mla"] > 0
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, shape[1], 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    fmodel = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    xf = rng.standard_normal(shape).astype(np.float32)
    exf, _ = lower.build(fmodel, [TensorSpec("x", "float32", shape)], get_target("arm-a72"), embed_params=True)
    _, libf = _run_a72(exf, xf, tmp_path, "fp32")
    n_fp32 = qemu_plugin.count_instructions(libf, [xf])["count"]
    assert n_int8 < n_fp32, (n_int8, n_fp32)

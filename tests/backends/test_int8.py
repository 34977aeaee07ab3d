"""TVM int8 kernels (IntConv2d / IntDense): bit-exact against the numpy references, vpdpbusd /
sdot in the generated assembly where the CPU has them, a plain fallback elsewhere, and the
compile path (quantize -> integerize -> verify)."""

from __future__ import annotations

import re
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
from optc.passes.quant import int_ops  # noqa: E402
from optc.targets import Target, get_target  # noqa: E402

HASWELL = Target(name="cpu-haswell", backend="tvm-cpu", description="AVX2, no VNNI",
                 tvm={"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
HOST_ISA = int8.isa_of(lower.tvm_target(get_target("cpu")))
needs_vnni = pytest.mark.skipif(HOST_ISA != "vnni", reason="this CPU has no AVX-512 VNNI")
_DT = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


def _int_model(op: str, x_shape, in_dtype: str, out_dtype: str, seed: int = 0, **conv) -> onnx.ModelProto:
    """One integer op on an integer input (no float anywhere: exactness is all-or-nothing)."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 256) if in_dtype == "uint8" else (-128, 128)
    x_zp = int(rng.integers(lo, hi))
    if op == "IntConv2d":
        n, group, ks = conv.pop("n"), conv.get("group", 1), conv["kernel_shape"]
        w = rng.integers(-127, 128, (n, x_shape[1] // group, *ks)).astype(np.int8)
        k = w[0].size
        attrs = dict(conv)
    else:
        n = conv.pop("n")
        w = rng.integers(-127, 128, (n, x_shape[1])).astype(np.int8)
        k = x_shape[1]
        attrs = {}
    b = (rng.integers(-3000, 3000, n) - x_zp * w.reshape(n, -1).astype(np.int64).sum(1)).astype(np.int32)
    mult, shift = int_ops.fixed_point(rng.uniform(0.3, 3.0, n) / (k * 128))
    omin, omax = (0, 255) if out_dtype == "uint8" else (-128, 127)
    y_zp = int(rng.integers(omin // 2, omax // 2 + 1))
    attrs.update(x_zero_point=x_zp, y_zero_point=y_zp, out_min=max(omin, y_zp - 40), out_max=omax,
                 to=_DT[out_dtype])
    inits = [numpy_helper.from_array(a, nm) for a, nm in ((w, "w"), (b, "b"), (mult, "m"), (shift, "s"))]
    node = helper.make_node(op, ["x", "w", "b", "m", "s"], ["y"], domain="ai.optc", **attrs)
    graph = helper.make_graph([node], "int", [helper.make_tensor_value_info("x", _DT[in_dtype], list(x_shape))],
                              [helper.make_tensor_value_info("y", _DT[out_dtype], [None] * len(x_shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])


def _input(model, seed=1):
    vi = model.graph.input[0]
    dt = np.uint8 if vi.type.tensor_type.elem_type == TensorProto.UINT8 else np.int8
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    info = np.iinfo(dt)
    return np.random.default_rng(seed).integers(info.min, info.max + 1, shape).astype(dt)


def _build_and_run(model, target):
    import tvm
    from tvm import relax

    x = _input(model)
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], target, embed_params=True)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ref = reference_evaluator(model).run(None, {"x": x})[0]
    return ex, out, ref


def _asm(ex) -> str:
    return "\n".join(m.inspect_source("asm") for m in ex.mod.imports)


CONVS = {  # name -> (x shape, in dtype, out dtype, conv attributes)
    "3x3-pad-relu": ((1, 8, 9, 7), "uint8", "uint8", dict(n=20, kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "stride2-asym-pad-s8": ((2, 5, 8, 8), "int8", "int8",
                            dict(n=16, kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 2])),
    "1x1-dilated-wide": ((1, 36, 5, 6), "uint8", "int8", dict(n=33, kernel_shape=[1, 3], dilations=[1, 2])),
    "depthwise": ((1, 12, 7, 9), "uint8", "uint8", dict(n=12, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=12)),
    "1x1-4ch": ((1, 4, 5, 6), "uint8", "uint8", dict(n=16, kernel_shape=[1, 1])),
    # output widths with no divisor up to the AVX2 / smull tile (3): partial last column tiles
    "7-wide": ((1, 20, 5, 7), "uint8", "uint8", dict(n=20, kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "13-wide-stride2-s8": ((1, 9, 6, 26), "int8", "int8", dict(n=18, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                                               strides=[2, 2])),
    # FSMN memory block: a depthwise [20, 1] filter over frames, output width 1 (unit loops)
    "depthwise-20x1-w1": ((1, 16, 39, 1), "uint8", "uint8", dict(n=16, kernel_shape=[20, 1], pads=[19, 0, 0, 0],
                                                                 group=16)),
    "depthwise-1x5": ((1, 8, 1, 30), "int8", "int8", dict(n=8, kernel_shape=[1, 5], pads=[0, 2, 0, 2], group=8)),
    # strided depthwise: the padded copy's columns split by phase (odd widths, asymmetric pads)
    "depthwise-stride2-asym": ((1, 10, 9, 11), "uint8", "uint8", dict(n=10, kernel_shape=[3, 3], pads=[1, 0, 2, 1],
                                                                      strides=[2, 2], group=10)),
    "depthwise-stride3-dilated": ((1, 6, 13, 14), "int8", "int8", dict(n=6, kernel_shape=[3, 3], pads=[2, 2, 2, 2],
                                                                       strides=[3, 3], dilations=[2, 2], group=6)),
}


@needs_vnni
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_exact_vnni(name):
    shape, din, dout, conv = CONVS[name]
    ex, out, ref = _build_and_run(_int_model("IntConv2d", shape, din, dout, **dict(conv)), get_target("cpu"))
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert np.array_equal(out, ref)
    assert len(np.unique(ref)) > 20  # not a saturated, trivially equal output


@pytest.mark.parametrize("m,k,n,din", [(1, 10, 21, "uint8"), (3, 64, 16, "int8"), (2, 3, 20, "int8")])
def test_dense_exact(m, k, n, din):
    ex, out, ref = _build_and_run(_int_model("IntDense", (m, k), din, "uint8", seed=k, n=n), get_target("cpu"))
    assert np.array_equal(out, ref) and len(np.unique(ref)) > 3


@needs_vnni
def test_vnni_assembly_and_haswell_fallback():
    shape, din, dout, conv = CONVS["3x3-pad-relu"]
    model = _int_model("IntConv2d", shape, din, dout, **dict(conv))
    ex, out, ref = _build_and_run(model, get_target("cpu"))
    assert "vpdpbusd" in _asm(ex)
    ex2, out2, _ = _build_and_run(model, HASWELL)  # AVX2: int32 multiply-adds, runs here too
    asm2 = _asm(ex2)
    assert "vpdpbusd" not in asm2
    assert re.search(r"vpm(addwd|ulld)\s+%ymm", asm2)  # vectorized int multiply-adds (AVX2)
    assert np.array_equal(out2, ref) and np.array_equal(out, ref)


GENERIC_X86 = Target(name="cpu-x86-64", backend="tvm-cpu", description="SSE2 only",
                    tvm={"kind": "llvm", "mcpu": "x86-64", "num-cores": 2})


ICELAKE = Target(name="cpu-icelake", backend="tvm-cpu", description="AVX-512 VNNI (built, not run)",
                 tvm={"kind": "llvm", "mcpu": "icelake-server", "num-cores": 2})


def test_vnni_register_tile_is_a_stack_array():
    """A tile of 16 columns x 16 int32 lanes is 1 KB, TVM's stack-alloca limit: it was a
    TVMBackendAllocWorkspace call per tile (a 16-wide output row); MAX_TILE keeps tiles below."""
    from optc.backends.tvm.schedule import STACK_ALLOCA_BYTES

    assert int8.MAX_TILE * int8.LANES * 4 < STACK_ALLOCA_BYTES
    model = _int_model("IntConv2d", (1, 16, 2, 16), "uint8", "uint8", n=32, kernel_shape=[1, 1])
    ex, _ = lower.build(model, [TensorSpec("x", "uint8", (1, 16, 2, 16))], ICELAKE, embed_params=True)
    ir = "\n".join(m.inspect_source("ll") for m in ex.mod.imports)
    assert "vpdpbusd" in ir and "call" in ir
    assert "TVMBackendAllocWorkspace" not in ir  # not even declared (a call loads it from a global)


def test_isa_per_x86_cpu():
    """AVX2 without VNNI gets the vpmaddwd kernels, a CPU without AVX2 the plain fallback."""
    assert int8.isa_of(lower.tvm_target(HASWELL)) == "avx2"
    assert int8.isa_of(lower.tvm_target(GENERIC_X86)) == "generic"
    assert int8.kernel_dtype("avx2") == int8.weight_dtype("avx2") == "int16" and int8.acc_halves("avx2") == 2


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_exact_avx2(name):
    """The AVX2 kernels (int16 operands, ``vpmaddwd`` into two int32 partial sums per lane)
    equal the numpy reference bit for bit, for every geometry, signedness and layout case."""
    shape, din, dout, conv = CONVS[name]
    model = _int_model("IntConv2d", shape, din, dout, **dict(conv))
    ex, out, ref = _build_and_run(model, HASWELL)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert np.array_equal(out, ref)
    assert len(np.unique(ref)) > 20
    if conv.get("group", 1) == 1:
        assert re.search(r"vpmaddwd\s+[^\n]*%ymm", _asm(ex))


@pytest.mark.parametrize("m,k,n,din", [(1, 10, 21, "uint8"), (7, 64, 48, "int8"), (6, 3, 20, "int8")])
def test_dense_exact_avx2_and_generic(m, k, n, din):
    """Dense kernels with row tiles (7 and 6 rows: tiles of 1 and 3), on AVX2 and without it."""
    model = _int_model("IntDense", (m, k), din, "uint8", seed=k, n=n)
    for target in (HASWELL, GENERIC_X86):
        _, out, ref = _build_and_run(model, target)
        assert np.array_equal(out, ref) and len(np.unique(ref)) > 3


def _signature(func) -> list:
    return [(list(b.shape), str(b.dtype), b.scope(), b.offset_factor) for b in func.params]


def test_intrinsic_description_and_implementation_share_one_signature():
    """tensorize needs an intrinsic's description and implementation with the same buffers:
    both are built by one function (``tensor_intrin.intrin_func``), for every optc intrinsic;
    the description is the one written in TVMScript before (the dot product of the group of
    ``A`` with each lane's row of ``B``), and one of other operands is a different function."""
    import tvm
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    from optc.backends.tvm import int8_matmul, tensor_intrin

    int8._register_intrinsics()
    int8_matmul._pairs_intrin()
    for name in (int8.VNNI_INTRIN, int8.SDOT_INTRIN, int8.SMULL_INTRIN, int8.PMADDWD_INTRIN, int8_matmul.PAIRS_INTRIN):
        intrin = TensorIntrin.get(name)
        assert _signature(intrin.desc) == _signature(intrin.impl), name

    @T.prim_func(s_tir=True, private=True)
    def written(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="global")  # schedule.ACC_SCOPE
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            for i, k in T.grid(4, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    built = TensorIntrin.get(int8.SDOT_INTRIN).desc
    tvm.ir.assert_structural_equal(built, written)
    other = tensor_intrin.intrin_func(tensor_intrin.operands(((4,), "uint8"), ((4, 4), "int8"), (4,)),
                                      tensor_intrin.dot_desc)
    with pytest.raises(ValueError):
        tvm.ir.assert_structural_equal(other, written)


def test_pmaddwd_intrinsic_only_matches_its_block():
    """The AVX2 intrinsic matches only the (4 lanes, 2 halves, 2 codes) int16 block: tensorizing
    the int8 dot-product block (``halves=1``, int8 weights) with it is refused by TVM."""
    import tvm
    from tvm import te

    from optc.passes.optc_ops import ConvGeometry
    from optc.passes.quant.int_ops import Requant

    geom = ConvGeometry((3, 3), (1, 1, 1, 1), (1, 1), (1, 1), 1, "NCHW", "NCHW")
    rq = Requant(x_zero_point=3, y_zero_point=0, out_min=0, out_max=255, out_dtype="uint8")
    ins, y = int8.conv_te((1, 8, 9, 7), 20, geom, rq, in_dtype="uint8", isa="vnni")
    sch = tvm.s_tir.Schedule(te.create_prim_func([*ins, y]))
    b, nb, oh, ow, lane, kh, kw, cb, g = sch.get_loops(sch.get_sblock("Acc"))
    sch.reorder(kh, kw, cb, lane, g)
    _, li = sch.split(lane, [None, 4])
    int8._register_intrinsics()
    with pytest.raises(Exception):
        sch.tensorize(li, int8.PMADDWD_INTRIN)


def test_haswell_signed_input_exact():
    shape, din, dout, conv = CONVS["stride2-asym-pad-s8"]
    _, out, ref = _build_and_run(_int_model("IntConv2d", shape, din, dout, **dict(conv)), HASWELL)
    assert np.array_equal(out, ref)


def _conv_float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((24, 16, 3, 3)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal((5, 24)) * 0.3).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_compile_quantize_runs_integer_kernels(tmp_path):
    import optc

    path = tmp_path / "m.onnx"
    onnx.save(_conv_float_model(), path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).standard_normal((16, 3, 10, 10)).astype(np.float32))
    report = optc.compile(str(path), "cpu", tmp_path / "pkg", passes=f"quantize<calib={tmp_path / 'calib.npz'}>", options=optc.CompileOptions.of(measure=False))
    assert report["pipeline"].endswith(",integerize")
    assert report["verify"]["passed"]
    built = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    ops = [n.op_type for n in built.graph.node]
    assert ops.count("IntConv2d") == 2 and ops.count("IntDense") == 1 and "Conv" not in ops
    weights = sum(numpy_helper.to_array(t).nbytes for t in built.graph.initializer if t.data_type == TensorProto.INT8)
    floats = sum(numpy_helper.to_array(t).nbytes for t in _conv_float_model().graph.initializer)
    assert weights * 3.9 < floats  # int8 weights: ~4x fewer bytes
    # opting out keeps float QDQ
    report = optc.compile(str(path), "cpu", tmp_path / "pkg2", passes=f"quantize<calib={tmp_path / 'calib.npz'}>,integerize<enabled=false>", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]
    assert "IntConv2d" not in [n.op_type for n in onnx.load(str(tmp_path / "pkg2" / "model.onnx")).graph.node]


# ----------------------------------------------------------------------------- ARM
def _arm_conv_model():
    shape, din, dout, conv = CONVS["3x3-pad-relu"]
    return _int_model("IntConv2d", shape, din, dout, **dict(conv))


def test_arm_assembly_sdot_only_with_dotprod():
    model = _arm_conv_model()
    x = _input(model)
    spec = [TensorSpec("x", str(x.dtype), x.shape)]
    ex, _ = lower.build(model, spec, get_target("arm-a76"), embed_params=True)
    assert "sdot" in _asm(ex)
    ex, _ = lower.build(model, spec, get_target("arm-a72"), embed_params=True)
    asm = _asm(ex)
    assert "sdot" not in asm and "udot" not in asm


@pytest.mark.qemu
@pytest.mark.parametrize("make", ["_arm_conv_model", "_nhwc_chain_model"])
def test_arm_a76_qemu_exact(tmp_path, make):
    """sdot kernels under qemu equal the reference: NCHW, and every NHWC in/out combination."""
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    model = globals()[make]()
    x = _input(model)
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], get_target("arm-a76"), embed_params=True)
    assert "sdot" in _asm(ex)
    lib = tmp_path / "model.so"
    arm.export_aarch64(ex, lib)
    outs, _ = arm.run_qemu(lib, [x], qemu=arm.QemuRun(cpu="cortex-a76"))
    assert np.array_equal(outs[0], reference_evaluator(model).run(None, {"x": x})[0])


def _nhwc_chain_model(c: int = 6, n1: int = 20, n2: int = 16) -> onnx.ModelProto:
    """x NCHW -> IntConv2d (NCHW in, NHWC out; 3x3 pad 1) -> IntConv2d (NHWC in, NCHW out;
    3x3 stride 2, asymmetric pad): every layout path of the conv kernel, channel counts that
    are not multiples of 4 / 16 (zero-padded groups and lanes)."""
    rng = np.random.default_rng(5)
    nodes, inits = [], []
    x_zp = 7
    for k, (cin, n, attrs, lay) in enumerate([(c, n1, dict(pads=[1, 1, 1, 1]), ("NCHW", "NHWC")),
                                              (n1, n2, dict(pads=[1, 0, 2, 1], strides=[2, 2]), ("NHWC", "NCHW"))]):
        w = rng.integers(-127, 128, (n, cin, 3, 3)).astype(np.int8)
        b = (rng.integers(-3000, 3000, n) - x_zp * w.reshape(n, -1).astype(np.int64).sum(1)).astype(np.int32)
        # the second layer reads codes spread ~+-30 around their zero point, not +-128
        mult, shift = int_ops.fixed_point(rng.uniform(0.3, 3.0, n) / (w[0].size * (128 if k == 0 else 8)))
        names = [f"{t}{k}" for t in "wbms"]
        inits += [numpy_helper.from_array(a, nm) for a, nm in zip((w, b, mult, shift), names)]
        y_zp = 100 + k
        nodes.append(helper.make_node("IntConv2d", ["x" if k == 0 else "h", *names], ["h" if k == 0 else "y"],
                                      domain="ai.optc", kernel_shape=[3, 3], x_zero_point=x_zp, y_zero_point=y_zp,
                                      out_min=0, out_max=255, to=TensorProto.UINT8, x_layout=lay[0],
                                      y_layout=lay[1], **attrs))
        x_zp = y_zp
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 11, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [None] * 4)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])


def _depthwise_chain_model(c: int = 20) -> onnx.ModelProto:
    """Three depthwise IntConv2d: NCHW in / NHWC out (3x3 pad 1), NHWC / NHWC (stride 2,
    asymmetric pad), NHWC in / NCHW out (dilation 2): the channels-last depthwise kernel on every
    layout path, 20 channels (vectors of 4)."""
    rng = np.random.default_rng(6)
    nodes, inits = [], []
    x_zp = 7
    layers = [(dict(pads=[1, 1, 1, 1]), ("NCHW", "NHWC")), (dict(pads=[1, 0, 2, 1], strides=[2, 2]), ("NHWC", "NHWC")),
              (dict(pads=[2, 2, 2, 2], dilations=[2, 2]), ("NHWC", "NCHW"))]
    for k, (attrs, lay) in enumerate(layers):
        w = rng.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
        b = (rng.integers(-300, 300, c) - x_zp * w.reshape(c, -1).astype(np.int64).sum(1)).astype(np.int32)
        mult, shift = int_ops.fixed_point(rng.uniform(0.3, 3.0, c) / (9 * 64))
        names = [f"{t}{k}" for t in "wbms"]
        inits += [numpy_helper.from_array(a, nm) for a, nm in zip((w, b, mult, shift), names)]
        y_zp = 100 + k
        nodes.append(helper.make_node("IntConv2d", ["x" if k == 0 else f"h{k}", *names],
                                      [f"h{k + 1}" if k < 2 else "y"], domain="ai.optc", kernel_shape=[3, 3],
                                      group=c, x_zero_point=x_zp, y_zero_point=y_zp, out_min=0, out_max=255,
                                      to=TensorProto.UINT8, x_layout=lay[0], y_layout=lay[1], **attrs))
        x_zp = y_zp
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 13, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [None] * 4)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])


def test_depthwise_nhwc_layouts_exact():
    """The channels-last depthwise kernel equals the integer reference on every layout path
    (this CPU and AVX2), with vectorized channels."""
    model = _depthwise_chain_model()
    for target in [get_target("cpu"), HASWELL]:
        _, out, ref = _build_and_run(model, target)
        assert np.array_equal(out, ref) and len(np.unique(ref)) > 20


@pytest.mark.qemu
def test_depthwise_nhwc_arm_qemu_exact(tmp_path):
    """The channels-last depthwise kernel built for AArch64 (NEON lanes) under qemu equals the
    reference."""
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    model = _depthwise_chain_model()
    x = _input(model)
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], get_target("arm-a72"), embed_params=True)
    lib = tmp_path / "model.so"
    arm.export_aarch64(ex, lib)
    outs, _ = arm.run_qemu(lib, [x], qemu=arm.QemuRun(cpu="cortex-a72"))
    assert np.array_equal(outs[0], reference_evaluator(model).run(None, {"x": x})[0])


def test_nhwc_layouts_exact():
    """NHWC in / out (what integerize writes between integer convs) equal the reference on
    VNNI (where the CPU has it) and on the AVX2 fallback; the reference equals the NCHW one."""
    model = _nhwc_chain_model()
    for target in ([get_target("cpu")] if HOST_ISA == "vnni" else []) + [HASWELL]:
        _, out, ref = _build_and_run(model, target)
        assert np.array_equal(out, ref) and len(np.unique(ref)) > 20
    nchw = onnx.ModelProto()
    nchw.CopyFrom(model)
    for node in nchw.graph.node:
        keep = [a for a in node.attribute if not a.name.endswith("_layout")]
        del node.attribute[:]
        node.attribute.extend(keep)
    x = _input(model)
    assert np.array_equal(reference_evaluator(nchw).run(None, {"x": x})[0], ref)


POOLS = {  # name -> (x shape, dtype, MaxPool attributes)
    "3x3-s2-p1": ((1, 5, 12, 13), "uint8", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    "2x2-s2": ((2, 3, 8, 8), "int8", dict(kernel_shape=[2, 2], strides=[2, 2])),
    "3x2-p-asym-kernel": ((1, 4, 7, 9), "uint8", dict(kernel_shape=[3, 2], pads=[1, 1, 1, 1], strides=[1, 1])),
    "asym-pads-s8": ((1, 3, 9, 10), "int8", dict(kernel_shape=[3, 3], pads=[0, 1, 2, 2], strides=[2, 3])),
}


def _pool_model(name):
    shape, dt, attrs = POOLS[name]
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", _DT[dt], list(shape))],
                              [helper.make_tensor_value_info("y", _DT[dt], [None] * 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# onnx's reference MaxPool casts a float padding value to the integer type on the way (a numpy
# RuntimeWarning); its results for these cases equal a -inf-padded float max pool (checked).
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("name", list(POOLS))
def test_int_max_pool_exact(name):
    """MaxPool on integer codes (what integerize writes) runs optc's kernel, equal to ONNX's."""
    ex, out, ref = _build_and_run(_pool_model(name), HASWELL if name == "asym-pads-s8" else get_target("cpu"))
    assert "optc_int_max_pool" in _asm(ex)
    assert out.dtype == ref.dtype and np.array_equal(out, ref)


def test_int_max_pool_builds_for_arm():
    model = _pool_model("3x3-s2-p1")
    x = _input(model)
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], get_target("arm-a72"), embed_params=True)
    assert "optc_int_max_pool" in _asm(ex)


def test_int_max_pool_falls_back_to_stock_converter():
    assert int8.int_max_pool_supported([1, 2, 5, 5], "uint8", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    assert not int8.int_max_pool_supported([1, 2, 5, 5], "float32", {"kernel_shape": [3, 3]})
    assert not int8.int_max_pool_supported([1, 2, 5, 5], "uint8", {"kernel_shape": [3, 3], "ceil_mode": 1})
    assert not int8.int_max_pool_supported([1, 2, 5, 5], "uint8", {"kernel_shape": [3, 3], "dilations": [2, 2]})
    assert not int8.int_max_pool_supported([1, 2, 5, 5], "uint8", {"kernel_shape": [2, 2], "pads": [2, 0, 2, 0]})


GAPS = {  # name -> (x shape, dtype, x_layout, per-channel multipliers, target)
    "nchw-s8-per-channel-parallel": ((2, 64, 32, 32), "int8", "NCHW", True, "cpu"),
    "nhwc-u8-wide": ((1, 7, 7, 512), "uint8", "NHWC", False, "cpu"),
    "nhwc-u8-odd-channels-arm": ((3, 5, 4, 10), "uint8", "NHWC", False, "arm-a72"),
}


def _gap_model(name: str) -> onnx.ModelProto:
    shape, dt, layout, per_channel, _ = GAPS[name]
    rng = np.random.default_rng(4)
    c, hw = (shape[1], shape[2] * shape[3]) if layout == "NCHW" else (shape[3], shape[1] * shape[2])
    mult, shift = int_ops.fixed_point(rng.uniform(0.5, 2.0, c if per_channel else 1) / hw)
    lo = 0 if dt == "uint8" else -128
    node = helper.make_node("IntGlobalAveragePool", ["x", "m", "s"], ["y"], domain="ai.optc", x_layout=layout,
                            x_zero_point=lo + 100, y_zero_point=-5, out_min=-128, out_max=127, to=TensorProto.INT8)
    graph = helper.make_graph([node], "gap", [helper.make_tensor_value_info("x", _DT[dt], list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [shape[0], c, 1, 1])],
                              [numpy_helper.from_array(mult, "m"), numpy_helper.from_array(shift, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])


@pytest.mark.parametrize("name", list(GAPS))
def test_int_global_average_pool_exact(name):
    """IntGlobalAveragePool's kernel (NCHW and NHWC, per-tensor and per-channel requantization)
    equals the numpy reference bit for bit; the ARM build is compiled, not run."""
    model, target = _gap_model(name), get_target(GAPS[name][4])
    if target.name != "cpu":
        x = _input(model)
        ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], target, embed_params=True)
        assert "optc_int_global_avg_pool" in _asm(ex)
        return
    ex, out, ref = _build_and_run(model, target)
    assert out.dtype == ref.dtype and np.array_equal(out, ref) and len(np.unique(ref)) > 20

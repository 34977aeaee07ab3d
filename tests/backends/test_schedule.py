"""optc's CPU scheduling stage (backends/tvm/schedule.py): scheduled builds still verify against
onnxruntime (conv incl. depthwise and grouped, matmul/dense, elementwise chains, pooling),
ARM targets still build, and the generated TIR is parallel and vectorized. No timing."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

onnx = pytest.importorskip("onnx")
pytest.importorskip("tvm")

from onnx import helper  # noqa: E402

import optc  # noqa: E402
from optc.frontend import TensorSpec  # noqa: E402
from tests.conftest import make_graph_model  # noqa: E402


def _conv_model(size: int = 20):
    """Conv 3x3 (8->16) + Relu, depthwise 3x3 stride 2 + Clip(0, 6), grouped 1x1 (groups 4)
    + residual-free Add, MaxPool, GlobalAveragePool, Gemm."""
    rng = np.random.default_rng(0)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"w1": f(16, 8, 3, 3), "b1": f(16), "w2": f(16, 1, 3, 3), "b2": f(16), "w3": f(24, 4, 1, 1),
             "b3": f(24), "lo": np.float32(0.0).reshape(()), "hi": np.float32(6.0).reshape(()),
             "fw": f(5, 24), "fb": f(5)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=16),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], group=4),
        helper.make_node("MaxPool", ["c3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["fl"]),
        helper.make_node("Gemm", ["fl", "fw", "fb"], ["y"], transB=1),
    ]
    return make_graph_model(nodes, [("x", [1, 8, size, size])], [("y", [1, 5])], inits)


def _dense_model(rows: int = 40):
    """MatMul (3D, like a transformer's Linear) + bias + Gelu-style Erf chain, Softmax, Gemm."""
    rng = np.random.default_rng(1)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    inits = {"w": f(48, 64), "b": f(64), "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
             "r2": np.array(0.70710677, np.float32), "w2": f(64, 32), "gw": f(10, 32), "gb": f(10)}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["mb"]),
        helper.make_node("Mul", ["mb", "r2"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["mb", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m2"]),
        helper.make_node("Softmax", ["m2"], ["sm"], axis=-1),
        helper.make_node("ReduceMean", ["sm"], ["rm"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["rm", "gw", "gb"], ["y"], transB=1),
    ]
    return make_graph_model(nodes, [("x", [2, rows, 48])], [("y", [2, 10])], inits, opset=17)


def _eltwise_model():
    """A broadcast elementwise chain: ((a * b + c) -> Sigmoid -> * a) -> Tanh -> Sub, Exp."""
    rng = np.random.default_rng(2)
    inits = {"c": (rng.standard_normal((1, 48, 1)) * 0.5).astype(np.float32)}
    chain = [("Mul", "a b", "ab"), ("Add", "ab c", "abc"), ("Sigmoid", "abc", "s"), ("Mul", "s a", "sa"),
             ("Tanh", "sa", "t"), ("Sub", "t b", "d"), ("Exp", "d", "y")]
    nodes = [helper.make_node(op, ins.split(), [out]) for op, ins, out in chain]
    return make_graph_model(nodes, [("a", [4, 48, 40]), ("b", [4, 48, 40])], [("y", [4, 48, 40])], inits)


MODELS = {"conv": _conv_model, "dense": _dense_model, "eltwise": _eltwise_model}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scheduled_build_verifies(tmp_path, name):
    onnx.save(MODELS[name](), str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def _scheduled(model, target_name="cpu"):
    """The module after optc's CPU pipeline (PrimFuncs still TIR)."""
    from optc.backends.tvm import lower
    from optc.targets import get_target

    return _scheduled_for(model, lower.tvm_target(get_target(target_name)))


def _scheduled_for(model, tgt):
    """As :func:`_scheduled` for a TVM target of choice (schedules only: nothing runs)."""
    from tvm import relax

    from optc.backends.tvm import lower, schedule

    specs = [TensorSpec(i.name, "float32", tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
             for i in model.graph.input]
    mod, params = lower.import_onnx(model, specs)
    weights = mod["main"].params[len(specs):]
    mod = relax.transform.BindParams("main", dict(zip(weights, params)))(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    with tgt:
        return schedule.relax_pipeline(tgt)(mod)


def _prim_funcs(mod):
    from tvm import tirx

    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_generated_code_is_parallel_and_vectorized():
    funcs = _prim_funcs(_scheduled(_conv_model(48)))  # 3x3 conv: 2.6M multiply-adds
    convs = {n: f.script() for n, f in funcs.items() if "conv2d" in n}
    assert len(convs) == 3, sorted(funcs)
    for name, text in convs.items():
        assert "T.vectorized(" in text, name
        assert "nhwc" in text, name  # converted to NHWC: channels innermost
        assert all(bool(f.attrs["tirx.is_scheduled"]) for f in funcs.values())
    # the big 3x3 conv has enough work to be split across threads
    assert any("T.parallel(" in text for text in convs.values())
    dense = _prim_funcs(_scheduled(_dense_model(400)))  # 2.5M multiply-adds
    matmuls = [f.script() for n, f in dense.items() if "matmul" in n]
    assert matmuls and all("T.vectorized(" in t for t in matmuls)
    assert any("T.parallel(" in t for t in matmuls)


def test_vector_width_follows_target():
    """NEON is 128-bit: 4 fp32 lanes; AVX-512 is 16. Tiles use the target's width."""
    from optc.backends.tvm import lower, schedule
    from optc.targets import get_target

    arm = schedule._Params(lower.tvm_target(get_target("arm")))
    assert arm.vector_bits == 128 and arm.lanes("float32") == 4
    assert schedule._vector_tile(144, 4, 8) == (2, 4)
    assert schedule._vector_tile(72, 16, 32) == (3, 8)  # power-of-two vectors, 3 per tile
    assert schedule._vector_width(10, 16) == 10


@pytest.mark.parametrize("name", ["conv", "dense"])
def test_arm_build(name):
    """ARM targets share lower.build: the scheduled module compiles for aarch64 (no run)."""
    from optc.backends.tvm import lower
    from optc.targets import get_target

    model = MODELS[name]()
    specs = [TensorSpec(i.name, "float32", tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
             for i in model.graph.input]
    executable, params = lower.build(model, specs, get_target("arm"), embed_params=True)
    assert executable is not None and params == []
    funcs = _prim_funcs(_scheduled(model, "arm"))
    assert any("T.vectorized(" in f.script() for f in funcs.values())


def test_thread_pool_control():
    """optc's backend makes TVM's pool use all usable cores by default (TVM itself would
    use half the logical CPUs on x86); set_num_threads resizes it."""
    import os

    from optc.backends.tvm import schedule
    from optc.targets import host_cores

    before = schedule.num_threads()
    if "TVM_NUM_THREADS" not in os.environ or os.environ["TVM_NUM_THREADS"] == str(host_cores()):
        assert before == host_cores()
    try:
        schedule.set_num_threads(1)
        assert schedule.num_threads() == 1
    finally:
        schedule.set_num_threads(before)
    assert schedule.num_threads() == before


@pytest.mark.parametrize("target, bits", [
    ({"kind": "llvm", "mcpu": "znver3"}, 256), ({"kind": "llvm", "mcpu": "haswell"}, 256),
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, 512), ({"kind": "llvm", "mcpu": "x86-64"}, 128),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 128)])
def test_vector_width_comes_from_cpu_features(target, bits):
    """The rules' SIMD width is the CPU's (TVM 0.27's llvm_get_vector_width says 512 for every
    x86 CPU, which made AVX2 code use two-register vectors and spill)."""
    import tvm

    from optc.backends.tvm.schedule import _Params

    params = _Params(tvm.target.Target(target))
    assert params.vector_bits == bits
    # AVX-512: 15 zmm, below TVM's stack-alloca limit (16 x 64 B = 1 KB is a workspace call)
    assert params.acc_budget == (15 if bits == 512 else 24 if "mtriple" in target else 12)
    assert params.acc_budget * bits // 8 < 1024


def test_register_tile_keeps_enough_accumulators_within_the_cache_block():
    """A 7-wide map (ResNet's last stage) no longer gets a 2-accumulator tile: it takes all 7
    rows of one vector, not 8 vectors whose 1.2 MB weight slice would not stay in L2."""
    import tvm

    from optc.backends.tvm.schedule import _Params, _register_tile

    avx2 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    deep = 3 * 3 * 512 * 4  # bytes of one output channel's weights
    assert _register_tile(512, 7, 8, avx2, deep) == (1, 8, 7)
    assert _register_tile(512, 7, 8, avx2, 16 * 4) == (8, 8, 1)  # shallow: 8 vectors fit the block
    # 56 rows: 2 x 6 with a partial last tile (12 x 56 / 60 useful accumulators) beats the divisor
    # tile 2 x 4 (8): 3x3 conv 64 -> 64 on 56x56, AVX2 code at 1 thread, 2.8-3.7 -> 2.1-2.4 ms
    assert _register_tile(64, 56, 8, avx2, 3 * 3 * 64 * 4) == (2, 8, 6)
    avx512 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"}))
    assert _register_tile(512, 7, 16, avx512, deep) == (2, 16, 7)  # as before on AVX-512


def test_register_tile_past_enough_accumulators_takes_fewer_loads():
    """On AVX-512 (24 accumulators) a tile with ACC_ENOUGH accumulators or more is ranked by
    FMAs per load: a 1x1 conv 256 -> 1024 on a 7x7 map (open_nsfw's last stage) takes 2
    vectors x 7 pixels (14 accumulators, 9 loads per 14 FMAs), not 16 vectors x 1 pixel (16
    accumulators, 17 loads per 16 FMAs; 0.51 -> 0.27 ms at 1 thread). AVX2 tiles (at most 12
    accumulators) rank as before."""
    import tvm

    from optc.backends.tvm.schedule import ACC_ENOUGH, _Params, _register_tile

    avx512 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"}))
    assert _register_tile(1024, 7, 16, avx512, 256 * 4) == (2, 16, 7)
    assert _register_tile(64, 112, 16, avx512, 7 * 7 * 3 * 4) == (2, 16, 7)  # a 7x7 stem
    assert _Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})).acc_budget <= ACC_ENOUGH



def test_register_tile_takes_three_vectors_for_factor_three_channels():
    """MobileNet's channel counts (24, 96, 144, ...) have a factor 3: 3 vectors x 4 rows gives
    12 accumulators where 2 x 4 gave 8 (1x1 conv 16 -> 96 on 112x112: 999 -> 805 us)."""
    import tvm

    from optc.backends.tvm.schedule import _Params, _register_tile

    avx2 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    assert _register_tile(96, 112, 8, avx2, 16 * 4) == (3, 8, 4)
    assert _register_tile(24, 56, 8, avx2, 144 * 4) == (3, 8, 4)


def test_register_tile_keeps_its_operands_in_registers():
    """On AVX2's 16 registers a 4 x 3 tile (12 accumulators + 4 vectors + 1 broadcast) made LLVM
    spill an accumulator inside the reduction loop (3x3 conv 32 -> 32 on 450x60: 8.4 ms, 6.4
    as 2 x 6): tiles that fit come first, the most accumulators among them (2 x 5 on a
    15-wide map, not 4 x 3)."""
    import tvm

    from optc.backends.tvm.schedule import _operand_fit, _Params, _register_tile

    avx2 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    assert not _operand_fit(4, 3, 1, avx2)[0]
    assert all(_operand_fit(m, r, 1, avx2)[0] for m, r in [(3, 4), (2, 6), (6, 2), (12, 1)])
    red = 3 * 3 * 32 * 4
    assert _register_tile(32, 60, 8, avx2, red) == (2, 8, 6)
    assert _register_tile(64, 15, 8, avx2, red) == (2, 8, 5)


def _kernel_llvm_ir(func, target_name="cpu") -> str:
    import tvm

    from optc.backends.tvm import lower
    from optc.targets import get_target

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      lower.tvm_target(get_target(target_name)))
    return lib.mod.inspect_source("ll")


def test_register_tile_accumulators_are_not_workspace_allocations():
    """A tile's accumulators in TVM's "local" scope were a TVMBackendAllocWorkspace call per
    tile on CPUs (only small "global" allocations become stack allocas, kept in registers)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 16, 1, 1)).astype(np.float32)
    model = make_graph_model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", [1, 16, 12, 12])],
                             [("y", [1, 32, 12, 12])], {"w": w})  # 1x1, unpadded: no padding copy
    funcs = [f for n, f in _prim_funcs(_scheduled(model)).items() if "conv2d" in n]
    assert len(funcs) == 1 and "T.unroll(" in funcs[0].script()  # a register tile
    assert "TVMBackendAllocWorkspace" not in _kernel_llvm_ir(funcs[0])


def test_shared_values_stay_buffers_instead_of_growing_one_expression():
    """Inlining copies a producer into every read: a chain whose values are each read three
    times (``y = y * y + y``, 6 times) became one expression of 3^6 copies (a 180 KB function;
    a Keras export's index chain took 40 s of TIR lowering per function). Past
    ``INLINE_SHARED_MAX_NODES`` nodes a shared value stays a buffer."""
    from optc.backends.tvm import schedule

    nodes, y = [], "x"
    for k in range(6):
        nodes += [helper.make_node("Mul", [y, y], [f"m{k}"]), helper.make_node("Add", [f"m{k}", y], [f"y{k}"])]
        y = f"y{k}"
    nodes.append(helper.make_node("Tanh", [y], ["out"]))
    model = make_graph_model(nodes, [("x", [4, 16])], [("out", [4, 16])], {})
    funcs = _prim_funcs(_scheduled(model))
    assert len(funcs) == 1
    text = next(iter(funcs.values())).script()
    assert len(text) < 40 * 1024 and text.count("T.sblock(") > 1, len(text)
    assert schedule.INLINE_SHARED_MAX_NODES < 3 ** 6


def test_depthwise_tile_reuses_weight_vectors_over_rows():
    """A depthwise tile loads one input vector per FMA whatever its shape; only the weights
    are reused, across rows: as many rows as the registers left after the weights allow."""
    import tvm

    from optc.backends.tvm.schedule import _depthwise_tile, _Params

    avx2 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    assert _depthwise_tile(144, 56, 8, avx2) == (2, 8, 7)
    assert _depthwise_tile(960, 7, 8, avx2) == (2, 8, 7)  # was 12 vectors x 1 row
    assert _depthwise_tile(32, 40, 8, avx2) == (2, 8, 5)  # 10 accumulators either way
    assert _depthwise_tile(256, 38, 8, avx2) == (2, 8, 7)  # 38 = 2 x 19: 6 tiles of 7, the last partial
    avx512 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"}))
    assert _depthwise_tile(144, 56, 16, avx512) == (1, 16, 14)  # 28 rows: 1.8 KB, a workspace call
    # past ACC_ENOUGH accumulators two vectors first: a 2x2 max pool over 900x120x32 (DNSMOS)
    assert _depthwise_tile(32, 60, 16, avx512) == (2, 16, 6)  # not 1 x 15
    assert _depthwise_tile(16, 60, 16, avx512) == (1, 16, 15)  # one vector of channels: all rows


def test_depthwise_partial_row_tiles_match(tmp_path):
    """A 5x5 depthwise conv on a map 38 wide (2 x 19: a partial last row tile) matches
    onnxruntime."""
    rng = np.random.default_rng(7)
    inits = {"w": (rng.standard_normal((24, 1, 5, 5)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 2, 2, 2], group=24)]
    model = make_graph_model(nodes, [("x", [1, 24, 6, 38])], [("y", [1, 24, 6, 38])], inits)
    onnx.save(model, tmp_path / "dw.onnx")
    report = optc.compile(tmp_path / "dw.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_convolutions_with_row_tiles_match(tmp_path, stride):
    """Depthwise 3x3 convs on 14- and 7-wide maps (2 x 7 tiles, padding copy vectorized per
    pixel) against onnxruntime."""
    rng = np.random.default_rng(5)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"w1": f(48, 1, 3, 3), "b1": f(48), "w2": f(48, 1, 3, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=48, strides=[stride, stride]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1], group=48, strides=[2, 2]),
    ]
    out = 14 // stride
    model = make_graph_model(nodes, [("x", [1, 48, 14, 14])], [("y", [1, 48, (out + 1) // 2, (out + 1) // 2])], inits)
    path = tmp_path / "dw.onnx"
    onnx.save(model, path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def test_depthwise_padding_copy_only_where_it_is_small(tmp_path):
    """A strided depthwise conv (a 30x30 copy for 7x7 outputs) and one on a 7x7 map (9x9
    copy) read their padding through an in-bounds test; a stride-1 one on a 28x28 map keeps the
    padded copy (30x30 copy elements per 28x28 x 9 taps < ``PAD_INLINE_RATIO``). All three
    match onnxruntime."""
    from optc.backends.tvm.schedule import PAD_INLINE_RATIO

    rng = np.random.default_rng(6)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"w1": f(32, 1, 3, 3), "w2": f(32, 1, 3, 3), "w3": f(32, 1, 3, 3), "b": f(32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1], group=32),  # 28x28, s1
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=32, strides=[4, 4]),  # -> 7x7
        helper.make_node("Conv", ["c2", "w3", "b"], ["y"], pads=[1, 1, 1, 1], group=32),  # 7x7, s1
    ]
    model = make_graph_model(nodes, [("x", [1, 32, 28, 28])], [("y", [1, 32, 7, 7])], inits)
    padded = {n: "pad_temp" in fn.script() for n, fn in _prim_funcs(_scheduled(model)).items() if "conv2d" in n}
    assert sorted(padded.values()) == [False, False, True], padded
    assert 30 * 30 / (28 * 28 * 9) < PAD_INLINE_RATIO <= 9 * 9 / (7 * 7 * 9)
    onnx.save(model, tmp_path / "dw.onnx")
    report = optc.compile(tmp_path / "dw.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def test_padding_copy_vectorizes_the_channel_axis_alone():
    """The in-bounds test of a padding copy depends on the pixel only: its vectors split the
    channel axis, so they are plain loads, not per-lane gathers from a fused index."""
    import tvm
    from tvm import s_tir, te, topi

    from optc.backends.tvm import schedule

    params = schedule._Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    x = te.placeholder((1, 6, 6, 24), name="x")
    func = te.create_prim_func([x, topi.nn.pad(x, [0, 1, 1, 0], [0, 1, 1, 0])])
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("PadInput")
    schedule._schedule_injective_block(sch, block, params)
    loops = sch.get_loops(block)
    assert [schedule._extent(sch, lp) for lp in loops] == [64, 3, 8]
    assert sch.get(loops[-1]).kind == tvm.tirx.ForKind.VECTORIZED

def _leaky_max_model(alpha: float):
    """Keras-exported style: Conv -> LeakyRelu(alpha) -> Max(x, constant) -> Conv -> Min(a, b, c)."""
    rng = np.random.default_rng(3)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"w1": f(16, 8, 3, 3), "b1": f(16), "w2": f(16, 16, 1, 3), "floor": np.array([-0.5], np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=alpha),
        helper.make_node("Max", ["l1", "floor"], ["m1"]),
        helper.make_node("Conv", ["m1", "w2"], ["c2"], pads=[0, 1, 0, 1]),
        helper.make_node("Min", ["c2", "m1", "l1"], ["y"]),
    ]
    return make_graph_model(nodes, [("x", [1, 8, 12, 10])], [("y", [1, 16, 12, 10])], inits)


@pytest.mark.parametrize("alpha", [0.2, -0.3, 1.5])
def test_leaky_relu_and_max_keep_nhwc_and_match(tmp_path, alpha):
    """LeakyRelu has no layout inference in TVM 0.27 and the importer's Max/Min stack their
    inputs (ConvertLayout aborts on that stack): both are rewritten into elementwise ops, so
    every conv is NHWC with the activation fused into it, and the values are unchanged
    (verified against onnxruntime)."""
    model = _leaky_max_model(alpha)
    funcs = _prim_funcs(_scheduled(model))
    convs = {n: f.script() for n, f in funcs.items() if "conv2d" in n}
    assert len(convs) == 2 and all("nhwc" in t for t in convs.values()), sorted(funcs)
    # one transpose at the input, one at the output: none around the activations
    assert sorted(n for n in funcs if "transpose" in n) == ["transpose", "transpose1"], sorted(funcs)
    assert not any("stack" in n or "leaky" in n for n in funcs), sorted(funcs)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 10)).astype(np.float32)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.parametrize("alpha", [0.2, -0.3, 1.5])
def test_leaky_relu_rewrite_keeps_special_values(tmp_path, alpha):
    """The elementwise form of LeakyRelu gives onnxruntime's values at +-inf, NaN and -0.
    (alpha 0 is not rewritten; TVM's own leakyrelu simplifies ``x * 0`` to 0, so it gives 0
    where onnxruntime gives NaN at -inf.)"""
    model = make_graph_model([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=alpha)], [("x", [2, 8])], [("y", [2, 8])], {})
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.array([[np.inf, -np.inf, np.nan, -0.0, 0.0, 1e-30, -1e-30, 3.5],
                  [-2.0, 1e38, -1e38, 7.0, -7.0, 0.5, -0.5, 1.0]], np.float32)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.parametrize("geometry", [
    dict(pads=[1, 1, 1, 1]), dict(pads=[0, 2, 1, 0], strides=[2, 1]), dict(dilations=[2, 1], pads=[2, 0, 2, 0]),
])
def test_convolution_weights_are_blocked_by_the_register_tile(tmp_path, geometry):
    """A convolution with constant weights and more output channels than one register tile reads
    its weights packed [Cout/b, KH, KW, Cin, b] (b = the tile's channel run), and still matches
    onnxruntime for padding, stride and dilation; a grouped one keeps TVM's HWIO form."""
    rng = np.random.default_rng(4)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], **geometry),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "wg"], ["y"], group=4)]
    x_shape = [1, 24, 13, 12]
    sess_shape = _conv_out_shape(x_shape, geometry)
    # 128 output channels: more than one tile on AVX2 (2 x 8) and AVX-512 (at most 4 x 16)
    model = make_graph_model(nodes, [("x", x_shape)], [("y", [1, 32, *sess_shape])],
                   {"w": f(128, 24, 3, 3), "b": f(128), "wg": f(32, 32, 1, 1)})
    from optc.backends.tvm import schedule
    from optc.targets import get_target
    from optc.backends.tvm.lower import tvm_target

    tgt = tvm_target(get_target("cpu"))
    lanes = schedule._Params(tgt).lanes("float32")
    funcs = _prim_funcs(_scheduled(model))
    text = "\n".join(f.script() for n, f in funcs.items() if "conv2d" in n)
    import re
    packed = re.findall(r"T\.Buffer\(\(T\.int64\((\d+)\), T\.int64\(3\), T\.int64\(3\), T\.int64\(24\), T\.int64\((\d+)\)\)", text)
    assert packed and int(packed[0][0]) * int(packed[0][1]) == 128 and int(packed[0][1]) % lanes == 0, text[:2000]
    assert int(packed[0][0]) > 1, packed  # blocked
    assert "T.int64(1), T.int64(1), T.int64(32), T.int64(32)" in text  # the grouped conv: HWIO
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def _conv_out_shape(x_shape, geometry):
    pads = geometry.get("pads", [0, 0, 0, 0])
    strides = geometry.get("strides", [1, 1])
    dil = geometry.get("dilations", [1, 1])
    return [(x_shape[2 + i] + pads[i] + pads[i + 2] - dil[i] * 2 - 1) // strides[i] + 1 for i in range(2)]


def test_broadcast_epilogue_is_not_unrolled(tmp_path):
    """A squeeze-excite gate (1x1 conv on the pooled vector, HardSigmoid) multiplied into a large
    feature map fuses into one kernel whose epilogue covers the whole map: it stays a loop
    (unrolled, it was ~20,000 vector stores and a minute of LLVM per kernel on PP-OCR det)."""
    rng = np.random.default_rng(5)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w0"], ["r"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Conv", ["p", "w", "b"], ["s"]),
             helper.make_node("HardSigmoid", ["s"], ["g"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["r", "g"], ["rg"]),
             helper.make_node("Add", ["rg", "r"], ["y"])]
    model = make_graph_model(nodes, [("x", [1, 8, 40, 40])], [("y", [1, 32, 40, 40])],
                   {"w0": f(32, 8, 3, 3), "w": f(32, 32, 1, 1), "b": f(32)})
    funcs = _prim_funcs(_scheduled(model))
    gated = [fn.script() for n, fn in funcs.items() if "conv2d" in n and "multiply" in n]
    assert gated and "T.vectorized(" in gated[0], sorted(funcs)
    assert "T.unroll(T.int64(40))" not in gated[0]  # the 40 x 40 map is looped over, not unrolled
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def test_layout_conversion_given_up_is_reported(tmp_path, monkeypatch):
    """When Relax's ConvertLayout fails, the model is built in NCHW (still verified) and the
    report says so with the reason, instead of silently running slower code."""
    from tvm import relax

    def broken(_layouts):
        raise RuntimeError("Invalid SLayout: can't find S in source layout ABCDE")

    monkeypatch.setattr(relax.transform, "ConvertLayout", broken)
    onnx.save(_conv_model(), str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    layout = report["build"]["schedules"]["layout"]
    assert layout["layout"] == "NCHW kept" and "Invalid SLayout" in layout["reason"], layout


def test_converted_layout_is_not_reported_as_kept(tmp_path):
    onnx.save(_conv_model(), str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert "layout" not in report["build"]["schedules"], report["build"]["schedules"]


@pytest.mark.parametrize("shape,axes", [((1, 5, 7, 24), (0, 3, 1, 2)), ((2, 24, 3, 16), (0, 2, 3, 1)), ((24, 16), (1, 0))])
def test_transpose_walks_the_input_rows_inside_a_vector_column(shape, axes):
    """A transpose's vectors gather across input rows: the input's contiguous axis is looped
    inside each vector column (the rows stay in L1), and the result is the transpose."""
    import tvm
    from tvm import s_tir, te, topi

    from optc.backends.tvm import schedule

    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    params = schedule._Params(target)
    x = te.placeholder(shape, name="x")
    func = te.create_prim_func([x, topi.transpose(x, axes)])
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("T_transpose")
    schedule._schedule_injective_block(sch, block, params)
    loops = sch.get_loops(block)
    assert len(loops) == 3 and sch.get(loops[-1]).kind == tvm.tirx.ForKind.VECTORIZED
    assert schedule._extent(sch, loops[1]) == shape[-1]  # the input's contiguous axis, inside
    lib = tvm.compile(sch.mod, target)
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros(np.transpose(data, axes).shape, np.float32))
    lib["main"](tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), np.transpose(data, axes))


def test_filter_bank_convolution_is_vectorized_along_its_taps(tmp_path):
    """An STFT as Conv1d (long filters, a large stride, a few output frames): no operand is
    contiguous along the output frames, so the taps are vectorized (rfactor partial sums);
    against onnxruntime, beside a Q K^T matmul that keeps the contraction rule."""
    import tvm

    from optc.backends.tvm import lower, schedule
    from optc.targets import get_target

    rng = np.random.default_rng(6)
    inits = {"w": (rng.standard_normal((33, 1, 64)) * 0.1).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[20], kernel_shape=[64]),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
    ]
    model = make_graph_model(nodes, [("x", [1, 1, 144]), ("q", [6, 32])], [("y", [1, 33, 5]), ("s", [6, 6])], inits)
    path = tmp_path / "stft.onnx"
    onnx.save(model, path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    target = get_target("cpu")
    mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", (1, 1, 144)), TensorSpec("q", "float32", (6, 32))],
                                  target, embed_params=True)
    tvm_target = lower.tvm_target(target)
    with tvm_target:
        fused = schedule.fuse_for_schedule(mod, tvm_target)
        params = schedule._Params(tvm_target)
        scheduled = {gv.name_hint: schedule._rule_contraction(f, tvm_target, params)
                     for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    rf = [name for name, f in scheduled.items() if f is not None and "_rf" in f.script()]
    assert any("conv1d" in name for name in rf) and not any("matmul" in name for name in rf), rf


@pytest.mark.parametrize("filters, taps, parallel", [(257, 512, True), (33, 64, False)])
def test_filter_bank_convolution_runs_in_parallel_from_its_own_threshold(filters, taps, parallel):
    """Dot-product kernels sum across vector lanes (~4x fewer multiply-adds per second than a
    register tile), so they run in parallel from a quarter of ``PARALLEL_MIN_WORK``:
    openWakeWord's 257 x 512-tap STFT over 5 frames (2^19.3) does, a small one does not."""
    from optc.backends.tvm import schedule

    w = (np.random.default_rng(7).standard_normal((filters, 1, taps)) * 0.1).astype(np.float32)
    frames, stride = 5, 160
    length = (frames - 1) * stride + taps
    model = make_graph_model([helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride], kernel_shape=[taps])],
                             [("x", [1, 1, length])], [("y", [1, filters, frames])], {"w": w})
    work = filters * frames * taps
    assert (work >= schedule.DOT_PARALLEL_MIN_WORK) == parallel and work < schedule.PARALLEL_MIN_WORK
    conv = [f.script() for n, f in _prim_funcs(_scheduled(model)).items() if "conv1d" in n]
    assert len(conv) == 1 and "_rf" in conv[0]  # the dot-product rule
    assert ("T.parallel(" in conv[0]) == parallel


def test_partial_row_tiles_on_a_prime_width_map(tmp_path):
    """A 13-wide map has no row count between 1 and 13 that divides it: the tile takes rows
    that do not divide it (the last tile partial) when that beats the divisor tiles, and the
    result still matches onnxruntime (the partial tile's predicate)."""
    import tvm

    from optc.backends.tvm.schedule import _Params, _register_tile

    avx2 = _Params(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    # was 4 x 1; 3 x 4 keeps its operands in registers where 4 x 3 does not (1.36-1.41 -> 1.10 ms)
    assert _register_tile(192, 13, 8, avx2, 3 * 3 * 192 * 4) == (3, 8, 4)
    assert _register_tile(512, 7, 8, avx2, 3 * 3 * 512 * 4) == (1, 8, 7)  # 7 whole rows stay
    rng = np.random.default_rng(7)
    inits = {"w": (rng.standard_normal((48, 32, 3, 3)) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_graph_model(nodes, [("x", [1, 32, 13, 13])], [("y", [1, 48, 13, 13])], inits)
    path = tmp_path / "c13.onnx"
    onnx.save(model, path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def test_odd_output_channels_are_padded_to_whole_vectors(tmp_path):
    """Output channel counts without a vector-sized divisor (a conv and a Gemm to 45
    channels: pruned layers, vocabulary heads) compute on weights zero-padded to whole
    vectors, blocked as usual, and a crop keeps the real channels: the vectorized tile instead
    of the scalar fallback (conv 64 -> 45 on 28x28, 1 thread: 3.3 -> 0.56 ms). The results
    match onnxruntime, and the padded width is a multiple of the vector (zero columns cropped)."""
    import re

    rng = np.random.default_rng(9)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "g", "gb"], ["y"])]
    model = make_graph_model(nodes, [("x", [3, 16, 10, 12])], [("y", [3, 45])],
                   {"w": f(45, 16, 3, 3), "b": f(45), "g": f(45, 45), "gb": f(45)})
    from optc.backends.tvm import schedule
    from optc.backends.tvm.lower import tvm_target
    from optc.targets import get_target

    lanes = schedule._Params(tvm_target(get_target("cpu"))).lanes("float32")
    funcs = _prim_funcs(_scheduled(model))
    names = " ".join(funcs)
    assert "crop" in names, names
    text = "\n".join(fn.script() for fn in funcs.values())
    # weights blocked [n, ..., b] where the padded channels take more than one tile (AVX2), or
    # whole [..., N] where one tile covers them (AVX-512: 48 = 3 vectors)
    conv_w = re.findall(r"T\.Buffer\(\((?:T\.int64\((\d+)\), )?T\.int64\(3\), T\.int64\(3\), T\.int64\(16\), "
                        r"T\.int64\((\d+)\)\)", text)
    assert conv_w and int(conv_w[0][0] or 1) * int(conv_w[0][1]) >= 45 and int(conv_w[0][1]) % lanes == 0, text[:1500]
    dense_w = re.findall(r"T\.Buffer\(\((?:T\.int64\((\d+)\), )?T\.int64\(45\), T\.int64\((\d+)\)\)", text)
    assert dense_w and int(dense_w[0][0] or 1) * int(dense_w[0][1]) >= 45 and int(dense_w[0][1]) % lanes == 0, dense_w
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    assert report["verify"]["outputs"][0]["shape"][-1] == 45  # the crop: no padded columns delivered


def test_odd_vector_counts_with_a_one_vector_tile_are_padded_by_one_vector(tmp_path):
    """56 channels = 7 AVX2 vectors (ResNet's 64 pruned at ratio 0.1 with multiple=8): the
    only tiles are one vector wide or one vector deep, one load per FMA, slower than all 64
    channels (3x3 56 -> 56 on 56x56, 1 thread: 41 GFLOP/s vs 89); the weights are padded by
    one vector to a 2-vector tile and cropped (76 GFLOP/s). Whole tiles keep their width (64
    channels; 40 = 5 vectors has a 5 x 2 tile), and the padded conv matches onnxruntime."""
    from optc.backends.tvm import conv_blocked, schedule
    from optc.backends.tvm.lower import tvm_target
    from optc.targets import get_target

    target = tvm_target(get_target("cpu"))
    lanes = schedule._Params(target).lanes("float32")
    if lanes != 8:
        pytest.skip("the channel counts below are AVX2's (8 fp32 lanes)")
    assert conv_blocked.padded_channels(56, target, [1, 56, 56, 56], 9 * 56) == 64
    assert conv_blocked.padded_channels(232, target, [1, 10, 10, 232], 9 * 232) == 240
    assert conv_blocked.padded_channels(64, target, [1, 56, 56, 64], 9 * 64) is None
    assert conv_blocked.padded_channels(40, target, [1, 40, 40, 40], 9 * 40) is None
    assert conv_blocked.padded_channels(8, target, [1, 56, 56, 8], 9 * 8) is None  # +100 %: no
    rng = np.random.default_rng(11)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_graph_model(nodes, [("x", [1, 24, 14, 14])], [("y", [1, 56, 14, 14])], {"w": f(56, 24, 3, 3), "b": f(56)})
    assert "crop" in " ".join(_prim_funcs(_scheduled(model)))
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    assert report["verify"]["outputs"][0]["shape"][1:] == [56, 14, 14]  # the crop: no padded channels


def test_dense_weights_are_blocked_by_the_register_tile(tmp_path):
    """A MatMul by a constant [K, N] weight reads it packed [N/b, K, b] (b = the tile's column
    run); a MatMul by a run-time operand keeps TVM's form; both match onnxruntime."""
    import re

    rng = np.random.default_rng(8)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "z"], ["y"])]
    model = make_graph_model(nodes, [("x", [2, 5, 40]), ("z", [2, 64, 8])], [("y", [2, 5, 8])], {"w": f(40, 64)})
    funcs = _prim_funcs(_scheduled(model))
    text = "\n".join(fn.script() for name, fn in funcs.items() if "matmul" in name)
    packed = re.findall(r"T\.Buffer\(\(T\.int64\((\d+)\), T\.int64\(40\), T\.int64\((\d+)\)\)", text)
    assert packed and int(packed[0][0]) * int(packed[0][1]) == 64, text[:2000]
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def test_one_output_channel_convolution_is_vectorized_along_its_input_channels(tmp_path):
    """A convolution with a single output channel (an audio / segmentation head) has no
    output axis any operand reads contiguously: its input channels are vectorized instead
    (rfactor partial sums, bias and sigmoid applied per block of points); a padded 2-D one
    and a strided 1-D single filter against onnxruntime."""
    import tvm

    from optc.backends.tvm import lower, schedule
    from optc.targets import get_target

    rng = np.random.default_rng(9)
    inits = {"w": (rng.standard_normal((1, 16, 3, 3)) * 0.1).astype(np.float32), "b": np.array([0.3], np.float32),
             "f": (rng.standard_normal((1, 1, 1, 32)) * 0.1).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["y"]),
        helper.make_node("Conv", ["s", "f"], ["z"], strides=[1, 2]),
    ]
    model = make_graph_model(nodes, [("x", [1, 16, 9, 30]), ("s", [1, 1, 1, 200])], [("y", [1, 1, 9, 30]), ("z", [1, 1, 1, 85])],
                   inits)
    path = tmp_path / "one.onnx"
    onnx.save(model, path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    target = get_target("cpu")
    mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", (1, 16, 9, 30)), TensorSpec("s", "float32", (1, 1, 1, 200))],
                                  target, embed_params=True)
    tvm_target = lower.tvm_target(target)
    with tvm_target:
        fused = schedule.fuse_for_schedule(mod, tvm_target)
        params = schedule._Params(tvm_target)
        rf = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
              and "conv2d" in gv.name_hint and "_rf" in (schedule._rule_contraction(f, tvm_target, params) or f).script()]
    assert len(rf) == 2, rf


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_over_a_middle_axis_is_vectorized_along_the_innermost(tmp_path, op):
    """YOLOv8's DFL head: a softmax over axis 1 of [1, 16, 4, anchors]. The column-reduction
    rule schedules it (vectors along the anchors, the 16 bins walked outside them) and it
    matches onnxruntime; a softmax over the innermost axis is a row reduction."""
    nodes = [helper.make_node(op, ["x"], ["y"], axis=1), helper.make_node("Softmax", ["x"], ["z"], axis=-1)]
    model = make_graph_model(nodes, [("x", [1, 16, 4, 40])], [("y", [1, 16, 4, 40]), ("z", [1, 16, 4, 40])], {})
    onnx.save(model, tmp_path / "sm.onnx")
    report = optc.compile(tmp_path / "sm.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    rules = sorted(report["build"]["schedules"]["per_function"].values())
    assert "column_reduction" in rules and "row_reduction" in rules, rules
    assert not report["build"]["schedules"]["rule_failures"]


@pytest.mark.parametrize("width", [48, 36, 30])
def test_row_reductions_sum_in_vector_lanes(tmp_path, width):
    """Softmax, LogSoftmax and LayerNormalization over the innermost axis: each reduction runs
    as vector-wide partial sums (``rfactor``: an ``_rf`` buffer of one vector per row) added at
    the end, every block vectorized per row; they match onnxruntime. A row whose length has no
    factor of 4 (30: vectors of 2) stays with DLight's rule."""
    rng = np.random.default_rng(0)
    inits = {"g": rng.uniform(0.5, 1.5, width).astype(np.float32), "b": rng.standard_normal(width).astype(np.float32)}
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1), helper.make_node("LogSoftmax", ["x"], ["z"], axis=-1),
             helper.make_node("LayerNormalization", ["x", "g", "b"], ["w"], axis=-1, epsilon=1e-5)]
    shape = [2, 6, width]
    model = make_graph_model(nodes, [("x", shape)], [("y", shape), ("z", shape), ("w", shape)], inits, opset=17)
    onnx.save(model, tmp_path / "rows.onnx")
    x = (rng.standard_normal(shape) * 4 + 1).astype(np.float32)
    report = optc.compile(tmp_path / "rows.onnx", "cpu", tmp_path / "pkg", inputs={"x": x},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    sched = report["build"]["schedules"]
    rules = {f: r for f, r in sched["per_function"].items() if any(k in f for k in ("softmax", "layer_norm"))}
    assert len(rules) == 3 and set(rules.values()) == {"row_reduction" if width % 4 == 0 else "dlight"}, rules
    assert not sched["rule_failures"]
    funcs = _prim_funcs(_scheduled(model))
    ln = next(f for name, f in funcs.items() if "layer_norm" in name).script()
    assert ("_rf" in ln and "T.vectorized" in ln) == (width % 4 == 0), ln


def test_large_row_reductions_run_their_rows_in_parallel(tmp_path):
    """A softmax of at least ROW_PARALLEL_MIN_WORK elements runs its rows in a parallel loop
    (set before the partial sums are split off: a parallel loop over a reduction without its
    init is refused by TVM, and the rule fell back to DLight's); a small one stays serial."""
    from optc.backends.tvm import schedule

    big = [2, 64, schedule.ROW_PARALLEL_MIN_WORK // 128]
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1), helper.make_node("Softmax", ["s"], ["z"], axis=-1)]
    model = make_graph_model(nodes, [("x", big), ("s", [4, 64])], [("y", big), ("z", [4, 64])], {}, opset=17)
    onnx.save(model, tmp_path / "sm.onnx")
    report = optc.compile(tmp_path / "sm.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    sched = report["build"]["schedules"]
    assert set(sched["per_function"].values()) == {"row_reduction"} and not sched["rule_failures"], sched
    scripts = [f.script() for f in _prim_funcs(_scheduled(model)).values()]
    width = f"T.int64({big[-1]})"
    assert sorted((width in s, "T.parallel" in s) for s in scripts) == [(False, False), (True, True)], scripts


def test_whole_tensor_and_row_reductions_run_in_vector_lanes(tmp_path):
    """DynamicQuantizeLinear's range (a min and a max of the whole tensor) and ReduceMax /
    ReduceSum of each row with nothing after them: ``plain_reduction`` (vector partials, an
    ``_rf`` buffer), where they were left as serial scalar loops; a whole tensor of at least
    PARALLEL_MIN_WORK elements in parallel chunks. The codes match the spec exactly (min / max
    exact), the sums onnxruntime within the float tolerance."""
    from optc.backends.tvm import schedule

    big = [16, schedule.PARALLEL_MIN_WORK // 16]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DynamicQuantizeLinear", ["b"], ["bq", "bs", "bz"]),
             helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("ReduceSum", ["x", "ax"], ["r"], keepdims=0)]
    f32, u8 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8
    outs = [("q", [24, 64], u8), ("s", [], f32), ("z", [], u8), ("bs", [], f32), ("m", [24, 1], f32), ("r", [24], f32)]
    graph = helper.make_graph(nodes, "red", [helper.make_tensor_value_info(n, f32, v) for n, v in (("x", [24, 64]),
                                                                                                     ("b", big))],
                              [helper.make_tensor_value_info(*o[:1], o[2], o[1]) for o in outs],
                              [onnx.numpy_helper.from_array(np.array([1], np.int64), "ax")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "red.onnx")
    report = optc.compile(tmp_path / "red.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    sched = report["build"]["schedules"]
    plain = re.compile(r"(min|max|sum)\d*$")
    rules = {f: r for f, r in sched["per_function"].items() if plain.match(f)}
    assert len(rules) >= 6 and set(rules.values()) == {"plain_reduction"} and not sched["rule_failures"], sched
    scripts = [f.script() for name, f in _prim_funcs(_scheduled(model)).items() if re.match(r"(min|max)\d*$", name)]
    assert scripts and all("_rf" in s and "T.vectorized" in s for s in scripts), scripts
    assert sum("T.parallel" in s for s in scripts) == 2, scripts  # the big tensor's min and max


def _rotary_model():
    """Rotary embedding of 8-element heads (2 x 3 x 32 -> 4 heads): each head's halves are
    rotated by cos/sin and concatenated back. The fused function reads ``x[i % 8]`` under an
    ``if_then_else`` (which half) along a 32-element innermost axis."""
    rng = np.random.default_rng(3)
    inits = {"shape4": np.array([2, 3, 4, 8], np.int64), "shape3": np.array([2, 3, 32], np.int64),
             "cos": rng.standard_normal((2, 3, 1, 4)).astype(np.float32),
             "sin": rng.standard_normal((2, 3, 1, 4)).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["x", "shape4"], ["h"]),
             helper.make_node("Split", ["h"], ["x1", "x2"], axis=-1, num_outputs=2),
             helper.make_node("Mul", ["x1", "cos"], ["c1"]), helper.make_node("Mul", ["x2", "sin"], ["s2"]),
             helper.make_node("Sub", ["c1", "s2"], ["re"]),
             helper.make_node("Mul", ["x1", "sin"], ["s1"]), helper.make_node("Mul", ["x2", "cos"], ["c2"]),
             helper.make_node("Add", ["s1", "c2"], ["im"]),
             helper.make_node("Concat", ["re", "im"], ["r"], axis=-1),
             helper.make_node("Reshape", ["r", "shape3"], ["y"])]
    return make_graph_model(nodes, [("x", [2, 3, 32])], [("y", [2, 3, 32])], inits, opset=18)


def test_conditional_blocks_vectorize_within_their_index_period(tmp_path):
    """A block with an ``if_then_else`` is emitted as scalar code, and LLVM's loop vectorizer
    on AVX-512 read ``x[i % 8]`` over 16 iterations as 16 contiguous elements (wrong values):
    its vectors must not cross the period of ``% 8``. Checked in the schedule for an
    AVX-512 target (on any host) and by verification where the host has AVX-512."""
    from tvm import tirx

    from optc.backends.tvm import schedule

    target = _avx512_target()
    funcs = _prim_funcs(_scheduled_for(_rotary_model(), target))
    conditional = [f for f in funcs.values() if "if_then_else" in f.script()]
    assert conditional, sorted(funcs)
    for f in conditional:
        widths = [int(lp.extent) for lp in schedule._collect(f.body, tirx.For) if lp.kind == tirx.ForKind.VECTORIZED]
        assert widths and max(widths) <= 8, widths
    onnx.save(_rotary_model(), str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def _avx512_target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def test_functions_of_zero_size_tensors_are_left_unscheduled():
    """A zero-extent loop has nothing to compute; vectorizing one fails TVM's build
    ("Failed to vectorize loop with extent 0"), as an empty ``Trilu``'s function did on AVX-512."""
    from tvm.script import tirx as T

    from optc.backends.tvm import schedule

    @T.prim_func(private=True, s_tir=True)
    def empty(x: T.Buffer((T.int64(0), T.int64(5)), "int64"), y: T.Buffer((T.int64(0), T.int64(5)), "int64")):
        for i, j in T.grid(T.int64(0), T.int64(5)):
            with T.sblock("copy"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = x[vi, vj]

    import tvm

    log = []
    mod = schedule.schedule_cpu(tvm.IRModule({"empty": empty}), _avx512_target(), log)
    assert log == [{"function": "empty", "rule": "empty"}]
    assert "T.vectorized" not in mod["empty"].script()


@pytest.mark.parametrize("channels, nwc", [(64, True), (1, False)])
def test_conv1d_goes_channels_last_where_it_reads_channels(tmp_path, channels, nwc):
    """A 1x1 conv1d 64 -> 32 over 194 frames computes in NWC (vectors along the channels; in
    NCW the 194-wide axis gave 2-lane vectors); a 1-channel conv1d (an STFT as a convolution)
    stays NCW. Both verify."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((32, channels, 1 if channels > 1 else 16)) * 0.2).astype(np.float32)
    width = 194 if channels > 1 else 209
    out = width - w.shape[2] + 1
    model = make_graph_model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", [1, channels, width])],
                             [("y", [1, 32, out])], {"w": w})
    text = "\n".join(f.script() for n, f in _prim_funcs(_scheduled(model)).items() if "conv1d" in n)
    assert ("conv1d_nwc" in text) == nwc, text[:1500]
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


@pytest.mark.parametrize("geometry, dilated_transpose", [(dict(dilations=[4]), False),
                                                        (dict(strides=[3], pads=[2, 1]), True)])
def test_conv1d_with_a_transposed_conv_stays_channels_last_blocked_and_padded(tmp_path, geometry, dilated_transpose):
    """A U-Net of conv1d with a ConvTranspose (an EEG spindle detector): the transposed conv is
    a convolution of its phases (``onnx_ops._conv_transpose_as_shuffle``), or, dilated, TVM's
    conv1d_transpose kept NCW between transposes (TOPI legalizes it in no other layout)
    instead of keeping the whole module NCW (7500 frames vectorized 4 lanes at a time, 1.8x
    onnxruntime); the conv1d
    computes in NWC on weights blocked [Cout/b, K, Cin, b], and its 51 output channels (an odd
    count: scalar code otherwise) zero-padded to whole vectors and cropped. Matches onnxruntime
    for dilation, stride and padding."""
    import re

    from optc.backends.tvm import conv_blocked, schedule
    from optc.backends.tvm.lower import tvm_target
    from optc.targets import get_target

    target = tvm_target(get_target("cpu"))
    lanes = schedule._Params(target).lanes("float32")
    rng = np.random.default_rng(12)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3], **geometry),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "wt"], ["y"], kernel_shape=[2], strides=[2],
                              dilations=[2 if dilated_transpose else 1])]
    width = 96
    pads = geometry.get("pads", [0, 0])
    out = (width + sum(pads) - geometry.get("dilations", [1])[0] * 2 - 1) // geometry.get("strides", [1])[0] + 1
    model = make_graph_model(nodes, [("x", [1, 16, width])], [("y", [1, 8, 2 * out + dilated_transpose])],
                             {"w": f(51, 16, 3), "b": f(51), "wt": f(51, 8, 2)})
    log = []
    from optc.backends.tvm import lower

    mod, _ = lower.prepare_module(model, [TensorSpec("x", "float32", (1, 16, width))], get_target("cpu"), embed_params=True)
    with target:
        funcs = _prim_funcs(schedule.relax_pipeline(target, log=log)(mod))
    assert not any("layout" in r for r in log), log  # not "NCHW kept"
    assert any("conv1d_transpose" in n for n in funcs) == dilated_transpose, " ".join(funcs)
    text = "\n".join(fn.script() for n, fn in funcs.items() if "conv1d" in n and "transpose" not in n)
    assert "conv1d_nwc" in text and "crop" in " ".join(funcs), " ".join(funcs)
    padded = conv_blocked.padded_channels(51, target)
    assert padded is not None and padded % lanes == 0
    blocked = re.findall(r"T\.Buffer\(\(T\.int64\((\d+)\), T\.int64\(3\), T\.int64\(16\), T\.int64\((\d+)\)\)", text)
    assert blocked and int(blocked[0][0]) * int(blocked[0][1]) == padded, text[:1500]
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


def test_narrow_vector_counts_may_double_when_padded():
    """An output channel count whose own vectors would be a quarter of the target's or less (odd:
    scalar code) is padded to whole vectors even where that adds more than a quarter (51 -> 64
    on AVX-512: 1x1 conv1d 64 -> 51 at 1 thread 17 -> 84 GFLOP/s), up to doubling it; counts
    with wide enough vectors of their own keep the quarter limit, and few channels stay as
    they are."""
    import tvm

    from optc.backends.tvm import conv_blocked

    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    assert conv_blocked.padded_channels(51, avx512) == 64
    assert conv_blocked.padded_channels(17, avx512) == 32  # 1-lane vectors: doubled
    assert conv_blocked.padded_channels(255, avx512) == 256
    assert conv_blocked.padded_channels(20, avx512) == 32  # 4-lane vectors: 2 of 16 lanes beat 5 of 4
    assert conv_blocked.padded_channels(24, avx512) is None  # 8-lane vectors: +33 % is too much
    assert conv_blocked.padded_channels(3, avx512) is None and conv_blocked.padded_channels(9, avx512) is None
    assert conv_blocked.padded_channels(51, avx2) == 56
    assert conv_blocked.padded_channels(9, avx2) == 16  # 1-lane vectors
    assert conv_blocked.padded_channels(6, avx2) is None

"""Integer MatMul of two activations (attention ``Q @ K^T``, ``softmax(.) @ V``) end to end:
``quantize<activation-matmul>`` puts Q/DQ on both operands (onnxruntime runs it),
``integerize`` turns ``DQ(a_q), DQ(b_q) -> MatMul -> Q`` into ``ai.optc::IntMatMul`` (also on
onnxruntime's ``quantize_static`` output), whose numpy reference is checked against naive loops
and whose TVM kernel (x86 here, aarch64 under qemu) is checked bit for bit; ``optc compile``
verifies an attention block exactly and refuses an artifact whose IntMatMul is wrong."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.passes.optc_ops import reference_evaluator, run_op
from optc.passes.quant import int_ops, quantize_model
from optc.passes.quant.integerize import integerize_model


def attention_model(seq: int = 7, hidden: int = 12, heads: int = 2) -> onnx.ModelProto:
    """x[1, seq, hidden] -> q, k, v projections -> heads -> softmax(q k^T / sqrt(d)) v -> output
    projection: two MatMuls of activations (``qk``, ``pv``) and four with weights."""
    rng = np.random.default_rng(0)
    d = hidden // heads
    inits = {f"w{n}": rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.3 for n in "qkvo"}
    inits.update(shape=np.array([1, seq, heads, d], np.int64), shape_back=np.array([1, seq, hidden], np.int64),
                 scale=np.array(1 / np.sqrt(d), np.float32))
    nodes = []
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}0"], name=f"proj_{n}"),
                  helper.make_node("Reshape", [f"{n}0", "shape"], [f"{n}1"], name=f"reshape_{n}"),
                  helper.make_node("Transpose", [f"{n}1"], [n], perm=perm, name=f"t_{n}")]
    nodes += [helper.make_node("MatMul", ["q", "k"], ["s0"], name="qk"),
              helper.make_node("Mul", ["s0", "scale"], ["s"], name="scale_mul"),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
              helper.make_node("MatMul", ["p", "v"], ["o0"], name="pv"),
              helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3], name="t_o"),
              helper.make_node("Reshape", ["o1", "shape_back"], ["o2"], name="reshape_o"),
              helper.make_node("MatMul", ["o2", "wo"], ["y"], name="proj_o")]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _calib(n: int = 8, seq: int = 7, hidden: int = 12) -> dict:
    return {"x": np.random.default_rng(1).standard_normal((n, 1, seq, hidden)).astype(np.float32)}


def _ort(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _producer_ops(model: onnx.ModelProto, node_name: str) -> list[str]:
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [producers[i].op_type if i in producers else "input" for i in node.input]


@pytest.fixture(scope="module")
def qdq_attention():
    q, details = quantize_model(attention_model(), _calib(), activation_matmul=True)
    return q, details


# ---------------------------------------------------------------------------------------------
# quantize


def test_quantize_puts_qdq_on_both_activation_operands(qdq_attention):
    q, details = qdq_attention
    for name in ("qk", "pv"):
        assert _producer_ops(q, name) == ["DequantizeLinear", "DequantizeLinear"], name
    assert [r["name"] for r in details["activation_matmuls"]] == ["qk", "pv"]
    assert all("a_range" in r and "b_range" in r and "output_range" in r for r in details["activation_matmuls"])
    # the default leaves them float: their operands are not read through DequantizeLinear
    plain, plain_details = quantize_model(attention_model(), _calib())
    assert "DequantizeLinear" not in _producer_ops(plain, "qk") and "activation_matmuls" not in plain_details
    x = {"x": _calib()["x"][3]}
    ref, got = _ort(attention_model(), x), _ort(q, x)  # onnxruntime runs the QDQ model
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_activation_matmul_respects_exclude():
    q, details = quantize_model(attention_model(), _calib(), activation_matmul=True, exclude=("pv",))
    assert [r["name"] for r in details["activation_matmuls"]] == ["qk"]
    assert {"name": "pv", "op": "MatMul", "reason": "excluded"} in details["skipped"]
    assert _producer_ops(q, "pv")[1] != "DequantizeLinear"


# ---------------------------------------------------------------------------------------------
# integerize


def test_integerize_makes_int_matmuls_exact_against_onnxruntime(qdq_attention):
    q, _ = qdq_attention
    out, details = integerize_model(q)
    ops = {l["name"]: l["op"] for l in details["layers"]}
    assert ops["qk"] == ops["pv"] == "IntMatMul" and details["float_layers"] == []
    assert sum(n.op_type == "IntMatMul" for n in out.graph.node) == 2
    assert "MatMul" not in [n.op_type for n in out.graph.node]
    onnx.checker.check_model(out)
    steps = []
    for s in _calib()["x"][:4]:
        ref, got = _ort(q, {"x": s}), reference_evaluator(out).run(None, {"x": s})[0]
        steps.append(np.abs(got - ref).max())
    s_y = next(numpy_helper.to_array(t) for t in q.graph.initializer if t.name == "y__scale")
    assert max(steps) <= 2 * float(s_y)  # rounding flips at .5 ties only (half up vs half to even)
    again, d2 = integerize_model(out)  # idempotent: nothing left to rewrite
    assert d2["layers"] == [] and [n.op_type for n in again.graph.node] == [n.op_type for n in out.graph.node]


def _qdq_matmul(a_shape, b_shape, a_dtype, b_dtype, *, b_quantized: bool = True) -> onnx.ModelProto:
    """``Q(a), Q(b) -> DQ, DQ -> MatMul -> Q -> DQ`` with per-tensor parameters."""
    zp = {"uint8": np.uint8(3), "int8": np.int8(-2)}
    inits = [numpy_helper.from_array(np.float32(0.05), "sa"), numpy_helper.from_array(zp[a_dtype], "za"),
             numpy_helper.from_array(np.float32(0.04), "sb"), numpy_helper.from_array(zp[b_dtype], "zb"),
             numpy_helper.from_array(np.float32(0.3), "sy"), numpy_helper.from_array(np.uint8(128), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"])]
    if b_quantized:
        nodes += [helper.make_node("QuantizeLinear", ["b", "sb", "zb"], ["bq"]),
                  helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"])]
    nodes += [helper.make_node("MatMul", ["ad", "bd" if b_quantized else "b"], ["m"], name="mm"),
              helper.make_node("QuantizeLinear", ["m", "sy", "zy"], ["mq"]),
              helper.make_node("DequantizeLinear", ["mq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape),
                                        helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("a_shape,b_shape,dtypes", [((5, 9), (9, 4), ("uint8", "int8")),
                                                    ((2, 3, 5, 9), (3, 9, 7), ("int8", "uint8")),
                                                    ((2, 1, 5, 9), (1, 3, 9, 7), ("int8", "int8"))])
def test_integerize_qdq_matmul_shapes_and_types(a_shape, b_shape, dtypes):
    model = _qdq_matmul(list(a_shape), list(b_shape), *dtypes)
    out, details = integerize_model(model)
    assert [l["op"] for l in details["layers"]] == ["IntMatMul"]
    node = next(n for n in out.graph.node if n.op_type == "IntMatMul")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (attrs["a_zero_point"], attrs["b_zero_point"]) == tuple(3 if d == "uint8" else -2 for d in dtypes)
    rng = np.random.default_rng(4)
    feeds = {"a": rng.standard_normal(a_shape).astype(np.float32) * 3,
             "b": rng.standard_normal(b_shape).astype(np.float32) * 3}
    ref, got = _ort(model, feeds), reference_evaluator(out).run(None, feeds)[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 0.3 * 1.001  # one output step at ties


def test_unmatched_activation_matmuls_stay_float_with_a_reason():
    _, details = integerize_model(_qdq_matmul([5, 9], [9, 4], "uint8", "uint8", b_quantized=False))
    assert details["layers"] == []
    assert details["float_layers"] == [{"name": "mm", "op": "MatMul",
                                        "reason": "operand B is not read through DequantizeLinear"}]
    _, details = integerize_model(_qdq_matmul([1, 2, 1, 1, 9], [9, 4], "uint8", "uint8"))
    assert details["float_layers"][0]["reason"] == "activation MatMul operand of rank outside 2-4"
    _, details = integerize_model(_qdq_matmul([2, 40000], [40000, 3], "uint8", "uint8"))
    assert details["float_layers"][0]["reason"] == "the int32 accumulator could overflow"


def test_onnxruntime_quantize_static_attention_is_integerized(tmp_path):
    """onnxruntime's own QDQ output of the attention block (MatMuls quantized, both operands of
    the activation MatMuls through Q/DQ): both become IntMatMul, within a step or two of ORT."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": s} for s in _calib()["x"]])

        def get_next(self):
            return next(self.it, None)

    onnx.save(attention_model(), tmp_path / "f.onnx")
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    q = onnx.load(str(tmp_path / "q.onnx"))
    names = {n.name for n in q.graph.node if n.op_type == "MatMul" and _producer_ops(q, n.name) ==
             ["DequantizeLinear", "DequantizeLinear"]}
    out, details = integerize_model(q)
    ints = {l["name"] for l in details["layers"] if l["op"] == "IntMatMul"}
    assert len(ints) == 2 and ints <= names, (ints, details["float_layers"])
    x = {"x": _calib()["x"][2]}
    ref, got = _ort(q, x), reference_evaluator(out).run(None, x)[0]
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------
# the op's reference

CASES = {  # name -> (a shape, b shape, a dtype, b dtype, a zero point, b zero point)
    "2d-odd-u8-s8": ((5, 9), (9, 7), "uint8", "int8", 255, -128),
    "batch-s8-u8": ((3, 4, 13), (3, 13, 5), "int8", "uint8", 127, 0),
    "broadcast-b": ((2, 3, 5, 9), (3, 9, 7), "uint8", "uint8", 0, 255),
    "broadcast-both": ((2, 1, 6, 11), (1, 3, 11, 17), "int8", "int8", -128, 127),
    "rank2-a-batched-b": ((5, 9), (2, 9, 4), "uint8", "int8", 131, -5),
    "k63-two-col-tiles": ((2, 6, 63), (2, 63, 21), "uint8", "uint8", 200, 17),  # K near the tile switch
    "k1": ((3, 1), (1, 5), "int8", "uint8", 0, 128),
}


def _case(name: str, seed: int = 0):
    a_shape, b_shape, ad, bd, za, zb = CASES[name]
    rng = np.random.default_rng(seed)
    a = rng.integers(np.iinfo(ad).min, int(np.iinfo(ad).max) + 1, a_shape).astype(ad)
    b = rng.integers(np.iinfo(bd).min, int(np.iinfo(bd).max) + 1, b_shape).astype(bd)
    k = a_shape[-1]
    mult, shift = int_ops.fixed_point([32.0 / (np.sqrt(k) * 128 * 128)])  # output codes spread ~10
    attrs = {"a_zero_point": za, "b_zero_point": zb, "y_zero_point": 5, "out_min": -128, "out_max": 127, "to": 3}
    return a, b, mult, shift, attrs


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_naive_loops(name):
    a, b, mult, shift, attrs = _case(name)
    y = run_op("IntMatMul", a, b, mult, shift, **attrs)
    ab = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a4 = np.broadcast_to(a, (*ab, *a.shape[-2:])).reshape(-1, *a.shape[-2:]).astype(np.int64)
    b4 = np.broadcast_to(b, (*ab, *b.shape[-2:])).reshape(-1, *b.shape[-2:]).astype(np.int64)
    ref = np.empty((a4.shape[0], a.shape[-2], b.shape[-1]), np.int64)
    m_, s_ = int(mult[0]), int(shift[0])
    for t in range(a4.shape[0]):
        for i in range(a.shape[-2]):
            for j in range(b.shape[-1]):
                acc = sum((int(a4[t, i, k]) - attrs["a_zero_point"]) * (int(b4[t, k, j]) - attrs["b_zero_point"])
                          for k in range(a.shape[-1]))
                ref[t, i, j] = min(127, max(-128, ((acc * m_ + (1 << (s_ - 1))) >> s_) + 5))
    assert y.dtype == np.int8 and np.array_equal(y, ref.reshape(*ab, a.shape[-2], b.shape[-1]))
    assert len(np.unique(y)) > min(10, y.size // 2)  # not saturated


def test_reference_refuses_an_accumulator_overflow():
    a = np.full((1, 40000), 255, np.uint8)
    b = np.full((40000, 1), -128, np.int8)
    with pytest.raises(ValueError, match="overflow"):
        run_op("IntMatMul", a, b, *int_ops.fixed_point([1e-6]), a_zero_point=0, b_zero_point=127, out_min=0,
               out_max=255)
    assert int_ops.matmul_acc_bound(40000, np.uint8, 0, np.int8, 127) > int_ops.ACC_LIMIT


# ---------------------------------------------------------------------------------------------
# TVM kernel


def _one_node(name: str, seed: int = 0) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    a, b, mult, shift, attrs = _case(name, seed)
    node = helper.make_node("IntMatMul", ["a", "b", "m", "s"], ["y"], domain="ai.optc", **attrs)
    y_shape = [*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1]]
    g = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", helper.np_dtype_to_tensor_dtype(a.dtype),
                                                                       a.shape),
                                         helper.make_tensor_value_info("b", helper.np_dtype_to_tensor_dtype(b.dtype),
                                                                       b.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, y_shape)],
                          [numpy_helper.from_array(mult, "m"), numpy_helper.from_array(shift, "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])
    return model, [a, b]


def _build(model, inputs, target: str):
    from optc.backends.tvm import lower
    from optc.frontend import TensorSpec
    from optc.targets import get_target

    specs = [TensorSpec(n, str(v.dtype), v.shape) for n, v in zip(("a", "b"), inputs)]
    ex, _ = lower.build(model, specs, get_target(target), embed_params=True)
    return ex


@pytest.mark.tvm
@pytest.mark.parametrize("name", list(CASES))
def test_cpu_kernel_is_bit_exact(name):
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    model, inputs = _one_node(name)
    ex = _build(model, inputs, "cpu")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for seed in (0, 1):
        _, ins = _one_node(name, seed)
        out = vm["main"](*[tvm.runtime.tensor(v) for v in ins]).numpy()
        ref = reference_evaluator(model).run(None, dict(zip(("a", "b"), ins)))[0]
        assert out.dtype == ref.dtype and np.array_equal(out, ref)


@pytest.mark.tvm
@pytest.mark.qemu
def test_arm_kernel_is_bit_exact_under_qemu(tmp_path):
    import shutil

    pytest.importorskip("tvm")
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    model, inputs = _one_node("broadcast-both")
    ex = _build(model, inputs, "arm-a72")
    arm.export_aarch64(ex, tmp_path / "mm.so")
    outs, _ = arm.run_qemu(tmp_path / "mm.so", inputs, qemu=arm.QemuRun(cpu="cortex-a72"))
    ref = reference_evaluator(model).run(None, dict(zip(("a", "b"), inputs)))[0]
    assert np.array_equal(outs[0], ref)


# ---------------------------------------------------------------------------------------------
# optc compile


def _torch_attention(path) -> None:
    """A one-head-pair self-attention block in torch, exported with optc's exporter."""
    torch = pytest.importorskip("torch")
    from optc.train.export import export_torch

    class Attention(torch.nn.Module):
        def __init__(self, hidden: int = 16, heads: int = 2):
            super().__init__()
            self.heads, self.d = heads, hidden // heads
            self.qkv = torch.nn.Linear(hidden, 3 * hidden)
            self.out = torch.nn.Linear(hidden, hidden)

        def forward(self, x):
            b, s, h = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, self.d).permute(2, 0, 3, 1, 4)
            p = torch.softmax(q @ k.transpose(-1, -2) / self.d ** 0.5, dim=-1)
            return self.out((p @ v).transpose(1, 2).reshape(b, s, h))

    torch.manual_seed(0)
    export_torch(Attention(), torch.randn(1, 9, 16), path, input_names=["x"], output_names=["y"])


@pytest.mark.tvm
def test_compile_attention_block_and_refuse_a_wrong_int_matmul(tmp_path, monkeypatch):
    import optc
    from optc.backends.tvm import int8_matmul
    from optc.errors import VerificationError

    _torch_attention(tmp_path / "attn.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).standard_normal((16, 1, 9, 16)).astype(np.float32))
    passes = f"quantize<calib={tmp_path / 'calib.npz'};activation-matmul=true>"
    opts = optc.CompileOptions.of(measure=False)
    report = optc.compile(tmp_path / "attn.onnx", "cpu", tmp_path / "ok", passes=passes, options=opts)
    integerize = next(p for p in report["passes"] if p["name"] == "integerize")["details"]
    assert sum(l["op"] == "IntMatMul" for l in integerize["layers"]) == 2, integerize
    # the output is float (the out projection's bias Add after its IntDense): exact up to float32
    assert report["verify"]["passed"] and report["verify"]["max_abs_error"] < 1e-6
    assert "IntMatMul" in [n.op_type for n in onnx.load(str(tmp_path / "ok" / "model.onnx")).graph.node]

    real = int8_matmul.int_matmul

    def wrong_shift(bb, a, b, requant, rq, zps):  # an artifact whose IntMatMul shifts one bit less
        from tvm import relax

        mult, shift = requant
        return real(bb, a, b, [mult, bb.emit(relax.op.subtract(shift, relax.const(1, "int32")))], rq, zps)

    monkeypatch.setattr(int8_matmul, "int_matmul", wrong_shift)
    with pytest.raises(VerificationError):
        optc.compile(tmp_path / "attn.onnx", "cpu", tmp_path / "bad", passes=passes, options=opts)
    assert not (tmp_path / "bad").exists()


@pytest.mark.tvm
def test_compile_refuses_int_matmul_zero_points_off_by_one(tmp_path, monkeypatch):
    """The output is a DequantizeLinear's (the quantizer-steps rule of
    :mod:`optc.passes.quant.tolerance`: within 4 steps, mean within half a step): IntMatMuls
    reading ``b_zero_point + 1`` move it by up to 6 steps and are refused. (Smaller errors pass
    that rule: ``a_zero_point + 1`` on ``qk`` alone moves the output by 4 steps at most, as
    rounding flips propagated through the float Softmax may.)"""
    import optc
    from optc.backends.tvm import int8_matmul
    from optc.errors import VerificationError

    onnx.save(attention_model(), tmp_path / "attn.onnx")
    np.savez(tmp_path / "calib.npz", **_calib())
    passes = f"quantize<calib={tmp_path / 'calib.npz'};activation-matmul=true>"
    opts = optc.CompileOptions.of(measure=False)
    report = optc.compile(tmp_path / "attn.onnx", "cpu", tmp_path / "ok", passes=passes, options=opts)
    out = report["verify"]["outputs"][0]
    assert out["tolerance_rule"].startswith("quantizer steps") and out["max_abs_error"] == 0
    real = int8_matmul.int_matmul

    def wrong_zero_point(bb, a, b, requant, rq, zps):  # an artifact whose IntMatMuls read zp_b + 1
        return real(bb, a, b, requant, rq, (zps[0], zps[1] + 1))

    monkeypatch.setattr(int8_matmul, "int_matmul", wrong_zero_point)
    with pytest.raises(VerificationError):
        optc.compile(tmp_path / "attn.onnx", "cpu", tmp_path / "bad", passes=passes, options=opts)
    assert not (tmp_path / "bad").exists()


def test_integerize_can_keep_activation_matmuls_float(qdq_attention):
    q, _ = qdq_attention
    out, details = integerize_model(q, activation_matmul=False)
    assert [l["op"] for l in details["layers"]] == ["IntDense"] * 4
    assert {f["name"] for f in details["float_layers"]} == {"qk", "pv"}
    assert "IntMatMul" not in [n.op_type for n in out.graph.node]
    from optc import pipeline

    specs = pipeline.parse_pipeline("integerize<activation-matmul=false>")
    assert pipeline.format_pipeline(specs) == "integerize<activation-matmul=false>"


@pytest.mark.tvm
@pytest.mark.qemu
def test_attention_block_compiles_and_verifies_for_arm(tmp_path):
    """``optc compile`` for a Cortex-A72 (the int32 form of the kernel), verified under qemu."""
    import shutil

    pytest.importorskip("tvm")
    import optc
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    onnx.save(attention_model(), tmp_path / "attn.onnx")
    np.savez(tmp_path / "calib.npz", **_calib())
    report = optc.compile(tmp_path / "attn.onnx", "arm-a72", tmp_path / "pkg",
                          passes=f"quantize<calib={tmp_path / 'calib.npz'};activation-matmul=true>",
                          options=optc.CompileOptions.of(measure=False))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "pkg" / "model.onnx")).graph.node]
    assert ops.count("IntMatMul") == 2 and report["verify"]["passed"] and report["verify"]["max_abs_error"] == 0


def test_reference_erf_is_vectorized_and_equals_onnxs():
    """The reference's Erf (GELU in QDQ transformers) runs vectorized and gives onnx's own
    element-by-element values bit for bit on float32; float64 keeps ``math.erf`` in float64
    (onnx's own loop rounds it to float32 precision)."""
    import math

    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from optc.passes.quant.int_ops import STANDARD_OPS, Erf

    assert Erf in STANDARD_OPS
    for elem, dt in ((TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64)):
        m = helper.make_model(helper.make_graph(
            [helper.make_node("Erf", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", elem, [4096])],
            [helper.make_tensor_value_info("y", elem, [4096])]), opset_imports=[helper.make_opsetid("", 17)])
        x = (np.random.default_rng(0).standard_normal(4096) * 3).astype(dt)
        x[:3] = [0.0, np.inf, np.nan]
        want = ReferenceEvaluator(m).run(None, {"x": x})[0]
        if dt == np.float64:
            want = np.array([math.erf(v) for v in x])
        got = ReferenceEvaluator(m, new_ops=[Erf]).run(None, {"x": x})[0]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)

"""Energy per inference: the Horowitz op-count model against hand computations, RAPL with a fake
powercap tree (wraparound included), NVML with a fake pynvml, --power-watts, and the report
section of a real compile; the qemu insn plugin's instruction count where it can be built."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc import energy
from optc.energy import model_energy, rapl_delta_uj
from tests.conftest import make_int8_depthwise_model, make_onnx_model

PJ = 1e-9  # mJ per pJ


def _gemm_relu() -> onnx.ModelProto:
    """x[1,4] -> Gemm(W[3,4]^T, b[3]) -> Relu -> y[1,3], fp32."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return make_onnx_model(nodes, inits, [1, 4], [1, 3])


def test_modeled_fp32_matches_hand_computation():
    e = model_energy(_gemm_relu())
    # compute: 12 MACs x (3.7 + 0.9) pJ; 3 bias adds + 3 Relu ops x 0.9 pJ
    compute = 12 * 4.6 + 3 * 0.9 + 3 * 0.9
    # upper bound: Gemm reads x 16 B + W 48 B + b 12 B, writes h 12 B; Relu reads 12 B, writes 12 B;
    # 112 B at 640 pJ per 4 B
    upper = compute + 112 * 160
    # lower bound: weights 60 B and model input 16 B / output 12 B via DRAM; h (12 B written,
    # 12 B read) in the 8 KB SRAM (10 pJ per 8 B)
    lower = compute + (60 + 16 + 12) * 160 + 24 * 10 / 8
    assert e["method"] == "modeled" and "Horowitz" in e["source"] and "ISSCC 2014" in e["source"]
    assert e["mj_per_inference"] == pytest.approx(upper * PJ, rel=1e-12)
    assert e["mj_per_inference_lower"] == pytest.approx(lower * PJ, rel=1e-12)
    b = e["breakdown"]
    assert b["counts"]["macs"] == {"fp32": 12, "int8": 0, "binary": 0}
    assert b["counts"]["bytes_upper"] == 112 and b["counts"]["weight_bytes"] == 60
    assert b["activations_on"] == "SRAM 8 KB"
    assert b["compute_mj"]["fp32_mac"] == pytest.approx(12 * 4.6 * PJ)


def _qdq_matmul() -> onnx.ModelProto:
    """x -> Q -> DQ -> MatMul(DQ(Wq int8 [4,3])) -> Q -> DQ -> y: one int8 layer in QDQ form."""
    rng = np.random.default_rng(1)
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    wq = numpy_helper.from_array(rng.integers(-100, 100, (4, 3)).astype(np.int8), "Wq")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dqx"),
             helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["wf"], name="dqw"),
             helper.make_node("MatMul", ["xf", "wf"], ["h"], name="mm"),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="qh"),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["y"], name="dqh")]
    return make_onnx_model(nodes, [s, z, wq], [1, 4], [1, 3])


def test_modeled_int8_qdq_layer():
    e = model_energy(_qdq_matmul())
    # quantize x: 4 elements x (3.7 + 0.9); MatMul int8: 12 MACs x (0.2 int8 mult + 0.1 int32 add);
    # requantize 3 outputs x (3.1 int32 mult + 0.1 int32 add)
    compute = 4 * 4.6 + 12 * 0.3 + 3 * 3.2
    # traffic: Q reads x 16 B + s 4 B + z 1 B, writes xq 4 B; MatMul reads xq 4 B + Wq 12 B (int8),
    # writes 3 B (int8, the Q is folded into it); DQ nodes move nothing
    upper = compute + (25 + 19) * 160
    lower = compute + (17 + 16 + 3) * 160 + 8 * 10 / 8  # weights s, z, Wq; io x, y; xq in SRAM
    assert e["mj_per_inference"] == pytest.approx(upper * PJ, rel=1e-12)
    assert e["mj_per_inference_lower"] == pytest.approx(lower * PJ, rel=1e-12)
    counts = e["breakdown"]["counts"]
    assert counts["macs"] == {"fp32": 0, "int8": 12, "binary": 0}
    assert counts["requantized_outputs"] == 3 and counts["quantized_elements"] == 4


def _optc_model(op: str, attrs: dict, w: np.ndarray, x_shape, y_shape) -> onnx.ModelProto:
    n_out = y_shape[1]
    inits = [numpy_helper.from_array(w, "Wp"), numpy_helper.from_array(np.ones(n_out, np.float32), "alpha")]
    nodes = [helper.make_node(op, ["x", "Wp", "alpha"], ["y"], name="layer", domain="ai.optc", **attrs)]
    return make_onnx_model(nodes, inits, x_shape, y_shape, optc_ops=True, check=False)


def test_modeled_binary_ai_optc_ops():
    # BinaryDense: x [2, 128] (binarized at run time) x packed W [16, 2 words] -> y [2, 16]
    m = _optc_model("BinaryDense", {"in_features": 128}, np.zeros((16, 2), np.uint64), [2, 128], [2, 16])
    e = model_energy(m)
    c = e["breakdown"]["counts"]
    assert c["macs"] == {"fp32": 0, "int8": 0, "binary": 2 * 16 * 128} and c["binary_ops"] == 4096
    cm = e["breakdown"]["compute_mj"]
    assert cm["binary_mac"] == pytest.approx(4096 * 0.03 / 8 * PJ)  # 1/8 of an int8 add each
    # binarize 256 inputs (a compare, 0.9 pJ) + scale and bias 32 outputs (3.7 + 0.9 pJ)
    assert cm["binarize_and_scale"] == pytest.approx((256 * 0.9 + 32 * 4.6) * PJ)
    # packed weights: 16 x 2 x 8 B = 256 B (vs 8 KB in fp32) + alpha 64 B
    assert c["weight_bytes"] == 256 + 64

    # BitserialConv2d, 2-bit weights x 2-bit activations: 4 binary ops per MAC; output shape inferred
    attrs = {"in_channels": 8, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1],
             "dilations": [1, 1], "act_bits": 2, "weight_bits": 2, "act_scale": 0.1}
    m = _optc_model("BitserialConv2d", attrs, np.zeros((4, 2, 3, 3, 1), np.uint64), [1, 8, 6, 6], [1, 4, 6, 6])
    c = model_energy(m)["breakdown"]["counts"]
    assert c["macs"]["binary"] == 4 * 36 * 8 * 9 and c["binary_ops"] == 4 * c["macs"]["binary"]

    # BinaryConv2dThreshold (binary conv + threshold + 2x2 max pool fused): MACs of the unpooled
    # conv, output shape pooled
    attrs = {"in_channels": 8, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1],
             "dilations": [1, 1], "pool_shape": [2, 2]}
    m = _optc_model("BinaryConv2dThreshold", attrs, np.zeros((4, 3, 3, 1), np.uint64), [1, 8, 6, 6], [1, 4, 3, 3])
    c = model_energy(m)["breakdown"]["counts"]
    assert c["macs"] == {"fp32": 0, "int8": 0, "binary": 4 * 36 * 8 * 9}

    # an ai.optc op whose MACs cannot be known is named in the notes, not counted as free silently
    m = _optc_model("Mystery", {}, np.zeros((4, 1), np.uint64), [1, 64], [1, 4])
    assert any("no known MAC count" in n for n in model_energy(m)["notes"])


# --- RAPL ------------------------------------------------------------------------------------

MAX_RANGE = 262143328850


def _zone(root: Path, name: str, label: str, uj: int, max_range: int = MAX_RANGE) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def _set(d: Path, uj: int) -> None:
    (d / "energy_uj").write_text(f"{uj}\n")


def test_rapl_wraparound():
    assert rapl_delta_uj(100, 600, MAX_RANGE) == 500
    assert rapl_delta_uj(MAX_RANGE - 1000, 500, MAX_RANGE) == 1500


@pytest.fixture
def fake_powercap(tmp_path):
    root = tmp_path / "powercap"
    zones = {
        "pkg": _zone(root, "intel-rapl:0", "package-0", MAX_RANGE - 2_000_000),  # wraps in the loop
        "core": _zone(root, "intel-rapl:0:0", "core", 5_000_000),
        "dram": _zone(root, "intel-rapl:0:1", "dram", 1_000_000, 65_532_610_987),
        "psys": _zone(root, "intel-rapl:1", "psys", 7_000_000),
    }
    return root, zones


def test_rapl_meter_fake_sysfs(fake_powercap):
    root, z = fake_powercap
    meter = energy.RaplMeter(root)
    assert meter.unavailable() is None and len(meter.zones) == 4

    def run(n):  # the "inferences": package +3 J (wrapping), core +2 J, dram +0.5 J, psys +9 J
        _set(z["pkg"], 1_000_000)
        _set(z["core"], 7_000_000)
        _set(z["dram"], 1_500_000)
        _set(z["psys"], 16_000_000)

    m = energy.measure_loop(meter, run, 1000)
    assert m.joules["total"] == pytest.approx(3.0 + 0.5)  # packages + dram; core and psys overlap them
    sec = energy.measured_section(meter, m)
    assert sec["method"] == "measured" and "powercap RAPL" in sec["source"]
    assert sec["mj_per_inference"] == pytest.approx(3.5)  # 3.5 J / 1000 inferences
    assert sec["breakdown"]["intel-rapl:0:0 (core)"] == pytest.approx(2.0)


def test_rapl_absent(tmp_path):
    why = energy.RaplMeter(tmp_path / "nothing").unavailable()
    assert "no RAPL powercap zones" in why


class _FakeSession:
    def __init__(self, on_run):
        self.on_run = on_run
        self.calls = 0

    def time(self, args, warmup, repeat):
        self.calls += warmup + repeat
        if repeat:
            self.on_run(repeat)
        return [1e-4] * repeat


CPU = SimpleNamespace(name="cpu", backend="tvm-cpu", tvm={"kind": "llvm"}, latency="measured")


def test_report_section_measured_with_rapl(fake_powercap, monkeypatch):
    root, z = fake_powercap
    monkeypatch.setattr(energy.report, "IDLE_SECONDS", 0.01)
    monkeypatch.setattr(energy.report, "MEASURE_SECONDS", 0.01)
    seen = []

    def on_run(n):
        seen.append(n)
        _set(z["pkg"], 1_000_000)  # +3 J over the loop

    sess = _FakeSession(on_run)
    sec = energy.report_section(CPU, {}, {"method": "measured", "median_ms": 0.1}, model=_gemm_relu(),
                                artifact=energy.ArtifactRun(session=sess, args=[]),
                                options=energy.EnergyOptions(meters={"llvm": lambda: energy.RaplMeter(root)}))
    assert seen == [100]  # 0.01 s / 0.1 ms
    assert sec["method"] == "measured"
    assert sec["mj_per_inference"] == pytest.approx(3.0 / 100 * 1e3)
    assert sec["idle_watts"] == pytest.approx(0.0)
    assert sec["modeled"]["method"] == "modeled"  # kept beside it for comparison


def test_measured_loop_asks_gpu_timers_for_one_call_per_repeat(fake_powercap, monkeypatch):
    root, _ = fake_powercap
    monkeypatch.setattr(energy.report, "IDLE_SECONDS", 0.0)
    monkeypatch.setattr(energy.report, "MEASURE_SECONDS", 0.002)
    calls = []

    class GpuLikeSession:  # time(..., number=10) batches calls per repeat, like CUDA time_evaluator
        def time(self, args, warmup, repeat, number=10):
            calls.append((repeat, number))
            return [1e-4] * repeat

    energy.report_section(CPU, {}, {"method": "measured", "median_ms": 0.1}, model=_gemm_relu(),
                          artifact=energy.ArtifactRun(session=GpuLikeSession(), args=[]),
                          options=energy.EnergyOptions(meters={"llvm": lambda: energy.RaplMeter(root)}))
    assert calls[-1] == (20, 1)


def test_report_section_falls_back_to_modeled_and_says_why(tmp_path):
    lat = {"method": "measured", "median_ms": 0.1}
    sec = energy.report_section(CPU, {}, lat, model=_gemm_relu(), artifact=energy.ArtifactRun(_FakeSession(lambda n: None), []),
                                options=energy.EnergyOptions(meters={"llvm": lambda: energy.RaplMeter(tmp_path)}))
    assert sec["method"] == "modeled" and any("no RAPL" in n for n in sec["notes"])
    arm = SimpleNamespace(name="arm", backend="tvm-arm", tvm={"kind": "llvm"}, latency="modeled")
    sec = energy.report_section(arm, {}, {"method": "modeled", "median_ms": 0.05}, model=_gemm_relu())
    assert sec["method"] == "modeled" and any("does not run natively" in n for n in sec["notes"])
    sec = energy.report_section(CPU, {"macs": 10, "flops": 20, "bytes_moved": 100}, {"method": "not measured"})
    assert sec["mj_per_inference"] == pytest.approx((10 * 4.6 + 100 * 160) * PJ)


def test_power_watts_estimate():
    sec = energy.report_section(CPU, {}, {"method": "measured", "median_ms": 2.5}, model=_gemm_relu(),
                                options=energy.EnergyOptions(power_watts=4.0))
    assert sec["method"] == "estimated from supplied power"
    assert sec["mj_per_inference"] == pytest.approx(10.0)  # 4 W x 2.5 ms = 10 mJ
    assert "4 W" in sec["source"] and "measured latency" in sec["source"]
    assert sec["modeled"]["mj_per_inference"] > 0
    from optc.errors import UsageError

    with pytest.raises(UsageError, match="positive"):
        energy.report_section(CPU, {}, {"method": "measured", "median_ms": 1}, options=energy.EnergyOptions(power_watts=-1))


# --- NVML (fake pynvml) ----------------------------------------------------------------------


def _fake_pynvml(monkeypatch, counter: bool):
    state = {"mj": 1_000_000}
    mod = types.ModuleType("pynvml")
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    mod.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
    mod.nvmlDeviceGetPowerUsage = lambda h: 50_000  # mW

    def total(h):
        if not counter:
            raise RuntimeError("not supported")
        return state["mj"]

    mod.nvmlDeviceGetTotalEnergyConsumption = total
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return state


def test_nvml_energy_counter(monkeypatch):
    state = _fake_pynvml(monkeypatch, counter=True)
    meter = energy.NvmlMeter(0)
    assert meter.unavailable() is None and meter.mode == "energy counter"

    def run(n):
        state["mj"] += 20_000  # 20 J

    sec = energy.measured_section(meter, energy.measure_loop(meter, run, 200))
    assert sec["mj_per_inference"] == pytest.approx(100.0) and "H100" in sec["source"]


def test_nvml_power_sampling(monkeypatch):
    import time

    _fake_pynvml(monkeypatch, counter=False)
    meter = energy.NvmlMeter(0, sample_s=0.002)
    assert meter.mode == "power sampling"
    m = energy.measure_loop(meter, lambda n: time.sleep(0.1), 10)
    assert m.joules["total"] == pytest.approx(50 * m.seconds, rel=0.2)


# --- the report of a real compile ------------------------------------------------------------


@pytest.mark.tvm
def test_compile_report_energy_and_power_watts(tmp_path, conv_model):
    from optc.cli import main

    out = tmp_path / "pkg"
    assert main(["compile", str(conv_model), "-o", str(out), "-q", "--power-watts", "15"]) == 0
    r = json.loads((out / "report.json").read_text())
    e = r["energy"]
    assert e["method"] == "estimated from supplied power"
    assert e["mj_per_inference"] == pytest.approx(15 * r["latency"]["median_ms"])
    # the modeled figure beside it is the op-count model of the optimized graph in the package
    ref = model_energy(onnx.load(str(out / "model.onnx")))
    assert e["modeled"]["mj_per_inference"] == pytest.approx(ref["mj_per_inference"])

    out2 = tmp_path / "pkg2"
    assert main(["compile", str(conv_model), "-o", str(out2), "-q", "--no-measure"]) == 0
    e2 = json.loads((out2 / "report.json").read_text())["energy"]
    assert e2["method"] == "modeled" and e2["mj_per_inference"] == pytest.approx(ref["mj_per_inference"])


@pytest.mark.tvm
@pytest.mark.qemu
def test_arm_instruction_count(tmp_path, conv_model):
    from optc.backends.tvm import arm, qemu_plugin
    from optc.errors import ToolchainError

    try:
        arm.check_tools()
        qemu_plugin.ensure_plugin()
    except ToolchainError as err:
        pytest.skip(f"qemu insn plugin not available: {err}")
    from optc.cli import main

    out = tmp_path / "pkg.arm"
    assert main(["compile", str(conv_model), "-t", "arm", "-o", str(out), "-q"]) == 0
    r = json.loads((out / "report.json").read_text())
    ins = r["latency"]["instructions"]
    assert ins["method"] == "qemu TCG insn plugin, deterministic"
    assert ins["count"] > 2 * 8 * 64 * 27 / 4  # conv MACs / 4 NEON lanes: a floor
    assert r["energy"]["method"] == "modeled"
    # deterministic up to the runner's printed time
    x = np.load(out / "sample_inputs.npz")["x"]
    again = qemu_plugin.count_instructions(out / "model.so", [x], qemu_cpu="cortex-a72", bundle=out / "runner")
    assert abs(again["count"] - ins["count"]) <= 100


def test_modeled_integer_ai_optc_ops():
    # IntDense / IntConv2d (passes/quant/int_ops.py): int8 x int8 -> int32 MACs, int8 weights
    w = np.zeros((4, 16), np.int8)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(4, np.int32), "B"),
             numpy_helper.from_array(np.ones(4, np.int32), "M"), numpy_helper.from_array(np.ones(4, np.int32), "S")]
    nodes = [helper.make_node("IntDense", ["x", "W", "B", "M", "S"], ["y"], name="fc", domain="ai.optc")]
    m = make_onnx_model(nodes, inits, [2, 16], [2, 4], elem_type=TensorProto.UINT8, optc_ops=True, check=False)
    c = model_energy(m)["breakdown"]["counts"]
    assert c["macs"] == {"fp32": 0, "int8": 2 * 4 * 16, "binary": 0}
    assert c["weight_bytes"] >= 64  # int8 weights: one byte each
    assert c["requantized_outputs"] == 2 * 4  # as the QuantizeLinear its QDQ form folds in

    c = model_energy(make_int8_depthwise_model(5))["breakdown"]["counts"]
    assert c["macs"]["int8"] == 8 * 25 * 9


def test_integer_global_average_pool_costs_what_its_qdq_form_costs():
    """IntGlobalAveragePool (optc.ops registry cost) is charged as DQ -> GlobalAveragePool -> Q is:
    an int32 add per input element and a requantize per output."""
    sc = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 1, 1])
    qdq = helper.make_model(helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
         helper.make_node("GlobalAveragePool", ["xf"], ["g"]),
         helper.make_node("QuantizeLinear", ["g", "s", "z"], ["y"])], "g", [x], [y], sc),
        opset_imports=[helper.make_opsetid("", 17)])
    rq = [numpy_helper.from_array(np.array([1 << 30], np.int32), "m"),
          numpy_helper.from_array(np.array([35], np.int32), "sh")]
    integer = helper.make_model(helper.make_graph(
        [helper.make_node("IntGlobalAveragePool", ["x", "m", "sh"], ["y"], domain="ai.optc", out_min=0, out_max=255)],
        "g", [x], [y], rq), opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.optc", 1)])
    a, b = model_energy(qdq)["breakdown"], model_energy(integer)["breakdown"]
    assert a["counts"]["other_ops"] == b["counts"]["other_ops"] == {"fp32": 0, "int8": 200, "binary": 0}
    assert a["counts"]["requantized_outputs"] == b["counts"]["requantized_outputs"] == 8
    assert sum(b["compute_mj"].values()) == pytest.approx(sum(a["compute_mj"].values()))
    assert sum(b["compute_mj"].values()) == pytest.approx((200 * 0.1 + 8 * 3.2) * PJ)

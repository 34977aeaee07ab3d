"""``optc bench --profile`` (optc.profile, backends/tvm/kernel_profile.py), the target facts
behind its peak and behind prune's default ``multiple`` (backends/tvm/facts.py), and bench's
warning for a compressed package slower than the uncompressed model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import optc
from optc import api
from optc.cli import main
from optc.errors import UsageError
from optc.targets import Target, get_target

from .conftest import make_conv_model

pytestmark = pytest.mark.tvm

@pytest.fixture(scope="module")
def conv_package(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("profile")
    make_conv_model(tmp / "conv.onnx")
    out = tmp / "conv.optc"
    optc.compile(str(tmp / "conv.onnx"), "cpu", str(out), options=optc.CompileOptions.of(measure=False))
    return out


def _bench(pkg, **kw) -> dict:
    return api.bench(pkg, api.BenchOptions(threads=1, repeat=4, rounds=2, warmup=1, profile=True, **kw))


def test_profile_has_the_conv_kernel_and_onnxruntime_nodes(conv_package):
    prof = _bench(conv_package, top=3)["profile"]
    rows = prof["optc"]["rows"]
    conv = [r for r in rows if r["kind"] == "kernel" and "conv2d" in r["name"]]
    assert len(conv) == 1 and conv[0]["calls"] == 1
    # 8x8x8 outputs x 27 MACs x 2, plus the fused bias add and ReLU: counted in the TIR
    assert conv[0]["flops"] == 8 * 8 * 8 * (27 * 2 + 2)
    assert conv[0]["gflops"] > 0 and 0 < conv[0]["pct_of_peak"] < 100
    assert sum(r["share_pct"] for r in rows) == pytest.approx(100.0, abs=0.01)
    assert len(prof["optc"]["top"]) == 3 and prof["optc"]["top"] == rows[:3]
    assert prof["optc"]["hook_overhead_us_per_call"] > 0
    ort = prof["onnxruntime"]
    assert any(r["op"] == "Conv" for r in ort["rows"]) and len(ort["top"]) <= 3
    assert sum(r["share_pct"] for r in ort["rows"]) == pytest.approx(100.0, abs=0.01)
    assert all(r["calls"] == pytest.approx(1.0) for r in ort["rows"])  # warm-up runs are not counted
    [optc_conv] = [f for f in prof["optc"]["families"] if f["op"] == "Conv"]
    assert optc_conv["kernels"] == 1 and optc_conv["flops"] == conv[0]["flops"]
    conv_family = next(f for f in ort["families"] if f["op"] == "Conv")
    assert conv_family["flops"] == 28160 and conv_family["gflops"] > 0  # optc.analysis: the ONNX Conv's FLOPs
    assert prof["peak"]["gflops"] > 0 and prof["peak"]["threads"] == 1


def test_profile_cli_text_and_json(conv_package, capsys):
    assert main(["bench", str(conv_package), "--profile", "--top", "30", "--threads", "1", "--repeat", "4",
                 "--rounds", "2"]) == 0
    text = capsys.readouterr().out
    assert "optc kernels" in text and "fused_conv2d" in text and "onnxruntime nodes" in text
    assert main(["bench", str(conv_package), "--profile", "--json", "--threads", "1", "--repeat", "2",
                 "--rounds", "1", "--no-ort"]) == 0
    prof = json.loads(capsys.readouterr().out)["profile"]
    assert prof["optc"]["rows"] and "onnxruntime" not in prof and "--no-ort" in prof["onnxruntime_note"]


def test_profile_refuses_a_package_without_library(conv_package, tmp_path, capsys):
    pkg = tmp_path / "nolib.optc"
    shutil.copytree(conv_package, pkg)
    manifest = json.loads((pkg / "manifest.json").read_text())
    lib = manifest["files_by_role"].pop("library")
    manifest["files"].pop(lib)
    (pkg / lib).unlink()
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="compiled library"):
        _bench(pkg)
    assert main(["bench", str(pkg), "--profile"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert "compiled library" in err and "Traceback" not in err


def test_profile_refuses_an_arm_package(conv_package, tmp_path):
    pkg = tmp_path / "arm.optc"
    shutil.copytree(conv_package, pkg)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["target"] |= {"name": "arm", "backend": "tvm-arm"}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="cpu target"):
        _bench(pkg)


def _llvm(mcpu: str) -> Target:
    return Target("t", "tvm-cpu", "test", tvm={"kind": "llvm", "mcpu": mcpu})


def test_vector_width_from_cpu_features():
    """TVM 0.27's llvm_get_vector_width says 512 for every x86 CPU; the facts must not."""
    from optc.backends.tvm import facts

    assert facts.vector_bits(_llvm("haswell")) == 256
    assert facts.vector_bits(_llvm("znver3")) == 256
    assert facts.vector_bits(_llvm("skylake-avx512")) == 512
    assert facts.vector_bits(_llvm("x86-64")) == 128
    assert facts.fp32_lanes(get_target("arm")) == 4 and facts.fp32_lanes(get_target("arm-a76")) == 4
    assert facts.fp32_flops_per_cycle(_llvm("haswell")) == 32  # 8 lanes x FMA x 2 units
    assert facts.target_facts(get_target("gpu")) == {}
    assert facts.target_facts(_llvm("haswell"))["channel_multiple"] == 8


def _result(optc_ms: float, original_ms: float | None, other_ms: float | None = None) -> dict:
    res = {"optc": {"median_ms": optc_ms}}
    if original_ms is not None:
        res["baselines"] = {"original": {"median_ms": original_ms}}
    if other_ms is not None:
        res["compare_to"] = {"median_ms": other_ms, "package": "base.optc", "pipeline": "simplify"}
    return res


def test_warning_when_compressed_package_is_slower():
    manifest = {"pipeline": "simplify,prune<ratio=0.3;multiple=8>"}
    [warning] = api._compression_warnings(manifest, _result(2.0, 1.0))
    assert "slower than the uncompressed original model in onnxruntime" in warning and "prune" in warning
    assert "2.00x" in warning
    [warning] = api._compression_warnings(manifest, _result(2.0, None, 1.6))
    assert "slower than base.optc (pipeline simplify), timed in the same rounds" in warning and "1.25x" in warning
    [warning] = api._compression_warnings(manifest, _result(2.0, 1.0, 1.0))  # optc vs optc supersedes
    assert "base.optc" in warning
    assert api._compression_warnings(manifest, _result(2.0, 1.0, 3.0)) == []  # faster than the uncompressed build
    assert api._compression_warnings(manifest, _result(0.5, 1.0, 0.6)) == []  # faster: nothing to say
    assert api._compression_warnings(manifest, _result(2.0, None)) == []  # nothing to compare with
    assert api._compression_warnings({"pipeline": "simplify,fuse-bn"}, _result(2.0, 1.0, 1.0)) == []  # not compressed


def test_compare_to_times_the_other_package_in_the_same_rounds(conv_package, tmp_path):
    res = api.bench(conv_package, api.BenchOptions(threads=1, repeat=4, rounds=2, warmup=1, compare_to=conv_package))
    other = res["compare_to"]
    assert other["repeat"] == 4 and other["pipeline"] == "simplify,fold-constants,remove-identity,fuse-bn,batch-matmuls,dce"
    assert other["ratio_optc_over_this"] == pytest.approx(res["optc"]["median_ms"] / other["median_ms"])
    wrong = tmp_path / "other.optc"  # a package of another model (input shape): refused, by name
    shutil.copytree(conv_package, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [1, 3, 16, 16]
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="not the same model"):
        api.bench(conv_package, api.BenchOptions(threads=1, repeat=2, rounds=1, warmup=0, compare_to=wrong))


def test_a_session_that_cannot_profile_refuses_by_name():
    """``profile_kernels`` is part of the Session protocol (no ``getattr`` probe): the default
    refuses with a UsageError; the CPU session overrides it."""
    from optc.backends import SessionBase
    from optc.backends.tvm.backend import CpuSession
    from optc.profile import ProfileOptions, optc_profile

    class Simulated(SessionBase):
        def run(self, inputs):
            return inputs

    with pytest.raises(UsageError, match="cannot time its kernels"):
        optc_profile(Simulated(), [], ProfileOptions(), {})
    assert CpuSession.profile_kernels is not SessionBase.profile_kernels


def test_interleaved_blocks_start_settled_and_warm(monkeypatch):
    """Each timed block (optc's, then each onnxruntime baseline's) starts after a pause and one
    untimed call, so it never runs against the other runtime's still-spinning threads; the
    timed calls per runtime add up to ``repeat``."""
    import time

    from optc import api

    monkeypatch.setattr(api, "SETTLE_S", 0.01)
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def time(self, *args, **kw):
            warmup, repeat = (kw["warmup"], kw["repeat"]) if "warmup" in kw else args[-2:]
            calls.append((self.name, warmup, repeat, time.perf_counter()))
            return [0.001] * repeat

    optc_times, ort_times, _ = api._interleaved(Fake("optc"), [], {"ort": Fake("ort")}, (2, 12, 3), None, False)
    assert len(optc_times) == 12 and len(ort_times["ort"]) == 12
    timed = [c for c in calls if c[2] > 0]
    assert [c[0] for c in timed] == ["optc", "ort"] * 3 and all(c[1] == 1 for c in timed)
    assert all(b[3] - a[3] >= 0.01 for a, b in zip(timed, timed[1:]))


def test_integer_kernels_declare_their_operations(tmp_path):
    """TVM's FLOP counter cannot read optc's tensorized int8 kernels; they declare their
    arithmetic (2 per multiply-add), so the profile gives them a rate as well."""
    from optc.backends.tvm import kernel_profile

    from .backends.test_int8 import _int_model

    m, k, n = 6, 40, 24
    path = tmp_path / "dense.onnx"
    import onnx

    onnx.save(_int_model("IntDense", (m, k), "uint8", "uint8", seed=3, n=n), path)
    pkg = tmp_path / "dense.optc"
    optc.compile(str(path), "cpu", str(pkg), options=optc.CompileOptions.of(measure=False))
    manifest = json.loads((pkg / "manifest.json").read_text())
    flops = kernel_profile.kernel_flops(pkg, manifest)
    dense = {name: v for name, v in flops.items() if "int_dense" in name}
    assert list(dense.values()) == [2 * m * n * k], flops

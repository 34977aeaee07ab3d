"""The CUDA backend: a real sm_90 fatbin is built on a machine without a GPU (through optc's
libcuda stub), TVM's source-only fallback is refused, the report says what was not run; with a
GPU (``-m gpu``) the artifact runs, is verified against onnxruntime and timed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import optc
from optc.errors import ToolchainError
from optc.targets import get_target
from tests.conftest import MODELS

pytestmark = pytest.mark.tvm

DIGITS = MODELS / "digits_cnn.onnx"
SHAPES = {"input": (1, 1, 8, 8)}


def _cuda():
    from optc.backends.tvm import cuda

    return cuda


@pytest.fixture(scope="module")
def nvcc():
    path = _cuda().find_nvcc()
    if path is None:
        pytest.skip(f"nvcc not found; {_cuda().NVCC_FIX}")
    return path


@pytest.fixture(scope="module")
def digits_gpu_pkg(nvcc, tmp_path_factory) -> tuple[Path, dict]:
    pkg = tmp_path_factory.mktemp("cuda") / "digits.gpu"
    report = optc.compile(DIGITS, "gpu", pkg, input_shapes=SHAPES)
    return pkg, report


def test_gpu_targets_are_data():
    gpu = get_target("gpu")
    assert gpu.backend == "tvm-cuda" and gpu.latency == "measured-if-gpu"
    assert gpu.tvm["kind"] == "cuda" and gpu.tvm["arch"] == "sm_90"
    assert get_target("cuda") is gpu and get_target("gpu-sm90") is gpu
    assert get_target("gpu-sm80").tvm["arch"] == "sm_80"
    assert get_target("gpu-sm89").tvm["arch"] == "sm_89"
    # published fp32 (non-tensor) peaks: H100 SXM ~67 TFLOP/s, A100 ~19.5, L4 ~30.3
    assert gpu.peak.fp32_gflops == pytest.approx(67_000, rel=0.01)
    assert get_target("gpu-sm80").peak.fp32_gflops == pytest.approx(19_500, rel=0.01)
    assert get_target("gpu-sm89").peak.fp32_gflops == pytest.approx(30_300, rel=0.01)
    assert gpu.peak.mem_gbps == 3350.0


def test_missing_nvcc_is_a_toolchain_error_naming_the_fix(monkeypatch):
    cuda = _cuda()
    monkeypatch.setattr(cuda, "find_nvcc", lambda: None)
    with pytest.raises(ToolchainError, match="pip install .*nvidia-cuda-nvcc"):
        cuda.CudaBackend().check_environment(get_target("gpu"))


def test_digits_cnn_compiles_to_a_real_sm90_fatbin(digits_gpu_pkg):
    cuda = _cuda()
    pkg, report = digits_gpu_pkg
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["files_by_role"]["device_code"] == "cuda.json"
    entries = cuda.fatbin_entries((pkg / "model.so").read_bytes())
    cubins = [e for e in entries if e["kind"] == "elf" and e["arch"] == "sm_90"]
    assert cubins, entries
    # a CUDA ELF (e_machine 190) whose own flags say sm_90, not a source-only module
    assert all(e["elf"] and e["elf_machine"] == 190 and e["elf_sm"] == "sm_90" for e in cubins)
    assert sum(e["bytes"] for e in cubins) > 1000
    facts = json.loads((pkg / "cuda.json").read_text())
    assert facts["arch"] == "sm_90" and "sm_90 cubin" in facts["device_code"]
    assert "DLight" in facts["schedules"]
    assert report["size_bytes"]["library"] == (pkg / "model.so").stat().st_size


def test_library_loads_back_and_cuobjdump_agrees(digits_gpu_pkg, tmp_path):
    import tvm

    pkg, _ = digits_gpu_pkg
    lib = tvm.runtime.load_module(str(pkg / "model.so"))  # deserialises the CUDA module
    kinds = []
    stack = [lib]
    while stack:
        m = stack.pop()
        kinds.append(m.kind)
        stack.extend(m.imports)
    assert "cuda" in kinds, kinds
    tool = shutil.which("cuobjdump")
    if tool is None:
        return  # not in this CUDA install; the fatbin was parsed above
    data = (pkg / "model.so").read_bytes()
    entry = _cuda().fatbin_entries(data)[0]
    start = entry["offset"]
    size = 16 + int.from_bytes(data[start + 8:start + 16], "little")
    (tmp_path / "k.fatbin").write_bytes(data[start:start + size])
    out = subprocess.run([tool, "--list-elf", str(tmp_path / "k.fatbin")], capture_output=True, text=True)
    assert "sm_90" in out.stdout, out.stdout + out.stderr


def test_report_without_gpu_says_built_not_run(digits_gpu_pkg):
    if _cuda().gpu_present():
        pytest.skip("a GPU is present: the artifact was run and verified (see the gpu test)")
    pkg, report = digits_gpu_pkg
    assert report["verify"] == {"passed": None,
                                "skipped": "no GPU on this machine: artifact built (sm_90 fatbin), not run"}
    lat = report["latency"]
    assert lat["method"] == "modeled" and lat["note"].startswith("not measured: no GPU")
    assert "H100" in lat["source"] and lat["median_ms"] > 0
    assert 0 < sum(layer["ms"] for layer in lat["layers"]) < lat["median_ms"]  # + launch cost per layer
    # the onnxruntime reference outputs are kept for a later check on a GPU machine
    assert (pkg / "sample_outputs.npz").is_file()
    with pytest.raises(ToolchainError, match="no GPU on this machine"):
        optc.run(pkg)


def test_params_separate_for_gpu(nvcc, tmp_path):
    from tests.conftest import make_conv_model

    make_conv_model(tmp_path / "m.onnx")
    optc.compile(tmp_path / "m.onnx", "gpu-sm80", tmp_path / "pkg", options=optc.CompileOptions.of(params="separate"))
    assert (tmp_path / "pkg" / "params.bin").is_file()
    facts = json.loads((tmp_path / "pkg" / "cuda.json").read_text())
    assert facts["evidence"]["fatbin_entries"][0]["arch"] == "sm_80"


def test_fatbin_parser_finds_nothing_in_cuda_source():
    source_only = b"\x7fELF" + b"\0" * 64 + b'extern "C" __global__ void k(float* x) {}' * 10
    assert _cuda().fatbin_entries(source_only) == []


_FALLBACK_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["OPTC_CUDA_STUB"] = "off"
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        print("REAL-DRIVER")
        sys.exit(0)
    except OSError:
        pass
    from pathlib import Path
    from optc.errors import ToolchainError
    from optc.frontend import TensorSpec
    from optc.targets import get_target
    from optc.backends.tvm import cuda
    from tests.conftest import make_conv_model

    try:
        cuda.ensure_runtime()
        print("PREFLIGHT-PASSED")
    except ToolchainError as err:
        print("PREFLIGHT-REFUSED", err)
    # build anyway, bypassing the preflight: TVM emits its source-only fallback
    out = Path(sys.argv[1])
    exe, _ = cuda.lower_and_build(make_conv_model(), [TensorSpec("x", "float32", (1, 3, 8, 8))],
                                  get_target("gpu"), embed_params=True, nvcc=cuda.check_tools())
    exe.export_library(str(out))
    try:
        cuda.check_device_code(exe, out, "sm_90")
        print("DETECT-MISSED")
    except ToolchainError as err:
        print("DETECT-REFUSED", err)
""")


def test_source_only_fallback_is_refused(nvcc, tmp_path):
    """Without a loadable libcuda (stub off, no driver), TVM silently emits CUDA source only;
    optc refuses it both before the build and, if forced through, after it."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OPTC_CUDA_STUB="off", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, str(tmp_path / "fallback.so")],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-2000:]
    if "REAL-DRIVER" in out:
        pytest.skip("a real NVIDIA driver is installed: the no-driver fallback cannot be simulated")
    assert "PREFLIGHT-REFUSED" in out and "source-only fallback" in out, out
    assert "DETECT-REFUSED" in out and "no sm_90 machine code" in out, out
    assert _cuda().fatbin_entries((tmp_path / "fallback.so").read_bytes()) == []


@pytest.mark.gpu
def test_runs_verifies_and_times_on_a_gpu(nvcc, tmp_path):
    if not _cuda().gpu_present():
        pytest.skip("no CUDA GPU on this machine")
    x = {"input": np.load(MODELS / "digits_eval.npz")["input"][:1]}
    report = optc.compile(DIGITS, "gpu", tmp_path / "pkg", input_shapes=SHAPES, inputs=x)
    assert report["verify"]["passed"] is True, report["verify"]
    lat = report["latency"]
    assert lat["method"] == "measured" and "CUDA events" in lat["how"] and lat["median_ms"] > 0
    out = optc.run(tmp_path / "pkg", x)["logits"]
    from optc.verify import reference_outputs

    np.testing.assert_allclose(out, reference_outputs(DIGITS, x)[0], atol=1e-4, rtol=1e-3)

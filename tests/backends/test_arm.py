"""aarch64 path: cross-compile tiny ONNX models with TVM, run them under qemu-user, compare to ORT."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.qemu, pytest.mark.tvm]

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from onnx import TensorProto, helper  # noqa: E402

from optc.backends.tvm import arm  # noqa: E402
from optc.errors import ToolchainError  # noqa: E402
from tests.conftest import make_graph_model  # noqa: E402

if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
    pytest.skip("aarch64 cross compiler or qemu-aarch64 missing", allow_module_level=True)

ATOL = 1e-4


# ----------------------------------------------------------------------------- models
def _conv_model() -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(4,3x3,pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->5)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    gw = rng.standard_normal((5, 4)).astype(np.float32)
    gb = rng.standard_normal(5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1),
    ]
    return make_graph_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 5])], {"w": w, "b": b, "gw": gw, "gb": gb})


def _two_output_model() -> onnx.ModelProto:
    """a[2,6], b[2,6] -> (Relu(MatMul(a, W) + c), Sigmoid(a * b))."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    c = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Add", ["m", "c"], ["s"]),
        helper.make_node("Relu", ["s"], ["y0"]),
        helper.make_node("Mul", ["a", "b"], ["p"]),
        helper.make_node("Sigmoid", ["p"], ["y1"]),
    ]
    return make_graph_model(nodes, [("a", [2, 6]), ("b", [2, 6])], [("y0", [2, 3]), ("y1", [2, 6])], {"w": w, "c": c})


def _ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# ----------------------------------------------------------------------------- compile helpers
def _target(mcpu: str):
    import tvm

    return tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon"]}
    )


def _compile(
    model: onnx.ModelProto, shapes: dict, out_dir: Path, *, embed: bool, mcpu: str = "cortex-a72"
) -> tuple[Path, Path | None]:
    """Compile for aarch64; return (lib.so, params.bin or None when weights are embedded)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    weights = params.get("main", [])
    target = _target(mcpu)
    if embed and weights:
        # After detach_params the weights are main's trailing parameters.
        wvars = list(mod["main"].params[-len(weights) :])
        mod = relax.transform.BindParams("main", dict(zip(wvars, weights)))(mod)
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.get_default_pipeline(target)(mod)
        ex = tvm.compile(mod, target=target)
    lib = out_dir / "model.so"
    arm.export_aarch64(ex, lib)
    if embed or not weights:
        return lib, None
    pfile = out_dir / "params.bin"
    blob = tvm.runtime.save_param_dict({f"p{i:04d}": w for i, w in enumerate(weights)})
    pfile.write_bytes(bytes(blob))
    return lib, pfile


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    # Built once per session into the user cache (or $OPTC_CACHE_DIR); never into the repo.
    return arm.runtime_bundle()


# ----------------------------------------------------------------------------- tests
def test_bundle_contents(bundle: Path) -> None:
    import json

    for name in ("optc_runner", "libtvm_runtime.so", "libtvm_ffi.so", "bundle.json"):
        assert (bundle / name).is_file(), name
    meta = json.loads((bundle / "bundle.json").read_text())
    from importlib import metadata

    assert meta["apache-tvm"] == metadata.version("apache-tvm")
    assert meta["apache-tvm-ffi"] == metadata.version("apache-tvm-ffi")
    assert (bundle / "optc_runner").read_bytes()[:4] == b"\x7fELF"
    assert arm.runtime_bundle() == bundle  # cached


@pytest.mark.parametrize("embed", [True, False], ids=["embedded-params", "separate-params"])
def test_conv_model_matches_ort(bundle: Path, tmp_path: Path, embed: bool) -> None:
    model = _conv_model()
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    lib, params = _compile(model, {"x": [1, 3, 8, 8]}, tmp_path, embed=embed)
    assert (params is None) == embed
    outs, times = arm.run_qemu(lib, [x], params_path=params)
    (ref,) = _ort_run(model, {"x": x})
    assert times == []
    assert len(outs) == 1
    assert outs[0].shape == ref.shape and outs[0].dtype == np.float32
    np.testing.assert_allclose(outs[0], ref, atol=ATOL, rtol=0)


def test_model_without_kernels_exports_and_runs(bundle: Path, tmp_path: Path) -> None:
    """An Identity model compiles to VM code and no kernel: the module packing its imports
    must still be aarch64 (TVM took the triple from the host compiler: an x86 devc.o)."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x_info], [y_info])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lib, _ = _compile(model, {"x": [1, 4]}, tmp_path, embed=True)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    outs, _ = arm.run_qemu(lib, [x])
    np.testing.assert_array_equal(outs[0], x)


def test_two_outputs_and_timing(bundle: Path, tmp_path: Path) -> None:
    model = _two_output_model()
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 6)).astype(np.float32)
    b = rng.standard_normal((2, 6)).astype(np.float32)
    lib, params = _compile(model, {"a": [2, 6], "b": [2, 6]}, tmp_path, embed=False)
    assert params is not None
    outs, times = arm.run_qemu(lib, [a, b], params_path=params, warmup=1, repeat=3)
    refs = _ort_run(model, {"a": a, "b": b})
    assert len(outs) == 2
    for got, ref in zip(outs, refs):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    assert len(times) == 3 and all(t > 0 for t in times)


def _dtype_model() -> onnx.ModelProto:
    """One input and one output per dtype the runner's .npy reader/writer supports."""
    types = {
        "f16": TensorProto.FLOAT16, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
        "i32": TensorProto.INT32, "i64": TensorProto.INT64,
    }  # fmt: skip
    nodes, ins, outs = [], [], []
    for name, t in types.items():
        ins.append(helper.make_tensor_value_info(name, t, [2, 3]))
        outs.append(helper.make_tensor_value_info(f"o_{name}", t, [2, 3]))
        nodes.append(helper.make_node("Add", [name, name], [f"o_{name}"]))
    ins.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, [2, 3]))
    outs.append(helper.make_tensor_value_info("o_flag", TensorProto.BOOL, [2, 3]))
    nodes.append(helper.make_node("Not", ["flag"], ["o_flag"]))
    graph = helper.make_graph(nodes, "dtypes", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_dtypes_roundtrip(bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arrays = [
        rng.standard_normal((2, 3)).astype(np.float16),
        rng.integers(-50, 50, (2, 3)).astype(np.int8),
        rng.integers(0, 100, (2, 3)).astype(np.uint8),
        rng.integers(-1000, 1000, (2, 3)).astype(np.int32),
        rng.integers(-(2**40), 2**40, (2, 3)).astype(np.int64),
        rng.integers(0, 2, (2, 3)).astype(bool),
    ]
    shapes = {n: [2, 3] for n in ("f16", "i8", "u8", "i32", "i64", "flag")}
    lib, params = _compile(_dtype_model(), shapes, tmp_path, embed=True)
    outs, _ = arm.run_qemu(lib, arrays)
    expected = [a + a for a in arrays[:-1]] + [~arrays[-1]]
    assert len(outs) == len(expected)
    for got, ref in zip(outs, expected):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


def test_cortex_a76(bundle: Path, tmp_path: Path) -> None:
    model = _conv_model()
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    lib, params = _compile(model, {"x": [1, 3, 8, 8]}, tmp_path, embed=False, mcpu="cortex-a76")
    outs, _ = arm.run_qemu(lib, [x], params_path=params, qemu=arm.QemuRun(cpu="cortex-a76"))
    (ref,) = _ort_run(model, {"x": x})
    np.testing.assert_allclose(outs[0], ref, atol=ATOL, rtol=0)


def test_missing_lib_raises(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ToolchainError, match="not found"):
        arm.run_qemu(tmp_path / "nope.so", [np.zeros((1,), np.float32)])


def test_bad_lib_raises_with_runner_stderr(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"this is not an ELF file")
    with pytest.raises(ToolchainError, match="runner failed") as info:
        arm.run_qemu(bad, [np.zeros((1,), np.float32)])
    assert "optc_runner: error" in str(info.value)


def test_wrong_input_count_raises(bundle: Path, tmp_path: Path) -> None:
    model = _two_output_model()
    lib, params = _compile(model, {"a": [2, 6], "b": [2, 6]}, tmp_path, embed=False)
    with pytest.raises(ToolchainError, match="runner failed"):
        arm.run_qemu(lib, [np.zeros((2, 6), np.float32)], params_path=params)


def test_bundle_key_covers_the_shared_headers(tmp_path: Path, monkeypatch) -> None:
    """The programs include runner/optc_main.h: a change to it makes a new bundle, as a change
    to a program's source does (else a cached bundle built from the old header is reused)."""
    assert [p.name for p in arm._shared_headers()] == ["optc_main.h"]
    header = tmp_path / "optc_main.h"
    header.write_text("// one\n")
    monkeypatch.setattr(arm, "_shared_headers", lambda: (header,))
    key = arm._bundle_key("tvm", "ffi")
    header.write_text("// two\n")
    assert arm._bundle_key("tvm", "ffi") != key


def test_check_tools_missing(monkeypatch) -> None:
    monkeypatch.setattr(arm, "CROSS_CXX", "definitely-not-a-compiler-g++")
    with pytest.raises(ToolchainError, match="apt-get install g[+][+]-aarch64-linux-gnu"):
        arm.check_tools()


def test_module_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, optc.backends.tvm.arm; print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]

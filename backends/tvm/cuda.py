"""The TVM backend for NVIDIA GPUs (CUDA): a real fatbin, built on machines with or without a GPU.

Stages (the same as the CPU and ARM backends, see :class:`optc.backends.Backend`)
----------------------------------------------------------------------------------
* **legalize**: the shared ONNX import (:func:`lower.import_onnx`, weights as parameters), then
  ``DecomposeOpsForInference``.
* **lower**: TVM's default Relax CUDA pipeline (``tvm.relax.backend.cuda.get_default_pipeline``):
  LegalizeOps, FuseOps/FuseTIR, then DLight's rule-based GPU schedules (``dl.gpu.Matmul``,
  ``GEMV``, ``Reduction``, ``GeneralReduction``, ``Fallback``), memory planning, CUDA graph
  rewriting. No MetaSchedule tuning: tuning measures candidates on the GPU itself, so it is
  out of scope until builds run on a GPU machine.
* **build/export**: ``tvm.compile`` inside ``with target`` with ``TVM_CUDA_COMPILE_MODE=nvcc``
  (nvcc ``--fatbin -gencode arch=compute_XX,code=sm_XX``: machine code for exactly the
  target's architecture, no PTX), exported to ``model.so``. Then :func:`check_device_code`
  opens the exported library, finds the fatbin (magic ``0xBA55ED50``) and refuses the package
  unless it holds a CUDA ELF (cubin) for the target's ``sm_XX``. ``cuda.json`` beside the
  library records that evidence, the nvcc version and the flags.
* **run/measure**: with a GPU (``tvm.cuda(0).exist``) the Relax VM runs on ``cuda:0`` and is
  timed with CUDA events (TVM's ``time_evaluator``, whose timer for CUDA devices records
  ``cudaEvent``s). Without one the session says so (``runnable = False``, ``skip_reason``) and
  the compile flow records verification and measured latency as skipped.

Why a stub driver
-----------------
The apache-tvm 0.27 wheel keeps its CUDA runtime in ``libtvm_runtime_cuda.so``, linked against
``libcuda.so.1`` (the driver) and ``libcudart.so.13``. Without a driver that library does not
load, ``ffi.Module.create.cuda`` is never registered, and ``tvm.compile`` *silently* returns a
source-only fallback module: CUDA C text and no machine code, which cannot run anywhere. So,
when the real driver cannot be loaded, :func:`ensure_runtime` builds ``cuda_stub.c`` (every call
returns CUDA_ERROR_NO_DEVICE) with gcc into the cache (``$OPTC_CACHE_DIR/cuda-stub``, default
``~/.cache/optc``), loads it ``RTLD_GLOBAL`` under the soname ``libcuda.so.1`` and then loads
TVM's CUDA runtime. ``OPTC_CUDA_STUB=off`` disables the stub (the build is then refused before
any work). The stub is never loaded where a real driver loads.

Tools: nvcc (CUDA 13, to match the wheel's libcudart.so.13) on PATH, in ``$CUDA_HOME/bin``,
``/usr/local/cuda/bin``, or from PyPI (:data:`NVCC_FIX`); gcc for the stub.

INT8: QuantizeLinear/DequantizeLinear import into Relax as float round/clip, so QDQ models
compute in fp32 on the GPU too (TVM 0.27 has no integer rewrite); ``cuda.json`` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from optc.backends import BuildResult, SessionBase
from optc import tools
from optc.errors import ToolchainError
from optc.frontend import TensorSpec
from optc.targets import Target

from . import lower

LIBRARY = "model.so"
PARAMS = "params.bin"
DEVICE_CODE = "cuda.json"

# The apache-tvm 0.27 wheel's libtvm_runtime_cuda.so is linked against these sonames.
CUDART_SONAME = "libcudart.so.13"
DRIVER_SONAME = "libcuda.so.1"
NVIDIA_WHEEL_DIR = "cu13"  # site-packages/nvidia/cu13/{bin,lib} of the nvidia-* CUDA 13 wheels

NVCC_FIX = (
    'install the CUDA 13 compiler: pip install "nvidia-cuda-nvcc==13.0.88" '
    '"nvidia-cuda-runtime==13.0.96" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" '
    '"nvidia-cuda-cccl==13.0.85" (or the CUDA 13 toolkit in /usr/local/cuda), or put nvcc on PATH'
)
CUDART_FIX = 'pip install "nvidia-cuda-runtime==13.0.96" (or install the CUDA 13 toolkit)'

STUB_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", f"-Wl,-soname,{DRIVER_SONAME}")
FATBIN_MAGIC = 0xBA55ED50
EM_CUDA = 190
_FATBIN_KIND = {1: "ptx", 2: "elf"}
_FATBIN_COMPRESSED = 0x2000

_state: dict = {}  # process-wide: {"driver": "nvidia" | "stub"} once ensure_runtime succeeded


# ---------------------------------------------------------------------------------------------
# tools


def _nvidia_wheel_roots() -> list[Path]:
    """``site-packages/nvidia/cu13`` directories of installed nvidia-* wheels."""
    roots = []
    for entry in sys.path:
        d = Path(entry or ".") / "nvidia" / NVIDIA_WHEEL_DIR
        if d.is_dir() and d not in roots:
            roots.append(d)
    return roots


def find_nvcc() -> str | None:
    """Path of nvcc: PATH, $CUDA_HOME/$CUDA_PATH, /usr/local/cuda, then the PyPI nvcc wheel."""
    found = tools.which("nvcc")
    if found:
        return found
    candidates = [Path(os.environ[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    candidates += [root / "bin" / "nvcc" for root in _nvidia_wheel_roots()]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ToolchainError(f"nvcc at {nvcc} does not run ({err}); {NVCC_FIX}") from None
    m = re.search(r"release (\d+\.\d+)", out)
    if not m:
        raise ToolchainError(f"nvcc at {nvcc} printed no version; {NVCC_FIX}")
    return m.group(1)


def check_tools() -> str:
    """nvcc's path; ToolchainError naming the fix if it is missing or not CUDA 13."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise ToolchainError(f"nvcc (the CUDA compiler) was not found; {NVCC_FIX}")
    version = nvcc_version(nvcc)
    if int(version.split(".")[0]) < 12:
        raise ToolchainError(f"nvcc {version} at {nvcc} is too old for sm_90 code with TVM 0.27; {NVCC_FIX}")
    return nvcc


def _cache_root() -> Path:
    base = os.environ.get("OPTC_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "optc") / "cuda-stub"


def stub_source() -> Path:
    return Path(__file__).resolve().parent / "cuda_stub.c"


def build_stub() -> Path:
    """Compile the driver stub once per source/flags into the cache; return its path."""
    src = stub_source()
    if not src.is_file():
        raise ToolchainError(f"optc's CUDA driver stub source {src} is missing (broken install?)")
    key = hashlib.sha256(src.read_bytes() + repr(STUB_CFLAGS).encode()).hexdigest()[:12]
    dest = _cache_root() / key / DRIVER_SONAME
    if dest.is_file():
        return dest
    cc = tools.which("gcc") or tools.which("cc")
    if cc is None:
        raise ToolchainError("gcc is needed to build optc's CUDA driver stub on a machine without "
                             "an NVIDIA driver: apt-get install gcc")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = Path(tmp) / DRIVER_SONAME
        proc = subprocess.run([cc, *STUB_CFLAGS, "-o", str(out), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(f"building the CUDA driver stub failed: {proc.stderr.strip()[:400]}")
        os.replace(out, dest)  # atomic: concurrent builders each write a complete file
    return dest


# ---------------------------------------------------------------------------------------------
# runtime: driver (real or stub), libcudart, TVM's CUDA runtime


def _dlopen_global(name_or_path: str) -> str | None:
    """Load a shared library RTLD_GLOBAL; None on success, else the loader's message."""
    try:
        ctypes.CDLL(name_or_path, mode=ctypes.RTLD_GLOBAL)
        return None
    except OSError as err:
        return str(err)


def _load_cudart() -> None:
    if _dlopen_global(CUDART_SONAME) is None:
        return
    dirs = [Path(os.environ[v]) / sub for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)
            for sub in ("lib64", "lib")]
    dirs += [Path("/usr/local/cuda/lib64"), Path("/usr/local/cuda/lib")]
    dirs += [root / "lib" for root in _nvidia_wheel_roots()]
    for d in dirs:
        if (d / CUDART_SONAME).is_file() and _dlopen_global(str(d / CUDART_SONAME)) is None:
            return
    raise ToolchainError(f"{CUDART_SONAME} (the CUDA 13 runtime TVM's CUDA support is linked "
                         f"against) was not found; {CUDART_FIX}")


def _stub_allowed() -> bool:
    return os.environ.get("OPTC_CUDA_STUB", "auto").lower() not in ("0", "off", "no", "false")


def ensure_runtime() -> str:
    """Make TVM's CUDA runtime usable in this process; return "nvidia" (real driver) or "stub".

    Raises ToolchainError (before any build work) if TVM would fall back to source-only CUDA.
    """
    if "driver" in _state:
        return _state["driver"]
    _load_cudart()
    if _dlopen_global(DRIVER_SONAME) is None:
        driver = "nvidia"
    elif _stub_allowed():
        err = _dlopen_global(str(build_stub()))
        if err:
            raise ToolchainError(f"could not load optc's CUDA driver stub: {err}")
        driver = "stub"
    else:
        driver = None
    import tvm
    from tvm.base import _LOADED_LIBS

    problem = None
    if driver and "tvm_runtime_cuda" not in _LOADED_LIBS:
        # tvm loads its CUDA runtime at import and silently skips it if libcuda is missing;
        # load it now that a driver (real or stub) is there.
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
                mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as err:
            problem = " ".join(str(err).split())[:300]
    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        why = problem or ("no NVIDIA driver (libcuda.so.1) could be loaded and the stub is "
                          "disabled (OPTC_CUDA_STUB=off)" if driver is None else
                          "libtvm_runtime_cuda.so is not part of this TVM build")
        raise ToolchainError(
            f"TVM's CUDA runtime is not available ({why}): TVM would emit a source-only fallback "
            "module with no GPU machine code, which optc refuses. Unset OPTC_CUDA_STUB, or install "
            "the NVIDIA driver, and check apache-tvm==0.27.0.post1 is installed")
    _state["driver"] = driver
    return driver


def gpu_present() -> bool:
    """Whether a CUDA GPU is usable by TVM in this process."""
    try:
        ensure_runtime()
    except ToolchainError:
        return False
    import tvm

    return bool(tvm.cuda(0).exist)


@contextlib.contextmanager
def _nvcc_environment(nvcc: str):
    """TVM's nvcc callback runs plain ``nvcc`` in fatbin mode when TVM_CUDA_COMPILE_MODE=nvcc."""
    saved = {k: os.environ.get(k) for k in ("TVM_CUDA_COMPILE_MODE", "PATH")}
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    nvcc_dir = str(Path(nvcc).parent)
    if tools.on_path("nvcc") != os.path.abspath(nvcc):  # TVM runs plain `nvcc`
        os.environ["PATH"] = nvcc_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------
# legalize + lower + build


def target_arch(target: Target) -> str:
    arch = target.tvm.get("arch", "")
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise ToolchainError(f"target {target.name}: the TVM target needs an 'arch' like 'sm_90', not {arch!r}")
    return arch


def lower_and_build(model: onnx.ModelProto, inputs: list[TensorSpec], target: Target, *,
                    embed_params: bool, nvcc: str):
    """ONNX -> Relax -> CUDA pipeline (DLight) -> compiled executable; returns (exe, params)."""
    import tvm
    from tvm import relax

    mod, params = lower.import_onnx(model, inputs)
    if embed_params and params:
        weights = mod["main"].params[len(inputs):]
        mod = relax.transform.BindParams("main", dict(zip(weights, params)))(mod)
        params = []
    tgt = lower.tvm_target(target)
    try:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        with _nvcc_environment(nvcc), tgt:  # nvcc reads the arch from the current target
            mod = relax.backend.cuda.get_default_pipeline(tgt)(mod)
            executable = tvm.compile(mod, tgt)
    except Exception as err:
        msg = " ".join(str(err).split())[:600]
        raise ToolchainError(f"TVM CUDA build for target {target.name} failed: {msg}") from None
    return executable, params


# ---------------------------------------------------------------------------------------------
# device-code evidence


def fatbin_entries(data: bytes) -> list[dict]:
    """Every entry of every CUDA fatbin found in ``data`` (e.g. an exported model.so).

    Fatbin layout: a 16-byte header (magic 0xBA55ED50, u16 version, u16 header size, u64 size of
    the entries), then entries, each a header (u16 kind 1=PTX 2=ELF, u16, u32 header size, u64
    payload size, ..., u32 sm arch at offset 28, u64 flags at 40) and its payload.
    """
    entries = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    pos = data.find(magic)
    while pos >= 0:
        if pos + 16 <= len(data):
            _, version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
            end = pos + header_size + fat_size
            if version == 1 and header_size == 16 and end <= len(data):
                p = pos + header_size
                while p + 48 <= end:
                    kind, _, ehs, size = struct.unpack_from("<HHIQ", data, p)
                    arch = struct.unpack_from("<I", data, p + 28)[0]
                    flags = struct.unpack_from("<Q", data, p + 40)[0]
                    if ehs < 48 or p + ehs + size > end:
                        break
                    payload = data[p + ehs:p + ehs + size]
                    entry = {"offset": pos, "kind": _FATBIN_KIND.get(kind, str(kind)), "arch": f"sm_{arch}",
                             "bytes": size, "compressed": bool(flags & _FATBIN_COMPRESSED)}
                    if entry["kind"] == "elf" and not entry["compressed"]:
                        entry.update(_cubin_facts(payload))
                    entries.append(entry)
                    p += ehs + size
        pos = data.find(magic, pos + 4)
    return entries


def _cubin_facts(elf: bytes) -> dict:
    if len(elf) < 52 or elf[:4] != b"\x7fELF":
        return {"elf": False}
    machine = struct.unpack_from("<H", elf, 18)[0]
    flags = struct.unpack_from("<I", elf, 48)[0] if elf[4] == 2 else struct.unpack_from("<I", elf, 36)[0]
    # CUDA ELF ABI v2 (EI_OSABI 0x41, CUDA 12.8+) keeps the SM in bits 8..15 of e_flags.
    sm = (flags >> 8) & 0xFF if elf[7] == 0x41 else flags & 0xFF
    return {"elf": machine == EM_CUDA, "elf_machine": machine, "elf_sm": f"sm_{sm}"}


def _module_tree(mod) -> list[dict]:
    out = [{"kind": mod.kind, "runnable": bool(mod.is_runnable())}]
    for sub in mod.imports:
        out += _module_tree(sub)
    return out


def check_device_code(executable, library: Path, arch: str) -> dict:
    """Evidence that ``library`` holds GPU machine code for ``arch``; ToolchainError otherwise
    (the source-only fallback: CUDA C text in the library, no fatbin)."""
    modules = _module_tree(executable.mod) if executable is not None else []
    cuda_modules = [m for m in modules if m["kind"] == "cuda"]
    entries = fatbin_entries(library.read_bytes())
    cubins = [e for e in entries if e["kind"] == "elf" and e["arch"] == arch
              and (e["compressed"] or (e.get("elf") and e.get("elf_sm") == arch))]
    fallback = any(not m["runnable"] for m in cuda_modules)
    if not cubins or fallback:
        found = ", ".join(f"{e['kind']} {e['arch']}" for e in entries) or "no fatbin at all"
        raise ToolchainError(
            f"the CUDA build produced no {arch} machine code ({found}"
            f"{'; TVM returned its source-only CUDA fallback module' if fallback else ''}): the "
            "library could not run on any GPU. TVM needs a loadable libcuda.so.1 (optc's stub is "
            "used where no driver is installed; check OPTC_CUDA_STUB is not 'off'), "
            "TVM_CUDA_COMPILE_MODE=nvcc and nvcc; optc refuses to package it")
    return {"arch": arch, "fatbin_entries": entries, "cubin_bytes": sum(e["bytes"] for e in cubins),
            "module_tree": modules}


def _qdq_note(model: onnx.ModelProto) -> str | None:
    n = sum(1 for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear"))
    if not n:
        return None
    return (f"{n} QuantizeLinear/DequantizeLinear nodes compute in float: TVM 0.27 lowers them "
            "to round/clip and convolutions/matmuls stay fp32 (no int8 kernels, no int8 speed-up)")


# ---------------------------------------------------------------------------------------------
# sessions and the backend


class CudaSession(SessionBase):
    """A CUDA artifact in this process's TVM runtime (Relax VM on ``cuda:0``).

    Without a GPU the session is not runnable: ``runnable`` is False, ``skip_reason`` says why,
    and ``run``/``time`` raise ToolchainError. The compile flow then skips verification and
    records modeled latency.
    """

    def __init__(self, pkg_dir: Path, manifest: dict):
        self.arch = manifest["target"]["tvm"].get("arch", "?")
        self.runnable = gpu_present()
        self.skip_reason = None if self.runnable else \
            f"no GPU on this machine: artifact built ({self.arch} fatbin), not run"
        self.timing_how = None
        if not self.runnable:
            return
        import tvm
        from tvm.runtime.vm import VirtualMachine

        files = manifest["files_by_role"]
        self._dev = tvm.cuda(0)
        self._lib = tvm.runtime.load_module(str(pkg_dir / files["library"]))
        self._vm = VirtualMachine(self._lib, self._dev)
        self._main = self._vm["main"]
        self._tensor = tvm.runtime.tensor
        params = lower.load_params(pkg_dir / files["params"]) if "params" in files else []
        self._params = [self._tensor(p.numpy(), self._dev) for p in params]
        name = self._dev.device_name
        self.device = f"{name} (compute {self._dev.compute_version})"

    def report_latency(self, args: list[np.ndarray], ctx) -> dict:
        """Measured with CUDA events where a GPU is present; otherwise the modeled figure
        (roofline + launch cost), saying why it was not measured."""
        if self.runnable:
            return super().report_latency(args, ctx)
        return ctx.modeled() | {"note": f"not measured: {self.skip_reason}"}

    def _require(self):
        if not self.runnable:
            raise ToolchainError(f"cannot run this package: {self.skip_reason}")

    def _args(self, inputs):
        return [self._tensor(np.asarray(x, order="C"), self._dev) for x in inputs] + self._params

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._require()
        out = lower.flatten_outputs(self._main(*self._args(inputs)))  # .numpy() copies back
        self._dev.sync()
        return out

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int, number: int = 10) -> list[float]:
        """Seconds per call: ``repeat`` means of ``number`` calls each, timed with CUDA events
        (TVM time_evaluator on cuda:0) with inputs already on the GPU."""
        self._require()
        args = self._args(inputs)
        for _ in range(warmup):
            self._main(*args)
        self._dev.sync()
        if repeat <= 0:
            return []
        self._vm.set_input("main", *args)
        timer = self._vm.time_evaluator("invoke_stateful", self._dev, number=number, repeat=repeat)
        self.timing_how = (f"CUDA events (TVM time_evaluator on {self.device}): {warmup} warm-up "
                           f"calls, then {repeat} repeats of the mean of {number} calls; inputs "
                           "resident on the GPU (host-to-device copies excluded), VM dispatch and "
                           "kernel launches included")
        return list(timer("main").results)

    def time_wall(self, inputs: list[np.ndarray], repeat: int, number: int = 10) -> list[float]:
        """Seconds per call by host wall clock: ``repeat`` means of ``number`` back-to-back calls,
        each batch ended by a device synchronisation (inputs already on the GPU)."""
        import time

        self._require()
        args = self._args(inputs)
        self._main(*args)
        self._dev.sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                self._main(*args)
            self._dev.sync()
            times.append((time.perf_counter() - t0) / number)
        return times


class CudaBackend:
    name = "tvm-cuda"

    def supported_ops(self) -> set[str]:
        # DynamicQuantizeLSTM's converter is a CPU kernel: here expand-dynamic-lstm rewrites it
        return lower.supported_ops() - {"com.microsoft::DynamicQuantizeLSTM"}

    def target_facts(self, target: Target) -> dict:
        return {}  # GPU kernels do not pad channel counts to a SIMD width

    def check_environment(self, target: Target) -> None:
        target_arch(target)
        check_tools()
        ensure_runtime()

    def build(self, model: onnx.ModelProto, inputs: list[TensorSpec], target: Target,
              out_dir: Path, *, params: str, tuning=None, progress=None) -> BuildResult:
        """``tuning`` is not used: MetaSchedule tuning for CUDA is not implemented (no GPU
        to measure on)."""
        nvcc = check_tools()
        driver = ensure_runtime()
        arch = target_arch(target)
        executable, weights = lower_and_build(model, inputs, target, embed_params=(params == "embedded"),
                                              nvcc=nvcc)
        executable.export_library(str(out_dir / LIBRARY))
        evidence = check_device_code(executable, out_dir / LIBRARY, arch)
        files = {"library": LIBRARY, "device_code": DEVICE_CODE}
        if weights:
            lower.save_params(weights, out_dir / PARAMS)
            files["params"] = PARAMS
        notes = [n for n in [_qdq_note(model)] if n]
        facts = {
            "arch": arch,
            "device_code": f"fatbin with {arch} cubin ({evidence['cubin_bytes']} bytes), no PTX",
            "compiler": {"nvcc": nvcc, "version": nvcc_version(nvcc), "mode": "TVM_CUDA_COMPILE_MODE=nvcc",
                         "flags": f"--fatbin -O3 -gencode arch=compute_{arch[3:]},code={arch} "
                                  "--use_fast_math (TVM 0.27 defaults)"},
            "schedules": "TVM default Relax CUDA pipeline: DLight rules gpu.Matmul, GEMV, Reduction, "
                         "GeneralReduction, Fallback; untuned (no MetaSchedule: tuning needs a GPU)",
            "build_driver": "NVIDIA driver" if driver == "nvidia" else
                            "optc's libcuda stub (no NVIDIA driver on the build machine)",
            "evidence": evidence,
            "notes": notes,
        }
        (out_dir / DEVICE_CODE).write_text(json.dumps(facts, indent=2) + "\n")
        info = {"tvm_target": dict(target.tvm), "device_code": facts["device_code"]}
        return BuildResult(files, info)

    def load(self, pkg_dir: Path, manifest: dict) -> CudaSession:
        return CudaSession(pkg_dir, manifest)

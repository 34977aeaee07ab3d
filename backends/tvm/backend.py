"""The TVM backends for x86 CPU (run in-process) and 64-bit ARM (cross-compiled, run under
qemu-user with optc's C++ runner, which is also what runs the artifact on a real board)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx

from optc.backends import BuildResult, SessionBase
from optc.frontend import TensorSpec
from optc.targets import Target

from . import lower

LIBRARY = "model.so"
PARAMS = "params.bin"


class _TvmBackend:
    name = "tvm"

    def supported_ops(self) -> set[str]:
        return lower.supported_ops()

    def check_environment(self, target: Target) -> None:
        return None

    def target_facts(self, target: Target) -> dict:
        """What compile fills into pass parameters a pipeline leaves to the target
        (``facts.target_facts``: the fp32 SIMD lanes as ``channel_multiple``)."""
        from .facts import target_facts

        return target_facts(target)

    def _export(self, executable, path: Path) -> None:
        executable.export_library(str(path))

    def build(self, model: onnx.ModelProto, inputs: list[TensorSpec], target: Target,
              out_dir: Path, *, params: str, tuning=None, progress=None) -> BuildResult:
        """Build, export, and say how: ``info["schedules"]`` (which rule scheduled each
        function, which rules failed) and ``info["tuning"]`` (what came from a tuning
        database; its applied records are shipped in ``tuning/``)."""
        record: dict = {}
        executable, weights = lower.build(model, inputs, target, embed_params=(params == "embedded"),
                                          tuning=tuning, record=record)
        self._export(executable, out_dir / LIBRARY)
        files = {"library": LIBRARY}
        if weights:
            lower.save_params(weights, out_dir / PARAMS)
            files["params"] = PARAMS
        info = {"tvm_target": lower.resolved_target_dict(target)}
        if record.get("schedules"):  # CPU pipelines
            from .schedule import summarize_log

            info["schedules"] = summarize_log(record["schedules"])
        if record.get("tuning") is not None:
            info["tuning"] = record["tuning"].report(record.get("tuning_summary"), out_dir / "tuning")
        return BuildResult(files, info)


class CpuSession(SessionBase):
    """A compiled artifact loaded into this process's TVM runtime (Relax VM on the CPU)."""

    def __init__(self, pkg_dir: Path, manifest: dict):
        import tvm
        from tvm import relax

        files = manifest["files_by_role"]
        self._pkg, self._manifest = pkg_dir, manifest
        self._lib = tvm.runtime.load_module(str(pkg_dir / files["library"]))
        self._dev = tvm.cpu()
        self._vm = relax.VirtualMachine(self._lib, self._dev)
        self._main = self._vm["main"]
        self._params = lower.load_params(pkg_dir / files["params"]) if "params" in files else []
        self._tensor = tvm.runtime.tensor

    def _args(self, inputs):
        return [lower.host_tensor(x) for x in inputs] + self._params

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return lower.flatten_outputs(self._main(*self._args(inputs)))

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:
        """Seconds per :meth:`run`: numpy inputs in, numpy outputs out (input conversion, the
        VM call and the output copies), the same boundary as onnxruntime's ``run``."""
        return self._wall_clock_times(inputs, warmup, repeat)

    def profile_kernels(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> dict:
        """Time per called function (kernels and VM builtins) over ``repeat`` instrumented
        runs, with FLOPs per kernel from its TIR (``kernel_profile.profile_vm``)."""
        from tvm import relax

        from . import kernel_profile

        vm = relax.VirtualMachine(self._lib, self._dev)  # its own VM: the instrument stays off this one
        result = kernel_profile.profile_vm(vm, self._args(inputs), warmup, repeat)
        flops = kernel_profile.kernel_flops(self._pkg, self._manifest)
        return kernel_profile.with_flops(result, flops)


class CpuBackend(_TvmBackend):
    name = "tvm-cpu"
    measured_latency = "measured"

    def load(self, pkg_dir: Path, manifest: dict) -> CpuSession:
        return CpuSession(pkg_dir, manifest)


class ArmSession(SessionBase):
    """An aarch64 artifact run by optc's runner under ``qemu-aarch64 -cpu <core>``.

    Times are *emulated* wall-clock seconds: they prove the code runs, not how fast an ARM
    core would run it (see the modeled latency in report.json).
    """

    timing = "emulated (qemu-user wall time)"

    def __init__(self, pkg_dir: Path, manifest: dict):
        files = manifest["files_by_role"]
        self._lib = pkg_dir / files["library"]
        self._params = pkg_dir / files["params"] if "params" in files else None
        self._cpu = manifest["target"]["qemu_cpu"]
        self._bundle = pkg_dir / Path(files["runner"]).parent  # the runner the package ships

    def _qemu(self):
        from . import arm

        return arm.QemuRun(cpu=self._cpu, bundle=self._bundle)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from . import arm

        outputs, _ = arm.run_qemu(self._lib, inputs, params_path=self._params, qemu=self._qemu())
        return outputs

    def report_latency(self, args: list[np.ndarray], ctx) -> dict:
        """Modeled (qemu time is not ARM latency), with one emulated run beside it."""
        out = ctx.modeled()
        if ctx.measure:
            with ctx.progress.step(f"emulated run (qemu -cpu {self._cpu})"):
                times = self.time(args, warmup=0, repeat=1)
            out["emulated_ms"] = times[0] * 1e3
            out["emulated_note"] = "qemu-user wall time on this x86 host: proves the code runs, NOT ARM latency"
        return out

    def run_many(self, sets: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """All sets in one runner process under qemu (the runtime starts once)."""
        from . import arm

        outputs, _ = arm.run_qemu_sets(self._lib, sets, params_path=self._params, qemu=self._qemu())
        return outputs

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:
        from . import arm

        _, times = arm.run_qemu(self._lib, inputs, params_path=self._params, qemu=self._qemu(), warmup=warmup,
                                repeat=repeat)
        return times


class ArmBackend(_TvmBackend):
    name = "tvm-arm"

    def check_environment(self, target: Target) -> None:
        from . import arm

        arm.check_tools()

    def _export(self, executable, path: Path) -> None:
        from . import arm

        arm.export_aarch64(executable, path)

    def build(self, model, inputs, target, out_dir, *, params, tuning=None, progress=None):
        from . import arm

        result = super().build(model, inputs, target, out_dir, params=params, tuning=tuning)
        # Ship the runner and the aarch64 TVM runtime with the artifact: copy runner/ to a
        # board and run `./runner/optc_runner model.so ...` there (see README).
        bundle = arm.runtime_bundle()
        shutil.copytree(bundle, out_dir / "runner")
        result.files["runner"] = "runner/optc_runner"
        return result

    def load(self, pkg_dir: Path, manifest: dict) -> ArmSession:
        return ArmSession(pkg_dir, manifest)

"""Lowering backends. Each exposes the same stages (see :class:`Backend`); the targets table
(``optc.targets``) names the backend of every target. Backends are imported lazily, so
``import optc`` needs neither TVM nor any simulator, and backends never import each other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from optc.frontend import TensorSpec
from optc.targets import Target

# backend name -> "module:Class" (imported on first use)
BACKENDS: dict[str, str] = {
    "tvm-cpu": "optc.backends.tvm.backend:CpuBackend",
    "tvm-arm": "optc.backends.tvm.backend:ArmBackend",
    "tvm-cuda": "optc.backends.tvm.cuda:CudaBackend",
    "fpga": "optc.backends.fpga.backend:FpgaBackend",
}


@dataclass
class BuildResult:
    """What a backend wrote into the package directory."""

    files: dict[str, str]  # role ("library", "params", "runner", ...) -> relative path
    info: dict = field(default_factory=dict)  # backend facts for the manifest/report


class Session(Protocol):
    """A loaded artifact: run it, time it. Sessions derive from :class:`SessionBase`, which
    gives every attribute below a default."""

    runnable: bool  # False: built for hardware this machine lacks (``skip_reason`` says why)
    skip_reason: str | None
    timing: str  # what ``time`` measures: "measured", or "emulated (...)" / "C simulation"
    timing_how: str | None  # how the latency was taken, for reports (None: the default text)
    remote: object | None  # the TVM RPC remote it runs on (None: this machine)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...

    def run_many(self, sets: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """:meth:`run` on each input set (a backend may batch the calls)."""
        ...

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:
        """Seconds per call for ``repeat`` timed calls after ``warmup`` untimed ones."""
        ...

    def report_latency(self, args: list[np.ndarray], ctx) -> dict:
        """The report's ``latency`` section: measured, emulated, simulated or modeled - the
        session says which and how (``ctx``: :class:`optc.timing.LatencyContext`)."""
        ...

    def profile_kernels(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> dict:
        """Per-kernel times for ``optc bench --profile`` (CPU sessions; others refuse by name)."""
        ...


class SessionBase:
    """Defaults of the :class:`Session` protocol: runnable here, timed for real."""

    runnable = True
    skip_reason: str | None = None
    timing = "measured"
    timing_how: str | None = None
    remote = None  # the TVM RPC remote a session runs on (None: this machine)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_many(self, sets: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        return [self.run(inputs) for inputs in sets]

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:  # pragma: no cover
        raise NotImplementedError

    def _wall_clock_times(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:
        """Seconds per :meth:`run` by ``time.perf_counter``: ``repeat`` timed calls after
        ``warmup`` untimed ones (a session's :meth:`time` where it runs in this process)."""
        import time

        for _ in range(warmup):
            self.run(inputs)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.run(inputs)
            times.append(time.perf_counter() - t0)
        return times

    def report_latency(self, args: list[np.ndarray], ctx) -> dict:
        """The report's ``latency`` section (``ctx``: :class:`optc.timing.LatencyContext`).
        Default: measured here, wall clock around :meth:`time`."""
        from optc.targets import host_cores
        from optc.timing import REPEAT, WARMUP, not_measured, stats

        if not ctx.measure:
            return not_measured()
        with ctx.progress.step("measure latency"):
            times = self.time(args, warmup=WARMUP, repeat=REPEAT)
        how = self.timing_how or (f"in-process wall clock (time.perf_counter) from numpy inputs to numpy "
                                  f"outputs, {WARMUP} warm-up + {REPEAT} timed runs on this machine, "
                                  f"{host_cores()} cores")
        return {"method": "measured", "how": how, **stats(times)}

    def profile_kernels(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> dict:  # noqa: ARG002
        """Default: refused (UsageError); the CPU session times its kernels in process."""
        from optc.errors import UsageError

        raise UsageError("--profile: this package's session cannot time its kernels")


class Backend(Protocol):
    """The stages every backend provides."""

    name: str

    def check_environment(self, target: Target) -> None:
        """Raise ToolchainError early (before any expensive work) if a tool is missing."""

    def supported_ops(self) -> set[str]:
        """ONNX op types (default domain) this backend can lower."""

    def target_facts(self, target: Target) -> dict:
        """What passes may take from ``target`` (``optc.pipeline.Pass.target_params``), e.g.
        ``channel_multiple`` (fp32 SIMD lanes) for LLVM CPUs; ``{}`` where nothing applies."""

    def build(self, model: onnx.ModelProto, inputs: list[TensorSpec], target: Target,
              out_dir: Path, *, params: str, tuning=None, progress=None) -> BuildResult:
        """Lower + build + export the model into ``out_dir`` (legalize, lower, build, export).
        ``tuning``: the TVM backends' explicit MetaSchedule input (``tune.TuningRequest``;
        others ignore it); ``progress``: for sub-stage lines of long builds."""

    def load(self, pkg_dir: Path, manifest: dict) -> Session:
        """Load an exported artifact for running and timing."""


def get_backend(name: str, config: Any = None) -> Backend:
    """The backend registered as ``name``; ``config`` (backend-specific, e.g. an FpgaConfig)
    goes to its constructor (None: the backend's defaults)."""
    module, _, cls = BACKENDS[name].partition(":")
    backend_cls = getattr(importlib.import_module(module), cls)
    if config is None:
        return backend_cls()
    if not getattr(backend_cls, "takes_config", False):
        from optc.errors import UsageError

        raise UsageError(f"the {name} backend takes no backend configuration (got {type(config).__name__})")
    return backend_cls(config)

"""The report's ``energy`` section: which of the three methods gives the headline figure.

In order of preference (``energy.method`` says which one was used):

* **measured** (:mod:`.meters`), used only when the target's code runs and was timed on this
  machine and a meter for its TVM target kind is usable;
* **estimated from supplied power** (``--power-watts``): energy = W x latency (the measured
  median, or the modeled one);
* **modeled** (:mod:`.model`): always computed; the headline figure when nothing better is
  available and kept beside the others for comparison (``energy.modeled``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import UsageError
from ..progress import SILENT, Progress
from .meters import METERS, measure_loop, measured_section, supplied_power_section
from .model import model_energy, model_energy_from_summary

MEASURE_SECONDS = 1.0  # length of the measured loop (RAPL updates every ~1 ms)
IDLE_SECONDS = 0.25


@dataclass(frozen=True)
class ArtifactRun:
    """The compiled artifact, for what needs to run it: ``session`` and its input ``args`` run
    the measured loop (session None: not run here, e.g. a remote device), ``package`` (the
    package directory) and its ``manifest`` feed the backend's extra probes (:data:`PROBES`)."""

    session: object = None
    args: list | None = None
    package: Path | None = None
    manifest: dict | None = None


@dataclass(frozen=True)
class EnergyOptions:
    """``measure``: False for ``--no-measure``; ``power_watts``: ``--power-watts``, asks for
    the time-based estimate; ``meters``: meter factories by TVM target kind (None:
    :data:`~optc.energy.meters.METERS`)."""

    measure: bool = True
    power_watts: float | None = None
    meters: dict | None = None


def report_section(target, summary: dict, latency: dict, *, model: onnx.ModelProto | None = None,
                   artifact: ArtifactRun = ArtifactRun(), options: EnergyOptions = EnergyOptions(),
                   progress: Progress = SILENT) -> dict:
    """The report's ``energy`` section for a compiled artifact (see the module docstring).

    ``model`` is the optimized ONNX graph (for per-layer arithmetic types; without it every MAC
    counts as fp32), ``artifact`` runs the artifact for a measured loop (:class:`ArtifactRun`),
    ``options.power_watts`` asks for the time-based estimate. For targets run under qemu the
    deterministic executed-instruction count is added to ``latency`` as
    ``latency["instructions"]`` (see :mod:`optc.backends.tvm.qemu_plugin`), since that needs the
    same package and inputs.
    """
    measure, power_watts, meters = options.measure, options.power_watts, options.meters
    session, args, package, manifest = artifact.session, artifact.args, artifact.package, artifact.manifest
    if power_watts is not None and not (power_watts > 0 and math.isfinite(power_watts)):
        raise UsageError(f"--power-watts must be a positive number of watts, not {power_watts!r}")
    modeled = model_energy(model) if model is not None else model_energy_from_summary(summary)
    _probe_extras(target, latency, measure, package, manifest, args, progress)

    if power_watts is not None:
        est = supplied_power_section(power_watts, latency)
        if est is not None:
            return est | {"modeled": _brief(modeled)}
        modeled["notes"].append(f"--power-watts {power_watts:g} given but the report has no latency "
                                "figure (--no-measure): modeled instead")

    # Measure only where the artifact itself ran and was timed on this machine.
    lat_method = latency.get("method")
    kind = (getattr(target, "tvm", None) or {}).get("kind")
    factory = (meters if meters is not None else METERS).get(kind)
    if not measure or lat_method == "not measured":
        modeled["notes"].append("not measured: --no-measure")
        return modeled
    if lat_method != "measured" or session is None or args is None:
        modeled["notes"].append(f"not measured: the artifact for {getattr(target, 'name', '?')} does not "
                                f"run natively on this machine (latency {lat_method})")
        return modeled
    if factory is None:
        modeled["notes"].append(f"not measured: no energy meter for TVM target kind {kind!r}")
        return modeled
    meter = factory()
    why = meter.unavailable()
    if why is not None:
        modeled["notes"].append(f"not measured: {why}")
        return modeled
    per_call = max(1e-6, float(latency.get("median_ms", 1.0)) * 1e-3)
    n = int(min(100_000, max(20, math.ceil(MEASURE_SECONDS / per_call))))
    import inspect

    # one call per repeat (a GPU session's timer would otherwise batch `number` calls per repeat)
    per_repeat = {"number": 1} if "number" in inspect.signature(session.time).parameters else {}
    with progress.step(f"measure energy ({meter.name}, {n} inferences)"):
        session.time(args, warmup=3, repeat=0)
        m = measure_loop(meter, lambda k: session.time(args, warmup=0, repeat=k, **per_repeat), n, IDLE_SECONDS)
    return measured_section(meter, m) | {"modeled": _brief(modeled)}


def _brief(modeled: dict) -> dict:
    keys = ("method", "source", "mj_per_inference", "mj_per_inference_lower")
    return {k: modeled[k] for k in keys if k in modeled}


# Extra deterministic measurements by backend, imported lazily ("module:function"): the function
# gets (package_dir, manifest, args, latency) and adds to ``latency``.
PROBES: dict[str, str] = {
    "tvm-arm": "optc.backends.tvm.qemu_plugin:annotate_latency",
}


def _probe_extras(target, latency, measure, package, manifest, args, progress) -> None:
    spec = PROBES.get(getattr(target, "backend", ""))
    if not spec or not measure or package is None or manifest is None or args is None:
        return
    import importlib

    mod, func = spec.split(":")
    with progress.step("count executed instructions (qemu insn plugin)"):
        getattr(importlib.import_module(mod), func)(Path(package), manifest, args, latency)

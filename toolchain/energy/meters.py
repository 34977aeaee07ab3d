"""Energy measured by hardware counters around a timed loop of inferences (RAPL for this host's
CPU, NVML for NVIDIA GPUs), or estimated from a power figure the user supplies; each method
yields the report's ``energy`` section for its figure.

* **measured**: RAPL (``/sys/class/powercap/intel-rapl:*/energy_uj``, x86 hosts that expose it;
  counters wrap at ``max_energy_range_uj``) for code that runs on this host's CPU, NVML
  (``nvmlDeviceGetTotalEnergyConsumption``, else power samples integrated over the loop) for
  NVIDIA GPUs. Which meter applies to a target is table data (:data:`METERS`, keyed by the TVM
  target kind).
* **estimated from supplied power**: ``power_watts`` x latency (:func:`supplied_power_section`).

W x ms = mJ.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class RaplZone:
    path: Path
    name: str  # e.g. package-0, core, dram, psys
    max_range_uj: int
    top_level: bool

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.name})"


def rapl_zones(root: Path | str = POWERCAP_ROOT) -> list[RaplZone]:
    """RAPL zones under a powercap sysfs root (``intel-rapl:N`` and sub-zones ``intel-rapl:N:M``).
    Zones whose counter cannot be read (e.g. not root) are left out."""
    zones = []
    for d in sorted(Path(root).glob("intel-rapl:*")):
        try:
            name = (d / "name").read_text().strip()
            rng = int((d / "max_energy_range_uj").read_text().strip())
            int((d / "energy_uj").read_text().strip())
        except (OSError, ValueError):
            continue
        zones.append(RaplZone(d, name, rng, d.name.count(":") == 1))
    return zones


def rapl_delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Energy between two readings of one counter; it wraps to 0 after ``max_range_uj``."""
    return after - before if after >= before else after + max_range_uj - before


class RaplMeter:
    """Package (+ DRAM where listed separately) energy from the Linux powercap RAPL counters.

    The counters cover the whole socket: the figure includes idle power and whatever else runs
    on the machine during the loop (an idle reading before the loop is reported beside it).
    Loops are kept far shorter than the counters' wrap time, so at most one wrap occurs.
    """

    name = "RAPL"

    def __init__(self, root: Path | str = POWERCAP_ROOT):
        self.root = Path(root)
        self.zones = rapl_zones(self.root)

    @property
    def source(self) -> str:
        return (f"Linux powercap RAPL energy counters ({self.root}/intel-rapl:*/energy_uj): "
                + ", ".join(z.label for z in self.zones))

    def unavailable(self) -> str | None:
        if self.zones:
            return None
        if any(self.root.glob("intel-rapl:*")):
            return f"RAPL zones under {self.root} are not readable (energy_uj is root-only on current kernels)"
        return f"no RAPL powercap zones under {self.root} (not an Intel/AMD host exposing RAPL, or a VM)"

    def _read(self) -> dict[str, int]:
        return {str(z.path): int((z.path / "energy_uj").read_text().strip()) for z in self.zones}

    def start(self):
        return self._read()

    def stop(self, token) -> dict[str, float]:
        after = self._read()
        joules: dict[str, float] = {}
        total = 0.0
        for z in self.zones:
            j = rapl_delta_uj(token[str(z.path)], after[str(z.path)], z.max_range_uj) * 1e-6
            joules[z.label] = j
            # Sum packages, plus DRAM zones (not part of the package domain); psys and core/uncore
            # sub-zones overlap those and are shown only.
            if (z.top_level and z.name.startswith("package")) or z.name == "dram":
                total += j
        if not any((z.top_level and z.name.startswith("package")) or z.name == "dram" for z in self.zones):
            total = sum(j for z, j in zip(self.zones, joules.values()) if z.top_level)
        joules["total"] = total
        return joules


class NvmlMeter:
    """GPU board energy from NVML: the total-energy counter (Volta and newer), else power samples
    (``nvmlDeviceGetPowerUsage``, mW) every few ms integrated over the loop."""

    name = "NVML"

    def __init__(self, index: int | None = None, sample_s: float = 0.005):
        self.index = index if index is not None else _nvml_index()
        self.sample_s = sample_s
        self._nvml = None
        self._handle = None
        self._why = None
        self.mode = None
        try:
            import pynvml  # provided by nvidia-ml-py

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self._nvml = pynvml
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self.mode = "energy counter"
            except Exception:
                pynvml.nvmlDeviceGetPowerUsage(self._handle)
                self.mode = "power sampling"
        except ImportError:
            self._why = "pynvml (pip install nvidia-ml-py) is not installed"
        except Exception as err:  # no driver, no device
            self._why = f"NVML not usable: {' '.join(str(err).split())[:200]}"

    @property
    def source(self) -> str:
        name = ""
        if self._nvml is not None:
            try:
                name = self._nvml.nvmlDeviceGetName(self._handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception:
                name = ""
        how = ("nvmlDeviceGetTotalEnergyConsumption (mJ counter)" if self.mode == "energy counter"
               else f"nvmlDeviceGetPowerUsage sampled every {self.sample_s * 1e3:g} ms, integrated")
        return f"NVML, GPU {self.index}{' ' + name if name else ''}: {how}; whole board, includes idle power"

    def unavailable(self) -> str | None:
        return self._why

    def start(self):
        if self.mode == "energy counter":
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.perf_counter(), self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3))
                stop.wait(self.sample_s)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        return (th, stop, samples)

    def stop(self, token) -> dict[str, float]:
        if self.mode == "energy counter":
            j = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - token) * 1e-3
            return {"gpu": j, "total": j}
        th, stop, samples = token
        samples.append((time.perf_counter(), self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3))
        stop.set()
        th.join()
        j = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))
        return {"gpu": j, "total": j, "samples": len(samples)}


def _nvml_index() -> int:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(vis) if vis.isdigit() else 0


# Meters by TVM target kind, for targets whose code runs on this machine ("measured" latency).
METERS: dict[str, Callable[[], Any]] = {
    "llvm": RaplMeter,
    "cuda": NvmlMeter,
}


@dataclass
class Measurement:
    joules: dict[str, float]
    seconds: float
    iterations: int
    idle_watts: float | None = None
    extra: dict = field(default_factory=dict)


def measure_loop(meter, run: Callable[[int], Any], iterations: int, idle_seconds: float = 0.0) -> Measurement:
    """Energy of ``run(iterations)`` read from ``meter`` before and after; optionally an idle
    reading of ``idle_seconds`` first (the meter covers the whole package/board)."""
    idle_w = None
    if idle_seconds > 0:
        tok = meter.start()
        t0 = time.perf_counter()
        time.sleep(idle_seconds)
        j = meter.stop(tok)["total"]
        idle_w = j / (time.perf_counter() - t0)
    tok = meter.start()
    t0 = time.perf_counter()
    run(iterations)
    seconds = time.perf_counter() - t0
    joules = meter.stop(tok)
    return Measurement(joules, seconds, iterations, idle_w)


def measured_section(meter, m: Measurement) -> dict:
    total = m.joules["total"]
    per = total / m.iterations * 1e3
    out = {
        "method": "measured",
        "source": meter.source,
        "mj_per_inference": per,
        "how": f"counter read before and after {m.iterations} back-to-back inferences "
               f"({m.seconds:.3f} s, average {total / m.seconds:.2f} W)",
        "breakdown": {k: v / m.iterations * 1e3 for k, v in m.joules.items()
                      if k not in ("total", "samples")},
    }
    if m.idle_watts is not None:
        above = max(0.0, total - m.idle_watts * m.seconds)
        out["idle_watts"] = m.idle_watts
        out["mj_per_inference_above_idle"] = above / m.iterations * 1e3
    return out


def supplied_power_section(power_watts: float, latency: dict) -> dict | None:
    """Energy = supplied power x latency median (measured or modeled); None without a median."""
    if "median_ms" not in latency:
        return None
    ms = float(latency["median_ms"])
    lat_method = latency.get("method", "?")
    return {
        "method": "estimated from supplied power",
        "source": f"user-supplied power {power_watts:g} W x {lat_method} latency median {ms:.4g} ms",
        "mj_per_inference": power_watts * ms,
        "breakdown": {"power_watts": power_watts, "latency_ms": ms, "latency_method": lat_method},
        **({"note": "modeled latency is a lower bound (see latency.how), so this energy is one too"}
           if lat_method == "modeled" else {}),
    }

"""Targets are data: one table maps a target name to its backend, TVM target, how it is run
and how its latency is obtained. Code dispatches through this table, never on target names.

ARM peak figures are published core/board specifications, used only for *modeled* latency
(a roofline lower bound); they are labelled as such wherever they appear.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from .errors import UsageError


@dataclass(frozen=True)
class Peak:
    """Published peak figures of a device, for a roofline latency model."""

    clock_ghz: float
    fp32_flops_per_cycle: int  # per core
    cores: int
    mem_gbps: float  # sustained DRAM bandwidth
    source: str

    @property
    def fp32_gflops(self) -> float:
        return self.clock_ghz * self.fp32_flops_per_cycle * self.cores


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # key of optc.backends.BACKENDS
    description: str
    tvm: dict = field(default_factory=dict)  # TVM target dict; "mcpu": "host" means detect
    qemu_cpu: str | None = None  # for targets executed under qemu-user
    latency: str = "measured"  # "measured" on this machine, or "modeled"
    peak: Peak | None = None
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = {"name": self.name, "backend": self.backend, "tvm": self.tvm, "latency": self.latency}
        if self.qemu_cpu:
            d["qemu_cpu"] = self.qemu_cpu
        if self.peak:
            d["peak"] = self.peak.__dict__ | {"fp32_gflops": self.peak.fp32_gflops}
        return d


def _arm(name, mcpu, mattr, desc, peak, aliases=()):
    return Target(
        name=name,
        backend="tvm-arm",
        description=desc,
        tvm={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": list(mattr),
             "num-cores": peak.cores},
        qemu_cpu=mcpu,
        latency="modeled",
        peak=peak,
        aliases=aliases,
    )


_A53 = Peak(1.2, 4, 4, 2.0, "Raspberry Pi 3B: 4x Cortex-A53 @1.2 GHz; A53 NEON 1x64-bit FMA/cycle = 4 fp32 FLOP/cycle; ~2 GB/s sustained LPDDR2")
_A72 = Peak(1.5, 8, 4, 4.0, "Raspberry Pi 4B: 4x Cortex-A72 @1.5 GHz; A72 2x64-bit FMA/cycle = 8 fp32 FLOP/cycle; ~4 GB/s sustained LPDDR4")
_A76 = Peak(2.4, 16, 4, 10.0, "Raspberry Pi 5: 4x Cortex-A76 @2.4 GHz; A76 2x128-bit FMA/cycle = 16 fp32 FLOP/cycle; ~10 GB/s sustained LPDDR4X")
_N1 = Peak(2.5, 16, 4, 20.0, "AWS Graviton2 (4 vCPU slice): Neoverse-N1 @2.5 GHz; 2x128-bit FMA/cycle = 16 fp32 FLOP/cycle; ~20 GB/s sustained DDR4 share")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            name="cpu",
            backend="tvm-cpu",
            description="this machine's x86-64 CPU (LLVM, mcpu detected), run and timed in-process",
            tvm={"kind": "llvm", "mcpu": "host", "num-cores": "host"},
            aliases=("x86", "host"),
        ),
        _arm("arm", "cortex-a72", ["+neon"], "64-bit ARM, default core Cortex-A72 (Raspberry Pi 4 class)", _A72),
        _arm("arm-a53", "cortex-a53", ["+neon"], "Cortex-A53 (Raspberry Pi 3, many low-end boards)", _A53),
        _arm("arm-a72", "cortex-a72", ["+neon"], "Cortex-A72 (Raspberry Pi 4)", _A72),
        _arm("arm-a76", "cortex-a76", ["+neon", "+dotprod", "+fullfp16"], "Cortex-A76 (Raspberry Pi 5, phones), dotprod", _A76),
        _arm("arm-n1", "neoverse-n1", ["+neon", "+dotprod", "+fullfp16"], "Neoverse-N1 (AWS Graviton2, Ampere Altra), dotprod", _N1),
    ]
}


def get_target(name: str) -> Target:
    """The target called ``name`` (or one of its aliases); unknown names list the candidates."""
    for t in TARGETS.values():
        if name == t.name or name in t.aliases:
            return t
    names = list(TARGETS) + [a for t in TARGETS.values() for a in t.aliases]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UsageError(f"unknown target {name!r}{hint}; targets: {', '.join(TARGETS)}")


def host_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1

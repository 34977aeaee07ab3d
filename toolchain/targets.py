"""Targets are data: one table maps a target name to its backend, TVM target, how it is run
and how its latency is obtained. Code dispatches through this table, never on target names.

ARM and GPU peak figures are published core/board/datasheet specifications, used only for
*modeled* latency (a roofline lower bound and, for ARM, an executed-instruction lower bound: see
:mod:`optc.latency_model`); they are labelled as such wherever they appear.
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
    launch_us: float = 0.0  # fixed cost per layer (kernel launch on GPUs), added to the roofline
    # Per-core figures for optc.latency_model (0: not known for this device). issue_width bounds
    # the instructions per cycle (an executed-instruction count / (issue_width x clock) is a lower
    # bound on time); the MAC rates are what optc's integer kernels can reach at best
    # (backends/tvm/int8.py): int8_dot with the dot-product instruction (targets whose mattr has
    # +dotprod), int32 for the widening multiply-accumulate fallback (no dot product; depthwise
    # layers everywhere); int8_widening: IntConv2d/IntDense on AArch64 cores without the dot
    # product (int8.py "smull": SMULL int8 -> int16 + SADALP into int32; 0: the int32 rate);
    # binary_ops: 1-bit AND/XOR + popcount operations (bitserial kernels).
    issue_width: int = 0
    int32_macs_per_cycle: float = 0.0
    int8_dot_macs_per_cycle: float = 0.0
    int8_widening_macs_per_cycle: float = 0.0
    binary_ops_per_cycle: float = 0.0
    core_source: str = ""

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
    latency: str = "measured"  # "measured" on this machine, "modeled", "measured-if-gpu", or "simulated"
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


_A53_CORE_SOURCE = (
    "Cortex-A53 TRM: in-order, dual issue (<= 2 instructions/cycle); 64-bit NEON datapath: a widening int8 "
    "multiply-accumulate (SMLAL, 4 x int32) every 2 cycles = 2 MACs/cycle, no dot product (ARMv8.0); optc's "
    "int8 conv/dense kernels (SMULL 8B -> 8 x int16, also a 128-bit result, + SADALP): 8 MACs every 2 cycles "
    "= 4 MACs/cycle by the same datapath reasoning (not checked against an A53 timing table; an upper bound "
    "keeps the roofline a lower bound); popcount: one 64-bit CNT + accumulate per cycle at best")
_A72_CORE_SOURCE = (
    "Cortex-A72 Software Optimization Guide (UAN 0016A): 3-wide decode (<= 3 instructions/cycle); ASIMD "
    "integer multiply only on pipe F0: one SMLAL/SMLAL2 (4 x int32 widening multiply-accumulate) per cycle "
    "= 4 MACs/cycle (int32 kernels: depthwise, ConvInteger); ARMv8.0 has no SDOT: optc's int8 conv/dense "
    "kernels use SMULL 8B (8 int8 x int8 -> int16 products, F0, 1/cycle) + SADALP (int16 pairs into int32, "
    "F1, 1/cycle; pipes as in LLVM's AArch64SchedA57.td, which LLVM also uses for the A72) = 8 MACs/cycle "
    "at best; popcount: one 128-bit CNT + accumulate per cycle at best")
_A53 = Peak(1.2, 4, 4, 2.0, "Raspberry Pi 3B: 4x Cortex-A53 @1.2 GHz; A53 NEON 1x64-bit FMA/cycle = 4 fp32 FLOP/cycle; ~2 GB/s sustained LPDDR2",
            issue_width=2, int32_macs_per_cycle=2, int8_widening_macs_per_cycle=4, binary_ops_per_cycle=64,
            core_source=_A53_CORE_SOURCE)
_A72 = Peak(1.5, 8, 4, 4.0, "Raspberry Pi 4B: 4x Cortex-A72 @1.5 GHz; A72 2x64-bit FMA/cycle = 8 fp32 FLOP/cycle; ~4 GB/s sustained LPDDR4",
            issue_width=3, int32_macs_per_cycle=4, int8_widening_macs_per_cycle=8, binary_ops_per_cycle=128,
            core_source=_A72_CORE_SOURCE)
# The Neoverse N1 is built on the Cortex-A76 core: the same decode width, ASIMD pipes and so the
# same per-core rates (only clock, cores and memory differ).
_A76_CORE_RATES = dict(issue_width=4, int32_macs_per_cycle=4, int8_dot_macs_per_cycle=32, binary_ops_per_cycle=256)
_A76_CORE_SOURCE = ("Software Optimization Guide: 4-wide decode (<= 4 instructions/cycle); two 128-bit "
                    "ASIMD pipes: 2 SDOT/cycle x 16 int8 MACs = 32 MACs/cycle (4x the fp32 FMA lanes); "
                    "widening multiply-accumulate (SMLAL, depthwise kernels) on one pipe = 4 MACs/cycle; "
                    "popcount: 2 x 128-bit CNT + accumulate per cycle at best")
_A76 = Peak(2.4, 16, 4, 10.0, "Raspberry Pi 5: 4x Cortex-A76 @2.4 GHz; A76 2x128-bit FMA/cycle = 16 fp32 FLOP/cycle; ~10 GB/s sustained LPDDR4X",
            **_A76_CORE_RATES, core_source=f"Cortex-A76 {_A76_CORE_SOURCE}")
_N1 = Peak(2.5, 16, 4, 20.0, "AWS Graviton2 (4 vCPU slice): Neoverse-N1 @2.5 GHz; 2x128-bit FMA/cycle = 16 fp32 FLOP/cycle; ~20 GB/s sustained DDR4 share",
           **_A76_CORE_RATES, core_source=f"Neoverse N1 {_A76_CORE_SOURCE}")

# GPU peaks: "cores" are streaming multiprocessors (SMs), fp32_flops_per_cycle is per SM
# (FP32 lanes x 2 for FMA, non-tensor-core), clock is the boost clock; mem_gbps is the
# datasheet memory bandwidth. Modeled latency from these ignores kernel-launch overhead
# (a few microseconds per kernel), which dominates small models on a GPU.
_H100 = Peak(1.98, 256, 132, 3350.0, "NVIDIA H100 SXM5: 132 SMs x 128 FP32 lanes @1.98 GHz boost = 67 TFLOP/s fp32 (non-tensor), 3.35 TB/s HBM3 (NVIDIA H100 Tensor Core GPU datasheet; H100 architecture whitepaper)", launch_us=4.0)
_A100 = Peak(1.41, 128, 108, 2039.0, "NVIDIA A100 SXM4 80GB: 108 SMs x 64 FP32 lanes @1.41 GHz boost = 19.5 TFLOP/s fp32 (non-tensor), 2.04 TB/s HBM2e (1.56 TB/s on the 40GB part) (NVIDIA A100 Tensor Core GPU datasheet; Ampere GA100 whitepaper)", launch_us=4.0)
_L4 = Peak(2.04, 256, 58, 300.0, "NVIDIA L4 (Ada, sm_89): 58 SMs x 128 FP32 lanes @2.04 GHz boost = 30.3 TFLOP/s fp32, 300 GB/s GDDR6 (NVIDIA L4 Tensor Core GPU datasheet; Ada Lovelace architecture whitepaper)", launch_us=4.0)


def _gpu(name, arch, desc, peak, l2_bytes, aliases=()):
    return Target(
        name=name,
        backend="tvm-cuda",
        description=desc,
        tvm={"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_num_threads": 1024,
             "thread_warp_size": 32, "max_shared_memory_per_block": 49152,
             "registers_per_block": 65536, "l2_cache_size_bytes": l2_bytes},
        # run, verified and timed (CUDA events) when this machine has a GPU; else built only
        # (a real fatbin) and the latency is modeled from the published peak
        latency="measured-if-gpu",
        peak=peak,
        aliases=aliases,
    )


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
        _gpu("gpu", "sm_90", "NVIDIA Hopper GPU (H100/H200, sm_90), CUDA via TVM + nvcc; run and timed only where a GPU is present", _H100, 52428800, aliases=("cuda", "gpu-sm90", "h100")),
        _gpu("gpu-sm80", "sm_80", "NVIDIA Ampere A100 (sm_80), CUDA via TVM + nvcc", _A100, 41943040, aliases=("a100",)),
        _gpu("gpu-sm89", "sm_89", "NVIDIA Ada GPU (L4, L40S, RTX 40xx; sm_89), CUDA via TVM + nvcc", _L4, 50331648, aliases=("l4",)),
        # FPGA: binary/low-bit layers as a FINN-style dataflow pipeline (HLS C++ + Verilog), simulated
        # bit-exact, synthesized and placed with yosys + nextpnr-ecp5; latency = RTL cycles at the P&R fmax
        Target(name="fpga", backend="fpga", description="Lattice ECP5-85F (LFE5U-85F-8BG381): bit-serial dataflow pipeline, C + RTL simulated, yosys/nextpnr placed",
               tvm={"kind": "fpga", "device": "LFE5U-85F-8BG381"}, latency="simulated", aliases=("ecp5", "fpga-ecp5-85")),
        Target(name="fpga-ecp5-25", backend="fpga", description="Lattice ECP5-25F (LFE5U-25F-8BG381), as fpga",
               tvm={"kind": "fpga", "device": "LFE5U-25F-8BG381"}, latency="simulated"),
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

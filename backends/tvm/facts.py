"""What passes and reports need to know about an LLVM CPU target: its SIMD width, fp32 lanes and
peak fp32 rate, read from LLVM's CPU features for the target's ``mcpu``/``mattr``.

Why not ``tvm.target.codegen.llvm_get_vector_width``: in TVM 0.27 it answers 512 bits for every
x86-64 CPU (``znver3``, ``haswell`` and plain ``x86-64`` included), so it cannot tell AVX2 from
AVX-512. The features (``target_has_features``) are exact: ``avx512f`` -> 512 bits, ``avx`` ->
256, otherwise 128 (SSE2, the x86-64 baseline; AArch64 NEON).

Compile (``optc.stages``) asks :func:`target_facts` for the values it fills into pass parameters
the pipeline left unset (``prune``'s ``multiple``: the fp32 lanes, so kept channel counts stay on
the vectorized schedules); ``optc bench --profile`` uses :func:`fp32_flops_per_cycle`.
"""

from __future__ import annotations

from optc.targets import Target

# FMA pipes per core assumed for the peak: two on x86 cores since Haswell (Intel) and Zen 2
# (AMD) and on Cortex-A72/A76/Neoverse-N1 (2 x 128-bit ASIMD FMA). Not detectable from LLVM.
FMA_UNITS = 2


def _is_llvm_cpu(target: Target) -> bool:
    return target.tvm.get("kind") == "llvm"


def vector_bits(target: Target) -> int | None:
    """The widest SIMD register width, in bits, that code for ``target`` may use (None: not an
    LLVM CPU target)."""
    if not _is_llvm_cpu(target):
        return None
    from tvm.target import codegen

    from .lower import tvm_target

    tgt = tvm_target(target)
    with tgt:
        if str(tgt.attrs.get("mtriple", "") or "").startswith("aarch64"):
            return 128  # NEON (SVE code is not generated for optc's targets)
        if codegen.target_has_features("avx512f"):
            return 512
        if codegen.target_has_features("avx"):
            return 256
    return 128


def fp32_lanes(target: Target) -> int | None:
    """fp32 elements per SIMD register of ``target`` (8 on AVX2, 16 on AVX-512, 4 on NEON)."""
    bits = vector_bits(target)
    return bits // 32 if bits else None


def fp32_flops_per_cycle(target: Target) -> int | None:
    """Peak fp32 FLOP per cycle and core: lanes x 2 (an FMA is two FLOPs) x :data:`FMA_UNITS`."""
    lanes = fp32_lanes(target)
    return lanes * 2 * FMA_UNITS if lanes else None


def target_facts(target: Target) -> dict:
    """Facts of ``target`` by name, for pass parameters a pipeline leaves to the target
    (``optc.pipeline.Pass.target_params``): ``channel_multiple`` (fp32 SIMD lanes) and
    ``vector_bits``. Empty for targets that are not LLVM CPUs."""
    bits = vector_bits(target)
    if not bits:
        return {}
    return {"channel_multiple": bits // 32, "vector_bits": bits, "int8_kernels": int8_kernels(target)}


def int8_kernels(target: Target) -> str:
    """Which integer kernels optc's int8 ops get on ``target`` (``int8.isa_of``): ``vnni``
    (AVX-512 VNNI ``vpdpbusd``), ``sdot`` (AArch64 dotprod), ``smull`` (AArch64 NEON widening
    multiply-accumulate), ``avx2`` (x86 AVX2 without VNNI: ``vpmaddwd`` on int16 operands) or
    ``generic`` (plain LLVM vector code, x86 without AVX2: a few GFLOP/s, slower than float)."""
    from .int8 import isa_of
    from .lower import tvm_target

    tgt = tvm_target(target)
    with tgt:
        return isa_of(tgt)

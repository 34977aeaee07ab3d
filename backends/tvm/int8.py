"""Integer kernels for optc's ``IntConv2d`` / ``IntDense`` / ``IntGlobalAveragePool``
(``ai.optc``; ``IntMatMul``, both operands activations, has its kernel in :mod:`.int8_matmul`): TE compute definitions with optc's own CPU schedules that use the hardware's int8
dot-product instructions, the Relax glue they share (:func:`_dense`, :func:`kernel_bias`), and
the converters of the standard ONNX integer ops (MaxPool on codes, MatMulInteger, ConvInteger,
DynamicQuantizeLinear).

Each ``ai.optc`` op is defined in one module of :mod:`optc.passes.ops` (``int_conv2d``,
``int_dense``, ``int_global_average_pool``): contract, numpy reference, cost and the lowering
that calls the kernel builders here (the kernels match the references bit for bit: every step
is integer arithmetic; the shared integer math is :mod:`optc.passes.quant.int_ops`).

Layout (one for every CPU): output channels in blocks of ``LANES = 16``, input channels in
groups of 4 bytes, so that one 16 x 4 weight block is 64 contiguous bytes:

* weights ``W [N, C, KH, KW]`` -> ``Wp [ceil(N/16), KH, KW, CB, 16, 4]`` int8 (zero padded;
  CB = ceil(C/4), at least 2 for 1x1 kernels), by a ``call_tir`` that Relax's ``FoldConstant``
  evaluates at compile time when the weights are embedded constants (``--params embedded``,
  the default; with separate weights it runs on every call);
* activations ``X [B, C, H, W]`` -> ``Xp [B, H + pads, W + pads, CB, 4]`` (NHWC, padded with
  the input zero point; padded channels are 0 and meet zero weights) inside the kernel
  (``[..., CB, 8]``, each group twice, for ``smull`` below);
* ``Acc[b, nb, oh, ow, 0:16] += Xp[b, ih, iw, cb, 0:4] . Wp[nb, kh, kw, cb, 0:16, 0:4]``: one
  4-byte input group broadcast against a 16 x 4 weight block, i.e. exactly
  **vpdpbusd zmm** (AVX-512 VNNI: u8 x s8 -> 16 x s32) and, split in four 4 x 4 blocks,
  **sdot v.4s** (ARMv8.2 dotprod: s8 x s8 -> 4 x s32).

The signedness each instruction needs is made exact by flipping the top bit of the activation
codes (``x ^ 0x80``: u8 <-> s8 is ``x -/+ 128``) and moving ``+/-128 * sum(W[n])`` into the bias
(computed, like the weight layout, by a small ``call_tir`` folded at compile time).

Schedules (:func:`schedule_conv`, :func:`schedule_dense`: a register tile of output columns,
or dense rows, x 16 channels), chosen per target by :func:`isa_of`:

* ``vnni`` (x86 with ``avx512vnni``): the reduction's inner (16 lanes x 4 bytes) block is
  tensorized with optc's VNNI intrinsic (TVM's ``dot_16x4_vnni`` with the operand types LLVM 22
  wants); a register tile of R output columns x 16 channels (R <= MAX_TILE = 15 zmm accumulators) stays in
  registers over the whole (kh, kw, cb) reduction; (batch, channel block, output row) is the
  parallel loop; requantization (int64 multiply, rounding shift, zero point, clamp) runs on
  the tile before it is stored.
* ``sdot`` (AArch64 with ``+dotprod``): the same tiling, the 16 lanes split into four
  ``sdot`` 4 x 4 blocks (as TVM's ``ARM_DOT_4x4_i8_SDOT_INTRIN``, accumulator in the
  register tile), activations as s8.
* ``smull`` (AArch64 without ``+dotprod``: Cortex-A72 / A53, ARMv8.0 NEON): activations as s8,
  each 16 x 4 block as eight :data:`SMULL_INTRIN` calls: ``smull`` (8 int8 x int8 -> int16
  products, exact) + ``sadalp`` (adjacent int16 pairs added into int32), 8 MACs per 2
  instructions; the packed activations hold each 4-byte group twice (one 8-byte load is the
  ``smull`` operand of 2 lanes). The accumulator keeps two partial sums per lane (bytes 0-1 and 2-3 of each
  group, :func:`acc_halves`), added in the epilogue; register tiles of at most
  :data:`SMULL_MAX_TILE` columns (8 q registers of accumulators each). Exact for every int8
  weight and activation (an int16 sum of two products, as ``smlal`` into int16, would wrap at
  -128 x -128 twice). ResNet-18 executes 0.72x the instructions of fp32 and 3.8x fewer than
  with the int32 fallback below that these cores ran before (bench/README_quant.md).
* ``avx2`` (x86 with AVX2 but no VNNI: Haswell to Zen 3, and AVX-512 CPUs without VNNI):
  activations and weights packed as **int16** (the codes' values; no sign flip), each 16 x 4
  block as four :data:`PMADDWD_INTRIN` calls: one ``vpmaddwd ymm`` (4 lanes x 4 codes: the 4
  activation codes broadcast as one 64-bit value, 16 products added in adjacent pairs into 8
  int32) plus a ``vpaddd`` into the accumulator, which keeps two partial sums per lane like
  ``smull`` (:func:`acc_halves`); register tiles of at most :data:`PMADDWD_MAX_TILE`
  columns (4 ymm accumulators each, 16 ymm registers). Exact for every 8-bit code and weight;
  ``vpmaddubsw`` (u8 x s8, twice the products per instruction, onnxruntime's kernel on these
  CPUs) saturates its int16 pair sums and is not. ResNet-18 int8 1.32x faster than optc fp32 on
  a Zen 3 core, 6-7x the int32 fallback's speed (bench/README_quant.md).
* ``generic`` (x86 without AVX2, other LLVM CPUs): the same tiling with plain int32
  multiply-adds vectorized over the 16 output channels.

Depthwise convolutions (``group = C = N``) have only KH*KW products per output: a plain int32
kernel vectorized over output columns (no dot-product instruction fits).

``MaxPool`` on integer codes (``integerize`` rewrites ``DQ -> MaxPool -> Q`` with one scale and
zero point to a MaxPool on the codes): :func:`max_pool_func`, a branch-free kernel (indices
clamped to the input's edge, rows then columns, vectorized, (batch, channel, row) parallel),
put in by this module's ``MaxPool`` converter for integer inputs on LLVM CPU targets (float
MaxPool keeps TVM's converter).

``IntGlobalAveragePool``: :func:`global_avg_pool_func`, an int32 sum of the codes per channel
(NHWC: rows and columns outside, the contiguous channels vectorized inside) and the same
requantization epilogue as the convolutions.

``IntDense`` takes activations of any rank (``[batch, seq, hidden]``: the leading dimensions
are flattened into the kernel's rows and restored, :func:`_dense`); with the optional
``W_zero_point`` (asymmetric, e.g. uint8, weights) the kernel's int32 sum is corrected by the
row sums of the codes and requantized in Relax ops (:func:`_dense_weight_zero_point`).

Standard ONNX integer ops (onnxruntime's ``quantize_dynamic``), exact int32 as the spec defines
them: ``MatMulInteger`` with a static 2-D ``B`` (:func:`_matmul_integer`) and ``ConvInteger``
(:func:`_conv_integer`, TVM has no converter). Where a bound proves every partial sum an integer
below 2^24 (:func:`_exact_in_fp32`: ``terms * 255 * max|w - z_w|``, read from the constant
weight) and, for MatMulInteger, the CPU has neither an int8 dot product nor AVX2 (``generic``, ``smull``), they compute in
float32 on the zero-point-shifted operands with optc's fp32 schedules (exact, and faster than
the generic int32 kernel); otherwise MatMulInteger runs on the dense kernel
(:func:`_matmul_integer_kernel`: uint8 weights shifted to int8, the activation zero point folded
into a run-time bias, the weight zero point as row sums) and ConvInteger as an int32 Relax
convolution. ``DynamicQuantizeLinear``: TVM's converter with onnxruntime's scale of 1 for a
constant input (TVM divided by 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optc.passes.optc_ops import ConvGeometry, conv_output_shape
from optc.passes.quant.int_ops import Requant

from .lower import call_kernel, conv_params, opaque_kernel, register_converter, register_if_available, static_shape
from .schedule import ACC_SCOPE, STACK_ALLOCA_BYTES
from .tensor_intrin import dot_desc, intrin_func, operands, pairs_desc

LANES = 16  # output channels per block (one zmm of int32)
GROUP = 4  # input bytes per dot product
# output columns per register tile: 16 int32 lanes (64 B) of accumulators each, below TVM's
# stack-alloca limit (16 columns = 1 KB was a TVMBackendAllocWorkspace call per tile); 15 +
# weights + broadcast < 32 zmm
MAX_TILE = (STACK_ALLOCA_BYTES - 1) // (16 * 4)
PARALLEL_MIN_MACS = 1 << 18  # less work than this stays single-threaded
PARALLEL_MIN_ELEMS = 1 << 16  # the same for the (memory-bound) max pool, in input bytes read

VNNI_INTRIN = "optc_dot_16x4_u8i8i32_vnni"
SDOT_INTRIN = "optc_dot_4x4_i8i8i32_sdot"
SMULL_INTRIN = "optc_dot_2x4_i8i8i32_smull_sadalp"
SMULL_MAX_TILE = 3  # smull: 8 q registers of accumulators per column; 3 x 8 + weights + operand < 32
PMADDWD_INTRIN = "optc_dot_4x4_i16i16i32_pmaddwd"
PMADDWD_LANES = 4  # output lanes per pmaddwd intrinsic call (4 lanes x 2 halves: one ymm of int32)
PMADDWD_MAX_TILE = 3  # avx2: 4 ymm accumulators per column; 3 x 4 + operand + weights <= 16 ymm


# ---------------------------------------------------------------------------------------------
# target -> instruction set


def isa_of(target) -> str:
    """``"vnni"``, ``"sdot"``, ``"smull"`` (AArch64 without dotprod: NEON widening multiply,
    :data:`SMULL_INTRIN`), ``"avx2"`` (x86 with AVX2 but no VNNI: ``vpmaddwd`` on int16,
    :data:`PMADDWD_INTRIN`) or ``"generic"`` for a ``tvm.target.Target`` (LLVM CPU)."""
    from tvm.target import codegen

    attrs = target.attrs
    triple = str(attrs.get("mtriple", "") or "")
    mcpu = str(attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in (attrs.get("mattr", None) or [])]
    if triple.startswith("aarch64"):
        return "sdot" if "+dotprod" in mattr else "smull"
    try:
        has = bool(codegen.target_has_features("avx512vnni", target))
        avx2 = bool(codegen.target_has_features("avx2", target))
    except Exception:  # noqa: BLE001 - older API: fall back on the mattr list and mcpu name
        has = "+avx512vnni" in mattr or mcpu in ("znver4", "znver5", "icelake-server", "sapphirerapids",
                                                   "cascadelake", "tigerlake", "alderlake")
        avx2 = "+avx2" in mattr
    return "vnni" if has else "avx2" if avx2 else "generic"


def _register_intrinsics() -> None:
    """optc's dot-product intrinsics. Descriptions as TVM's ``dot_16x4_vnni`` / ARM
    ``sdot`` 4x4 ones but with the accumulator in the register tile's scope (``schedule.ACC_SCOPE``);
    the VNNI implementation passes the operands as <64 x i8> vectors, as
    ``llvm.x86.avx512.vpdpbusd.512`` wants since LLVM 22 (TVM's own passes <16 x i32>)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(VNNI_INTRIN)
        return
    except Exception:  # noqa: BLE001 - not registered yet
        pass

    def dot(lanes: int, a_dtype: str, llvm_intrin: str):
        """(desc, impl) of one instruction: the 4 activation bytes broadcast to every lane,
        against the (lanes x 4) weight block, accumulated into the lanes' int32s."""
        nbytes = 4 * lanes

        def impl(A, B, C) -> None:
            a_i32 = T.reinterpret("int32", A.vload([0], f"{a_dtype}x4"))
            a_bytes = T.reinterpret(f"{a_dtype}x{nbytes}", T.broadcast(a_i32, lanes))
            T.buffer_store(C, T.call_llvm_pure_intrin(f"int32x{lanes}", llvm_intrin, C.vload([0], f"int32x{lanes}"),
                                                      a_bytes, B.vload([0, 0], f"int8x{nbytes}")),
                           [T.ramp(T.int32(0), 1, lanes)])

        ops = operands(((4,), a_dtype), ((lanes, 4), "int8"), (lanes,))
        return intrin_func(ops, dot_desc), intrin_func(ops, impl)

    TensorIntrin.register(VNNI_INTRIN, *dot(16, "uint8", "llvm.x86.avx512.vpdpbusd.512"))
    TensorIntrin.register(SDOT_INTRIN, *dot(4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8"))
    TensorIntrin.register(SMULL_INTRIN, *_smull_intrin())
    TensorIntrin.register(PMADDWD_INTRIN, *_pmaddwd_intrin())


SMULL_LANES = 2  # output lanes per smull intrinsic call (8 weight bytes: one d register)


def _smull_intrin():
    """(desc, impl) of the ARMv8.0 NEON int8 block (no dot product): 2 output lanes x 4 input
    bytes into 2 x 2 int32 partial sums ``C[l, h] += A[4l + 2h] B[l, 2h] + A[4l + 2h + 1] B[l,
    2h + 1]``, where ``A`` is the 4-byte activation group stored twice (the packed input keeps
    every group twice for this kernel, so the operand is one 8-byte load, no broadcast).
    ``smull`` multiplies those 8 bytes by the 8 weight bytes into 8 int16 products (exact:
    |-128 x -128| = 2^14 < 2^15), ``saddlp`` + ``add`` (one ``sadalp``) adds adjacent pairs into
    the 4 int32s: 8 MACs in 2 instructions, no sign-extension step. (A 4-lane form with
    ``smull2`` on 16-byte loads is no better: LLVM sees that a broadcast operand's halves are
    equal and extracts the weights' high half with ``ext`` instead.)"""
    from tvm.script import tirx as T

    def impl(A, B, C) -> None:
        prod = T.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.smull.v8i16", A.vload([0], "int8x8"),
                                       B.vload([0, 0], "int8x8"))
        T.buffer_store(C, C.vload([0, 0], "int32x4") + T.call_llvm_pure_intrin(
            "int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16", prod), [0, T.ramp(T.int32(0), 1, 4)])

    ops = operands(((8,), "int8"), ((SMULL_LANES, 4), "int8"), (SMULL_LANES, 2))
    return intrin_func(ops, pairs_desc), intrin_func(ops, impl)


def _pmaddwd_intrin():
    """(desc, impl) of the AVX2 integer block (x86 without VNNI): 4 output lanes x 4 input
    codes into 4 x 2 int32 partial sums ``C[l, h] += A[2h] B[l, 2h] + A[2h + 1] B[l, 2h + 1]``
    on int16 operands (activations widened by the input pack, weights by the weight pack).
    One ``vpmaddwd ymm`` multiplies the 4 activation codes, broadcast as one 64-bit value,
    by the 16 weights and adds adjacent pairs into 8 int32s: 16 MACs per instruction (plus
    the ``vpaddd`` into the accumulator), exact for every 8-bit code and weight (|product| <=
    255 x 128, a pair < 2^16). ``vpmaddubsw`` on bytes would be twice as wide but saturates
    its int16 pair sums (255 x 127 x 2 > 2^15), so it is not exact for every weight."""
    from tvm.script import tirx as T

    def impl(A, B, C) -> None:
        a_i64 = T.reinterpret("int64", A.vload([0], "int16x4"))
        T.buffer_store(C, C.vload([0, 0], "int32x8") + T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx2.pmadd.wd", T.reinterpret("int16x16", T.broadcast(a_i64, 4)),
            B.vload([0, 0], "int16x16")), [0, T.ramp(T.int32(0), 1, 8)])

    ops = operands(((4,), "int16"), ((PMADDWD_LANES, 4), "int16"), (PMADDWD_LANES, 2))
    return intrin_func(ops, pairs_desc), intrin_func(ops, impl)


@dataclass(frozen=True)
class KernelForm:
    """How one instruction set's kernels hold their operands: ``act_dtype`` the activations
    in the packed ``Xp`` (the dot product's operand type), ``weight_dtype`` the packed weights
    ``Wp``, ``halves`` the int32 partial sums per output lane in the accumulator (2 where the
    instruction adds pairs of a group's 4 products: ``sadalp``, ``vpmaddwd``; added in the
    epilogue), ``copies`` how often ``Xp`` holds each 4-code group (twice for ``smull``: its
    8-byte operand covers 2 lanes), ``max_tile`` columns (conv) or rows (dense) per register
    tile: as many 16-lane accumulators as the vector registers hold beside the weights and
    the operand."""

    act_dtype: str = "uint8"
    weight_dtype: str = "int8"
    halves: int = 1
    copies: int = 1
    max_tile: int = MAX_TILE


KERNEL_FORMS = {
    "vnni": KernelForm(),
    "generic": KernelForm(),
    "sdot": KernelForm(act_dtype="int8"),
    "smull": KernelForm(act_dtype="int8", halves=2, copies=2, max_tile=SMULL_MAX_TILE),
    "avx2": KernelForm(act_dtype="int16", weight_dtype="int16", halves=2, max_tile=PMADDWD_MAX_TILE),
}


def kernel_form(isa: str) -> KernelForm:
    return KERNEL_FORMS.get(isa, KERNEL_FORMS["generic"])


def kernel_dtype(isa: str) -> str:
    """Activation dtype the kernel's dot product wants."""
    return kernel_form(isa).act_dtype


def weight_dtype(isa: str) -> str:
    """Dtype of the packed weights ``Wp``."""
    return kernel_form(isa).weight_dtype


def acc_halves(isa: str) -> int:
    """Partial int32 sums per output lane in the accumulator (:class:`KernelForm`)."""
    return kernel_form(isa).halves


# ---------------------------------------------------------------------------------------------
# TE definitions


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def channel_blocks(C: int, KH: int, KW: int) -> int:
    """4-byte input channel groups of the packed layouts: ceil(C/4), at least 2 for a 1x1
    kernel (zero padded) so the reduction always has a loop outside the dot product."""
    cb = _cdiv(C, GROUP)
    return max(cb, 2) if KH * KW == 1 else cb


def _to_kernel(x, in_dtype: str, kdtype: str):
    """An activation code in the kernel's dtype (top bit flipped when the signedness differs;
    widened, value kept, for int16)."""
    from tvm import tirx

    if in_dtype == kdtype:
        return x
    if kdtype == "int16":
        return x.astype("int16")
    return tirx.reinterpret(kdtype, x ^ tirx.const(0x80 if in_dtype == "uint8" else -128, in_dtype))


def _zero_point_in_kernel(zp: int, in_dtype: str, kdtype: str) -> int:
    if in_dtype == kdtype or kdtype == "int16":
        return zp
    return zp - 128 if kdtype == "int8" else zp + 128


def weight_pack_te(N: int, C: int, KH: int, KW: int, dtype: str = "int8"):
    """``W [N, C, KH, KW]`` int8 -> ``Wp [NB, KH, KW, CB, 16, 4]`` of ``dtype`` (zero padded)."""
    from tvm import te, tirx

    NB, CB = _cdiv(N, LANES), channel_blocks(C, KH, KW)
    W = te.placeholder((N, C, KH, KW), "int8", name="W")

    def f(nb, kh, kw, cb, l, g):
        n, c = nb * LANES + l, cb * GROUP + g
        return tirx.if_then_else(tirx.all(n < N, c < C), W[tirx.min(n, N - 1), tirx.min(c, C - 1), kh, kw],
                                 tirx.const(0, "int8")).astype(dtype)

    return [W], te.compute((NB, KH, KW, CB, LANES, GROUP), f, name="Wp")


def bias_adjust_te(N: int, C: int, KH: int, KW: int, delta: int, has_bias: bool):
    """``Bk[n] = B[n] + delta * sum(W[n])`` (int32): the bias of the kernel's dtype."""
    from tvm import te, tirx

    W = te.placeholder((N, C, KH, KW), "int8", name="W")
    ins = [W]
    Bv = None
    if has_bias:
        Bv = te.placeholder((N,), "int32", name="B")
        ins.append(Bv)
    rc, rh, rw = te.reduce_axis((0, C), "c"), te.reduce_axis((0, KH), "h"), te.reduce_axis((0, KW), "w")
    S = te.compute((N,), lambda n: te.sum(W[n, rc, rh, rw].astype("int32"), axis=[rc, rh, rw]), name="S")

    def f(n):
        v = S[n] * tirx.const(delta, "int32")
        return v + Bv[n] if Bv is not None else v

    return ins, te.compute((N,), f, name="Bk")


def _requant(acc, M, S, rq: Requant):
    """The op contract's requantization as a TIR expression (int32 acc, per-channel M, S)."""
    from tvm import tirx

    prod = acc.astype("int64") * M.astype("int64")
    s64 = S.astype("int64")
    rounded = (prod + (tirx.const(1, "int64") << (s64 - tirx.const(1, "int64")))) >> s64
    y = rounded + tirx.const(rq.y_zero_point, "int64")
    y = tirx.max(tirx.min(y, tirx.const(rq.out_max, "int64")), tirx.const(rq.out_min, "int64"))
    return y.astype(rq.out_dtype)


def _halves_acc(shape, prod, axes, name: str = "Acc"):
    """The ``smull`` accumulator ``Acc[*shape, l, h]`` (:func:`acc_halves`): the sum over
    ``axes`` and the bytes ``2h, 2h+1`` of each 4-byte group of ``prod(*idx, l, g)`` (the
    int32 product at lane ``l``, byte ``g``; ``shape`` has 4 axes for conv, 2 for dense)."""
    from tvm import te

    rg = te.reduce_axis((0, GROUP // 2), "g")
    if len(shape) == 4:
        return te.compute((*shape, LANES, 2), lambda b, nb, oh, ow, l, h: te.sum(
            prod(b, nb, oh, ow, l, h * 2 + rg), axis=[*axes, rg]), name=name)
    return te.compute((*shape, LANES, 2), lambda m, nb, l, h: te.sum(prod(m, nb, l, h * 2 + rg), axis=[*axes, rg]),
                      name=name)


def conv_te(x_shape, N: int, geom: ConvGeometry, rq: Requant, *, in_dtype: str, isa: str):
    """TE tensors of IntConv2d (group 1) on packed weights ``Wp`` and the kernel's bias, for
    the kernels of ``isa``; ``x_shape`` = (B, C, H, W) whatever the layout; ``X``/``Y`` in NCHW
    or NHWC (``geom.x_layout`` / ``y_layout``; the packed ``Xp`` is NHWC either way: from NHWC
    the pack is a padded copy of contiguous rows, from NCHW a transpose). The accumulator has
    :func:`acc_halves` partial sums per lane; for ``smull`` ``Xp`` holds each 4-byte group
    twice (``[..., CB, 8]``: the 8-byte operand of :func:`_smull_intrin`)."""
    from tvm import te, tirx

    form = kernel_form(isa)
    kdtype, halves, copies = form.act_dtype, form.halves, form.copies

    B, C, H, W_ = x_shape
    KH, KW = geom.kernel_shape
    pads, strides, dilations = geom.pads, geom.strides, geom.dilations
    x_layout, y_layout = geom.x_layout, geom.y_layout
    NB, CB = _cdiv(N, LANES), channel_blocks(C, KH, KW)
    OH, OW = geom.output_shape(H, W_)
    Hp, Wpd = H + pads[0] + pads[2], W_ + pads[1] + pads[3]
    X = te.placeholder((B, C, H, W_) if x_layout == "NCHW" else (B, H, W_, C), in_dtype, name="X")
    Wp = te.placeholder((NB, KH, KW, CB, LANES, GROUP), weight_dtype(isa), name="Wp")
    Bk = te.placeholder((N,), "int32", name="Bk")
    M = te.placeholder((N,), "int32", name="multiplier")
    S = te.placeholder((N,), "int32", name="shift")
    zp_k = _zero_point_in_kernel(rq.x_zero_point, in_dtype, kdtype)

    def pack(b, hp, wp, cb, g):
        g = g % GROUP if copies == 2 else g  # smull: each group stored twice (:func:`_smull_intrin`)
        c, h, w = cb * GROUP + g, hp - pads[0], wp - pads[1]
        inside = tirx.all(h >= 0, h < H, w >= 0, w < W_)
        hc, wc, cc = tirx.max(tirx.min(h, H - 1), 0), tirx.max(tirx.min(w, W_ - 1), 0), tirx.min(c, C - 1)
        v = _to_kernel(X[b, cc, hc, wc] if x_layout == "NCHW" else X[b, hc, wc, cc], in_dtype, kdtype)
        v = tirx.if_then_else(inside, v, tirx.const(zp_k, kdtype))
        return v if C == CB * GROUP else tirx.if_then_else(c < C, v, tirx.const(0, kdtype))

    Xp = te.compute((B, Hp, Wpd, CB, GROUP * copies), pack, name="Xp")
    rkh, rkw = te.reduce_axis((0, KH), "kh"), te.reduce_axis((0, KW), "kw")
    rcb, rg = te.reduce_axis((0, CB), "cb"), te.reduce_axis((0, GROUP), "g")
    if halves == 2:
        Acc = _halves_acc((B, NB, OH, OW), lambda b, nb, oh, ow, l, g: Xp[
            b, oh * strides[0] + rkh * dilations[0], ow * strides[1] + rkw * dilations[1], rcb,
            l % 2 * GROUP + g if copies == 2 else g].astype("int32") * Wp[nb, rkh, rkw, rcb, l, g].astype("int32"), [rkh, rkw, rcb])
    else:
        Acc = te.compute(
        (B, NB, OH, OW, LANES),
            lambda b, nb, oh, ow, l: te.sum(
                Xp[b, oh * strides[0] + rkh * dilations[0], ow * strides[1] + rkw * dilations[1], rcb, rg].astype("int32")
                * Wp[nb, rkh, rkw, rcb, l, rg].astype("int32"), axis=[rkh, rkw, rcb, rg]),
            name="Acc")

    def requant(b, n, oh, ow):
        at = (b, n // LANES, oh, ow, n % LANES)
        if halves == 1:
            return _requant(Acc[at] + Bk[n], M[n], S[n], rq)
        if isa != "smull":
            return _requant(Acc[(*at, 0)] + Acc[(*at, 1)] + Bk[n], M[n], S[n], rq)
        # smull: the int32 sum as llvm.sadd.sat (equal to "+" where the op contract holds: no int32
        # overflow), which LLVM does not widen to int64 before the multiply, so the int64 product
        # stays a vector smlal instead of a scalar mul per output (-2 % on a 64-channel conv)
        acc = tirx.call_llvm_pure_intrin("int32", "llvm.sadd.sat.i32", Acc[(*at, 0)] + Acc[(*at, 1)], Bk[n])
        return _requant(acc, M[n], S[n], rq)

    if y_layout == "NCHW":
        Y = te.compute((B, N, OH, OW), requant, name="Y")
    else:
        Y = te.compute((B, OH, OW, N), lambda b, oh, ow, n: requant(b, n, oh, ow), name="Y")
    return [X, Wp, Bk, M, S], Y


def depthwise_te(x_shape, geom: ConvGeometry, rq: Requant, *, in_dtype: str):
    """TE tensors of IntConv2d with group = C = N (one KH x KW filter per channel), on the
    ONNX weight layout ``W [C, 1, KH, KW]`` and the op's bias; ``X``/``Y`` NCHW,
    ``x_shape`` = (B, C, H, W)."""
    from tvm import te, tirx

    B, C, H, W_ = x_shape
    KH, KW = geom.kernel_shape
    pads, strides, dilations = geom.pads, geom.strides, geom.dilations
    OH, OW = geom.output_shape(H, W_)
    X = te.placeholder((B, C, H, W_), in_dtype, name="X")
    W = te.placeholder((C, 1, KH, KW), "int8", name="W")
    Bv = te.placeholder((C,), "int32", name="B")
    M = te.placeholder((C,), "int32", name="multiplier")
    S = te.placeholder((C,), "int32", name="shift")
    Hp, Wpd = H + pads[0] + pads[2], W_ + pads[1] + pads[3]
    # the padded copy's columns split by phase: Xp[.., r, q] = padded column q * SW + r, so a
    # row of outputs (vectorized along ow) reads consecutive q for every tap at any stride;
    # stride 2 read every other column (a gather per vector): 4-5 GFLOP/s where stride 1 ran 20-36
    SW = strides[1]
    Wq = -(-Wpd // SW)

    def pad(b, c, hp, r, q):
        h, w = hp - pads[0], q * SW + r - pads[1]
        inside = tirx.all(h >= 0, h < H, w >= 0, w < W_)
        v = X[b, c, tirx.max(tirx.min(h, H - 1), 0), tirx.max(tirx.min(w, W_ - 1), 0)].astype("int32")
        return tirx.if_then_else(inside, v, tirx.const(rq.x_zero_point, "int32"))

    Xp = te.compute((B, C, Hp, SW, Wq), pad, name="Xp")
    rkh, rkw = te.reduce_axis((0, KH), "kh"), te.reduce_axis((0, KW), "kw")

    def tap(b, c, oh, ow):  # column ow * SW + kw * dw of the padded input
        off = rkw * dilations[1]
        return Xp[b, c, oh * strides[0] + rkh * dilations[0], tirx.floormod(off, SW), ow + tirx.floordiv(off, SW)]

    Acc = te.compute(
        (B, C, OH, OW),
        lambda b, c, oh, ow: te.sum(tap(b, c, oh, ow) * W[c, 0, rkh, rkw].astype("int32"), axis=[rkh, rkw]),
        name="Acc")
    Y = te.compute((B, C, OH, OW), lambda b, c, oh, ow: _requant(Acc[b, c, oh, ow] + Bv[c], M[c], S[c], rq), name="Y")
    return [X, W, Bv, M, S], Y


def depthwise_nhwc_te(x_shape, geom: ConvGeometry, rq: Requant, *, in_dtype: str):
    """TE tensors of a depthwise IntConv2d computed channels-last: ``X`` per ``geom.x_layout``
    (``x_shape`` = (B, C, H, W) either way), a padded copy ``Xp [B, Hp, Wp, C]`` (int32, the
    padding the input zero point), the weights as ``Wt [KH, KW, C]``, ``Acc [B, OH, OW, C]``,
    ``Y`` per ``geom.y_layout``: every tap of a pixel reads C consecutive values, so
    :func:`schedule_depthwise_nhwc` vectorizes over channels."""
    from tvm import te, tirx

    B, C, H, W_ = x_shape
    KH, KW = geom.kernel_shape
    pads, strides, dilations = geom.pads, geom.strides, geom.dilations
    OH, OW = geom.output_shape(H, W_)
    nhwc_in = geom.x_layout == "NHWC"
    X = te.placeholder((B, H, W_, C) if nhwc_in else (B, C, H, W_), in_dtype, name="X")
    W = te.placeholder((C, 1, KH, KW), "int8", name="W")
    Bv = te.placeholder((C,), "int32", name="B")
    M = te.placeholder((C,), "int32", name="multiplier")
    S = te.placeholder((C,), "int32", name="shift")
    Hp, Wpd = H + pads[0] + pads[2], W_ + pads[1] + pads[3]

    def pad(b, hp, wp, c):
        h, w = hp - pads[0], wp - pads[1]
        inside = tirx.all(h >= 0, h < H, w >= 0, w < W_)
        hc, wc = tirx.max(tirx.min(h, H - 1), 0), tirx.max(tirx.min(w, W_ - 1), 0)
        v = (X[b, hc, wc, c] if nhwc_in else X[b, c, hc, wc]).astype("int32")
        return tirx.if_then_else(inside, v, tirx.const(rq.x_zero_point, "int32"))

    Xp = te.compute((B, Hp, Wpd, C), pad, name="Xp")
    Wt = te.compute((KH, KW, C), lambda kh, kw, c: W[c, 0, kh, kw].astype("int32"), name="Wt")
    rkh, rkw = te.reduce_axis((0, KH), "kh"), te.reduce_axis((0, KW), "kw")
    Acc = te.compute(
        (B, OH, OW, C),
        lambda b, oh, ow, c: te.sum(Xp[b, oh * strides[0] + rkh * dilations[0], ow * strides[1] + rkw * dilations[1], c]
                                    * Wt[rkh, rkw, c], axis=[rkh, rkw]),
        name="Acc")
    if geom.y_layout == "NHWC":
        Y = te.compute((B, OH, OW, C), lambda b, oh, ow, c: _requant(Acc[b, oh, ow, c] + Bv[c], M[c], S[c], rq),
                       name="Y")
    else:
        Y = te.compute((B, C, OH, OW), lambda b, c, oh, ow: _requant(Acc[b, oh, ow, c] + Bv[c], M[c], S[c], rq),
                       name="Y")
    return [X, W, Bv, M, S], Y


# output pixels per register tile of the channels-last depthwise kernel (one vector of
# channels each: 8 accumulators, the 9 weight vectors of a 3x3 filter beside them)
DEPTHWISE_TILE = 8


def schedule_depthwise_nhwc(func, *, channels: int, ow: int, work: int, y_layout: str, lanes: int = 16):
    """:func:`depthwise_nhwc_te`: the padded copy and the weight transpose vectorized over
    channels; per output row (rows in parallel for large layers) register tiles of up to
    DEPTHWISE_TILE pixels x one vector of channels, the taps outside, accumulators in registers."""
    import tvm

    from .schedule import _largest_divisor, _vector_width

    sch = tvm.s_tir.Schedule(func)
    par = work >= PARALLEL_MIN_MACS
    vw = _vector_width(channels, lanes)
    xp = sch.get_sblock("Xp")
    b, hp, _, c = sch.get_loops(xp)
    sch.vectorize(sch.split(c, [None, vw])[1])
    if par:
        sch.parallel(sch.fuse(b, hp))
    wt = sch.get_sblock("Wt")
    sch.vectorize(sch.split(sch.get_loops(wt)[-1], [None, vw])[1])
    yb = sch.get_sblock("Y")
    loops = sch.get_loops(yb)
    if y_layout == "NHWC":
        b, oh, owl, c = loops
    else:
        b, c, oh, owl = loops
        sch.reorder(b, oh, owl, c)
    tile = _largest_divisor(ow, DEPTHWISE_TILE)
    owo, owi = sch.split(owl, [None, tile])
    co, ci = sch.split(c, [None, vw])
    sch.reorder(b, oh, owo, co, owi, ci)
    outer = sch.fuse(b, oh)
    if par:
        sch.parallel(outer)
    acc = sch.get_sblock("Acc")
    sch.compute_at(acc, co, preserve_unit_loops=True)
    sch.set_scope(acc, 0, ACC_SCOPE)
    a_owi, a_ci, kh, kw = sch.get_loops(acc)[-4:]
    sch.reorder(kh, kw, a_owi, a_ci)
    sch.unroll(a_owi)
    sch.vectorize(a_ci)
    init = sch.decompose_reduction(acc, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(sch.get_loops(init)[-2])
    sch.vectorize(ci)
    return sch.mod["main"]


def dense_te(M_, K, N, rq: Requant | None, *, in_dtype: str, isa: str):
    """TE tensors of IntDense on packed weights ``Wp [NB, 1, 1, KB, 16, 4]`` (the conv weight
    layout of a 1x1 kernel) and the kernel's bias, for the kernels of ``isa`` (as
    :func:`conv_te`); ``rq=None``: no requantization, ``Y`` is the int32 accumulator plus bias
    (MatMulInteger) and ``multiplier``/``shift`` are not inputs."""
    from tvm import te, tirx

    form = kernel_form(isa)
    kdtype, halves, copies = form.act_dtype, form.halves, form.copies
    NB, KB = _cdiv(N, LANES), channel_blocks(K, 1, 1)
    X = te.placeholder((M_, K), in_dtype, name="X")
    Wp = te.placeholder((NB, 1, 1, KB, LANES, GROUP), weight_dtype(isa), name="Wp")
    Bk = te.placeholder((N,), "int32", name="Bk")
    Mu = te.placeholder((N,), "int32", name="multiplier")
    S = te.placeholder((N,), "int32", name="shift")

    def pack(m, kb, g):
        k = kb * GROUP + (g % GROUP if copies == 2 else g)  # smull: each group stored twice
        return tirx.if_then_else(k < K, _to_kernel(X[m, tirx.min(k, K - 1)], in_dtype, kdtype), tirx.const(0, kdtype))

    Xp = te.compute((M_, KB, GROUP * copies), pack, name="Xp")
    rkb, rg = te.reduce_axis((0, KB), "kb"), te.reduce_axis((0, GROUP), "g")
    if halves == 2:
        Acc = _halves_acc((M_, NB), lambda m, nb, l, g: Xp[m, rkb, l % 2 * GROUP + g if copies == 2 else g].astype("int32")
                          * Wp[nb, 0, 0, rkb, l, g].astype("int32"), [rkb])
    else:
        Acc = te.compute((M_, NB, LANES), lambda m, nb, l: te.sum(
            Xp[m, rkb, rg].astype("int32") * Wp[nb, 0, 0, rkb, l, rg].astype("int32"), axis=[rkb, rg]), name="Acc")

    def acc(m, n):
        return Acc[m, n // LANES, n % LANES] if halves == 1 else Acc[m, n // LANES, n % LANES, 0] + Acc[
            m, n // LANES, n % LANES, 1]

    if rq is None:
        Y = te.compute((M_, N), lambda m, n: acc(m, n) + Bk[n], name="Y")
        return [X, Wp, Bk], Y
    Y = te.compute((M_, N), lambda m, n: _requant(acc(m, n) + Bk[n], Mu[n], S[n], rq), name="Y")
    return [X, Wp, Bk, Mu, S], Y


def max_pool_te(B, C, H, W_, kernel_shape, pads, strides, *, dtype):
    """Max pool on integer codes (``integerize`` writes ``MaxPool`` on the codes when DQ and Q
    around it share their parameters). Padding never wins (pads < kernel, no dilation, no
    ceil_mode: every window holds a real element), so an index clamped to the input's edge
    reads an element of the same window: no padding buffer, no branch. Rows first
    (``R = max over kh``, contiguous), then columns."""
    from tvm import te, tirx

    KH, KW = kernel_shape
    OH, OW = conv_output_shape(H, W_, kernel_shape, pads, strides, (1, 1))
    X = te.placeholder((B, C, H, W_), dtype, name="X")

    def clamp(i, n):
        return tirx.max(tirx.min(i, n - 1), 0)

    def rows(b, c, oh, w):
        v = None
        for kh in range(KH):
            e = X[b, c, clamp(oh * strides[0] + kh - pads[0], H), w]
            v = e if v is None else tirx.max(v, e)
        return v

    R = te.compute((B, C, OH, W_), rows, name="R")

    def cols(b, c, oh, ow):
        v = None
        for kw in range(KW):
            e = R[b, c, oh, clamp(ow * strides[1] + kw - pads[1], W_)]
            v = e if v is None else tirx.max(v, e)
        return v

    return [X], te.compute((B, C, OH, OW), cols, name="Y")


def schedule_max_pool(func, *, ow: int, work: int):
    """(b, c, oh) parallel; the row maxima of one output row computed there (vectorized), then
    the output row (vectorized in power-of-two chunks)."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    yb = sch.get_sblock("Y")
    b, c, oh, owl = sch.get_loops(yb)
    outer = sch.fuse(b, c, oh)
    if work >= PARALLEL_MIN_ELEMS:
        sch.parallel(outer)
    rb = sch.get_sblock("R")
    sch.compute_at(rb, outer)
    w = sch.get_loops(rb)[-1]
    wv = _pow2_divisor(int(sch.get(w).extent), 32)
    if wv > 1:
        sch.vectorize(sch.split(w, [None, wv])[1])
    v = _pow2_divisor(ow, 16)
    if v > 1:
        sch.vectorize(sch.split(owl, [None, v])[1])
    return sch.mod["main"]


def global_avg_pool_te(x_shape, rq: Requant, *, in_dtype: str, x_layout: str, per_channel: bool):
    """IntGlobalAveragePool: ``Acc[b, c]`` = int32 sum of the codes over (h, w), then the op
    contract's requantization of ``Acc - H * W * x_zero_point``; ``x_shape`` = (B, C, H, W)
    whatever the layout, ``Y [B, C, 1, 1]``."""
    from tvm import te, tirx

    B, C, H, W_ = x_shape
    X = te.placeholder((B, C, H, W_) if x_layout == "NCHW" else (B, H, W_, C), in_dtype, name="X")
    M = te.placeholder((C if per_channel else 1,), "int32", name="multiplier")
    S = te.placeholder((C if per_channel else 1,), "int32", name="shift")
    rh, rw = te.reduce_axis((0, H), "h"), te.reduce_axis((0, W_), "w")
    Acc = te.compute((B, C), lambda b, c: te.sum(
        (X[b, c, rh, rw] if x_layout == "NCHW" else X[b, rh, rw, c]).astype("int32"), axis=[rh, rw]), name="Acc")
    zero_sum = tirx.const(H * W_ * rq.x_zero_point, "int32")

    def y(b, c, i, j):
        k = c if per_channel else 0
        return _requant(Acc[b, c] - zero_sum, M[k], S[k], rq)

    return [X, M, S], te.compute((B, C, 1, 1), y, name="Y")


def schedule_global_avg_pool(func, *, x_layout: str, channels: int, work: int):
    """NHWC: per batch, rows then columns outside, the channels inside (contiguous, vectorized
    in power-of-two chunks). NCHW: (batch, channel) parallel, the contiguous plane summed inside."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    acc = sch.get_sblock("Acc")
    b, c, rh, rw = sch.get_loops(acc)
    if x_layout == "NCHW":
        if work >= PARALLEL_MIN_ELEMS:
            sch.parallel(sch.fuse(b, c))
        return sch.mod["main"]
    v = _pow2_divisor(channels, 16)
    co, ci = sch.split(c, [None, v])
    sch.reorder(b, rh, rw, co, ci)
    if v > 1:
        sch.vectorize(ci)
    sch.decompose_reduction(acc, rh)
    return sch.mod["main"]


def _pow2_divisor(n: int, limit: int) -> int:
    w = 1
    while w * 2 <= limit and n % (w * 2) == 0:
        w *= 2
    return w


# ---------------------------------------------------------------------------------------------
# schedules




def _tile(extent: int, limit: int = MAX_TILE) -> int:
    return max(d for d in range(1, min(limit, extent) + 1) if extent % d == 0)


def _inner_dot(sch, blk, lane_loop, isa: str, first) -> None:
    """Split off the accumulator init at reduction loop ``first``, then tensorize (or
    vectorize) the (16 lanes, 4 bytes) block under ``lane_loop``."""
    if isa == "generic":  # int32 multiply-adds, 16 lanes: bytes loop outside, lanes vectorized
        loops = sch.get_loops(blk)
        lane, g = loops[-2], loops[-1]
        sch.reorder(g, lane)
        sch.unroll(g)
        sch.vectorize(lane)
    if isa in ("smull", "avx2"):
        _inner_pairs(sch, blk, lane_loop, first, isa)
        return
    init = sch.decompose_reduction(blk, first)
    sch.vectorize(sch.get_loops(init)[-1])
    if isa == "generic":
        return
    _register_intrinsics()
    if isa == "vnni":
        sch.tensorize(lane_loop, VNNI_INTRIN)
    elif isa == "sdot":
        sch.split(lane_loop, [None, 4])
        sch.tensorize(sch.get_loops(blk)[-2], SDOT_INTRIN)
    else:
        raise ValueError(f"unknown int8 instruction set {isa!r}")


def _inner_pairs(sch, blk, lane_loop, first, isa: str) -> None:
    """``smull`` / ``avx2``: the block's innermost loops are (16 lanes, 2 halves, 2 bytes); the
    init's (lanes, halves) become one vector of 32 int32, the update is tensorized per
    :data:`SMULL_LANES` lanes with :data:`SMULL_INTRIN` (per :data:`PMADDWD_LANES` with
    :data:`PMADDWD_INTRIN`) and the intrinsic calls unrolled (their accumulators stay in
    registers)."""
    init = sch.decompose_reduction(blk, first)
    sch.vectorize(sch.fuse(*sch.get_loops(init)[-2:]))
    _register_intrinsics()
    lanes, intrin = (SMULL_LANES, SMULL_INTRIN) if isa == "smull" else (PMADDWD_LANES, PMADDWD_INTRIN)
    lo, li = sch.split(lane_loop, [None, lanes])
    sch.tensorize(li, intrin)
    sch.unroll(lo)


def local_acc_at(sch, loop, **kw):
    """The ``Acc`` block computed at ``loop`` into a register-tile accumulator (``schedule.ACC_SCOPE``): (the block, its
    loops below ``loop``: each generated only where its extent is > 1)."""
    acc = sch.get_sblock("Acc")
    sch.compute_at(acc, loop, **kw)
    sch.set_scope(acc, 0, ACC_SCOPE)
    loops = sch.get_loops(acc)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    return acc, loops[at + 1:]


def schedule_conv(func, isa: str, *, n_out: int, ow: int, work: int, pack_name: str = "Xp",
                  x_layout: str = "NCHW", y_layout: str = "NCHW"):
    """Output loops (b, n, oh, ow) -> parallel (b x channel block x row) -> column tile ->
    (16 lanes, R columns); the accumulators of a tile (R x 16 int32) are computed at the tile
    with (kh, kw, cb) outside and the (16 x 4) dot product innermost. The epilogue stores a
    tile as R rows of 16 channels (NHWC output: 16 contiguous bytes per pixel) or 16 rows of R
    columns (NCHW)."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    par = work >= PARALLEL_MIN_MACS
    pk = sch.get_sblock(pack_name)
    pl = sch.get_loops(pk)
    if par:
        sch.parallel(sch.fuse(pl[0], pl[1]))
    if x_layout == "NHWC" and len(pl) == 5:  # (cb, g) of a pixel: contiguous bytes, a padded copy
        row = sch.fuse(pl[3], pl[4])
        v = _pow2_divisor(int(sch.get(row).extent), 64)
        if v >= 4:
            sch.vectorize(sch.split(row, [None, v])[1])
    yb = sch.get_sblock("Y")
    if y_layout == "NCHW":
        b, n, oh, owl = sch.get_loops(yb)
    else:
        b, oh, owl, n = sch.get_loops(yb)
    nb, lane = sch.split(n, [None, LANES])
    r = _tile(ow, kernel_form(isa).max_tile)
    owo, owi = sch.split(owl, [None, r])
    sch.reorder(b, nb, oh, owo, *((lane, owi) if y_layout == "NCHW" else (owi, lane)))
    outer = sch.fuse(b, nb, oh)
    if par:
        sch.parallel(outer)
    # loops generated under owo (each only if its extent is > 1): owi, l, then kh, kw, cb, g
    acc, inner = local_acc_at(sch, owo)
    n_red = sum(1 for iv in sch.get(acc).iter_vars if int(iv.iter_type) == 2 and int(iv.dom.extent) > 1)
    spatial, red = inner[:len(inner) - n_red], inner[len(inner) - n_red:]
    sch.reorder(*red[:-1], *spatial, red[-1])
    halves = acc_halves(isa)
    lane_a = spatial[-halves]  # spatial: (owi if r > 1, lanes, halves if 2)
    owi_a = spatial[0] if len(spatial) == 1 + halves else None
    first = red[0]  # red has >= 2 loops: see channel_blocks
    if isa == "smull" and int(sch.get(red[-2]).extent) % 2 == 0:  # 2 input groups per loop trip
        cbo, cbi = sch.split(red[-2], [None, 2])
        sch.unroll(cbi)
        first = cbo if len(red) == 2 else first
    _inner_dot(sch, acc, lane_a, isa, first=first)
    if owi_a is not None:
        sch.unroll(owi_a)
    if n_out % LANES == 0 and y_layout == "NHWC":
        sch.vectorize(lane)
    elif n_out % LANES == 0 and r > 1:
        sch.vectorize(owi)
    return sch.mod["main"]


def schedule_dense(func, isa: str, *, n_out: int, work: int):
    """Output loops (m, n) -> parallel channel blocks -> row tiles; the accumulators of a tile
    (R rows x 16 lanes, R as the conv's column tile) are computed there with the K/4 reduction
    outside the (16 x 4) dot product, so each weight block loaded is used for R rows."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    yb = sch.get_sblock("Y")
    m, n = sch.get_loops(yb)
    nb, lane = sch.split(n, [None, LANES])
    r = _tile(int(sch.get(m).extent), kernel_form(isa).max_tile)
    mo, mi = sch.split(m, [None, r])
    sch.reorder(nb, mo, mi, lane)
    if work >= PARALLEL_MIN_MACS:
        sch.parallel(nb)
    acc, inner = local_acc_at(sch, mo)
    spatial, (kb, g) = inner[:-2], inner[-2:]  # spatial: (mi if r > 1, lanes, halves if 2)
    sch.reorder(kb, *spatial, g)
    _inner_dot(sch, acc, spatial[-acc_halves(isa)], isa, first=kb)
    if r > 1:
        sch.unroll(spatial[0])
    if n_out % LANES == 0:
        sch.vectorize(lane)
    return sch.mod["main"]


def schedule_depthwise(func, *, ow: int, work: int):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    par = work >= PARALLEL_MIN_MACS
    pk = sch.get_sblock("Xp")
    pl = sch.get_loops(pk)
    if par:
        sch.parallel(sch.fuse(pl[0], pl[1]))
    yb = sch.get_sblock("Y")
    b, c, oh, owl = sch.get_loops(yb)
    outer = sch.fuse(b, c, oh)
    if par:
        sch.parallel(outer)
    acc = sch.get_sblock("Acc")
    sch.compute_at(acc, outer, preserve_unit_loops=True)  # (ow, kh, kw) even where one is 1 wide
    sch.set_scope(acc, 0, ACC_SCOPE)
    loops = sch.get_loops(acc)
    owa, kh, kw = loops[-3], loops[-2], loops[-1]
    sch.reorder(kh, kw, owa)
    sch.vectorize(owa)
    init = sch.decompose_reduction(acc, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(owl)
    return sch.mod["main"]


# ---------------------------------------------------------------------------------------------
# kernel builders (PrimFuncs), used by the converters, the tests and the benchmarks


def weight_pack_func(N, C, KH, KW, dtype: str = "int8"):
    from tvm import te

    ins, Wp = weight_pack_te(N, C, KH, KW, dtype)
    return opaque_kernel(te.create_prim_func([*ins, Wp]))


def weight_pack_shape(N, C, KH, KW) -> list[int]:
    return [_cdiv(N, LANES), KH, KW, channel_blocks(C, KH, KW), LANES, GROUP]


def bias_adjust_func(N, C, KH, KW, delta, has_bias):
    from tvm import te

    ins, Bk = bias_adjust_te(N, C, KH, KW, delta, has_bias)
    return opaque_kernel(te.create_prim_func([*ins, Bk]))


def conv_func(isa, x_shape, N, geom: ConvGeometry, rq: Requant, *, in_dtype: str):
    """IntConv2d, group 1 (:func:`conv_te`), scheduled for ``isa``."""
    from tvm import te

    ins, Y = conv_te(x_shape, N, geom, rq, in_dtype=in_dtype, isa=isa)
    f = te.create_prim_func([*ins, Y])
    B, C, H, W = x_shape
    OH, OW = geom.output_shape(H, W)
    work = B * N * OH * OW * geom.taps * C
    return opaque_kernel(schedule_conv(f, isa, n_out=N, ow=OW, work=work, x_layout=geom.x_layout,
                                       y_layout=geom.y_layout), ops=2 * work)


def depthwise_func(x_shape, geom: ConvGeometry, rq: Requant, *, in_dtype: str, lanes: int = 16):
    """Depthwise IntConv2d: channels-last (:func:`depthwise_nhwc_te`) where either activation is
    NHWC, else NCHW (:func:`depthwise_te`). ``lanes``: int32 lanes of the target's vectors."""
    from tvm import te

    B, C, H, W = x_shape
    OH, OW = geom.output_shape(H, W)
    work = B * C * OH * OW * geom.taps
    if "NHWC" in (geom.x_layout, geom.y_layout):
        ins, Y = depthwise_nhwc_te(x_shape, geom, rq, in_dtype=in_dtype)
        f = te.create_prim_func([*ins, Y])
        return opaque_kernel(schedule_depthwise_nhwc(f, channels=C, ow=OW, work=work, y_layout=geom.y_layout,
                                                     lanes=lanes), ops=2 * work)
    ins, Y = depthwise_te(x_shape, geom, rq, in_dtype=in_dtype)
    f = te.create_prim_func([*ins, Y])
    return opaque_kernel(schedule_depthwise(f, ow=OW, work=work), ops=2 * work)


def max_pool_func(B, C, H, W, kernel_shape, pads, strides, *, dtype):
    from tvm import te

    ins, Y = max_pool_te(B, C, H, W, kernel_shape, pads, strides, dtype=dtype)
    f = te.create_prim_func([*ins, Y])
    OH, OW = conv_output_shape(H, W, kernel_shape, pads, strides, (1, 1))
    return opaque_kernel(schedule_max_pool(f, ow=OW, work=B * C * H * W))


def global_avg_pool_func(x_shape, rq: Requant, *, in_dtype: str, x_layout: str, per_channel: bool):
    """IntGlobalAveragePool (:func:`global_avg_pool_te`)."""
    from tvm import te

    ins, Y = global_avg_pool_te(x_shape, rq, in_dtype=in_dtype, x_layout=x_layout, per_channel=per_channel)
    f = te.create_prim_func([*ins, Y])
    B, C, H, W = x_shape
    return opaque_kernel(schedule_global_avg_pool(f, x_layout=x_layout, channels=C, work=B * C * H * W))


def int_max_pool_supported(shape, dtype: str, attr: dict) -> bool:
    """Whether :func:`max_pool_func` computes this ONNX MaxPool (2-D, integer codes, no
    dilation/ceil_mode/auto_pad/storage_order, pads < kernel)."""
    ks = [int(v) for v in attr.get("kernel_shape", ())]
    pads = [int(v) for v in attr.get("pads", (0,) * 2 * len(ks))]
    ap = attr.get("auto_pad", "NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else str(ap)
    return (dtype in ("uint8", "int8") and len(shape) == 4 and len(ks) == 2 and len(pads) == 4
            and all(int(d) == 1 for d in attr.get("dilations", (1, 1))) and not int(attr.get("ceil_mode", 0))
            and not int(attr.get("storage_order", 0)) and ap in ("NOTSET", "")
            and all(p < k for p, k in zip(pads, ks + ks)))


def dense_func(isa, M, K, N, rq: Requant | None, *, in_dtype: str):
    """IntDense (:func:`dense_te`; ``rq=None``: int32 output), scheduled for ``isa``."""
    from tvm import te

    ins, Y = dense_te(M, K, N, rq, in_dtype=in_dtype, isa=isa)
    f = te.create_prim_func([*ins, Y])
    return opaque_kernel(schedule_dense(f, isa, n_out=N, work=M * N * K), ops=2 * M * N * K)


# ---------------------------------------------------------------------------------------------
# converters (ONNX ai.optc ops -> Relax call_tir)


def current_isa() -> str:
    """The instruction set of the target being built (``lower.build`` imports the model inside
    ``with target``). Only LLVM CPU targets have integer kernels."""
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is None:
        raise ValueError("optc integer ops need a CPU target in scope (with target: ...) when imported")
    if tgt.kind.name != "llvm":
        raise ValueError(f"optc integer ops (IntConv2d/IntDense) have kernels for CPUs only, not {tgt.kind.name}: "
                         "leave integerize out of the pipeline for this target")
    return isa_of(tgt)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _call(bb, func, name: str, args: list, shape: list[int], dtype: str):
    return bb.emit(call_kernel(bb, func, name, args, shape, dtype))


def kernel_bias(bb, w4, bias, in_dtype: str, isa: str):
    """The op's bias, plus -/+128 * sum(W[n]) when the kernel flips the activations' sign bit."""
    n, c, kh, kw = static_shape(w4)
    kd = kernel_dtype(isa)
    if in_dtype == kd or kd == "int16":  # int16: the codes are widened, not shifted
        return bias
    # s8 input, u8 kernel: x = x_k - 128 -> sum x w = sum x_k w - 128 sum w
    # u8 input, s8 kernel: x = x_k + 128 -> sum x w = sum x_k w + 128 sum w
    delta = -128 if kd == "uint8" else 128
    return _call(bb, bias_adjust_func(n, c, kh, kw, delta, True), "optc_int_bias", [w4, bias], [n], "int32")


def _dense(bb, x, w, bias, requant: list, rq: Requant | None):
    """``x [..., K]`` (leading dimensions flattened into the kernel's rows and restored after)
    times ``w [N, K]`` int8 through :func:`dense_func`; ``rq=None``: int32 accumulators."""
    from tvm import relax

    isa = current_isa()
    *lead, k = static_shape(x)
    n = static_shape(w)[0]
    m = 1
    for d in lead:
        m *= d
    x2 = x if len(lead) == 1 else bb.emit(relax.op.reshape(x, [m, k]))
    in_dtype = _dtype(x)
    w4 = bb.emit(relax.op.reshape(w, [n, k, 1, 1]))
    wd = weight_dtype(isa)
    wp = _call(bb, weight_pack_func(n, k, 1, 1, wd), "optc_int_weight_pack", [w4], weight_pack_shape(n, k, 1, 1), wd)
    bk = kernel_bias(bb, w4, bias, in_dtype, isa)
    func = dense_func(isa, m, k, n, rq, in_dtype=in_dtype)
    y = call_kernel(bb, func, "optc_int_dense", [x2, wp, bk, *requant], [m, n], rq.out_dtype if rq else "int32")
    return y if len(lead) == 1 else relax.op.reshape(bb.emit(y), [*lead, n])


def _dense_weight_zero_point(bb, x, w, bias, mult, shift, w_zp, rq: Requant):
    """IntDense with ``W_zero_point``: the dense kernel's int32 ``sum_k x w + B``, minus
    ``W_zero_point[n] * sum_k x`` (row sums of the codes), then the op's requantization in
    int64 Relax ops (the same arithmetic as :func:`_requant`)."""
    from tvm import relax

    acc = bb.emit(_dense(bb, x, w, bias, [], None))
    rows = relax.op.sum(relax.op.astype(x, "int32"), axis=[-1], keepdims=True)
    acc = relax.op.astype(relax.op.subtract(acc, relax.op.multiply(rows, w_zp)), "int64")
    s64 = bb.emit(relax.op.astype(shift, "int64"))
    one = relax.const(1, "int64")
    half = relax.op.left_shift(relax.op.broadcast_to(one, static_shape(s64)), relax.op.subtract(s64, one))
    y = relax.op.right_shift(relax.op.add(relax.op.multiply(acc, relax.op.astype(mult, "int64")), half), s64)
    y = relax.op.add(y, relax.const(rq.y_zero_point, "int64"))
    return relax.op.astype(relax.op.clip(y, rq.out_min, rq.out_max), rq.out_dtype)


def _const_value(expr, params=None):
    """The numpy value of a Relax constant, or of a weight the importer keeps as a parameter
    (``params``: the converter's argument, read without binding it); None for anything else."""
    import tvm
    from tvm import relax

    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if params is not None and isinstance(expr, relax.Var) and expr.name in params[1]:
        value = params[1][expr.name][1]
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return None


def _optc_matmul_integer(a, b, a_zp, b_zp) -> str | None:
    """Why ONNX MatMulInteger(a, b, a_zp, b_zp) does not go to optc's dense kernel (None: it
    does): an LLVM CPU target, static ``a [..., M, K]`` and ``b [K, N]`` of 8-bit codes, a
    per-tensor ``a_zp``, ``b_zp`` per tensor or per column."""
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is None or tgt.kind.name != "llvm":
        return "not an LLVM CPU target"
    try:
        a_shape, b_shape = static_shape(a), static_shape(b)
        zps = [static_shape(z) for z in (a_zp, b_zp) if z is not None]
    except Exception:  # noqa: BLE001 - symbolic shapes: the stock converter
        return "symbolic shape"
    codes = ("uint8", "int8")
    if len(a_shape) < 2 or len(b_shape) != 2 or _dtype(a) not in codes or _dtype(b) not in codes:
        return "shapes or types"
    if a_zp is not None and int(np.prod(zps[0])) != 1:
        return "per-row A zero point"
    if b_zp is not None and int(np.prod(zps[-1])) not in (1, b_shape[1]):
        return "B zero point shape"
    return None


FP32_EXACT = 1 << 24  # integers up to this magnitude (and every partial sum below it) are exact in float32


def _weight_spread(b, b_zp, axis: int, params=None) -> int:
    """``max |b - b_zp|`` over a constant weight (per-channel zero points along ``axis``);
    the type's worst case (255) when either is not a constant."""
    bv = _const_value(b, params)
    zv = np.zeros(1) if b_zp is None else _const_value(b_zp, params)
    if bv is None or zv is None:
        return 255
    shape = [1] * bv.ndim
    shape[axis] = -1
    zv = np.asarray(zv, np.int64).reshape(shape if zv.size > 1 else [1] * bv.ndim)
    return int(np.abs(bv.astype(np.int64) - zv).max(initial=0))


def _exact_in_fp32(terms: int, spread: int) -> bool:
    """Whether a sum of ``terms`` products ``(a - z_a)(b - z_b)``, ``|a - z_a| <= 255`` and
    ``|b - z_b| <= spread``, is exact in float32 in any summation order: every partial sum is
    an integer below 2^24."""
    return terms * 255 * spread < FP32_EXACT


def _centered_f32(bb, v, zp, zp_shape: list[int] | None = None):
    """``float32(v) - float32(zp)`` (``zp`` reshaped to ``zp_shape`` when given)."""
    from tvm import relax

    vf = relax.op.astype(v, "float32")
    if zp is None:
        return bb.emit(vf)
    z = bb.emit(relax.op.astype(zp, "float32"))
    return bb.emit(relax.op.subtract(vf, relax.op.reshape(z, zp_shape if zp_shape is not None else [])))


def _matmul_integer(bb, a, b, a_zp, b_zp, params=None):
    """ONNX MatMulInteger on a CPU, exact: in float32 (optc's fp32 matmul schedules) where the
    bound :func:`_exact_in_fp32` proves every partial sum exact and the target has neither an
    int8 dot product nor AVX2 (``generic``; ``smull``: ARM without dotprod, where the float FMA
    path was the faster one against the int32 fallback; not re-measured against the smull
    kernel), else on the int8 dense kernel (:func:`_matmul_integer_kernel`; on AVX2 the
    ``vpmaddwd`` kernel is 1.5x the fp32 path: 128 x 384 x 1536, one Zen 3 core)."""
    from tvm import relax

    k, n = static_shape(b)
    if current_isa() in ("generic", "smull") and _exact_in_fp32(k, _weight_spread(b, b_zp, 1, params)):
        af = _centered_f32(bb, a, a_zp)
        bf = _centered_f32(bb, b, b_zp, None if b_zp is None or int(np.prod(static_shape(b_zp))) == 1 else [1, n])
        return relax.op.astype(relax.op.matmul(af, bf), "int32")
    return _matmul_integer_kernel(bb, a, b, a_zp, b_zp)


def _matmul_integer_kernel(bb, a, b, a_zp, b_zp):
    """``(a - a_zp) @ (b - b_zp)`` in int32 on optc's dense kernel. With ``b8 = b`` (int8) or
    ``b - 128`` (uint8, so the weights are int8) and ``zb = b_zp`` or ``b_zp - 128``:
    ``acc[m, n] = sum_k a b8 + (K za zb[n] - za colsum(b8)[n]) - zb[n] rowsum(a)[m]``; the
    kernel computes the first sum plus the bias in parentheses (exact int32; the row term only
    when ``zb`` is not the constant 0)."""
    from tvm import relax

    k, _ = static_shape(b)
    i32 = "int32"
    shift = 128 if _dtype(b) == "uint8" else 0
    b8 = b if not shift else bb.emit(
        relax.op.astype(relax.op.subtract(relax.op.astype(b, i32), relax.const(shift, i32)), "int8"))
    za = relax.const(0, i32) if a_zp is None else bb.emit(relax.op.reshape(bb.emit(relax.op.astype(a_zp, i32)), []))
    zb = relax.const(-shift, i32) if b_zp is None else bb.emit(
        relax.op.subtract(relax.op.reshape(bb.emit(relax.op.astype(b_zp, i32)), [-1]), relax.const(shift, i32)))
    colsum = bb.emit(relax.op.sum(relax.op.astype(b8, i32), axis=[0]))
    bias = bb.emit(relax.op.subtract(relax.op.multiply(relax.op.multiply(za, zb), relax.const(k, i32)),
                                     relax.op.multiply(za, colsum)))
    y = bb.emit(_dense(bb, a, bb.emit(relax.op.permute_dims(b8, [1, 0])), bias, [], None))
    zb_value = _const_value(zb) if b_zp is None else (None if _const_value(b_zp) is None
                                                       else _const_value(b_zp).astype(np.int64) - shift)
    if zb_value is not None and not np.any(zb_value):
        return y
    rowsum = relax.op.sum(relax.op.astype(a, i32), axis=[-1], keepdims=True)
    return relax.op.subtract(y, relax.op.multiply(rowsum, zb))


def _conv_integer(bb, x, w, x_zp, w_zp, attr: dict, params=None):
    """ONNX ConvInteger: ``conv(x - x_zp, w - w_zp)``, in float32 where :func:`_exact_in_fp32`
    proves it exact (optc's fp32 conv schedules), else in int32 (:func:`_int_conv`)."""
    from tvm import relax

    rank = len(static_shape(w))
    terms = int(np.prod(static_shape(w)[1:]))
    if _exact_in_fp32(terms, _weight_spread(w, w_zp, 0, params)):
        xf = _centered_f32(bb, x, x_zp)
        per_channel = w_zp is not None and int(np.prod(static_shape(w_zp))) > 1
        wf = _centered_f32(bb, w, w_zp, [-1] + [1] * (rank - 1) if per_channel else None)
        return relax.op.astype(_int_conv(bb, xf, wf, attr, rank - 2, "float32"), "int32")
    xi = relax.op.astype(x, "int32")
    wi = relax.op.astype(w, "int32")
    if x_zp is not None:
        xi = relax.op.subtract(xi, relax.op.reshape(bb.emit(relax.op.astype(x_zp, "int32")), []))
    if w_zp is not None:
        zw = bb.emit(relax.op.astype(w_zp, "int32"))
        wi = relax.op.subtract(wi, relax.op.reshape(zw, [-1] + [1] * (rank - 1)))
    return _int_conv(bb, bb.emit(xi), bb.emit(wi), attr, rank - 2)


def _int_conv(bb, x, w, attr: dict, dims: int, out_dtype: str = "int32"):
    """Relax convolution (1-D or 2-D) of ONNX Conv attributes (explicit pads only)."""
    from tvm import relax

    if dims not in (1, 2):
        raise ValueError(f"ConvInteger with {dims} spatial dimensions (1 or 2 supported)")
    ap = attr.get("auto_pad", b"NOTSET")
    if (ap.decode() if isinstance(ap, bytes) else ap) not in ("NOTSET", ""):
        raise ValueError("ConvInteger with auto_pad (explicit pads only)")
    pads = [int(v) for v in attr.get("pads", [0] * 2 * dims)]
    strides = [int(v) for v in attr.get("strides", [1] * dims)]
    dil = [int(v) for v in attr.get("dilations", [1] * dims)]
    group = int(attr.get("group", 1))
    conv = relax.op.nn.conv2d if dims == 2 else relax.op.nn.conv1d
    return conv(x, w, strides=strides, padding=pads, dilation=dil, groups=group, out_dtype=out_dtype)


def dynamic_quantize(bb, x):
    """ONNX DynamicQuantizeLinear of ``x`` as onnxruntime computes it (uint8 codes, per tensor:
    range widened to hold 0, ``scale = (max - min) / 255`` or 1 where max = min, zero point
    rounded half to even): the Relax ``(codes, scale, zero point)``."""
    from tvm import relax

    dt = _dtype(x)
    zero = relax.const(0, dt)
    x_max = bb.emit(relax.op.maximum(zero, relax.op.max(x)))
    x_min = bb.emit(relax.op.minimum(zero, relax.op.min(x)))
    spread = bb.emit(relax.op.subtract(x_max, x_min))
    scale = bb.emit(relax.op.where(relax.op.equal(spread, zero), relax.const(1.0, dt),
                                   relax.op.divide(spread, relax.const(255.0, dt))))
    zp_fp = relax.op.subtract(zero, relax.op.divide(x_min, scale))
    zp = bb.emit(relax.op.astype(relax.op.round(relax.op.clip(zp_fp, 0, 255)), "uint8"))
    return bb.emit(relax.op.quantize(x, scale, zp, axis=0, out_dtype="uint8")), scale, zp


def _register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import MaxPool as StockMaxPool
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter as Base

    @register_converter("", "MaxPool")
    class MaxPool(StockMaxPool):
        """MaxPool on integer codes (what ``integerize`` writes) on an LLVM CPU target: optc's
        kernel (:func:`max_pool_func`); everything else: TVM's converter."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            import tvm

            x = inputs[0]
            tgt = tvm.target.Target.current(allow_none=True)
            try:
                shape, dtype = static_shape(x), _dtype(x)
            except Exception:  # noqa: BLE001 - symbolic shape: the stock converter
                shape, dtype = [], ""
            if tgt is None or tgt.kind.name != "llvm" or not int_max_pool_supported(shape, dtype, attr):
                return super()._impl_v1(bb, inputs, attr, params)
            b, c, h, w = shape
            ks, pads, strides, _ = conv_params(attr)  # dilation 1 (int_max_pool_supported)
            oh, ow = conv_output_shape(h, w, ks, pads, strides, (1, 1))
            func = max_pool_func(b, c, h, w, ks, pads, strides, dtype=dtype)
            return call_kernel(bb, func, "optc_int_max_pool", [x], [b, c, oh, ow], dtype)

    from tvm.relax.frontend.onnx.onnx_frontend import MatMulInteger as StockMatMulInteger

    @register_converter("", "MatMulInteger")
    class MatMulInteger(StockMatMulInteger):
        """ONNX MatMulInteger (quantize_dynamic's MatMul) on optc's dense kernel (VNNI / sdot /
        int32 multiply-add) where :func:`_optc_matmul_integer` allows; else TVM's converter
        (a plain int32 matmul). Exact int32 either way."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            a, b = inputs[0], inputs[1]
            a_zp = inputs[2] if len(inputs) > 2 else None
            b_zp = inputs[3] if len(inputs) > 3 else None
            if _optc_matmul_integer(a, b, a_zp, b_zp) is not None:
                return super()._impl_v10(bb, inputs, attr, params)
            return _matmul_integer(bb, a, b, a_zp, b_zp, params)

    @register_converter("", "DynamicQuantizeLinear")
    class DynamicQuantizeLinear(Base):
        """ONNX DynamicQuantizeLinear as onnxruntime computes it: TVM's converter divided by a
        scale of 0 for a constant input (max = min = 0), where onnxruntime takes scale 1
        (``scale = max == min ? 1 : (max - min) / 255``), so the codes and zero point were
        garbage for an all-zero activation."""

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            return relax.Tuple(list(dynamic_quantize(bb, inputs[0])))

    @register_converter("", "ConvInteger")
    class ConvInteger(Base):
        """ONNX ConvInteger (TVM has no converter): ``conv(x - x_zp, w - w_zp)`` in int32
        (Relax ``conv2d``/``conv1d`` with ``out_dtype`` int32 on the zero-point-shifted
        operands; padding then reads 0 = the real zero, as the spec's padding with the zero
        point does). Exact; per-output-channel ``w_zero_point`` [M] broadcast on axis 0."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x, w = inputs[0], inputs[1]
            x_zp = inputs[2] if len(inputs) > 2 else None
            w_zp = inputs[3] if len(inputs) > 3 else None
            return _conv_integer(bb, x, w, x_zp, w_zp, attr, params)


register_if_available(_register)


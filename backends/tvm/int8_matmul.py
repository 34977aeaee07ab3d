"""The kernel of optc's ``IntMatMul`` (``ai.optc``, :mod:`optc.passes.ops.int_mat_mul`): a
batched MatMul of two 8-bit activation tensors (attention's ``Q @ K^T``, ``softmax(.) @ V``),
int32 accumulation, the requantization of :mod:`.int8` (:func:`.int8._requant`).

Why a kernel of its own: the dense kernels of :mod:`.int8` pack a *constant* weight once (a
``call_tir`` folded at compile time); here both operands change on every call and there is one
``B`` per batch element (per attention head).

Two forms, both exact (integer arithmetic only; ``tests/test_int_matmul.py`` checks them bit for
bit against the numpy reference, the int32 one on aarch64 under qemu): the ``pairs`` form on x86
with AVX2 (below), the int32 form on every other LLVM CPU (ARM, x86 without AVX2):

* the Relax glue (:func:`int_matmul`) broadcasts the batch dimensions (``[..., M, K]`` x
  ``[..., K, N]``, as ONNX MatMul) and flattens them into one batch axis ``Bt``;
* ``Bc [Bt, K, Np]`` int32 = ``B - zp_b``, the columns padded with zeros to ``Np`` (a multiple
  of :data:`VEC`) so the inner loop is always a whole vector;
* ``Acc[b, m, n] = sum_k (A[b, m, k] - zp_a) * Bc[b, k, n]``: loops ``b, m, n_outer, k,
  n_inner``, the :data:`VEC` accumulators of one ``n_outer`` tile in registers (a
  ``schedule.ACC_SCOPE`` buffer), the inner loop vectorized (``vpmulld`` + ``vpaddd`` on AVX2, ``mla`` on NEON);
  ``(b, m)`` fused and parallel when the work is large enough (the heads x rows of attention);
* ``Y`` (requantization, one int64 multiply-shift per output) computed per tile right after it.

``pairs`` form (x86 with AVX2, :func:`uses_pairs`): the centered codes as **int16** (``|v - zp|
<= 255``), ``A`` padded to an even ``K``, ``B`` as ``Bp [Bt, K/2, Np, 2]`` (each column's
pair of rows ``2kp, 2kp+1`` adjacent), and the inner block (8 columns x 2 rows) tensorized with
:data:`PAIRS_INTRIN`: one ``vpmaddwd ymm`` (the 2 ``A`` codes broadcast as one 32-bit value
against 8 column pairs of ``B``: 16 products added in pairs into 8 int32, exact: a pair of
products is below 2^17) plus a ``vpaddd``; a register tile of :data:`ROWS` rows x 1 or 2 vectors
of columns (2 from ``K`` >= :data:`COLS_LONG_K`), so each ``B`` load serves 4 rows. ``Bp`` is
packed on every call (both operands change), ``Ac`` widened to int16. Measured on one Zen core
(AVX2, 1 thread, ``time_evaluator``, 12 heads, seq 128, head 32): ``Q @ K^T`` 0.247 ms vs 0.256 ms
for optc's fp32 MatMul of the same shapes, ``P @ V`` 0.147 vs 0.168 ms (the int32 form: 0.95 and
0.91 ms on a busier machine, 1.4-2.4x the fp32 time then).
"""

from __future__ import annotations

import numpy as np

from optc.passes.quant.int_ops import Requant

from .lower import call_kernel, opaque_kernel, static_shape
from .schedule import ACC_SCOPE
from .tensor_intrin import dot_desc, intrin_func, operands

VEC = 8  # int32 lanes per inner vector (one ymm; two q registers on NEON)
ROWS = 4  # pairs form: rows of A per register tile
COLS_LONG_K = 64  # pairs form: from this K on, 2 VEC-column vectors per register tile (8 ymm
# accumulators, each B load used twice as often); below it 1 (measured: attention's QK^T, K = 32,
# was 11 % faster with 1, P @ V, K = 128, 26 % faster with 2; 1 thread, one Zen core)


def _cols(k: int) -> int:
    return 2 if k >= COLS_LONG_K else 1
PAIRS_INTRIN = "optc_matmul_8x2_i16i16i32_pmaddwd"
PARALLEL_MIN_MACS = 1 << 18  # less work than this stays single-threaded (as int8.PARALLEL_MIN_MACS)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def matmul_te(bt: int, m: int, k: int, n: int, rq: Requant, dtypes: tuple[str, str], zps: tuple[int, int]):
    """TE tensors of the batched kernel: inputs ``A [bt, m, k]``, ``B [bt, k, n]`` (codes of
    ``dtypes``), ``multiplier``/``shift`` ``[1]``; output ``Y [bt, m, n]`` of ``rq.out_dtype``."""
    from tvm import te, tirx

    from .int8 import _requant

    za, zb = (tirx.const(int(z), "int32") for z in zps)
    np_ = _cdiv(n, VEC) * VEC
    A = te.placeholder((bt, m, k), dtypes[0], name="A")
    B = te.placeholder((bt, k, n), dtypes[1], name="B")
    Mu = te.placeholder((1,), "int32", name="multiplier")
    S = te.placeholder((1,), "int32", name="shift")
    Bc = te.compute((bt, k, np_), lambda b, kk, j: tirx.if_then_else(
        j < n, B[b, kk, tirx.min(j, n - 1)].astype("int32") - zb, tirx.const(0, "int32")), name="Bc")
    rk = te.reduce_axis((0, k), "k")
    Acc = te.compute((bt, m, np_), lambda b, i, j: te.sum((A[b, i, rk].astype("int32") - za) * Bc[b, rk, j],
                                                         axis=[rk]), name="Acc")
    Y = te.compute((bt, m, n), lambda b, i, j: _requant(Acc[b, i, j], Mu[0], S[0], rq), name="Y")
    return [A, B, Mu, S], Y


def schedule_matmul(func, *, work: int):
    """Register tiles of :data:`VEC` output columns over the whole reduction (see the module
    docstring); ``(b, m)`` parallel above :data:`PARALLEL_MIN_MACS`."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    y, bc = sch.get_sblock("Y"), sch.get_sblock("Bc")
    b, i, j = sch.get_loops(y)
    n = int(sch.get(j).extent)
    jo, ji = sch.split(j, [None, VEC])
    bm = sch.fuse(b, i)
    if work >= PARALLEL_MIN_MACS:
        sch.parallel(bm)
    acc = sch.get_sblock("Acc")
    sch.compute_at(acc, jo)
    sch.set_scope(acc, 0, ACC_SCOPE)
    lane, k = sch.get_loops(acc)[-2:]
    sch.reorder(k, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(acc, k)
    sch.vectorize(sch.get_loops(init)[-1])
    if n % VEC == 0:
        sch.vectorize(ji)
    bj = sch.get_loops(bc)[-1]
    sch.vectorize(sch.split(bj, [None, VEC])[1])
    return sch.mod["main"]


def uses_pairs(isa: str) -> bool:
    """Whether the kernel takes the int16 ``vpmaddwd`` form (x86 with AVX2: ``avx2``, ``vnni``)."""
    return isa in ("avx2", "vnni")


def _pairs_intrin() -> None:
    """Register :data:`PAIRS_INTRIN`: ``C[i] += A[0] B[i, 0] + A[1] B[i, 1]`` for 8 lanes ``i``
    (int16 operands, int32 accumulators in ``schedule.ACC_SCOPE``) as one ``llvm.x86.avx2.pmadd.wd``."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(PAIRS_INTRIN)
        return
    except Exception:  # noqa: BLE001 - not registered yet
        pass

    def impl(A, B, C) -> None:
        a_i32 = T.reinterpret("int32", A.vload([0], "int16x2"))
        T.buffer_store(C, C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx2.pmadd.wd", T.reinterpret("int16x16", T.broadcast(a_i32, 8)),
            B.vload([0, 0], "int16x16")), [T.ramp(T.int32(0), 1, 8)])

    ops = operands(((2,), "int16"), ((8, 2), "int16"), (8,))
    TensorIntrin.register(PAIRS_INTRIN, intrin_func(ops, dot_desc), intrin_func(ops, impl))


def matmul_pairs_te(bt: int, m: int, k: int, n: int, rq: Requant, dtypes: tuple[str, str], zps: tuple[int, int]):
    """TE tensors of the ``pairs`` form (module docstring): the same inputs and ``Y`` as
    :func:`matmul_te`, through the int16 ``Ac [bt, m, 2 * K2]`` and ``Bp [bt, K2, Np, 2]``."""
    from tvm import te, tirx

    from .int8 import _requant

    za, zb = (tirx.const(int(z), "int32") for z in zps)
    k2 = max(2, _cdiv(k, 2))  # >= 2: the reduction keeps its loop
    cols = _cols(2 * k2)  # as the schedule reads it back
    np_ = _cdiv(n, VEC * cols) * VEC * cols
    A = te.placeholder((bt, m, k), dtypes[0], name="A")
    B = te.placeholder((bt, k, n), dtypes[1], name="B")
    Mu = te.placeholder((1,), "int32", name="multiplier")
    S = te.placeholder((1,), "int32", name="shift")
    zero = tirx.const(0, "int16")

    def a_code(b, i, kk):
        v = (A[b, i, tirx.min(kk, k - 1)].astype("int32") - za).astype("int16")
        return v if 2 * k2 == k else tirx.if_then_else(kk < k, v, zero)

    def b_code(b, kp, j, h):
        v = (B[b, tirx.min(kp * 2 + h, k - 1), tirx.min(j, n - 1)].astype("int32") - zb).astype("int16")
        return v if 2 * k2 == k and np_ == n else tirx.if_then_else(tirx.all(kp * 2 + h < k, j < n), v, zero)

    Ac = te.compute((bt, m, 2 * k2), a_code, name="Ac")
    Bp = te.compute((bt, k2, np_, 2), b_code, name="Bp")
    rk, rh = te.reduce_axis((0, k2), "kp"), te.reduce_axis((0, 2), "h")
    Acc = te.compute((bt, m, np_), lambda b, i, j: te.sum(
        Ac[b, i, rk * 2 + rh].astype("int32") * Bp[b, rk, j, rh].astype("int32"), axis=[rk, rh]), name="Acc")
    Y = te.compute((bt, m, n), lambda b, i, j: _requant(Acc[b, i, j], Mu[0], S[0], rq), name="Y")
    return [A, B, Mu, S], Y


def schedule_pairs(func, *, work: int):
    """``(batch, row tile)`` parallel, then column vectors; the ``ROWS x VEC`` accumulators of
    a tile in registers over the whole reduction, the (8 x 2) block tensorized."""
    import tvm

    from .int8 import _pow2_divisor, _tile, local_acc_at

    sch = tvm.s_tir.Schedule(func)
    y = sch.get_sblock("Y")
    b, i, j = sch.get_loops(y)
    n = int(sch.get(j).extent)
    io, ii = sch.split(i, [None, _tile(int(sch.get(i).extent), ROWS)])
    k = int(sch.get(sch.get_loops(sch.get_sblock("Acc"))[-2]).extent) * 2  # kp * 2 (K rounded up to even)
    cols = _cols(k)
    jo, ji = sch.split(j, [None, VEC * cols])
    sch.reorder(b, io, jo, ii, ji)
    outer = sch.fuse(b, io)
    if work >= PARALLEL_MIN_MACS:
        sch.parallel(outer)
    acc, inner = local_acc_at(sch, jo)
    *rows, aj, kp, h = inner  # rows: [ii] unless the tile has one row (loop omitted)
    ajo, aji = sch.split(aj, [cols, VEC])
    sch.reorder(kp, *rows, ajo, aji, h)
    init = sch.decompose_reduction(acc, kp)
    sch.vectorize(sch.get_loops(init)[-1])
    _pairs_intrin()
    sch.tensorize(aji, PAIRS_INTRIN)
    for r in (*rows, ajo):
        sch.unroll(r)
    if n % (VEC * cols) == 0:
        sch.vectorize(ji)
    # the packs: Ac a widening copy (vectorized); Bp interleaves row pairs, left to LLVM's loop
    # vectorizer (an interleaved store group; TVM's vectorize would scalarize the strided stores)
    ac_rows = sch.fuse(*sch.get_loops(sch.get_sblock("Ac"))[-2:])
    sch.vectorize(sch.split(ac_rows, [None, _pow2_divisor(int(sch.get(ac_rows).extent), 16)])[1])
    sch.unroll(sch.get_loops(sch.get_sblock("Bp"))[-1])
    return sch.mod["main"]


def matmul_func(bt: int, m: int, k: int, n: int, rq: Requant, dtypes: tuple[str, str], zps: tuple[int, int]):
    """The scheduled kernel for the target in scope: the ``pairs`` form where
    :func:`uses_pairs`, else the int32 one (:func:`matmul_te`, :func:`schedule_matmul`)."""
    from tvm import te

    from .int8 import current_isa

    work = bt * m * n * k
    if uses_pairs(current_isa()):
        ins, Y = matmul_pairs_te(bt, m, k, n, rq, dtypes, zps)
        return opaque_kernel(schedule_pairs(te.create_prim_func([*ins, Y]), work=work), ops=2 * work)
    ins, Y = matmul_te(bt, m, k, n, rq, dtypes, zps)
    return opaque_kernel(schedule_matmul(te.create_prim_func([*ins, Y]), work=work), ops=2 * work)


def _batched(bb, x, batch: list[int], rows: int, cols: int):
    """``x [..., rows, cols]`` broadcast to ``[*batch, rows, cols]`` and flattened to
    ``[prod(batch), rows, cols]`` (no copy where it already has that batch shape)."""
    from tvm import relax

    shape = static_shape(x)
    if shape[:-2] != batch:
        x = bb.emit(relax.op.broadcast_to(x, [*batch, rows, cols]))
    bt = int(np.prod(batch)) if batch else 1
    return x if len(shape) == 3 and shape[:-2] == batch else bb.emit(relax.op.reshape(x, [bt, rows, cols]))


def int_matmul(bb, a, b, requant: list, rq: Requant, zps: tuple[int, int]):
    """IntMatMul of ``a [..., M, K]`` and ``b [..., K, N]`` (batch dimensions broadcast):
    the kernel on the flattened batch, reshaped back to ``[*batch, M, N]``."""
    from tvm import relax

    a_shape, b_shape = static_shape(a), static_shape(b)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ValueError("IntMatMul: operands of rank >= 2 only")
    (m, k), n = a_shape[-2:], b_shape[-1]
    batch = list(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    bt = int(np.prod(batch)) if batch else 1
    a3, b3 = _batched(bb, a, batch, m, k), _batched(bb, b, batch, k, n)
    func = matmul_func(bt, m, k, n, rq, (str(a.ty.dtype), str(b.ty.dtype)), zps)
    y = call_kernel(bb, func, "optc_int_matmul", [a3, b3, *requant], [bt, m, n], rq.out_dtype)
    return y if len(batch) == 1 else relax.op.reshape(bb.emit(y), [*batch, m, n])

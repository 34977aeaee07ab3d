"""The PrimFuncs of optc's tensor intrinsics (TVM ``TensorIntrin``: a description that
``tensorize`` matches against a scheduled block, and the implementation put in its place).

Why one builder: the description and the implementation of an intrinsic must have the same
buffer signature (shapes, dtypes, scopes, offset factor) and the same root-block regions, and
every intrinsic of :mod:`.int8` and :mod:`.int8_matmul` has the same form (``A`` the activation
operand, ``B`` the weight block, ``C`` the int32 accumulators in ``local`` scope). Written in
TVMScript, each function repeated that signature; here :func:`intrin_func` writes it once from
the operands' list (TVMScript's IR builder, ``tvm.script.ir_builder``), and a body function
``body(A, B, C)`` gives each function its computation, emitting statements with the same
``tvm.script.tirx`` calls (``T.grid``, ``T.sblock``, ``T.buffer_store``, ...) in builder mode.
:func:`dot_desc` and :func:`pairs_desc` are the two descriptions the kernels share; the
implementations (one LLVM intrinsic each) stay with their kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # TVM is imported only where a kernel is built
    from tvm.tirx import PrimFunc

# (shape, dtype, scope) of one operand buffer
Operand = tuple[tuple[int, ...], str, str]


def operands(a: tuple[tuple[int, ...], str], b: tuple[tuple[int, ...], str],
             c_shape: tuple[int, ...]) -> tuple[Operand, Operand, Operand]:
    """The operands of an intrinsic: ``A`` and ``B`` (shape, dtype) in global scope, the int32
    accumulators ``C`` (``c_shape``) in the scope of a register tile (``schedule.ACC_SCOPE``)."""
    from .schedule import ACC_SCOPE

    return (*a, "global"), (*b, "global"), (c_shape, "int32", ACC_SCOPE)


def intrin_func(ops: tuple[Operand, Operand, Operand], body: Callable[[Any, Any, Any], None]) -> PrimFunc:
    """A PrimFunc ``(a, b, c)`` of buffers ``A``, ``B``, ``C`` (``ops``: shape, dtype, scope;
    offset factor 1) whose root block reads ``C``, ``A``, ``B`` whole, writes ``C`` whole and
    holds what ``body(A, B, C)`` emits."""
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as builder

    with IRBuilder() as ib:
        with builder.prim_func(s_tir=True):
            bufs = []
            for name, (shape, dtype, scope) in zip("abc", ops):
                buf = T.match_buffer(T.arg(name, T.handle()), shape, dtype, offset_factor=1, scope=scope)
                bufs.append(IRBuilder.name(name.upper(), buf))
            a, b, c = (buf[tuple(slice(0, n) for n in shape)] for buf, (shape, _, _) in zip(bufs, ops))
            with T.sblock("root"):
                T.reads(c, a, b)
                T.writes(c)
                body(*bufs)
    return ib.get()


def dot_desc(A, B, C) -> None:
    """``C[i] += A[k] B[i, k]`` in int32 for ``(i, k)`` over ``B``'s (lanes, group): the dot
    product of the group of ``A`` with each lane's row of ``B``."""
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    with T.grid(*(int(n) for n in B.shape)) as loops:
        IRBuilder.name_many(["i", "k"], loops)
        with T.sblock("update"):
            vi, vk = IRBuilder.name_many(["vi", "vk"], T.axis.remap("SR", loops))
            T.buffer_store(C, C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk]), [vi])


def pairs_desc(A, B, C) -> None:
    """``C[l, h] += A[at(l) + 2h + k] B[l, 2h + k]`` over ``k`` in 0..1: the 4-code group's
    products added in pairs into 2 int32s per lane. ``A`` of 4 codes: the group (``at(l) = 0``,
    ``pmaddwd``); of 8: the group stored twice (``at(l) = 4l``, ``smull``, 2 lanes)."""
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    stride = 4 if int(A.shape[0]) == 8 else 0
    with T.grid(int(C.shape[0]), 2, 2) as loops:
        IRBuilder.name_many(["i", "h", "k"], loops)
        with T.sblock("update"):
            vi, vh, vk = IRBuilder.name_many(["vi", "vh", "vk"], T.axis.remap("SSR", loops))
            a = T.Cast("int32", A[vi * stride + vh * 2 + vk])
            T.buffer_store(C, C[vi, vh] + a * T.Cast("int32", B[vi, vh * 2 + vk]), [vi, vh])

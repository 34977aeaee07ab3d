"""Converters for Det (which TVM's Relax importer lacks, small static matrices), BitShift
(whose shift counts outside ``[0, bits)`` TVM leaves to C's undefined behaviour) and float Mod
with ``fmod=0`` (which TVM computes as ``x - floor(x / y) * y``).

Mod, float, ``fmod=0`` (the result takes the divisor's sign, as Python's and numpy's ``%``):
``r = fmod(x, y)`` (exact: C's fmod), then ``r + y`` where ``r`` is non-zero and its sign
differs from ``y``'s, and a zero result signed as ``y``. TVM's ``x - floor(x / y) * y`` loses
the remainder once ``x / y`` passes float32's 2**24 (``1e10 mod 3.3`` gave 0, not 0.296) and
gives NaN for an infinite divisor (``-3 mod inf`` is inf, ``3 mod inf`` is 3). Integer Mod and
``fmod=1`` stay TVM's (exact).

BitShift: counts below 0 or at least the type's width give 0 (LEFT, and RIGHT of unsigned or
non-negative values) or -1 (RIGHT of negative signed values), as the ONNX reference and
onnxruntime do; counts in range shift (the count clamped first, so no out-of-range shift is
ever executed).

``det(X)`` of ``[..., n, n]`` by the Leibniz formula, ``sum over permutations p of
sign(p) * prod_i X[..., i, p(i)]``: n! products of n entries, built from strided slices at
compile time. Exact in the sense of the definition (no pivoting, no division), and cheap for
the sizes where it is used here; n above :data:`MAX_N` (5! = 120 terms) is refused by name.
"""

from __future__ import annotations

import itertools

from .lower import register_converter, register_if_available
from .onnx_ops import _rank

MAX_N = 5


def permutation_sign(p: tuple[int, ...]) -> int:
    """+1 for an even permutation, -1 for an odd one (parity of its inversions)."""
    inversions = sum(1 for i in range(len(p)) for j in range(i + 1, len(p)) if p[i] > p[j])
    return -1 if inversions % 2 else 1


def register() -> None:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import Mod as TvmMod

    op = relax.op

    @register_converter("", "Det")
    def det(bb, inputs, attr, params):
        x = inputs[0]
        r = _rank(x)
        n = int(x.ty.shape[r - 1])
        if r < 2 or int(x.ty.shape[r - 2]) != n:
            raise ValueError("Det: the input must be [..., n, n]")
        if n > MAX_N:
            raise ValueError(f"Det: {n}x{n} matrices are not lowered (Leibniz formula up to {MAX_N}x{MAX_N})")

        def entry(i: int, j: int):
            e = op.strided_slice(x, axes=[r - 2, r - 1], begin=[i, j], end=[i + 1, j + 1])
            return bb.normalize(op.squeeze(e, axis=[r - 2, r - 1]))

        entries = {(i, j): entry(i, j) for i in range(n) for j in range(n)}
        total = None
        for p in itertools.permutations(range(n)):
            term = entries[(0, p[0])]
            for i in range(1, n):
                term = op.multiply(term, entries[(i, p[i])])
            if permutation_sign(p) < 0:
                term = op.negative(term)
            total = term if total is None else op.add(total, term)
        return total

    @register_converter("", "BitShift")
    def bit_shift(bb, inputs, attr, params):
        a, b = inputs
        dtype = str(a.ty.dtype)
        bits = int(dtype.removeprefix("u").removeprefix("int"))
        direction = attr.get("direction", b"")
        left = (direction.decode() if isinstance(direction, bytes) else str(direction)) == "LEFT"
        zero = relax.const(0, dtype)
        outside = op.logical_or(op.less(b, zero), op.greater_equal(b, relax.const(bits, dtype)))
        count = op.clip(b, 0, bits - 1)
        shifted = op.left_shift(a, count) if left else op.right_shift(a, count)
        if left or dtype.startswith("u"):
            fill = op.zeros_like(a)
        else:
            fill = op.where(op.less(a, zero), op.full_like(a, relax.const(-1, dtype)), op.zeros_like(a))
        return op.where(outside, fill, shifted)

    @register_converter("", "Mod")
    def mod(bb, inputs, attr, params):
        x, y = inputs
        tensors = all(isinstance(v, tvm.ir.Call | tvm.ir.Var) for v in inputs)  # else TVM folds (numpy)
        if attr.get("fmod", 0) or not tensors or not str(x.ty.dtype).startswith(("float", "bfloat")):
            return TvmMod._impl_v10(bb, inputs, attr, params)
        dtype = str(x.ty.dtype)
        zero = relax.const(0.0, dtype)
        r = bb.normalize(op.mod(x, y))  # C fmod: the sign of x
        y_neg = op.less(y, zero)
        flip = op.logical_and(op.not_equal(r, zero), op.logical_xor(op.less(r, zero), y_neg))
        r = op.where(flip, op.add(r, y), r)
        signed_zero = op.where(y_neg, relax.const(-0.0, dtype), zero)
        return op.where(op.equal(r, zero), signed_zero, r)


register_if_available(register)

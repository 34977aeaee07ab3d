"""Bit-serial kernels for optc's ``ai.optc`` ops: TE compute definitions with optc's own CPU
schedules, and the kernel builders (``*_func``: scheduled PrimFuncs) the ops' lowerings call.

Each op (contract, numpy reference, cost, and the lowering that puts these kernels into the
Relax graph as ``call_tir``) is one module of :mod:`optc.passes.ops`; the exact integer cores
the kernels must match bit for bit in their integer part are in :mod:`optc.passes.optc_ops`.

Kernels (all built with ``te.create_prim_func`` and scheduled with ``tvm.s_tir.Schedule``;
marked ``tirx.is_scheduled`` so generic schedule rules leave them alone, and ``op_pattern``
opaque so Relax's FuseOps does not merge them into other functions):

* **pack** — activations are binarized / quantized and packed into uint64 words at run time
  (bit = ``x >= 0`` for binary ops; bit planes of ``clip(nearbyint(x / s), 0, 2^ab - 1)`` for
  k-bit ops). Conv inputs are packed along channels into ``[B, H, CW, W]`` (W innermost, so
  the packing loop is vectorized over W with contiguous loads of the NCHW input).
* **dense** — ``popcount(x_word XOR w_word)`` (binary) or ``popcount(a_plane AND w_plane) <<
  (i + j)`` (k-bit), reduced over the K words. The word axis is split by the vector width and
  ``rfactor``-ed so the inner loop is a vector of u64 lanes (x86 AVX-512 VPOPCNTDQ:
  ``vpopcntq zmm``; AArch64 NEON: ``cnt`` + pairwise adds), with the partial sums in a local
  buffer; output channels are the outer parallel loop, rows of the batch inside it (weights
  reused from L1).
* **conv2d** — the compact weight words of the op contract (``[N, ceil(KH*KW*C/64)]``, bits in
  (kh, kw, c) order) are re-laid out to ``[N/V, KH, KW, CW, V]`` (per tap, channels packed,
  V = 8 output channels innermost) by a separate ``call_tir`` that Relax's FoldConstant
  evaluates at compile time when the weights are embedded constants. Each input word is then
  broadcast and combined with 8 weight words at once; a register tile of R output columns x 8
  channels stays in registers over the whole (kh, kw, cw) reduction; (batch, channel block,
  output row) is the parallel loop. Zero padding is exact without a branch in the inner loop:
  the packed input is zero-padded, a padded tap adds popcount(w) for the weight words it
  meets, and a small table per (channel, border row class, border column class) subtracts
  exactly that; the count of valid taps per output position gives the ``C * taps`` term.

* **conv2d + threshold + max-pool** (``BinaryConv2dThreshold``, from ``fuse-binary-threshold``):
  the same popcount tile, with an epilogue that compares the exact integer dot with the integer
  thresholds and ORs the comparisons over each pool window (max of +-1 values), written in the
  output expression so the output block stays spatial: the tile of R pooled columns computes
  R x PH x PW popcount positions in registers (R chosen so that stays <= TILE_COLS), and
  neither the integer conv output nor the pre-pool activation is ever stored.

The schedules do not depend on the target: vectors are 8 x u64 (one zmm on AVX-512; LLVM
splits them into 4 NEON q-registers on AArch64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optc.passes import optc_ops
from optc.passes.optc_ops import ConvGeometry

from .lower import opaque_kernel
from .schedule import ACC_SCOPE

LANES = 8  # u64 lanes per vector (512 bits)
PARALLEL_MIN_WORDS = 1 << 17  # less inner work than this (words x outputs) stays single-threaded
TILE_COLS = 4  # conv register tile: output columns per tile (x LANES channels)


# ---------------------------------------------------------------------------------------------
# TE definitions


def _u64(v: int):
    from tvm import tirx

    return tirx.const(v, "uint64")


def _pack_words(get_bit, shape_prefix, length, name, axis_name="b"):
    """te.compute of shape ``shape_prefix + (ceil(length/64),)``: word = OR of get_bit(*idx, k)
    << (k % 64) for the 64 elements k of the word (elements >= length are 0)."""
    from tvm import te, tirx

    nw = optc_ops.words(length)
    b = te.reduce_axis((0, 64), axis_name)

    def f(*idx):
        *pre, w = idx
        k = w * 64 + b
        bit = get_bit(*pre, tirx.min(k, length - 1))
        if length % 64:
            bit = tirx.all(k < length, bit)
        return te.sum(tirx.if_then_else(bit, _u64(1) << b.astype("uint64"), _u64(0)), axis=b)

    return te.compute(tuple(shape_prefix) + (nw,), f, name=name)


def _codes(x_expr, scale: float, bits: int):
    """Unsigned activation code clip(nearbyint(x / s), 0, 2^bits - 1) as int32 (x float32)."""
    from tvm import tirx

    q = tirx.nearbyint(x_expr / tirx.const(scale, "float32"))
    q = tirx.max(tirx.min(q, tirx.const(float((1 << bits) - 1), "float32")), tirx.const(0.0, "float32"))
    return q.astype("int32")


def binary_dense_te(M: int, K: int, N: int, has_bias: bool, has_alpha: bool = True):
    """(inputs, output) TE tensors of BinaryDense: X [M, K] f32, W [N, KW] u64, [alpha [N]],
    [bias [N]]."""
    from tvm import te, tirx

    KW = optc_ops.words(K)
    X = te.placeholder((M, K), "float32", name="X")
    W = te.placeholder((N, KW), "uint64", name="W")
    ins = [X, W]
    A = None
    if has_alpha:
        A = te.placeholder((N,), "float32", name="alpha")
        ins.append(A)
    Xp = _pack_words(lambda m, k: X[m, k] >= tirx.const(0.0, "float32"), (M,), K, "Xp")
    w = te.reduce_axis((0, KW), "w")
    P = te.compute((M, N), lambda m, n: te.sum(tirx.popcount(Xp[m, w] ^ W[n, w]).astype("int64"), axis=w),
                   name="P")
    Bv = None
    if has_bias:
        Bv = te.placeholder((N,), "float32", name="bias")
        ins.append(Bv)

    def y(m, n):
        v = (tirx.const(K, "int64") - P[m, n] * 2).astype("float32")
        v = A[n] * v if A is not None else v
        return v + Bv[n] if Bv is not None else v

    return ins, te.compute((M, N), y, name="Y")


def bitserial_dense_te(M: int, K: int, N: int, act_bits: int, weight_bits: int, act_scale: float,
                       has_bias: bool):
    """TE tensors of BitserialDense: X [M, K] f32, W [N, wb, KW] u64, w_scale [N], w_offset [N]."""
    from tvm import te, tirx

    KW = optc_ops.words(K)
    X = te.placeholder((M, K), "float32", name="X")
    W = te.placeholder((N, weight_bits, KW), "uint64", name="W")
    WS = te.placeholder((N,), "float32", name="w_scale")
    WO = te.placeholder((N,), "float32", name="w_offset")
    ins = [X, W, WS, WO]
    Q = te.compute((M, K), lambda m, k: _codes(X[m, k], act_scale, act_bits), name="Q")
    i_ = te.reduce_axis((0, 64), "b")
    Ap = te.compute(
        (M, act_bits, KW),
        lambda m, i, w: te.sum(tirx.if_then_else(
            tirx.all(w * 64 + i_ < K, ((Q[m, tirx.min(w * 64 + i_, K - 1)] >> i) & 1) == 1),
            _u64(1) << i_.astype("uint64"), _u64(0)), axis=i_),
        name="Ap")
    ri = te.reduce_axis((0, act_bits), "i")
    rj = te.reduce_axis((0, weight_bits), "j")
    w = te.reduce_axis((0, KW), "w")
    D = te.compute((M, N), lambda m, n: te.sum(
        tirx.popcount(Ap[m, ri, w] & W[n, rj, w]).astype("int64") << (ri + rj).astype("int64"),
        axis=[ri, rj, w]), name="D")
    si = te.reduce_axis((0, act_bits), "si")
    sw = te.reduce_axis((0, KW), "sw")
    S = te.compute((M,), lambda m: te.sum(tirx.popcount(Ap[m, si, sw]).astype("int64") << si.astype("int64"),
                                          axis=[si, sw]), name="S")
    s = tirx.const(act_scale, "float32")
    if has_bias:
        Bv = te.placeholder((N,), "float32", name="bias")
        ins.append(Bv)
        Y = te.compute((M, N), lambda m, n: s * (WS[n] * D[m, n].astype("float32") + WO[n] * S[m].astype("float32"))
                       + Bv[n], name="Y")
    else:
        Y = te.compute((M, N), lambda m, n: s * (WS[n] * D[m, n].astype("float32") + WO[n] * S[m].astype("float32")),
                       name="Y")
    return ins, Y



def conv_weight_lanes_te(N: int, KH: int, KW: int, C: int, planes: int | None = None):
    """Compact conv weights ``W [N, (wb,) ceil(KH*KW*C/64)]`` ((kh, kw, c) bit order) ->
    kernel layout ``Wt [N/8, (wb,) KH, KW, CW, 8]``: per tap, channels packed in words, 8 output
    channels innermost (0 for padded channels and bits)."""
    from tvm import te, tirx

    NB = -(-N // LANES)
    CW = optc_ops.words(C)
    KWORDS = optc_ops.words(KH * KW * C)
    lead = () if planes is None else (planes,)
    W = te.placeholder((N, *lead, KWORDS), "uint64", name="W")
    b_ = te.reduce_axis((0, 64), "b")

    def f(nb, *rest):
        *pl, kh, kw, cw, l = rest
        n = nb * LANES + l
        c = cw * 64 + b_
        k = (kh * KW + kw) * C + tirx.min(c, C - 1)
        word = W[(tirx.min(n, N - 1), *pl, k // 64)]
        bit = ((word >> (k % 64).astype("uint64")) & _u64(1)) == _u64(1)
        ok = tirx.all(n < N, c < C, bit)
        return te.sum(tirx.if_then_else(ok, _u64(1) << b_.astype("uint64"), _u64(0)), axis=b_)

    Wt = te.compute((NB, *lead, KH, KW, CW, LANES), f, name="Wt")
    return [W], Wt


def row_packed(C: int, kernel_shape) -> bool:
    """Binary conv layout choice: pack the (kw, c) bits of a kernel row contiguously (one word
    stream per output column) instead of one word per tap, when the channels fit in one word
    and that needs fewer words (C = 16, 3x3: 1 word per kernel row instead of 3)."""
    KH, KW = kernel_shape
    return C < 64 and KW > 1 and optc_ops.words(KW * C) < KW * optc_ops.words(C)


def _low_mask(n):
    """uint64 with the low ``n`` bits set, 0 <= n <= 64 (n an int32 expression)."""
    from tvm import tirx

    return tirx.if_then_else(n >= 64, ~_u64(0), (_u64(1) << n.astype("uint64")) - _u64(1))


def conv_weight_rows_te(N: int, KH: int, KW: int, C: int):
    """Compact conv weights ``W [N, ceil(KH*KW*C/64)]`` -> row layout ``Wr [N/8, KH, RW, 8]``
    with RW = ceil(KW*C/64): word r of kernel row kh holds bits (kh*KW*C + 64 r + b)."""
    from tvm import te, tirx

    NB = -(-N // LANES)
    RW = optc_ops.words(KW * C)
    KWORDS = optc_ops.words(KH * KW * C)
    W = te.placeholder((N, KWORDS), "uint64", name="W")
    b_ = te.reduce_axis((0, 64), "b")

    def f(nb, kh, r, l):
        n = nb * LANES + l
        j = r * 64 + b_
        k = kh * (KW * C) + tirx.min(j, KW * C - 1)
        word = W[tirx.min(n, N - 1), k // 64]
        bit = ((word >> (k % 64).astype("uint64")) & _u64(1)) == _u64(1)
        ok = tirx.all(n < N, j < KW * C, bit)
        return te.sum(tirx.if_then_else(ok, _u64(1) << b_.astype("uint64"), _u64(0)), axis=b_)

    return [W], te.compute((NB, KH, RW, LANES), f, name="Wt")


def _padded_pack(X, B, C, H, W_, pads, name, plane=None):
    """Channels of NCHW ``X`` packed into words: ``{name}q`` ``[B, H, CW, W]`` (binary: bit =
    x >= 0) or ``[B, ab, H, CW, W]`` (k-bit: bit ``i`` of the code), then, if the conv pads,
    ``{name}`` zero-padded to ``[B, (ab,) H + pt + pb, CW, W + pl + pr]`` (padding words are
    0). W is innermost so the packing loop reads the NCHW input contiguously."""
    from tvm import te, tirx

    CW = optc_ops.words(C)
    c_ = te.reduce_axis((0, 64), "c")

    def bit(b, i, h, cw, w):
        c = cw * 64 + c_
        x = X[b, tirx.min(c, C - 1) if C % 64 else c, h, w]
        v = x >= tirx.const(0.0, "float32") if i is None else ((plane[0](x) >> i) & 1) == 1
        if C % 64:
            v = tirx.all(c < C, v)
        return te.sum(tirx.if_then_else(v, _u64(1) << c_.astype("uint64"), _u64(0)), axis=c_)

    lead = (B,) if plane is None else (B, plane[1])
    if plane is None:
        q = te.compute((B, H, CW, W_), lambda b, h, cw, w: bit(b, None, h, cw, w), name=name + "q")
    else:
        q = te.compute((B, plane[1], H, CW, W_), lambda b, i, h, cw, w: bit(b, i, h, cw, w), name=name + "q")
    if not any(pads):
        return q
    Hp, Wp = H + pads[0] + pads[2], W_ + pads[1] + pads[3]

    def pad(*idx):
        *pre, hp, cw, wp = idx
        h, w = hp - pads[0], wp - pads[1]
        inside = tirx.all(h >= 0, h < H, w >= 0, w < W_)
        return tirx.if_then_else(inside, q[(*pre, tirx.max(tirx.min(h, H - 1), 0), cw,
                                            tirx.max(tirx.min(w, W_ - 1), 0))], _u64(0))

    return te.compute((*lead, Hp, CW, Wp), pad, name=name)


def _tap_ranges(H, OH, k, stride, pad, dil) -> list[tuple[int, int]]:
    """Per output row: the range [lo, hi) of kernel rows that fall inside the input."""
    out = []
    for o in range(OH):
        valid = [kk for kk in range(k) if 0 <= o * stride - pad + kk * dil < H]
        out.append((valid[0], valid[-1] + 1) if valid else (0, 0))
    return out


def _classes(ranges: list[tuple[int, int]]):
    """Distinct ranges (class 0 = the most common, i.e. the interior) and each row's class."""
    counts: dict = {}
    for r in ranges:
        counts[r] = counts.get(r, 0) + 1
    distinct = sorted(counts, key=lambda r: -counts[r])
    return distinct, [distinct.index(r) for r in ranges]


def _select_chain(values: list[int], o, default: int, dtype: str = "int32"):
    """``values[o]`` as an expression: ``default`` except at the indices where it differs."""
    from tvm import tirx

    expr = tirx.const(default, dtype)
    for i, v in enumerate(values):
        if v != default:
            expr = tirx.Select(o == i, tirx.const(v, dtype), expr)
    return expr


def binary_conv2d_te(x_shape, N: int, geom: ConvGeometry, has_bias: bool, has_alpha: bool = True,
                     threshold=None):
    """TE tensors of BinaryConv2d (``x_shape`` = (B, C, H, W), NCHW) with pre-transposed
    weights Wt [N/8, KH, KW, CW, 8].

    The packed input is zero-padded, so every tap is read without a condition; a padded tap adds
    popcount(0 xor w) = popcount(w), which a small per-(channel, border class) table removes.

    ``threshold=(has_direction, (PH, PW))``: BinaryConv2dThreshold instead (no alpha/bias;
    inputs T [N] and optionally D [N]): the epilogue compares the integer dot with T and takes
    the max of the +-1 results over each PH x PW window (unrolled in the expression, so the
    output block stays spatial and the popcount tile is computed once per pooled tile).
    """
    from tvm import te, tirx

    B, C, H, W_ = x_shape
    kernel_shape, pads, strides, dilations = geom.kernel_shape, geom.pads, geom.strides, geom.dilations
    KH, KW_ = kernel_shape
    CW = optc_ops.words(C)
    NB = -(-N // LANES)
    OH, OW = geom.output_shape(H, W_)
    rows_mode = row_packed(C, kernel_shape)
    RW = optc_ops.words(KW_ * C)
    X = te.placeholder((B, C, H, W_), "float32", name="X")
    wshape = (NB, KH, RW, LANES) if rows_mode else (NB, KH, KW_, CW, LANES)
    Wt = te.placeholder(wshape, "uint64", name="Wt")
    ins = [X, Wt]
    A = None
    if has_alpha:
        A = te.placeholder((N,), "float32", name="alpha")
        ins.append(A)
    Xp = _padded_pack(X, B, C, H, W_, pads, "Xp")
    rkh = te.reduce_axis((0, KH), "kh")
    if rows_mode:
        # Xr[b, hp, r, ow]: word r of the (kw, c) bits that output column ow reads in row hp
        # (OR of the channel words of its KW taps, each shifted to bit kw * C).
        rkw0 = te.reduce_axis((0, KW_), "kw0")

        def xr(b, hp, r, ow):
            v = Xp[b, hp, 0, ow * strides[1] + rkw0 * dilations[1]]
            sh = rkw0 * C - r * 64
            part = tirx.if_then_else(tirx.any(sh >= 64, sh <= -64), _u64(0),
                                     tirx.if_then_else(sh >= 0, v << sh.astype("uint64"), v >> (-sh).astype("uint64")))
            return te.sum(part, axis=rkw0)

        Xr = te.compute((B, H + pads[0] + pads[2], RW, OW), xr, name="Xr")
        rr = te.reduce_axis((0, RW), "r")
        P = te.compute(
            (B, NB, OH, OW, LANES),
            lambda b, nb, oh, ow, l: te.sum(tirx.popcount(
                Xr[b, oh * strides[0] + rkh * dilations[0], rr, ow] ^ Wt[nb, rkh, rr, l]).astype("int64"),
                axis=[rkh, rr]),
            name="P")
    else:
        rkw = te.reduce_axis((0, KW_), "kw")
        rcw = te.reduce_axis((0, CW), "cw")
        P = te.compute(
            (B, NB, OH, OW, LANES),
            lambda b, nb, oh, ow, l: te.sum(tirx.popcount(
                Xp[b, oh * strides[0] + rkh * dilations[0], rcw, ow * strides[1] + rkw * dilations[1]]
                ^ Wt[nb, rkh, rkw, rcw, l]).astype("int64"), axis=[rkh, rkw, rcw]),
            name="P")
    rows, row_class = _classes(_tap_ranges(H, OH, KH, strides[0], pads[0], dilations[0]))
    cols, col_class = _classes(_tap_ranges(W_, OW, KW_, strides[1], pads[1], dilations[1]))
    padded = len(rows) > 1 or len(cols) > 1 or rows[0] != (0, KH) or cols[0] != (0, KW_)
    if padded:
        # wpop[nb, kh, kw, l]: set bits of a weight tap; CT[nb, rc, cc, l]: bits of the taps that
        # row class rc x column class cc reads from the zero padding.
        if rows_mode:  # bits [kw*C, kw*C + C) of the kernel row's words
            r2 = te.reduce_axis((0, RW), "r2")

            def wp(nb, kh, kw, l):
                lo = tirx.max(tirx.min(kw * C - r2 * 64, 64), 0)
                hi = tirx.max(tirx.min(kw * C + C - r2 * 64, 64), 0)
                mask = _low_mask(hi) & ~_low_mask(lo)
                return te.sum(tirx.popcount(Wt[nb, kh, r2, l] & mask).astype("int32"), axis=r2)

            wpop = te.compute((NB, KH, KW_, LANES), wp, name="wpop")
        else:
            cw2 = te.reduce_axis((0, CW), "cw2")
            wpop = te.compute((NB, KH, KW_, LANES), lambda nb, kh, kw, l: te.sum(
                tirx.popcount(Wt[nb, kh, kw, cw2, l]).astype("int32"), axis=cw2), name="wpop")
        th = te.reduce_axis((0, KH), "th")
        tw = te.reduce_axis((0, KW_), "tw")

        def outside(rc, cc, kh, kw):
            rlo = _select_chain([r[0] for r in rows], rc, rows[0][0])
            rhi = _select_chain([r[1] for r in rows], rc, rows[0][1])
            clo = _select_chain([c[0] for c in cols], cc, cols[0][0])
            chi = _select_chain([c[1] for c in cols], cc, cols[0][1])
            return tirx.Not(tirx.all(kh >= rlo, kh < rhi, kw >= clo, kw < chi))

        CT = te.compute((NB, len(rows), len(cols), LANES), lambda nb, rc, cc, l: te.sum(
            tirx.if_then_else(outside(rc, cc, th, tw), wpop[nb, th, tw, l], tirx.const(0, "int32")),
            axis=[th, tw]), name="CT")

    def dot(b, n, oh, ow):
        # valid taps x C per output position: a product of per-row and per-column constants
        th = _select_chain([(r[1] - r[0]) * C for r in (rows[i] for i in row_class)], oh,
                           (rows[0][1] - rows[0][0]) * C)
        tw = _select_chain([c[1] - c[0] for c in (cols[i] for i in col_class)], ow, cols[0][1] - cols[0][0])
        p = P[b, n // LANES, oh, ow, n % LANES].astype("int32")
        if padded:
            rc = _select_chain(row_class, oh, 0)
            cc = _select_chain(col_class, ow, 0)
            p = p - CT[n // LANES, rc, cc, n % LANES]
        return (th * tw - p * 2).astype("float32")

    if threshold is not None:
        has_d, (PH, PW) = threshold
        T = te.placeholder((N,), "float32", name="T")
        ins.append(T)
        Dv = None
        if has_d:
            Dv = te.placeholder((N,), "float32", name="D")
            ins.append(Dv)
        one, neg = tirx.const(1.0, "float32"), tirx.const(-1.0, "float32")

        def yt(b, n, ph, pw):
            hit = None
            for i in range(PH):
                for j in range(PW):
                    v = dot(b, n, ph * PH + i, pw * PW + j)
                    c = v >= T[n] if Dv is None else Dv[n] * v >= Dv[n] * T[n]
                    hit = c if hit is None else tirx.Or(hit, c)
            return tirx.Select(hit, one, neg)

        return ins, te.compute((B, N, OH // PH, OW // PW), yt, name="Y")

    def y(b, n, oh, ow):
        v = dot(b, n, oh, ow)
        v = A[n] * v if A is not None else v
        return v + Bv[n] if has_bias else v

    if has_bias:
        Bv = te.placeholder((N,), "float32", name="bias")
        ins.append(Bv)
    Y = te.compute((B, N, OH, OW), y, name="Y")
    return ins, Y


def bitserial_conv2d_te(x_shape, N: int, geom: ConvGeometry, act_bits: int, weight_bits: int, act_scale: float,
                        has_bias: bool):
    """TE tensors of BitserialConv2d (``x_shape`` = (B, C, H, W), NCHW) with pre-transposed
    weight planes Wt [N/8, wb, KH, KW, CW, 8]. Zero padding is code 0, so the padded planes
    need no correction."""
    from tvm import te, tirx

    B, C, H, W_ = x_shape
    pads, strides, dilations = geom.pads, geom.strides, geom.dilations
    KH, KW_ = geom.kernel_shape
    CW = optc_ops.words(C)
    NB = -(-N // LANES)
    OH, OW = geom.output_shape(H, W_)
    X = te.placeholder((B, C, H, W_), "float32", name="X")
    Wt = te.placeholder((NB, weight_bits, KH, KW_, CW, LANES), "uint64", name="Wt")
    WS = te.placeholder((N,), "float32", name="w_scale")
    WO = te.placeholder((N,), "float32", name="w_offset")
    ins = [X, Wt, WS, WO]
    Ap = _padded_pack(X, B, C, H, W_, pads, "Ap", plane=(lambda x: _codes(x, act_scale, act_bits), act_bits))
    ri = te.reduce_axis((0, act_bits), "i")
    rj = te.reduce_axis((0, weight_bits), "j")
    rkh = te.reduce_axis((0, KH), "kh")
    rkw = te.reduce_axis((0, KW_), "kw")
    rcw = te.reduce_axis((0, CW), "cw")

    def win(oh, ow, kh, kw):
        return oh * strides[0] + kh * dilations[0], ow * strides[1] + kw * dilations[1]

    def d(b, nb, oh, ow, l):
        ih, iw = win(oh, ow, rkh, rkw)
        pc = tirx.popcount(Ap[b, ri, ih, rcw, iw] & Wt[nb, rj, rkh, rkw, rcw, l]).astype("int64")
        return te.sum(pc << (ri + rj).astype("int64"), axis=[ri, rj, rkh, rkw, rcw])

    D = te.compute((B, NB, OH, OW, LANES), d, name="D")
    si = te.reduce_axis((0, act_bits), "si")
    skh = te.reduce_axis((0, KH), "skh")
    skw = te.reduce_axis((0, KW_), "skw")
    scw = te.reduce_axis((0, CW), "scw")

    def s_(b, oh, ow):
        ih, iw = win(oh, ow, skh, skw)
        return te.sum(tirx.popcount(Ap[b, si, ih, scw, iw]).astype("int64") << si.astype("int64"),
                      axis=[si, skh, skw, scw])

    S = te.compute((B, OH, OW), s_, name="S")
    s = tirx.const(act_scale, "float32")
    if has_bias:
        Bv = te.placeholder((N,), "float32", name="bias")
        ins.append(Bv)

    def y(b, n, oh, ow):
        v = s * (WS[n] * D[b, n // LANES, oh, ow, n % LANES].astype("float32")
                 + WO[n] * S[b, oh, ow].astype("float32"))
        return v + Bv[n] if has_bias else v

    Y = te.compute((B, N, OH, OW), y, name="Y")
    return ins, Y


# ---------------------------------------------------------------------------------------------
# schedules


def _vector_factor(extent: int, limit: int = LANES) -> int:
    f = 1
    while f * 2 <= limit and extent % (f * 2) == 0:
        f *= 2
    return f


def _schedule_pack_rows(sch, block, parallel: bool):
    """Pack stage ``[..., words]`` with a 64-bit reduction: unroll the bit loop."""
    loops = sch.get_loops(block)
    sch.unroll(loops[-1])
    if parallel and len(loops) > 2:
        sch.parallel(loops[0])


def _loops_under(sch, blk, loop):
    """(spatial, reduction) loops of ``blk`` below ``loop`` (unit loops are not generated)."""
    loops = sch.get_loops(blk)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    inner = loops[at + 1:]
    n_red = sum(1 for iv in sch.get(blk).iter_vars if int(iv.iter_type) == 2 and int(iv.dom.extent) > 1)
    return inner[:len(inner) - n_red], inner[len(inner) - n_red:]


def schedule_dense(func, *, red_name: str, out_name: str, pack_names: tuple[str, ...], n_out: int,
                   work: int):
    """Dense bit-serial schedule: output loops (n [parallel chunks], m); the popcount
    reduction is computed per output with the word axis split by the vector width and
    rfactor-ed, so the inner loop is a vector of u64 lanes accumulating in a local buffer."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    for name in pack_names:
        _schedule_pack_rows(sch, sch.get_sblock(name), parallel=False)
    blk = sch.get_sblock(red_name)
    wl = sch.get_loops(blk)[-1]
    vf = _vector_factor(int(sch.get(wl).extent))
    rf = None
    if vf > 1:
        _, wi = sch.split(wl, [None, vf])
        rf = sch.rfactor(wi, 2)  # partial sums [m, n, lane]: lanes contiguous
    yb = sch.get_sblock(out_name)
    ym, yn = sch.get_loops(yb)
    sch.reorder(yn, ym)
    chunk = max(d for d in range(1, 17) if n_out % d == 0)
    no, _ = sch.split(yn, [None, chunk])
    if work >= PARALLEL_MIN_WORDS:
        sch.parallel(no)
    sch.compute_at(blk, ym)
    sch.set_scope(blk, 0, ACC_SCOPE)
    if rf is not None:
        sch.compute_at(rf, ym)
        sch.set_scope(rf, 0, ACC_SCOPE)
        spatial, red = _loops_under(sch, rf, ym)
        sch.reorder(*red, *spatial)
        sch.vectorize(spatial[-1])
        if red:
            sch.decompose_reduction(rf, red[0])
    return sch.mod["main"]


def _schedule_packing(sch, name: str, parallel: bool) -> None:
    """A bit-packing reduction ``name`` (loops ..., vector axis, packed axis): swap the last two
    loops, parallelize the outer two, vectorize the (now) innermost, and unroll the packed axis
    of the update (unrolling keeps LLVM from re-vectorizing it with strided gathers)."""
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    sch.reorder(loops[-1], loops[-2])
    if parallel:
        loops = sch.get_loops(blk)
        sch.parallel(sch.fuse(loops[0], loops[1]))
    loops = sch.get_loops(blk)
    sch.vectorize(loops[-1])
    sch.decompose_reduction(blk, loops[-2])
    sch.unroll(sch.get_loops(sch.get_sblock(name + "_update"))[-2])


@dataclass(frozen=True)
class ConvBlocks:
    """Names of the TE stages of a conv kernel that :func:`schedule_conv` schedules: the
    popcount reduction, the output, the activation pack (``{pack}q``, then the padded
    ``{pack}``) and an optional second reduction (the k-bit conv's activation sums)."""

    red: str
    out: str
    pack: str
    extra_red: str | None = None


BINARY_CONV_BLOCKS = ConvBlocks(red="P", out="Y", pack="Xp")
BITSERIAL_CONV_BLOCKS = ConvBlocks(red="D", out="Y", pack="Ap", extra_red="S")


def schedule_conv(func, blocks: ConvBlocks, *, n_out: int, ow: int, work: int, window: int = 1):
    """Conv bit-serial schedule. The output block's loops are tiled as (batch x channel block x
    output row) [parallel] -> column tile -> (R columns, 8 channels); the popcount reduction is
    computed at the column tile into a local R x 8 accumulator (R u64 vectors kept in
    registers) with (kh, kw, cw) outside and the 8 channels as the vector lane."""
    import tvm

    red_name, out_name, pack_name, extra_red = blocks.red, blocks.out, blocks.pack, blocks.extra_red
    sch = tvm.s_tir.Schedule(func)
    par = work >= PARALLEL_MIN_WORDS
    # pack: loops b, [i,] h, cw, w, c -> ..., c (unrolled), w (vector). Unrolling c keeps
    # LLVM from re-vectorizing the c loop with gathers over the strided channel axis.
    _schedule_packing(sch, pack_name + "q", par)
    try:
        sch.get_sblock("Xr")
    except Exception:  # noqa: BLE001 - per-tap layout: no row packing stage
        pass
    else:  # loops b, hp, r, ow, kw -> b, hp, r, kw (unrolled), ow (vector)
        _schedule_packing(sch, "Xr", par)
    if extra_red is not None:  # S (k-bit conv): one small reduction per output position
        sb = sch.get_sblock(extra_red)
        sl = sch.get_loops(sb)
        if par:
            sch.parallel(sch.fuse(sl[0], sl[1]))
    yb = sch.get_sblock(out_name)
    b, n, oh, owl = sch.get_loops(yb)
    nb, lane = sch.split(n, [None, LANES])
    # ``window`` popcount positions per output (a fused max-pool): keep the tile's accumulators
    # (R x window vectors) within TILE_COLS
    r = max(d for d in range(1, max(1, TILE_COLS // window) + 1) if ow % d == 0)
    owo, owi = sch.split(owl, [None, r])
    sch.reorder(b, nb, oh, owo, owi, lane)
    outer = sch.fuse(b, nb, oh)
    if par:
        sch.parallel(outer)
    if n_out % LANES == 0:
        sch.vectorize(lane)
    sch.unroll(owi)
    blk = sch.get_sblock(red_name)
    sch.compute_at(blk, owo)
    sch.set_scope(blk, 0, ACC_SCOPE)
    # Loops generated under owo: the spatial ones (ow_i, l) then the reductions, each only if
    # its extent is > 1.
    spatial, red = _loops_under(sch, blk, owo)
    sch.reorder(*red, *spatial)
    for sp in spatial[:-1]:
        sch.unroll(sp)
    sch.vectorize(spatial[-1])
    if red:
        sch.decompose_reduction(blk, red[0])
    return sch.mod["main"]


# ---------------------------------------------------------------------------------------------
# kernel builders (PrimFuncs), used by the converters, the tests and the benchmarks


def binary_dense_func(M, K, N, has_bias=False, has_alpha=True):
    from tvm import te

    ins, Y = binary_dense_te(M, K, N, has_bias, has_alpha)
    f = te.create_prim_func([*ins, Y])
    f = schedule_dense(f, red_name="P", out_name="Y", pack_names=("Xp",), n_out=N, work=M * N * optc_ops.words(K))
    return opaque_kernel(f)


def bitserial_dense_func(M, K, N, act_bits, weight_bits, act_scale, has_bias=False):
    from tvm import te

    ins, Y = bitserial_dense_te(M, K, N, act_bits, weight_bits, act_scale, has_bias)
    f = te.create_prim_func([*ins, Y])
    f = schedule_dense(f, red_name="D", out_name="Y", pack_names=("Ap",), n_out=N,
                       work=M * N * optc_ops.words(K) * act_bits * weight_bits)
    return opaque_kernel(f)


def conv_weight_lanes_func(N, KH, KW, C, planes=None):
    """Weight relayout kernel for BinaryConv2d (row or per-tap layout, see :func:`row_packed`)
    and BitserialConv2d (``planes`` = weight bits; always per tap)."""
    import tvm
    from tvm import te

    if planes is None and row_packed(C, (KH, KW)):
        ins, Wt = conv_weight_rows_te(N, KH, KW, C)
    else:
        ins, Wt = conv_weight_lanes_te(N, KH, KW, C, planes)
    f = te.create_prim_func([*ins, Wt])
    sch = tvm.s_tir.Schedule(f)
    blk = sch.get_sblock("Wt")
    sch.unroll(sch.get_loops(blk)[-1])
    return opaque_kernel(sch.mod["main"])


def conv_weight_lanes_shape(N, KH, KW, C, planes=None) -> list[int]:
    """Shape of :func:`conv_weight_lanes_func`'s output."""
    lead = [-(-N // LANES)] + ([] if planes is None else [planes]) + [KH]
    if planes is None and row_packed(C, (KH, KW)):
        return lead + [optc_ops.words(KW * C), LANES]
    return lead + [KW, optc_ops.words(C), LANES]


def binary_conv2d_func(x_shape, N, geom: ConvGeometry, has_bias=False, has_alpha=True, threshold=None):
    """BinaryConv2d (``x_shape`` = (B, C, H, W)); with ``threshold = (has_direction,
    pool_shape)`` BinaryConv2dThreshold (binary conv + integer threshold + max-pool in one
    kernel)."""
    from tvm import te

    pool = threshold[1] if threshold else (1, 1)
    ins, Y = binary_conv2d_te(x_shape, N, geom, has_bias, has_alpha, threshold=threshold)
    f = te.create_prim_func([*ins, Y])
    B, C, H, W = x_shape
    OH, OW = geom.output_shape(H, W)
    work = B * N * OH * OW * geom.taps * optc_ops.words(C)
    f = schedule_conv(f, BINARY_CONV_BLOCKS, n_out=N, ow=OW // pool[1], work=work, window=pool[0] * pool[1])
    return opaque_kernel(f)


def binary_conv2d_threshold_func(x_shape, N, geom: ConvGeometry, has_direction=False, pool_shape=(1, 1)):
    """BinaryConv2dThreshold: :func:`binary_conv2d_func` with the threshold (and pool) fused."""
    return binary_conv2d_func(x_shape, N, geom, False, False,
                              threshold=(has_direction, tuple(int(v) for v in pool_shape)))


def bitserial_conv2d_func(x_shape, N, geom: ConvGeometry, act_bits, weight_bits, act_scale, has_bias=False):
    """BitserialConv2d (``x_shape`` = (B, C, H, W))."""
    from tvm import te

    ins, Y = bitserial_conv2d_te(x_shape, N, geom, act_bits, weight_bits, act_scale, has_bias)
    f = te.create_prim_func([*ins, Y])
    B, C, H, W = x_shape
    OH, OW = geom.output_shape(H, W)
    work = B * N * OH * OW * geom.taps * optc_ops.words(C) * act_bits * weight_bits
    f = schedule_conv(f, BITSERIAL_CONV_BLOCKS, n_out=N, ow=OW, work=work)
    return opaque_kernel(f)


def build_standalone(func, target: Any):
    """Compile one PrimFunc (for tests and benchmarks): returns the runtime module."""
    import tvm

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target)

"""Bit-serial kernels for optc's ``ai.optc`` ops: TE compute definitions with optc's own CPU
schedules, and the converters that put them into the Relax graph as ``call_tir``.

Ops and their contract: :mod:`optc.passes.optc_ops` (which also holds the numpy references the
kernels must match bit for bit in their integer part).

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
* **conv2d** — weights are re-laid out once to ``[N/V, KH, KW, CW, V]`` (a separate
  ``call_tir`` that Relax folds at compile time when the weights are embedded constants), so
  that V = 8 output channels form one vector: each input word is broadcast and combined with
  8 weight words at once. A register tile of R output columns x V channels stays in registers
  over the whole (kh, kw, cw) reduction; (batch, channel block, output row) is the parallel
  loop. Zero padding is exact: taps outside the input are skipped by a condition, and the
  count of valid taps per output position gives the ``C * taps`` term.

The schedules do not depend on the target: vectors are 8 x u64 (one zmm on AVX-512; LLVM
splits them into 4 NEON q-registers on AArch64).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optc.passes import optc_ops

from .lower import register_converter

LANES = 8  # u64 lanes per vector (512 bits)
PARALLEL_MIN_WORDS = 1 << 14  # less inner work than this (words x outputs) stays single-threaded
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


def binary_dense_te(M: int, K: int, N: int, has_bias: bool):
    """(inputs, output) TE tensors of BinaryDense: X [M, K] f32, W [N, KW] u64, alpha [N], bias."""
    from tvm import te, tirx

    KW = optc_ops.words(K)
    X = te.placeholder((M, K), "float32", name="X")
    W = te.placeholder((N, KW), "uint64", name="W")
    A = te.placeholder((N,), "float32", name="alpha")
    ins = [X, W, A]
    Xp = _pack_words(lambda m, k: X[m, k] >= tirx.const(0.0, "float32"), (M,), K, "Xp")
    w = te.reduce_axis((0, KW), "w")
    P = te.compute((M, N), lambda m, n: te.sum(tirx.popcount(Xp[m, w] ^ W[n, w]).astype("int64"), axis=w),
                   name="P")
    if has_bias:
        Bv = te.placeholder((N,), "float32", name="bias")
        ins.append(Bv)
        Y = te.compute((M, N), lambda m, n: A[n] * (tirx.const(K, "int64") - P[m, n] * 2).astype("float32") + Bv[n],
                       name="Y")
    else:
        Y = te.compute((M, N), lambda m, n: A[n] * (tirx.const(K, "int64") - P[m, n] * 2).astype("float32"),
                       name="Y")
    return ins, Y


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


def _conv_geometry(H, W, kernel_shape, pads, strides, dilations):
    return optc_ops.conv_output_shape(H, W, kernel_shape, pads, strides, dilations)


def weight_transpose_te(N: int, inner: tuple[int, ...]):
    """Wt[nb, *inner, l] = W[nb * LANES + l, *inner] (0 for padded channels)."""
    from tvm import te, tirx

    NB = -(-N // LANES)
    W = te.placeholder((N, *inner), "uint64", name="W")

    def f(nb, *rest):
        *idx, l = rest
        n = nb * LANES + l
        return tirx.if_then_else(n < N, W[(tirx.min(n, N - 1), *idx)], _u64(0))

    Wt = te.compute((NB, *inner, LANES), f, name="Wt")
    return [W], Wt


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


def binary_conv2d_te(B, C, H, W_, N, kernel_shape, pads, strides, dilations, has_bias):
    """TE tensors of BinaryConv2d with pre-transposed weights Wt [N/8, KH, KW, CW, 8].

    The packed input is zero-padded, so every tap is read without a condition; a padded tap adds
    popcount(0 xor w) = popcount(w), which a small per-(channel, border class) table removes.
    """
    from tvm import te, tirx

    KH, KW_ = kernel_shape
    CW = optc_ops.words(C)
    NB = -(-N // LANES)
    OH, OW = _conv_geometry(H, W_, kernel_shape, pads, strides, dilations)
    X = te.placeholder((B, C, H, W_), "float32", name="X")
    Wt = te.placeholder((NB, KH, KW_, CW, LANES), "uint64", name="Wt")
    A = te.placeholder((N,), "float32", name="alpha")
    ins = [X, Wt, A]
    Xp = _padded_pack(X, B, C, H, W_, pads, "Xp")
    rkh = te.reduce_axis((0, KH), "kh")
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
        cw2 = te.reduce_axis((0, CW), "cw2")
        wpop = te.compute((NB, KH, KW_, LANES), lambda nb, kh, kw, l: te.sum(
            tirx.popcount(Wt[nb, kh, kw, cw2, l]).astype("int64"), axis=cw2), name="wpop")
        th = te.reduce_axis((0, KH), "th")
        tw = te.reduce_axis((0, KW_), "tw")

        def outside(rc, cc, kh, kw):
            rlo = _select_chain([r[0] for r in rows], rc, rows[0][0])
            rhi = _select_chain([r[1] for r in rows], rc, rows[0][1])
            clo = _select_chain([c[0] for c in cols], cc, cols[0][0])
            chi = _select_chain([c[1] for c in cols], cc, cols[0][1])
            return tirx.Not(tirx.all(kh >= rlo, kh < rhi, kw >= clo, kw < chi))

        CT = te.compute((NB, len(rows), len(cols), LANES), lambda nb, rc, cc, l: te.sum(
            tirx.if_then_else(outside(rc, cc, th, tw), wpop[nb, th, tw, l], tirx.const(0, "int64")),
            axis=[th, tw]), name="CT")

    def y(b, n, oh, ow):
        rc = _select_chain(row_class, oh, 0)
        cc = _select_chain(col_class, ow, 0)
        taps = (_select_chain([r[1] - r[0] for r in rows], rc, rows[0][1] - rows[0][0], "int64")
                * _select_chain([c[1] - c[0] for c in cols], cc, cols[0][1] - cols[0][0], "int64"))
        p = P[b, n // LANES, oh, ow, n % LANES]
        if padded:
            p = p - CT[n // LANES, rc, cc, n % LANES]
        v = A[n] * (taps * C - p * 2).astype("float32")
        return v + Bv[n] if has_bias else v

    if has_bias:
        Bv = te.placeholder((N,), "float32", name="bias")
        ins.append(Bv)
    Y = te.compute((B, N, OH, OW), y, name="Y")
    return ins, Y


def bitserial_conv2d_te(B, C, H, W_, N, kernel_shape, pads, strides, dilations, act_bits, weight_bits,
                        act_scale, has_bias):
    """TE tensors of BitserialConv2d with pre-transposed weight planes Wt [N/8, wb, KH, KW, CW, 8].
    Zero padding is code 0, so the padded planes need no correction."""
    from tvm import te, tirx

    KH, KW_ = kernel_shape
    CW = optc_ops.words(C)
    NB = -(-N // LANES)
    OH, OW = _conv_geometry(H, W_, kernel_shape, pads, strides, dilations)
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


def _mark(func, name: str):
    return func.with_attrs({
        "global_symbol": name,
        "tirx.is_scheduled": True,
        "tir.is_scheduled": True,
        "op_pattern": 8,  # kOpaque: FuseOps leaves the kernel alone
        "tirx.noalias": True,
    })


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
    sch.set_scope(blk, 0, "local")
    if rf is not None:
        sch.compute_at(rf, ym)
        sch.set_scope(rf, 0, "local")
        spatial, red = _loops_under(sch, rf, ym)
        sch.reorder(*red, *spatial)
        sch.vectorize(spatial[-1])
        if red:
            sch.decompose_reduction(rf, red[0])
    return sch.mod["main"]


def schedule_conv(func, *, red_name: str, out_name: str, pack_name: str, extra_red: str | None,
                  n_out: int, ow: int, work: int):
    """Conv bit-serial schedule. The output block's loops are tiled as (batch x channel block x
    output row) [parallel] -> column tile -> (R columns, 8 channels); the popcount reduction is
    computed at the column tile into a local R x 8 accumulator (R u64 vectors kept in
    registers) with (kh, kw, cw) outside and the 8 channels as the vector lane."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    par = work >= PARALLEL_MIN_WORDS
    # pack: loops b, [i,] h, cw, w, c -> ..., c (unrolled), w (vector). Unrolling c keeps
    # LLVM from re-vectorizing the c loop with gathers over the strided channel axis.
    pk = sch.get_sblock(pack_name + "q")
    pl = sch.get_loops(pk)
    sch.reorder(pl[-1], pl[-2])
    pl = sch.get_loops(pk)
    if par:
        sch.parallel(sch.fuse(pl[0], pl[1]))
    pl = sch.get_loops(pk)
    sch.vectorize(pl[-1])
    sch.decompose_reduction(pk, pl[-2])
    sch.unroll(sch.get_loops(sch.get_sblock(pack_name + "q_update"))[-2])
    if extra_red is not None:  # S (k-bit conv): one small reduction per output position
        sb = sch.get_sblock(extra_red)
        sl = sch.get_loops(sb)
        if par:
            sch.parallel(sch.fuse(sl[0], sl[1]))
    yb = sch.get_sblock(out_name)
    b, n, oh, owl = sch.get_loops(yb)
    nb, lane = sch.split(n, [None, LANES])
    r = max(d for d in range(1, TILE_COLS + 1) if ow % d == 0)
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
    sch.set_scope(blk, 0, "local")
    # Loops generated under owo: the spatial ones (ow_i, l) then the reductions, each only if
    # its extent is > 1.
    spatial, red = _loops_under(sch, blk, owo)
    sch.reorder(*red, *spatial)
    if len(spatial) == 2:
        sch.unroll(spatial[0])
    sch.vectorize(spatial[-1])
    if red:
        sch.decompose_reduction(blk, red[0])
    return sch.mod["main"]


# ---------------------------------------------------------------------------------------------
# kernel builders (PrimFuncs), used by the converters, the tests and the benchmarks


def binary_dense_func(M, K, N, has_bias=False):
    from tvm import te

    ins, Y = binary_dense_te(M, K, N, has_bias)
    f = te.create_prim_func([*ins, Y])
    f = schedule_dense(f, red_name="P", out_name="Y", pack_names=("Xp",), n_out=N, work=M * N * optc_ops.words(K))
    return _mark(f, "optc_binary_dense")


def bitserial_dense_func(M, K, N, act_bits, weight_bits, act_scale, has_bias=False):
    from tvm import te

    ins, Y = bitserial_dense_te(M, K, N, act_bits, weight_bits, act_scale, has_bias)
    f = te.create_prim_func([*ins, Y])
    f = schedule_dense(f, red_name="D", out_name="Y", pack_names=("Ap",), n_out=N,
                       work=M * N * optc_ops.words(K) * act_bits * weight_bits)
    return _mark(f, "optc_bitserial_dense")


def weight_transpose_func(N, inner):
    import tvm
    from tvm import te

    ins, Wt = weight_transpose_te(N, tuple(inner))
    f = te.create_prim_func([*ins, Wt])
    sch = tvm.s_tir.Schedule(f)
    blk = sch.get_sblock("Wt")
    sch.vectorize(sch.get_loops(blk)[-1])
    return _mark(sch.mod["main"], "optc_weight_lanes")


def binary_conv2d_func(B, C, H, W, N, kernel_shape, pads, strides, dilations, has_bias=False):
    from tvm import te

    ins, Y = binary_conv2d_te(B, C, H, W, N, kernel_shape, pads, strides, dilations, has_bias)
    f = te.create_prim_func([*ins, Y])
    OH, OW = _conv_geometry(H, W, kernel_shape, pads, strides, dilations)
    work = B * N * OH * OW * kernel_shape[0] * kernel_shape[1] * optc_ops.words(C)
    f = schedule_conv(f, red_name="P", out_name="Y", pack_name="Xp", extra_red=None, n_out=N, ow=OW, work=work)
    return _mark(f, "optc_binary_conv2d")


def bitserial_conv2d_func(B, C, H, W, N, kernel_shape, pads, strides, dilations, act_bits, weight_bits,
                          act_scale, has_bias=False):
    from tvm import te

    ins, Y = bitserial_conv2d_te(B, C, H, W, N, kernel_shape, pads, strides, dilations, act_bits,
                                 weight_bits, act_scale, has_bias)
    f = te.create_prim_func([*ins, Y])
    OH, OW = _conv_geometry(H, W, kernel_shape, pads, strides, dilations)
    work = B * N * OH * OW * kernel_shape[0] * kernel_shape[1] * optc_ops.words(C) * act_bits * weight_bits
    f = schedule_conv(f, red_name="D", out_name="Y", pack_name="Ap", extra_red="S", n_out=N, ow=OW, work=work)
    return _mark(f, "optc_bitserial_conv2d")


# ---------------------------------------------------------------------------------------------
# converters (ONNX ai.optc ops -> Relax call_tir)


def _shape(expr) -> list[int]:
    return [int(v) for v in expr.ty.shape]


def _call(bb, func, name: str, args: list, shape: list[int], dtype: str = "float32"):
    from tvm import relax

    gv = bb.add_func(func, name)
    return relax.call_tir(gv, args, out_ty=relax.TensorType(shape, dtype))


def _conv_params(attr: dict) -> tuple[list[int], list[int], list[int], list[int]]:
    ks = [int(v) for v in attr["kernel_shape"]]
    pads = [int(v) for v in attr.get("pads", (0, 0, 0, 0))]
    strides = [int(v) for v in attr.get("strides", (1, 1))]
    dil = [int(v) for v in attr.get("dilations", (1, 1))]
    return ks, pads, strides, dil


def _base():
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    return OnnxOpConverter


def _register() -> None:
    from tvm import relax

    Base = _base()

    @register_converter(optc_ops.DOMAIN, "SignThreshold")
    class SignThreshold(Base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, t, d = inputs[0], inputs[1], inputs[2]
            rank = len(_shape(x))
            shape = [1, -1] + [1] * (rank - 2)
            t = bb.normalize(relax.op.reshape(t, shape))
            d = bb.normalize(relax.op.reshape(d, shape))
            cond = relax.op.greater_equal(relax.op.multiply(d, x), relax.op.multiply(d, t))
            one = relax.const(1.0, "float32")
            return relax.op.where(cond, one, relax.op.negative(one))

    @register_converter(optc_ops.DOMAIN, "BinaryDense")
    class BinaryDense(Base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, w, alpha = inputs[0], inputs[1], inputs[2]
            bias = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
            m, k = _shape(x)
            n = _shape(w)[0]
            if int(attr["in_features"]) != k:
                raise ValueError(f"BinaryDense: in_features {attr['in_features']} != input width {k}")
            func = binary_dense_func(m, k, n, bias is not None)
            args = [x, w, alpha] + ([bias] if bias is not None else [])
            return _call(bb, func, "optc_binary_dense", args, [m, n])

    @register_converter(optc_ops.DOMAIN, "BitserialDense")
    class BitserialDense(Base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, w, ws, wo = inputs[:4]
            bias = inputs[4] if len(inputs) > 4 and inputs[4] is not None else None
            m, k = _shape(x)
            n, wb, _ = _shape(w)
            func = bitserial_dense_func(m, k, n, int(attr["act_bits"]), wb, float(attr["act_scale"]),
                                        bias is not None)
            args = [x, w, ws, wo] + ([bias] if bias is not None else [])
            return _call(bb, func, "optc_bitserial_dense", args, [m, n])

    @register_converter(optc_ops.DOMAIN, "BinaryConv2d")
    class BinaryConv2d(Base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, w, alpha = inputs[0], inputs[1], inputs[2]
            bias = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
            b, c, h, wd = _shape(x)
            n, kh, kw, cw = _shape(w)
            ks, pads, strides, dil = _conv_params(attr)
            oh, ow = _conv_geometry(h, wd, ks, pads, strides, dil)
            wt = bb.emit(_call(bb, weight_transpose_func(n, (kh, kw, cw)), "optc_weight_lanes", [w],
                               [-(-n // LANES), kh, kw, cw, LANES], "uint64"))
            func = binary_conv2d_func(b, c, h, wd, n, ks, pads, strides, dil, bias is not None)
            args = [x, wt, alpha] + ([bias] if bias is not None else [])
            return _call(bb, func, "optc_binary_conv2d", args, [b, n, oh, ow])

    @register_converter(optc_ops.DOMAIN, "BitserialConv2d")
    class BitserialConv2d(Base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, w, ws, wo = inputs[:4]
            bias = inputs[4] if len(inputs) > 4 and inputs[4] is not None else None
            b, c, h, wd = _shape(x)
            n, wb, kh, kw, cw = _shape(w)
            ks, pads, strides, dil = _conv_params(attr)
            oh, ow = _conv_geometry(h, wd, ks, pads, strides, dil)
            wt = bb.emit(_call(bb, weight_transpose_func(n, (wb, kh, kw, cw)), "optc_weight_lanes", [w],
                               [-(-n // LANES), wb, kh, kw, cw, LANES], "uint64"))
            func = bitserial_conv2d_func(b, c, h, wd, n, ks, pads, strides, dil, int(attr["act_bits"]), wb,
                                         float(attr["act_scale"]), bias is not None)
            args = [x, wt, ws, wo] + ([bias] if bias is not None else [])
            return _call(bb, func, "optc_bitserial_conv2d", args, [b, n, oh, ow])


def _safe_register() -> None:
    try:
        _register()
    except ImportError:  # pragma: no cover - TVM missing: lower.py reports that itself
        pass


_safe_register()


def build_standalone(func, target: Any):
    """Compile one PrimFunc (for tests and benchmarks): returns the runtime module."""
    import tvm

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target)

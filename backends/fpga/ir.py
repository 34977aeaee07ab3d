"""The FPGA layer IR: a streaming dataflow pipeline of integer layers, and its numpy reference.

A pipeline is a list of layers connected by streams. Every stream word is one *vector*: all
channels of one pixel (or all features of a flat tensor, or all taps of one convolution
window). Element ``i`` of a word occupies bits ``[i*b, (i+1)*b)`` with ``b`` the element type's
width (:class:`DType`). An image is a fixed number of words (``vecs``) in raster order.

Layers (FINN's vocabulary):

``SWG`` (sliding-window generator)
    pixels of an ``h x w x c`` image in, one ``kh x kw x c`` window per output position out,
    taps in ``(ky, kx, c)`` order. With ``kh, kw = h, w`` it collects a whole image into one
    vector (a Flatten in front of a dense layer).
``MVAU`` (matrix-vector-activation unit)
    ``mh x mw`` integer matrix (binary +-1 or k-bit) times each input vector, then per output
    channel a ``MultiThreshold``: ``out = #{j : acc >= T[c, j]}`` (the count is the output code;
    FINN's formulation of BatchNorm + Sign / quantizers). Without thresholds the accumulator
    itself is the output. Folding: ``pe`` output channels and ``simd`` input elements per
    cycle, so one vector takes ``(mh/pe) * (mw/simd)`` cycles.
    Binary x binary layers accumulate ``popcount(xnor(w, x))`` (``xnor`` = True; the dot product
    is ``2 * popcount - mw``); anything wider accumulates sum_a sum_b c_a d_b popcount(W_a & X_b)
    over weight and input bit planes (:func:`planes`).
``Pool``
    per channel max (or min, see ``is_max``) over a window vector; on binary data max is OR.
``Pad``
    zero padding of an image (before a padded convolution), see :class:`Pad`.

The numpy reference (:func:`execute`) is the definition of bit-exactness: the generated C++
(``hls.py``) and Verilog (``rtl.py``) must reproduce it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DType", "SWG", "MVAU", "Pool", "Pad", "FpgaGraph", "execute", "planes", "pack_words", "unpack_words",
           "bits_for_range"]


def bits_for_range(lo: int, hi: int) -> tuple[str, int]:
    """Smallest ('uint' | 'int', bits) holding every integer in [lo, hi]."""
    if lo >= 0:
        return "uint", max(1, int(hi).bit_length())
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return "int", b


@dataclass(frozen=True)
class DType:
    """Element type of a stream: ``bipolar`` (values -1/+1, stored as one bit, 1 = +1),
    ``uint`` (0 .. 2^bits-1) or ``int`` (two's complement)."""

    kind: str
    bits: int

    def __post_init__(self):
        assert self.kind in ("bipolar", "uint", "int"), self.kind
        assert self.bits >= 1 and (self.kind != "bipolar" or self.bits == 1)

    @property
    def lo(self) -> int:
        return {"bipolar": -1, "uint": 0, "int": -(1 << (self.bits - 1))}[self.kind]

    @property
    def hi(self) -> int:
        return {"bipolar": 1, "uint": (1 << self.bits) - 1, "int": (1 << (self.bits - 1)) - 1}[self.kind]

    def values(self) -> np.ndarray:
        return np.array([-1, 1]) if self.kind == "bipolar" else np.arange(self.lo, self.hi + 1)

    def encode(self, v: np.ndarray) -> np.ndarray:
        """Values -> unsigned stored codes."""
        v = np.asarray(v, dtype=np.int64)
        if self.kind == "bipolar":
            return ((v + 1) // 2).astype(np.uint64)
        return (v & ((1 << self.bits) - 1)).astype(np.uint64)

    def decode(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=np.int64)
        if self.kind == "bipolar":
            return 2 * c - 1
        if self.kind == "int":
            return np.where(c >= (1 << (self.bits - 1)), c - (1 << self.bits), c)
        return c

    @property
    def name(self) -> str:
        return "bipolar" if self.kind == "bipolar" else f"{self.kind}{self.bits}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "bits": self.bits}


BIPOLAR = DType("bipolar", 1)


def planes(dt: DType) -> list[tuple[int, int]]:
    """Bit planes of a type as (bit index or -1 for 'inverted bit 0', coefficient): a value is
    sum_p coef_p * plane_p, each plane a 0/1 bit. Bipolar: x = b - ~b; uint: sum 2^i b_i;
    int: two's complement (the top plane has a negative coefficient)."""
    if dt.kind == "bipolar":
        return [(0, 1), (-1, -1)]
    out = [(i, 1 << i) for i in range(dt.bits)]
    if dt.kind == "int":
        out[-1] = (dt.bits - 1, -(1 << (dt.bits - 1)))
    return out


class _ImageStream:
    """Stream shape of the layers that take an ``h x w x c`` image, one pixel a word, and give one
    word per output position (``oh x ow``, the layer's own)."""

    in_vecs = property(lambda self: self.h * self.w)
    in_elems = property(lambda self: self.c)
    out_vecs = property(lambda self: self.oh * self.ow)
    in_dtype = property(lambda self: self.dtype)


class _WordPerWordStream:
    """Stream shape of the layers that give one word per input word (``vecs`` words an image)."""

    in_vecs = property(lambda self: self.vecs)
    out_vecs = property(lambda self: self.vecs)


@dataclass
class SWG(_ImageStream):
    name: str
    h: int
    w: int
    c: int
    kh: int
    kw: int
    sh: int
    sw: int
    dtype: DType
    kind: str = field(default="swg", init=False)

    @property
    def oh(self) -> int:
        return (self.h - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w - self.kw) // self.sw + 1

    out_elems = property(lambda self: self.kh * self.kw * self.c)
    out_dtype = property(lambda self: self.dtype)

    def cycles(self) -> int:
        """Cycles per image: one input pixel per cycle."""
        return self.h * self.w

    def to_json(self) -> dict:
        return {"kind": "swg", "name": self.name, "ifm": [self.h, self.w, self.c], "kernel": [self.kh, self.kw],
                "stride": [self.sh, self.sw], "ofm": [self.oh, self.ow], "dtype": self.dtype.name,
                "cycles_per_image": self.cycles()}


@dataclass
class Pad(_ImageStream):
    """Zero padding of an image stream (FINN's FMPadding): ``h x w x c`` pixels in, the padded
    ``(h + pt + pb) x (w + pl + pr)`` image out, padded pixels holding ``pad_value`` (the
    hardware value of the float 0). ``recode`` re-encodes bipolar input (-1/+1 has no 0) as
    2-bit codes ``x + 1`` in {0, 2} with pad 1: ONNX zero padding of a +-1 tensor, exactly."""

    name: str
    h: int
    w: int
    c: int
    pads: tuple  # (top, left, bottom, right)
    dtype: DType
    odtype: DType
    pad_value: int
    recode: bool = False
    kind: str = field(default="pad", init=False)

    @property
    def oh(self) -> int:
        return self.h + self.pads[0] + self.pads[2]

    @property
    def ow(self) -> int:
        return self.w + self.pads[1] + self.pads[3]

    out_elems = property(lambda self: self.c)
    out_dtype = property(lambda self: self.odtype)

    def cycles(self) -> int:
        return self.oh * self.ow

    def to_json(self) -> dict:
        return {"kind": "pad", "name": self.name, "ifm": [self.h, self.w, self.c], "pads": list(self.pads),
                "dtype": self.dtype.name, "odtype": self.odtype.name, "pad_value": self.pad_value,
                "recode": self.recode, "cycles_per_image": self.cycles()}


@dataclass
class MVAU(_WordPerWordStream):
    name: str
    mw: int
    mh: int
    vecs: int
    wdtype: DType
    idtype: DType
    weights: np.ndarray  # int64 [mh, mw]: +-1 (bipolar) or integer codes
    thresholds: np.ndarray | None  # int64 [mh, nt], in the hardware accumulator's domain
    odtype: DType
    acc_lo: int
    acc_hi: int
    pe: int = 1
    simd: int = 1
    nodes: list[str] = field(default_factory=list)
    kind: str = field(default="mvau", init=False)

    @property
    def xnor(self) -> bool:
        return self.wdtype.kind == "bipolar" and self.idtype.kind == "bipolar"

    in_elems = property(lambda self: self.mw)
    out_elems = property(lambda self: self.mh)
    in_dtype = property(lambda self: self.idtype)
    out_dtype = property(lambda self: self.odtype)

    @property
    def nf(self) -> int:
        return self.mh // self.pe

    @property
    def sf(self) -> int:
        return self.mw // self.simd

    @property
    def nt(self) -> int:
        return 0 if self.thresholds is None else self.thresholds.shape[1]

    @property
    def acc_dtype(self) -> DType:
        """Accumulator type: holds the accumulator range and every threshold."""
        lo, hi = self.acc_lo, self.acc_hi + 1
        return DType(*bits_for_range(lo, hi))

    def cycles(self) -> int:
        return self.vecs * self.nf * self.sf

    def ops_per_image(self) -> int:
        """Binary (or bit-plane) multiply-accumulates per image."""
        return self.vecs * self.mw * self.mh

    def to_json(self) -> dict:
        return {"kind": "mvau", "name": self.name, "mw": self.mw, "mh": self.mh, "vecs": self.vecs,
                "weights": self.wdtype.name, "inputs": self.idtype.name, "outputs": self.odtype.name,
                "thresholds": self.nt, "accumulator": self.acc_dtype.name, "xnor_popcount": self.xnor,
                "pe": self.pe, "simd": self.simd, "nf": self.nf, "sf": self.sf,
                "cycles_per_image": self.cycles(), "onnx_nodes": self.nodes}


@dataclass
class Pool(_WordPerWordStream):
    name: str
    c: int
    k: int  # window taps
    vecs: int
    dtype: DType
    is_max: np.ndarray  # bool [c]: max (True) or min per channel
    kind: str = field(default="pool", init=False)

    in_elems = property(lambda self: self.k * self.c)
    out_elems = property(lambda self: self.c)
    in_dtype = property(lambda self: self.dtype)
    out_dtype = property(lambda self: self.dtype)

    def cycles(self) -> int:
        return self.vecs

    def to_json(self) -> dict:
        return {"kind": "pool", "name": self.name, "channels": self.c, "taps": self.k, "vecs": self.vecs,
                "dtype": self.dtype.name, "op": "max" if self.is_max.all() else ("min" if not self.is_max.any() else "max/min per channel"),
                "cycles_per_image": self.cycles()}


@dataclass
class FpgaGraph:
    """The hardware part of a model: its layers, and the stream types at both ends."""

    layers: list
    in_dtype: DType
    in_vecs: int
    in_elems: int

    @property
    def out_dtype(self) -> DType:
        return self.layers[-1].out_dtype

    @property
    def out_vecs(self) -> int:
        return self.layers[-1].out_vecs

    @property
    def out_elems(self) -> int:
        return self.layers[-1].out_elems

    def check(self) -> None:
        """Consecutive layers must agree on stream shape and type."""
        vecs, elems, dt = self.in_vecs, self.in_elems, self.in_dtype
        for layer in self.layers:
            assert (layer.in_vecs, layer.in_elems, layer.in_dtype) == (vecs, elems, dt), \
                f"{layer.name}: expects {layer.in_vecs}x{layer.in_elems} {layer.in_dtype}, gets {vecs}x{elems} {dt}"
            if layer.kind == "mvau":
                assert layer.mh % layer.pe == 0 and layer.mw % layer.simd == 0, layer.name
            vecs, elems, dt = layer.out_vecs, layer.out_elems, layer.out_dtype

    def mvaus(self) -> list[MVAU]:
        return [layer for layer in self.layers if layer.kind == "mvau"]

    def ii_model(self) -> int:
        """Modeled initiation interval (cycles per image): the slowest layer."""
        return max(layer.cycles() for layer in self.layers)


# ---------------------------------------------------------------------------------------------
# numpy reference


def _swg(layer: SWG, x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    img = x.reshape(n, layer.h, layer.w, layer.c)
    out = np.empty((n, layer.oh, layer.ow, layer.kh, layer.kw, layer.c), dtype=x.dtype)
    for oy in range(layer.oh):
        for ox in range(layer.ow):
            y0, x0 = oy * layer.sh, ox * layer.sw
            out[:, oy, ox] = img[:, y0:y0 + layer.kh, x0:x0 + layer.kw, :]
    return out.reshape(n, layer.out_vecs, layer.out_elems)


def mvau_accumulate(layer: MVAU, x: np.ndarray) -> np.ndarray:
    """The hardware accumulator: popcount(xnor) for binary x binary, else the integer dot."""
    acc = x.astype(np.int64) @ layer.weights.astype(np.int64).T
    return (acc + layer.mw) // 2 if layer.xnor else acc


def _mvau(layer: MVAU, x: np.ndarray) -> np.ndarray:
    acc = mvau_accumulate(layer, x)
    if layer.thresholds is None:
        return acc
    count = (acc[..., None] >= layer.thresholds[None, None]).sum(-1)
    return 2 * count - 1 if layer.odtype.kind == "bipolar" else count


def _pad(layer: Pad, x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    img = x.reshape(n, layer.h, layer.w, layer.c)
    if layer.recode:
        img = img + 1
    pt, pl, pb, pr = layer.pads
    out = np.pad(img, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=layer.pad_value)
    return out.reshape(n, layer.out_vecs, layer.c)


def _pool(layer: Pool, x: np.ndarray) -> np.ndarray:
    win = x.reshape(x.shape[0], x.shape[1], layer.k, layer.c)
    return np.where(layer.is_max[None, None], win.max(2), win.min(2))


def execute(graph: FpgaGraph | list, x: np.ndarray, *, upto: int | None = None) -> np.ndarray:
    """Run the layers on values ``x`` (int64 ``[images, vecs, elems]``); returns the output
    values of the last layer (or of layer ``upto - 1``)."""
    layers = graph.layers if isinstance(graph, FpgaGraph) else graph
    x = np.asarray(x, dtype=np.int64)
    for layer in layers[:upto]:
        x = {"swg": _swg, "mvau": _mvau, "pool": _pool, "pad": _pad}[layer.kind](layer, x)
    return x


# ---------------------------------------------------------------------------------------------
# stream words


def pack_words(values: np.ndarray, dt: DType) -> list[int]:
    """``[words, elems]`` values -> one Python int per word (element i at bits i*b)."""
    codes = dt.encode(values.reshape(values.shape[0], -1))
    b = dt.bits
    shifts = [i * b for i in range(codes.shape[1])]
    return [sum(int(c) << s for c, s in zip(row, shifts)) for row in codes]


def unpack_words(words: list[int], elems: int, dt: DType) -> np.ndarray:
    b, mask = dt.bits, (1 << dt.bits) - 1
    codes = np.array([[(w >> (i * b)) & mask for i in range(elems)] for w in words], dtype=np.int64)
    return dt.decode(codes.reshape(len(words), elems))

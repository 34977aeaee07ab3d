"""From a trained binarized / low-bit ONNX model to the FPGA layer IR, plus the host parts.

The model is split into three parts along its data path:

``head`` (host, onnxruntime)
    everything up to the first *quantizer* (``Sign`` or ``QuantizeLinear``) that feeds a layer
    the hardware can run: e.g. a float first layer -> BatchNorm -> Sign, or Sub -> Sign.
``hardware`` (FPGA, :class:`~optc.backends.fpga.ir.FpgaGraph`)
    ``MatMul`` / ``Gemm`` / ``Conv`` whose weights are binary (two values +-alpha_n per output
    channel) or k-bit (``DequantizeLinear`` of integer codes, or float weights on a per-channel
    integer grid), fed by quantized activations, each followed by the elementwise chain up
    to the next quantizer (Add/Mul/Sub/Div by constants, BatchNormalization, Relu, Clip, ...),
    which becomes per-channel integer thresholds (FINN's MultiThreshold); MaxPool (on the
    accumulator or on the quantized output), Flatten/Reshape and DequantizeLinear in between.
``tail`` (host, onnxruntime)
    from the hardware's output to the graph outputs: the float scaling of the last layer's
    accumulator (its BatchNorm, bias), or whatever does not map (a float last layer).

**Thresholds are computed by evaluation, not algebra.** For an output channel the hardware
accumulator takes a known integer range; the float value the ONNX graph sees for accumulator
value ``a`` is ``k_n (a - zp_in * rowsum_n) + bias_n`` (exact up to fp32 rounding of the
matmul); the elementwise chain and the quantizer are then *run in onnxruntime* on every value
of that range, so the thresholds reproduce onnxruntime's own rounding, BatchNorm formula, Sign
(including ``Sign(0) = 0``: a channel that can produce 0 makes the layer's output ternary)
and QuantizeLinear rounding. The output must be monotonic in the accumulator per channel;
decreasing channels get their weight row negated (FINN flips the comparison instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optc.errors import UnsupportedModelError
from optc.onnx_utils import infer_shapes

from .ir import BIPOLAR, MVAU, SWG, DType, FpgaGraph, Pad, Pool, bits_for_range

COMPUTE = {"MatMul", "Gemm", "Conv"}
QUANTIZERS = {"Sign", "QuantizeLinear"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu",
               "Identity", "HardTanh", "Neg"}
LAYOUT = {"Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze"}
MAX_GRID = 1 << 22
MAX_WEIGHT_CODE = 8  # float weights: integer grids up to +-8 per channel are recognised


@dataclass
class Enc:
    """How a tensor's values map to hardware integers: value = scale * (x - zp)."""

    dtype: DType
    scale: float
    zp: float

    def to_json(self) -> dict:
        return {"dtype": self.dtype.name, "scale": self.scale, "zp": self.zp}


@dataclass
class Layout:
    """``img``: [1, c, h, w] streamed as h*w pixels of c channels; ``vec``: [1, f] as one word,
    hardware element i holding ONNX flat element ``perm[i]``."""

    kind: str
    c: int = 0
    h: int = 1
    w: int = 1
    perm: np.ndarray | None = None

    @property
    def elems(self) -> int:
        return self.c if self.kind == "img" else len(self.perm)

    @property
    def vecs(self) -> int:
        return self.h * self.w if self.kind == "img" else 1


@dataclass
class OutputDecode:
    """Hardware output values -> the tail's input tensor."""

    tensor: str
    shape: tuple
    onnx_dtype: int
    layout: Layout
    kind: str  # "levels" (value = scale * (x - zp)) or "acc" (float value of the layer's accumulator)
    enc: Enc | None = None
    k: np.ndarray | None = None  # acc: per channel value = k * (acc_math - offset) + bias
    offset: np.ndarray | None = None
    bias: np.ndarray | None = None
    xnor_mw: int | None = None  # acc: acc_math = 2 * x - mw (popcount domain)


@dataclass
class Partition:
    graph: FpgaGraph
    head: onnx.ModelProto | None
    head_output: str
    in_enc: Enc
    in_layout: Layout
    in_shape: tuple
    tail: onnx.ModelProto | None
    decode: OutputDecode
    host_head: list[dict] = field(default_factory=list)
    host_tail: list[dict] = field(default_factory=list)
    hardware_nodes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"head": self.host_head, "tail": self.host_tail, "hardware": self.hardware_nodes,
                "boundary_in": {"tensor": self.head_output, "encoding": self.in_enc.to_json()},
                "boundary_out": {"tensor": self.decode.tensor, "kind": self.decode.kind},
                "notes": self.notes}

    # -- host-side packing -----------------------------------------------------------------

    def encode_input(self, boundary: np.ndarray) -> np.ndarray:
        """The head's output (float +-1 for Sign, integers for QuantizeLinear) -> hardware values
        ``[images, vecs, elems]``."""
        x = np.asarray(boundary, dtype=np.float64)
        n = x.shape[0]
        if self.in_layout.kind == "img":
            x = x.reshape(n, self.in_layout.c, -1).transpose(0, 2, 1)
        else:
            x = x.reshape(n, 1, -1)[:, :, self.in_layout.perm]
        v = x / self.in_enc.scale + self.in_enc.zp
        q = np.rint(v).astype(np.int64)
        dt = self.in_enc.dtype
        ok = np.isin(q, dt.values()) & (np.abs(v - q) < 1e-6)
        if not ok.all():
            bad = x[~ok].reshape(-1)[:3]
            what = ("Sign(0) = 0 is not a binary value" if dt.kind == "bipolar"
                    else f"outside the {dt.name} range fixed at compile time")
            raise ValueError(f"FPGA input {self.head_output!r} has values {bad.tolist()} that the hardware "
                             f"input cannot represent ({what})")
        return q

    def decode_output(self, y: np.ndarray) -> np.ndarray:
        """Hardware output values ``[images, vecs, elems]`` -> the tail's input tensor."""
        d = self.decode
        n = y.shape[0]
        y = y.astype(np.float64)
        if d.kind == "acc":
            acc = 2 * y - d.xnor_mw if d.xnor_mw is not None else y
            v = (d.k * (acc - d.offset)).astype(np.float32)
            if d.bias is not None:
                v = v + d.bias.astype(np.float32)
        else:
            v = d.enc.scale * (y - d.enc.zp)
        if d.layout.kind == "img":
            v = v.transpose(0, 2, 1).reshape(n, d.layout.c, d.layout.h, d.layout.w)
        else:
            flat = np.empty((n, len(d.layout.perm)), dtype=v.dtype)
            flat[:, d.layout.perm] = v.reshape(n, -1)
            v = flat
        v = v.reshape((n,) + tuple(d.shape[1:]))
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(d.onnx_dtype)
        if np.issubdtype(np_dtype, np.integer):
            return np.rint(v).astype(np_dtype)
        return v.astype(np_dtype)


# ---------------------------------------------------------------------------------------------
# graph helpers


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inferred = inferred = infer_shapes(model)  # the model's own shapes where inference fails
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, int] = {}
        g = inferred.graph
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            t = vi.type.tensor_type
            self.dtypes[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int"):
                        self.consts[n.output[0]] = np.array(a.f if a.name == "value_float" else a.i)
                    elif a.name in ("value_floats", "value_ints"):
                        self.consts[n.output[0]] = np.array(list(a.floats) or list(a.ints))
        for name, arr in self.consts.items():
            self.shapes.setdefault(name, arr.shape)
            self.dtypes.setdefault(name, helper.np_dtype_to_tensor_dtype(arr.dtype))
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in model.graph.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)

    def const(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.consts:
            return self.consts[name]
        return None

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def data_input(self, node) -> str:
        return node.input[0]

    def next_node(self, tensor: str):
        """The single consumer of ``tensor``, or None (graph output, fan-out, no consumer)."""
        if tensor in self.outputs:
            return None
        cons = self.consumers.get(tensor, [])
        return cons[0] if len(cons) == 1 else None


def _nname(node) -> str:
    return node.name or f"{node.op_type}:{node.output[0]}"


# ---------------------------------------------------------------------------------------------
# weights


@dataclass
class _Weights:
    codes: np.ndarray  # int64 [N, K] (Conv: [Co, Ci*kh*kw] in ONNX order)
    scale: np.ndarray  # float64 [N]
    bias: np.ndarray | None  # float64 [N]
    dtype: DType


def _row_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Float weights [N, K] -> integer codes and per-row scale, if every row lies on a small
    integer grid (binary +-a_n included)."""
    n = w.shape[0]
    codes = np.zeros(w.shape, dtype=np.int64)
    scale = np.zeros(n)
    a = np.abs(w.astype(np.float64))
    for r in range(n):
        amax = a[r].max()
        if amax == 0:
            codes[r], scale[r] = 1, 0.0
            continue
        if np.allclose(a[r], amax, rtol=1e-6, atol=0):
            codes[r], scale[r] = np.where(w[r] > 0, 1, -1), a[r].mean()
            continue
        for m in range(1, MAX_WEIGHT_CODE + 1):
            s = amax / m
            q = w[r] / s
            if np.all(np.abs(q - np.rint(q)) < 1e-4):
                codes[r], scale[r] = np.rint(q).astype(np.int64), s
                break
        else:
            return None
    return codes, scale


def _out_by_in(g: _Graph, node, w: np.ndarray) -> np.ndarray:
    """The weight tensor of a MatMul ([in, out]), Gemm ([in, out], or [out, in] with
    ``transB``) or Conv ([out, in, kh, kw]) as rows per output channel ([out, in...])."""
    if node.op_type == "MatMul":
        return w.T
    if node.op_type == "Gemm":
        return w if g.attr(node, "transB", 0) else w.T
    return w.reshape(w.shape[0], -1)


def _weights(g: _Graph, node) -> tuple[_Weights | None, str]:
    op = node.op_type
    if len(node.input) < 2:
        return None, "no weight input"
    wname = node.input[1]
    wq = g.const(wname)
    dq = g.producer.get(wname)
    codes = scale = None
    if wq is None and dq is not None and dq.op_type == "DequantizeLinear":
        q, s = g.const(dq.input[0]), g.const(dq.input[1])
        zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if q is None or s is None:
            return None, "weights are not constant"
        axis = g.attr(dq, "axis", 1)
        if s.size > 1:
            out_axis = {"MatMul": 1, "Gemm": 0 if g.attr(node, "transB", 0) else 1, "Conv": 0}[op]
            if axis % q.ndim != out_axis:
                return None, "weight scale is not per output channel"
        qi = q.astype(np.int64) - (zp.astype(np.int64) if zp is not None else 0) if zp is None or zp.size == 1 \
            else q.astype(np.int64) - np.expand_dims(zp.astype(np.int64), tuple(i for i in range(q.ndim) if i != axis % q.ndim))
        codes = _out_by_in(g, node, qi)
        scale = np.broadcast_to(s.astype(np.float64).reshape(-1), (codes.shape[0],)).astype(np.float64).copy()
    elif wq is not None:
        if wq.dtype.kind != "f":
            return None, "integer weights without DequantizeLinear"
        w = _out_by_in(g, node, wq)
        if w.ndim != 2:
            return None, "weights are not a matrix"
        found = _row_codes(w)
        if found is None:
            return None, f"float weights (not binary, not on a {MAX_WEIGHT_CODE}-level integer grid per channel)"
        codes, scale = found
    else:
        return None, "weights are not constant"
    bias = None
    if op == "Gemm":
        if g.attr(node, "transA", 0):
            return None, "Gemm with transA"
        scale = scale * float(g.attr(node, "alpha", 1.0))
        if len(node.input) > 2 and node.input[2]:
            c = g.const(node.input[2])
            if c is None:
                return None, "Gemm bias is not constant"
            bias = float(g.attr(node, "beta", 1.0)) * np.broadcast_to(c.astype(np.float64).reshape(-1), (codes.shape[0],))
    elif op == "Conv" and len(node.input) > 2 and node.input[2]:
        c = g.const(node.input[2])
        if c is None:
            return None, "Conv bias is not constant"
        bias = c.astype(np.float64).reshape(-1)
    lo, hi = int(codes.min()), int(codes.max())
    if set(np.unique(codes).tolist()) <= {-1, 1}:
        dt = BIPOLAR
    else:
        kind, bits = bits_for_range(lo, hi)
        if bits > 8:
            return None, f"{bits}-bit weights (at most 8)"
        dt = DType(kind, bits)
    return _Weights(codes.astype(np.int64), scale, bias, dt), ""


# ---------------------------------------------------------------------------------------------
# the walk


def _trace_quantizer(g: _Graph, tensor: str):
    node = g.producer.get(tensor)
    while node is not None and (node.op_type in LAYOUT or node.op_type == "MaxPool"
                                or (node.op_type == "DequantizeLinear" and g.const(node.input[0]) is None)):
        node = g.producer.get(node.input[0])
    return node if node is not None and node.op_type in QUANTIZERS else None


def _input_enc(g: _Graph, q) -> Enc:
    """Encoding of a boundary quantizer's output (the hardware input)."""
    if q.op_type == "Sign":
        return Enc(BIPOLAR, 1.0, 0.0)
    s = g.const(q.input[1])
    zp = g.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if s is None or s.size != 1 or (zp is not None and zp.size != 1):
        raise UnsupportedModelError(f"{_nname(q)}: FPGA input quantizer needs a constant per-tensor scale")
    out_t = zp.dtype if zp is not None else np.dtype(np.uint8)
    info = np.iinfo(out_t)
    qlo, qhi = info.min, info.max
    zpv = int(zp.reshape(-1)[0]) if zp is not None else 0
    src = g.producer.get(q.input[0])
    rng = None
    if src is not None and src.op_type == "Clip":
        lo = g.const(src.input[1]) if len(src.input) > 1 and src.input[1] else None
        hi = g.const(src.input[2]) if len(src.input) > 2 and src.input[2] else None
        rng = (float(lo) if lo is not None else -np.inf, float(hi) if hi is not None else np.inf)
    elif src is not None and src.op_type == "Relu":
        rng = (0.0, np.inf)
    if rng is not None:
        sv = float(s.reshape(-1)[0])
        to_q = lambda v: int(np.clip(np.rint(v / sv) + zpv, info.min, info.max)) if np.isfinite(v) else (info.min if v < 0 else info.max)  # noqa: E731
        qlo, qhi = sorted((to_q(rng[0]), to_q(rng[1])))
    kind, bits = bits_for_range(0, qhi - qlo)
    return Enc(DType("uint", bits), 1.0, float(-qlo))


def _grid_model(g: _Graph, in_name: str, in_shape: tuple, nodes: list, out_name: str) -> onnx.ModelProto:
    needed = {i for n in nodes for i in n.input if i and i in g.consts}
    inits = [numpy_helper.from_array(np.asarray(g.consts[i]), i) for i in sorted(needed)]
    graph = helper.make_graph(
        [n for n in nodes], "grid",
        [helper.make_tensor_value_info(in_name, onnx.TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out_name, g.dtypes.get(out_name, onnx.TensorProto.FLOAT), None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)], ir_version=g.model.ir_version)


def _run_grid(model: onnx.ModelProto, name: str, v: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: v})[0]


@dataclass
class _Act:
    thresholds: np.ndarray
    flip: np.ndarray
    odtype: DType
    enc: Enc
    acc_lo: int
    acc_hi: int
    count_up_in_v: np.ndarray  # bool [N]: the output code grows with the float pre-activation
    notes: list


@dataclass(frozen=True)
class _ActChain:
    """The float nodes after a layer's MatMul/Conv: ``chain`` (BatchNormalization, Relu, ...)
    from the tensor ``compute_out``, ending in the quantizer node ``quant``."""

    compute_out: str
    chain: list
    quant: object


def _activation(g: _Graph, name: str, w: _Weights, in_enc: Enc, xnor: bool, is_conv: bool, act: _ActChain) -> _Act:
    """Thresholds for one layer by running ``act``'s chain + quantizer in onnxruntime on every
    accumulator value (see the module docstring)."""
    compute_out, chain, quant = act.compute_out, act.chain, act.quant
    codes = w.codes
    n, k = codes.shape
    rowsum = codes.sum(1).astype(np.float64)
    kfac = w.scale * in_enc.scale
    if xnor:
        lo_c = np.zeros(n, dtype=np.int64)
        hi_c = np.full(n, k, dtype=np.int64)
    else:
        xl, xh = in_enc.dtype.lo, in_enc.dtype.hi
        lo_c = np.minimum(codes * xl, codes * xh).sum(1)
        hi_c = np.maximum(codes * xl, codes * xh).sum(1)
    glo, ghi = int(lo_c.min()), int(hi_c.max())
    grid = np.arange(glo, ghi + 1, dtype=np.int64)
    if grid.size * n > MAX_GRID:
        raise UnsupportedModelError(f"{name}: accumulator range {glo}..{ghi} x {n} channels is too large to threshold")
    acc_math = 2 * grid - k if xnor else grid
    v = (kfac[None, :] * (acc_math[:, None] - in_enc.zp * rowsum[None, :])).astype(np.float32)
    if w.bias is not None:
        v = v + w.bias.astype(np.float32)[None, :]
    shape = (grid.size, n, 1, 1) if is_conv else (grid.size, n)
    model = _grid_model(g, compute_out, shape, chain + [quant], quant.output[0])
    y = _run_grid(model, compute_out, v.reshape(shape)).reshape(grid.size, n).astype(np.float64)

    reach = (grid[:, None] >= lo_c[None, :]) & (grid[:, None] <= hi_c[None, :])
    vals = np.unique(y[reach])
    base = vals.min()
    step = np.diff(vals).min() if vals.size > 1 else 1.0
    cnt_f = (y - base) / step
    cnt = np.rint(cnt_f).astype(np.int64)
    if np.abs(cnt_f - cnt)[reach].max(initial=0) > 1e-3:
        raise UnsupportedModelError(f"{name}: the activation's output levels {vals[:6].tolist()} are not evenly spaced")
    nlev = int(cnt[reach].max()) + 1
    notes = []
    if quant.op_type == "Sign" and nlev == 3:
        notes.append(f"{name}: some channels reach Sign(0) = 0 exactly: ternary (2-bit) activations")
    flip = np.zeros(n, dtype=bool)
    for c in range(n):
        seq = cnt[lo_c[c] - glo: hi_c[c] - glo + 1, c]
        d = np.diff(seq)
        if (d >= 0).all():
            continue
        if (d <= 0).all():
            flip[c] = True
            continue
        raise UnsupportedModelError(f"{name}: output channel {c} is not monotonic in the accumulator "
                                    "(the activation chain cannot become thresholds)")
    nt = nlev - 1
    # new accumulator domain per channel: flipped rows accumulate -acc (xnor: mw - popcount)
    new_lo = np.where(flip, (k - hi_c) if xnor else -hi_c, lo_c)
    new_hi = np.where(flip, (k - lo_c) if xnor else -lo_c, hi_c)
    thr = np.zeros((n, nt), dtype=np.int64)
    for c in range(n):
        accs = np.arange(lo_c[c], hi_c[c] + 1)
        seq = cnt[accs - glo, c]
        if flip[c]:
            accs = (k - accs) if xnor else -accs
            order = np.argsort(accs)
            accs, seq = accs[order], seq[order]
        for j in range(1, nt + 1):
            hit = np.nonzero(seq >= j)[0]
            thr[c, j - 1] = accs[hit[0]] if hit.size else new_hi[c] + 1
    odtype = BIPOLAR if nlev == 2 else DType("uint", max(1, int(nt).bit_length()))
    if odtype.kind == "bipolar":
        enc = Enc(odtype, step / 2.0, -(2.0 * base / step + 1.0))
    else:
        enc = Enc(odtype, float(step), float(-base / step))
    up = (~flip) == (kfac > 0)
    return _Act(thr, flip, odtype, enc, int(new_lo.min()), int(new_hi.max()), up, notes)


def partition(model: onnx.ModelProto) -> Partition:
    """Split ``model`` (static shapes, batch 1) into host head, FPGA pipeline and host tail."""
    g = _Graph(model)
    nodes = list(model.graph.node)
    first_q, why_not = None, []
    for node in nodes:
        if node.op_type in COMPUTE:
            w, reason = _weights(g, node)
            if w is None:
                why_not.append(f"{_nname(node)}: {reason}")
                continue
            q = _trace_quantizer(g, node.input[0])
            if q is None:
                why_not.append(f"{_nname(node)}: input is not quantized (no Sign/QuantizeLinear before it)")
                continue
            first_q = q
            break
    if first_q is None:
        raise UnsupportedModelError("no layer for the FPGA: it needs MatMul/Gemm/Conv with binary or low-bit "
                                    "weights fed by Sign or QuantizeLinear" + (f" ({'; '.join(why_not[:4])})" if why_not else ""))
    notes = [f"host: {r}" for r in why_not]
    b0 = first_q.output[0]
    in_enc = _input_enc(g, first_q)
    shape0 = g.shapes.get(b0)
    if shape0 is None or any(d <= 0 for d in shape0) or shape0[0] != 1:
        raise UnsupportedModelError(f"{b0}: FPGA input needs a static shape with batch 1 (got {shape0})")
    if len(shape0) == 4:
        layout = Layout("img", shape0[1], shape0[2], shape0[3])
    elif len(shape0) == 2:
        layout = Layout("vec", perm=np.arange(shape0[1]))
    else:
        raise UnsupportedModelError(f"{b0}: FPGA input must be [1, C, H, W] or [1, F], got {list(shape0)}")
    in_layout = layout
    enc = in_enc
    layers: list = []
    hw_nodes: list[dict] = []
    t = b0
    checkpoint = None  # (tensor, enc, layout, len(layers), len(hw_nodes)) after a quantizer
    decode = None
    idx = {"swg": 0, "mvau": 0, "pool": 0, "pad": 0}

    def new_name(kind):
        idx[kind] += 1
        return f"{kind}{idx[kind] - 1}"

    def add_swg(lay, kh, kw, sh, sw):
        s = SWG(new_name("swg"), lay.h, lay.w, lay.c, kh, kw, sh, sw, enc.dtype)
        layers.append(s)
        return s

    while True:
        node = g.next_node(t)
        if node is None or node.input[0] != t:
            break
        op = node.op_type
        out = node.output[0]
        if op in LAYOUT:
            oshape = g.shapes.get(out)
            if op == "Identity":
                t = out
                continue
            if oshape is None or len(oshape) != 2 or oshape[0] != 1:
                notes.append(f"hardware ends at {_nname(node)}: only reshapes to [1, F] are mapped")
                break
            if layout.kind == "img" and layout.h * layout.w > 1:
                if not layers:  # before the first layer: the host packs the flat vector
                    in_layout = layout = Layout("vec", perm=np.arange(layout.c * layout.h * layout.w))
                else:
                    add_swg(layout, layout.h, layout.w, 1, 1)
                    hh, ww, cc = layout.h, layout.w, layout.c
                    perm = np.array([c * hh * ww + y * ww + x for y in range(hh) for x in range(ww) for c in range(cc)])
                    layout = Layout("vec", perm=perm)
                    hw_nodes.append({"node": _nname(node), "op": op, "as": layers[-1].name})
            elif layout.kind == "img":
                layout = Layout("vec", perm=np.arange(layout.c))
                if not layers:
                    in_layout = layout
            t = out
            continue
        if op == "DequantizeLinear":
            s = g.const(node.input[1])
            zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if s is None or s.size != 1 or (zp is not None and zp.size != 1):
                notes.append(f"hardware ends at {_nname(node)}: per-axis activation DequantizeLinear")
                break
            sv, zv = float(s.reshape(-1)[0]), float(zp.reshape(-1)[0]) if zp is not None else 0.0
            enc = Enc(enc.dtype, sv * enc.scale, enc.zp + zv / enc.scale)
            t = out
            continue
        if op == "MaxPool":
            pads = g.attr(node, "pads", [0, 0, 0, 0])
            if layout.kind != "img" or any(pads) or g.attr(node, "ceil_mode", 0) or any(d != 1 for d in g.attr(node, "dilations", [1, 1])):
                notes.append(f"hardware ends at {_nname(node)}: MaxPool with padding/ceil/dilation")
                break
            kh, kw = g.attr(node, "kernel_shape")
            sh, sw = g.attr(node, "strides", [1, 1])
            s = add_swg(layout, kh, kw, sh, sw)
            layers.append(Pool(new_name("pool"), layout.c, kh * kw, s.out_vecs, enc.dtype,
                               np.full(layout.c, enc.scale > 0)))
            hw_nodes.append({"node": _nname(node), "op": op, "as": f"{s.name}+{layers[-1].name}"})
            layout = Layout("img", layout.c, s.oh, s.ow)
            t = out
            continue
        if op not in COMPUTE:
            break
        w, reason = _weights(g, node)
        if w is None:
            notes.append(f"hardware ends at {_nname(node)}: {reason}")
            break
        is_conv = op == "Conv"
        mw_codes = w.codes
        if is_conv:
            if layout.kind != "img":
                break
            wt = g.const(node.input[1])
            kshape = g.attr(node, "kernel_shape") or list((wt if wt is not None else g.const(g.producer[node.input[1]].input[0])).shape[2:])
            kh, kw = kshape
            if g.attr(node, "group", 1) != 1 or any(d != 1 for d in g.attr(node, "dilations", [1, 1])) \
                    or g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                notes.append(f"hardware ends at {_nname(node)}: only group=1, dilation=1 Conv with explicit pads is mapped")
                break
            pads = tuple(int(p) for p in g.attr(node, "pads", [0, 0, 0, 0]))
            if any(pads):
                # ONNX pads with float 0: hardware value zp. Bipolar (+-1) has no 0: re-encode as x + 1.
                recode = enc.dtype.kind == "bipolar"
                odt = DType("uint", 2) if recode else enc.dtype
                zp = enc.zp + 1 if recode else enc.zp
                if abs(zp - round(zp)) > 1e-9 or not odt.lo <= round(zp) <= odt.hi:
                    notes.append(f"hardware ends at {_nname(node)}: its zero padding has no code in {odt.name}")
                    break
                pad = Pad(new_name("pad"), layout.h, layout.w, layout.c, pads, enc.dtype, odt, int(round(zp)), recode)
                layers.append(pad)
                hw_nodes.append({"node": _nname(node), "op": "Conv pads", "as": pad.name})
                enc = Enc(odt, enc.scale, float(round(zp)))
                layout = Layout("img", layout.c, pad.oh, pad.ow)
            sh, sw = g.attr(node, "strides", [1, 1])
            co = mw_codes.shape[0]
            mw_codes = mw_codes.reshape(co, layout.c, kh, kw).transpose(0, 2, 3, 1).reshape(co, -1)
            if (kh, kw, sh, sw) != (1, 1, 1, 1):
                s = add_swg(layout, kh, kw, sh, sw)
                oh, ow = s.oh, s.ow
            else:
                oh, ow = layout.h, layout.w
            vecs = oh * ow
            out_layout = Layout("img", co, oh, ow)
        else:
            if layout.kind == "img":
                if layout.h * layout.w != 1:
                    break
                layout = Layout("vec", perm=np.arange(layout.c))
            mw_codes = mw_codes[:, layout.perm]
            vecs = 1
            out_layout = Layout("vec", perm=np.arange(mw_codes.shape[0]))
        w = _Weights(mw_codes, w.scale, w.bias, w.dtype)
        xnor = w.dtype.kind == "bipolar" and enc.dtype.kind == "bipolar"
        # the elementwise chain after the layer, up to a quantizer
        chain, pool_node, quant, u = [], None, None, out
        while True:
            n2 = g.next_node(u)
            if n2 is None or n2.input[0] != u:
                break
            if n2.op_type in ELEMENTWISE and all(g.const(i) is not None for i in n2.input[1:] if i):
                chain.append(n2)
            elif n2.op_type == "MaxPool" and pool_node is None and is_conv:
                pool_node = n2
            elif n2.op_type in QUANTIZERS:
                quant = n2
                break
            else:
                break
            u = n2.output[0]
        mname = new_name("mvau")
        hw_nodes.append({"node": _nname(node), "op": op, "as": mname})
        if quant is None:
            # last hardware layer: the accumulator goes to the host, which applies the rest
            nrow, k = w.codes.shape
            if xnor:
                lo, hi = 0, k
            else:
                lo = int(np.minimum(w.codes * enc.dtype.lo, w.codes * enc.dtype.hi).sum(1).min())
                hi = int(np.maximum(w.codes * enc.dtype.lo, w.codes * enc.dtype.hi).sum(1).max())
            layer = MVAU(mname, k, nrow, vecs, w.dtype, enc.dtype, w.codes, None,
                         DType(*bits_for_range(lo, hi)), lo, hi, nodes=[_nname(node)])
            layers.append(layer)
            rowsum = w.codes.sum(1).astype(np.float64)
            decode = OutputDecode(out, g.shapes.get(out), g.dtypes.get(out, onnx.TensorProto.FLOAT), out_layout, "acc",
                                  k=w.scale * enc.scale, offset=enc.zp * rowsum, bias=w.bias,
                                  xnor_mw=k if xnor else None)
            t = out
            break
        if pool_node is not None:
            pads = g.attr(pool_node, "pads", [0, 0, 0, 0])
            if any(pads) or g.attr(pool_node, "ceil_mode", 0):
                layers[:] = layers[:checkpoint[3]] if checkpoint else []
                notes.append(f"hardware ends at {_nname(pool_node)}: MaxPool with padding/ceil")
                break
        act = _activation(g, mname, w, enc, xnor, is_conv, _ActChain(out, chain, quant))
        notes += act.notes
        codes = np.where(act.flip[:, None], -w.codes, w.codes)
        wdt = w.dtype if w.dtype.kind == "bipolar" else DType(*bits_for_range(int(codes.min()), int(codes.max())))
        layer = MVAU(mname, codes.shape[1], codes.shape[0], vecs, wdt, enc.dtype, codes, act.thresholds, act.odtype,
                     act.acc_lo, act.acc_hi, nodes=[_nname(node)] + [_nname(c) for c in chain] + [_nname(quant)])
        layers.append(layer)
        enc = act.enc
        layout = out_layout
        if pool_node is not None:
            kh, kw = g.attr(pool_node, "kernel_shape")
            sh, sw = g.attr(pool_node, "strides", [1, 1])
            s = add_swg(layout, kh, kw, sh, sw)
            layers.append(Pool(new_name("pool"), layout.c, kh * kw, s.out_vecs, enc.dtype, act.count_up_in_v.copy()))
            hw_nodes.append({"node": _nname(pool_node), "op": "MaxPool", "as": f"{s.name}+{layers[-1].name}"})
            layout = Layout("img", layout.c, s.oh, s.ow)
        t = quant.output[0]
        checkpoint = (t, enc, layout, len(layers), len(hw_nodes))
    if decode is None:
        if checkpoint is None:
            raise UnsupportedModelError("no layer for the FPGA after " + b0 + (f" ({'; '.join(notes)})" if notes else ""))
        t, enc, layout, nl, nh = checkpoint
        del layers[nl:]
        del hw_nodes[nh:]
        decode = OutputDecode(t, g.shapes.get(t), g.dtypes.get(t, onnx.TensorProto.FLOAT), layout, "levels", enc=enc)
    graph = FpgaGraph(layers, in_enc.dtype, in_layout.vecs, in_layout.elems)
    graph.check()

    # host parts
    from onnx.utils import Extractor

    ex = Extractor(g.inferred)
    in_names = [i.name for i in model.graph.input if i.name not in g.consts]
    out_names = [o.name for o in model.graph.output]
    head = ex.extract_model(in_names, [b0])
    tail = None if decode.tensor in out_names and len(out_names) == 1 else ex.extract_model([decode.tensor], out_names)
    host_head = [{"node": _nname(n), "op": n.op_type} for n in head.graph.node]
    host_tail = [{"node": _nname(n), "op": n.op_type} for n in tail.graph.node] if tail is not None else []
    return Partition(graph, head, b0, in_enc, in_layout, tuple(shape0), tail, decode, host_head, host_tail,
                     hw_nodes, notes)

"""Frontend: read an ONNX model, check it, bind its input shapes, list unsupported ops.

Everything here is cheap and runs before any expensive work (simplification, TVM builds), so a
bad model fails in well under a second with a message that names the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from .errors import InvalidModelError, UnsupportedModelError
from .onnx_utils import infer_shapes

MIN_OPSET = 11


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and concrete shape of a model input or output."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: Mapping) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file (with external data next to it) and run the ONNX checker.

    Raises InvalidModelError for a missing, truncated or non-ONNX file, or a model the checker
    rejects; the message names the file and the cause in one line.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidModelError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as err:
        raise InvalidModelError(f"{path}: external data file missing ({err.filename or err})") from None
    except Exception as err:  # protobuf DecodeError and friends
        raise InvalidModelError(f"{path}: not a valid ONNX model ({_one_line(err)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModelError(f"{path}: not a valid ONNX model (no graph or no nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise InvalidModelError(f"{path}: ONNX checker rejected the model: {_one_line(err)}") from None
    check_quant_scales(model, path)
    opset = onnx_opset(model)
    if 0 < opset < MIN_OPSET:  # 0: no standard-domain ops (ai.onnx.ml etc.: check_supported lists them)
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as err:
            raise InvalidModelError(
                f"{path}: opset {opset} is below {MIN_OPSET} and could not be upgraded ({_one_line(err)})"
            ) from None
    return model


# constant scale operands of the standard quantized ops, by input index
SCALE_INPUTS = {"QuantizeLinear": (1,), "DequantizeLinear": (1,), "QLinearConv": (1, 4, 6), "QLinearMatMul": (1, 4, 6)}


def check_quant_scales(model: onnx.ModelProto, path: str | os.PathLike = "model") -> None:
    """Refuse (InvalidModelError) a quantized model whose constant quantization scales are not
    finite, or zero in a QuantizeLinear (a division by zero): its outputs are undefined and
    each runtime computes something else (onnxruntime's ``quantize_static`` writes an ``inf``
    scale for a tensor it saw reach -inf in calibration, such as a causal attention mask)."""
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    bad = []
    for node in model.graph.node:
        for i in SCALE_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            t = consts.get(node.input[i]) if i < len(node.input) else None
            if t is None or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
                continue
            v = onnx.numpy_helper.to_array(t).astype(np.float64)
            if not np.isfinite(v).all() or (node.op_type == "QuantizeLinear" and (v == 0).any()):
                bad.append(f"{node.name or node.op_type} ({node.input[i]} = {v.reshape(-1)[:3].tolist()})")
    if bad:
        raise InvalidModelError(f"{path}: {len(bad)} quantization scale(s) are not finite or divide by zero, so the "
                                f"model's outputs are undefined (re-quantize it): {', '.join(bad[:3])}"
                                f"{', ...' if len(bad) > 3 else ''}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "") or type(err).__name__


def onnx_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the graph (initializers listed as inputs are left out)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def parse_shape_args(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1,3,224,224`` strings (the ``--input-shape`` option); a 0 binds an empty
    dimension (``past=1,8,0,64``: an empty key-value cache)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise InvalidModelError(f"--input-shape {item!r}: expected NAME=D0,D1,... (e.g. input=1,3,224,224)")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InvalidModelError(f"--input-shape {item!r}: dimensions must be integers") from None
        if any(d < 0 for d in shape):  # 0 is a size: an empty tensor (an empty past-key-value cache)
            raise InvalidModelError(f"--input-shape {item!r}: dimensions must be 0 or more")
        shapes[name] = shape
    return shapes


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """The declared dimensions: ints (a declared 0 is a real, static size: empty tensors such
    as an empty past-key-value cache), dim_param names, None where neither is set."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None  # type: ignore[return-value]
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _np_dtype(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def bind_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[onnx.ModelProto, list[TensorSpec]]:
    """Fix every input dimension, from ``shapes`` or from the model where it is static.

    Errors name unknown inputs (listing the valid ones), rank or static-dim mismatches, and
    every input dimension still dynamic (with the exact --input-shape option that would bind
    it). Returns a copy of the model with concrete input shapes, plus the input specs.
    """
    shapes = dict(shapes or {})
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise InvalidModelError(
            f"unknown input name(s) {', '.join(map(repr, unknown))}; the model's inputs are {', '.join(map(repr, names))}"
        )
    model = _copy(model)
    specs, problems = [], []
    for vi in model.graph.input:
        if vi.name not in names:
            continue
        if not vi.type.HasField("tensor_type"):
            problems.append(f"input {vi.name!r} is not a tensor (sequence/map inputs are not supported)")
            continue
        dims = _dims(vi)
        given = shapes.get(vi.name)
        if given is not None:
            if dims is not None and len(dims) != len(given):
                problems.append(f"input {vi.name!r} has rank {len(dims)} ({_fmt(dims)}), --input-shape gives rank {len(given)}")
                continue
            if dims is not None:
                for axis, (d, g) in enumerate(zip(dims, given)):
                    if isinstance(d, int) and d != g:
                        problems.append(f"input {vi.name!r} dimension {axis} is fixed to {d} in the model, --input-shape gives {g}")
            final = tuple(given)
        else:
            if dims is None or any(not isinstance(d, int) for d in dims):
                example = ",".join(str(d) if isinstance(d, int) else "N" for d in (dims or ["?"]))
                problems.append(
                    f"input {vi.name!r} has dynamic shape {_fmt(dims)}; bind it with --input-shape {vi.name}={example}"
                )
                continue
            final = tuple(dims)  # type: ignore[arg-type]
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in final:
            shape.dim.add().dim_value = int(d)
        specs.append(TensorSpec(vi.name, _np_dtype(vi.type.tensor_type.elem_type), final))
    if problems:
        raise InvalidModelError("; ".join(problems))
    return model, specs


def _fmt(dims) -> str:
    if dims is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Output specs from a model whose shapes have been inferred (after binding + simplify).
    Outputs that are not tensors (sequences, optionals, maps: e.g. of an If or Loop) are
    refused (UnsupportedModelError): the backends return tensors only."""
    _refuse_non_tensor_outputs(model)
    inferred = infer_shapes(model, data_prop=True)
    specs = []
    for vi in inferred.graph.output:
        dims = _dims(vi) or []
        specs.append(TensorSpec(vi.name, _np_dtype(vi.type.tensor_type.elem_type),
                                tuple(d if isinstance(d, int) else -1 for d in dims)))
    return specs


# element types a backend can take: the ones numpy holds natively (inputs, outputs and sample
# files are numpy arrays) and TVM's LLVM code generation handles
TENSOR_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
})
_TYPE_ATTRS = {"Cast": "to", "RandomNormal": "dtype", "RandomUniform": "dtype", "EyeLike": "dtype",
               "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Multinomial": "dtype", "Bernoulli": "dtype"}


def _refuse_non_tensor_outputs(model: onnx.ModelProto) -> None:
    others = [f"{vi.name!r} ({vi.type.WhichOneof('value')})" for vi in model.graph.output
              if vi.type.WhichOneof("value") not in (None, "tensor_type")]
    if others:
        raise UnsupportedModelError(f"graph output(s) {', '.join(others)} are not tensors: optc's backends return "
                                    "tensors only (sequence, optional and map outputs are not supported)")


def check_types(model: onnx.ModelProto, backend: str) -> None:
    """Raise UnsupportedModelError naming every tensor of an element type outside
    :data:`TENSOR_TYPES` (bfloat16, float8, int4, strings, ...): numpy cannot hold it as an
    input or output, and the backend has no kernels for it. Checks graph inputs, outputs,
    initializers, inferred intermediate values and the target types of Cast-like nodes.
    Graph outputs that are not tensors (a SplitToSequence's sequence, ...) are refused first,
    before any pass runs on them."""
    _refuse_non_tensor_outputs(model)
    seen: dict[str, list[str]] = {}

    def note(elem_type: int, where: str) -> None:
        if elem_type and elem_type not in TENSOR_TYPES:
            seen.setdefault(onnx.TensorProto.DataType.Name(elem_type), []).append(where)

    inferred = infer_shapes(model)
    g = inferred.graph
    for kind, vis in (("input", g.input), ("output", g.output), ("value", g.value_info)):
        for vi in vis:
            if vi.type.HasField("tensor_type"):
                note(vi.type.tensor_type.elem_type, f"{kind} {vi.name!r}")
    for t in g.initializer:
        note(t.data_type, f"initializer {t.name!r}")
    for i, node in enumerate(g.node):
        for a in node.attribute:
            if a.name == _TYPE_ATTRS.get(node.op_type) and a.type == onnx.AttributeProto.INT:
                note(a.i, f"{node.op_type} node {node.name or f'#{i}'}")
            if a.type == onnx.AttributeProto.TENSOR:
                note(a.t.data_type, f"{node.op_type} node {node.name or f'#{i}'}")
    if seen:
        parts = [f"{t} ({', '.join(w[:3])}{', ...' if len(w) > 3 else ''})" for t, w in sorted(seen.items())]
        raise UnsupportedModelError(f"element type(s) backend {backend} cannot take (numpy has no such dtype "
                                    f"or there are no kernels for it): " + "; ".join(parts))


def check_supported(model: onnx.ModelProto, supported: set[str], backend: str,
                    reasons: Mapping[str, str] | None = None) -> None:
    """Raise UnsupportedModelError listing every unsupported op type with its node names.

    Ops in domains other than the default ONNX domain are never supported by a backend that
    lowers standard ONNX. Nodes inside subgraphs (If/Loop bodies) are checked too.
    ``reasons``: why a node is still there, by node name (e.g. a Loop a pass did not unroll).
    """
    reasons = reasons or {}
    missing: dict[str, list[str]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for i, node in enumerate(graph.node):
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            if key not in supported:
                label = node.name or f"#{i}"
                missing.setdefault(key, []).append(f"{label}: {reasons[label]}" if label in reasons else label)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    if missing:
        parts = []
        for op, nodes in sorted(missing.items()):
            shown = ", ".join(nodes[:5]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 5 else "")
            parts.append(f"{op} ({shown})")
        raise UnsupportedModelError(
            f"{len(missing)} unsupported op type(s) for backend {backend}: " + "; ".join(parts)
        )

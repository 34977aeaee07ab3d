"""Graph inputs frozen into constants at compile time (``optc compile --const-input NAME``).

Some models take operands as graph inputs that a compiler needs as constants: the ``axes``
of a Reduce*, the ``sizes``/``scales`` of a Resize, the ``k`` of a TopK, the ``pads`` of a
Pad, the ``shape`` of a Reshape (TVM's importer builds static shapes; see
``optc.backends.tvm.static_operands``). When the value is in fact fixed for a deployment, the
user can say so: each named input is replaced by an initializer holding the value given in
the sample inputs (``--inputs``), before shapes are bound. The package then has no such
input; it keeps the value in ``const_inputs.npz`` (role ``const_inputs``) and the manifest
lists it, so that :func:`check_run_inputs` refuses a later run that passes another value for
it (the package would silently ignore it otherwise).

Only inputs whose data is given can be frozen: the value comes from the user, never from a
guess. Verification compares the artifact with onnxruntime on the frozen model, which
computes what the original computes on that value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InvalidModelError, UsageError

FILE = "const_inputs.npz"  # in the package, role "const_inputs"
SHOWN = 16  # values of a frozen input shown in the report (more: shape and dtype only)


def freeze(model: onnx.ModelProto, names: Iterable[str],
           arrays: Mapping[str, np.ndarray] | None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``model`` with the graph inputs ``names`` replaced by initializers holding their
    values in ``arrays``; returns (new model, frozen values by name). UsageError for a name
    that is not a graph input, or whose data is not given; InvalidModelError for data whose
    dtype or rank the input does not allow."""
    names = list(dict.fromkeys(names))
    if not names:
        return model, {}
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    unknown = [n for n in names if n not in inputs]
    if unknown:
        raise UsageError(f"--const-input {', '.join(map(repr, unknown))}: not an input of the model "
                         f"(inputs: {', '.join(map(repr, inputs)) or 'none'})")
    missing = [n for n in names if arrays is None or n not in arrays]
    if missing:
        raise UsageError(f"--const-input {', '.join(map(repr, missing))}: the value to freeze must be given "
                         "in the sample inputs (--inputs FILE.npz holding an array of that name)")
    values = {n: _conform(inputs[n], np.asarray(arrays[n])) for n in names}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [vi for vi in out.graph.input if vi.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items())
    return out, values


def _conform(vi: onnx.ValueInfoProto, value: np.ndarray) -> np.ndarray:
    """``value`` checked against the input's declared element type and shape."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise InvalidModelError(f"--const-input {vi.name!r}: only tensor inputs can be frozen")
    want = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    if value.dtype != want:
        raise InvalidModelError(f"--const-input {vi.name!r}: the given array is {value.dtype}, the model "
                                f"declares {np.dtype(want).name}")
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) != value.ndim or any(d is not None and d != s for d, s in zip(dims, value.shape)):
            raise InvalidModelError(f"--const-input {vi.name!r}: the given array has shape {list(value.shape)}, "
                                    f"the model declares {[d if d is not None else '?' for d in dims]}")
    return np.array(value, order="C")  # a copy: later changes to the caller's array do not leak in


def describe(values: Mapping[str, np.ndarray]) -> list[dict]:
    """The report's record of frozen inputs: name, dtype, shape and (small ones) the values."""
    out = []
    for name, v in values.items():
        d = {"name": name, "dtype": v.dtype.name, "shape": list(v.shape)}
        if v.size <= SHOWN:
            d["value"] = v.tolist()
        out.append(d)
    return out


def save(values: Mapping[str, np.ndarray], package: Path) -> dict[str, str]:
    """Write the frozen values into the package; returns its ``files_by_role`` entry."""
    if not values:
        return {}
    np.savez(package / FILE, **values)
    return {"const_inputs": FILE}


def load(package: Path, manifest: Mapping) -> dict[str, np.ndarray]:
    """The package's frozen input values ({} when none were frozen)."""
    rel = manifest.get("files_by_role", {}).get("const_inputs")
    if rel is None:
        return {}
    with np.load(Path(package) / rel) as f:
        return {k: f[k] for k in f.files}


def check_run_inputs(arrays: Mapping[str, np.ndarray], package: Path, manifest: Mapping) -> dict:
    """``arrays`` without the package's frozen inputs; each one given must equal the frozen
    value (InvalidModelError otherwise: the package cannot take another value)."""
    frozen = load(package, manifest)
    if not frozen:
        return dict(arrays)
    bad = [n for n in frozen if n in arrays and not _same(np.asarray(arrays[n]), frozen[n])]
    if bad:
        raise InvalidModelError("; ".join(
            f"input {n!r} was frozen at compile time (--const-input) to {_show(frozen[n])}; this package cannot "
            f"take another value ({_show(np.asarray(arrays[n]))} given): compile again with that value"
            for n in bad))
    return {k: v for k, v in arrays.items() if k not in frozen}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _show(v: np.ndarray) -> str:
    return f"{v.tolist()}" if v.size <= SHOWN else f"a {v.dtype.name} array of shape {list(v.shape)}"

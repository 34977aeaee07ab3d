"""Numbers against a reference: onnxruntime runs the original model on the same inputs, and
every compiled artifact's outputs are compared with it.

An output passes when ``max|out - ref| <= atol + rtol * max|ref|`` (integer and boolean
outputs must match exactly); the report gives the max absolute error and the max error
relative to the reference's largest magnitude, per output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from .errors import InvalidModelError
from .frontend import TensorSpec

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def ort_session(model: onnx.ModelProto | str | Path, *, threads: int | None = None,
                optimize: bool = False):
    """An onnxruntime CPU session; ``optimize=False`` disables graph optimizations (the most
    literal reading of the model, used for references); True is what a user deploys with.
    A model with ``ai.optc`` ops gets onnx's ReferenceEvaluator with optc's numpy ops instead
    (same ``run(None, feeds)`` call)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    if any(n.domain == "ai.optc" for n in proto.graph.node):  # optc's ops: numpy reference
        return _OptcReferenceSession(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def reference_name(model: onnx.ModelProto) -> str:
    """Which engine :func:`reference_outputs` runs for ``model`` (recorded in reports)."""
    if any(n.domain == "ai.optc" for n in model.graph.node):
        return "onnx ReferenceEvaluator with optc's numpy implementations of its ai.optc ops"
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPU, graph optimizations off"


def reference_outputs(model: onnx.ModelProto | str | Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs (graph optimizations off) for ``inputs``; a model with optc's own
    ``ai.optc`` ops (which onnxruntime cannot run) goes to onnx's ReferenceEvaluator with
    optc's numpy implementations of those ops (``optc.passes.optc_ops``)."""
    sess = ort_session(model)
    return [np.asarray(x) for x in sess.run(None, dict(inputs))]


class _OptcReferenceSession:
    """``ReferenceEvaluator`` with optc's ops behind onnxruntime's ``run(None, feeds)`` call."""

    def __init__(self, model: onnx.ModelProto):
        from optc.passes.optc_ops import reference_evaluator

        self._ev = reference_evaluator(model)

    def run(self, output_names, feeds):
        return self._ev.run(output_names, dict(feeds))


def generate_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic sample inputs: standard normal floats, small non-negative ints, random bools."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind in "iu":
            out[s.name] = rng.integers(0, 8, size=s.shape).astype(dt)
        elif dt.kind == "b":
            out[s.name] = rng.integers(0, 2, size=s.shape).astype(bool)
        else:
            raise InvalidModelError(f"input {s.name!r}: cannot generate sample data of type {s.dtype}")
    return out


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays from an .npz file (keyed by input name)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InvalidModelError(f"{path}: no such file") from None
    except Exception as err:
        raise InvalidModelError(f"{path}: not a readable .npz file ({err})") from None


def fit_inputs(arrays: Mapping[str, np.ndarray], specs: list[TensorSpec], source: str) -> dict[str, np.ndarray]:
    """Check user arrays against the bound input specs: names, dtypes, shapes.

    A leading (batch) dimension larger than the bound one is cut to it, so a labelled data
    file of N samples can feed a batch-1 model. Every mismatch is reported at once.
    """
    problems, out = [], {}
    for s in specs:
        if s.name not in arrays:
            problems.append(f"missing input {s.name!r}")
            continue
        a = arrays[s.name]
        if a.dtype != np.dtype(s.dtype):
            if a.dtype.kind == np.dtype(s.dtype).kind:
                a = a.astype(s.dtype)
            else:
                problems.append(f"input {s.name!r} has dtype {a.dtype}, the model wants {s.dtype}")
                continue
        if a.shape != s.shape:
            if a.ndim == len(s.shape) and a.shape[1:] == s.shape[1:] and a.shape[0] >= s.shape[0]:
                a = a[: s.shape[0]]
            else:
                problems.append(f"input {s.name!r} has shape {list(a.shape)}, the model wants {list(s.shape)}")
                continue
        out[s.name] = np.ascontiguousarray(a)
    if problems:
        raise InvalidModelError(f"{source}: " + "; ".join(problems))
    return out


def compare(outputs: list[np.ndarray], refs: list[np.ndarray], names: list[str],
            atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, floors: dict[str, float] | None = None) -> dict:
    """Per-output and overall error figures; ``passed`` is the verdict. A float output passes
    within ``max(atol + rtol * max|ref|, floors[name])`` (``floors``: per-output absolute
    tolerances, recorded as ``tolerance``); integer outputs must match exactly."""
    per = []
    if len(outputs) != len(refs):
        return {"passed": False, "atol": atol, "rtol": rtol, "outputs": [],
                "error": f"artifact returned {len(outputs)} outputs, reference has {len(refs)}"}
    for name, out, ref in zip(names, outputs, refs):
        out, ref = np.asarray(out), np.asarray(ref)
        entry = {"name": name, "shape": list(ref.shape), "dtype": str(ref.dtype)}
        if out.shape != ref.shape:
            entry.update(passed=False, error=f"shape {list(out.shape)} != reference {list(ref.shape)}")
        elif ref.dtype.kind in "iub":
            mism = int(np.count_nonzero(out != ref))
            entry.update(passed=mism == 0, mismatches=mism, max_abs_error=float(np.max(np.abs(
                out.astype(np.int64) - ref.astype(np.int64)), initial=0)), max_rel_error=0.0)
        else:
            o, r = out.astype(np.float64), ref.astype(np.float64)
            nan_ok = np.array_equal(np.isnan(o), np.isnan(r))
            finite = ~np.isnan(r)
            err = np.abs(o - r)[finite]
            max_abs = float(err.max(initial=0.0))
            scale = float(np.abs(r[finite]).max(initial=0.0))
            tol = max(atol + rtol * scale, (floors or {}).get(name, 0.0))
            entry.update(max_abs_error=max_abs, max_rel_error=max_abs / scale if scale > 0 else max_abs,
                         reference_max_abs=scale, passed=bool(nan_ok and max_abs <= tol))
            if floors is not None:
                entry["tolerance"] = tol
        per.append(entry)
    return {
        "passed": all(e["passed"] for e in per),
        "atol": atol,
        "rtol": rtol,
        "max_abs_error": max((e.get("max_abs_error", float("inf")) for e in per), default=0.0),
        "max_rel_error": max((e.get("max_rel_error", float("inf")) for e in per), default=0.0),
        "outputs": per,
    }

"""Calibration: run the float model in onnxruntime on sample data with the tensors to observe
exposed as extra graph outputs, and feed them to observers batch by batch.

Memory stays bounded: samples go through the model in batches of its (bound) batch size, the
exposed tensors of a few batches are gathered up to ``memory_budget`` bytes, handed to the
observers (fixed-size state) and dropped. Nothing holds all activations.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from .observers import Observer

__all__ = ["InputInfo", "model_inputs", "load_samples", "iter_batches", "TensorRunner", "collect", "channel_absmax",
           "stacked_inputs", "batch_rows"]

DEFAULT_MEMORY_BUDGET = 64 << 20
DYNAMIC_BATCH = 16  # batch for a model whose batch dimension is not bound

_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
       TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
       TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_}


class InputInfo:
    def __init__(self, vi: onnx.ValueInfoProto):
        tt = vi.type.tensor_type
        self.name = vi.name
        self.dtype = np.dtype(_NP.get(tt.elem_type, np.float32))
        self.dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tt.shape.dim]

    @property
    def batch(self) -> int | None:
        return self.dims[0] if self.dims else None


def model_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    inits = {t.name for t in model.graph.initializer}
    return [InputInfo(vi) for vi in model.graph.input if vi.name not in inits]


def load_samples(source: str | Path | Mapping[str, np.ndarray], model: onnx.ModelProto,
                 what: str = "calibration data") -> dict[str, np.ndarray]:
    """Arrays keyed by the model's input names, samples on axis 0, cast to the input dtypes.

    ``source``: an .npz path or a mapping. A single-input model also accepts a file with one
    array under another name (label arrays, ``optc.accuracy.LABEL_KEYS``, are ignored for that match).
    An input without a batch axis (a 0-d sample rate, a recurrent state ``[layers, batch,
    hidden]`` whose axis 0 is not the batch) takes one whole value per feed, stacked on a new
    axis 0 (an array of one more dimension than the input, :func:`stacked_inputs`); the batched
    inputs then hold ``feeds x batch`` samples.
    """
    from optc.errors import InvalidModelError, UsageError

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise UsageError(f"{what}: {path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as err:
            raise InvalidModelError(f"{what}: {path}: not a readable .npz file ({err})") from None
    else:
        arrays = dict(source)
    specs = model_inputs(model)
    from optc.accuracy import LABEL_KEYS

    candidates = {k: v for k, v in arrays.items() if k not in LABEL_KEYS}
    if len(specs) == 1 and specs[0].name not in arrays and len(candidates) == 1:
        arrays = {specs[0].name: next(iter(candidates.values()))}
    out, problems = {}, []
    for s in specs:
        if s.name not in arrays:
            problems.append(f"no array for input {s.name!r} (has {', '.join(map(repr, arrays)) or 'none'})")
            continue
        a = np.asarray(arrays[s.name])
        if not _fits(a, s):
            problems.append(f"input {s.name!r}: samples of shape {list(a.shape[1:])} do not fit the model's "
                            f"{[d if d is not None else '?' for d in s.dims]} (samples go on axis 0; an input "
                            "without a batch axis takes whole values stacked on a new axis 0)")
            continue
        out[s.name] = a.astype(s.dtype, copy=False)
    if not problems:
        problems += _count_problems(out, specs)
    if problems:
        raise InvalidModelError(f"{what}: " + "; ".join(problems))
    if not out or not next(iter(out.values())).shape[0]:
        raise InvalidModelError(f"{what}: no samples")
    return out


def _fits(a: np.ndarray, s: InputInfo) -> bool:
    """Samples of input ``s`` on axis 0 (the batch axis, or a new axis for whole values)."""
    if a.ndim == len(s.dims) + 1:
        return all(d is None or d == n for d, n in zip(s.dims, a.shape[1:]))
    return a.ndim == len(s.dims) >= 1 and all(d is None or d == n for d, n in zip(s.dims[1:], a.shape[1:]))


def stacked_inputs(data: Mapping[str, np.ndarray], model: onnx.ModelProto) -> set[str]:
    """The inputs given as whole values stacked on a new axis 0 (one per feed)."""
    return _stacked(data, model_inputs(model))


def _stacked(data: Mapping[str, np.ndarray], specs: list[InputInfo]) -> set[str]:
    return {s.name for s in specs if s.name in data and np.ndim(data[s.name]) == len(s.dims) + 1}


def _batch(specs: list[InputInfo], stacked: set[str]) -> int:
    if all(s.name in stacked for s in specs):
        return 1  # every input a whole value: one per feed
    b = {s.batch for s in specs if s.name not in stacked}
    b.discard(None)
    return b.pop() if len(b) == 1 else DYNAMIC_BATCH


def _count_problems(out: Mapping[str, np.ndarray], specs: list[InputInfo]) -> list[str]:
    """Batched arrays must agree on their sample count; with stacked inputs, that count is
    feeds x the bound batch (one stacked value per feed)."""
    stacked = _stacked(out, specs)
    batches = {s.name: s.batch for s in specs if s.name not in stacked and s.batch is not None}
    if len(set(batches.values())) > 1:
        return [f"the inputs' axis 0 disagree ({', '.join(f'{k}: {v}' for k, v in batches.items())}), so one of "
                "them has no batch axis: give that input (e.g. a recurrent state) as whole values stacked on "
                "a new axis 0"]
    batched = {len(a) for k, a in out.items() if k not in stacked}
    feeds = {len(a) for k, a in out.items() if k in stacked}
    if len(batched) > 1 or len(feeds) > 1:
        return [f"arrays disagree on the number of samples ({sorted(batched | feeds)})"]
    if not (feeds and batched):
        return []
    n, f, b = batched.pop(), feeds.pop(), _batch(specs, stacked)
    bound = all(s.batch is not None for s in specs if s.name not in stacked)
    if not bound or n != f * b:
        return [f"{n} samples of the batched inputs do not fill one batch of {b if bound else '(unbound)'} per "
                f"stacked value ({f} of {', '.join(sorted(stacked))})"]
    return []


def batch_size(model: onnx.ModelProto, data: Mapping[str, np.ndarray] | None = None) -> int:
    """The samples per feed: the bound batch of the inputs that have one (not those given as
    stacked whole values in ``data``), else ``DYNAMIC_BATCH``."""
    return _batch(model_inputs(model), stacked_inputs(data, model) if data is not None else set())


def iter_batches(data: Mapping[str, np.ndarray], model: onnx.ModelProto, limit: int = 0
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of the model's batch size over the samples (a last partial batch is dropped when
    the batch dimension is bound); a stacked input gives its value number ``feed``."""
    stacked = stacked_inputs(data, model)
    n = samples_used(data, model, limit) if stacked else len(next(iter(data.values())))
    if limit:
        n = min(n, limit)
    specs = model_inputs(model)
    bound = all(s.batch is not None for s in specs if s.name not in stacked)
    b = batch_size(model, data)
    for k, start in enumerate(range(0, n, b)):
        stop = min(start + b, n)
        if bound and stop - start < b:
            break
        yield {name: np.array(v[k]) if name in stacked else np.ascontiguousarray(v[start:stop])  # 0-d stays 0-d
               for name, v in data.items()}


def batch_rows(feeds: Mapping[str, np.ndarray], stacked: set[str]) -> int:
    """Samples in one feed: the rows of a batched input (1 where every input is stacked)."""
    return next((len(v) for k, v in feeds.items() if k not in stacked), 1)


def samples_used(data: Mapping[str, np.ndarray], model: onnx.ModelProto, limit: int = 0) -> int:
    """Samples of the batched inputs that go through the model (whole batches where bound)."""
    stacked = stacked_inputs(data, model)
    batched = [v for k, v in data.items() if k not in stacked]
    b = batch_size(model, data)
    n = len(batched[0]) if batched else len(next(iter(data.values()))) * b
    if limit:
        n = min(n, limit)
    if all(s.batch is not None for s in model_inputs(model) if s.name not in stacked):
        n = (n // b) * b
    return n


class TensorRunner:
    """onnxruntime on ``model`` with ``tensors`` exposed as extra outputs; graph
    optimizations off (the literal graph, the same as optc's references)."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str] = (), threads: int | None = None):
        import onnxruntime as ort

        m = onnx.ModelProto.FromString(model.SerializeToString())
        present = {o.name for o in m.graph.output}
        for t in tensors:
            if t not in present:
                m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
                present.add(t)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; onnxruntime refusing the feeds (shapes that the data gave) is an
        InvalidModelError naming the data, not an optc bug."""
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        from optc.errors import InvalidModelError

        try:
            return dict(zip(self.names, self.session.run(None, dict(feeds))))
        except InvalidArgument as err:
            shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
            raise InvalidModelError(f"calibration data: onnxruntime cannot run the model on a feed of {shapes}: "
                                    f"{str(err).splitlines()[0]}") from None


def collect(model: onnx.ModelProto, tensors: list[str], data: Mapping[str, np.ndarray],
            make: Callable[[], Observer], *, limit: int = 0,
            memory_budget: int = DEFAULT_MEMORY_BUDGET, channel_axes: Mapping[str, int] | None = None
            ) -> tuple[dict[str, Observer], dict, dict[str, np.ndarray]]:
    """Observers for ``tensors`` updated over the calibration samples; a summary (samples,
    batches, observer updates, peak buffered bytes, seconds); and for the tensors in
    ``channel_axes`` the mean over every other axis (per-channel means, for bias correction)."""
    t0 = time.perf_counter()
    runner = TensorRunner(model, tensors)
    observers = {t: make() for t in tensors}
    channel_axes = dict(channel_axes or {})
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    pending: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    buffered = peak = 0
    samples = batches = flushes = 0

    def flush() -> None:
        nonlocal buffered, flushes
        for t, chunks in pending.items():
            if chunks:
                observers[t].update(np.concatenate([c.ravel() for c in chunks]))
                chunks.clear()
        buffered = 0
        flushes += 1

    stacked = stacked_inputs(data, model)
    for feeds in iter_batches(data, model, limit):
        outs = runner.run(feeds)
        batches += 1
        samples += batch_rows(feeds, stacked)
        for t in tensors:
            a = outs[t]
            if a.dtype.kind == "f":
                pending[t].append(a)
                buffered += a.nbytes
                if t in channel_axes and a.ndim >= 1:
                    ax = channel_axes[t] % a.ndim
                    other = tuple(i for i in range(a.ndim) if i != ax)
                    s = a.astype(np.float64).sum(axis=other)
                    sums[t] = sums[t] + s if t in sums else s
                    counts[t] = counts.get(t, 0) + a.size // a.shape[ax]
        peak = max(peak, buffered)
        if buffered >= memory_budget:
            flush()
    if buffered:
        flush()
    means = {t: sums[t] / counts[t] for t in sums}
    return observers, {"samples": samples, "batches": batches, "observer_updates": flushes,
                       "peak_buffered_bytes": peak, "seconds": round(time.perf_counter() - t0, 3)}, means


def channel_absmax(model: onnx.ModelProto, axes: Mapping[str, int], data: Mapping[str, np.ndarray], *,
                   limit: int = 0) -> dict[str, np.ndarray]:
    """Per-channel max|x| of each tensor in ``axes`` (tensor -> channel axis) over the samples.
    Fixed memory: one vector per tensor."""
    tensors = list(axes)
    runner = TensorRunner(model, tensors)
    out: dict[str, np.ndarray] = {}
    for feeds in iter_batches(data, model, limit):
        res = runner.run(feeds)
        for t in tensors:
            a = res[t]
            if a.dtype.kind != "f" or a.ndim == 0:
                continue
            ax = axes[t] % a.ndim
            m = np.abs(a).max(axis=tuple(i for i in range(a.ndim) if i != ax)).astype(np.float64)
            out[t] = np.maximum(out[t], m) if t in out else m
    return out

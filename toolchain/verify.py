"""Numbers against a reference: onnxruntime runs the original model on the same inputs, and
every compiled artifact's outputs are compared with it.

An output passes when its element type is the model's declared one (and the reference's) and
``max|out - ref| <= atol + rtol * max|ref|`` (integer and boolean outputs must match exactly);
the report gives the max absolute error and the max error
relative to the reference's largest magnitude, per output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from optc.onnx_utils import all_nodes  # noqa: F401 - callers use verify.all_nodes too

from .errors import InvalidModelError
from .frontend import TensorSpec
from .reference_ops import exact_sigmoids, has_sigmoid

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
# Models that compute in float16 (float16 outputs, or float16 weights/casts behind float32
# inputs and outputs, as float16 converters write them): every float output's rtol is at least
# this many float16 units in the last place (eps 2**-10, so 7.8e-3). One rounding step of
# float16 is about the default rtol, and a build that rounds intermediates in another order than
# onnxruntime (conv, then an activation, each rounded) differs by a few per layer: 1.7, 3.2 and
# 4.6 units on three converted third-party models (MTCNN O-Net, a GRU encoder, a TCN).
HALF_ULPS = 8


def ort_session(model: onnx.ModelProto | str | Path, *, threads: int | None = None,
                optimize: bool = False):
    """An onnxruntime CPU session; ``optimize=False`` disables graph optimizations (the most
    literal reading of the model, used for references, with Sigmoid computed by its formula:
    :mod:`optc.reference_ops`); True is what a user deploys with.
    A model with ``ai.optc`` ops gets onnx's ReferenceEvaluator with optc's numpy ops instead
    (same ``run(None, feeds)`` call); so does a reference (``optimize=False``) for a model with
    MatMulInteger/ConvInteger (:data:`SPEC_REFERENCE_OPS`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # a failed run raises; its error log line would only repeat it on stderr
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    if any(n.domain == "ai.optc" for n in all_nodes(proto.graph)) or (not optimize and _needs_spec_reference(proto)):
        return _OptcReferenceSession(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    if not optimize and has_sigmoid(proto):  # the reference's Sigmoid by its formula (optc.reference_ops)
        exact = exact_sigmoids(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
        src = exact.SerializeToString() if exact is not None else src
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


# ONNX integer matmuls whose spec result (exact int32) onnxruntime does not always compute: its
# u8 x s8 kernels on x86 CPUs without AVX-512 VNNI use vpmaddubsw, whose int16 sums of adjacent
# products saturate (255 * 127 * 2 > 32767), so on such a CPU a quantize_dynamic encoder's
# outputs move by whole accumulator steps. The reference for these ops is the spec's arithmetic
# (onnx's ReferenceEvaluator, numpy int32), on every CPU.
SPEC_REFERENCE_OPS = frozenset({"MatMulInteger", "ConvInteger"})
# likewise com.microsoft DynamicQuantizeLSTM (its GEMMs are the same u8 x s8 kernels)
SPEC_REFERENCE_MS_OPS = frozenset({"DynamicQuantizeLSTM"})


# QOperator ops whose onnxruntime kernels take the same u8 x s8 path: (domain, op) ->
# (activation zero point index, weight index). A model holding them keeps onnxruntime as its
# reference (the ReferenceEvaluator lacks com.microsoft's QLinearConcat etc.); a verification
# failure against it says why it may be onnxruntime's (:func:`u8s8_saturation_note`)
U8S8_QLINEAR_OPS = {("", "QLinearConv"): (2, 3), ("", "QLinearMatMul"): (2, 3), ("com.microsoft", "QGemm"): (2, 3)}


def host_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 host has an 8-bit dot-product instruction (AVX-512 VNNI or AVX-VNNI),
    from the kernel's CPU flags; None where that cannot be read (not Linux, not x86)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return None
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def u8s8_saturation_note(model: onnx.ModelProto, has_vnni: bool | None = None) -> str:
    """Why onnxruntime's outputs for ``model`` may not be its spec arithmetic on this host
    ("" when they are): uint8-activation x int8-weight QLinearConv / QLinearMatMul / QGemm
    nodes run vpmaddubsw on x86 without VNNI, whose int16 sums of adjacent products saturate
    (255 * 127 * 2 > 32767). ``has_vnni``: the host's answer (default :func:`host_has_vnni`)."""
    has_vnni = host_has_vnni() if has_vnni is None else has_vnni
    if has_vnni is not False:
        return ""
    types = {t.name: t.data_type for t in model.graph.initializer}
    hits = [n.name or n.op_type for n in all_nodes(model.graph)
            if (n.domain or "", n.op_type) in U8S8_QLINEAR_OPS
            and types.get(n.input[U8S8_QLINEAR_OPS[n.domain or "", n.op_type][0]]) == onnx.TensorProto.UINT8
            and types.get(n.input[U8S8_QLINEAR_OPS[n.domain or "", n.op_type][1]]) == onnx.TensorProto.INT8]
    if not hits:
        return ""
    return (f"; onnxruntime's uint8 x int8 kernels of {len(hits)} node(s) ({', '.join(hits[:3])}"
            f"{', ...' if len(hits) > 3 else ''}) saturate int16 pair sums on this x86 CPU (no VNNI), so its "
            "outputs are not the model's integer arithmetic: quantize with reduce_range=True or int8 activations, "
            "verify on a CPU with VNNI, or pass --no-verify")


# ops that pass integer index values through unchanged (shape only), between an input and a Gather
_INDEX_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})


def index_ranges(model: onnx.ModelProto) -> dict[str, list[tuple[str, int]]]:
    """Graph input -> [(Gather node, table size)] for every main-graph Gather whose indices are
    that input's values (directly or through shape-only ops: Cast, Reshape, Unsqueeze, ...) and
    whose data is a constant: an id outside ``[-size, size)`` is an error in onnxruntime, while
    optc's gathers (``lower.bounded_gathers``: clip mode, memory-safe) would read the nearest
    row. :func:`check_index_ranges` refuses such inputs before a run."""
    consts = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = list(n.attribute[0].t.dims)
    source = {i.name: i.name for i in model.graph.input if i.name not in consts}
    out: dict[str, list[tuple[str, int]]] = {}
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in _INDEX_PASS_THROUGH and n.input and n.input[0] in source:
            source[n.output[0]] = source[n.input[0]]
        elif n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in source and n.input[0] in consts:
            dims = consts[n.input[0]]
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            if dims and -len(dims) <= axis < len(dims):
                out.setdefault(source[n.input[1]], []).append((n.name or n.output[0], int(dims[axis])))
    return out


def ids_inside_tables(sets: list[dict[str, np.ndarray]], ranges: Mapping[str, list]) -> list[dict[str, np.ndarray]]:
    """``sets`` (generated inputs) with the integer inputs :func:`index_ranges` found taken
    modulo the smallest table they index: generated ids in [0, 8) overran a 2-row token-type
    table, and onnxruntime, the reference, refused them."""
    for s in sets:
        for name, uses in ranges.items():
            if name in s and s[name].dtype.kind in "iu":
                s[name] = s[name] % min(size for _, size in uses)
    return sets


def check_index_ranges(arrays: Mapping[str, np.ndarray], ranges: Mapping[str, list[tuple[str, int]]]) -> None:
    """InvalidModelError naming the input, the value and the table when an integer input that
    :func:`index_ranges` found indexes a table holds an id outside it (onnxruntime refuses
    such an input; the compiled code would read the nearest row instead)."""
    for name, uses in ranges.items():
        a = np.asarray(arrays[name]) if name in arrays else None
        if a is None or a.dtype.kind not in "iu" or not a.size:
            continue
        size, node = min((size, node) for node, size in uses)
        lo, hi = int(a.min()), int(a.max())
        if lo < -size or hi >= size:
            bad = lo if lo < -size else hi
            raise InvalidModelError(f"input {name!r} holds index {bad}, outside the {size} rows of the table that "
                                    f"{node!r} gathers from (valid: {-size} .. {size - 1})")


def _needs_spec_reference(model: onnx.ModelProto) -> bool:
    return any(n.domain == "ai.optc" or (n.domain in ("", "ai.onnx") and n.op_type in SPEC_REFERENCE_OPS)
               or (n.domain == "com.microsoft" and n.op_type in SPEC_REFERENCE_MS_OPS)
               for n in all_nodes(model.graph))


def reference_name(model: onnx.ModelProto) -> str:
    """Which engine :func:`reference_outputs` runs for ``model`` (recorded in reports)."""
    if any(n.domain == "ai.optc" for n in all_nodes(model.graph)):
        return "onnx ReferenceEvaluator with optc's numpy implementations of its ai.optc ops"
    if _needs_spec_reference(model):
        return ("onnx ReferenceEvaluator (exact int32 MatMulInteger/ConvInteger as the ONNX spec defines them, "
                "DynamicQuantizeLSTM as onnxruntime specifies it; onnxruntime's u8 x s8 kernels saturate int16 pair "
                "sums on CPUs without VNNI)")
    import onnxruntime as ort

    sigmoid = ", Sigmoid as 1 / (1 + exp(-x))" if has_sigmoid(model) else ""
    return f"onnxruntime {ort.__version__} CPU, graph optimizations off{sigmoid}"


def reference_outputs(model: onnx.ModelProto | str | Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs (graph optimizations off) for ``inputs``; a model with optc's own
    ``ai.optc`` ops (which onnxruntime cannot run) goes to onnx's ReferenceEvaluator with
    optc's numpy implementations of those ops (``optc.passes.optc_ops``)."""
    return reference_runs(model, [inputs])[0]


def reference_runs(model: onnx.ModelProto | str | Path, sets: list[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """:func:`reference_outputs` for each input set, from one session (a session of a large
    model takes longer to create than a call: a YOLOv8-seg verification spent 2.8 of its 7 s
    creating eight), in a child process (:func:`session_runs`)."""
    return session_runs(model, sets)


class RunFailed(str):
    """The one-line error of one run that :func:`session_runs` kept (``keep_errors``)."""


def session_runs(model: onnx.ModelProto | str | Path, sets: list[Mapping[str, np.ndarray]], *,
                 optimize: bool = False, keep_errors: bool = False) -> list:
    """Outputs of :func:`ort_session` (``optimize`` as there) for each input set, computed in a
    child process (:mod:`optc.isolated`): onnxruntime segfaults on some models (a QOperator
    U-Net from ``quantize_static``), which in optc's own process ended ``optc compile`` with a
    signal; here it raises :class:`optc.isolated.ChildFailed` naming the signal, and an
    interrupt stops optc at once while a long reference runs. A run that raises raises here
    too, or, with ``keep_errors``, leaves a :class:`RunFailed` in its place."""
    from . import isolated

    src = str(model) if isinstance(model, (str, Path)) else model
    return isolated.call("optc.verify:_session_runs_here", src, [dict(s) for s in sets], optimize, keep_errors)


def _session_runs_here(model, sets: list[dict], optimize: bool, keep_errors: bool) -> list:
    """(In the child) :func:`session_runs`."""
    sess = ort_session(model, optimize=optimize)
    results = []
    for feeds in sets:
        try:
            results.append([np.asarray(x) for x in sess.run(None, feeds)])
        except Exception as err:
            if not keep_errors:
                raise
            results.append(RunFailed(" ".join(str(err).split())[:300]))
    return results


class _OptcReferenceSession:
    """``ReferenceEvaluator`` with optc's ops behind onnxruntime's ``run(None, feeds)`` call."""

    def __init__(self, model: onnx.ModelProto):
        from optc.passes.optc_ops import reference_evaluator

        self._ev = reference_evaluator(model)

    def run(self, output_names, feeds):
        return self._ev.run(output_names, dict(feeds))


def branch_coverage(model: onnx.ModelProto, sets: list[Mapping[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    """Which branch each data-dependent ``If`` of ``model``'s main graph took on the
    verification ``sets``: ``{node: {"then": calls, "else": calls}}`` (empty without such an
    If). The conditions are read by running the reference with them as extra outputs. A branch
    no set took is compiled but was not compared with anything."""
    consts = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    nodes = [n for n in model.graph.node if n.op_type == "If" and n.input[0] not in consts]
    if not nodes:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for cond in dict.fromkeys(n.input[0] for n in nodes):
        if cond not in outputs:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(cond, onnx.TensorProto.BOOL, None))
    names = [o.name for o in probe.graph.output]
    taken = {n.name or n.output[0]: {"then": 0, "else": 0} for n in nodes}
    for outputs in reference_runs(probe, sets):
        values = dict(zip(names, outputs))
        for n in nodes:
            taken[n.name or n.output[0]]["then" if bool(np.asarray(values[n.input[0]]).reshape(-1)[0]) else "else"] += 1
    return taken


def generate_inputs(specs: list[TensorSpec], seed: int = 0, *, rng=None) -> dict[str, np.ndarray]:
    """Deterministic sample inputs: standard normal floats, small non-negative ints, random bools
    (from ``rng`` if given, else a fresh ``default_rng(seed)``)."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    out = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = np.asarray(rng.standard_normal(s.shape), dtype=dt)  # 0-d stays an ndarray
        elif dt.kind in "iu":
            out[s.name] = np.asarray(rng.integers(0, 8, size=s.shape), dtype=dt)
        elif dt.kind == "b":
            out[s.name] = np.asarray(rng.integers(0, 2, size=s.shape), dtype=bool)
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


def _conform(a: np.ndarray, s: TensorSpec, problems: list[str]) -> np.ndarray | None:
    """``a`` in the dtype of ``s`` (same kind only), or None with the problem appended."""
    if a.dtype != np.dtype(s.dtype):
        if a.dtype.kind == np.dtype(s.dtype).kind:
            return a.astype(s.dtype)
        problems.append(f"input {s.name!r} has dtype {a.dtype}, the model wants {s.dtype}")
        return None
    return a


def sample_sets(arrays: Mapping[str, np.ndarray], specs: list[TensorSpec], source: str,
                max_rows: int | None = None) -> list[dict[str, np.ndarray]]:
    """Split user arrays into calls of the bound input specs: names, dtypes, shapes checked.

    An array whose shape is the bound shape is one call. An array with more rows along the
    leading (batch) axis than the bound batch ``B`` is cut into consecutive calls of ``B`` rows:
    up to ``max_rows`` rows (None: all of them), every row used; rows that do not fill a last
    call are an error unless ``max_rows`` caps below them (verification takes the first rows, a
    run must not drop any). An input with no such axis is the same in every call. Every
    mismatch is reported at once; a missing input lists the keys the file has.
    """
    problems, fixed, split = [], {}, {}
    for s in specs:
        if s.name not in arrays:
            have = ", ".join(map(repr, sorted(arrays))) or "none"
            problems.append(f"missing input {s.name!r} (the file has: {have})")
            continue
        a = _conform(np.asarray(arrays[s.name]), s, problems)
        if a is None:
            continue
        if a.shape == tuple(s.shape):
            fixed[s.name] = np.asarray(a, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        elif (a.ndim == len(s.shape) and a.ndim >= 1 and a.shape[1:] == tuple(s.shape[1:])
              and s.shape[0] > 0 and a.shape[0] > s.shape[0]):
            split[s.name] = a
        else:
            problems.append(f"input {s.name!r} has shape {list(a.shape)}, the model wants {list(s.shape)}"
                            + (" (or a multiple of its batch along axis 0)" if len(s.shape) >= 1 else ""))
    if problems:
        raise InvalidModelError(f"{source}: " + "; ".join(problems))
    if not split:
        return [fixed]
    batch = {n: next(s.shape[0] for s in specs if s.name == n) for n in split}
    rows = {n: a.shape[0] for n, a in split.items()}
    calls = min(rows[n] // batch[n] for n in split)
    if len({rows[n] // batch[n] for n in split}) > 1:
        raise InvalidModelError(f"{source}: inputs have different numbers of rows per call: "
                                + ", ".join(f"{n} {rows[n]} rows / batch {batch[n]}" for n in split))
    if max_rows is not None:
        calls = min(calls, max(1, max_rows // max(batch.values())))
    else:
        partial = [n for n in split if rows[n] % batch[n]]
        if partial:
            raise InvalidModelError(
                f"{source}: {', '.join(f'{n!r} has {rows[n]} rows' for n in partial)}, not a multiple of the "
                f"package's batch ({', '.join(str(batch[n]) for n in partial)}); the last rows would be dropped "
                "(compile with --input-shape for another batch, or trim the file)")
    return [fixed | {n: np.ascontiguousarray(a[k * batch[n]:(k + 1) * batch[n]]) for n, a in split.items()}
            for k in range(calls)]


def generate_sets(specs: list[TensorSpec], calls: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``calls`` sets of :func:`generate_inputs` from one seeded stream (the first set is
    ``generate_inputs(specs, seed)``)."""
    rng = np.random.default_rng(seed)
    return [generate_inputs(specs, rng=rng) for _ in range(max(1, calls))]


def rows_per_call(specs: list[TensorSpec]) -> int:
    """Samples one call holds: the leading dimension shared by the inputs of rank >= 2; 1 if
    there are none or their leading dimensions differ (no batch axis: a graph network's node
    and edge tensors, 40 nodes and 70 edges, are one sample, not 70)."""
    leading = {s.shape[0] for s in specs if len(s.shape) >= 2 and s.shape[0] > 0}
    return leading.pop() if len(leading) == 1 else 1


def join_calls(per_call: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Outputs of several calls as one array per output: concatenated along axis 0 (stacked for
    0-d outputs), so one comparison covers every call."""
    if len(per_call) == 1:
        return [np.asarray(x) for x in per_call[0]]
    return [np.concatenate([np.asarray(c[i]) for c in per_call]) if np.ndim(per_call[0][i])
            else np.stack([np.asarray(c[i]) for c in per_call]) for i in range(len(per_call[0]))]


def check_declared_types(verdict: dict, outputs: list[np.ndarray], specs: list[TensorSpec]) -> dict:
    """Fail (in place, and return) each entry of a :func:`compare`-style ``verdict`` whose
    artifact output's element type is not the one the model declares (``specs``, from the
    model's outputs): the reference's type is checked by :func:`compare`, the declared one here,
    so a reference engine that deviates from the model's type cannot let a wrong artifact
    through. optc narrows no output on purpose (no int64 -> int32 for indices, no float64 ->
    float32): a deployment reading the declared type gets exactly that type."""
    declared = {s.name: np.dtype(s.dtype) for s in specs}
    for entry, out in zip(verdict.get("outputs", ()), outputs):
        want = declared.get(entry["name"])
        got = np.asarray(out).dtype
        if want is not None and got != want:
            entry.update(passed=False, error=f"element type {got} != the model's declared {want}"
                         + (f" ({entry['error']})" if entry.get("error") else ""))
    verdict["passed"] = bool(verdict.get("passed")) and all(e["passed"] for e in verdict.get("outputs", ()))
    return verdict


def model_traits(model: onnx.ModelProto) -> frozenset[str]:
    """What :func:`compare` reads of the model: "float16" where it computes in float16
    (:func:`optc.onnx_utils.uses_float16`), "TopK" where it ranks values."""
    from . import onnx_utils

    return frozenset(name for name, present in (("float16", onnx_utils.uses_float16(model)),
                                                ("TopK", onnx_utils.has_op(model, "TopK"))) if present)


TIE_GROUP_ROWS = 512  # rows of near-equal keys compared as a set, at most


def tied_rows(out: np.ndarray, ref: np.ndarray, tol: float, atol: float = DEFAULT_ATOL,
              rtol: float = DEFAULT_RTOL) -> dict | None:
    """Whether ``out`` equals ``ref`` up to rows (axis -2) reordered among near-equal keys, as
    a TopK over scores that differ by rounding picks them: ``{"key_column", "rows_moved",
    "rows_at_cut", "key_error"}``, or None when it does not.

    The key is a column of ``ref`` sorted along the rows in every leading slice (the TopK
    values a detector writes beside its boxes). The keys must match rank by rank within the
    key column's own tolerance (``atol + rtol * max|key|``: scores in [0, 1] beside pixel
    coordinates do not get the coordinates' tolerance); their largest difference ``e`` is the
    numerical noise of the keys. Rows whose reference keys lie within ``2 e`` of each other
    form a tie group: inside it ``out``'s rows must equal ``ref``'s (every column within
    ``tol``) as a multiset. The last group, at the cut of the TopK, may hold rows of candidates
    the other side did not pick (``rows_at_cut``): their keys are within ``2 e`` of the cut,
    the rest of them is not compared. A group of more than :data:`TIE_GROUP_ROWS` rows is no
    tie (None)."""
    if out.shape != ref.shape or out.ndim < 2 or out.shape[-2] < 2 or ref.dtype.kind != "f":
        return None
    o = out.reshape(-1, *out.shape[-2:]).astype(np.float64)
    r = ref.reshape(-1, *ref.shape[-2:]).astype(np.float64)
    for col in range(r.shape[-1]):
        keys = r[:, :, col]
        step = np.diff(keys, axis=1)
        if not np.isfinite(keys).all() or not ((step <= 0).all() or (step >= 0).all()) or (step == 0).all():
            continue
        err = float(np.abs(o[:, :, col] - keys).max())
        if err > atol + rtol * float(np.abs(keys).max()):
            continue
        gap = 2 * err + np.finfo(np.float32).eps * float(np.abs(keys).max())
        moved = at_cut = 0
        for os_, rs in zip(o, r):
            bounds = np.flatnonzero(np.abs(np.diff(rs[:, col])) > gap) + 1
            groups = np.split(np.arange(len(rs)), bounds)
            if max(len(g) for g in groups) > TIE_GROUP_ROWS:
                break
            for g_idx, g in enumerate(groups):
                free = list(g)
                unmatched = []
                for i in g:
                    hit = next((j for j in free if np.abs(os_[i] - rs[j]).max() <= tol), None)
                    if hit is None:
                        unmatched.append(i)
                        continue
                    free.remove(hit)
                    moved += int(hit != i)
                if unmatched and g_idx < len(groups) - 1:
                    break
                at_cut += len(unmatched)
            else:
                continue
            break
        else:
            return {"key_column": col, "rows_moved": moved, "rows_at_cut": at_cut, "key_error": err}
    return None


def compare(outputs: list[np.ndarray], refs: list[np.ndarray], names: list[str],
            atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, floors: dict[str, float] | None = None,
            exact: set[str] | frozenset[str] = frozenset(), model: frozenset[str] = frozenset()) -> dict:
    """Per-output and overall error figures; ``passed`` is the verdict. An output whose shape
    or element type differs from the reference's fails (no value comparison). A float output passes
    within ``max(atol + rtol * max|ref|, floors[name])`` (``floors``: per-output absolute
    tolerances, recorded as ``tolerance``); outputs named in ``exact`` and integer outputs
    must match exactly. A NaN or inf where the reference is finite always fails, and so does a
    finite value (or the other infinity) where the reference is +-inf; ``max|ref|`` is taken over
    the reference's finite values. ``model``: what the model does (:func:`model_traits`). A
    float16 output's ``rtol``, and where the model computes in "float16" every float output's,
    is at least :data:`HALF_ULPS` float16 units in the last place (recorded as ``rtol`` in its
    entry when raised). Where the model has a "TopK", a float output that fails only because
    rows of near-equal keys swapped places passes by :func:`tied_rows` (recorded as
    ``tied_rows`` in its entry)."""
    per = []
    if len(outputs) != len(refs):
        return {"passed": False, "atol": atol, "rtol": rtol, "outputs": [],
                "error": f"artifact returned {len(outputs)} outputs, reference has {len(refs)}"}
    for name, out, ref in zip(names, outputs, refs):
        out, ref = np.asarray(out), np.asarray(ref)
        entry = {"name": name, "shape": list(ref.shape), "dtype": str(ref.dtype)}
        if out.shape != ref.shape:
            entry.update(passed=False, error=f"shape {list(out.shape)} != reference {list(ref.shape)}")
        elif out.dtype != ref.dtype:  # int32 where ONNX says int64 compares equal by value but is no deliverable
            entry.update(passed=False, error=f"element type {out.dtype} != reference {ref.dtype}")
        elif ref.dtype.kind in "iub":
            mism = int(np.count_nonzero(out != ref))
            entry.update(passed=mism == 0, mismatches=mism, max_abs_error=float(np.max(np.abs(
                out.astype(np.int64) - ref.astype(np.int64)), initial=0)), max_rel_error=0.0)
        else:
            o, r = out.astype(np.float64), ref.astype(np.float64)
            nan_ok = np.array_equal(np.isnan(o), np.isnan(r))
            finite = ~np.isnan(r)
            with np.errstate(invalid="ignore"):  # inf - inf: equal infinities are no error
                err = np.where(o == r, 0.0, np.abs(o - r))[finite]
            err = np.where(np.isnan(err), np.inf, err)  # NaN where the reference is a number
            max_abs = float(err.max(initial=0.0))
            # the scale of the finite reference values: an inf in the reference would make the
            # tolerance infinite (every output passing); where the reference is +-inf the output
            # must be the same infinity (err above is 0 only where they are equal)
            scale = float(np.abs(r[np.isfinite(r)]).max(initial=0.0))
            half = "float16" in model or ref.dtype == np.float16
            rt = max(rtol, HALF_ULPS * float(np.finfo(np.float16).eps)) if half else rtol
            if rt != rtol:
                entry["rtol"] = rt
            tol = 0.0 if name in exact else max(atol + rt * scale, (floors or {}).get(name, 0.0))
            entry.update(max_abs_error=max_abs, max_rel_error=max_abs / scale if scale > 0 else max_abs,
                         reference_max_abs=scale, passed=bool(nan_ok and max_abs <= tol))
            if ("TopK" in model and not entry["passed"] and name not in exact
                    and (tied := tied_rows(out, ref, tol, atol, rt))):
                entry.update(passed=True, tied_rows=tied, tolerance_rule=(
                    f"rows reordered among near-equal TopK keys (column {tied['key_column']}): "
                    f"{tied['rows_moved']} moved, {tied['rows_at_cut']} at the cut not compared"))
            if floors is not None or name in exact:
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

"""``optc compile``, stage by stage: load -> bind -> passes -> build -> verify -> measure ->
package (README "compile", steps 2-7; :func:`optc.api.compile` calls them in this order).

Each stage takes the :class:`Job` (what this compile works on, filled in as the stages go)
and the options it needs, and returns its section of the report. Options are grouped:
:class:`VerifyOptions` (how the artifact is checked), :class:`MeasureOptions` (latency,
energy, accuracy). Errors a user can fix are :class:`OptcError` subclasses; anything else
that fails inside a stage is an optc bug, raised as :class:`InternalError` naming the stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import onnx

from . import analysis, artifact, frontend, isolated, pipeline, verify
from .const_inputs import describe as describe_frozen, freeze as freeze_inputs, save as save_frozen
from .errors import InternalError, OptcError, UnsupportedModelError, UsageError, VerificationError
from .progress import Progress
from .targets import Target

DEPLOY_QDQ = "deploy_qdq.onnx"  # an integerized package's QDQ equivalent (what onnxruntime runs)


@dataclass(frozen=True)
class VerifyOptions:
    """How the artifact is checked against the reference (README "compile", step 6)."""

    enabled: bool = True
    atol: float = verify.DEFAULT_ATOL
    rtol: float = verify.DEFAULT_RTOL
    samples: int = 8  # rows (samples) checked at most: one call per bound batch


@dataclass(frozen=True)
class MeasureOptions:
    """What is measured after verification: latency and energy, accuracy on ``eval_data``."""

    enabled: bool = True
    eval_data: str | os.PathLike | None = None
    eval_limit: int | None = None
    power_watts: float | None = None


@dataclass(frozen=True)
class TuneOptions:
    """MetaSchedule for TVM targets: ``trials`` measured candidates first (0: none), within
    ``seconds`` for the whole compile; tuning databases under ``database`` (default
    ~/.cache/optc/tuning), applied to the build when they hold records for the target."""

    trials: int = 0
    seconds: float | None = None
    database: str | os.PathLike | None = None


@dataclass(frozen=True)
class RemoteOptions:
    """A TVM RPC server to verify and time on: ``rpc`` HOST:PORT, or ``tracker`` HOST:PORT
    with ``key``."""

    rpc: str | None = None
    key: str | None = None
    tracker: str | None = None

    def __bool__(self) -> bool:
        return bool(self.rpc or self.key or self.tracker)


@dataclass(frozen=True)
class CompileOptions:
    """Everything :func:`optc.compile` takes besides the model, target, output, pipeline and
    inputs, grouped by stage. ``cleanup``: add the default cleanup passes before the first
    compression pass (:func:`optc.pipeline.with_cleanup`); ``force``: replace an existing
    package; ``params``: weights ``embedded`` in the library or ``separate`` (params.bin);
    ``backend``: the backend's own configuration, passed to its constructor (an
    :class:`optc.backends.fpga.config.FpgaConfig` for FPGA targets; None: its defaults);
    ``const_inputs``: graph inputs replaced by the values given for them in the sample inputs
    (``--const-input``; :mod:`optc.const_inputs`)."""

    params: str = "embedded"
    force: bool = False
    cleanup: bool = True
    verify: VerifyOptions = VerifyOptions()
    measure: MeasureOptions = MeasureOptions()
    tune: TuneOptions = TuneOptions()
    remote: RemoteOptions = RemoteOptions()
    backend: Any = None
    const_inputs: tuple[str, ...] = ()  # graph inputs frozen to their given values (optc.const_inputs)

    # flat keyword (as the CLI options are named) -> (group, field)
    FLAT: ClassVar[dict[str, tuple[str | None, str]]] = {
        "params": (None, "params"), "force": (None, "force"), "cleanup": (None, "cleanup"),
        "verify_outputs": ("verify", "enabled"), "atol": ("verify", "atol"), "rtol": ("verify", "rtol"),
        "verify_samples": ("verify", "samples"), "measure": ("measure", "enabled"),
        "eval_data": ("measure", "eval_data"), "eval_limit": ("measure", "eval_limit"),
        "power_watts": ("measure", "power_watts"), "tune": ("tune", "trials"), "tune_seconds": ("tune", "seconds"),
        "tuning_db": ("tune", "database"), "rpc": ("remote", "rpc"), "rpc_key": ("remote", "key"),
        "rpc_tracker": ("remote", "tracker"), "const_inputs": (None, "const_inputs"),
    }

    @classmethod
    def of(cls, **flat) -> "CompileOptions":
        """Options from flat keywords named like the CLI options (``measure=False``,
        ``tune=200, tune_seconds=600``, ``rpc=...``); an unknown name is a TypeError."""
        unknown = sorted(set(flat) - set(cls.FLAT))
        if unknown:
            raise TypeError(f"unknown compile option(s) {', '.join(unknown)}; known: {', '.join(cls.FLAT)}")
        top: dict = {}
        groups: dict[str, dict] = {}
        for name, value in flat.items():
            group, key = cls.FLAT[name]
            (top if group is None else groups.setdefault(group, {}))[key] = value
        defaults = cls()
        for group, values in groups.items():
            top[group] = dataclasses.replace(getattr(defaults, group), **values)
        return cls(**top)


@dataclass
class Job:
    """One compile: its inputs (first block) and what the stages produce (second block)."""

    source: Path
    target: Target
    backend: Any
    specs: list
    work: Path  # the package being assembled (a temporary directory)
    progress: Progress
    remote: Any = None
    timings: dict = field(default_factory=dict)

    original: onnx.ModelProto | None = None
    original_bound: onnx.ModelProto | None = None  # the original with concrete input shapes
    in_specs: list = field(default_factory=list)
    sets: list = field(default_factory=list)  # verification input sets, one call each
    input_source: str = ""
    batch_bound: list = field(default_factory=list)  # inputs whose dynamic batch dimension was bound to 1
    batch_rows_independent: bool | None = None  # batch_axis_check's answer for them
    index_ranges: dict = field(default_factory=dict)  # verify.index_ranges of the original (manifest too)
    optimized: onnx.ModelProto | None = None
    deploy_qdq: onnx.ModelProto | None = None  # the QDQ graph integerize started from
    out_specs: list = field(default_factory=list)
    lossy: list = field(default_factory=list)
    exempt: frozenset = frozenset()  # unsupported ops a pass eliminates: checked after the passes
    frozen: dict = field(default_factory=dict)  # inputs frozen into constants (--const-input): values
    manifest: dict = field(default_factory=dict)
    session: Any = None
    _refs: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, key: str, label: str) -> Iterator[None]:
        """Time a stage (``stage_seconds[key]``) under a progress line ``label``."""
        t0 = time.perf_counter()
        with self.progress.step(label):
            yield
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def reference(self, which: str) -> list[np.ndarray]:
        """Reference outputs of the ``"original"`` or ``"optimized"`` model on every input
        set, joined per output (:func:`verify.join_calls`); computed once per model."""
        return verify.join_calls(self.reference_calls(which))

    def reference_calls(self, which: str) -> list[list[np.ndarray]]:
        """The same, per input set (the first is what ``sample_outputs.npz`` holds)."""
        if which not in self._refs:
            model = self.optimized if which == "optimized" else self.original
            try:
                self._refs[which] = verify.reference_runs(model, self.sets)
            except Exception as err:
                if which != "original":  # the pipeline's output: optc's bug
                    raise
                # optc verifies against onnxruntime: a model it cannot run cannot be verified
                raise UnsupportedModelError("onnxruntime (optc's reference for verification) cannot run the model: "
                                            + " ".join(str(err).split())[:300]) from err
        return self._refs[which]

    @property
    def out_names(self) -> list[str]:
        return [s.name for s in self.out_specs]

    def args(self, k: int = 0) -> list[np.ndarray]:
        return [self.sets[k][s.name] for s in self.in_specs]


# ----------------------------------------------------------------------------- 2. load
def load(job: Job) -> None:
    """Read and check the model; list every op the backend cannot lower. A model in
    onnxruntime's QOperator format (QLinearConv, QGemm, ...) gets ``expand-qoperator`` first
    (``optc.passes.quant.qoperator``): the ops are checked on the expanded QDQ model, and the
    original stays onnxruntime's reference; likewise ``expand-matmul-nbits`` for com.microsoft
    MatMulNBits (``optc.passes.quant.nbits``), ``expand-dynamic-lstm`` for com.microsoft
    DynamicQuantizeLSTM (``optc.passes.quant.dynamic_lstm``) where the backend does not lower
    it (CPU backends do, with onnxruntime's integer GEMMs: ``recurrent.convert_dynamic``). A
    model that is already quantized (QDQ layers, or QOperator ones once expanded) gets ``integerize`` like a
    quantizing pipeline
    (``optc.passes.quant.integerize.auto_integerize``). A model with Loop or Scan nodes the
    backend cannot lower gets ``unroll-loops`` after constant folding. Ops a pass of the
    pipeline eliminates (``Pass.eliminates``: Loop/Scan by ``unroll-loops``, If by
    ``fold-constants``) are let through here and checked after the passes (:func:`run_passes`),
    with the pass's reason for any node it kept."""
    from optc.passes.quant.integerize import auto_integerize
    from optc.passes.quant.dynamic_lstm import dynamic_lstm_nodes, expand_dynamic_lstm
    from optc.passes.quant.nbits import expand_matmul_nbits, matmul_nbits_nodes
    from optc.passes.quant.qoperator import expand_qoperator, qoperator_nodes

    with job.stage("frontend", "load and check model"):
        isolated.warm_up()  # the child processes' imports overlap the model's loading
        job.original = frontend.load_model(job.source)
        checked = job.original
        if qoperator_nodes(job.original):
            checked, _ = expand_qoperator(job.original)
            if "expand-qoperator" not in [s.name for s in job.specs]:
                job.specs = [pipeline.PassSpec("expand-qoperator"), *job.specs]
        supported = job.backend.supported_ops()
        if dynamic_lstm_nodes(checked) and "com.microsoft::DynamicQuantizeLSTM" not in supported:
            # a backend without the integer recurrent kernel: an LSTM on the dequantized weights
            checked, _ = expand_dynamic_lstm(checked)
            if "expand-dynamic-lstm" not in [s.name for s in job.specs]:
                job.specs = [pipeline.PassSpec("expand-dynamic-lstm"), *job.specs]
        if matmul_nbits_nodes(checked):  # weight-only 4-bit (onnxruntime's LLM format)
            checked, _ = expand_matmul_nbits(checked)
            if "expand-matmul-nbits" not in [s.name for s in job.specs]:
                job.specs = [pipeline.PassSpec("expand-matmul-nbits"), *job.specs]
        if _has_ops(checked, UNROLLED_OPS - supported) and "unroll-loops" not in [s.name for s in job.specs]:
            job.specs = _with_unroll(job.specs)
        eliminated = frozenset().union(*(pipeline.instantiate(s).eliminates for s in job.specs))
        job.exempt = frozenset(eliminated - supported)
        frontend.check_supported(checked, supported | job.exempt, job.backend.name)
        frontend.check_types(checked, job.backend.name)
        job.specs = auto_integerize(job.specs, job.target, job.backend, checked)


UNROLLED_OPS = frozenset({"Loop", "Scan"})


def _has_ops(model: onnx.ModelProto, ops: frozenset) -> bool:
    """Whether the main graph has a default-domain node of one of ``ops``."""
    return any(n.op_type in ops and n.domain in ("", "ai.onnx") for n in model.graph.node)


def _with_unroll(specs: list) -> list:
    """``specs`` with ``unroll-loops`` after the first constant folding (the trip counts are
    constants then), else first: a Loop or Scan the backend cannot lower is unrolled where its
    trip count is static (``optc.passes.control_flow``), as a QOperator model gets
    ``expand-qoperator``; the package records the pipeline that ran."""
    names = [s.name for s in specs]
    at = next((names.index(n) + 1 for n in ("fold-constants", "simplify") if n in names), 0)
    return [*specs[:at], pipeline.PassSpec("unroll-loops"), *specs[at:]]


# ----------------------------------------------------------------------------- 3. bind
def bind(job: Job, input_shapes: Mapping | None, inputs, samples: int, const_inputs: tuple = ()) -> dict:
    """Concrete input shapes and the verification input sets; returns the ``binding`` section.

    ``const_inputs`` (``--const-input``) are replaced first by initializers holding their
    values in ``inputs`` (:func:`optc.const_inputs.freeze`): the compiled model and the
    reference no longer take them.

    Shapes come from ``input_shapes``, else the model. The batch is never taken from data: a
    dynamic leading dimension of an input of rank >= 2 is bound to 1 (with a note); another
    dynamic dimension is taken from the ``inputs`` arrays where given. The sets cover up to
    ``samples`` rows of the data (or generated inputs), one call of the bound batch each.
    """
    with job.stage("frontend", "bind input shapes"):
        arrays = None
        if isinstance(inputs, (str, os.PathLike)):
            arrays = verify.load_inputs(inputs)
        elif inputs is not None:
            arrays = dict(inputs)
        if const_inputs:
            job.original, job.frozen = freeze_inputs(job.original, const_inputs, arrays)
            arrays = {k: v for k, v in arrays.items() if k not in job.frozen}
        shapes, notes = default_shapes(job.original, input_shapes or {}, arrays)
        job.batch_bound = [vi.name for vi in frontend.graph_inputs(job.original)
                           if any(t.startswith(f"input {vi.name!r}: dynamic batch") for t in notes)]
        bound, job.in_specs = frontend.bind_input_shapes(job.original, shapes)
        job.original_bound = bound
        rows = verify.rows_per_call(job.in_specs)
        ranges = verify.index_ranges(job.original)  # integer inputs that index a constant table
        if arrays is not None:
            source = str(inputs) if isinstance(inputs, (str, os.PathLike)) else "inputs"
            verify.check_index_ranges(arrays, ranges)
            job.sets = verify.sample_sets(arrays, job.in_specs, source, max_rows=max(samples, 1))
            job.input_source = f"file {inputs}" if isinstance(inputs, (str, os.PathLike)) else "given arrays"
        else:
            job.sets = verify.ids_inside_tables(verify.generate_sets(job.in_specs, max(1, samples // rows)), ranges)
            job.input_source = "generated (numpy default_rng seed 0: standard normal floats)"
        job.index_ranges = ranges
        if job.batch_bound:
            job.batch_rows_independent = batch_axis_check(job, arrays)
    for note in notes:
        job.progress.note(note)
    return {"inputs": [s.to_json() for s in job.in_specs], "notes": notes,
            "batch": rows, "verify_calls": len(job.sets), "verify_samples": rows * len(job.sets),
            **({"const_inputs": describe_frozen(job.frozen)} if job.frozen else {})}


def batch_axis_check(job: Job, arrays: Mapping | None) -> bool | None:
    """Whether the leading dimension :func:`default_shapes` bound to 1 as a batch really is one:
    onnxruntime on the original model with two rows there must give each row's outputs as it
    gives them for that row alone (outputs with the same leading 2), else the package may not
    split rows into calls (a time or node axis: a softmax over time, a BiLSTM over frames, a
    recurrent state). Returns True / False, None when onnxruntime cannot run the model or it
    holds ops only optc's reference runs (nothing to check against). Raises UsageError where
    the model runs with the data's rows there but not with 1 (``--input-shape`` binds the
    axis), and where the given ``arrays`` hold several rows along an axis that is no batch."""
    names = set(job.batch_bound)
    specs = job.in_specs
    if any(n.domain == "ai.optc" for n in verify.all_nodes(job.original.graph)):
        return None  # only optc's reference runs those
    data_rows = {n: np.shape(arrays[n])[0] for n in names if arrays is not None and n in arrays and np.ndim(arrays[n])}
    second = job.sets[1] if len(job.sets) > 1 else verify.ids_inside_tables(
        verify.generate_sets(specs, 2, seed=1), job.index_ranges)[1]
    one = {s.name: job.sets[0][s.name] for s in specs}
    two = {s.name: (np.concatenate([job.sets[0][s.name], second[s.name]]) if s.name in names else one[s.name])
           for s in specs}
    other = {s.name: (second[s.name] if s.name in names else one[s.name]) for s in specs}
    hint = ", ".join(f"--input-shape {n}=N,..." for n in sorted(names))
    feeds = [one, other, two] + ([{**one, **{k: np.asarray(arrays[k]) for k in data_rows}}] if data_rows else [])
    try:  # all runs in one child process (an onnxruntime crash is no crash of optc's)
        results = verify.session_runs(job.original, feeds, optimize=True, keep_errors=True)
    except Exception:  # noqa: BLE001 - onnxruntime cannot load (or crashes on) it: verification says so later
        return None
    failed = [r for r in results[:2] if isinstance(r, verify.RunFailed)]
    if failed:  # with 1 row: does it run with the data's rows (else 2)?
        if isinstance(results[-1], verify.RunFailed):  # it runs with neither: not about the batch
            return None
        rows = max(data_rows.values(), default=2)
        raise UsageError(f"the model does not run with the leading dimension of {', '.join(sorted(names))} bound "
                         f"to 1 as a batch (onnxruntime: {failed[0][:200]}), but does with {rows} there: that "
                         f"dimension is no batch (a time, sequence or node axis); give its size with {hint}")
    together = results[2]
    independent = not isinstance(together, verify.RunFailed) and \
        all(_rows_match(t, a, b) for t, a, b in zip(together, *results[:2]))
    if not independent and any(r > 1 for r in data_rows.values()):
        raise UsageError(f"the rows of {', '.join(sorted(names))} along their dynamic leading dimension are not "
                         "computed independently (onnxruntime on two rows differs from each row alone): that "
                         "dimension is no batch, and optc would split the given rows into calls of 1; give its "
                         f"size with {hint}")
    if not independent:
        job.progress.note(f"the leading dimension of {', '.join(sorted(names))} is no batch (rows are not computed "
                          "independently): the package takes exactly 1 row there; `optc run` refuses more")
    return independent


def _rows_match(together: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``together`` (the outputs of 2 rows) is ``a`` then ``b`` (each row alone), to
    float rounding (batched kernels sum in another order)."""
    if together.ndim == 0 or a.ndim == 0 or together.shape[0] != 2 or a.shape[0] != 1 or b.shape[0] != 1 \
            or together.shape[1:] != a.shape[1:] or a.shape != b.shape:
        return False
    split = np.concatenate([a, b])
    if split.dtype.kind not in "fc":
        return bool(np.array_equal(together, split))
    t, sp = together.astype(np.float64), split.astype(np.float64)
    if not np.array_equal(np.isnan(t), np.isnan(sp)):
        return False
    finite = np.isfinite(t) & np.isfinite(sp)
    scale = float(np.abs(t[finite]).max(initial=0.0))
    rtol = 1e-2 if together.dtype == np.float16 else 1e-3  # float16: a few units in the last place
    return bool(np.all(t[~finite] == sp[~finite]) and np.abs(t[finite] - sp[finite]).max(initial=0.0)
                <= 1e-5 + rtol * scale)


def default_shapes(model: onnx.ModelProto, given: Mapping, arrays: Mapping | None) -> tuple[dict, list[str]]:
    """``given`` completed for dynamic inputs: leading (batch) dimension of rank >= 2 inputs
    -> 1, other dynamic dimensions -> the data's, where ``arrays`` holds the input. Returns
    (shapes, notes for the user); dimensions nothing binds are left for
    :func:`frontend.bind_input_shapes` to report."""
    shapes, notes = dict(given), []
    for vi in frontend.graph_inputs(model):
        if vi.name in shapes or not vi.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None  # 0: a static size
                for d in vi.type.tensor_type.shape.dim]
        if all(d is not None for d in dims):
            continue
        data = None if arrays is None or vi.name not in arrays else np.shape(arrays[vi.name])
        out = list(dims)
        if len(dims) >= 2 and dims[0] is None:
            out[0] = 1
            notes.append(f"input {vi.name!r}: dynamic batch dimension bound to 1 "
                         f"(--input-shape {vi.name}=N,... for another batch)")
        if data is not None and len(data) == len(dims):
            out = [d if d is not None else data[k] for k, d in enumerate(out)]
        if all(d is not None for d in out):
            shapes[vi.name] = tuple(int(d) for d in out)
    return shapes, notes


# ----------------------------------------------------------------------------- 4. passes
def run_passes(job: Job) -> list:
    """The pass pipeline on the bound model; returns the per-pass records. Parameters a pass
    leaves to the target and the pipeline does not set are filled first
    (:func:`fill_target_params`)."""
    import onnx_ir as ir

    job.specs = fill_target_params(job.specs, job.target, job.backend, job.progress)

    def keep_qdq(spec, model) -> None:  # what onnxruntime would run instead of optc's integer ops
        if spec.name == "integerize":
            job.deploy_qdq = ir.serde.serialize_model(model)

    with job.stage("passes", f"passes: {pipeline.format_pipeline(job.specs) or '(none)'}"):
        irm, records = pipeline.run_pipeline(ir.serde.deserialize_model(job.original_bound), job.specs,
                                             on_pass=keep_qdq)
        job.optimized = ir.serde.serialize_model(irm)
        try:
            onnx.checker.check_model(job.optimized)
        except Exception as err:
            raise InternalError("passes", f"the pipeline produced an invalid ONNX model: {err}") from err
        if job.exempt:  # ops a pass was to remove: what it left is refused, with its reasons
            reasons = {k["name"]: k["reason"] for r in records for k in r.details.get("kept", ())
                       if isinstance(k, dict) and "name" in k}
            frontend.check_supported(job.optimized, job.backend.supported_ops(), job.backend.name, reasons)
        job.out_specs = frontend.output_specs(job.optimized)
        job.lossy = [s.name for s in job.specs if pipeline.instantiate(s).lossy]
    if job.deploy_qdq is not None and not _has_optc_ops(job.optimized):
        job.deploy_qdq = None  # integerize rewrote nothing: model.onnx is the QDQ graph
    if job.deploy_qdq is not None:
        _warn_slow_integer_kernels(job)
    return records


def _warn_slow_integer_kernels(job) -> None:
    """Integer ops on a CPU whose int8 kernels are plain vector code (x86 without AVX2 or
    VNNI) run slower than float: say so, and how to keep the QDQ graph in float."""
    from .progress import warn

    if job.backend.target_facts(job.target).get("int8_kernels") == "generic":
        warn("integer kernels for this CPU have no int8 dot-product or widening multiply-add instruction (no "
             "AVX-512 VNNI, no AVX2): they run slower than float here; "
             "'integerize<enabled=false>' in --passes keeps the QDQ graph in float (then verify with a looser --rtol)")


def fill_target_params(specs: list, target: Target, backend, progress: Progress) -> list:
    """``specs`` with each parameter a pass takes from the target (``Pass.target_params``:
    key -> backend fact) set to the backend's value for ``target``
    (``backend.target_facts``) where the pipeline text left it unset; e.g. ``prune``'s
    ``multiple`` becomes the fp32 SIMD lanes (8 on AVX2). The package's pipeline then records
    the value; a backend without facts leaves the passes' own defaults."""
    wanted = [s for s in specs if pipeline.get_pass(s.name).target_params]
    if not wanted:
        return specs
    facts = backend.target_facts(target)
    out = []
    for spec in specs:
        given = {k for k, _ in spec.params}
        added = tuple((key, facts[fact]) for key, fact in pipeline.get_pass(spec.name).target_params.items()
                      if key not in given and fact in facts)
        if added:
            spec = pipeline.PassSpec(spec.name, spec.params + added)
            progress.note(f"{spec.name}: " + ", ".join(f"{k}={v}" for k, v in added)
                          + f" from the target {target.name} (set it in the pipeline to override)")
        out.append(spec)
    return out


def _has_optc_ops(model: onnx.ModelProto) -> bool:
    return any(n.domain == "ai.optc" for n in verify.all_nodes(model.graph))  # If branches too


# ----------------------------------------------------------------------------- 5. build
def build(job: Job, params: str, tuning, versions: dict) -> dict:
    """Lower, build and export with the backend (``tuning``: the TVM backends' explicit
    MetaSchedule input, see ``optc.backends.tvm.tune.TuningRequest``); writes the ONNX files
    and sample inputs and fills the manifest. Returns the ``build`` section (schedules,
    tuning, backend facts)."""
    with job.stage("build", f"build for {job.target.name} ({job.target.backend})"):
        try:
            built = job.backend.build(job.optimized, job.in_specs, job.target, job.work, params=params, tuning=tuning)
        except UnsupportedModelError as err:
            if not job.batch_bound:
                raise
            names = ", ".join(job.batch_bound)
            raise UnsupportedModelError(f"{err} (note: the dynamic batch dimension of {names} was bound to 1; a model "
                                        f"that needs another batch compiles with --input-shape NAME=N,...)") from err
        save_onnx(job.optimized, job.work / "model.onnx")
        np.savez(job.work / "sample_inputs.npz", **job.sets[0])
        files = built.files | {"onnx": "model.onnx", "sample_inputs": "sample_inputs.npz"}
        files |= save_frozen(job.frozen, job.work)
        if job.deploy_qdq is not None:
            save_onnx(job.deploy_qdq, job.work / DEPLOY_QDQ)
            files["deploy_onnx"] = DEPLOY_QDQ
    job.manifest = {
        "format": artifact.FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "target": job.target.to_json() | {"tvm_resolved": built.info.get("tvm_target")},
        "pipeline": pipeline.format_pipeline(job.specs),
        "pipeline_explicit": pipeline.format_pipeline(job.specs, explicit=True),
        "params": params,
        "inputs": [s.to_json() for s in job.in_specs],
        "outputs": [s.to_json() for s in job.out_specs],
        **({"const_inputs": describe_frozen(job.frozen)} if job.frozen else {}),
        **({"batch_bound": {"inputs": job.batch_bound, "rows_independent": job.batch_rows_independent}}
           if job.batch_bound else {}),
        **({"index_ranges": job.index_ranges} if job.index_ranges else {}),
        "files_by_role": files,
        "source_model": {"path": str(Path(job.source).resolve()), "sha256": artifact.sha256(Path(job.source))},
    }
    return {k: v for k, v in built.info.items() if k != "tvm_target"}


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > 1_800_000_000:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))


@contextlib.contextmanager
def open_session(job: Job, load_session) -> Iterator[Any]:
    """The built package loaded for running (``load_session(backend, dir, manifest,
    remote)``); a remote session is closed again (its server serves one at a time)."""
    job.session = load_session(job.backend, job.work, job.manifest, job.remote)
    try:
        yield job.session
    finally:
        if job.remote is not None:
            job.session.close()


# ----------------------------------------------------------------------------- 6. verify
def verify_artifact(job: Job, opts: VerifyOptions) -> dict:
    """Run the artifact on every input set and compare with the reference: onnxruntime on the
    original model, or on the optimized model when the pipeline is lossy (quantized graphs by
    the rules of :mod:`optc.passes.quant.tolerance`). An input model that is already quantized
    (QDQ) is checked by those rules too, and, when the pipeline changed it (integerize), also
    against onnxruntime on the original QDQ model (``original_qdq`` in the verdict;
    ``tolerance.compare_to_original_qdq``). A dynamically quantized model (DynamicQuantizeLinear)
    is checked by ``tolerance.compare_dynamic`` (and :func:`_types_and_originals`). Raises
    VerificationError on a mismatch."""
    from optc.passes.quant import dynamic, qdq

    which = "optimized" if job.lossy else "original"
    prequantized = qdq.is_quantized(job.original)
    if not opts.enabled:
        return {"passed": None, "skipped": "--no-verify"}
    if not job.session.runnable:
        _save_sample_outputs(job, which)  # kept for a later check on the hardware
        return {"passed": None, "skipped": job.session.skip_reason}
    with job.stage("verify", f"verify against onnxruntime ({len(job.sets)} call(s))"):
        refs = job.reference(which)  # first: a model onnxruntime cannot run is refused as such
        try:
            outs = verify.join_calls(job.session.run_many([job.args(k) for k in range(len(job.sets))]))
        except OptcError:
            raise
        except Exception as err:  # e.g. a TVM runtime kernel without the dtype: nothing to deliver
            raise VerificationError("the artifact failed when run on the verification inputs: "
                                    + " ".join(str(err).split())[:300]) from err
        if dynamic.has_dynamic_quantization(job.optimized if job.lossy else job.original):
            from optc.passes.quant.tolerance import compare_dynamic

            model = job.optimized if job.lossy else job.original
            verdict = compare_dynamic(outs, refs, job.out_names, opts.atol, opts.rtol, lambda: verify.join_calls(
                [dynamic.unrounded_outputs(model, s) for s in job.sets]),
                carried=dynamic.carries_flips(model),
                sensitivity=lambda: dynamic.reference_sensitivity(model, job.sets[0]))
        elif job.lossy or prequantized:
            from optc.passes.quant.tolerance import compare_quantized, compare_to_original_qdq

            verdict = compare_quantized(outs, refs, job.out_names, opts.atol, opts.rtol, job.optimized,
                                        _fraction_baselines(job, prequantized))
            if prequantized and job.lossy:
                second = compare_to_original_qdq(outs, job.reference("original"), job.out_names, opts.atol,
                                                 opts.rtol, job.original)
                second["reference"] = verify.reference_name(job.original) + ", on the original QDQ model"
                verdict["original_qdq"] = second
                verdict["passed"] = verdict["passed"] and second["passed"]
        else:
            verdict = verify.compare(outs, refs, job.out_names, opts.atol, opts.rtol,
                                     model=verify.model_traits(job.original))
        _types_and_originals(job, opts, verdict, outs)
        rows = verify.rows_per_call(job.in_specs)
        verdict |= {"inputs": job.input_source, "calls": len(job.sets), "samples": rows * len(job.sets),
                    "reference": verify.reference_name(job.optimized if job.lossy else job.original) + ", on the " + (
                        f"optimized ONNX model: the pipeline has lossy passes ({', '.join(job.lossy)}); "
                        "fidelity to the original is reported apart" if job.lossy else "original model")}
        _save_sample_outputs(job, which)
        _branch_coverage(job, verdict)
    _refuse_failed(job, opts, verdict)
    return verdict


def _types_and_originals(job: Job, opts: VerifyOptions, verdict: dict, outs: list[np.ndarray]) -> None:
    """The declared output types (``verify.check_declared_types``); for a model with com.microsoft
    DynamicQuantizeLSTM (rewritten by ``expand-dynamic-lstm``), also the artifact against the
    original's spec arithmetic within its own activation-quantization error
    (``original_dynamic_lstm``: ``optc.passes.quant.dynamic_lstm.compare_to_original``)."""
    from optc.passes.quant import dynamic_lstm

    verify.check_declared_types(verdict, outs, job.out_specs)
    if not (job.lossy and dynamic_lstm.dynamic_lstm_nodes(job.original)):
        return
    second = dynamic_lstm.compare_to_original(outs, job.out_names, opts.atol, opts.rtol, lambda: job.reference(
        "original"), lambda: verify.join_calls([dynamic_lstm.spec_outputs(job.original, s, rounding=False)
                                                for s in job.sets]))
    verdict["original_dynamic_lstm"] = second
    verdict["passed"] = verdict["passed"] and second["passed"]


def _fraction_baselines(job: Job, prequantized: bool):
    """What the fraction rule of ``compare_quantized`` measures against: the float model (or,
    for a pre-quantized input, the same model without activation rounding) and, as the
    independent run of the quantized graph, onnxruntime on the QDQ graph (the original of a
    pre-quantized model, ``deploy_qdq`` of an integerized one)."""
    from optc.passes.quant.tolerance import Baselines

    if prequantized:
        return Baselines(lambda: _unrounded_refs(job), "the model without activation rounding",
                         lambda: job.reference("original"))
    qdq_model = job.deploy_qdq
    alternative = None if qdq_model is None else (
        lambda: verify.join_calls(verify.reference_runs(qdq_model, job.sets)))
    return Baselines(lambda: job.reference("original"), "the original", alternative)


def _unrounded_refs(job: Job) -> list[np.ndarray]:
    """Outputs of the pre-quantized input model without its activation rounding
    (``qdq.unrounded_qdq``), on every verification input set, joined per output."""
    from optc.passes.quant import qdq

    model = qdq.unrounded_qdq(job.original)
    return verify.join_calls(verify.reference_runs(model, job.sets))


def _refuse_failed(job: Job, opts: VerifyOptions, verdict: dict) -> None:
    """Raise VerificationError naming the failing outputs where the verdict did not pass."""
    second = verdict.get("original_qdq")
    if second is not None and not second["passed"] and all(o["passed"] for o in verdict["outputs"]):
        raise VerificationError("artifact output agrees with optc's integer reference but differs from onnxruntime "
                                f"on the original QDQ model beyond the quantizer-step rule ({verdict['samples']} "
                                f"samples): {_failures(second)}{verify.u8s8_saturation_note(job.original)}")
    second = verdict.get("original_dynamic_lstm")
    if second is not None and not second["passed"]:
        raise VerificationError("artifact output differs from the original DynamicQuantizeLSTM model (its spec "
                                "arithmetic) beyond its own activation-quantization error "
                                f"({verdict['samples']} samples): {_failures(second)}")
    if not verdict["passed"]:
        detail = _failures(verdict)
        engine = "optc's integer reference" if _has_optc_ops(job.optimized) and job.lossy else "onnxruntime"
        rtol = max([opts.rtol] + [o.get("rtol", opts.rtol) for o in verdict["outputs"] if not o["passed"]])
        rule = f"rtol={opts.rtol:g}" if rtol == opts.rtol else f"rtol={rtol:g} (float16 precision)"
        raise VerificationError(f"artifact output differs from {engine} beyond atol={opts.atol:g}, "
                                f"{rule} ({verdict['samples']} samples): {detail}")


def _branch_coverage(job: Job, verdict: dict) -> None:
    """Record which branch of each data-dependent If the verification inputs took
    (``verdict["if_branches"]``) and warn about a branch none of them took: it is compiled but
    unverified (the inputs decide; ``--inputs`` with data that takes it verifies it)."""
    from .progress import warn

    coverage = verify.branch_coverage(job.optimized, job.sets)  # the Ifs the artifact contains
    if not coverage:
        return
    verdict["if_branches"] = coverage
    for node, counts in coverage.items():
        missed = [b for b, c in counts.items() if c == 0]
        if missed:
            warn(f"If {node!r}: the {missed[0]} branch was taken by none of the {len(job.sets)} verification "
                 f"call(s), so it is compiled but unverified; pass --inputs with data that takes it")


def _failures(verdict: dict) -> str:
    """The failing outputs of a verdict, one clause each."""
    bad = [o for o in verdict["outputs"] if not o["passed"]]
    return "; ".join(f"{o['name']}: " + (o.get("error") or f"max abs error {o['max_abs_error']:.3g}" + (
        f", max rel error {o['max_rel_error']:.3g}" if "max_rel_error" in o else "")) for o in bad) \
        or verdict.get("error", "")


def _save_sample_outputs(job: Job, which: str) -> None:
    """The reference outputs of the first input set (``sample_inputs.npz``), from the cache."""
    first = job.reference_calls(which)[0]
    np.savez(job.work / "sample_outputs.npz", **dict(zip(job.out_names, first)))
    job.manifest["files_by_role"]["sample_outputs"] = "sample_outputs.npz"


# ----------------------------------------------------------------------------- 7. package
def package(job: Job, report: dict) -> None:
    """Write report.json and manifest.json (with every file's hash) into the package."""
    artifact.write_json(job.work / artifact.REPORT, report)
    job.manifest["files"] = artifact.file_table(job.work)
    artifact.write_json(job.work / artifact.MANIFEST, job.manifest)


def sizes(job: Job) -> dict:
    """The report's ``size_bytes`` section."""
    files = job.manifest["files_by_role"]
    size = {role: (job.work / rel).stat().st_size for role, rel in files.items()
            if role in ("library", "params", "onnx")}
    runner = job.work / "runner"
    return {
        "artifact": size.get("library", 0) + size.get("params", 0),
        "library": size.get("library", 0),
        "params": size.get("params", 0),
        "onnx_original": Path(job.source).stat().st_size,
        "onnx_optimized": size.get("onnx", 0),
        "runtime_bundle": sum(p.stat().st_size for p in runner.glob("*")) if runner.is_dir() else 0,
    }


def summary(job: Job) -> dict:
    return analysis.summarize(job.optimized)


__all__ = ["VerifyOptions", "MeasureOptions", "Job", "load", "bind", "default_shapes", "run_passes", "build",
           "open_session", "verify_artifact", "package", "sizes", "OptcError"]

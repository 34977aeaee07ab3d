"""The public Python API; the CLI is a thin layer over these functions.

``compile`` runs: target + pipeline check -> environment check -> load -> unsupported-op check
-> bind shapes -> pass pipeline -> backend build -> verification against onnxruntime ->
latency -> atomic package write. Errors are :class:`optc.errors.OptcError` subclasses.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from . import DEFAULT_PIPELINE, __version__
from . import accuracy, analysis, artifact, const_inputs, frontend, pipeline, stages, verify
from .errors import InvalidModelError, UsageError
from .progress import SILENT, Progress
from .targets import Target, get_target, host_cores
from .stages import CompileOptions
from .timing import LatencyContext, stats

PARAMS_MODES = ("embedded", "separate")


def _versions() -> dict:
    out = {"optc": __version__}
    for dist in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "onnx-ir", "onnxsim"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def compile(
    model: str | os.PathLike,
    target: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    *,
    passes: str = DEFAULT_PIPELINE,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    options: CompileOptions | None = None,
    progress: Progress = SILENT,
) -> dict:
    """Compile an ONNX model for ``target`` into the package directory ``out_dir``; returns
    the report (also written to ``out_dir/report.json``).

    ``options`` (:class:`CompileOptions`, e.g. ``CompileOptions.of(measure=False)``) groups
    what each stage takes: verification (tolerances, samples), measurement (latency, energy,
    accuracy on ``eval_data``), MetaSchedule tuning, a TVM RPC remote, the weights' place and
    the cleanup prefix. Raises OptcError subclasses for bad input (nothing is written then) and
    VerificationError when the artifact's outputs differ from the reference (see
    :mod:`optc.stages`). The stages, in order: load -> bind -> passes -> build -> verify ->
    measure -> package.
    """
    t_start = time.perf_counter()
    opts = options or CompileOptions()
    tgt = get_target(target)
    specs = _pipeline(passes, opts, progress)
    writer = artifact.PackageWriter(out_dir or Path(model).with_suffix("").name + f".{tgt.name}.optc", force=opts.force)
    from optc.backends import get_backend

    backend = get_backend(tgt.backend, opts.backend)
    backend.check_environment(tgt)
    from optc.passes.quant.integerize import auto_integerize  # quantize on CPU/ARM: real int8 kernels

    specs = auto_integerize(specs, tgt, backend)
    remote = _remote(tgt, opts.remote)
    tuning = _tuning(tgt, opts.tune, opts.remote, time.time() - (time.perf_counter() - t_start))
    with writer as tmp:
        job = stages.Job(Path(model), tgt, backend, specs, tmp, progress, remote)
        stages.load(job)
        binding = stages.bind(job, input_shapes, inputs, opts.verify.samples, opts.const_inputs)
        records = stages.run_passes(job)
        build_info = stages.build(job, opts.params, tuning, _versions())
        with stages.open_session(job, _load_session):
            verdict = stages.verify_artifact(job, opts.verify)
            measured = _measure(job, opts.measure)
        job.timings["total"] = time.perf_counter() - t_start
        report = _report(job, binding, verdict, measured, build_info, records)
        stages.package(job, report)
    return report | {"package": str(writer.dest)}


def _pipeline(text: str, opts: CompileOptions, progress: Progress) -> list:
    """The pass specs to run: ``text`` parsed, with the cleanup prefix before its compression
    passes unless ``opts.cleanup`` is false (the package records what ran); option checks."""
    if opts.params not in PARAMS_MODES:
        raise UsageError(f"--params must be one of {', '.join(PARAMS_MODES)}, not {opts.params!r}")
    if opts.verify.samples < 1:
        raise UsageError(f"--verify-samples must be at least 1, not {opts.verify.samples}")
    if opts.tune.seconds is not None and not opts.tune.trials:
        raise UsageError("--tune-seconds bounds the tuning that --tune N turns on; nothing would be tuned: "
                         "give the number of measured candidates too (e.g. --tune 2000 --tune-seconds "
                         f"{opts.tune.seconds:g}; tuning stops at whichever limit comes first)")
    specs = pipeline.parse_pipeline(text)
    if not opts.cleanup:
        return specs
    specs, added = pipeline.with_cleanup(specs)
    if added:
        progress.note(f"cleanup passes {','.join(s.name for s in added)} added before the compression passes "
                      f"(--no-cleanup to run the pipeline as written): {pipeline.format_pipeline(specs)}")
    return specs


def _tuning(tgt: Target, tune: stages.TuneOptions, remote: stages.RemoteOptions, start: float):
    """The TVM build's explicit MetaSchedule input (None for other backends): tuning before the
    build (``tune.trials`` candidates, budget from ``start``) and the databases' location."""
    if not tgt.backend.startswith("tvm"):
        return None
    from optc.backends.tvm import tune as tvm_tune

    return tvm_tune.TuningRequest(str(tune.database) if tune.database else None, tune.trials, tune.seconds, start,
                                  remote.rpc, remote.tracker, remote.key)


def _measure(job: stages.Job, opts: stages.MeasureOptions) -> dict:
    """Stage "measure": accuracy on ``eval_data`` (or fidelity of a lossy pipeline), latency,
    energy; returns those report sections."""
    out = {}
    if opts.eval_data is not None:
        with job.stage("evaluate", f"evaluate on {opts.eval_data}"):
            out["accuracy"] = _evaluate(opts.eval_data, opts.eval_limit, job.original, job.optimized, job.session,
                                        job.target, job.in_specs, job.out_names)
    elif job.lossy:
        out["fidelity"] = accuracy.fidelity(job.reference("original"), job.reference("optimized"), job.out_names)
    summary = stages.summary(job)
    out["summary"] = summary
    out["latency"] = job.session.report_latency(job.args(), LatencyContext(job.target, summary, opts.enabled,
                                                                           job.progress))
    from .energy import ArtifactRun, EnergyOptions, report_section  # measured, supplied power or modeled

    # a remote device's energy cannot be metered from here (session None: modeled)
    run = ArtifactRun(session=None if job.remote else job.session, args=job.args(), package=job.work,
                      manifest=job.manifest)
    out["energy"] = report_section(job.target, summary, out["latency"], model=job.optimized, artifact=run,
                                   options=EnergyOptions(opts.enabled, opts.power_watts), progress=job.progress)
    return out


def _report(job: stages.Job, binding: dict, verdict: dict, measured: dict, build_info: dict, records) -> dict:
    summary = measured.pop("summary")
    return {
        "target": job.target.name,
        "backend": job.target.backend,
        "pipeline": job.manifest["pipeline"],
        "pipeline_explicit": job.manifest["pipeline_explicit"],
        "binding": binding,
        "verify": verdict,
        "size_bytes": stages.sizes(job),
        "latency": measured.pop("latency"),
        **({"tuning": build_info.pop("tuning")} if "tuning" in build_info else {}),
        **({"build": build_info} if build_info else {}),
        **measured,
        "compile_seconds": round(job.timings["total"], 3),
        "stage_seconds": {k: round(v, 3) for k, v in job.timings.items()},
        "model": {k: v for k, v in summary.items() if k != "layers"},
        "passes": [r.__dict__ for r in records],
        "inputs": job.manifest["inputs"],
        "outputs": job.manifest["outputs"],
    }


def _remote(tgt: Target, remote: stages.RemoteOptions):
    """The TVM RPC remote asked for (None: run here); UsageError for a non-TVM target."""
    if not remote:
        return None
    if not tgt.backend.startswith("tvm"):
        raise UsageError(f"--rpc needs a TVM target, not {tgt.name} ({tgt.backend})")
    from optc.backends.tvm import rpc as tvm_rpc

    return tvm_rpc.Remote.from_options(remote.rpc, remote.key, remote.tracker)


def _load_session(backend, pkg: Path, manifest: dict, remote):
    if remote is None:
        return backend.load(pkg, manifest)
    from optc.backends.tvm import rpc as tvm_rpc

    return tvm_rpc.open_remote(pkg, manifest, remote)


def _evaluate(path, limit, original, optimized, session, tgt: Target, in_specs, out_names) -> dict:
    """Accuracy/fidelity of the artifact against the original model (both on ``path``)."""
    from . import accuracy

    inputs, labels = accuracy.load_eval(path, in_specs)
    order = [s.name for s in in_specs]
    ref_sess = verify.ort_session(original)
    reference = lambda feeds: ref_sess.run(None, feeds)  # noqa: E731
    runnable = session.runnable
    if runnable and session.timing == "measured":  # real hardware: evaluate the artifact itself
        candidate = lambda feeds: session.run([feeds[n] for n in order])  # noqa: E731
        evaluated_on = "the compiled artifact"
    else:  # emulated targets: the optimized ONNX, which verification showed equal to the artifact
        opt_sess = verify.ort_session(optimized)
        candidate = lambda feeds: opt_sess.run(None, feeds)  # noqa: E731
        evaluated_on = "the optimized ONNX model in onnxruntime " + (
            "(the artifact was verified equal to it)" if runnable else f"(artifact not run: {session.skip_reason})")
    result = accuracy.compare_models(reference, candidate, inputs, labels, in_specs, in_specs, out_names, limit)
    return {"data": str(path), "evaluated_on": evaluated_on,
            "reference": "the original model in onnxruntime"} | result


def _open(pkg: str | os.PathLike):
    from optc.backends import get_backend

    pkg = Path(pkg)
    manifest = artifact.read_package(pkg)
    backend = get_backend(manifest["target"]["backend"])
    return pkg, manifest, backend.load(pkg, manifest)


def run(pkg: str | os.PathLike, inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
        out: str | os.PathLike | None = None, *, force: bool = False) -> dict[str, np.ndarray]:
    """Run a compiled package on ``inputs`` (an .npz path or arrays; default: its sample
    inputs); return outputs by name, and write them to ``out`` (.npz) if given.

    Arrays with more rows than the package's batch run in consecutive calls of that batch,
    outputs concatenated along axis 0; rows that do not fill a last call are an error (none is
    ever dropped silently). Integer inputs that index a constant table through a Gather must
    lie in it (``verify.index_ranges``, recorded in the manifest), as onnxruntime requires."""
    if out is not None:
        artifact.check_destination(Path(out), force)
    pkg, manifest, session = _open(pkg)
    specs = [frontend.TensorSpec.from_json(d) for d in manifest["inputs"]]
    if inputs is None:
        arrays = verify.load_inputs(pkg / manifest["files_by_role"]["sample_inputs"])
        source = "sample inputs"
    elif isinstance(inputs, (str, os.PathLike)):
        arrays, source = verify.load_inputs(inputs), str(inputs)
    else:
        arrays, source = dict(inputs), "inputs"
    arrays = const_inputs.check_run_inputs(arrays, pkg, manifest)  # frozen at compile time: same value or refused
    verify.check_index_ranges(arrays, manifest.get("index_ranges", {}))  # ids past a table: as onnxruntime
    sets = verify.sample_sets(arrays, specs, source)
    bound = manifest.get("batch_bound") or {}
    if len(sets) > 1 and bound.get("rows_independent") is False:  # stages.batch_axis_check
        raise InvalidModelError(
            f"{', '.join(bound['inputs'])}: the leading dimension was bound to 1 at compile time, but it is no batch "
            f"(the model does not compute its rows independently), so the {len(sets)} rows given cannot run as "
            f"{len(sets)} calls: compile with --input-shape NAME=N,... for N rows")
    outs = verify.join_calls(session.run_many([[fitted[s.name] for s in specs] for fitted in sets]))
    result = dict(zip([d["name"] for d in manifest["outputs"]], outs))
    if out is not None:
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npz")
        try:
            np.savez(tmp, **result)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return result


@dataclass(frozen=True)
class BenchOptions:
    """How :func:`bench` times: ``warmup`` calls, then ``repeat`` timed calls in all, split
    into ``rounds`` interleaved with onnxruntime's, on ``threads`` threads (None: this host's
    cores). ``profile``: also a per-kernel profile beside onnxruntime's per-node one, ``top``
    rows of each (:mod:`optc.profile`). ``compare_to``: another package of the same model
    (e.g. built without compression) timed in the same interleaved rounds."""

    warmup: int = 5
    repeat: int = 50
    rounds: int = 5
    threads: int | None = None
    profile: bool = False
    top: int = 10
    compare_to: str | os.PathLike | None = None


def bench(pkg: str | os.PathLike, options: BenchOptions = BenchOptions(), *, compare_ort: bool = True,
          rpc: str | None = None, rpc_key: str | None = None, rpc_tracker: str | None = None) -> dict:
    """Latency of a package and, beside it, onnxruntime's on the package's deployable
    equivalent, with the same inputs and thread count, interleaved in ``options.rounds`` so
    machine noise hits both alike (see :class:`BenchOptions`).

    Baselines (onnxruntime, graph optimizations on): ``deployable`` - the package's ONNX model
    when onnxruntime can run it, else the QDQ graph an integerized package was made from
    (``deploy_qdq.onnx``); ``original`` - the source model named in the manifest, when it is
    still there unchanged (sha256). Never optc's own reference ops. The headline
    ``onnxruntime`` / ``ratio_optc_over_ort`` (its key: ``onnxruntime_baseline``) is the
    deployable equivalent of a package whose pipeline compresses (prune, quantize, ...), and
    otherwise the faster of the two: then both are the user's own model, and an expansion optc
    made to compile it (``expand-dynamic-lstm``'s float LSTM for onnxruntime's int8
    ``DynamicQuantizeLSTM``) must not become a slower yardstick than the original.
    Both sides are timed from numpy inputs to numpy outputs (conversions included). The TVM
    thread pool is set to ``threads`` for real (``runtime.config_threadpool``) and the count it
    reports is recorded. With ``rpc``/``rpc_tracker`` the package runs on that TVM RPC server
    instead, timed there by ``time_evaluator`` (no onnxruntime beside it).

    ``options.compare_to`` adds ``compare_to``: that package timed in the same rounds.
    ``warnings`` lists what the figures say against a compressed package (its pipeline has a
    compression pass): measured slower than the ``compare_to`` package, or than onnxruntime on
    the uncompressed original. ``options.profile`` adds ``profile`` (:mod:`optc.profile`).
    """
    warmup, repeat, rounds, threads = options.warmup, options.repeat, options.rounds, options.threads
    if rpc or rpc_tracker or rpc_key:
        if options.profile or options.compare_to:
            raise UsageError("--profile and --compare-to run packages in this process; they cannot be combined "
                             "with an RPC remote")
        return _bench_remote(pkg, warmup, repeat, rpc, rpc_key, rpc_tracker)
    if options.profile:
        from . import profile

        profile.check_package(pkg)  # before loading: a package without a library is refused by name
    threads = threads or host_cores()
    pkg, manifest, session = _open(pkg)
    tgt = manifest["target"]
    specs = [frontend.TensorSpec.from_json(d) for d in manifest["inputs"]]
    sample = verify.load_inputs(pkg / manifest["files_by_role"]["sample_inputs"])
    args = [sample[s.name] for s in specs]
    if not session.runnable:
        raise UsageError(f"{pkg}: cannot run here: {session.skip_reason}")
    # What a session's times mean: "measured" (real hardware here) or "emulated" (qemu-user).
    emulated = session.timing != "measured"
    if emulated:
        repeat, rounds = min(repeat, 5), 1
    applied = _set_threads(threads) if tgt["backend"] == "tvm-cpu" else None
    # onnxruntime's CPU latency is only a fair neighbour for code that runs on this CPU.
    baselines = _baselines(pkg, manifest, threads) if compare_ort and tgt["backend"] == "tvm-cpu" else {}
    other = {"compare_to": _PackageBaseline(options.compare_to, specs, sample)} if options.compare_to else {}
    optc_times, ort_times, applied = _interleaved(session, args, baselines | other, (warmup, repeat, rounds),
                                                  applied, emulated)
    result = {
        "package": str(pkg),
        "target": tgt["name"],
        "threads": threads,
        **({"threads_applied": {"optc (TVM runtime.NumThreads)": applied,
                                "onnxruntime (intra_op_num_threads)": threads}} if applied is not None else {}),
        "method": f"{session.timing} (not the target's latency)" if emulated else
                  f"measured: wall clock per call from numpy inputs to numpy outputs (both sides), {warmup} "
                  f"warm-up, {rounds} interleaved rounds",
        "optc": stats(optc_times),
    }
    if baselines:
        result |= _baseline_section(result["optc"], baselines, ort_times, bool(_compressing(manifest)))
    elif compare_ort and tgt["backend"] == "tvm-cpu":
        result["onnxruntime_note"] = "no onnxruntime-runnable equivalent of this package was found"
    if emulated:
        import json

        result["modeled"] = json.loads((pkg / artifact.REPORT).read_text()).get("latency")
    if other:
        result["compare_to"] = other["compare_to"].section(result["optc"], ort_times["compare_to"])
    warnings = _compression_warnings(manifest, result)
    if warnings:
        result["warnings"] = warnings
    if options.profile:
        result["profile"] = _profile(session, manifest, args, sample, threads, options, baselines)
    return result


def _compression_warnings(manifest: dict, result: dict) -> list[str]:
    """A warning when the package's pipeline compresses (a pass with ``compression``: prune,
    quantize, ...) and optc's median is above that of the ``compare_to`` package (optc on
    both: like for like), or, without one, above onnxruntime's on the uncompressed original."""
    compressing = _compressing(manifest)
    if not compressing:
        return []
    ms, out = result["optc"]["median_ms"], []
    why = (f"although the pipeline compresses ({', '.join(compressing)}); `optc bench --profile` shows which "
           "kernels take the time")
    other = result.get("compare_to")
    if other is not None and ms > other["median_ms"]:
        out.append(f"compressed package slower than {other['package']} (pipeline {other['pipeline']}), timed in "
                   f"the same rounds: {ms:.3f} vs {other['median_ms']:.3f} ms ({ms / other['median_ms']:.2f}x) {why}")
    original = result.get("baselines", {}).get("original")
    if other is None and original is not None and ms > original["median_ms"]:
        out.append(f"compressed package slower than the uncompressed original model in onnxruntime: optc {ms:.3f} "
                   f"ms vs {original['median_ms']:.3f} ms ({ms / original['median_ms']:.2f}x) {why}")
    return out


def _compressing(manifest: dict) -> list[str] | None:
    """The compression passes of the package's pipeline; None where this optc cannot read it."""
    try:
        return [s.name for s in pipeline.parse_pipeline(manifest.get("pipeline", ""))
                if pipeline.instantiate(s).compression]
    except Exception:  # noqa: BLE001 - a pipeline this optc cannot read: no claim either way
        return None


class _PackageBaseline:
    """Another optc package of the same model (``BenchOptions.compare_to``), run here on the
    same sample inputs and timed like the package itself."""

    def __init__(self, path, specs: list, sample: dict):
        self.path, manifest, self.session = _open(path)
        self.pipeline = manifest.get("pipeline", "")
        theirs = [frontend.TensorSpec.from_json(d) for d in manifest["inputs"]]
        if [(s.name, tuple(s.shape)) for s in theirs] != [(s.name, tuple(s.shape)) for s in specs]:
            given = ", ".join(f"{s.name} {list(s.shape)}" for s in theirs)
            raise UsageError(f"--compare-to {path}: its inputs ({given}) differ from the package's: not the same model")
        if not self.session.runnable or self.session.timing != "measured":
            raise UsageError(f"--compare-to {path}: not a package measured on this machine")
        self.args = [sample[s.name] for s in specs]

    def time(self, warmup: int, repeat: int) -> list[float]:
        return self.session.time(self.args, warmup=warmup, repeat=repeat)

    def section(self, optc: dict, times: list[float]) -> dict:
        out = stats(times)
        return out | {"package": str(self.path), "pipeline": self.pipeline,
                      "ratio_optc_over_this": optc["median_ms"] / out["median_ms"]}


def _profile(session, manifest: dict, args: list, sample: dict, threads: int, options: BenchOptions,
             baselines: dict) -> dict:
    """The ``profile`` section of :func:`bench`: optc's kernels beside onnxruntime's nodes on the
    deployable baseline, same inputs and threads."""
    from . import profile

    opts = profile.ProfileOptions(warmup=min(options.warmup, 3), repeat=max(1, min(options.repeat, 10)),
                                  top=options.top)
    peak = profile.host_peak(manifest, threads)
    out = {"peak": peak, "optc": profile.optc_profile(session, args, opts, peak)}
    deployable = baselines.get("deployable")
    if deployable is None:
        out["onnxruntime_note"] = ("not profiled (--no-ort)" if not baselines else
                                   "no onnxruntime-runnable equivalent of this package")
    else:
        out["onnxruntime"] = profile.ort_profile(deployable.path, sample, threads, opts, peak)
    return out


# Pause before each timed block (seconds): the runtime timed before it goes idle first. Both
# runtimes' worker threads spin for a while after a call (onnxruntime's intra-op pool by
# default, TVM's pool too); with N threads on N cores a spinning worker of one runtime took a
# core from the other's parallel loop for whole scheduler slices (PP-OCR cls, 2 threads on 2
# cores: optc p90 11.6 ms against a median of 1.0 ms, 1.1 ms steady without onnxruntime).
SETTLE_S = 0.05


def _interleaved(session, args, baselines: dict, plan: tuple[int, int, int], applied, emulated: bool):
    """optc and each baseline timed in ``rounds`` alternating blocks after ``warmup`` calls
    each (``plan``: warmup, repeat, rounds); each block starts after :data:`SETTLE_S` and one
    untimed call, so it runs with the other runtime's threads idle and its own awake. Returns
    (optc times, times per baseline, threads the TVM pool reports once it exists, or None)."""
    import time

    warmup, repeat, rounds = plan
    per_round = max(1, repeat // rounds)
    optc_times: list[float] = []
    ort_times: dict[str, list[float]] = {k: [] for k in baselines}
    if not emulated:
        session.time(args, warmup=warmup, repeat=0)
    for b in baselines.values():
        b.time(warmup, 0)
    if applied is not None:
        applied = _threads_in_use()  # the pool exists now: what it really holds
    for _ in range(rounds):
        time.sleep(SETTLE_S)
        optc_times += session.time(args, warmup=0 if emulated else 1, repeat=per_round)
        for k, b in baselines.items():
            time.sleep(SETTLE_S)
            ort_times[k] += b.time(1, per_round)
    return optc_times, ort_times, applied


def _baseline_section(optc: dict, baselines: dict, ort_times: dict, compressed: bool) -> dict:
    """Every baseline's figures and the headline one (:func:`bench`): the deployable
    equivalent (the first) of a ``compressed`` package, else the fastest."""
    import onnxruntime

    out = {k: stats(ort_times[k]) | {"model": b.describe, "version": onnxruntime.__version__,
                                     "graph_optimizations": "all",
                                     "ratio_optc_over_this": optc["median_ms"] / stats(ort_times[k])["median_ms"]}
           for k, b in baselines.items()}
    key = next(iter(out)) if compressed else min(out, key=lambda k: out[k]["median_ms"])
    return {"baselines": out, "onnxruntime": out[key], "onnxruntime_baseline": key,
            "ratio_optc_over_ort": out[key]["ratio_optc_over_this"]}


def _set_threads(n: int) -> int:
    """Set the TVM runtime thread pool of this process to ``n`` threads."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, int(n))
    return int(n)


def _threads_in_use() -> int:
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


class _OrtBaseline:
    """onnxruntime on one ONNX file of a bench, timed from numpy feeds to numpy outputs."""

    def __init__(self, path: Path, describe: str, sample: dict, threads: int):
        self.describe, self.path = describe, path
        self.sess = verify.ort_session(path, threads=threads, optimize=True)
        names = {i.name for i in self.sess.get_inputs()}
        self.feeds = {k: v for k, v in sample.items() if k in names}
        if names - set(self.feeds):  # a baseline that cannot run is left out, not a crash mid-bench
            raise ValueError(f"no sample values for input(s) {sorted(names - set(self.feeds))} of {path}")

    def time(self, warmup: int, repeat: int) -> list[float]:
        for _ in range(warmup):
            self.sess.run(None, self.feeds)
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.sess.run(None, self.feeds)
            out.append(time.perf_counter() - t0)
        return out


def _baselines(pkg: Path, manifest: dict, threads: int) -> dict[str, _OrtBaseline]:
    """``deployable`` and ``original`` onnxruntime baselines of a package (see :func:`bench`)."""
    files = manifest["files_by_role"]
    sample = verify.load_inputs(pkg / files["sample_inputs"])
    out = {}
    onnx_path = pkg / files["onnx"]
    runnable = not any(n.domain == "ai.optc"  # If branches too
                       for n in verify.all_nodes(onnx.load(str(onnx_path), load_external_data=False).graph))
    if runnable:
        out["deployable"] = _OrtBaseline(onnx_path, "the package's optimized ONNX model (model.onnx)", sample, threads)
    elif "deploy_onnx" in files:
        out["deployable"] = _OrtBaseline(pkg / files["deploy_onnx"], "the QDQ model the integer ops were made "
                                         f"from ({files['deploy_onnx']}): onnxruntime's own int8 kernels",
                                         sample, threads)
    src = manifest.get("source_model") or {}
    path = Path(src.get("path", ""))
    if path.is_file() and artifact.sha256(path) == src.get("sha256"):
        sample = {**sample, **const_inputs.load(pkg, manifest)}  # frozen inputs are the original's inputs
        try:
            out["original"] = _OrtBaseline(path, f"the original model ({path})", sample, threads)
        except Exception:  # noqa: BLE001 - e.g. dynamic shapes onnxruntime cannot take with these feeds
            pass
    return out


def _bench_remote(pkg, warmup: int, repeat: int, rpc, rpc_key, rpc_tracker) -> dict:
    pkg = Path(pkg)
    manifest = artifact.read_package(pkg)
    tgt = get_target(manifest["target"]["name"])
    session = _load_session(None, pkg, manifest, _remote(tgt, stages.RemoteOptions(rpc, rpc_key, rpc_tracker)))
    specs = [frontend.TensorSpec.from_json(d) for d in manifest["inputs"]]
    sample = verify.load_inputs(pkg / manifest["files_by_role"]["sample_inputs"])
    with session:
        lat = session.latency([sample[s.name] for s in specs], warmup=warmup, repeat=repeat)
    return {"package": str(pkg), "target": tgt.name, "threads": None, "method": lat["method"] + ": " + lat["how"],
            "source": lat["source"], **({"note": lat["note"]} if "note" in lat else {}),
            "optc": stats(lat["times_s"])}


def inspect(model: str | os.PathLike, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
            per_layer: bool = True) -> dict:
    """Ops, parameters, MACs/FLOPs per layer and memory of an ONNX model.

    Costs need concrete shapes: dynamic inputs must be bound with ``input_shapes``; without
    them only the op histogram and parameter counts are given.
    """
    proto = frontend.load_model(model)
    inputs = [{"name": vi.name, "dtype": frontend._np_dtype(vi.type.tensor_type.elem_type),
               "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                         for d in vi.type.tensor_type.shape.dim]} for vi in frontend.graph_inputs(proto)]
    try:
        bound, _ = frontend.bind_input_shapes(proto, input_shapes)
    except InvalidModelError as err:
        if input_shapes:
            raise
        return {"model": str(model), "inputs": inputs, "nodes": len(proto.graph.node),
                "ops": analysis.op_histogram(proto), "params": analysis.parameter_count(proto),
                "note": f"costs need static shapes: {err}"}
    return {"model": str(model), "inputs": inputs} | analysis.summarize(bound, per_layer=per_layer)

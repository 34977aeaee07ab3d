"""The public Python API; the CLI is a thin layer over these functions.

``compile`` runs: target + pipeline check -> environment check -> load -> unsupported-op check
-> bind shapes -> pass pipeline -> backend build -> verification against onnxruntime ->
latency -> atomic package write. Errors are :class:`optc.errors.OptcError` subclasses.
"""

from __future__ import annotations

import datetime
import importlib.metadata as md
import os
import statistics
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from . import DEFAULT_PIPELINE, __version__
from . import analysis, artifact, frontend, pipeline, verify
from .errors import InvalidModelError, UsageError, VerificationError
from .progress import SILENT, Progress
from .targets import Target, get_target, host_cores

PARAMS_MODES = ("embedded", "separate")


def _versions() -> dict:
    out = {"optc": __version__}
    for dist in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "onnx-ir", "onnxsim"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _stats(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    q = lambda p: ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]  # noqa: E731
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "p10_ms": q(0.1), "p90_ms": q(0.9),
            "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0, "repeat": len(ms)}


def _save_onnx(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > 1_800_000_000:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))


def compile(
    model: str | os.PathLike,
    target: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    *,
    passes: str = DEFAULT_PIPELINE,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    params: str = "embedded",
    verify_outputs: bool = True,
    atol: float = verify.DEFAULT_ATOL,
    rtol: float = verify.DEFAULT_RTOL,
    measure: bool = True,
    eval_data: str | os.PathLike | None = None,
    eval_limit: int | None = None,
    power_watts: float | None = None,
    force: bool = False,
    progress: Progress = SILENT,
    tune: int = 0,
    tune_seconds: float | None = None,
    tuning_db: str | os.PathLike | None = None,
    rpc: str | None = None,
    rpc_key: str | None = None,
    rpc_tracker: str | None = None,
) -> dict:
    """Compile an ONNX model for ``target`` into the package directory ``out_dir``.

    Returns the report (also written to ``out_dir/report.json``). Raises OptcError subclasses
    for bad input (nothing is written then), VerificationError if the artifact's outputs differ
    from onnxruntime's beyond ``atol + rtol * max|ref|``. With ``eval_data`` (an .npz of inputs,
    plus ``label`` for accuracy) the report gets an ``accuracy`` section (see optc.accuracy).
    With ``rpc`` (HOST:PORT of a TVM RPC server) or ``rpc_tracker`` (HOST:PORT, with ``rpc_key``)
    the artifact is verified and timed on that remote device (see optc.backends.tvm.rpc), and
    ``tune`` measures its candidates there.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    tgt = get_target(target)
    specs = pipeline.parse_pipeline(passes)
    if params not in PARAMS_MODES:
        raise UsageError(f"--params must be one of {', '.join(PARAMS_MODES)}, not {params!r}")
    if out_dir is None:
        out_dir = Path(model).with_suffix("").name + f".{tgt.name}.optc"
    writer = artifact.PackageWriter(out_dir, force=force)

    from optc.backends import get_backend

    backend = get_backend(tgt.backend)
    backend.check_environment(tgt)
    # quantize on a CPU/ARM target: append integerize (real int8 kernels), see its docstring
    from optc.passes.quant.integerize import auto_integerize

    specs = auto_integerize(specs, tgt, backend)
    remote = _remote(tgt, rpc, rpc_key, rpc_tracker)
    import contextlib

    tuning = contextlib.ExitStack()
    if tgt.backend.startswith("tvm") and (tune or tuning_db):
        # MetaSchedule tuning before the build (``tune`` candidates) and/or the tuning
        # database location (default ~/.cache/optc/tuning): see optc.backends.tvm.tune.
        from optc.backends.tvm import tune as tvm_tune

        tuning.enter_context(tvm_tune.database_root(tuning_db))
        tuning.enter_context(tvm_tune.request(tune, tune_seconds, start=time.time() - (time.perf_counter() - t_start),
                                              rpc=rpc, tracker=rpc_tracker, key=rpc_key))
    with tuning, writer as tmp:
        report = _compile_into(tmp, model, tgt, backend, specs, input_shapes, inputs, params,
                               verify_outputs, atol, rtol, measure, progress, timings, t_start,
                               eval_data, eval_limit, power_watts, remote=remote)
    return report | {"package": str(writer.dest)}


def _remote(tgt: Target, rpc, rpc_key, rpc_tracker):
    """The TVM RPC remote asked for (None: run here); UsageError for a non-TVM target."""
    if not (rpc or rpc_tracker or rpc_key):
        return None
    if not tgt.backend.startswith("tvm"):
        raise UsageError(f"--rpc needs a TVM target, not {tgt.name} ({tgt.backend})")
    from optc.backends.tvm import rpc as tvm_rpc

    return tvm_rpc.Remote.from_options(rpc, rpc_key, rpc_tracker)


def _load_session(backend, pkg: Path, manifest: dict, remote):
    if remote is None:
        return backend.load(pkg, manifest)
    from optc.backends.tvm import rpc as tvm_rpc

    return tvm_rpc.open_remote(pkg, manifest, remote)


def _compile_into(tmp, model, tgt, backend, specs, input_shapes, inputs, params, verify_outputs,
                  atol, rtol, measure, progress, timings, t_start, eval_data, eval_limit,
                  power_watts=None, remote=None) -> dict:

    with progress.step("load and check model"):
        t0 = time.perf_counter()
        original = frontend.load_model(model)
        frontend.check_supported(original, backend.supported_ops(), backend.name)
        user_arrays = None
        if isinstance(inputs, (str, os.PathLike)):
            user_arrays = verify.load_inputs(inputs)
        elif inputs is not None:
            user_arrays = dict(inputs)
        shapes = dict(input_shapes or {})
        if user_arrays and not shapes:
            # Dynamic dims may be bound from the sample data (when no --input-shape is given).
            for vi in frontend.graph_inputs(original):
                if vi.name in user_arrays:
                    dims = [d for d in vi.type.tensor_type.shape.dim]
                    if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
                        shapes[vi.name] = tuple(user_arrays[vi.name].shape)
        bound, in_specs = frontend.bind_input_shapes(original, shapes)
        if user_arrays is not None:
            source = str(inputs) if isinstance(inputs, (str, os.PathLike)) else "inputs"
            sample = verify.fit_inputs(user_arrays, in_specs, source)
            input_source = f"file {inputs}" if isinstance(inputs, (str, os.PathLike)) else "given arrays"
        else:
            sample = verify.generate_inputs(in_specs, seed=0)
            input_source = "generated (numpy default_rng seed 0: standard normal floats)"
        timings["frontend"] = time.perf_counter() - t0

    import onnx_ir as ir

    with progress.step(f"passes: {pipeline.format_pipeline(specs) or '(none)'}"):
        t0 = time.perf_counter()
        irm = ir.serde.deserialize_model(bound)
        try:
            irm, records = pipeline.run_pipeline(irm, specs)
        except (UsageError, InvalidModelError):
            raise
        except Exception as err:
            raise InvalidModelError(f"pass pipeline failed on this model: {' '.join(str(err).split())[:300]}") from None
        optimized = ir.serde.serialize_model(irm)
        try:
            onnx.checker.check_model(optimized)
        except Exception as err:  # a pass produced an invalid model: an optc bug
            raise RuntimeError(f"pipeline produced an invalid ONNX model: {err}") from err
        out_specs = frontend.output_specs(optimized)
        timings["passes"] = time.perf_counter() - t0

    with progress.step(f"build for {tgt.name} ({tgt.backend})"):
        t0 = time.perf_counter()
        built = backend.build(optimized, in_specs, tgt, tmp, params=params)
        tuning = _tuning_section(tmp)
        _save_onnx(optimized, tmp / "model.onnx")
        np.savez(tmp / "sample_inputs.npz", **sample)
        timings["build"] = time.perf_counter() - t0

    manifest = {
        "format": artifact.FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "target": tgt.to_json() | {"tvm_resolved": built.info.get("tvm_target")},
        "pipeline": pipeline.format_pipeline(specs),
        "pipeline_explicit": pipeline.format_pipeline(specs, explicit=True),
        "params": params,
        "inputs": [s.to_json() for s in in_specs],
        "outputs": [s.to_json() for s in out_specs],
        "files_by_role": built.files | {"onnx": "model.onnx", "sample_inputs": "sample_inputs.npz"},
        "source_model": {"path": str(model), "sha256": artifact.sha256(Path(model))},
    }
    session = _load_session(backend, tmp, manifest, remote)
    try:
        order = [s.name for s in in_specs]
        args = [sample[n] for n in order]
        out_names = [s.name for s in out_specs]

        verdict = None
        # Lossy passes (quantize) change the numbers on purpose: the artifact is verified against
        # their output (the optimized ONNX model); fidelity to the original is reported apart.
        # Lossiness may depend on parameters (binarize<post-training>): ask the configured pass.
        lossy = [s.name for s in specs if pipeline.instantiate(s).lossy]
        reference_model = optimized if lossy else original
        ref_runs: dict[str, list[np.ndarray]] = {}

        def reference(which: str) -> list[np.ndarray]:
            """Reference outputs on the sample inputs, computed once per model (verification,
            the tolerance rule and fidelity all read them)."""
            if which not in ref_runs:
                ref_runs[which] = verify.reference_outputs(optimized if which == "optimized" else original, sample)
            return ref_runs[which]

        reference_key = "optimized" if lossy else "original"
        runnable = getattr(session, "runnable", True)  # False: built for hardware this machine lacks
        if verify_outputs and not runnable:
            refs = reference(reference_key)  # kept for a later check on the hardware
            np.savez(tmp / "sample_outputs.npz", **dict(zip(out_names, refs)))
            manifest["files_by_role"]["sample_outputs"] = "sample_outputs.npz"
            verdict = {"passed": None, "skipped": session.skip_reason}
        elif verify_outputs:
            with progress.step("verify against onnxruntime"):
                t0 = time.perf_counter()
                outs = session.run(args)
                refs = reference(reference_key)
                if lossy:  # a QDQ graph: equal up to rounding-boundary flips (see optc.passes.quant.tolerance)
                    from optc.passes.quant.tolerance import compare_quantized

                    verdict = compare_quantized(outs, refs, out_names, atol, rtol, optimized,
                                                lambda: reference("original"))
                else:
                    verdict = verify.compare(outs, refs, out_names, atol, rtol)
                verdict["inputs"] = input_source
                verdict["reference"] = verify.reference_name(reference_model) + ", on the " + (
                        f"optimized ONNX model: the pipeline has lossy passes ({', '.join(lossy)}); "
                        "fidelity to the original is reported apart" if lossy else "original model")
                np.savez(tmp / "sample_outputs.npz", **dict(zip(out_names, refs)))
                manifest["files_by_role"]["sample_outputs"] = "sample_outputs.npz"
                timings["verify"] = time.perf_counter() - t0
            if not verdict["passed"]:
                bad = [o for o in verdict["outputs"] if not o["passed"]]
                detail = "; ".join(
                    f"{o['name']}: " + (o.get("error") or f"max abs error {o['max_abs_error']:.3g}, "
                                        f"max rel error {o['max_rel_error']:.3g}") for o in bad) \
                    or verdict.get("error", "")
                raise VerificationError(
                    f"artifact output differs from onnxruntime beyond atol={atol:g}, rtol={rtol:g}: {detail}")

        accuracy_report = None
        fidelity = (_fidelity(reference("original"), reference("optimized"), out_names)
                    if lossy and eval_data is None else None)
        if eval_data is not None:
            with progress.step(f"evaluate on {eval_data}"):
                t0 = time.perf_counter()
                accuracy_report = _evaluate(eval_data, eval_limit, original, optimized, session, tgt,
                                            in_specs, out_names)
                timings["evaluate"] = time.perf_counter() - t0

        summary = analysis.summarize(optimized)
        latency = _latency(tgt, session, args, summary, measure, progress)
        from .energy import report_section  # energy per inference: measured, supplied power or modeled
        # a remote device's energy cannot be metered from here (session None: modeled)
        energy = report_section(tgt, summary, latency, model=optimized, session=None if remote else session,
                                args=args, measure=measure,
                                power_watts=power_watts, package=tmp, manifest=manifest, progress=progress)
        sizes = {role: (tmp / rel).stat().st_size for role, rel in manifest["files_by_role"].items()
                 if role in ("library", "params", "onnx")}
        runner_bytes = sum(p.stat().st_size for p in (tmp / "runner").glob("*")) if (tmp / "runner").is_dir() else 0
        timings["total"] = time.perf_counter() - t_start
        report = {
            "target": tgt.name,
            "backend": tgt.backend,
            "pipeline": manifest["pipeline"],
            "pipeline_explicit": manifest["pipeline_explicit"],
            "verify": verdict or {"passed": None, "skipped": True},
            "size_bytes": {
                "artifact": sizes.get("library", 0) + sizes.get("params", 0),
                "library": sizes.get("library", 0),
                "params": sizes.get("params", 0),
                "onnx_original": Path(model).stat().st_size,
                "onnx_optimized": sizes.get("onnx", 0),
                "runtime_bundle": runner_bytes,
            },
            "latency": latency,
            **({"tuning": tuning} if tuning else {}),
            "energy": energy,
            **({"accuracy": accuracy_report} if accuracy_report else {}),
            **({"fidelity": fidelity} if fidelity else {}),
            "compile_seconds": round(timings["total"], 3),
            "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
            "model": {k: v for k, v in summary.items() if k != "layers"},
            "passes": [r.__dict__ for r in records],
            "inputs": manifest["inputs"],
            "outputs": manifest["outputs"],
        }
    finally:
        if remote is not None:
            session.close()  # the server serves one session at a time
    artifact.write_json(tmp / artifact.REPORT, report)
    manifest["files"] = artifact.file_table(tmp)
    artifact.write_json(tmp / artifact.MANIFEST, manifest)
    return report


def _tuning_section(tmp: Path) -> dict | None:
    """What the TVM build took from a MetaSchedule tuning database (its applied records are
    copied into the package as ``tuning/``); None when no database was used."""
    import sys

    tune = sys.modules.get("optc.backends.tvm.tune")
    return tune.take_build_info(tmp / "tuning") if tune is not None else None


def _evaluate(path, limit, original, optimized, session, tgt: Target, in_specs, out_names) -> dict:
    """Accuracy/fidelity of the artifact against the original model (both on ``path``)."""
    from . import accuracy

    inputs, labels = accuracy.load_eval(path, in_specs)
    order = [s.name for s in in_specs]
    ref_sess = verify.ort_session(original)
    reference = lambda feeds: ref_sess.run(None, feeds)  # noqa: E731
    runnable = getattr(session, "runnable", True)
    if tgt.latency in ("measured", "measured-if-gpu") and runnable:  # runs in this process
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


def _fidelity(ref: list[np.ndarray], out: list[np.ndarray], out_names) -> dict:
    """A lossy pipeline's output (``out``: the optimized ONNX model's reference outputs) against
    the original model's (``ref``) on the sample inputs: top-1 agreement and SQNR per output (no
    labels needed)."""
    from . import accuracy

    return {"reference": "the original model in onnxruntime", "data": "the sample inputs",
            "evaluated_on": "the optimized ONNX model in onnxruntime (the artifact is verified against it)",
            "samples": int(len(ref[0])) if ref and np.ndim(ref[0]) else 1,
            "top1_agreement": float(np.mean(accuracy.top1(ref[0]) == accuracy.top1(out[0]))),
            "sqnr_db": {n: accuracy.sqnr_db(r, o) for n, r, o in zip(out_names, ref, out)}}


def _latency(tgt: Target, session, args, summary: dict, measure: bool, progress: Progress) -> dict:
    """Latency as the target allows: measured here, or modeled (labelled, with its source)."""
    runnable = getattr(session, "runnable", True)
    if getattr(session, "remote", None) is not None:  # TVM RPC: timed on the remote device
        if not measure:
            return {"method": "not measured", "reason": "--no-measure", "source": session.source()}
        with progress.step(f"measure latency on {session.remote.describe()}"):
            out = session.latency(args, warmup=3, repeat=20)
        out = out | _stats(out.pop("times_s"))
        if out["method"] != "measured" and tgt.peak is not None:  # emulated: keep the model beside it
            out["modeled_ms"] = analysis.roofline_seconds(summary["layers"], tgt.peak.fp32_gflops,
                                                          tgt.peak.mem_gbps) * 1e3
            out["modeled_source"] = "roofline lower bound from " + tgt.peak.source
        return out
    if tgt.latency == "simulated":  # FPGA: RTL-simulated cycles at the placed-and-routed clock
        return session.latency()
    if tgt.latency == "measured" or (tgt.latency == "measured-if-gpu" and runnable):
        if not measure:
            return {"method": "not measured", "reason": "--no-measure"}
        with progress.step("measure latency"):
            times = session.time(args, warmup=3, repeat=20)
        how = getattr(session, "timing_how", None) or (f"in-process wall clock (time.perf_counter) "
              f"around the TVM VM call, 3 warm-up + 20 timed runs on this machine, {host_cores()} cores")
        return {"method": "measured", "how": how, **_stats(times)}
    peak = tgt.peak
    per_layer = analysis.roofline_layers(summary["layers"], peak.fp32_gflops, peak.mem_gbps)
    modeled = sum(d["seconds"] for d in per_layer)
    how = ("roofline lower bound: sum over layers of max(FLOPs / peak FLOP/s, bytes / DRAM "
           f"bandwidth), peak {peak.fp32_gflops:.1f} GFLOP/s fp32, {peak.mem_gbps} GB/s")
    if peak.launch_us:
        # Fused kernels are fewer than ONNX layers; counting one launch per layer is an upper
        # bound on that term (typical CUDA launch cost ~4 us through a runtime).
        modeled += peak.launch_us * 1e-6 * len(summary["layers"])
        how += f", plus {peak.launch_us:g} us launch cost per layer ({len(summary['layers'])} layers)"
    out = {
        "method": "modeled",
        "median_ms": modeled * 1e3,
        "how": how + "; real hardware is slower (untuned code reaches a fraction of peak)",
        "source": peak.source,
    }
    out["layers"] = [{"name": d["name"], "op": d["op"], "ms": d["seconds"] * 1e3, "bound": d["bound"]}
                     for d in per_layer]
    if not runnable:
        out["note"] = f"not measured: {session.skip_reason}"
    elif measure:
        with progress.step(f"emulated run (qemu -cpu {tgt.qemu_cpu})"):
            times = session.time(args, warmup=0, repeat=1)
        out["emulated_ms"] = times[0] * 1e3
        out["emulated_note"] = "qemu-user wall time on this x86 host: proves the code runs, NOT ARM latency"
    return out


def _open(pkg: str | os.PathLike):
    from optc.backends import get_backend

    pkg = Path(pkg)
    manifest = artifact.read_package(pkg)
    backend = get_backend(manifest["target"]["backend"])
    return pkg, manifest, backend.load(pkg, manifest)


def run(pkg: str | os.PathLike, inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
        out: str | os.PathLike | None = None, *, force: bool = False) -> dict[str, np.ndarray]:
    """Run a compiled package on ``inputs`` (an .npz path or arrays; default: its sample
    inputs); return outputs by name, and write them to ``out`` (.npz) if given."""
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
    fitted = verify.fit_inputs(arrays, specs, source)
    outs = session.run([fitted[s.name] for s in specs])
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


def bench(pkg: str | os.PathLike, *, warmup: int = 5, repeat: int = 50, rounds: int = 5,
          threads: int | None = None, compare_ort: bool = True, rpc: str | None = None,
          rpc_key: str | None = None, rpc_tracker: str | None = None) -> dict:
    """Latency of a package and, beside it, onnxruntime's on the package's ONNX model with the
    same inputs and thread count, interleaved in ``rounds`` so machine noise hits both alike.
    With ``rpc``/``rpc_tracker`` the package runs on that TVM RPC server instead, timed there by
    ``time_evaluator`` (no onnxruntime beside it: it would run on another machine)."""
    if rpc or rpc_tracker or rpc_key:
        return _bench_remote(pkg, warmup, repeat, rpc, rpc_key, rpc_tracker)
    threads = threads or host_cores()
    if threads != host_cores():
        os.environ["TVM_NUM_THREADS"] = str(threads)
    pkg, manifest, session = _open(pkg)
    tgt = manifest["target"]
    specs = [frontend.TensorSpec.from_json(d) for d in manifest["inputs"]]
    sample = verify.load_inputs(pkg / manifest["files_by_role"]["sample_inputs"])
    args = [sample[s.name] for s in specs]
    feeds = {s.name: sample[s.name] for s in specs}
    if not getattr(session, "runnable", True):
        raise UsageError(f"{pkg}: cannot run here: {getattr(session, 'skip_reason', 'no device')}")
    # What a session's times mean: "measured" (real hardware here) or "emulated" (qemu-user).
    timing = getattr(session, "timing", "measured")
    emulated = timing != "measured"
    if emulated:
        repeat = min(repeat, 5)
        rounds = 1
    # onnxruntime's CPU latency is only a fair neighbour for code that runs on this CPU.
    ort_sess = verify.ort_session(pkg / manifest["files_by_role"]["onnx"], threads=threads, optimize=True) \
        if compare_ort and tgt["backend"] == "tvm-cpu" else None
    per_round = max(1, repeat // rounds)
    optc_times, ort_times = [], []
    if not emulated:
        session.time(args, warmup=warmup, repeat=0)
    if ort_sess:
        for _ in range(warmup):
            ort_sess.run(None, feeds)
    for _ in range(rounds):
        optc_times += session.time(args, warmup=0, repeat=per_round)
        if ort_sess:
            for _ in range(per_round):
                t0 = time.perf_counter()
                ort_sess.run(None, feeds)
                ort_times.append(time.perf_counter() - t0)
    result = {
        "package": str(pkg),
        "target": tgt["name"],
        "threads": threads,
        "method": f"{timing} (not the target's latency)" if emulated else
                  f"measured: wall clock per call, {warmup} warm-up, {rounds} interleaved rounds",
        "optc": _stats(optc_times),
    }
    if ort_times:
        import onnxruntime

        result["onnxruntime"] = _stats(ort_times) | {"version": onnxruntime.__version__,
                                                     "graph_optimizations": "all"}
        result["ratio_optc_over_ort"] = result["optc"]["median_ms"] / result["onnxruntime"]["median_ms"]
    if emulated:
        import json

        result["modeled"] = json.loads((pkg / artifact.REPORT).read_text()).get("latency")
    return result


def _bench_remote(pkg, warmup: int, repeat: int, rpc, rpc_key, rpc_tracker) -> dict:
    pkg = Path(pkg)
    manifest = artifact.read_package(pkg)
    tgt = get_target(manifest["target"]["name"])
    session = _load_session(None, pkg, manifest, _remote(tgt, rpc, rpc_key, rpc_tracker))
    specs = [frontend.TensorSpec.from_json(d) for d in manifest["inputs"]]
    sample = verify.load_inputs(pkg / manifest["files_by_role"]["sample_inputs"])
    with session:
        lat = session.latency([sample[s.name] for s in specs], warmup=warmup, repeat=repeat)
    return {"package": str(pkg), "target": tgt.name, "threads": None, "method": lat["method"] + ": " + lat["how"],
            "source": lat["source"], **({"note": lat["note"]} if "note" in lat else {}),
            "optc": _stats(lat["times_s"])}


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

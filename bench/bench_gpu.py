#!/usr/bin/env python3
"""optc's CUDA target against torch (eager, CUDA) and onnxruntime's CUDA execution provider.

    python bench/bench_gpu.py                          # GPU machine with full TVM: compile, verify, time
    python bench/bench_gpu.py --compile-only -o DIR    # any machine with nvcc: build the packages
    python bench/bench_gpu.py --packages DIR           # GPU machine, TVM runtime only: verify + time

For each reference model and batch size: the optc package for ``--target`` (default ``gpu``,
sm_90) is verified against onnxruntime (CPU, the reference outputs stored in the package) and
timed two ways: CUDA events (TVM ``time_evaluator`` on cuda:0, inputs resident on the GPU) and
host wall clock around ``--number`` calls followed by a device synchronisation. Baselines on the
same weights and inputs: torch eager on CUDA (CUDA events and wall clock), and onnxruntime's
CUDAExecutionProvider with I/O bound to the GPU (wall clock; ``Run`` synchronises) when
onnxruntime-gpu is installed. Results go to stdout and, with ``--json``, to a file.

On a machine without a GPU it says so and exits 0 (``--compile-only`` still builds packages).
See bench/README_gpu.md for what to install on the GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name -> how to get the model: an ONNX file in models/ (its initializer names are the zoo
# class's state_dict keys) or a torch factory in optc.models.zoo with seeded weights (rebuilt
# identically for the torch baseline; its outputs are checked against the package's reference).
MODELS = {
    "digits_cnn": {"onnx": "models/digits_cnn.onnx", "factory": "DigitsCNN", "shape": (1, 8, 8), "batches": (1, 256)},
    "digits_mlp": {"onnx": "models/digits_mlp.onnx", "factory": "DigitsMLP", "shape": (1, 8, 8), "batches": (1, 256)},
    "tiny_resnet": {"factory": "tiny_resnet", "shape": (3, 32, 32), "batches": (1, 64)},
    "mobilenet": {"factory": "MobileNetLike", "shape": (3, 224, 224), "batches": (8,)},
    "resnet18": {"factory": "resnet18", "shape": (3, 224, 224), "batches": (8,)},
}
DEFAULT_MODELS = "digits_cnn,digits_mlp,tiny_resnet,mobilenet"


def _import_optc():
    """``import optc``; on a machine where the repo was copied but not installed, map the
    package folders as pyproject.toml does."""
    try:
        import optc  # noqa: F401

        return
    except ImportError:
        pass
    for name, sub in [("optc", "toolchain"), ("optc.passes", "passes"), ("optc.backends", "backends"),
                      ("optc.backends.tvm", "backends/tvm"), ("optc.models", "models")]:
        spec = importlib.util.spec_from_file_location(name, REPO / sub / "__init__.py",
                                                      submodule_search_locations=[str(REPO / sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0, "repeat": len(ms)}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ models


def source_onnx(name: str, work: Path) -> Path:
    spec = MODELS[name]
    if "onnx" in spec:
        return REPO / spec["onnx"]
    path = work / f"{name}.onnx"
    if not path.exists():
        import torch

        from optc.train.export import ExportOptions, export_torch

        export_torch(torch_module(name), torch.randn(1, *spec["shape"]), path, input_names=["input"],
                     output_names=["logits"],
                     options=ExportOptions(dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, keep_batchnorm=True))
    return path


def torch_module(name: str):
    """The torch module of a reference model: the zoo class with the weights of its ONNX file
    (initializer names = state_dict keys), or the seeded zoo model."""
    import onnx
    import torch
    from onnx import numpy_helper

    from optc.models import zoo

    spec = MODELS[name]
    if "onnx" not in spec:
        return zoo.seeded(getattr(zoo, spec["factory"]), seed=0, calibrate=(4, *spec["shape"]))
    module = getattr(zoo, spec["factory"])()
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(REPO / spec["onnx"])).graph.initializer}
    state = module.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"{len(missing)} torch parameters not in the ONNX file (e.g. {missing[0]})")
    module.load_state_dict({k: torch.from_numpy(inits[k].copy()) if k in inits else v for k, v in state.items()})
    return module.eval()


# ------------------------------------------------------------------------------ timing


def time_optc(session, args, warmup, number, repeat) -> dict:
    events = [t * 1e3 for t in session.time(args, warmup=warmup, repeat=repeat, number=number)]
    wall = [t * 1e3 for t in session.time_wall(args, repeat=repeat, number=number)]
    return {"cuda_events": _stats(events), "wall": _stats(wall)}


def time_torch(module, x: np.ndarray, warmup, number, repeat) -> tuple[dict, np.ndarray]:
    import torch

    dev = torch.device("cuda")
    module = module.to(dev)
    xt = torch.from_numpy(x).to(dev)
    with torch.inference_mode():
        for _ in range(warmup):
            out = module(xt)
        torch.cuda.synchronize()
        events, wall = [], []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            for _ in range(number):
                out = module(xt)
            end.record()
            torch.cuda.synchronize()
            wall.append((time.perf_counter() - t0) * 1e3 / number)
            events.append(start.elapsed_time(end) / number)
    return ({"version": torch.__version__, "mode": "eager, inference_mode", "cuda_events": _stats(events),
             "wall": _stats(wall)}, out.float().cpu().numpy())


def time_ort_cuda(onnx_path: Path, feeds: dict, warmup, number, repeat) -> dict | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CUDAExecutionProvider"])
    binding = sess.io_binding()
    for name, x in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", 0)
    for _ in range(warmup):
        sess.run_with_iobinding(binding)
    wall = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run_with_iobinding(binding)
        wall.append((time.perf_counter() - t0) * 1e3 / number)
    return {"version": ort.__version__, "provider": "CUDAExecutionProvider", "io": "bound to the GPU",
            "wall": _stats(wall)}


# ------------------------------------------------------------------------------ main


def machine_info() -> dict:
    info = {"host": platform.node(), "python": platform.python_version()}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = q.stdout.strip()
    return info


def compile_package(name, batch, target, out_root: Path, work: Path) -> Path:
    import optc

    src = source_onnx(name, work)
    shape = (batch, *MODELS[name]["shape"])
    pkg = out_root / f"{name}_b{batch}.{target}"
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t0 = time.perf_counter()
    report = optc.compile(src, target, pkg, input_shapes={"input": shape}, inputs={"input": x}, options=optc.CompileOptions.of(force=True))
    _say(f"compiled {pkg.name} in {time.perf_counter() - t0:.1f} s; verify: {report['verify'].get('passed')}")
    return pkg


def bench_package(pkg: Path, args) -> dict:
    from optc import artifact, verify
    from optc.backends import get_backend

    manifest = artifact.read_package(pkg)
    name = pkg.name.rsplit("_b", 1)[0]
    session = get_backend(manifest["target"]["backend"]).load(pkg, manifest)
    files = manifest["files_by_role"]
    sample = verify.load_inputs(pkg / files["sample_inputs"])
    order = [d["name"] for d in manifest["inputs"]]
    inputs = [sample[n] for n in order]
    out_names = [d["name"] for d in manifest["outputs"]]
    refs_npz = np.load(pkg / files["sample_outputs"])
    refs = [refs_npz[n] for n in out_names]
    outs = session.run(inputs)
    verdict = verify.compare(outs, refs, out_names, args.atol, args.rtol)
    row = {"package": pkg.name, "model": name, "input_shape": list(inputs[0].shape),
           "device": session.device, "verify_vs_onnxruntime_cpu": {
               "passed": verdict["passed"],
               "max_abs_error": max(o.get("max_abs_error", 0.0) for o in verdict["outputs"])},
           "optc": time_optc(session, inputs, args.warmup, args.number, args.repeat)}
    if not args.no_torch and name in MODELS:
        try:
            import torch

            if torch.cuda.is_available():
                row["torch"], tout = time_torch(torch_module(name), inputs[0], args.warmup, args.number,
                                                args.repeat)
                row["torch"]["max_abs_diff_vs_reference"] = float(np.max(np.abs(tout - refs[0])))
        except (ImportError, KeyError) as err:
            row["torch"] = {"skipped": str(err)}
    ort_row = time_ort_cuda(pkg / files["onnx"], dict(zip(order, inputs)), args.warmup, args.number, args.repeat)
    row["onnxruntime_cuda"] = ort_row or {"skipped": "onnxruntime-gpu (CUDAExecutionProvider) not installed"}
    return row


def _fmt(row: dict) -> str:
    def med(d, key):
        return f"{d[key]['median_ms']:.4f}" if isinstance(d, dict) and key in d else "-"

    return (f"{row['package']:28} {str(row['verify_vs_onnxruntime_cpu']['passed']):6} "
            f"{med(row['optc'], 'cuda_events'):>10} {med(row['optc'], 'wall'):>10} "
            f"{med(row.get('torch'), 'cuda_events'):>10} {med(row.get('torch'), 'wall'):>10} "
            f"{med(row.get('onnxruntime_cuda'), 'wall'):>10}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="gpu")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list or 'all' (of {', '.join(MODELS)})")
    ap.add_argument("--batches", default=None, help="comma list overriding each model's batch sizes")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "bench" / "results" / "gpu_pkgs",
                    help="package folder (bench/results/ is git-ignored; carry it to a GPU machine)")
    ap.add_argument("--compile-only", action="store_true", help="build the packages, do not run them")
    ap.add_argument("--packages", type=Path, help="time the packages in this folder (no compiling)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--number", type=int, default=20, help="calls per timed repeat")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    _import_optc()
    try:
        from optc.backends.tvm import cuda
    except ImportError as err:
        print(f"bench_gpu: TVM is not importable ({err}); see bench/README_gpu.md", file=sys.stderr)
        return 2
    from optc.errors import OptcError

    have_gpu = cuda.gpu_present()
    if not have_gpu and not args.compile_only:
        print("bench_gpu: no GPU on this machine (TVM sees no CUDA device): nothing to run or time. "
              "Build packages here with --compile-only, then time them on a GPU machine with "
              "--packages (bench/README_gpu.md).")
        return 0

    names = list(MODELS) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    try:
        if args.packages:
            packages = sorted(p for p in args.packages.iterdir() if (p / "manifest.json").is_file())
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="optc-bench-gpu-"))  # exported ONNX (not kept)
            packages = []
            for name in names:
                batches = [int(b) for b in args.batches.split(",")] if args.batches else MODELS[name]["batches"]
                for batch in batches:
                    packages.append(compile_package(name, batch, args.target, args.out, work))
        if args.compile_only:
            print(f"bench_gpu: {len(packages)} packages in {args.out}" + ("" if have_gpu else " (no GPU here: not run)"))
            return 0
        rows = []
        print(f"{'package':28} {'ok':6} {'optc ev':>10} {'optc wall':>10} {'torch ev':>10} "
              f"{'torch wall':>10} {'ort wall':>10}   (ms per call, median)")
        for pkg in packages:
            rows.append(bench_package(pkg, args))
            print(_fmt(rows[-1]), flush=True)
    except OptcError as err:
        print(f"bench_gpu: {err}", file=sys.stderr)
        return 1
    result = {"machine": machine_info(), "target": args.target,
              "method": f"{args.warmup} warm-up calls, then {args.repeat} repeats of {args.number} "
                        "back-to-back calls; 'cuda_events' = elapsed GPU time between events recorded "
                        "before and after the calls, 'wall' = host time until the device synchronised; "
                        "inputs resident on the GPU for every runtime",
              "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["verify_vs_onnxruntime_cpu"]["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

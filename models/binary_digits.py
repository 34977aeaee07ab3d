"""Binary versions of the digits reference models, trained with :mod:`optc.train.binary`.

* :class:`DigitsBCNN` — the DigitsCNN layout (3x3 convolutions with 16, 32, 64 channels, a 2x2
  max-pool) with binary weights and activations in the middle: first conv in float (input
  pixels are not binary), BatchNorm before every Sign, conv2/conv3 binary (alpha_n sign(w)),
  a second 2x2 max-pool and a binary classifier Linear(256, 10) with a float bias.
* :class:`DigitsBMLP` — the DigitsMLP layout 64 -> 256 -> 128 -> 10: first and last layer in
  float, the 256 -> 128 layer binary, BatchNorm + Sign activations.

Both are trained with distillation from the fp32 DigitsCNN (retrained here with the bundled
model's settings, so the build is self-contained and deterministic), exported with
:func:`optc.train.binary.export` (weights as +-alpha_n, activations through ONNX Sign, BatchNorm kept)
and checked: accuracy of the exported file in onnxruntime, and of the graph after
``simplify,sign-to-threshold,binarize`` (onnx ReferenceEvaluator with optc's ops).

* :class:`DigitsBCNNWide` / :class:`DigitsCNNWide` — a realistic BNN width (64-128-256
  channels, FINN CNV-like) on the same 8x8 digits, binary and its fp32 version with the *same*
  layout: the pair on which end-to-end speed and instruction counts are compared (the small
  DigitsBCNN is a few microseconds of kernel-call overhead either way).

``python -m optc.models.binary_digits [--out DIR] [--force] [--which all|small|wide]`` writes
``digits_bcnn.onnx``, ``digits_bmlp.onnx`` and ``binary_digits.json`` (small), ``digits_cnn_wide.onnx``
and ``digits_bcnn_wide.onnx`` merged into ``binary_digits.json`` (wide).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from optc.train import TrainConfig, binary

__all__ = ["DigitsBCNN", "DigitsBMLP", "DigitsCNNWide", "DigitsBCNNWide", "BNN_CONFIG", "WIDE_FILES", "BNN_FILES", "BINARIZE_PIPELINE", "FUSED_PIPELINE", "build_binary",
           "weight_bytes", "binarized", "main"]

BINARIZE_PIPELINE = "simplify,sign-to-threshold,binarize"
# for the CPU/ARM (TVM) builds: thresholds and max-pools fused into the binary convolutions
FUSED_PIPELINE = BINARIZE_PIPELINE + ",fuse-binary-threshold"
BNN_FILES = ("digits_bcnn.onnx", "digits_bmlp.onnx", "binary_digits.json")
WIDE_FILES = ("digits_cnn_wide.onnx", "digits_bcnn_wide.onnx")
WIDTHS = (64, 128, 256)  # FINN CNV-like widths (CNV: 64-64-128-128-256-256)
BNN_CONFIG: dict[str, Any] = {
    "teacher": {"class": "DigitsCNN", "seed": 0, "epochs": 20, "lr": 3e-3},
    "models": {
        "digits_bcnn": {"class": "DigitsBCNN", "fp32": "digits_cnn", "seed": 0, "epochs": 60, "lr": 3e-3,
                        "batch_size": 64, "distill": {"temperature": 4.0, "weight": 0.7}},
        "digits_bmlp": {"class": "DigitsBMLP", "fp32": "digits_mlp", "seed": 0, "epochs": 60, "lr": 1e-2,
                        "batch_size": 64, "distill": {"temperature": 4.0, "weight": 0.7}},
    },
    # A realistic BNN shape and its fp32 version (same layout, ReLU instead of Sign, float
    # weights): the pair the end-to-end speed / instruction targets are measured on.
    "wide": {
        "fp32": {"name": "digits_cnn_wide", "class": "DigitsCNNWide", "seed": 0, "epochs": 20, "lr": 3e-3,
                 "batch_size": 64},
        "binary": {"name": "digits_bcnn_wide", "class": "DigitsBCNNWide", "seed": 0, "epochs": 40, "lr": 3e-3,
                   "batch_size": 64, "distill": {"temperature": 4.0, "weight": 0.7}},
    },
}


class DigitsCNNWide(nn.Module):
    """fp32 version of :class:`DigitsBCNNWide` (identical layout, ReLU, float weights):
    conv 1->64 -> conv 64->128 -> max-pool -> conv 128->256 -> max-pool -> Linear(1024, 10),
    each conv followed by BatchNorm + ReLU."""

    def __init__(self, num_classes: int = 10, widths=WIDTHS) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
            nn.Flatten(),
        )
        self.classifier = nn.Linear(c3 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsBCNNWide(nn.Module):
    """Binary :class:`DigitsCNNWide` (a FINN CNV-like width, 64-128-256 channels): float first
    conv, BatchNorm + Sign activations, binary conv2/conv3, binary Linear(1024, 10) + float
    bias."""

    def __init__(self, num_classes: int = 10, widths=WIDTHS) -> None:
        super().__init__()
        c1, c2, c3 = widths
        sign = binary.SignActivation
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), sign(),  # float first layer
            binary.BinaryConv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), sign(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            binary.BinaryConv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), sign(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
            nn.Flatten(),
        )
        self.classifier = binary.BinaryLinear(c3 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsBCNN(DigitsBCNNWide):
    """Binary DigitsCNN: :class:`DigitsBCNNWide` at 16-32-64 channels (float conv1 -> [binary
    conv -> BN -> Sign] x 2 with max-pools -> binary Linear(256, 10) + float bias)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes, widths=(16, 32, 64))


class DigitsBMLP(nn.Module):
    """Binary DigitsMLP: float Linear(64, 256) -> BN -> Sign -> binary Linear(256, 128) -> BN
    -> Sign -> float Linear(128, 10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        sign = binary.SignActivation
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 256), nn.BatchNorm1d(256), sign(),  # float first layer
            binary.BinaryLinear(256, 128, bias=False), nn.BatchNorm1d(128), sign(),
            nn.Linear(128, num_classes),  # float last layer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# measurements shared with the benchmark


def weight_bytes(model) -> int:
    """Bytes of all initializers of an ONNX model (weights as stored)."""
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def binarized(path, pipeline: str = BINARIZE_PIPELINE, batch: int | None = None):
    """The ONNX model at ``path`` after ``pipeline`` (input batch bound to ``batch`` if given)."""
    import onnx
    import onnx_ir as ir

    from optc import frontend
    from optc.pipeline import run_pipeline

    proto = onnx.load(str(path))
    if batch is not None:
        proto, _ = frontend.bind_input_shapes(proto, {proto.graph.input[0].name: (batch, 1, 8, 8)})
    model, records = run_pipeline(ir.serde.deserialize_model(proto), pipeline)
    return ir.serde.serialize_model(model), records


def _accuracy(run, x, y) -> tuple[float, int]:
    logits = run(x)
    correct = int((np.asarray(logits).argmax(1) == y).sum())
    return correct / len(y), correct


# ---------------------------------------------------------------------------------------------
# build


@dataclass(frozen=True)
class Fp32Baseline:
    """The fp32 model a binary model is compared with: its file, its test accuracy and its
    weight bytes after the default cleanup (:meth:`of` measures them)."""

    path: pathlib.Path
    accuracy: float
    weight_bytes: int

    @classmethod
    def of(cls, path: pathlib.Path, accuracy: float) -> Fp32Baseline:
        return cls(path, accuracy, weight_bytes(binarized(path, "simplify,fold-constants,fuse-bn,dce")[0]))


def _train_binary(cfg: dict, teacher, data, out: pathlib.Path, *, force: bool, fp32: Fp32Baseline,
                  teacher_text: str) -> dict[str, Any]:
    """Train one binary model of ``cfg`` (distilled from ``teacher``), export it to
    ``out/NAME.onnx`` and measure it: its ``binary_digits.json`` record (accuracy in onnxruntime, after the
    binarize pipeline with optc's numpy ops, weights against the ``fp32`` baseline)."""
    from optc.models import build, digits
    from optc.passes.optc_ops import reference_evaluator

    x_train, y_train, x_test, y_test = data
    torch.manual_seed(cfg["seed"])
    model = globals()[cfg["class"]]()
    t0 = time.perf_counter()
    config = TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], seed=cfg["seed"], batch_size=cfg["batch_size"])
    binary.train(model, x_train, y_train, config, teacher=teacher, temperature=cfg["distill"]["temperature"],
                 distill_weight=cfg["distill"]["weight"])
    seconds = time.perf_counter() - t0
    torch_acc = digits.accuracy(model, x_test, y_test)
    path = out / f"{cfg['name']}.onnx"
    binary.export(model, path, overwrite=force)
    acc, correct = build.onnx_accuracy(path, x_test, y_test)
    rewritten, records = binarized(path)
    ev = reference_evaluator(rewritten)
    bacc, bcorrect = _accuracy(lambda x: ev.run(None, {"input": x})[0], x_test, y_test)
    bin_bytes = weight_bytes(rewritten)
    return {
        "file": path.name,
        "class": f"optc.models.binary_digits.{cfg['class']}",
        "input": {"name": "input", "shape": ["N", 1, 8, 8], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", 10], "dtype": "float32"},
        "test_accuracy": acc,
        "test_correct": correct,
        "torch_test_accuracy": torch_acc,
        "binarized_test_accuracy": bacc,
        "binarized_test_correct": bcorrect,
        "binarized_evaluated_with": "onnx ReferenceEvaluator + optc.passes.optc_ops",
        "fp32_model": fp32.path.name,
        "fp32_test_accuracy": fp32.accuracy,
        "accuracy_drop_points": round(100 * (fp32.accuracy - bacc), 3),
        "weight_bytes": {"fp32_model_after_default_pipeline": fp32.weight_bytes, "binarized": bin_bytes,
                         "ratio": round(fp32.weight_bytes / bin_bytes, 2)},
        "rewrites": {r.name: r.details for r in records if r.details},
        "seed": cfg["seed"], "epochs": cfg["epochs"], "lr": cfg["lr"], "batch_size": cfg["batch_size"],
        "training": f"Adam, cosine lr to 0, distillation from {teacher_text} (KL at T, weight below, "
                    "+ cross-entropy), latent weights clipped to [-1, 1], 1 thread",
        "distill": cfg["distill"],
        "train_seconds": round(seconds, 1),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def build_binary(out_dir=None, *, force: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Train DigitsBCNN and DigitsBMLP, export them and write :data:`BNN_FILES`."""
    import onnx
    import onnxruntime as ort

    from optc.models import MODELS_DIR, build, digits, zoo

    out = pathlib.Path(out_dir) if out_dir is not None else MODELS_DIR
    build._check_free([out / n for n in BNN_FILES], force)
    x_train, y_train, x_test, y_test = digits.load_digits_split()
    tcfg = BNN_CONFIG["teacher"]
    teacher = zoo.seeded(getattr(zoo, tcfg["class"]), seed=tcfg["seed"])
    digits.train(teacher, x_train, y_train, epochs=tcfg["epochs"], lr=tcfg["lr"], seed=tcfg["seed"])
    fp32_meta = json.loads((MODELS_DIR / "models.json").read_text())["models"]
    meta: dict[str, Any] = {
        "dataset": "sklearn digits, split as models.json (digits_eval.npz is the test set)",
        "pipeline": BINARIZE_PIPELINE,
        "teacher": {**tcfg, "test_accuracy": digits.accuracy(teacher, x_test, y_test)},
        "models": {},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    data = (x_train, y_train, x_test, y_test)
    for name, cfg in BNN_CONFIG["models"].items():
        fp32 = Fp32Baseline.of(MODELS_DIR / f"{cfg['fp32']}.onnx", fp32_meta[cfg["fp32"]]["test_accuracy"])
        entry = _train_binary({**cfg, "name": name}, teacher, data, out, force=force, fp32=fp32,
                              teacher_text="the fp32 teacher")
        meta["models"][name] = entry
        if verbose:
            print(f"{name}: {cfg['epochs']} epochs in {entry['train_seconds']:.0f} s; accuracy onnx "
                  f"{entry['test_accuracy']:.4f}, after {BINARIZE_PIPELINE} {entry['binarized_test_accuracy']:.4f} "
                  f"(fp32 {fp32.accuracy:.4f}); weights {fp32.weight_bytes} -> "
                  f"{entry['weight_bytes']['binarized']} bytes -> {out / entry['file']}")
    build._write_atomic(out / "binary_digits.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def build_wide(out_dir=None, *, force: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Train :class:`DigitsCNNWide` (fp32) and :class:`DigitsBCNNWide` (distilled from it), export
    :data:`WIDE_FILES` and merge their records into ``binary_digits.json`` (``models.digits_bcnn_wide``,
    ``fp32_models.digits_cnn_wide``). The other binary models' files are not touched."""
    from optc.train.export import ExportOptions, export_torch
    from optc.models import MODELS_DIR, build, digits, zoo

    out = pathlib.Path(out_dir) if out_dir is not None else MODELS_DIR
    build._check_free([out / n for n in WIDE_FILES], force)
    x_train, y_train, x_test, y_test = digits.load_digits_split()
    fcfg, bcfg = BNN_CONFIG["wide"]["fp32"], BNN_CONFIG["wide"]["binary"]

    torch.manual_seed(fcfg["seed"])
    fp32 = globals()[fcfg["class"]]()
    t0 = time.perf_counter()
    digits.train(fp32, x_train, y_train, epochs=fcfg["epochs"], lr=fcfg["lr"], seed=fcfg["seed"],
                 batch_size=fcfg["batch_size"])
    fp32_seconds = time.perf_counter() - t0
    fp32_path = out / f"{fcfg['name']}.onnx"
    axes = {"input": {0: "N"}, "logits": {0: "N"}}
    export_torch(fp32.eval(), torch.zeros(1, 1, 8, 8), fp32_path, input_names=["input"], output_names=["logits"],
                 overwrite=force, options=ExportOptions(dynamic_axes=axes, keep_batchnorm=True))
    fp32_acc, fp32_correct = build.onnx_accuracy(fp32_path, x_test, y_test)
    base = Fp32Baseline.of(fp32_path, fp32_acc)

    entry = _train_binary(bcfg, fp32, (x_train, y_train, x_test, y_test), out, force=force, fp32=base,
                          teacher_text="the fp32 wide model")
    meta_path = out / "binary_digits.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"models": {}}
    meta.setdefault("fp32_models", {})[fcfg["name"]] = {
        "file": fp32_path.name, "class": f"optc.models.binary_digits.{fcfg['class']}",
        "input": {"name": "input", "shape": ["N", 1, 8, 8], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", 10], "dtype": "float32"},
        "params": zoo.count_params(fp32),
        "test_accuracy": fp32_acc, "test_correct": fp32_correct,
        "seed": fcfg["seed"], "epochs": fcfg["epochs"], "lr": fcfg["lr"], "batch_size": fcfg["batch_size"],
        "training": "Adam, cosine lr to 0, cross-entropy, 1 thread (optc.models.digits.train)",
        "train_seconds": round(fp32_seconds, 1),
        "sha256": hashlib.sha256(fp32_path.read_bytes()).hexdigest(),
    }
    meta["models"][bcfg["name"]] = entry
    build._write_atomic(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    if verbose:
        print(f"{fcfg['name']}: accuracy {fp32_acc:.4f} ({fp32_seconds:.0f} s); {bcfg['name']}: onnx "
              f"{entry['test_accuracy']:.4f}, "
              f"after {BINARIZE_PIPELINE} {entry['binarized_test_accuracy']:.4f} ({entry['train_seconds']:.0f} s); "
              f"weights {base.weight_bytes} -> {entry['weight_bytes']['binarized']} bytes")
    return meta


def main(argv: list[str] | None = None) -> int:
    from optc.models import MODELS_DIR, build

    parser = argparse.ArgumentParser(prog="python -m optc.models.binary_digits",
                                     description="Train and export the binary digits models.")
    parser.add_argument("--out", type=pathlib.Path, default=MODELS_DIR, help=f"output folder (default {MODELS_DIR})")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("--which", choices=["all", "small", "wide"], default="all",
                        help="small: digits_bcnn/digits_bmlp (+ binary_digits.json); wide: the 64-128-256 pair "
                             "(merged into binary_digits.json); all: both (default)")
    args = parser.parse_args(argv)

    def work() -> None:
        if args.which in ("all", "small"):
            build_binary(args.out, force=args.force, verbose=True)
        if args.which in ("all", "wide"):
            build_wide(args.out, force=args.force, verbose=True)

    return build.run_script(work)


if __name__ == "__main__":
    sys.exit(main())

"""Build optc's reference models: train the digits models and export ONNX files.

Usage::

    python -m optc.models.build                       # digits models into the package folder
    python -m optc.models.build --which all --out /tmp/models
    python -m optc.models.build --which resnet18 --out bench/models --force

``--which digits`` (the default) trains :class:`~optc.models.zoo.DigitsCNN` and
:class:`~optc.models.zoo.DigitsMLP` on scikit-learn's bundled digits and writes

* ``digits_cnn.onnx``, ``digits_mlp.onnx`` — input ``"input"`` (float32 ``N x 1 x 8 x 8``,
  dynamic batch ``"N"``), output ``"logits"`` (``N x 10``), opset 17; their
  ``BatchNormalization`` nodes are kept (not folded into the convolutions by the exporter),
  so BN folding is left to optc's passes;
* ``digits_eval.npz`` — the test split: ``input`` (float32 ``N x 1 x 8 x 8``), ``label``
  (int64);
* ``digits_calib.npz`` — 200 training images (``input``) for quantization calibration;
* ``models.json`` — test accuracy of each model measured with onnxruntime on the exported
  file, plus the seed, epochs and hyper-parameters that reproduce it.

The build is deterministic: running it twice on the same machine gives the same weights, the
same accuracy and byte-identical files.

``resnet18`` and ``mobilenet`` (random seeded weights, batch norm statistics calibrated on
random data; static input ``"input"`` 1x3x224x224) are for latency work. They are tens of
megabytes, so they are never bundled: they need ``--out`` pointing outside the package.
``tiny_resnet`` (3x32x32, dynamic batch) is a small residual model for tests.

Existing files are not overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pathlib
import sys
import tempfile
import time
import zipfile
from typing import Any, Callable

import numpy as np

from optc.errors import OptcError, UsageError

__all__ = [
    "DIGITS_CONFIG",
    "DIGITS_FILES",
    "build_digits",
    "export_resnet18",
    "export_mobilenet",
    "export_tiny_resnet",
    "onnx_accuracy",
    "main",
]

#: Data split and per-model training settings of the bundled digits models.
DIGITS_CONFIG: dict[str, Any] = {
    "split_seed": 0,
    "test_fraction": 0.3,
    "calib_size": 200,
    "opset": 17,
    "models": {
        "digits_cnn": {"class": "DigitsCNN", "seed": 0, "epochs": 20, "lr": 3e-3, "batch_size": 64},
        "digits_mlp": {"class": "DigitsMLP", "seed": 0, "epochs": 30, "lr": 3e-3, "batch_size": 64},
    },
}

#: Files written by :func:`build_digits`.
DIGITS_FILES = (
    "digits_cnn.onnx",
    "digits_mlp.onnx",
    "digits_eval.npz",
    "digits_calib.npz",
    "models.json",
)

_BIG_MODELS = ("resnet18", "mobilenet")


# --------------------------------------------------------------------------------------
# deterministic, atomic file writing


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` (readable by ``np.load``) with fixed zip timestamps, so the
    same arrays always give the same bytes (``np.savez`` stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, payload.getvalue())
    return buf.getvalue()


def _check_free(paths: list[pathlib.Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise UsageError(f"already exists (pass --force / force=True to overwrite): {', '.join(existing)}")


# --------------------------------------------------------------------------------------
# digits


def onnx_accuracy(model_path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """``(accuracy, correct)`` of an ONNX classifier with input ``"input"`` run in
    onnxruntime (CPU) on the whole batch ``x`` at once."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {"input": np.asarray(x, dtype=np.float32)})
    correct = int((logits.argmax(1) == np.asarray(y)).sum())
    return correct / len(y), correct


def build_digits(
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train both digits models and write :data:`DIGITS_FILES` into ``out_dir``.

    Returns the metadata written to ``models.json``. Raises :class:`~optc.errors.UsageError`
    if any of the files exists and ``force`` is false (checked before any training).
    """
    import onnx
    import onnxruntime
    import torch

    from optc.train.export import ExportOptions, export_torch
    from optc.models import digits, zoo

    out = pathlib.Path(out_dir)
    _check_free([out / name for name in DIGITS_FILES], force)
    cfg = DIGITS_CONFIG
    x_train, y_train, x_test, y_test = digits.load_digits_split(
        seed=cfg["split_seed"], test_fraction=cfg["test_fraction"]
    )
    meta: dict[str, Any] = {
        "dataset": {
            "name": "sklearn.datasets.load_digits",
            "preprocessing": "float32 pixel/16 in [0, 1], shape N x 1 x 8 x 8",
            "split": "stratified sklearn train_test_split",
            "split_seed": cfg["split_seed"],
            "test_fraction": cfg["test_fraction"],
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
            "eval_file": "digits_eval.npz",
            "calib_file": "digits_calib.npz",
            "calib_size": cfg["calib_size"],
            "calib_selection": "first calib_size images of the training split",
        },
        "models": {},
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }

    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "digits_eval.npz", _npz_bytes({"input": x_test, "label": y_test}))
    _write_atomic(
        out / "digits_calib.npz", _npz_bytes({"input": x_train[: cfg["calib_size"]]})
    )

    for name, mcfg in cfg["models"].items():
        factory = getattr(zoo, mcfg["class"])
        model = zoo.seeded(factory, seed=mcfg["seed"])
        t0 = time.perf_counter()
        digits.train(
            model,
            x_train,
            y_train,
            epochs=mcfg["epochs"],
            lr=mcfg["lr"],
            seed=mcfg["seed"],
            batch_size=mcfg["batch_size"],
        )
        seconds = time.perf_counter() - t0
        torch_acc = digits.accuracy(model, x_test, y_test)
        path = out / f"{name}.onnx"
        export_torch(
            model,
            (torch.from_numpy(x_test[:1]),),
            path,
            input_names=["input"],
            output_names=["logits"],
            overwrite=force,
            options=ExportOptions(
                dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                opset=cfg["opset"],
                keep_batchnorm=True,  # Conv -> BatchNormalization -> Relu, as written
            ),
        )
        acc, correct = onnx_accuracy(path, x_test, y_test)
        meta["models"][name] = {
            "file": path.name,
            "class": f"optc.models.zoo.{mcfg['class']}",
            "input": {"name": "input", "shape": ["N", 1, 8, 8], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["N", 10], "dtype": "float32"},
            "opset": cfg["opset"],
            "params": zoo.count_params(model),
            "test_accuracy": acc,
            "test_correct": correct,
            "torch_test_accuracy": torch_acc,
            "seed": mcfg["seed"],
            "epochs": mcfg["epochs"],
            "lr": mcfg["lr"],
            "batch_size": mcfg["batch_size"],
            "optimizer": "Adam, cosine learning-rate schedule to 0, cross-entropy, 1 thread",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        if verbose:
            print(
                f"{name}: trained {mcfg['epochs']} epochs in {seconds:.1f} s, "
                f"test accuracy {acc:.4f} ({correct}/{len(y_test)}) -> {path}"
            )
    _write_atomic(out / "models.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


# --------------------------------------------------------------------------------------
# random-weight models for latency work and tests


def _export_random(
    factory: Callable[..., Any],
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    *,
    seed: int,
    overwrite: bool,
    dynamic_batch: bool,
    calib_batch: int,
) -> pathlib.Path:
    import torch

    from optc.train.export import ExportOptions, export_torch
    from optc.models import zoo

    path = pathlib.Path(path)
    _check_free([path], overwrite)
    model = zoo.seeded(factory, seed=seed, calibrate=(calib_batch, *shape[1:]))
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None
    return export_torch(
        model,
        (example,),
        path,
        input_names=["input"],
        output_names=["logits"],
        overwrite=overwrite,
        options=ExportOptions(dynamic_axes=axes, opset=17),
    )


def export_resnet18(
    path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> pathlib.Path:
    """ResNet-18 with seeded random weights to ``path``: input ``"input"`` 1x3x224x224
    (static), output ``"logits"`` 1x1000, opset 17 (about 47 MB)."""
    from optc.models import zoo

    return _export_random(
        zoo.resnet18, path, (1, 3, 224, 224), seed=seed, overwrite=overwrite,
        dynamic_batch=False, calib_batch=4,
    )


def export_mobilenet(
    path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> pathlib.Path:
    """:class:`~optc.models.zoo.MobileNetLike` with seeded random weights to ``path``: input
    ``"input"`` 1x3x224x224 (static), output ``"logits"`` 1x1000, opset 17 (about 10 MB)."""
    from optc.models import zoo

    return _export_random(
        zoo.MobileNetLike, path, (1, 3, 224, 224), seed=seed, overwrite=overwrite,
        dynamic_batch=False, calib_batch=4,
    )


def export_tiny_resnet(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    overwrite: bool = False,
    dynamic_batch: bool = True,
) -> pathlib.Path:
    """:func:`~optc.models.zoo.tiny_resnet` with seeded random weights to ``path``: input
    ``"input"`` Nx3x32x32 (batch ``"N"`` dynamic unless ``dynamic_batch=False``, then 1),
    output ``"logits"`` Nx10, opset 17 (about 80 kB)."""
    from optc.models import zoo

    return _export_random(
        zoo.tiny_resnet, path, (1, 3, 32, 32), seed=seed, overwrite=overwrite,
        dynamic_batch=dynamic_batch, calib_batch=16,
    )


# --------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    from optc.models import MODELS_DIR

    parser = argparse.ArgumentParser(
        prog="python -m optc.models.build",
        description="Train/export optc's reference models.",
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=MODELS_DIR,
        help=f"output folder (default: the package folder, {MODELS_DIR})",
    )
    parser.add_argument(
        "--which", choices=["digits", "resnet18", "mobilenet", "tiny_resnet", "all"],
        default="digits", help="what to build (default: digits; all = digits + resnet18 + mobilenet)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)

    which = ["digits", *_BIG_MODELS] if args.which == "all" else [args.which]

    def work() -> None:
        out = args.out
        if any(w in _BIG_MODELS for w in which) and out.resolve() == MODELS_DIR:
            raise UsageError(
                "resnet18/mobilenet are not bundled with optc (tens of MB): pass --out DIR "
                "outside the package folder"
            )
        for w in which:
            t0 = time.perf_counter()
            if w == "digits":
                build_digits(out, force=args.force, verbose=True)
                continue
            exporter = {
                "resnet18": export_resnet18,
                "mobilenet": export_mobilenet,
                "tiny_resnet": export_tiny_resnet,
            }[w]
            path = exporter(out / f"{w}.onnx", overwrite=args.force)
            print(
                f"{w}: exported in {time.perf_counter() - t0:.1f} s -> {path} "
                f"({path.stat().st_size / 1e6:.1f} MB)"
            )

    return run_script(work)


def run_script(work: Callable[[], None]) -> int:
    """A build script's exit status: 0 once ``work()`` returns; where it raises an
    :class:`~optc.errors.OptcError`, its message on stderr and its ``exit_code``."""
    try:
        work()
    except OptcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

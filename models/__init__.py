"""Reference models for optc: torch definitions, training on bundled data, ONNX export.

What lives here:

* ``digits_cnn.onnx`` / ``digits_mlp.onnx`` — small classifiers for scikit-learn's bundled
  8x8 digits (input ``"input"``: float32 ``N x 1 x 8 x 8`` in [0, 1], dynamic batch ``"N"``;
  output ``"logits"``: ``N x 10``), trained deterministically by :mod:`optc.models.build`.
* ``digits_eval.npz`` (test split: ``input``, ``label``) and ``digits_calib.npz`` (200
  training images: ``input``) for accuracy checks and quantization calibration.
* ``models.json`` — test accuracy (measured with onnxruntime on the exported files), seed,
  epochs and hyper-parameters of each bundled model.
* :mod:`optc.models.zoo` — torch ``nn.Module`` definitions (DigitsCNN, DigitsMLP,
  ``resnet18``, MobileNetLike, ``tiny_resnet``); :mod:`optc.models.digits` — data and
  training helpers; :mod:`optc.models.build` — the build script
  (``python -m optc.models.build --which all``).

torch is optional (``pip install 'optc[torch]'``): importing this package does not import
it, and :func:`data_path` / :func:`load_metadata` work without it.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

__all__ = ["MODELS_DIR", "data_path", "load_metadata"]

#: Folder holding the bundled ONNX models, data files and ``models.json``.
MODELS_DIR = pathlib.Path(__file__).resolve().parent


def data_path(name: str) -> pathlib.Path:
    """Path of a bundled file (e.g. ``"digits_cnn.onnx"``); raises if it is missing."""
    path = MODELS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `python -m optc.models.build --which digits` to build it"
        )
    return path


def load_metadata() -> dict[str, Any]:
    """The contents of the bundled ``models.json``."""
    return json.loads(data_path("models.json").read_text())

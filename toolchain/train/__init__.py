"""optc.train: the torch side of optc, in one place.

* :mod:`optc.train.export` — a torch module to a checked ONNX file (``export_torch``);
* :mod:`optc.train.finetune` — ONNX -> torch, fine-tuning on user data, back to ONNX
  (``optc prune-finetune``);
* :mod:`optc.train.binary` — training-time binary and k-bit layers (straight-through
  estimators, distillation) and their export to the ONNX form the binarize passes recognise;
* :mod:`optc.train.gates` — learned structured pruning: hard-concrete channel gates trained
  toward a FLOPs target, closed channels removed by ``prune-zero`` (``optc prune-train``).

Training-time compression helpers to come belong here too. torch is optional
(``pip install 'optc[torch]'``) and imported only inside the functions of these modules:
``import optc.train`` and its submodules do not import it, and nothing outside this
subpackage (and the torch model definitions in :mod:`optc.models`) imports it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """How optc trains or fine-tunes a torch model: Adam with learning rate ``lr`` following a
    cosine schedule to 0 over ``epochs``, ``batch_size``, Adam ``weight_decay``, and the
    ``seed`` of the shuffling (training runs on one thread, so a seed gives one result)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0


__all__ = ["TrainConfig"]

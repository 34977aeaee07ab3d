"""scikit-learn's bundled 8x8 digits: deterministic split, training and accuracy helpers.

The data ships inside scikit-learn (1797 images, no download). Images are returned as
float32 ``N x 1 x 8 x 8`` scaled to [0, 1] (pixel / 16), labels as int64.

Training is deterministic: the weights come from ``torch.manual_seed(seed)``, mini-batches
are shuffled by a generator seeded with ``seed``, and torch runs single-threaded while
training (multi-threaded reductions may add in a different order), so the same call gives
bit-identical weights on the same machine and torch version.
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_split", "train", "accuracy", "predict"]


def load_digits_split(
    seed: int = 0, test_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: a stratified split (70/30 by default).

    x arrays are float32 ``N x 1 x 8 x 8`` in [0, 1]; y arrays are int64. With the defaults
    there are 1257 training and 540 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed, shuffle=True
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_test),
    )


def train(
    model,
    x,
    y,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    weight_decay: float = 0.0,
):
    """Train ``model`` in place with Adam and cross-entropy; returns it in eval mode.

    The model's current weights are used as they are (build it under ``torch.manual_seed``
    for reproducible initial weights, as :mod:`optc.models.build` does). The learning rate
    follows a cosine schedule from ``lr`` to 0 over ``epochs``; one thread, seeded shuffling.
    This is :func:`optc.train.binary.train` without a teacher (its latent-weight clipping touches only
    binary / k-bit layers, which a float model has none of).
    """
    from optc.train import TrainConfig
    from optc.train.binary import train as train_any

    config = TrainConfig(epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, weight_decay=weight_decay)
    return train_any(model, x, y, config)


def predict(model, x, batch_size: int = 512) -> np.ndarray:
    """Predicted class (argmax of the logits) for each image, with the model in eval mode."""
    import torch

    model.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        out = [model(xt[i : i + batch_size]).argmax(1) for i in range(0, len(xt), batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


def accuracy(model, x, y) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode)."""
    y = np.asarray(y)
    return float((predict(model, x) == y).mean())

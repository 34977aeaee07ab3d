"""FPGA-sized binary digits models: the reference models of the FPGA path (its benchmark,
``bench/bench_fpga.py``, and its bit-exactness tests), trained on demand in seconds.

Unlike :mod:`optc.models.binary_digits` (the bundled binary digits models, trained with
:mod:`optc.train.binary`'s layers and loop), every layer of ``bmlp`` fits on the FPGA, and the
models and training loop here are their own; only the two binarization primitives come from
:mod:`optc.train.binary` (``bipolar_ste``: sign with 0 -> +1 and the straight-through
gradient of the clipped identity, ``1{|x| <= 1}``; ``binarize_weight``: ``alpha_n * sign(w_n)``
with per-output-channel scales ``alpha_n = mean |w_n|``, XNOR-Net style, over latent float
weights). The backend does not depend on this module (it reads the trained-BNN ONNX pattern
directly). Exported as plain ONNX in the *trained-BNN
pattern* the backend recognises:

* ``bmlp``: ``Sign(x - 0.3)`` (pixels binarized on the host) -> ``Flatten`` ->
  [``Gemm`` (weights +-alpha_n) -> ``BatchNormalization`` -> ``Sign``] x 2 -> ``Gemm`` (weights
  +-alpha_n) -> ``BatchNormalization`` -> logits. Every MAC runs on the FPGA.
* ``bcnn``: float ``Conv`` 3x3 (kept on the host) -> ``BatchNormalization`` -> ``Sign`` ->
  binary ``Conv`` 3x3 -> ``BatchNormalization`` -> ``Sign`` -> ``MaxPool`` 2x2 -> ``Flatten`` ->
  binary ``Gemm`` -> ``BatchNormalization`` -> logits.
* ``qmlp`` (no training): a random 2-bit-weight / 2-bit-activation MLP in
  QuantizeLinear/DequantizeLinear form, for the k-bit (bit-plane) path.

The pixel threshold 0.3 is not a multiple of 1/16, so ``Sign`` never sees an exact 0 on the
digits (ONNX ``Sign(0) = 0`` is not a binary value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["build", "train_bmlp", "train_bcnn", "make_qmlp", "MODELS"]

MODELS = ("bmlp", "bcnn", "qmlp")
PIXEL_THRESHOLD = 0.3


def _torch_modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    from optc.train.binary import binarize_weight, bipolar_ste

    class BinAct(nn.Module):
        """sign with an STE while training; ONNX ``Sign`` when exported."""

        exporting = False

        def forward(self, x):
            return torch.sign(x) if BinAct.exporting else bipolar_ste(x)

    class BinLinear(nn.Linear):
        def forward(self, x):
            return F.linear(x, binarize_weight(self.weight), None)

    class BinConv2d(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x, binarize_weight(self.weight), None, self.stride, self.padding)

    class InputBinarize(nn.Module):
        def forward(self, x):
            return BinAct()(x - PIXEL_THRESHOLD)

    class BMLP(nn.Module):
        def __init__(self, hidden=128):
            super().__init__()
            self.net = nn.Sequential(
                InputBinarize(), nn.Flatten(),
                BinLinear(64, hidden, bias=False), nn.BatchNorm1d(hidden), BinAct(),
                BinLinear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), BinAct(),
                BinLinear(hidden, 10, bias=False), nn.BatchNorm1d(10))

        def forward(self, x):
            return self.net(x)

    class BCNN(nn.Module):
        def __init__(self, c1=16, c2=32):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, c1, 3, bias=False), nn.BatchNorm2d(c1), BinAct(),   # host (float)
                BinConv2d(c1, c2, 3, bias=False), nn.BatchNorm2d(c2), BinAct(),    # 6x6 -> 4x4
                nn.MaxPool2d(2), nn.Flatten(),                                     # 2x2xc2
                BinLinear(4 * c2, 10, bias=False), nn.BatchNorm1d(10))

        def forward(self, x):
            return self.net(x)

    return torch, nn, BinAct, BinLinear, BinConv2d, BMLP, BCNN


def _freeze(model):
    """Replace latent weights by their binarized values (+-alpha_n) for export."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ in ("BinLinear", "BinConv2d"):
                w = m.weight
                alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
                m.weight.copy_(torch.where(w >= 0, alpha, -alpha))
                m.forward = _plain_forward(m)
    return model


def _plain_forward(m):
    import torch.nn.functional as F

    if type(m).__name__ == "BinLinear":
        return lambda x: F.linear(x, m.weight, None)
    return lambda x: F.conv2d(x, m.weight, None, m.stride, m.padding)


def _train(model, epochs, lr, seed):
    from optc.models.digits import accuracy, load_digits_split, train

    x_train, y_train, x_test, y_test = load_digits_split()
    train(model, x_train, y_train, epochs=epochs, lr=lr, seed=seed)
    return accuracy(model, x_test, y_test)


def _export(model, path: Path, BinAct) -> Path:
    import torch

    from optc.train.export import ExportOptions, export_torch

    BinAct.exporting = True
    try:
        export_torch(model, torch.zeros(1, 1, 8, 8), path, input_names=["input"], output_names=["logits"],
                     overwrite=True,
                     options=ExportOptions(dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, keep_batchnorm=True))
    finally:
        BinAct.exporting = False
    return path


def train_bmlp(path: str | Path, *, hidden: int = 128, epochs: int = 30, seed: int = 0) -> dict:
    """Train the binary MLP and export it to ``path``; returns ``{"path", "torch_accuracy"}``."""
    torch, nn, BinAct, *_ , BMLP, _ = _torch_modules()
    torch.manual_seed(seed)
    model = BMLP(hidden)
    acc = _train(model, epochs, 0.01, seed)
    _freeze(model)
    return {"path": str(_export(model, Path(path), BinAct)), "torch_accuracy": acc}


def train_bcnn(path: str | Path, *, c1: int = 16, c2: int = 32, epochs: int = 30, seed: int = 0) -> dict:
    """Train the binary CNN and export it to ``path``; returns ``{"path", "torch_accuracy"}``."""
    torch, nn, BinAct, *_, BCNN = _torch_modules()
    torch.manual_seed(seed)
    model = BCNN(c1, c2)
    acc = _train(model, epochs, 0.01, seed)
    _freeze(model)
    return {"path": str(_export(model, Path(path), BinAct)), "torch_accuracy": acc}


def make_qmlp(path: str | Path, *, sizes=(64, 32, 16, 10), wbits: int = 2, abits: int = 2, seed: int = 0) -> dict:
    """A random k-bit MLP in QDQ form (no training): input ``Clip(x, 0, 1)`` quantized to
    ``abits`` (uint), weights ``DequantizeLinear`` of signed ``wbits`` codes with per-channel
    scales, hidden activations ``Relu`` -> ``QuantizeLinear``/``DequantizeLinear`` clipped to
    ``abits`` by a ``Clip``; float logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    amax = 2 ** abits - 1
    wlo, whi = -(2 ** (wbits - 1)), 2 ** (wbits - 1) - 1
    inits, nodes = [], []

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    nodes.append(helper.make_node("Flatten", ["input"], ["flat"]))
    nodes.append(helper.make_node("Clip", ["flat", c("zero", np.float32(0)), c("one", np.float32(1))], ["clipped"]))
    s_in = np.float32(1.0 / amax)
    nodes.append(helper.make_node("QuantizeLinear", ["clipped", c("s_in", s_in), c("zp_in", np.uint8(0))], ["q0"]))
    nodes.append(helper.make_node("DequantizeLinear", ["q0", "s_in", "zp_in"], ["x0"]))
    x = "x0"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        wq = rng.integers(wlo, whi + 1, size=(k, n)).astype(np.int8)
        ws = (rng.uniform(0.5, 1.5, size=n) / np.sqrt(k)).astype(np.float32)
        nodes.append(helper.make_node("DequantizeLinear", [c(f"wq{i}", wq), c(f"ws{i}", ws), c(f"wz{i}", np.zeros(n, np.int8))],
                                      [f"w{i}"], axis=1))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]))
        b = (rng.standard_normal(n) * 0.3).astype(np.float32)
        nodes.append(helper.make_node("Add", [f"mm{i}", c(f"b{i}", b)], [f"z{i}"]))
        if i == len(sizes) - 2:
            nodes[-1].output[0] = "logits"
            break
        nodes.append(helper.make_node("Relu", [f"z{i}"], [f"r{i}"]))
        s = np.float32(0.25)
        nodes.append(helper.make_node("Clip", [f"r{i}", c(f"lo{i}", np.float32(0)), c(f"hi{i}", np.float32(s * amax))],
                                      [f"rc{i}"]))
        nodes.append(helper.make_node("QuantizeLinear", [f"rc{i}", c(f"s{i}", s), c(f"zp{i}", np.uint8(0))], [f"q{i + 1}"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"q{i + 1}", f"s{i}", f"zp{i}"], [f"x{i + 1}"]))
        x = f"x{i + 1}"
    graph = helper.make_graph(nodes, "qmlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return {"path": str(path)}


def build(which: str, path: str | Path, **kw) -> dict:
    """Build model ``which`` (one of :data:`MODELS`) at ``path``."""
    return {"bmlp": train_bmlp, "bcnn": train_bcnn, "qmlp": make_qmlp}[which](path, **kw)

"""Training helpers for binary and k-bit networks (torch), and their export to the ONNX form
optc's ``sign-to-threshold`` and ``binarize`` passes recognise.

torch is imported lazily: ``import optc.train.binary`` does not import it; the layer classes are built
on first attribute access (``optc.train.binary.BinaryConv2d``).

Training-time layers
--------------------
* :class:`BinaryConv2d`, :class:`BinaryLinear` — BinaryConnect/XNOR-Net style: latent real
  weights ``w``; the forward pass uses ``alpha_n * sign(w_n)`` with the per-output-channel
  scale ``alpha_n = mean |w_n|``. The gradient reaches ``w`` through a straight-through
  estimator (STE): d sign(w)/dw = 1 for |w| <= 1, else 0. :func:`clip_latent_weights` keeps
  latent weights in [-1, 1] (call it after each optimizer step; :func:`train` does).
* :class:`SignActivation` — ``sign(x)`` forward (ONNX ``Sign``), clipped STE backward
  (grad * 1[|x| <= 1], the derivative of hardtanh). Put a BatchNorm before it.
* :class:`QuantConv2d`, :class:`QuantLinear` — k-bit weights: symmetric uniform per output
  channel, ``s_n = max|w_n| / (2^(k-1) - 1)``, ``w_q = s_n * round(w / s_n)`` (k = 1: the binary
  case above); STE through the rounding.
* :class:`QuantAct` — k-bit unsigned activations on [0, a] with ``2^k - 1`` steps: ``a`` fixed
  (``learn=False``) or learned (PACT: the clip level gets a gradient). Forward
  ``round(clip(x, 0, a) / s) * s``, s = a / (2^k - 1), STE through the rounding.

Accuracy repairs: keep the first and last layer in float (the model definitions decide; see
``optc.models.binary_digits``), BatchNorm before every Sign, per-channel scales, and distillation from an
fp32 teacher (:func:`distillation_loss`, ``train(..., teacher=...)``).

Export
------
:func:`freeze` turns a trained model into plain torch layers: weights become their quantized
values (two values +-alpha_n per output channel for binary layers), ``SignActivation`` becomes
``torch.sign`` (ONNX ``Sign``), ``QuantAct`` becomes ``Clip -> Div -> Round -> Mul``.
:func:`export` writes that with BatchNormalization nodes kept (so ``sign-to-threshold`` sees
``BatchNormalization -> Sign``). The ONNX model computes exactly what the torch model computes
in eval mode.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

from . import TrainConfig

__all__ = [
    "BinaryConv2d", "BinaryLinear", "SignActivation", "QuantConv2d", "QuantLinear", "QuantAct",
    "sign_ste", "bipolar_ste", "binarize_weight", "quantize_weight", "clip_latent_weights", "distillation_loss",
    "train", "freeze", "export", "weight_bits_of",
]  # fmt: skip

_LAYERS = ("BinaryConv2d", "BinaryLinear", "SignActivation", "QuantConv2d", "QuantLinear", "QuantAct",
           "Sign", "FakeQuant")
_cache: dict[str, Any] = {}


def __getattr__(name: str):
    if name in _LAYERS:
        if name not in _cache:
            _cache.update(_build())
        return _cache[name]
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# functional pieces (torch imported inside)


def sign_ste(x):
    """``sign(x)`` with the clipped straight-through gradient ``grad * 1[|x| <= 1]``."""
    return _fns()["SignSTE"].apply(x)


def bipolar_ste(x):
    """``+1`` where ``x >= 0``, else ``-1`` (two values only: 0 maps to +1), with the clipped
    straight-through gradient ``grad * 1[|x| <= 1]``; :func:`binarize_weight` uses it for weights."""
    return _fns()["WeightSignSTE"].apply(x)


def binarize_weight(w):
    """``alpha_n * sign(w_n)`` per output channel (dim 0), alpha_n = mean |w_n|; STE to ``w``.

    A weight of exactly 0 maps to +alpha (as the exported value and ``binarize`` do)."""
    import torch

    dims = tuple(range(1, w.dim()))
    alpha = w.abs().mean(dim=dims, keepdim=True)
    return bipolar_ste(w) * alpha if w.dim() else torch.sign(w)


def quantize_weight(w, bits: int):
    """Symmetric per-output-channel k-bit weights (``bits`` = 1: :func:`binarize_weight`)."""
    if bits == 1:
        return binarize_weight(w)
    qmax = (1 << (bits - 1)) - 1
    dims = tuple(range(1, w.dim()))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8) / qmax
    return _fns()["RoundSTE"].apply((w / scale).clamp(-qmax, qmax)) * scale


def _fns() -> dict:
    if "fns" not in _cache:
        _cache["fns"] = _build_functions()
    return _cache["fns"]


def _build_functions() -> dict:
    import torch

    class SignSTE(torch.autograd.Function):
        """sign forward; clipped straight-through backward (hardtanh derivative)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sign(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (x.abs() <= 1).to(grad.dtype)

        @staticmethod
        def symbolic(g, x):
            return g.op("Sign", x)

    class WeightSignSTE(torch.autograd.Function):
        """sign(w) with 0 -> +1; straight-through backward clipped to |w| <= 1 (BinaryConnect)."""

        @staticmethod
        def forward(ctx, w):
            ctx.save_for_backward(w)
            return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

        @staticmethod
        def backward(ctx, grad):
            (w,) = ctx.saved_tensors
            return grad * (w.abs() <= 1).to(grad.dtype)

    class RoundSTE(torch.autograd.Function):
        """round (half to even, as ONNX Round) forward; identity backward."""

        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

        @staticmethod
        def symbolic(g, x):
            return g.op("Round", x)

    return {"SignSTE": SignSTE, "WeightSignSTE": WeightSignSTE, "RoundSTE": RoundSTE}


# ---------------------------------------------------------------------------------------------
# layers


def _build() -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BinaryConv2d(nn.Conv2d):
        """Conv2d with binary weights alpha_n * sign(w_n) (latent real weights, STE)."""

        weight_bits = 1

        def forward(self, x):
            return self._conv_forward(x, binarize_weight(self.weight), self.bias)

    class BinaryLinear(nn.Linear):
        """Linear with binary weights alpha_n * sign(w_n) (latent real weights, STE)."""

        weight_bits = 1

        def forward(self, x):
            return F.linear(x, binarize_weight(self.weight), self.bias)

    class _WeightBits:
        """Takes ``weight_bits`` (default 2) besides the layer's own constructor arguments."""

        def __init__(self, *args, weight_bits: int = 2, **kwargs):
            super().__init__(*args, **kwargs)
            self.weight_bits = int(weight_bits)

    class QuantConv2d(_WeightBits, nn.Conv2d):
        """Conv2d with symmetric per-channel k-bit weights (STE)."""

        def forward(self, x):
            return self._conv_forward(x, quantize_weight(self.weight, self.weight_bits), self.bias)

    class QuantLinear(_WeightBits, nn.Linear):
        """Linear with symmetric per-channel k-bit weights (STE)."""

        def forward(self, x):
            return F.linear(x, quantize_weight(self.weight, self.weight_bits), self.bias)

    class SignActivation(nn.Module):
        """Binary activation: sign forward, clipped STE backward. Exports as ONNX Sign."""

        def forward(self, x):
            return sign_ste(x)

    class QuantAct(nn.Module):
        """k-bit unsigned activation on [0, a]: round(clip(x, 0, a) / s) * s, s = a / (2^k - 1).

        ``learn=True``: ``a`` is a parameter (PACT); its gradient is the part of the incoming
        gradient where x >= a."""

        def __init__(self, bits: int = 2, max_value: float = 1.0, learn: bool = False):
            super().__init__()
            self.bits = int(bits)
            a = torch.tensor(float(max_value))
            if learn:
                self.a = nn.Parameter(a)
            else:
                self.register_buffer("a", a)

        def forward(self, x):
            levels = (1 << self.bits) - 1
            a = self.a.abs() + 1e-6 if isinstance(self.a, nn.Parameter) else self.a
            # PACT clip: min(relu(x), a) with a gradient to a where x >= a
            y = torch.minimum(F.relu(x), a) if isinstance(self.a, nn.Parameter) else x.clamp(0, float(a))
            s = a / levels
            return _fns()["RoundSTE"].apply(y / s) * s

    class Sign(nn.Module):
        """Inference sign (ONNX Sign)."""

        def forward(self, x):
            return torch.sign(x)

    class FakeQuant(nn.Module):
        """Inference k-bit quantizer: Clip(0, hi) -> Div(s) -> Round -> Mul(s)."""

        def __init__(self, bits: int, max_value: float):
            super().__init__()
            self.bits = int(bits)
            self.hi = float(max_value)
            self.scale = float(np.float32(self.hi) / np.float32((1 << self.bits) - 1))

        def forward(self, x):
            return torch.round(x.clamp(0.0, self.hi) / self.scale) * self.scale

    return {
        "BinaryConv2d": BinaryConv2d, "BinaryLinear": BinaryLinear, "QuantConv2d": QuantConv2d,
        "QuantLinear": QuantLinear, "SignActivation": SignActivation, "QuantAct": QuantAct,
        "Sign": Sign, "FakeQuant": FakeQuant,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# training


def weight_bits_of(module) -> int | None:
    """Weight bits of an optc quantized layer (1 for binary), None for a float layer."""
    return getattr(module, "weight_bits", None)


def clip_latent_weights(model, bound: float = 1.0) -> None:
    """Clamp the latent real weights of every binary / k-bit layer to [-bound, bound]."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if weight_bits_of(m) is not None:
                m.weight.clamp_(-bound, bound)


def distillation_loss(student_logits, teacher_logits, labels, *, temperature: float = 4.0,
                      weight: float = 0.7):
    """Hinton distillation: ``weight * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - weight) *
    CE(s, labels)``."""
    import torch.nn.functional as F

    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="batchmean") * (t * t)
    return weight * kd + (1.0 - weight) * F.cross_entropy(student_logits, labels)


def train(model, x, y, config: TrainConfig, *, teacher=None, temperature: float = 4.0,
          distill_weight: float = 0.7, clip: float = 1.0):
    """Train a binary / k-bit model in place as ``config`` says (Adam, cosine learning rate,
    cross-entropy or distillation from ``teacher``), clipping latent weights after every step.
    Deterministic for a given seed (single thread, seeded shuffling). Returns the model in eval
    mode."""
    import torch
    import torch.nn.functional as F

    epochs, lr, seed, batch_size = config.epochs, config.lr, config.seed, config.batch_size
    weight_decay = config.weight_decay

    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        if teacher is not None:
            teacher.eval()
            with torch.no_grad():
                t_logits = teacher(xt)
        model.train()
        n = len(xt)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = perm[start: start + batch_size]
                if len(idx) < 2:
                    continue
                opt.zero_grad(set_to_none=True)
                out = model(xt[idx])
                if teacher is not None:
                    loss = distillation_loss(out, t_logits[idx], yt[idx], temperature=temperature,
                                             weight=distill_weight)
                else:
                    loss = F.cross_entropy(out, yt[idx])
                loss.backward()
                opt.step()
                clip_latent_weights(model, clip)
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# export


def freeze(model):
    """A copy of ``model`` in plain torch layers with the quantized weights written in:
    binary/k-bit Conv2d/Linear -> nn.Conv2d/nn.Linear holding ``quantize_weight(w)``,
    SignActivation -> Sign, QuantAct -> FakeQuant. Same outputs as ``model`` in eval mode."""
    import torch
    from torch import nn

    L = __getattr__  # noqa: N806
    out = copy.deepcopy(model).eval()

    def convert(parent) -> None:
        for name, child in list(parent.named_children()):
            new = None
            bits = weight_bits_of(child)
            if bits is not None:
                with torch.no_grad():
                    wq = quantize_weight(child.weight, bits).detach().clone()
                if isinstance(child, nn.Conv2d):
                    new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                    child.padding, child.dilation, child.groups, child.bias is not None,
                                    child.padding_mode)
                else:
                    new = nn.Linear(child.in_features, child.out_features, child.bias is not None)
                with torch.no_grad():
                    new.weight.copy_(wq)
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
            elif isinstance(child, L("SignActivation")):
                new = L("Sign")()
            elif isinstance(child, L("QuantAct")):
                a = float(child.a.detach().abs() + 1e-6) if isinstance(child.a, nn.Parameter) else float(child.a)
                new = L("FakeQuant")(child.bits, a)
            if new is not None:
                setattr(parent, name, new.eval())
            else:
                convert(child)

    convert(out)
    return out


def export(model, path: str | os.PathLike, *, input_shape=(1, 1, 8, 8), input_name: str = "input",
           output_name: str = "logits", dynamic_batch: bool = True, overwrite: bool = False):
    """Freeze ``model`` and export it to ONNX (opset 17, BatchNormalization kept): the form the
    ``sign-to-threshold`` and ``binarize`` passes rewrite into packed bit-serial ops."""
    import torch

    from .export import ExportOptions, export_torch

    frozen = freeze(model)
    example = torch.zeros(tuple(input_shape), dtype=torch.float32)
    axes = {input_name: {0: "N"}, output_name: {0: "N"}} if dynamic_batch else None
    return export_torch(frozen, example, path, input_names=[input_name], output_names=[output_name],
                        overwrite=overwrite, options=ExportOptions(dynamic_axes=axes, keep_batchnorm=True))

"""Training helpers (optc.train.binary) and the bundled binary digits models: straight-through
gradients, quantizers, export to the ONNX form the binarize passes recognise, and the
accuracy / size claims recorded in models/binary_digits.json."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from optc.train import TrainConfig, binary  # noqa: E402
from optc.models import MODELS_DIR  # noqa: E402
from optc.passes import optc_ops as ops  # noqa: E402


def test_import_optc_and_train_do_not_import_torch():
    code = "import sys, optc, optc.train.binary, optc.passes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


# ------------------------------------------------------------------------------- STE gradients
def test_sign_ste_backward_is_clipped_identity():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = binary.sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]  # torch.sign == ONNX Sign
    g = torch.arange(1.0, 8.0)
    y.backward(g)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]  # grad * 1[|x| <= 1]


def test_binary_weight_forward_and_gradient():
    w = torch.tensor([[0.5, -0.1, 2.0, 0.0], [-0.2, -0.4, 0.2, 0.4]], requires_grad=True)
    wb = binary.binarize_weight(w)
    alpha = w.detach().abs().mean(1)
    expect = torch.where(w.detach() >= 0, 1.0, -1.0) * alpha[:, None]
    torch.testing.assert_close(wb.detach(), expect)
    assert all(len(set(np.abs(r).round(6).tolist())) == 1 for r in wb.detach().numpy())  # +-alpha_n
    wb.sum().backward()
    # d/dw of alpha * STE(sign(w)): STE part is 1[|w| <= 1] * alpha; alpha part is sign(w) / K * sum(sign)
    s = torch.where(w.detach() >= 0, 1.0, -1.0)
    ste = (w.detach().abs() <= 1).float() * alpha[:, None]
    da = torch.sign(w.detach()) / 4 * s.sum(1, keepdim=True)
    torch.testing.assert_close(w.grad, ste + da)


def test_quantizers():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    for bits in (2, 3, 4):
        q = binary.quantize_weight(w, bits).detach()
        scale = w.abs().amax(1, keepdim=True) / ((1 << (bits - 1)) - 1)
        codes = q / scale
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
        assert codes.abs().max() <= (1 << (bits - 1)) - 1 + 1e-4
    act = binary.QuantAct(bits=2, max_value=1.5)
    x = torch.tensor([-1.0, 0.2, 0.26, 0.9, 3.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5])
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # STE through round, zero outside the clip
    pact = binary.QuantAct(bits=3, max_value=1.0, learn=True)
    pact(torch.tensor([0.5, 2.0, 3.0])).sum().backward()
    assert pact.a.grad is not None and pact.a.grad.item() > 0  # the clip level learns


def test_distillation_loss():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    same = binary.distillation_loss(s, s.clone(), labels, weight=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert binary.distillation_loss(s, -s, labels, weight=1.0).item() > 0.1


# ------------------------------------------------------------------------------- export
class _TinyBnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), binary.SignActivation(),
            binary.BinaryConv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), binary.SignActivation(),
            nn.MaxPool2d(2), nn.Flatten(), binary.BinaryLinear(16 * 16, 10))

    def forward(self, x):
        return self.f(x)


class _TinyKbit(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), binary.QuantAct(bits=2, max_value=2.0, learn=True),
            binary.QuantConv2d(8, 8, 3, padding=1, weight_bits=3), nn.BatchNorm2d(8), binary.QuantAct(bits=3, max_value=1.0),
            nn.Flatten(), binary.QuantLinear(8 * 64, 10, weight_bits=1))

    def forward(self, x):
        return self.f(x)


def _digits(n=300):
    from optc.models import digits

    xtr, ytr, xte, yte = digits.load_digits_split()
    return xtr[:n], ytr[:n], xte[:64]


@pytest.mark.parametrize("factory,expect", [
    (_TinyBnn, {"Conv->BinaryConv2d": 1, "Gemm->BinaryDense": 1}),
    (_TinyKbit, {"Conv->BitserialConv2d": 1, "Gemm->BitserialDense": 1}),
], ids=["binary", "k-bit"])
def test_exported_model_is_recognised_and_exact(tmp_path, factory, expect):
    import onnx_ir as ir

    from optc.pipeline import run_pipeline

    xtr, ytr, xte = _digits()
    torch.manual_seed(0)
    model = binary.train(factory(), xtr, ytr, TrainConfig(epochs=2, lr=1e-2, seed=0))
    path = binary.export(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    kinds = {n.op_type for n in proto.graph.node}
    assert ("Sign" in kinds and "BatchNormalization" in kinds) if factory is _TinyBnn else ("Round" in kinds)
    with torch.no_grad():
        want = model(torch.from_numpy(xte)).numpy()
    (got_ort,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": xte})
    np.testing.assert_allclose(got_ort, want, atol=1e-4, rtol=1e-4)
    irm, records = run_pipeline(ir.serde.deserialize_model(proto), "simplify,sign-to-threshold,binarize")
    assert records[-1].details["by_op"] == expect, records[-1].details
    rewritten = ir.serde.serialize_model(irm)
    got = ops.reference_evaluator(rewritten).run(None, {"input": xte})[0]
    np.testing.assert_allclose(got, got_ort, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == got_ort.argmax(1)).all()


def test_freeze_writes_two_values_per_channel():
    torch.manual_seed(0)
    frozen = binary.freeze(_TinyBnn())
    conv = frozen.f[3]
    assert type(conv) is nn.Conv2d
    w = conv.weight.detach().abs().reshape(16, -1)
    assert torch.all(w == w[:, :1])
    assert type(frozen.f[2]).__name__ == "Sign"


# ------------------------------------------------------------------------------- bundled models
def _meta():
    path = MODELS_DIR / "binary_digits.json"
    if not path.is_file():
        pytest.skip("models/binary_digits.json not built (python -m optc.models.binary_digits)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", ["digits_bcnn", "digits_bmlp", "digits_bcnn_wide"])
def test_bundled_binary_models(name):
    meta = _meta()["models"][name]
    data = np.load(MODELS_DIR / "digits_eval.npz")
    x, y = data["input"], data["label"]
    path = MODELS_DIR / meta["file"]
    # the exported files keep float weights (+-alpha): the wide model's 1.5 MB packs to 51 kB
    assert path.stat().st_size < (2_000_000 if name.endswith("_wide") else 300_000)
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    acc = float((logits.argmax(1) == y).mean())
    assert acc == pytest.approx(meta["test_accuracy"])
    assert meta["fp32_test_accuracy"] - acc <= 0.03  # within 3 points of the fp32 model
    from optc.models.binary_digits import binarized, weight_bytes

    rewritten, _ = binarized(path)
    assert any(n.domain == ops.DOMAIN for n in rewritten.graph.node)
    got = ops.reference_evaluator(rewritten).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, logits, atol=1e-4, rtol=1e-4)  # the rewrite is exact
    assert weight_bytes(rewritten) == meta["weight_bytes"]["binarized"]
    if name in ("digits_bcnn", "digits_bcnn_wide"):
        assert meta["weight_bytes"]["ratio"] >= 20


def test_wide_pair_same_architecture_and_fused_pipeline_exact():
    """digits_bcnn_wide and its fp32 version digits_cnn_wide have the same layers (weight shapes);
    the fused CPU pipeline (thresholds + max-pools inside the binary convs) gives the same logits
    as the plain binarize pipeline."""
    import onnx
    from onnx import numpy_helper

    from optc.models.binary_digits import BINARIZE_PIPELINE, FUSED_PIPELINE, binarized

    meta = _meta()
    fp32_meta = meta["fp32_models"]["digits_cnn_wide"]
    bin_meta = meta["models"]["digits_bcnn_wide"]
    assert bin_meta["fp32_model"] == fp32_meta["file"]

    def layer_shapes(path):
        m = onnx.load(str(MODELS_DIR / path))
        inits = {t.name: numpy_helper.to_array(t).shape for t in m.graph.initializer}
        return [(n.op_type, inits[n.input[1]]) for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]

    shapes = layer_shapes(fp32_meta["file"])
    assert shapes == layer_shapes(bin_meta["file"])
    assert [s[1][0] for s in shapes] == [64, 128, 256, 10]
    data = np.load(MODELS_DIR / "digits_eval.npz")
    x, y = data["input"], data["label"]
    (logits,) = ort.InferenceSession(str(MODELS_DIR / fp32_meta["file"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(fp32_meta["test_accuracy"])
    assert fp32_meta["test_accuracy"] - bin_meta["binarized_test_accuracy"] <= 0.03
    plain, _ = binarized(MODELS_DIR / bin_meta["file"], BINARIZE_PIPELINE)
    fused, records = binarized(MODELS_DIR / bin_meta["file"], FUSED_PIPELINE)
    assert records[-1].details["rewrites"] == 2 and records[-1].details["with_pool"] == 2
    assert [n.op_type for n in fused.graph.node if n.domain == ops.DOMAIN] == [
        "SignThreshold", "BinaryConv2dThreshold", "BinaryConv2dThreshold", "BinaryDense"]
    np.testing.assert_array_equal(ops.reference_evaluator(fused).run(None, {"input": x})[0],
                                  ops.reference_evaluator(plain).run(None, {"input": x})[0])

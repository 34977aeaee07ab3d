"""The x86 CPU backend on models with dynamic shapes and the ops real third-party models use
(Clip, HardSigmoid, Resize, ConvTranspose, Shape-computed Reshape, opset 11), and on real
PP-OCR models from the wild; every compile is verified against onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import optc
from optc.verify import reference_outputs
from tests.fixtures.dynamic_models import MODELS as DYNAMIC_MODELS

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("name", sorted(DYNAMIC_MODELS))
def test_dynamic_models_compile_and_verify(tmp_path, name):
    path, dims = DYNAMIC_MODELS[name](tmp_path)
    report = optc.compile(path, "cpu", tmp_path / "pkg", input_shapes=dims, options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    # a second binding of the same dynamic model (other batch/size) also works
    bigger = {k: [v[0] + 1, v[1], v[2] * 2, v[3] * 2] for k, v in dims.items()}
    report = optc.compile(path, "cpu", tmp_path / "pkg2", input_shapes=bigger, options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"] and report["inputs"][0]["shape"] == bigger["input"]


def test_params_separate_and_embedded_agree(tmp_path):
    from tests.conftest import make_conv_model

    make_conv_model(tmp_path / "m.onnx", batch=2)
    x = {"x": np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "emb", inputs=x, options=optc.CompileOptions.of(measure=False))
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "sep", inputs=x, options=optc.CompileOptions.of(params="separate", measure=False))
    assert (tmp_path / "sep" / "params.bin").exists() and not (tmp_path / "emb" / "params.bin").exists()
    a = optc.run(tmp_path / "emb", x)["y"]
    b = optc.run(tmp_path / "sep", x)["y"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, reference_outputs(tmp_path / "m.onnx", x)[0], atol=1e-5)


def _ppocr(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        pytest.skip("rapidocr-onnxruntime (PP-OCR test models) not installed; setup.sh installs it")
    return Path(spec.origin).parent / "models" / name


@pytest.mark.parametrize("name, shape", [
    ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 64, 64)),
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 64)),
])
def test_real_ppocr_models(tmp_path, name, shape):
    """Third-party PaddleOCR models exported by paddle2onnx: dynamic dims, weights in Constant
    nodes, HardSigmoid/Clip/Resize/ConvTranspose (det), attention blocks (rec)."""
    report = optc.compile(_ppocr(name), "cpu", tmp_path / "pkg", input_shapes={"x": shape}, options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]
    assert report["model"]["params"] > 100_000

"""64-bit ARM end to end on the ops third-party models use and on a real PP-OCR model:
cross-compiled, executed under qemu-aarch64 with the runner the package ships, verified."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest

import optc
from optc.artifact import read_package
from tests.fixtures.dynamic_models import MODELS as DYNAMIC_MODELS

pytestmark = [pytest.mark.tvm, pytest.mark.qemu]


@pytest.mark.parametrize("name", ["clip_hardsigmoid", "resize", "convtranspose", "shape_reshape", "opset11"])
def test_dynamic_models_on_arm(tmp_path, name):
    path, dims = DYNAMIC_MODELS[name](tmp_path)
    report = optc.compile(path, "arm", tmp_path / "pkg", input_shapes=dims)
    assert report["verify"]["passed"], report["verify"]
    assert report["latency"]["method"] == "modeled" and report["latency"]["emulated_ms"] > 0


def test_ppocr_classifier_on_arm_a76(tmp_path):
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        pytest.skip("rapidocr-onnxruntime (PP-OCR test models) not installed; setup.sh installs it")
    model = Path(spec.origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    report = optc.compile(model, "arm-a76", tmp_path / "pkg", input_shapes={"x": (1, 3, 48, 192)}, options=optc.CompileOptions.of(params="separate"))
    assert report["verify"]["passed"], report["verify"]
    manifest = read_package(tmp_path / "pkg")
    assert manifest["target"]["tvm"]["mcpu"] == "cortex-a76" and manifest["target"]["qemu_cpu"] == "cortex-a76"


def test_external_data_model_compiles(tmp_path):
    from tests.conftest import make_conv_model

    src = tmp_path / "src"
    src.mkdir()
    onnx.save(make_conv_model(), str(src / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    report = optc.compile(src / "m.onnx", "arm", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]

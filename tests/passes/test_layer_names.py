"""Layer names are the same in `optc inspect`, `optc quant-debug` and the compile pipeline
(fuse-bn keeps the producer's name), and a quantize include=/exclude=/layer-bits= pattern that
matches no layer is an error naming it and listing the layers (issue 17)."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from optc import DEFAULT_PIPELINE, api, frontend, gate
from optc.errors import UsageError
from optc.pipeline import run_pipeline
from optc.quant_debug import quant_debug
from tests.conftest import MODELS, REPO

CNN = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"
SHAPE = {"input": (1, 1, 8, 8)}
LAYERS = ["/features/features.0/Conv", "/features/features.3/Conv", "/features/features.7/Conv", "/classifier/Gemm"]


def _run(text: str):
    bound, _ = frontend.bind_input_shapes(frontend.load_model(CNN), SHAPE)
    return run_pipeline(ir.serde.deserialize_model(bound), text)


def test_fuse_bn_keeps_the_conv_names():
    model, records = _run(DEFAULT_PIPELINE)
    assert records[3].name == "fuse-bn" and records[3].details == {"rewrites": 3}
    names = [n.name for n in model.graph if n.op_type in ("Conv", "Gemm")]
    assert names == LAYERS
    assert not any(n.name.startswith("node_") for n in model.graph)
    _, again = run_pipeline(model, "fuse-bn")  # idempotent
    assert not again[0].modified


def test_inspect_quant_debug_and_pipeline_agree_on_layer_names():
    info = api.inspect(CNN, SHAPE)
    inspected = [l["name"] for l in info["layers"] if l["op"] in ("Conv", "Gemm")]
    dbg = quant_debug(CNN, CALIB, input_shapes=SHAPE, samples=16, isolated=False)
    _, records = _run(f"{DEFAULT_PIPELINE},quantize<calib={CALIB}>")
    compiled = [l["name"] for l in records[-1].details["layers"]]
    assert inspected == [l["name"] for l in dbg["layers"]] == compiled == LAYERS


@pytest.mark.parametrize("params, named", [
    ("exclude=/features/features.0/Conv_typo", "exclude pattern '/features/features.0/Conv_typo'"),
    ("include=/backbone/*", "include pattern '/backbone/*'"),
    ("layer-bits=node_Conv_0:4", "layer-bits pattern 'node_Conv_0'"),
])
def test_a_pattern_that_matches_no_layer_is_an_error(params, named):
    with pytest.raises(UsageError) as e:
        _run(f"{DEFAULT_PIPELINE},quantize<calib={CALIB};{params}>")
    msg = str(e.value)
    assert msg.startswith("quantize: ") and named in msg and "matches no layer" in msg
    assert all(name in msg for name in LAYERS)  # the names there are
    with pytest.raises(UsageError, match="matches no layer"):  # quant-debug: the same quantizer
        quant_debug(CNN, CALIB, params=params, input_shapes=SHAPE, samples=16, isolated=False)


def test_patterns_that_match_select_the_layers():
    _, records = _run(f"{DEFAULT_PIPELINE},quantize<calib={CALIB};exclude=/features/features.0/*;"
                      "layer-bits=/classifier/*:4>")
    d = records[-1].details
    assert {"name": "/features/features.0/Conv", "op": "Conv", "reason": "excluded"} in d["skipped"]
    bits = {l["name"]: l["weight_bits"] for l in d["layers"]}
    assert bits == {LAYERS[1]: 8, LAYERS[2]: 8, LAYERS[3]: 4}


def test_the_ci_job_example_pattern_matches_a_layer():
    """examples/ci-job.yaml's mixed-precision candidate excludes the first conv by name: that
    name must be the one the pipeline sees."""
    job = gate.load_job(REPO / "examples" / "ci-job.yaml", output_dir="unused")
    (cand,) = [c for c in job.candidates if c.name == "mixed-precision"]
    _, records = _run(gate.expand_pipeline(cand.pipeline, job))
    (q,) = [r for r in records if r.name == "quantize"]
    d = q.details
    assert q.modified and not q.warnings
    assert [s["name"] for s in d["skipped"] if s["reason"] == "excluded"] == ["/features/features.0/Conv"]
    assert {l["weight_bits"] for l in d["layers"]} == {4}

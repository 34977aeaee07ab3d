"""prune's ``multiple`` from the target: compile fills it with the target's fp32 SIMD lanes when
the pipeline leaves it unset (optc.stages.fill_target_params, Pass.target_params), records it in
the package's pipeline, and an explicit value (``multiple=1`` included) is kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import optc
from optc import pipeline, stages
from optc.progress import SILENT
from optc.targets import get_target

from .conftest import make_onnx_model


def _two_convs(path) -> None:
    """Conv 3->32 (3x3) -> Relu -> Conv 32->4 (1x1): one prunable group of 32 channels."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 32, 1, 1)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    onnx.save(make_onnx_model(nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8]), str(path))


class _Backend:
    def __init__(self, facts):
        self.facts = facts

    def target_facts(self, target):
        return self.facts


def _fill(text: str, backend) -> str:
    specs = stages.fill_target_params(pipeline.parse_pipeline(text), get_target("cpu"), backend, SILENT)
    return pipeline.format_pipeline(specs)


def test_fill_only_what_the_pipeline_leaves_unset():
    backend = _Backend({"channel_multiple": 8})
    assert _fill("prune<ratio=0.3>", backend) == "prune<ratio=0.3;multiple=8>"
    assert _fill("prune<ratio=0.3;multiple=1>", backend) == "prune<ratio=0.3;multiple=1>"  # explicit: kept
    assert _fill("simplify,fuse-bn", backend) == "simplify,fuse-bn"
    assert _fill("prune<ratio=0.3>", _Backend({})) == "prune<ratio=0.3>"  # a backend without facts
    assert _fill("prune<ratio=0.3>", _Backend({})) == "prune<ratio=0.3>"


@pytest.mark.tvm
def test_compile_rounds_kept_channels_to_the_target_lanes(tmp_path):
    from optc.backends.tvm.facts import fp32_lanes

    lanes = fp32_lanes(get_target("cpu"))
    _two_convs(tmp_path / "m.onnx")
    opts = optc.CompileOptions.of(measure=False)
    rep = optc.compile(str(tmp_path / "m.onnx"), "cpu", str(tmp_path / "a.optc"), passes="prune<ratio=0.3>",
                       options=opts)
    prune = next(p for p in rep["passes"] if p["name"] == "prune")
    [group] = [g for g in prune["details"]["groups"] if g["channels"] == 32]
    assert f"multiple={lanes}" in rep["pipeline"] and prune["details"]["multiple"] == lanes
    # the multiple of the lanes nearest to 32 * 0.7 = 22.4: 24 on AVX2 (8 lanes), 16 on AVX-512
    assert group["kept"] % lanes == 0 and group["kept"] == max(lanes, int(22.4 / lanes + 0.5) * lanes)
    assert rep["verify"]["passed"]
    rep1 = optc.compile(str(tmp_path / "m.onnx"), "cpu", str(tmp_path / "b.optc"),
                        passes="prune<ratio=0.3;multiple=1>", options=opts)
    prune1 = next(p for p in rep1["passes"] if p["name"] == "prune")
    assert [g["kept"] for g in prune1["details"]["groups"] if g["channels"] == 32] == [23]
    assert "multiple=1>" in rep1["pipeline"]

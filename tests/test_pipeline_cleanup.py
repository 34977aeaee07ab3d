"""The cleanup prefix before compression passes (optc.pipeline.with_cleanup), and compression
passes that rewrite nothing: a warning in the pass record and through ``warnings`` (issue 17)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc import DEFAULT_PIPELINE
from optc.passes import optc_ops as ops
from optc.pipeline import PassWarning, _summary, format_pipeline, registered_passes, run_pipeline, with_cleanup
from tests.conftest import make_conv_model

CLEAN = DEFAULT_PIPELINE  # simplify,fold-constants,remove-identity,fuse-bn,batch-matmuls,dce
CLEAN_NO_BN = "simplify,fold-constants,remove-identity,batch-matmuls,dce"


@pytest.mark.parametrize("text, expected", [
    ("quantize<calib=c.npz>", f"{CLEAN},quantize<calib=c.npz>"),
    ("simplify,quantize<calib=c.npz>", f"{CLEAN},quantize<calib=c.npz>"),  # simplify is not repeated
    ("fuse-bn,prune<ratio=0.5>", "fuse-bn,simplify,fold-constants,remove-identity,batch-matmuls,dce,prune<ratio=0.5>"),
    ("prune<ratio=0.5>,quantize<calib=c.npz>", f"{CLEAN},prune<ratio=0.5>,quantize<calib=c.npz>"),
    # binarization folds BatchNorm into thresholds, bn-scale pruning reads the BatchNorms: no fuse-bn
    ("sign-to-threshold,binarize", f"{CLEAN_NO_BN},sign-to-threshold,binarize"),
    ("binarize,fuse-binary-threshold", f"{CLEAN_NO_BN},binarize,fuse-binary-threshold"),
    ("prune<ratio=0.5;criterion=bn-scale>", f"{CLEAN_NO_BN},prune<ratio=0.5;criterion=bn-scale>"),
    ("sparsify<sparsity=0.5>", f"{CLEAN},sparsify<sparsity=0.5>"),
    # nothing to compress, or already cleaned: as written
    ("dce", "dce"), ("", ""), (CLEAN, CLEAN), (f"{CLEAN},prune<ratio=0.3>", f"{CLEAN},prune<ratio=0.3>"),
])
def test_with_cleanup_inserts_the_default_passes_before_compression(text, expected):
    specs, added = with_cleanup(text)
    assert format_pipeline(specs) == expected
    written = {n.split("<")[0] for n in text.split(",")}
    assert {s.name for s in added} == {n.split("<")[0] for n in expected.split(",")} - written
    again, more = with_cleanup(format_pipeline(specs))  # a recorded pipeline replays unchanged
    assert format_pipeline(again) == expected and more == []
    explicit = format_pipeline(specs, explicit=True)
    assert format_pipeline(with_cleanup(explicit)[0], explicit=True) == explicit


def _ste_binary_mlp() -> onnx.ModelProto:
    """x -> Sign -> MatMul(W) -> y with W = Sign(W_latent) * alpha computed in the graph, as an
    STE-trained binary layer exports without constant folding: no constant binary weight
    exists until fold-constants runs."""
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((16, 4)).astype(np.float32)
    alpha = rng.uniform(0.1, 1.0, (1, 4)).astype(np.float32)
    nodes = [helper.make_node("Sign", ["x"], ["s"], name="sign_in"),
             helper.make_node("Sign", ["w_latent"], ["w_sign"], name="w_sign"),
             helper.make_node("Mul", ["w_sign", "alpha"], ["w"], name="w_scale"),
             helper.make_node("MatMul", ["s", "w"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "ste", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                          [numpy_helper.from_array(latent, "w_latent"), numpy_helper.from_array(alpha, "alpha")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def test_binarize_without_cleanup_warns_and_the_prefix_fixes_it():
    model = _ste_binary_mlp()
    with pytest.warns(PassWarning, match=r"binarize rewrote nothing .*fold-constants"):
        out, records = run_pipeline(ir.serde.deserialize_model(model), "binarize")
    (rec,) = records
    assert not rec.modified and rec.details["rewrites"] == 0
    assert len(rec.warnings) == 1 and rec.warnings[0].startswith("binarize rewrote nothing (skipped fc: ")
    assert "warnings" in rec.__dict__  # what report.json's "passes" records

    specs, _ = with_cleanup("binarize")
    assert format_pipeline(specs) == f"{CLEAN_NO_BN},binarize"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PassWarning)  # no warning now
        out, records = run_pipeline(ir.serde.deserialize_model(model), specs)
    assert records[-1].modified and records[-1].details["rewrites"] == 1 and records[-1].warnings == []
    proto = ir.serde.serialize_model(out)
    assert ("ai.optc", "BinaryDense") in [(n.domain, n.op_type) for n in proto.graph.node]
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ops.reference_evaluator(proto).run(None, {"x": x})
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5)


@pytest.mark.parametrize("text, why", [
    ("prune<ratio=0.0>", "ratio is 0"),
    ("prune<ratio=0.5;exclude=conv>", "every prunable channel group is excluded"),
    ("prune-zero", "no channel is exactly constant"),
    ("sparsify<sparsity=0.0>", "no weight was zeroed"),
    ("quantize<calib=unused.npz;ops=MatMul>", "no quantizable layer"),
    ("sign-to-threshold", "rewrote nothing"),
])
def test_compression_passes_that_rewrite_nothing_say_so(text, why):
    model = ir.serde.deserialize_model(make_conv_model())
    with pytest.warns(PassWarning) as caught:
        _, records = run_pipeline(model, f"{CLEAN},{text}")
    assert not records[-1].modified
    (msg,) = records[-1].warnings
    assert msg.startswith(f"{text} rewrote nothing") and why in msg
    assert "no cleanup pass ran" not in msg  # the cleanup did run
    assert [str(w.message) for w in caught] == [msg]
    # cleanup passes that find nothing to do are not compression: no warning
    _, records = run_pipeline(ir.serde.deserialize_model(make_conv_model(with_bn=False)), "fuse-bn")
    assert not records[0].modified and records[0].warnings == []


def test_summaries_are_whole_first_paragraphs():
    for name, cls in registered_passes().items():
        first = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        assert _summary(cls) == first and "\n" not in first, name
    assert _summary(registered_passes()["fuse-binary-threshold"]).endswith("(FINN's MVTU with thresholds).")

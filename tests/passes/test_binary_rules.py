"""The binarization passes' onnxscript rewrite rules (``optc.passes.binary_rules``): each
check refuses what it must and says why, a BatchNormalization that something else still reads
stays, and the matched nodes go only where nothing reads them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from optc.passes import binary_rules

from .test_binarize import ATOL, _apply, _bn, _model, _ops, _ort, _ref, _vi, bnn_pool_cnn


def _bn_sign(rng, *, params_input=False, training=False, zero_channel=False, extra_reader=False):
    """x -> BatchNormalization -> Sign -> y (variants: a parameter fed by a graph input, a
    training-mode BN whose running mean is read, a channel with gamma = beta = 0, the BN output
    read by a second node)."""
    c, inits = 6, {}
    names = _bn(rng, "bn", c, inits, negative=True)
    if zero_channel:
        inits["bn_g"][1], inits["bn_b"][1] = 0.0, 0.0
    inputs, outputs = [_vi("x", [2, c])], [_vi("y", [2, c])]
    if params_input:
        inputs.append(_vi("bn_m", [c]))
        inits.pop("bn_m")
    bn_outs = ["n"] + (["rm", "rv"] if training else [])
    nodes = [helper.make_node("BatchNormalization", ["x", *names], bn_outs, name="bn", **({"training_mode": 1} if training else {})),
             helper.make_node("Sign", ["n"], ["y"], name="sign")]
    if training:  # the running mean is read by a node (a graph output alone is not a use)
        nodes.append(helper.make_node("Neg", ["rm"], ["rm_neg"], name="neg"))
        outputs.append(_vi("rm_neg", [c]))
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["n"], ["r"], name="relu"))
        outputs.append(_vi("r", [2, c]))
    feeds = {"x": rng.standard_normal((2, c)).astype(np.float32)}
    if params_input:
        feeds["bn_m"] = rng.standard_normal(c).astype(np.float32)
    return _model(nodes, inputs, outputs, inits), feeds


@pytest.mark.parametrize("variant, reason", [
    ({"params_input": True}, "bn: parameters are not constant"),
    ({"training": True}, "bn: training-mode BatchNormalization"),
    ({"zero_channel": True}, "bn: channel 1 has gamma = beta = 0 (Sign is 0 there)"),
])
def test_sign_to_threshold_refuses_and_says_why(variant, reason):
    m, _ = _bn_sign(np.random.default_rng(0), **variant)
    with pytest.warns(UserWarning, match="rewrote nothing"):
        out, rec = _apply(m, "sign-to-threshold")
    assert not rec.modified and rec.details == {"rewrites": 0, "skipped": [reason]}
    assert _ops(out) == _ops(m)


def test_sign_to_threshold_keeps_a_batchnorm_read_elsewhere():
    m, feeds = _bn_sign(np.random.default_rng(1), extra_reader=True)
    out, rec = _apply(m, "sign-to-threshold")
    assert rec.details["rewrites"] == 1
    assert sorted(op for _, op in _ops(out)) == ["BatchNormalization", "Relu", "SignThreshold"]
    for got, want in zip(_ref(out, feeds), _ort(m, feeds)):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_fuse_binary_threshold_refuses_non_constant_thresholds():
    m, feeds = bnn_pool_cnn()
    m2, _ = _apply(m, "sign-to-threshold,binarize")
    # make conv1's integer thresholds a graph input: the rule must not fuse what it cannot read
    conv1 = next(n for n in m2.graph.node if n.op_type == "BinaryConv2d" and n.name.startswith("conv1"))
    thr = next(n for n in m2.graph.node if n.op_type == "SignThreshold" and n.input[0] == conv1.output[0])
    init = next(t for t in m2.graph.initializer if t.name == thr.input[1])
    m2.graph.initializer.remove(init)
    m2.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    m3, rec = _apply(m2, "fuse-binary-threshold")
    assert rec.details["rewrites"] == 1 and rec.details["with_pool"] == 0
    assert any(s.startswith("conv1") and "thresholds are not constant" in s for s in rec.details["skipped"])
    assert ("", "MaxPool") in _ops(m3) and ("ai.optc", "BinaryConv2d") in _ops(m3)


def test_rules_are_onnxscript_rewrite_rules():
    from onnxscript.rewriter import RewriteRule, RewriteRuleSet

    for rules in (binary_rules.sign_to_threshold_rules([], []), binary_rules.conv_threshold_rules([])):
        assert isinstance(rules, RewriteRuleSet) and all(isinstance(r, RewriteRule) for r in rules)
        # each rule removes what it matched: no whole-graph clean-up behind the pass's back
        assert all(r.remove_nodes for r in rules) and not rules.remove_unused_nodes


def test_a_pass_that_matches_nothing_leaves_the_graph_alone():
    """Sign of a Relu (no BatchNormalization) and a dead node: nothing is rewritten or removed."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Sign", ["r"], ["y"], name="sign"),
             helper.make_node("Neg", ["x"], ["unused"], name="dead")]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], {"spare": np.ones(3, np.float32)})
    for text in ("sign-to-threshold", "fuse-binary-threshold"):
        with pytest.warns(UserWarning) if text == "sign-to-threshold" else _no_warning():
            out, rec = _apply(m, text)
        assert not rec.modified and _ops(out) == _ops(m)
        assert [t.name for t in out.graph.initializer] == ["spare"]


def _no_warning():
    import contextlib

    return contextlib.nullcontext()

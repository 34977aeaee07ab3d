"""Learned channel gates (optc.train.gates, ``optc prune-train``) and label-free
``prune-finetune``, on a tiny CNN with a residual Add (a few seconds each):

* the FLOPs model is exact: the plan's ratio for 0/1 gates equals the measured FLOPs ratio of
  the exported model, and residual-tied channels share one gate and go together;
* the exported model (gates folded, prune-zero) computes what the gated torch model computes,
  fractional gates included;
* training drives the gates to 0/1 and honours the FLOPs target; seeded runs are identical;
* prune-finetune distils from the original when the training data has no labels;
* bad inputs are named errors; a weight of the wrong shape is refused as an optc bug.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from optc.cli import main  # noqa: E402
from optc.errors import InternalError, InvalidModelError, UnsupportedModelError, UsageError  # noqa: E402
from optc.train import TrainConfig  # noqa: E402
from optc.train.distill import teacher_outputs  # noqa: E402
from optc.train.finetune import Evaluation, finetune, onnx_to_torch, prune_finetune  # noqa: E402
from optc.train.gates import (GateConfig, GatedModel, export_pruned, final_gates, plan_gates,  # noqa: E402
                              prune_train, train_gates, write_weights)
from optc.verify import reference_outputs  # noqa: E402


def _conv_bn(name, cin, cout, x, rng, nodes, inits):
    w = rng.normal(0, 0.5, (cout, cin, 3, 3)).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}.w"),
              numpy_helper.from_array(rng.uniform(0.5, 1.5, cout).astype(np.float32), f"{name}.g"),
              numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b"),
              numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.m"),
              numpy_helper.from_array(rng.uniform(0.5, 1.5, cout).astype(np.float32), f"{name}.v")]
    nodes += [helper.make_node("Conv", [x, f"{name}.w"], [f"{name}_c"], name=f"{name}", pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", [f"{name}_c", f"{name}.g", f"{name}.b", f"{name}.m",
                                                      f"{name}.v"], [f"{name}_bn"], name=f"{name}_bn")]
    return f"{name}_bn"


def tiny_residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """input [N,1,6,6] -> convA+BN -> Relu -> convB+BN -> Add(residual with Relu(A)) -> Relu ->
    convC+BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm (3 classes). Groups: {A, B} tied by
    the Add (4 channels), {C} (6 channels); the Gemm's output is the graph output (frozen)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    a = _conv_bn("A", 1, 4, "input", rng, nodes, inits)
    nodes.append(helper.make_node("Relu", [a], ["A_r"], name="A_relu"))
    b = _conv_bn("B", 4, 4, "A_r", rng, nodes, inits)
    nodes += [helper.make_node("Add", [b, "A_r"], ["res"], name="res_add"),
              helper.make_node("Relu", ["res"], ["res_r"], name="res_relu")]
    c = _conv_bn("C", 4, 6, "res_r", rng, nodes, inits)
    nodes += [helper.make_node("Relu", [c], ["C_r"], name="C_relu"),
              helper.make_node("GlobalAveragePool", ["C_r"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    inits += [numpy_helper.from_array(rng.normal(0, 1, (3, 6)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(3, np.float32), "fc.b")]
    graph = helper.make_graph(nodes, "tiny_res",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _data(n: int = 128, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 6, 6)).astype(np.float32)


def _flops(proto) -> int:
    import onnx_ir as ir

    from optc.passes.prune import model_costs

    return model_costs(ir.serde.deserialize_model(proto))["flops"]


def _set_log_alpha(gated, values):
    with torch.no_grad():
        for p, v in zip(gated.log_alpha, values):
            p.copy_(torch.as_tensor(v, dtype=torch.float32))


def _ort(proto, x):
    return reference_outputs(proto, {"input": x})[0]


def test_plan_ties_residual_channels_and_counts_flops_exactly():
    model = tiny_residual_cnn()
    plan = plan_gates(model)
    assert [(g.channels, len(g.points)) for g in plan.groups] == [(4, 2), (6, 1)]  # {A, B} share a gate
    assert plan.groups[0].points == ["A_bn", "B_bn"]  # after the BatchNorm that follows each conv
    assert [f["name"] for f in plan.frozen] == ["fc"]  # the graph output's layer is never gated
    assert plan.ratio({}) == pytest.approx(1.0)
    gated = GatedModel(plan)
    # close channel 1 of the residual group and channels 0, 2, 5 of C: large |log_alpha| gives exact 0/1
    _set_log_alpha(gated, [[9, -9, 9, 9], [-9, 9, -9, 9, 9, -9]])
    gates, stats = final_gates(gated, target=1.0)
    assert stats["fraction_zero"] == 0.4 and stats["fraction_one"] == 0.6 and stats["closed_to_reach_target"] == 0
    pruned, details = export_pruned(gated, gates)
    assert details["channels_removed"] == 1 + 3  # channel 1 of the tied group {A, B}, 3 of C
    rows = {r["name"]: r["kept"] for r in details["groups"]}
    assert rows == {"A": 3, "C": 3, "fc": 3}
    shapes = {i.name: tuple(i.dims) for i in pruned.graph.initializer}
    assert shapes["A.w"] == (3, 1, 3, 3) and shapes["B.w"] == (3, 3, 3, 3) and shapes["C.w"] == (3, 3, 3, 3)
    assert shapes["fc.w"] == (3, 3)
    # the plan's FLOPs model gives the measured ratio of the exported model
    assert plan.ratio({g.gid: (v > 0).astype(float) for g, v in zip(plan.groups, gates.values())}) == \
        pytest.approx(_flops(pruned) / _flops(model), rel=1e-9)
    assert stats["flops_ratio_gates"] == pytest.approx(_flops(pruned) / _flops(model), rel=1e-9)


def test_export_matches_gated_model_with_fractional_gates():
    model = tiny_residual_cnn()
    gated = GatedModel(plan_gates(model))
    _set_log_alpha(gated, [[0.3, -9, -1.0, 2.0], [-9, 0.1, 0.5, -9, 1.5, -0.5]])
    gates, stats = final_gates(gated, target=1.0)
    assert 0 < stats["fraction_between"] < 1  # some gates strictly between 0 and 1: folded as scales
    pruned, _ = export_pruned(gated, gates)
    assert not any(n.op_type == "Mul" for n in pruned.graph.node)  # every gate folded into the weights
    x = _data(16)
    with torch.no_grad():
        want = gated.eval()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(_ort(pruned, x), want, rtol=1e-5, atol=1e-5)
    assert _flops(pruned) < _flops(model)


def _with_important_channels(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny CNN with conv C's channels 0-2 made important (classifier weights x5) and 3-5
    nearly irrelevant (x0.01)."""
    for init in model.graph.initializer:
        if init.name == "fc.w":
            w = numpy_helper.to_array(init).copy()
            w[:, :3] *= 5
            w[:, 3:] *= 0.01
            init.CopyFrom(numpy_helper.from_array(w, "fc.w"))
    return model


def _train(model, target, seed=0, epochs=15):
    from optc.train.distill import Distillation

    x = _data()
    teacher = onnx_to_torch(model)
    t_out = teacher_outputs(teacher, x)
    gated = GatedModel(plan_gates(model))
    gate_config = GateConfig(target, gate_lr=0.1, warmup=0.2, distill=Distillation(kinds=("mse",)))
    res = train_gates(gated, x, t_out, gate_config, TrainConfig(epochs=epochs, lr=3e-3, batch_size=16, seed=seed))
    return gated, res


def test_training_moves_gates_to_the_target_and_keeps_important_channels():
    model = _with_important_channels(tiny_residual_cnn())
    target = 0.74  # keeping the residual group and half of C is 0.73
    gated, res = _train(model, target)
    assert res["expected_flops"][0] > res["expected_flops"][-1] and res["expected_flops"][-1] <= target + 0.05
    gates, stats = final_gates(gated, target)
    c = gates[gated.plan.groups[1].gid]
    assert c[0] == 1.0  # the most important channel stays fully open
    assert stats["flops_ratio_gates"] <= target
    pruned, _ = export_pruned(gated, gates)
    assert _flops(pruned) / _flops(model) == pytest.approx(stats["flops_ratio_gates"])
    x = _data(32, seed=5)
    with torch.no_grad():
        want = gated.eval()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(_ort(pruned, x), want, rtol=1e-5, atol=1e-5)
    assert sum(int(np.prod(i.dims)) for i in pruned.graph.initializer) < \
        sum(int(np.prod(i.dims)) for i in model.graph.initializer)


@pytest.mark.slow  # ~20-70 s (30 epochs on 1257 digits)
def test_digits_gates_converge_to_binary_and_meet_the_target(tmp_path):
    pytest.importorskip("sklearn")
    from optc.models.digits import load_digits_split
    from tests.conftest import MODELS

    x, y, _, _ = load_digits_split()
    np.savez(tmp_path / "train.npz", input=x, label=y)
    rep = prune_train(MODELS / "digits_cnn.onnx", tmp_path / "train.npz", tmp_path / "out.onnx",
                      gates=GateConfig(0.4), config=TrainConfig(epochs=30, lr=3e-3),
                      evaluation=Evaluation(MODELS / "digits_eval.npz"))
    g = rep["gates"]
    assert g["fraction_zero"] + g["fraction_one"] >= 0.9  # the gates end (almost all) exactly 0 or 1
    assert g["closed_to_reach_target"] <= 3  # the penalty, not the final projection, met the target
    assert rep["flops_ratio"] <= 0.4 and rep["drop_points"] <= 1.0


def test_seeded_training_is_reproducible():
    model = tiny_residual_cnn()
    a, ra = _train(model, 0.5, seed=3, epochs=3)
    b, rb = _train(model, 0.5, seed=3, epochs=3)
    c, _ = _train(model, 0.5, seed=4, epochs=3)
    assert ra["history"] == rb["history"]
    for pa, pb in zip(list(a.parameters()), list(b.parameters())):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.log_alpha, c.log_alpha))


def test_prune_train_cli_report(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(tiny_residual_cnn(), model)
    x = _data()
    labels = _ort(onnx.load(model), x).argmax(1)
    np.savez(tmp_path / "train.npz", input=x)  # no labels: pure distillation
    np.savez(tmp_path / "eval.npz", input=x[:64], label=labels[:64])
    out = tmp_path / "out.onnx"
    rc = main(["prune-train", str(model), "--data", str(tmp_path / "train.npz"), "--target-flops", "0.5",
               "-o", str(out), "--eval", str(tmp_path / "eval.npz"), "--epochs", "4", "--gate-lr", "0.3",
               "--batch-size", "32", "--finetune-epochs", "1", "--multiple", "1", "--json", "-q"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.exists()
    assert rep["training"]["recipe"]["labels"] is False and rep["training"]["recipe"]["samples"] == 128
    assert rep["pruned"]["flops"] <= 0.5 * rep["original"]["flops"] and rep["flops_ratio"] <= 0.5
    assert rep["finetuned"]["flops"] == rep["pruned"]["flops"] and "top1" in rep["finetuned"]
    assert 0 <= rep["gates"]["fraction_zero"] <= 1 and "fraction_one" in rep["gates"]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    # an impossible accuracy budget: exit code 6, the model is written anyway
    rc = main(["prune-train", str(model), "--data", str(tmp_path / "train.npz"), "--target-flops", "0.3",
               "-o", str(out), "-f", "--eval", str(tmp_path / "eval.npz"), "--epochs", "1", "-q",
               "--multiple", "2", "--max-accuracy-drop", "-1"])
    cap = capsys.readouterr()
    assert rc == 6 and "budget" in cap.err
    assert "rounded to multiples of 2" in cap.out and "FLOPs:" in cap.out


def test_bad_inputs_are_named_errors(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(tiny_residual_cnn(), model)
    np.savez(tmp_path / "train.npz", input=_data(16))
    np.savez(tmp_path / "wrong.npz", pixels=_data(16))
    args = ["prune-train", str(model), "--data", str(tmp_path / "train.npz"), "-o", str(tmp_path / "o.onnx"), "-q"]
    assert main(args + ["--target-flops", "0"]) == UsageError.exit_code
    assert main(args + ["--target-flops", "1.5"]) == UsageError.exit_code
    assert "target FLOPs" in capsys.readouterr().err
    with pytest.raises(InvalidModelError, match="needs an array"):
        prune_train(model, tmp_path / "wrong.npz", tmp_path / "o.onnx", gates=GateConfig(0.5))
    np.savez(tmp_path / "shape.npz", input=np.zeros((4, 1, 5, 5), np.float32))
    with pytest.raises(InvalidModelError, match="do not fit the model input"):
        prune_train(model, tmp_path / "shape.npz", tmp_path / "o.onnx", gates=GateConfig(0.5))
    assert main(args + ["--target-flops", "0.5", "--label-weight", "2"]) == UsageError.exit_code
    with pytest.raises(InvalidModelError, match="no such file"):
        prune_train(model, tmp_path / "missing.npz", tmp_path / "o.onnx", gates=GateConfig(0.5))
    (tmp_path / "exists.onnx").write_bytes(b"")
    with pytest.raises(UsageError, match="already exists"):
        prune_train(model, tmp_path / "train.npz", tmp_path / "exists.onnx", gates=GateConfig(0.5))
    # nothing to gate: a single Gemm whose output is the graph output
    g = helper.make_graph([helper.make_node("Gemm", ["input", "w"], ["y"], name="fc")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    with pytest.raises(UnsupportedModelError, match="no prunable channel group"):
        plan_gates(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_weight_of_the_wrong_shape_is_refused():
    model = tiny_residual_cnn()
    module = onnx_to_torch(model)
    module.register_parameter(module._attr_of["C.w"], torch.nn.Parameter(torch.zeros(5, 4, 3, 3)))
    with pytest.raises(InternalError, match="C.w"):
        write_weights(model, module)


def test_prune_finetune_without_labels_distils_from_the_original(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(tiny_residual_cnn(), model)
    x = _data()
    labels = _ort(onnx.load(model), x).argmax(1)
    np.savez(tmp_path / "train.npz", input=x)
    np.savez(tmp_path / "eval.npz", input=x[:64], label=labels[:64])
    rep = prune_finetune(model, "prune<ratio=0.5>", tmp_path / "train.npz", tmp_path / "out.onnx",
                         evaluation=Evaluation(tmp_path / "eval.npz"),
                         config=TrainConfig(epochs=3, lr=3e-3, batch_size=32))
    assert rep["finetune"]["labels"] is False and "distillation" in rep["finetune"]["optimizer"]
    assert rep["finetuned"]["flops"] == rep["pruned"]["flops"] < rep["original"]["flops"]
    assert rep["finetuned"]["top1"] >= rep["pruned"]["top1"] - 5  # it trains toward the original
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    # without labels and without a teacher there is nothing to train on
    with pytest.raises(InvalidModelError, match="no labels"):
        finetune(model, tmp_path / "train.npz", tmp_path / "o2.onnx", config=TrainConfig(epochs=1))


def test_multiple_rounds_kept_channels_within_the_target():
    model = tiny_residual_cnn()
    alphas = [[3, -4, 2, -1], [5, 4, -3, 3, -5, 1]]  # open: 3 of the tied group, 4 of C
    gated = GatedModel(plan_gates(model))
    _set_log_alpha(gated, alphas)
    gates, stats = final_gates(gated, target=0.9, multiple=2)
    assert [g["kept"] for g in stats["groups"]] == [4, 4] and stats["opened_for_multiple"] == 1  # 3 -> 4
    assert gates[gated.plan.groups[0].gid][1] == 1.0  # the reopened gate is fully open
    pruned, _ = export_pruned(gated, gates)
    x = _data(8)
    with torch.no_grad():
        want = gated.eval()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(_ort(pruned, x), want, rtol=1e-5, atol=1e-5)
    assert _flops(pruned) / _flops(model) == pytest.approx(stats["flops_ratio_gates"])
    # a tighter target takes whole multiples away, where they cost the least keep probability
    gated = GatedModel(plan_gates(model))
    _set_log_alpha(gated, alphas)
    _, stats = final_gates(gated, target=0.6, multiple=2)
    assert [g["kept"] for g in stats["groups"]] == [2, 4] and stats["flops_ratio_gates"] <= 0.6


def test_default_multiple_is_the_targets_simd_width():
    """prune-train / prune-scan round kept channels like `optc compile` rounds `prune`: to the
    target's fp32 lanes unless --multiple says otherwise."""
    import argparse

    from optc.backends.tvm.facts import fp32_lanes
    from optc.cli_prune import _multiple
    from optc.targets import get_target

    assert _multiple(argparse.Namespace(multiple=None, target="cpu")) == fp32_lanes(get_target("cpu"))
    assert _multiple(argparse.Namespace(multiple=None, target="arm")) == 4
    assert _multiple(argparse.Namespace(multiple=3, target="cpu")) == 3

"""Quantization-aware training (``optc qat``, :mod:`optc.train.qat`): a tiny torch-built CNN
(conv-BN-relu-maxpool-conv-relu-mean-linear, one conv channel scaled up 20x so that post-training
quantization has a gap) trained for a few steps without labels."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

import optc  # noqa: E402
from optc.cli import main  # noqa: E402
from optc.errors import InvalidModelError, UsageError, VerificationError  # noqa: E402
from optc.passes.quant.integerize import integerize_model  # noqa: E402
from optc.train import TrainConfig  # noqa: E402
from optc.train import qat as Q  # noqa: E402
from optc.train.distill import (KL, KL_PROBS, MSE, MSE_PROBS, distillation_loss, loss_kind,  # noqa: E402
                                resolve_kinds)
from optc.train.finetune import onnx_to_torch  # noqa: E402
from optc.verify import ort_session  # noqa: E402

OPTIONS = Q.QatOptions(train=TrainConfig(epochs=3, lr=3e-3, batch_size=16), force=True)


def _tiny_net() -> "torch.nn.Module":
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.b1 = torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
            return self.fc(torch.relu(self.c2(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.b1.running_mean.uniform_(-0.5, 0.5)
        net.b1.running_var.uniform_(0.5, 2.0)
        net.c2.weight[0] *= 20  # one outlier channel: coarse steps for the others after PTQ
    return net


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model path, data path, QAT output path, report) of one QAT run shared by the tests."""
    from optc.train.export import export_torch

    d = tmp_path_factory.mktemp("qat")
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    export_torch(_tiny_net(), (torch.from_numpy(x[:1]),), d / "tiny.onnx", input_names=["x"], output_names=["y"])
    np.savez(d / "data.npz", x=x, label=np.random.default_rng(1).integers(0, 10, 64))
    rep = Q.qat(d / "tiny.onnx", d / "data.npz", d / "qat.onnx", options=OPTIONS)
    return d / "tiny.onnx", d / "data.npz", d / "qat.onnx", rep


def _ptq(model_path, data_path):
    x = np.load(data_path)["x"]
    fp = Q.prepare_float(onnx.load(str(model_path)), x.shape[1:])
    return fp, Q.post_training_quantize(fp, x)[0], x


# ----------------------------------------------------------------------------- the output
def test_output_is_optcs_qdq_graph_and_onnxruntime_runs_it(tiny):
    model_path, data_path, out, rep = tiny
    qat_model = onnx.load(str(out))
    onnx.checker.check_model(qat_model, full_check=True)
    _, ptq, x = _ptq(model_path, data_path)
    assert [(n.op_type, list(n.input)) for n in qat_model.graph.node] == \
        [(n.op_type, list(n.input)) for n in ptq.graph.node]  # node for node what quantize wrote
    inits = {t.name: numpy_helper.to_array(t) for t in qat_model.graph.initializer}
    changed = [k for k, v in inits.items() if not np.array_equal(v, numpy_helper.to_array(
        next(t for t in ptq.graph.initializer if t.name == k)))]
    assert any(k.endswith("__scale") for k in changed) and any(k.endswith("__q") for k in changed)
    y = ort_session(qat_model).run(None, {"x": x[:1]})[0]
    assert y.shape == (1, 10) and np.all(np.isfinite(y))
    _, det = integerize_model(qat_model)
    assert len(det["layers"]) == 3 and det["float_layers"] == []  # every layer an integer kernel
    assert rep["layers_int8"] == 3 and rep["export_check"]["top1_agreement"] >= 0.98


def test_report_records_recipe_and_before_after(tiny):
    *_, rep = tiny
    tr = rep["training"]
    assert tr["recipe"]["epochs"] == 3 and tr["recipe"]["samples"] == 64 and tr["recipe"]["seed"] == 0
    assert tr["recipe"]["loss"]["kinds"] == ["kl"] and not tr["recipe"]["labels"]
    assert [h["epoch"] for h in tr["history"]] == [0, 1, 2, 3] and all("fidelity" in h for h in tr["history"])
    assert tr["seconds"] > 0 and rep["eval"] == "the training inputs"
    for key in ("post_training", "qat"):
        assert set(rep[key]) >= {"samples", "top1_agreement", "sqnr_db"}


def test_qat_closes_part_of_the_post_training_gap(tiny):
    *_, rep = tiny
    before, after = rep["post_training"], rep["qat"]
    assert after["sqnr_db"]["y"] > before["sqnr_db"]["y"] + 0.5
    assert after["top1_agreement"] >= before["top1_agreement"]


def test_same_seed_same_bytes(tiny, tmp_path):
    model_path, data_path, *_ = tiny
    opts = Q.QatOptions(train=TrainConfig(epochs=1, lr=1e-2, batch_size=16, seed=3))
    Q.qat(model_path, data_path, tmp_path / "a.onnx", options=opts)
    Q.qat(model_path, data_path, tmp_path / "b.onnx", options=opts)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.tvm
def test_compile_integerizes_and_verifies(tiny, tmp_path):
    pytest.importorskip("tvm")
    _, data_path, out, _ = tiny
    report = optc.compile(out, "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["pipeline"].endswith("integerize")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "pkg" / "model.onnx")).graph.node]
    assert ops.count("IntConv2d") == 2 and ops.count("IntDense") == 1 and "Conv" not in ops
    assert report["verify"]["passed"]


# ----------------------------------------------------------------------------- refusals
def test_wrong_inputs_are_named_errors(tiny, tmp_path):
    model_path, data_path, out, _ = tiny
    x = np.load(data_path)["x"]
    np.savez(tmp_path / "nokey.npz", image=x)
    with pytest.raises(InvalidModelError, match="no array 'x'"):
        Q.qat(model_path, tmp_path / "nokey.npz", tmp_path / "o.onnx", options=OPTIONS)
    np.savez(tmp_path / "short.npz", x=x, label=np.zeros(10, np.int64))
    with pytest.raises(InvalidModelError, match="64 inputs but 10 labels"):
        Q.qat(model_path, tmp_path / "short.npz", tmp_path / "o.onnx",
              options=Q.QatOptions(labels_key="label"))
    with pytest.raises(InvalidModelError, match="no label array 'target'"):
        Q.qat(model_path, data_path, tmp_path / "o.onnx", options=Q.QatOptions(labels_key="target"))
    with pytest.raises(UsageError, match="already exists"):
        Q.qat(model_path, data_path, out, options=Q.QatOptions())
    with pytest.raises(UsageError, match="calib"):
        Q.qat(model_path, data_path, tmp_path / "o.onnx", options=Q.QatOptions(quant_params="calib=a.npz"))
    with pytest.raises(UsageError, match="no parameter"):
        Q.qat(model_path, data_path, tmp_path / "o.onnx", options=Q.QatOptions(quant_params="bogus=1"))
    assert not (tmp_path / "o.onnx").exists()


def _scale_of_first(model: onnx.ModelProto, op: str) -> str:
    return next(n.input[1] for n in model.graph.node if n.op_type == op)


def test_broken_outputs_are_refused(tiny):
    model_path, data_path, out, _ = tiny
    _, ptq, _ = _ptq(model_path, data_path)
    good = onnx.load(str(out))
    Q.check_export(good, ptq)  # the real output passes

    zeroed = onnx.load(str(out))  # an activation scale zeroed
    name = _scale_of_first(zeroed, "QuantizeLinear")
    t = next(t for t in zeroed.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), name))
    with pytest.raises(VerificationError, match="scale"):
        Q.check_export(zeroed, ptq)

    no_qdq = onnx.load(str(out))  # the first Q/DQ pair removed (its DQ reads the float tensor)
    q = next(n for n in no_qdq.graph.node if n.op_type == "QuantizeLinear")
    dq = next(n for n in no_qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    for n in no_qdq.graph.node:
        for k, i in enumerate(n.input):
            if i == dq.output[0]:
                n.input[k] = q.input[0]
    no_qdq.graph.node.remove(q)
    no_qdq.graph.node.remove(dq)
    with pytest.raises(VerificationError, match="nodes differ"):
        Q.check_export(no_qdq, ptq)

    off_grid = onnx.load(str(out))  # a bias scale that is no longer s_x * s_w
    inits = {t.name: t for t in off_grid.graph.initializer}
    b = next(inits[n.input[1]] for n in off_grid.graph.node if n.op_type == "DequantizeLinear"
             and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT32)
    b.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b) * 2, b.name))
    with pytest.raises(VerificationError, match="integer-kernel form"):
        Q.check_export(off_grid, ptq)


def test_torch_copy_must_match_onnxruntime(tiny):
    """The check that guards training and export refuses outputs that disagree."""
    model_path, data_path, *_ = tiny
    _, ptq, x = _ptq(model_path, data_path)
    ref = Q._run_ort(ptq, x[:16])
    assert Q.check_agreement(ref, ref, "same")["top1_agreement"] == 1.0
    shuffled = [-ref[0]]  # argmax -> argmin
    with pytest.raises(VerificationError, match="disagree"):
        Q.check_agreement(ref, shuffled, "disagree")


# ----------------------------------------------------------------------------- the parts
def test_fake_quant_in_torch_matches_onnxruntime_and_learns_lsq_steps(tiny):
    model_path, data_path, *_ = tiny
    _, ptq, x = _ptq(model_path, data_path)
    train_model, plan = Q.training_graph(ptq)
    assert len(plan.weights) == 3 and len(plan.biases) == 3 and plan.ties  # MaxPool output shares its input's scale
    student = onnx_to_torch(train_model, trainable=plan.trainable, rebatch=True)
    y_torch = Q._run_torch(student, x[:8])[0]
    y_ort = np.concatenate([ort_session(ptq).run(None, {"x": x[i:i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(y_torch, y_ort, rtol=0, atol=1e-4)  # same grid, batch of 8 on a batch-1 model
    # LSQ: d(fake_quant(x))/ds = round(x/s) - x/s inside the range, times 1/sqrt(N Qp)
    module = onnx_to_torch(_qdq_graph(), trainable=["s"])  # s = 0.1, int8 zero point 0
    module(torch.tensor([[0.26, -0.33, 50.0]])).sum().backward()
    g = 1 / np.sqrt(3 * 127)  # N = 3 values per sample, Qp = 127
    expected = ((np.round(2.6) - 2.6) + (np.round(-3.3) + 3.3) + 127) * g  # 50 saturates at 127
    assert module.s.grad.item() == pytest.approx(expected, rel=1e-5)


def _qdq_graph() -> onnx.ModelProto:
    h = onnx.helper
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    g = h.make_graph(nodes, "qdq", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                     [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_bias_quantizer_trains_the_bias_not_the_scales():
    """``DQ(Q(b, s_x * s_w))`` with int32 codes (a training-graph form; onnxruntime quantizes
    to int32 from opset 21 only): the bias lands on the grid, the straight-through gradient
    reaches it; the step sizes get none through it (they learn from their own quantizers)."""
    h = onnx.helper
    nodes = [h.make_node("Mul", ["sx", "sw"], ["g"]), h.make_node("QuantizeLinear", ["b", "g", "z"], ["q"], axis=0),
             h.make_node("DequantizeLinear", ["q", "g", "z"], ["bq"], axis=0), h.make_node("Add", ["x", "bq"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(0.1), "sx"), numpy_helper.from_array(np.array([0.01, 0.02], np.float32), "sw"),
             numpy_helper.from_array(np.array([0.01234, -0.5678], np.float32), "b"),
             numpy_helper.from_array(np.zeros(2, np.int32), "z")]
    g = h.make_graph(nodes, "bias", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    module = onnx_to_torch(m, trainable=["sx", "sw", "b"])
    x = np.zeros((1, 2), np.float32)
    y = module(torch.from_numpy(x))
    grid = np.float32(0.1) * np.array([0.01, 0.02], np.float32)  # float32, as export_qdq writes the int32 codes
    expected = np.rint(np.array([0.01234, -0.5678], np.float32) / grid) * grid
    np.testing.assert_array_equal(y.detach().numpy()[0], expected)
    y.sum().backward()
    assert module.sx.grad is None and module.sw.grad is None
    np.testing.assert_array_equal(module.b.grad.numpy(), [1.0, 1.0])


def test_new_interpreter_ops_match_onnxruntime():
    h = onnx.helper
    nodes = [h.make_node("Slice", ["x", "st", "en", "ax"], ["a"]),
             h.make_node("ReduceMean", ["a"], ["m"], axes=[-1]),
             h.make_node("Sqrt", ["m"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("st", [1, -3]), ("en", [3, 1 << 62]), ("ax", [1, 2]))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 5])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    x = np.random.default_rng(0).uniform(0.1, 2, (2, 4, 5)).astype(np.float32)
    with torch.no_grad():
        y = onnx_to_torch(m)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ort_session(m).run(None, {"x": x})[0], rtol=1e-6)


def test_class_probabilities_use_kl_on_log_probabilities():
    logits = torch.randn(6, 5)
    p = torch.softmax(logits, -1).numpy()
    assert loss_kind(p) == KL_PROBS and loss_kind(logits.numpy()) == KL
    same = distillation_loss([torch.from_numpy(p)], [torch.from_numpy(p)], [KL_PROBS])
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    other = distillation_loss([torch.softmax(logits * 0.5, -1)], [torch.from_numpy(p)], [KL_PROBS])
    assert float(other) > 0.01


def test_sequence_scores_use_mse_on_probabilities_kl_on_request():
    """Per-step class scores (a CTC recognizer, [N, T, C]) default to MSE on the probabilities:
    the values themselves for a softmax output, softmax first for log-probabilities; a forced
    kind applies to every output and turns into its probability form on softmax outputs; an
    unknown kind is refused by name."""
    logits = torch.randn(4, 7, 5)
    p, logp = torch.softmax(logits, -1).numpy(), torch.log_softmax(logits, -1).numpy()
    assert loss_kind(p) == MSE and loss_kind(logp) == MSE_PROBS
    assert resolve_kinds(None, [p, logp]) == [MSE, MSE_PROBS]
    assert resolve_kinds(("kl",), [p, logp]) == [KL_PROBS, KL]
    assert resolve_kinds(("mse-probs",), [p]) == [MSE]
    t = torch.from_numpy(logp)
    assert float(distillation_loss([t], [t], [MSE_PROBS])) == pytest.approx(0.0, abs=1e-9)
    moved = torch.log_softmax(logits * 0.5, -1)
    expected = torch.mean((moved.softmax(-1) - t.softmax(-1)) ** 2) / 0.5
    assert float(distillation_loss([moved], [t], [MSE_PROBS], scales=[0.5])) == pytest.approx(float(expected))
    with pytest.raises(UsageError, match="unknown distillation loss 'l2'.*kl, kl-probs, mse, mse-probs"):
        resolve_kinds(("l2",), [p])
    with pytest.raises(UsageError, match="2 loss kinds for 1 outputs"):
        resolve_kinds(("kl", "mse"), [p])


# ----------------------------------------------------------------------------- CLI
def test_cli_qat(tiny, tmp_path, capsys):
    model_path, data_path, *_ = tiny
    out, report = tmp_path / "cli.onnx", tmp_path / "rep.json"
    rc = main(["qat", str(model_path), "--data", str(data_path), "-o", str(out), "--epochs", "1",
               "--batch-size", "16", "--report", str(report), "-q"])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "post-training:" in text and "QAT:" in text
    assert json.loads(report.read_text())["training"]["recipe"]["epochs"] == 1
    assert main(["qat", str(model_path), "--data", str(data_path), "-o", str(out), "-q"]) == 2  # exists
    assert main(["qat", str(model_path), "--data", str(data_path), "-o", str(tmp_path / "x.onnx"),
                 "--labels-key", "nope", "-q"]) == 2


def test_dead_channels_get_live_scales_and_stay_integer(tmp_path):
    """A conv channel of ~1e-40 weights: its own scale (~1e-42) would need a requantization
    multiplier integer kernels cannot hold; both post-training quantization
    (``qparams.weight_qparams``) and QAT give it the layer's median scale (its codes are 0), so
    every layer becomes an integer kernel."""
    from optc.train.export import export_torch

    net = _tiny_net()
    with torch.no_grad():
        net.c2.weight[1] = 1e-40
    x = np.random.default_rng(0).normal(size=(32, 1, 8, 8)).astype(np.float32)
    export_torch(net, (torch.from_numpy(x[:1]),), tmp_path / "dead.onnx", input_names=["x"], output_names=["y"])
    np.savez(tmp_path / "d.npz", x=x)
    Q.qat(tmp_path / "dead.onnx", tmp_path / "d.npz", tmp_path / "q.onnx",
          options=Q.QatOptions(train=TrainConfig(epochs=1, batch_size=16)))
    _, ptq, _ = _ptq(tmp_path / "dead.onnx", tmp_path / "d.npz")
    before = {f["name"] for f in integerize_model(ptq)[1]["float_layers"]}
    after = integerize_model(onnx.load(str(tmp_path / "q.onnx")))[1]
    assert before == set() and after["float_layers"] == [] and len(after["layers"]) == 3


def _weight_units(train_model: onnx.ModelProto, plan) -> dict[str, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in train_model.graph.initializer}
    return {n: inits[n] for n in plan.weights}


def test_latent_weights_start_at_the_float_weights_not_on_the_grid(tiny):
    """Latent weights start at the float weights the codes were rounded from (in step units:
    off the integer grid), so that updates of a few hundredths of a step flip codes; started on
    the codes, every weight sat half a step from a rounding boundary and no code ever changed."""
    model_path, data_path, *_ = tiny
    fp, ptq, x = _ptq(model_path, data_path)
    _, plan0 = Q.training_graph(ptq)  # no float model: on the codes
    train_model, plan = Q.training_graph(ptq, None, fp)
    on_codes = _weight_units(Q.training_graph(ptq)[0], plan0)
    latent = _weight_units(train_model, plan)
    for name, u in latent.items():
        assert np.allclose(on_codes[name], np.rint(on_codes[name]), rtol=0, atol=1e-4)
        assert np.mean(np.abs(u - np.rint(u)) > 1e-3) > 0.8  # off the grid (but each channel's largest weight, on 127)
        assert np.array_equal(np.rint(u), np.rint(on_codes[name]))  # ... and rounding to the same codes
    student = onnx_to_torch(train_model, trainable=plan.trainable, rebatch=True)
    y_ort = np.concatenate([ort_session(ptq).run(None, {"x": x[i:i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(Q._run_torch(student, x[:8])[0], y_ort, rtol=0, atol=1e-4)  # still the PTQ model


def test_a_float_weight_that_does_not_round_to_the_codes_is_not_used(tiny):
    """A float model whose weight does not quantize to the QDQ model's codes (not the model it
    was quantized from) is refused element by element: those latent weights start on the codes."""
    model_path, data_path, *_ = tiny
    fp, ptq, _ = _ptq(model_path, data_path)
    wrong = onnx.ModelProto.FromString(fp.SerializeToString())
    t = next(t for t in wrong.graph.initializer if t.dims and len(t.dims) == 4)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5 + 0.05, t.name))
    train_model, plan = Q.training_graph(ptq, None, wrong)
    u = next(v for k, v in _weight_units(train_model, plan).items() if k.startswith(t.name + "__q"))
    assert np.mean(np.abs(u - np.rint(u)) < 1e-4) > 0.5  # mostly back on the codes


def test_weight_updates_smaller_than_half_a_step_change_codes(tiny):
    """Weights alone trained (scales and biases fixed) for a few steps of at most 1e-2 of a step:
    codes change, because the latent weights keep their rounding residuals. (Started on the
    codes, none changed: every weight needed half a step of updates to reach a boundary.)"""
    from optc.train.distill import Distillation, fit, teacher_outputs

    model_path, data_path, *_ = tiny
    fp, ptq, x = _ptq(model_path, data_path)
    codes = {t.name: numpy_helper.to_array(t) for t in ptq.graph.initializer}
    for float_latents in (False, True):
        student, plan, teacher = Q._torch_models(ptq, None, fp, x, float_latents=float_latents)
        weights = {id(getattr(student, student._attr_of[n])) for n in plan.weights}
        groups = [g for g in Q.param_groups(student, plan, 1e-2) if id(g["params"][0]) in weights]
        assert len(groups) == 3
        fit(student, x, teacher_outputs(teacher, x), TrainConfig(epochs=2, lr=1e-2, batch_size=16),
            distill=Distillation(temperature=1.0), parameters=groups)
        exported = {t.name: numpy_helper.to_array(t) for t in Q.export_qdq(
            ptq, plan, Q.trained_values(student, plan)).graph.initializer}
        changed = sum(int(np.sum(exported[c] != codes[c])) for c, *_ in plan.weights.values())
        assert (changed > 0) == float_latents, changed


# ----------------------------------------------------------------------------- data and schedule


def test_teacher_in_batches_gives_the_same_targets(tiny):
    """The teacher runs a few samples at a time (a whole data set in one forward pass ran the
    recognizer out of memory); its targets equal those of one pass over all inputs."""
    from optc.train.distill import TEACHER_BATCH, teacher_outputs

    model_path, data_path, *_ = tiny
    fp, _, x = _ptq(model_path, data_path)
    teacher = onnx_to_torch(fp, rebatch=True)
    assert TEACHER_BATCH < len(x)
    whole = teacher_outputs(teacher, x, batch_size=len(x))
    for batch in (TEACHER_BATCH, 5):
        parts = teacher_outputs(teacher, x, batch_size=batch)
        assert [p.shape for p in parts] == [w.shape for w in whole]
        np.testing.assert_allclose(parts[0], whole[0], rtol=0, atol=1e-5)


def _linear_fit_setup(n: int = 32):
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    with torch.no_grad():
        t = teacher(torch.from_numpy(x)).numpy()
    return student, teacher, x, t


def test_fresh_data_per_epoch_is_used_from_the_second_epoch():
    """``epoch_data(k)`` gives epochs 1.. their own inputs and teacher outputs (epoch 0: ``x``);
    fresh data with labels, or of the wrong size, is refused by name."""
    from optc.train.distill import FitHooks, fit, teacher_outputs

    student, teacher, x, t = _linear_fit_setup()
    calls = []

    def epoch_data(k):
        calls.append(k)
        xk = np.random.default_rng(100 + k).normal(size=(24, 4)).astype(np.float32)
        return xk, teacher_outputs(teacher, xk)

    res = fit(student, x, [t], TrainConfig(epochs=3, lr=1e-2, batch_size=8),
              hooks=FitHooks(epoch_data=epoch_data, lr_per_step=True))
    assert calls == [1, 2] and res.recipe["samples_per_epoch"] == "fresh"
    assert "per step" in res.recipe["optimizer"]
    with pytest.raises(UsageError, match="label-free"):
        fit(student, x, [t], TrainConfig(epochs=2), labels=np.zeros(len(x), np.int64),
            hooks=FitHooks(epoch_data=epoch_data))
    with pytest.raises(UsageError, match="do not match"):
        fit(student, x, [t], TrainConfig(epochs=2), hooks=FitHooks(epoch_data=lambda k: (x[:5], [t])))


def test_keep_best_puts_back_the_best_epochs_parameters():
    """With ``keep_best`` a training whose held-out fidelity falls is not kept: the parameters of
    the best epoch (here epoch 1 of 3) come back; without a fidelity measure it is refused."""
    from optc.train.distill import FitHooks, fit

    student, _, x, t = _linear_fit_setup()
    values = iter([0.5, 0.9, 0.6, 0.1])  # before training, after epochs 1, 2, 3
    snapshots = []

    def fidelity():
        snapshots.append(student.weight.detach().clone())
        return next(values)

    res = fit(student, x, [t], TrainConfig(epochs=3, lr=5e-2, batch_size=8),
              hooks=FitHooks(fidelity=fidelity, keep_best=True))
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3] and res.recipe["kept_epoch"] == 1
    assert torch.equal(student.weight, snapshots[1]) and not torch.equal(student.weight, snapshots[3])
    with pytest.raises(UsageError, match="fidelity"):
        fit(student, x, [t], TrainConfig(epochs=1), hooks=FitHooks(keep_best=True))


def test_last_epoch_freezes_activation_steps_only(tiny):
    """``freeze_scales_last``: activation step sizes stop training in the last epoch, weights
    and weight step sizes do not; without it nothing is frozen."""
    model_path, data_path, *_ = tiny
    fp, ptq, x = _ptq(model_path, data_path)
    student, plan, _ = Q._torch_models(ptq, None, fp, x)
    weight_scales = {s for _, s, *_ in plan.weights.values()}
    acts = [n for n in plan.scales if n not in weight_scales]
    assert acts and weight_scales
    param = lambda n: getattr(student, student._attr_of[n])  # noqa: E731
    for freeze in (True, False):
        hook = Q._freezer(student, plan, Q.QatOptions(train=TrainConfig(epochs=3), freeze_scales_last=freeze))
        hook(1)
        assert all(param(n).requires_grad for n in plan.trainable)
        hook(2)
        assert all(param(n).requires_grad != freeze for n in acts)
        assert all(param(n).requires_grad for n in list(plan.weights) + sorted(weight_scales))


def test_qat_with_fresh_inputs_and_validation(tiny, tmp_path):
    """``fresh_inputs`` trains each later epoch on new inputs, ``val_data`` chooses the epoch
    kept; the report says so, the result is still optc's QDQ graph. Fresh inputs of the wrong
    shape and validation inputs of the wrong shape are refused by name."""
    model_path, data_path, *_ = tiny
    seen = []

    def fresh(k):
        seen.append(k)
        return np.random.default_rng(50 + k).normal(size=(32, 1, 8, 8)).astype(np.float32)

    val = {"x": np.random.default_rng(7).normal(size=(16, 1, 8, 8)).astype(np.float32)}
    opts = Q.QatOptions(train=TrainConfig(epochs=3, lr=3e-3, batch_size=16), fresh_inputs=fresh, val_data=val,
                        lr_per_step=True, freeze_scales_last=True, force=True)
    rep = Q.qat(model_path, data_path, tmp_path / "q.onnx", options=opts)
    assert seen == [1, 2] and rep["fresh_inputs_per_epoch"] and rep["validation"] == "arrays"
    hist = rep["training"]["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    kept = rep["training"]["recipe"]["kept_epoch"]
    assert hist[kept]["fidelity"] == max(h["fidelity"] for h in hist)
    assert rep["export_check"]["top1_agreement"] >= 0.98
    bad = Q.QatOptions(train=TrainConfig(epochs=2, batch_size=16), fresh_inputs=lambda k: np.zeros((4, 1, 9, 8)), force=True)
    with pytest.raises(UsageError, match="fresh inputs"):
        Q.qat(model_path, data_path, tmp_path / "bad.onnx", options=bad)
    bad = Q.QatOptions(train=TrainConfig(epochs=1, batch_size=16), val_data={"x": np.zeros((4, 1, 9, 8), np.float32)},
                       force=True)
    with pytest.raises(InvalidModelError, match="validation inputs"):
        Q.qat(model_path, data_path, tmp_path / "bad.onnx", options=bad)


def test_fixed_weights_trains_only_scales_and_biases(tiny):
    """``train_weights=False``: the latent weights keep their start values (the projection
    only clips them to the moved step sizes' range); scales and biases still train."""
    model_path, data_path, *_ = tiny
    fp, ptq, x = _ptq(model_path, data_path)
    student, plan, _ = Q._torch_models(ptq, None, fp, x)
    for train_weights in (False, True):
        groups = Q._groups(student, plan, Q.QatOptions(train_weights=train_weights))
        trained = {id(p) for g in groups for p in g["params"]}
        weights = [id(getattr(student, student._attr_of[n])) for n in plan.weights]
        others = [id(getattr(student, student._attr_of[n])) for n in list(plan.scales) + list(plan.biases)]
        assert all((w in trained) == train_weights for w in weights)
        assert set(others) <= trained
    base = {id(g["params"][0]): g["lr"] for g in Q._groups(student, plan, Q.QatOptions())}
    slow = {id(g["params"][0]): g["lr"] for g in Q._groups(student, plan, Q.QatOptions(weight_lr=1e-4))}
    assert all(slow[w] == 1e-4 and base[w] == Q.QatOptions().train.lr for w in weights)
    assert all(slow[k] == base[k] for k in base if k not in weights)


def _codes_everywhere(student, model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[int, int]]:
    """Per activation QuantizeLinear of ``model`` (and its output): (values that differ between
    onnxruntime on ``model`` and the torch ``student``, values)."""
    inits = {t.name for t in model.graph.initializer}
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    names.append(model.graph.output[0].name)
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort_session(probe, threads=1)
    student.output_names = names
    out = {n: (0, 0) for n in names}
    with torch.no_grad():
        for i in range(len(x)):
            for n, a, b in zip(names, sess.run(None, {"x": x[i:i + 1]}), student(torch.from_numpy(x[i:i + 1]))):
                d, size = out[n]
                out[n] = (d + int(np.count_nonzero(a != b.numpy())), size + a.size)
    return out


def _trained_student(model_path, data_path):
    from optc.train.distill import FitHooks, fit, teacher_outputs

    fp, ptq, x = _ptq(model_path, data_path)
    student, plan, teacher = Q._torch_models(ptq, None, fp, x)
    fit(student, x, teacher_outputs(teacher, x), TrainConfig(epochs=3, lr=3e-3, batch_size=16),
        hooks=FitHooks(after_step=Q._projector(student, plan)), parameters=Q.param_groups(student, plan, 3e-3))
    return student, Q.export_qdq(ptq, plan, Q.trained_values(student, plan)), x


def test_trained_student_and_its_export_compute_the_same_codes(tiny, monkeypatch):
    """The student is bit-faithful to onnxruntime on the exported QDQ model after training:
    every activation code and every output value equal (the biases are fake-quantized on the
    ``s_x * s_w`` grid the export writes them on). The same training with float biases (the
    earlier training graph) gives codes that differ: the bias moved up to half a grid step,
    enough to flip rounding in the layer's output quantizer."""
    model_path, data_path, *_ = tiny
    student, exported, x = _trained_student(model_path, data_path)
    diff = _codes_everywhere(student, exported, x)
    assert all(d == 0 for d, _ in diff.values()), diff
    monkeypatch.setattr(Q, "_bias_grid_nodes", lambda bf, names, inits, plan: ([], bf))
    student, exported, x = _trained_student(model_path, data_path)
    assert sum(d for d, _ in _codes_everywhere(student, exported, x).values()) > 0


def test_cli_qat_recipe_flags_and_bad_values(tiny, tmp_path, capsys):
    """The recipe switches reach :class:`QatOptions` (the report records them); a bad value is
    refused naming the option, before any training."""
    model_path, data_path, *_ = tiny
    np.savez(tmp_path / "val.npz", x=np.random.default_rng(3).normal(size=(8, 1, 8, 8)).astype(np.float32))
    out, report = tmp_path / "cli.onnx", tmp_path / "rep.json"
    base = ["qat", str(model_path), "--data", str(data_path), "-o", str(out), "-q", "--epochs", "2",
            "--batch-size", "16"]
    assert main(base + ["--loss", "mse", "--val", str(tmp_path / "val.npz"), "--lr-per-step", "--fidelity", "sqnr",
                        "--freeze-scales-last", "--fixed-weights", "--weight-lr", "1e-3", "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["weight_lr"] == 1e-3 and rep["fidelity"] == "sqnr"
    hist = rep["training"]["history"]  # SQNR in dB, not an agreement in [0, 1]
    assert any(h["fidelity"] > 1 for h in hist) and hist[rep["training"]["recipe"]["kept_epoch"]]["fidelity"] == \
        max(h["fidelity"] for h in hist)
    assert rep["lr_per_step"] and rep["freeze_scales_last"] and not rep["train_weights"]
    assert rep["validation"] == str(tmp_path / "val.npz") and "kept_epoch" in rep["training"]["recipe"]
    assert rep["training"]["recipe"]["loss"]["kinds"] == ["mse"]
    capsys.readouterr()
    for flags, named in ((["--time-budget", "-5"], "time budget must be > 0"), (["--temperature", "0"], "temperature"),
                         (["--label-weight", "2"], "label weight"), (["--lr", "0"], "lr must be > 0"),
                         (["--batch-size", "0"], "batch size"), (["--weight-lr", "-1"], "weight lr")):
        assert main(base + ["-f"] + flags) == 2
        assert named in capsys.readouterr().err
    for flag in ("--loss", "--fidelity"):
        with pytest.raises(SystemExit):
            main(base + ["-f", flag, "l2"])
        assert flag in capsys.readouterr().err
    with pytest.raises(UsageError, match="fidelity must be one of auto, sqnr"):
        Q.check_options(Q.QatOptions(fidelity="top5"))
    np.savez(tmp_path / "badval.npz", x=np.zeros((4, 1, 9, 8), np.float32))
    assert main(base + ["-f", "--val", str(tmp_path / "badval.npz")]) == 2
    assert "validation inputs" in capsys.readouterr().err


def test_cli_loss_choices_are_distills_kinds():
    from optc.cli_train import LOSS_KINDS
    from optc.train.distill import KINDS

    assert LOSS_KINDS == KINDS


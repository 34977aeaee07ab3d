"""Accuracy and fidelity figures: hand-checked cases, batching, and --eval end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optc.accuracy import batched_outputs, compare_models, load_eval, sqnr_db, top1
from optc.errors import InvalidModelError
from optc.frontend import TensorSpec


def test_sqnr_hand_values():
    ref = np.array([3.0, 4.0])  # signal power 25
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + np.array([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))


def test_top1_flattens_trailing_dims():
    assert top1(np.array([[[[0.1, 0.9]]], [[[0.8, 0.2]]]])).tolist() == [1, 0]  # [N, 1, 1, C]


def test_top1_per_time_step_of_sequences():
    """[N, T, classes] (a CTC recognizer's output): one decision per time step."""
    x = np.zeros((2, 3, 4), np.float32)
    x[0, :, 1] = 1
    x[1, 2, 3] = 5
    assert top1(x).tolist() == [[1, 1, 1], [0, 0, 3]]


def test_batches_and_left_out_samples():
    spec = [TensorSpec("x", "float32", (4, 2))]
    calls = []

    def run(feeds):
        calls.append(feeds["x"].shape)
        return [feeds["x"] * 2]

    out, used = batched_outputs(run, {"x": np.arange(22, dtype=np.float64).reshape(11, 2)}, spec)
    assert used == 8 and calls == [(4, 2), (4, 2)] and out[0].dtype == np.float32
    np.testing.assert_array_equal(out[0], np.arange(16).reshape(8, 2) * 2)
    with pytest.raises(InvalidModelError, match="fewer than the model's batch size"):
        batched_outputs(run, {"x": np.zeros((3, 2))}, spec)


def test_compare_models_accuracy_and_agreement():
    spec = [TensorSpec("x", "float32", (1, 3))]
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    labels = np.array([0, 1, 2, 1])
    reference = lambda feeds: [feeds["x"]]  # noqa: E731  predicts 0,1,2,0 -> 3/4 right
    flipped = lambda feeds: [feeds["x"][:, ::-1].copy()]  # noqa: E731  predicts 2,1,0,2 -> 1/4 right
    r = compare_models(reference, flipped, {"x": x}, labels, spec, spec, ["y"])
    assert r["top1_reference"] == 0.75 and r["top1"] == 0.25 and r["top1_drop_points"] == pytest.approx(50.0)
    assert r["top1_agreement"] == 0.25 and r["samples"] == 4
    same = compare_models(reference, reference, {"x": x}, None, spec, spec, ["y"])
    assert same["top1_agreement"] == 1.0 and same["sqnr_db"]["y"] == math.inf and "top1" not in same


def test_load_eval_checks_arrays(tmp_path):
    spec = [TensorSpec("x", "float32", (1, 3))]
    np.savez(tmp_path / "ok.npz", x=np.zeros((5, 3)), label=np.zeros(5))
    inputs, labels = load_eval(tmp_path / "ok.npz", spec)
    assert inputs["x"].shape == (5, 3) and labels.shape == (5,)
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3)), label=np.zeros(4))
    with pytest.raises(InvalidModelError, match="disagree"):
        load_eval(tmp_path / "bad.npz", spec)
    np.savez(tmp_path / "noinput.npz", y=np.zeros((5, 3)))
    with pytest.raises(InvalidModelError, match="missing input array"):
        load_eval(tmp_path / "noinput.npz", spec)


@pytest.mark.tvm
def test_compile_with_eval_reports_real_accuracy(tmp_path):
    import json

    import optc
    from tests.conftest import MODELS

    report = optc.compile(MODELS / "digits_cnn.onnx", "cpu", tmp_path / "p", input_shapes={"input": (4, 1, 8, 8)}, options=optc.CompileOptions.of(eval_data=MODELS / "digits_eval.npz", measure=False))
    acc = report["accuracy"]
    expected = json.loads((MODELS / "models.json").read_text())
    assert acc["samples"] == 540 and acc["evaluated_on"] == "the compiled artifact"
    assert acc["top1_drop_points"] == pytest.approx(0.0, abs=1e-9) and acc["top1"] > 0.95
    assert acc["top1_agreement"] == 1.0 and acc["sqnr_db"]["logits"] > 80
    assert acc["top1"] == pytest.approx(expected["models"]["digits_cnn"]["test_accuracy"])


# --- labels under their common names; chance level (issue 17) ---------------------------------


@pytest.mark.parametrize("key", ["label", "labels", "y", "target", "targets"])
def test_load_eval_reads_the_common_label_names(tmp_path, key):
    spec = [TensorSpec("x", "float32", (1, 3))]
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3)), **{key: np.arange(5)})
    _, labels = load_eval(tmp_path / "d.npz", spec)
    assert labels is not None and labels.tolist() == [0, 1, 2, 3, 4]


def test_load_eval_refuses_ambiguous_labels_and_warns_about_unknown_arrays(tmp_path):
    from optc.accuracy import LABEL_KEYS
    from optc.progress import OptcWarning

    spec = [TensorSpec("x", "float32", (1, 3))]
    np.savez(tmp_path / "two.npz", x=np.zeros((5, 3)), label=np.zeros(5), targets=np.ones(5))
    with pytest.raises(InvalidModelError, match="several label arrays .'label', 'targets'."):
        load_eval(tmp_path / "two.npz", spec)
    np.savez(tmp_path / "misnamed.npz", x=np.zeros((5, 3)), lbl=np.zeros(5))
    with pytest.warns(OptcWarning) as caught:
        _, labels = load_eval(tmp_path / "misnamed.npz", spec)
    assert labels is None
    msg = str(caught[0].message)
    assert "'lbl'" in msg and "not accuracy" in msg and all(k in msg for k in LABEL_KEYS)
    # an input that happens to be called y is an input, not labels
    spec_y = [TensorSpec("y", "float32", (1, 3))]
    np.savez(tmp_path / "input_y.npz", y=np.zeros((5, 3)), labels=np.arange(5))
    inputs, labels = load_eval(tmp_path / "input_y.npz", spec_y)
    assert inputs["y"].shape == (5, 3) and labels.tolist() == [0, 1, 2, 3, 4]


def test_near_chance_is_flagged():
    from optc.accuracy import chance_level, near_chance

    assert chance_level(np.zeros((4, 10))) == pytest.approx(0.1)
    assert chance_level(np.zeros(4), np.array([0, 1, 1, 0])) == pytest.approx(0.5)
    assert chance_level(np.zeros((4, 1))) is None
    assert near_chance(0.15, 0.99, 0.1) and near_chance(0.18, 0.99, 0.1)
    assert not near_chance(0.20, 0.99, 0.1) and not near_chance(0.12, 0.11, 0.1)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 10)).astype(np.float32)
    labels = x.argmax(1)  # the reference is right every time
    spec = [TensorSpec("x", "float32", (20, 10))]
    good = compare_models(lambda f: [f["x"]], lambda f: [f["x"] + 0.01], {"x": x}, labels, spec, spec, ["y"])
    assert good["chance_top1"] == pytest.approx(0.1) and good["near_chance"] is False and "note" not in good
    broken = compare_models(lambda f: [f["x"]], lambda f: [np.roll(f["x"], 1, axis=0)], {"x": x}, labels,
                            spec, spec, ["y"])
    assert broken["top1"] < 0.2 and broken["near_chance"] is True
    assert "near chance level (10.0% for 10 classes)" in broken["note"]
    nolabels = compare_models(lambda f: [f["x"]], lambda f: [np.roll(f["x"], 1, axis=0)], {"x": x}, None,
                              spec, spec, ["y"])
    assert nolabels["near_chance"] is True and "agreement" in nolabels["note"]

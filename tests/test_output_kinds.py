"""Which fidelity figures an output gets (optc.accuracy.output_kind): top-1 agreement only for
class scores ([N, C], or [N, T, C] steps of a sequence model), SQNR for every output and a
thresholded mask IoU for probability maps; the same definition in fidelity, evaluation and
reports."""

from __future__ import annotations

import numpy as np
import pytest

from optc import accuracy
from optc.accuracy import (CLASS_SCORES, DENSE, PROBABILITY_MAP, SEQUENCE_SCORES, compare_models,
                           fidelity, fidelity_figures, mask_iou, output_kind)
from optc.frontend import TensorSpec

rng = np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _yolo_head(n: int = 2) -> np.ndarray:
    """[N, anchors, 4 box + 1 objectness + 80 classes]: pixel boxes, sigmoid scores."""
    head = 1 / (1 + np.exp(-rng.standard_normal((n, 300, 85))))
    head[..., :4] = rng.uniform(0, 640, (n, 300, 4))
    return head.astype(np.float32)


def test_classifier_like_outputs():
    logits = rng.standard_normal((4, 10)).astype(np.float32)
    assert output_kind(logits) == CLASS_SCORES
    assert output_kind(_softmax(logits)) == CLASS_SCORES  # probabilities too
    assert output_kind(logits.reshape(4, 10, 1, 1)) == CLASS_SCORES  # a conv classifier's [N, C, 1, 1]
    assert output_kind(logits.reshape(4, 1, 1, 10)) == CLASS_SCORES
    seq = rng.standard_normal((2, 40, 97)).astype(np.float32)  # a CTC recognizer [N, T, C]
    assert output_kind(_softmax(seq)) == SEQUENCE_SCORES
    assert output_kind(np.log(_softmax(seq))) == SEQUENCE_SCORES  # log-softmax
    assert output_kind(seq, labels=np.zeros((2, 40))) == SEQUENCE_SCORES  # raw scores, labels per step
    assert accuracy.classifier_like(logits) and accuracy.classifier_like(_softmax(seq))


def test_spatial_and_detection_outputs_are_not_classifier_like():
    prob_map = 1 / (1 + np.exp(-rng.standard_normal((2, 1, 32, 32))))  # a text detector's map
    assert output_kind(prob_map) == PROBABILITY_MAP
    assert output_kind(_yolo_head()) == DENSE  # raw rank 3 with pixel boxes: not steps
    assert output_kind(rng.standard_normal((2, 16, 8, 8))) == DENSE  # a feature map
    assert output_kind(rng.standard_normal((2, 40, 97))) == DENSE  # raw rank 3 without labels
    assert output_kind(np.array([[0.2], [0.9]])) == PROBABILITY_MAP  # one sigmoid score per sample
    assert output_kind(rng.standard_normal(5)) == DENSE
    assert not accuracy.classifier_like(prob_map)


def test_mask_iou_hand_values():
    ref = np.array([[0.9, 0.8, 0.1, 0.0]])
    assert mask_iou(ref, ref) == 1.0
    assert mask_iou(ref, np.array([[0.9, 0.2, 0.7, 0.0]])) == pytest.approx(1 / 3)  # {0,1} vs {0,2}
    assert mask_iou(np.zeros((1, 4)), np.full((1, 4), 0.4)) == 1.0  # both empty


def test_fidelity_of_a_probability_map_has_no_top1():
    ref = (1 / (1 + np.exp(-4 * rng.standard_normal((2, 1, 16, 16))))).astype(np.float32)
    out = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    f = fidelity([ref], [out], ["maps"])
    assert "top1_agreement" not in f and "probability map" in f["top1_note"]
    assert f["output_kinds"] == {"maps": PROBABILITY_MAP} and f["mask_threshold"] == 0.5
    assert f["mask_iou"]["maps"] == pytest.approx(mask_iou(ref, out)) and 0.5 < f["mask_iou"]["maps"] < 1
    assert np.isfinite(f["sqnr_db"]["maps"]) and f["samples"] == 2
    text = accuracy.summary_text(f)
    assert "mask IoU" in text and "SQNR" in text and "agreement" not in text


def test_fidelity_of_a_yolo_head_has_sqnr_only_and_a_classifier_keeps_top1():
    head = _yolo_head()
    f = fidelity_figures([head], [head * 1.01], ["output0"])
    assert f["output_kinds"] == {"output0": DENSE} and "top1_agreement" not in f and "mask_iou" not in f
    assert f["sqnr_db"]["output0"] == pytest.approx(40.0, abs=0.1)
    logits = rng.standard_normal((8, 10)).astype(np.float32)
    c = fidelity_figures([logits, head], [logits, head], ["logits", "boxes"])
    assert c["top1_agreement"] == 1.0 and c["top1_output"] == "logits"
    assert c["output_kinds"] == {"logits": CLASS_SCORES, "boxes": DENSE}
    assert accuracy.summary_text(c).startswith("agreement 100.00%")


def test_eval_path_uses_labels_only_for_class_scores():
    spec = [TensorSpec("x", "float32", (1, 1, 4, 4))]
    x = rng.uniform(0, 1, (6, 1, 4, 4)).astype(np.float32)
    labels = np.arange(6) % 2
    reference = lambda feeds: [feeds["x"]]  # noqa: E731  a [0, 1] map
    noisy = lambda feeds: [np.clip(feeds["x"] + 0.1, 0, 1)]  # noqa: E731
    r = compare_models(reference, noisy, {"x": x}, labels, spec, spec, ["mask"])
    assert "top1" not in r and "top1_agreement" not in r and "labels were not used" in r["top1_note"]
    assert r["output_kinds"] == {"mask": PROBABILITY_MAP} and 0 < r["mask_iou"]["mask"] < 1
    assert r["samples"] == 6 and np.isfinite(r["sqnr_db"]["mask"])


def test_report_cells_follow_the_recorded_kind():
    from optc.report import cells

    base = {"target": "cpu", "pipeline": "quantize", "latency": {"method": "modeled", "median_ms": 2.0,
                                                                 "label": "modeled: roofline lower bound"},
            "size_bytes": {"artifact": 1000}, "verify": {"passed": True, "max_abs_error": 0.0}}
    det = base | {"fidelity": {"samples": 1, "output_kinds": {"maps": PROBABILITY_MAP}, "sqnr_db": {"maps": 31.0},
                               "mask_iou": {"maps": 0.97}, "mask_threshold": 0.5}}
    c = cells("det", det)
    assert "mask IoU 0.970" in c["accuracy"] and "agreement" not in c["accuracy"]
    assert "modeled: roofline lower bound" in c["latency"]
    cls = base | {"accuracy": {"samples": 4, "top1_agreement": 0.75, "sqnr_db": {"y": 20.0},
                               "output_kinds": {"y": CLASS_SCORES}}}
    assert cells("cls", cls)["accuracy"].startswith("agreement 75.00%")


def _prob_map_model(path):
    """x [1, 3, 8, 8] -> Conv 3x3 (1 channel) -> Sigmoid -> y [1, 1, 8, 8]: a detector-like map."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = rng.standard_normal((1, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c"], ["y"], name="sig")], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.tvm
def test_compile_reports_map_figures_not_top1(tmp_path, capsys):
    """A quantized probability-map model: the report's fidelity (no --eval) and accuracy (--eval
    with labels) sections carry SQNR and mask IoU, no top-1 figure; the CLI prints them."""
    import json

    import optc
    from optc.cli import main
    from optc.report import cells

    model = tmp_path / "det.onnx"
    _prob_map_model(model)
    data = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data)
    passes = f"quantize<calib={tmp_path / 'calib.npz'}>"
    report = optc.compile(model, "cpu", tmp_path / "p", passes=passes, options=optc.CompileOptions.of(measure=False))
    f = report["fidelity"]
    assert f["output_kinds"] == {"y": PROBABILITY_MAP} and "top1_agreement" not in f
    assert 0.5 < f["mask_iou"]["y"] <= 1.0 and f["sqnr_db"]["y"] > 10
    assert "mask IoU" in cells("p", report)["accuracy"]

    np.savez(tmp_path / "eval.npz", x=data, label=np.arange(16) % 2)
    assert main(["compile", str(model), "-o", str(tmp_path / "q"), "--passes", passes, "--eval",
                 str(tmp_path / "eval.npz"), "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "fidelity: mask IoU y" in out and "SQNR y" in out and "top-1" not in out
    acc = json.loads((tmp_path / "q" / "report.json").read_text())["accuracy"]
    assert "top1" not in acc and "labels were not used" in acc["top1_note"] and acc["samples"] == 16

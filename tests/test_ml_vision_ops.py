"""Numeric ``ai.onnx.ml`` ops (``optc.backends.tvm.ml_ops``: Binarizer, ArrayFeatureExtractor,
TreeEnsemble), DeformConv (``optc.backends.tvm.vision_ops``), Det and BitShift (``linalg_ops``), compiled through
``optc.compile`` (verified against onnxruntime) and compared with onnxruntime; each has a
model it must refuse by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import optc
from tests.conftest import compile_and_compare
from optc.errors import UnsupportedModelError

ort = pytest.importorskip("onnxruntime")


def _model(node, inputs, outputs, opsets) -> onnx.ModelProto:
    m = h.make_model(h.make_graph([node], "m", inputs, outputs),
                     opset_imports=[h.make_opsetid(d, v) for d, v in opsets.items()])
    m.ir_version = 14 if opsets.get("") == 28 else 10
    onnx.checker.check_model(m)
    return m


def _compile_and_compare(model, tmp_path, feeds) -> None:
    compile_and_compare(model, tmp_path, feeds)


def _trees(aggregate=0, n_targets=2):
    """Two trees: tree 0 splits x0 <= 0.5 (false: leaf 0) then x1 < 2.0 (leaves 1, 2), tree 1 is
    x1 in {1, 3} (leaves 3, 4); leaf weights by target; AVERAGE (0) over the two trees by default."""
    f = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    node = h.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=n_targets, aggregate_function=aggregate,
        tree_roots=[0, 2], nodes_featureids=[0, 1, 1], nodes_modes=numpy_helper.from_array(
            np.array([0, 1, 6], np.uint8), "nodes_modes"), nodes_splits=f("nodes_splits", [0.5, 2.0, 0.0]),
        nodes_truenodeids=[1, 1, 3], nodes_trueleafs=[0, 1, 1], nodes_falsenodeids=[0, 2, 4],
        nodes_falseleafs=[1, 1, 1], membership_values=f("membership_values", [1.0, 3.0, np.nan]),
        leaf_targetids=[0, 1, 0, 1, 0], leaf_weights=f("leaf_weights", [1.0, 2.0, 4.0, 8.0, 16.0]))
    return _model(node, [h.make_tensor_value_info("x", T.FLOAT, [5, 2])],
                  [h.make_tensor_value_info("y", T.FLOAT, [5, n_targets])], {"ai.onnx.ml": 5, "": 21})


def test_forest_v5_numbers_split_nodes_then_leaves():
    """Split nodes 0..2, leaves 3..7: node 0 goes to node 1 or leaf 0 (= 3); two levels deep;
    AVERAGE over the two trees halves the leaf weights."""
    from optc.backends.tvm.ml_ops import forest_v5

    f = forest_v5({a.name: h.get_attribute_value(a) for a in _trees().graph.node[0].attribute})
    assert f.true_next.tolist() == [1, 4, 6] and f.false_next.tolist() == [3, 5, 7]
    assert f.roots.tolist() == [0, 2] and f.depth == 2 and f.n_leaves == 5
    assert f.targets.tolist() == [0, 1, 0, 1, 0] and f.weights.tolist() == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_tree_ensemble_average_matches_onnxruntime(tmp_path):
    x = np.array([[0.0, 1.0], [0.0, 3.0], [1.0, 2.0], [0.2, 5.0], [0.9, np.nan]], np.float32)
    _compile_and_compare(_trees(), tmp_path, {"x": x})


def _forest(n_trees: int, depth: int, features: int, elem=T.FLOAT, seed=0):
    """``n_trees`` full binary trees of ``depth`` BRANCH_LEQ splits on random features, SUM."""
    rng = np.random.default_rng(seed)
    feats, splits, t_ids, t_leaf, f_ids, f_leaf, roots, weights = [], [], [], [], [], [], [], []
    inner = 2 ** depth - 1
    for tree in range(n_trees):
        base, leaves = tree * inner, tree * (inner + 1)
        roots.append(base)
        for k in range(inner):  # heap order: children 2k+1, 2k+2; the last level's children are leaves
            feats.append(int(rng.integers(features)))
            splits.append(float(rng.standard_normal()))
            for ids, leafs, child in ((t_ids, t_leaf, 2 * k + 1), (f_ids, f_leaf, 2 * k + 2)):
                is_leaf = child >= inner
                ids.append(leaves + child - inner if is_leaf else base + child)
                leafs.append(int(is_leaf))
        weights += rng.standard_normal(inner + 1).tolist()
    arr = lambda name, v, dt: numpy_helper.from_array(np.array(v, dt), name)  # noqa: E731
    dt = np.float64 if elem == T.DOUBLE else np.float32
    node = h.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, aggregate_function=1, tree_roots=roots,
        nodes_featureids=feats, nodes_modes=arr("nodes_modes", [0] * len(feats), np.uint8),
        nodes_splits=arr("nodes_splits", splits, dt), nodes_truenodeids=t_ids, nodes_trueleafs=t_leaf,
        nodes_falsenodeids=f_ids, nodes_falseleafs=f_leaf, leaf_targetids=[0] * len(weights),
        leaf_weights=arr("leaf_weights", weights, dt))
    return _model(node, [h.make_tensor_value_info("x", elem, [6, features])],
                  [h.make_tensor_value_info("y", elem, [6, 1])], {"ai.onnx.ml": 5, "": 21})


@pytest.mark.parametrize("elem", [T.FLOAT, T.DOUBLE])
def test_a_large_tree_ensemble_is_walked_not_held_as_a_matrix(tmp_path, elem):
    """300 trees of 7 splits: a decision matrix of the whole forest (2,100 nodes x 2,400
    leaves, 20 MB; a 565-tree LightGBM export needed 9.3 GB and was killed) is not built: the
    walk kernel's constants grow with the nodes, so the package stays small; float64 forests
    compare and sum in float64. A node reading a feature the input does not have is refused."""
    model = _forest(300, 3, 12, elem)
    dt = np.float64 if elem == T.DOUBLE else np.float32
    _compile_and_compare(model, tmp_path, {"x": np.random.default_rng(1).standard_normal((6, 12)).astype(dt)})
    size = sum(f.stat().st_size for f in (tmp_path / "pkg").iterdir())
    assert size < 2 * 2 ** 20, size
    bad = _forest(2, 2, 12, elem)
    for a in bad.graph.node[0].attribute:
        if a.name == "nodes_featureids":
            a.ints[0] = 12  # of 12 features
    with pytest.raises(UnsupportedModelError, match="reads feature 12 of 12"):
        _compile_and_compare(bad, tmp_path / "bad", {"x": np.zeros((6, 12), dt)})


def test_forest_walk_in_parallel_chunks_matches_onnxruntime(tmp_path, monkeypatch):
    """40 trees in 16 chunks of 3 (the last chunks partly or wholly past the last tree), each
    chunk summing its trees, the chunks summed in order."""
    from optc.backends.tvm import ml_ops

    monkeypatch.setattr(ml_ops, "WALK_PARALLEL_STEPS", 1)
    source = ml_ops.walk_source(ml_ops.forest_v5({a.name: h.get_attribute_value(a) for a in
                                                  _forest(40, 3, 12).graph.node[0].attribute}), 6, 12, 1, "float32", False)
    assert "T.parallel(16)" in source
    x = np.random.default_rng(2).standard_normal((6, 12)).astype(np.float32)
    _compile_and_compare(_forest(40, 3, 12), tmp_path, {"x": x})


def test_tree_ensemble_min_aggregation_is_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedModelError, match="aggregate_function 2"):
        _compile_and_compare(_trees(aggregate=2), tmp_path, {"x": np.zeros((5, 2), np.float32)})


def test_tree_nodes_that_form_a_cycle_or_point_nowhere_are_refused():
    from optc.backends.tvm.ml_ops import forest_v5

    attr = {a.name: h.get_attribute_value(a) for a in _trees().graph.node[0].attribute}
    attr["nodes_trueleafs"] = [0, 0, 1]  # node 1's true branch goes to node 1 itself
    with pytest.raises(ValueError, match="cycle"):
        forest_v5(attr)
    attr = {a.name: h.get_attribute_value(a) for a in _trees().graph.node[0].attribute}
    attr["nodes_falsenodeids"] = [0, 2, 9]  # leaf 9 of 5
    with pytest.raises(ValueError, match="does not exist"):
        forest_v5(attr)


def test_binarizer_and_array_feature_extractor(tmp_path):
    node = h.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], domain="ai.onnx.ml")
    model = _model(node, [h.make_tensor_value_info("x", T.FLOAT, [3, 4]), h.make_tensor_value_info("i", T.INT64, [2])],
                   [h.make_tensor_value_info("y", T.FLOAT, [3, 2])], {"ai.onnx.ml": 1, "": 13})
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    _compile_and_compare(model, tmp_path / "a", {"x": x, "i": np.array([3, 1], np.int64)})
    node = h.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=5.0)
    model = _model(node, [h.make_tensor_value_info("x", T.FLOAT, [3, 4])],
                   [h.make_tensor_value_info("y", T.FLOAT, [3, 4])], {"ai.onnx.ml": 1, "": 13})
    _compile_and_compare(model, tmp_path / "b", {"x": x})


def _deform(shape=(1, 4, 5, 5), offset_group=2, with_mask=True):
    ins = ["x", "w", "offset", "b"] + (["mask"] if with_mask else [])
    node = h.make_node("DeformConv", ins, ["y"], kernel_shape=[2, 2], pads=[1, 0, 0, 1], strides=[2, 1],
                       group=2, offset_group=offset_group)
    oh, ow = 3, 5
    vi = h.make_tensor_value_info
    inputs = [vi("x", T.FLOAT, list(shape)), vi("w", T.FLOAT, [6, 2, 2, 2]),
              vi("offset", T.FLOAT, [1, offset_group * 8, oh, ow]), vi("b", T.FLOAT, [6])]
    if with_mask:
        inputs.append(vi("mask", T.FLOAT, [1, offset_group * 4, oh, ow]))
    return _model(node, inputs, [vi("y", T.FLOAT, [1, 6, oh, ow])], {"": 19})


def test_deform_conv_groups_offsets_mask_bias_match_onnxruntime(tmp_path):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 4, 5, 5)), "w": rng.standard_normal((6, 2, 2, 2)),
             "offset": 1.5 * rng.standard_normal((1, 16, 3, 5)), "b": rng.standard_normal(6),
             "mask": rng.uniform(0, 1, (1, 8, 3, 5))}
    _compile_and_compare(_deform(), tmp_path, {k: v.astype(np.float32) for k, v in feeds.items()})


def test_deform_conv_on_a_1d_signal_is_refused_by_name(tmp_path):
    vi = h.make_tensor_value_info
    node = h.make_node("DeformConv", ["x", "w", "offset"], ["y"], kernel_shape=[2])
    model = _model(node, [vi("x", T.FLOAT, [1, 2, 6]), vi("w", T.FLOAT, [3, 2, 2]), vi("offset", T.FLOAT, [1, 2, 5])],
                   [vi("y", T.FLOAT, [1, 3, 5])], {"": 19})
    feeds = {"x": np.zeros((1, 2, 6), np.float32), "w": np.zeros((3, 2, 2), np.float32),
             "offset": np.zeros((1, 2, 5), np.float32)}
    with pytest.raises(UnsupportedModelError, match="only 2-D images"):
        _compile_and_compare(model, tmp_path, feeds)


def test_permutation_signs():
    from optc.backends.tvm.linalg_ops import permutation_sign

    assert [permutation_sign(p) for p in [(0, 1, 2), (1, 0, 2), (1, 2, 0), (2, 1, 0)]] == [1, -1, 1, -1]


def _det(n: int):
    vi = h.make_tensor_value_info
    return _model(h.make_node("Det", ["x"], ["y"]), [vi("x", T.FLOAT, [2, n, n])], [vi("y", T.FLOAT, [2])], {"": 13})


def test_det_of_a_batch_of_4x4_matrices_matches_onnxruntime(tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 4, 4)).astype(np.float32)
    _compile_and_compare(_det(4), tmp_path, {"x": x})


def test_det_of_large_matrices_is_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedModelError, match="6x6 matrices are not lowered"):
        _compile_and_compare(_det(6), tmp_path, {"x": np.eye(6, dtype=np.float32)[None].repeat(2, 0)})


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift_counts_out_of_range_match_onnxruntime(tmp_path, direction):
    """Counts < 0 or >= 8 on int8 give 0 (or -1 for a negative value shifted right), not
    whatever the C shift does."""
    vi = h.make_tensor_value_info
    model = _model(h.make_node("BitShift", ["x", "y"], ["z"], direction=direction),
                   [vi("x", T.INT8, [6]), vi("y", T.INT8, [6])], [vi("z", T.INT8, [6])], {"": 28})
    feeds = {"x": np.array([-8, 4, -1, 5, -128, 127], np.int8), "y": np.array([-1, 8, 127, 2, 7, 0], np.int8)}
    _compile_and_compare(model, tmp_path, feeds)

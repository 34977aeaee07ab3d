"""The ``ai.onnx.ml`` 1-3 ops that scikit-learn models exported by skl2onnx (and onnxmltools)
are made of (``optc.backends.tvm.ml_ops``): TreeEnsembleClassifier / TreeEnsembleRegressor,
LinearClassifier / LinearRegressor, Scaler and Normalizer, compiled through ``optc.compile``
(verified against onnxruntime) and compared with onnxruntime; the forms they do not lower
(string labels, two-class scores, PROBIT, MIN / MAX aggregation) are refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import optc
from tests.conftest import compile_and_compare
from optc.errors import UnsupportedModelError

ort = pytest.importorskip("onnxruntime")
OPSETS = [h.make_opsetid("ai.onnx.ml", 3), h.make_opsetid("", 17)]


def _model(nodes, inputs, outputs) -> onnx.ModelProto:
    m = h.make_model(h.make_graph(nodes, "m", inputs, outputs), opset_imports=OPSETS)
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def _compile_and_compare(model, tmp_path, feeds) -> None:
    compile_and_compare(model, tmp_path, feeds, same_dtype=True)


def _forest_attrs(prefix: str, n_targets: int) -> dict:
    """Two trees over 3 features; node ids not in order (tree 1: 0, 5, 7). Tree 0: x0 <= 0.5
    (false: leaf 2), then x1 < 2 (leaves 3, 4). Tree 1: x2 > 1, NaN going true (leaves 5, 7).
    Leaf weights spread over the targets, some leaves adding to two of them."""
    leaves = [(0, 2), (0, 3), (0, 4), (1, 5), (1, 7)]
    tids = [t for t, _ in leaves for _ in range(2)]
    nids = [n for _, n in leaves for _ in range(2)]
    ids = [k % n_targets for k in range(len(tids))]
    return {"nodes_treeids": [0, 0, 0, 0, 0, 1, 1, 1], "nodes_nodeids": [0, 1, 2, 3, 4, 0, 5, 7],
            "nodes_featureids": [0, 1, 0, 0, 0, 2, 0, 0], "nodes_values": [0.5, 2.0, 0, 0, 0, 1.0, 0, 0],
            "nodes_modes": ["BRANCH_LEQ", "BRANCH_LT", "LEAF", "LEAF", "LEAF", "BRANCH_GT", "LEAF", "LEAF"],
            "nodes_truenodeids": [1, 3, 0, 0, 0, 5, 0, 0], "nodes_falsenodeids": [2, 4, 0, 0, 0, 7, 0, 0],
            "nodes_missing_value_tracks_true": [0, 0, 0, 0, 0, 1, 0, 0],
            f"{prefix}_treeids": tids, f"{prefix}_nodeids": nids, f"{prefix}_ids": ids,
            f"{prefix}_weights": [0.25 * (k + 1) for k in range(len(tids))]}


X = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 2.0], [1.0, 2.0, np.nan], [0.4, -5.0, 1.0], [0.9, 0.0, 1.5]], np.float32)


def _classifier(labels=(3, 7, 11), post="SOFTMAX", **extra):
    vi = h.make_tensor_value_info
    node = h.make_node("TreeEnsembleClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                       classlabels_int64s=list(labels), post_transform=post,
                       base_values=[0.1 * k for k in range(len(labels))], **_forest_attrs("class", len(labels)), **extra)
    return _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("label", T.INT64, [5]), vi("scores", T.FLOAT, [5, len(labels)])])


@pytest.mark.parametrize("post", ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO"])
def test_tree_ensemble_classifier_matches_onnxruntime(tmp_path, post):
    _compile_and_compare(_classifier(post=post), tmp_path, {"x": X})


@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE"])
def test_tree_ensemble_regressor_matches_onnxruntime(tmp_path, aggregate):
    vi = h.make_tensor_value_info
    node = h.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=2,
                       aggregate_function=aggregate, base_values=[0.5, -1.0], **_forest_attrs("target", 2))
    model = _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("y", T.FLOAT, [5, 2])])
    _compile_and_compare(model, tmp_path, {"x": X})


def test_linear_classifier_scaler_normalizer_chain_matches_onnxruntime(tmp_path):
    """Scaler -> LinearClassifier (LOGISTIC) -> Normalizer L1 on the scores, and a
    LinearRegressor beside it: the graph skl2onnx writes for a scaled LogisticRegression."""
    vi = h.make_tensor_value_info
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[0.5, -1.0, 2.0], scale=[2.0, 0.5, 1.0]),
             h.make_node("LinearClassifier", ["s"], ["label", "raw"], domain="ai.onnx.ml", classlabels_ints=[0, 1, 2, 9],
                         coefficients=rng.standard_normal(12).tolist(), intercepts=[0.1, -0.2, 0.3, 0.0],
                         post_transform="LOGISTIC"),
             h.make_node("Normalizer", ["raw"], ["p"], domain="ai.onnx.ml", norm="L1"),
             h.make_node("Normalizer", ["s"], ["n2"], domain="ai.onnx.ml", norm="L2"),
             h.make_node("LinearRegressor", ["s"], ["r"], domain="ai.onnx.ml", targets=2,
                         coefficients=rng.standard_normal(6).tolist(), intercepts=[1.0, 2.0])]
    model = _model(nodes, [vi("x", T.FLOAT, [4, 3])],
                   [vi("label", T.INT64, [4]), vi("p", T.FLOAT, [4, 4]), vi("n2", T.FLOAT, [4, 3]), vi("r", T.FLOAT, [4, 2])])
    _compile_and_compare(model, tmp_path, {"x": rng.standard_normal((4, 3)).astype(np.float32)})


def _two_class(base, ids, signs, post):
    """The forest above as a 2-class classifier (labels 3, 7): ``ids`` the class of each weight
    entry, ``signs`` +1 / -1 per entry, ``base`` the base_values (None: no attribute)."""
    attrs = _forest_attrs("class", 2)
    attrs["class_ids"] = ids
    attrs["class_weights"] = [w * sg for w, sg in zip(attrs["class_weights"], signs)]
    vi = h.make_tensor_value_info
    extra = {} if base is None else {"base_values": base}
    node = h.make_node("TreeEnsembleClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                       classlabels_int64s=[3, 7], post_transform=post, **attrs, **extra)
    return _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("label", T.INT64, [5]), vi("scores", T.FLOAT, [5, 2])])


BOTH, ONE, POS, MIXED = [0, 1] * 5, [1] * 10, [1] * 10, [1, -1, -1, 1, 1, -1, -1, -1, 1, 1]


@pytest.mark.parametrize("base, ids, signs, post", [
    ([0.1, 0.3], BOTH, POS, "NONE"),  # class 1 scored: s1 = b1 + s0, s0 = -s1
    (None, BOTH, MIXED, "SOFTMAX"),  # weights on both classes: label 1 / 0 by s1 > 0
    ([0.2], ONE, POS, "NONE"),  # one class, weights >= 0: [1 - s, s], label by s > 0.5
    ([-0.4], [0] * 10, MIXED, "NONE"),  # one class (0), mixed signs: [-s, s] or [s, -s] by the label
    (None, [0] * 10, MIXED, "LOGISTIC"),  # [logistic(-s), logistic(s)]
    ([0.5, -0.5], [0] * 10, MIXED, "LOGISTIC"),  # class 1 unscored: written as 0, then transformed
    ([0.1, 0.3], ONE, MIXED, "NONE"),  # class 0 unscored: s1 = b1 + 0, class 0 written as 0
    ([0.3], BOTH, POS, "NONE"),
    ([0.5, -0.5], [0] * 10, POS, "NONE"),
    (None, ONE, MIXED, "NONE"),
    ([0.2], [0] * 10, POS, "LOGISTIC"),  # weights >= 0 under LOGISTIC: [logistic(-s), logistic(s)] too
])
def test_two_class_tree_classifier_follows_onnxruntimes_binary_rules(tmp_path, base, ids, signs, post):
    _compile_and_compare(_two_class(base, ids, signs, post), tmp_path, {"x": X})


@pytest.mark.parametrize("kind", ["forest", "boosting", "tree"])
def test_two_class_scikit_learn_models_exported_by_skl2onnx_match_onnxruntime(tmp_path, kind):
    """What users export: scikit-learn's binary classifiers through skl2onnx (zipmap off)."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    x, y = make_classification(300, 6, n_informative=4, random_state=0)
    est = {"forest": RandomForestClassifier(10, max_depth=5, random_state=0),
           "boosting": GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0),
           "tree": DecisionTreeClassifier(max_depth=6, random_state=0)}[kind].fit(x.astype(np.float32), y)
    model = skl2onnx.to_onnx(est, x[:1].astype(np.float32), options={id(est): {"zipmap": False}},
                             target_opset={"": 17, "ai.onnx.ml": 3})
    feeds = {model.graph.input[0].name: x[:16].astype(np.float32)}
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 16
    compile_and_compare(model, tmp_path, feeds)


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX"])
@pytest.mark.parametrize("scores", [1, 2])
def test_two_class_linear_classifier_matches_onnxruntime(tmp_path, post, scores):
    """Two labels: with one intercept onnxruntime writes ``[1 - p, p]`` of the one score (its
    logistic under LOGISTIC) and labels by ``s > 0``; with two, the usual argmax and transform."""
    vi = h.make_tensor_value_info
    coef = [0.3, -0.2, 0.5] if scores == 1 else [-0.3, 0.2, -0.5, 0.3, -0.2, 0.5]
    node = h.make_node("LinearClassifier", ["x"], ["label", "p"], domain="ai.onnx.ml", classlabels_ints=[3, 7],
                       coefficients=coef, intercepts=[0.1] if scores == 1 else [-0.1, 0.1], post_transform=post)
    model = _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("label", T.INT64, [5]), vi("p", T.FLOAT, [5, 2])])
    _compile_and_compare(model, tmp_path, {"x": X})


@pytest.mark.parametrize("change, message", [
    ({"labels": (0,)}, "1-class models are not lowered"),
    ({"post": "PROBIT"}, "post_transform PROBIT"),
])
def test_tree_ensemble_classifier_forms_refused_by_name(tmp_path, change, message):
    model = _classifier(**{"labels": (3, 7, 11), "post": "NONE", **change})
    with pytest.raises(UnsupportedModelError, match=message):
        _compile_and_compare(model, tmp_path, {"x": X})


def test_string_labels_and_min_aggregation_refused_by_name(tmp_path):
    vi = h.make_tensor_value_info
    node = h.make_node("LinearClassifier", ["x"], ["label", "raw"], domain="ai.onnx.ml",
                       classlabels_strings=["a", "b", "c"], coefficients=[1.0] * 9)
    model = _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("label", T.STRING, [5]), vi("raw", T.FLOAT, [5, 3])])
    with pytest.raises(UnsupportedModelError, match="STRING \\(output 'label'\\)"):
        _compile_and_compare(model, tmp_path / "s", {"x": X})
    from optc.backends.tvm.ml_ops import class_labels

    with pytest.raises(ValueError, match="string class labels"):  # the converter's own guard
        class_labels({"classlabels_strings": [b"a", b"b", b"c"]}, "LinearClassifier")
    node = h.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=2,
                       aggregate_function="MIN", **_forest_attrs("target", 2))
    model = _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("y", T.FLOAT, [5, 2])])
    with pytest.raises(UnsupportedModelError, match="aggregate_function MIN"):
        _compile_and_compare(model, tmp_path / "m", {"x": X})


def test_legacy_forest_structure_and_bad_structure():
    """The structure and weights of the forest above (split nodes 0..2, leaves 3..7 in node
    order); a child id that names no node and a cycle are refused (ValueError: a named refusal
    in a converter)."""
    from optc.backends.tvm.ml_ops import legacy_forest

    f = legacy_forest(_forest_attrs("target", 2), "target", 2)
    assert f.feats.tolist() == [0, 1, 2] and f.splits.tolist() == [0.5, 2.0, 1.0] and f.modes.tolist() == [0, 1, 3]
    assert f.tracks.tolist() == [False, False, True]
    assert f.true_next.tolist() == [1, 4, 6] and f.false_next.tolist() == [3, 5, 7]
    assert f.roots.tolist() == [0, 2] and f.depth == 2 and f.n_leaves == 5
    assert f.leaves.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and f.targets.tolist() == [0, 1] * 5
    assert np.isclose(f.weights.sum(), sum(0.25 * (k + 1) for k in range(10)))
    bad = _forest_attrs("target", 2)
    bad["nodes_falsenodeids"] = [2, 9, 0, 0, 0, 7, 0, 0]
    with pytest.raises(ValueError, match="does not exist"):
        legacy_forest(bad, "target", 2)
    bad = _forest_attrs("target", 2)
    bad["nodes_nodeids"] = [0, 1, 2, 3, 3, 0, 5, 7]
    with pytest.raises(ValueError, match="same \\(treeid, nodeid\\)"):
        legacy_forest(bad, "target", 2)
    bad = _forest_attrs("target", 2)
    bad["nodes_modes"] = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_GT", "LEAF", "LEAF"]
    bad["nodes_truenodeids"] = [1, 3, 0, 0, 0, 5, 0, 0]  # node 2 -> node 0 -> node 2: no root for tree 0
    with pytest.raises(ValueError, match="cycle|no root"):
        legacy_forest(bad, "target", 2)


def test_coefficients_that_do_not_fit_the_features_are_refused_by_name(tmp_path):
    vi = h.make_tensor_value_info
    node = h.make_node("LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", targets=1, coefficients=[1.0] * 5)
    model = _model([node], [vi("x", T.FLOAT, [5, 3])], [vi("y", T.FLOAT, [5, 1])])
    with pytest.raises(UnsupportedModelError, match="5 coefficients for 1 rows of 3 features"):
        _compile_and_compare(model, tmp_path, {"x": np.zeros((5, 3), np.float32)})


@pytest.mark.qemu
def test_a_two_class_forest_compiles_and_verifies_for_arm(tmp_path):
    """The walk kernel (a while loop per tree, parallel chunks) built for aarch64 and run under
    qemu: rows x trees reach the parallel cut, and the binary rules apply."""
    import shutil

    from optc.backends.tvm import arm, ml_ops

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(300, 6, n_informative=4, random_state=0)
    est = RandomForestClassifier(32, max_depth=6, random_state=0).fit(x.astype(np.float32), y)
    model = skl2onnx.to_onnx(est, x[:1].astype(np.float32), options={id(est): {"zipmap": False}},
                             target_opset={"": 17, "ai.onnx.ml": 3})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 128
    assert 128 * 32 >= ml_ops.WALK_PARALLEL_STEPS
    path = tmp_path / "rf.onnx"
    onnx.save(model, path)
    report = optc.compile(path, "arm", tmp_path / "pkg", inputs={model.graph.input[0].name: x[:128].astype(np.float32)},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]


@pytest.mark.parametrize("mode", ["BRANCH_LEQ", "BRANCH_NEQ"])
def test_double_inputs_compare_in_double_and_nan_is_not_equal(tmp_path, mode):
    """A double input is compared with the thresholds in double, as onnxruntime does (rounded
    to float32 first, 0.1 + 1e-12 became float32(0.1) and went down the <= branch), and a NaN
    feature is "not equal" to every threshold (BRANCH_NEQ: true, as C++'s !=)."""
    vi = h.make_tensor_value_info
    thr = float(np.float32(0.1))
    node = h.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
                       nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                       nodes_values=[thr, 0.0, 0.0], nodes_modes=[mode, "LEAF", "LEAF"],
                       nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
                       target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0])
    model = _model([node], [vi("x", T.DOUBLE, [4, 1])], [vi("y", T.FLOAT, [4, 1])])
    x = np.array([[thr + 1e-12], [thr], [thr - 1e-12], [np.nan]], np.float64)
    _compile_and_compare(model, tmp_path, {"x": x})


@pytest.mark.parametrize("form", ["int_to_float", "float_to_int", "tensor", "float_tensor"])
def test_numeric_label_encoder_matches_onnxruntime(tmp_path, form):
    """Numeric LabelEncoder (scikit-learn's IsolationForest export has 40: int64 node ids to
    float path lengths): a key's value, the default elsewhere; a NaN key matches NaN from
    opset 4 only."""
    vi = h.make_tensor_value_info
    if form == "int_to_float":
        node = h.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", keys_int64s=[3, 7, 11, 40],
                           values_floats=[1.5, 2.0, -3.0, 30.0], default_float=0.25)
        x = np.array([[3, 4, 11], [40, -1, 7]], np.int64)
        model, xt, yt, ml = (node, T.INT64, T.FLOAT, 2)
    elif form == "float_to_int":
        node = h.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", keys_floats=[0.5, np.nan, -2.0],
                           values_int64s=[10, 20, 30])
        x = np.array([[0.5, np.nan, 1.0], [-2.0, 0.25, 0.5]], np.float32)
        model, xt, yt, ml = (node, T.FLOAT, T.INT64, 2)
    elif form == "float_tensor":
        node = h.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml",
                           keys_tensor=onnx.numpy_helper.from_array(np.array([0.5, np.nan, -2.0], np.float32)),
                           values_tensor=onnx.numpy_helper.from_array(np.array([10, 20, 30], np.int64)))
        x = np.array([[0.5, np.nan, 1.0], [-2.0, 0.25, 0.5]], np.float32)
        model, xt, yt, ml = (node, T.FLOAT, T.INT64, 4)
    else:
        node = h.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml",
                           keys_tensor=onnx.numpy_helper.from_array(np.array([1, 2, 3], np.int64)),
                           values_tensor=onnx.numpy_helper.from_array(np.array([7, 8, 9], np.int64)),
                           default_tensor=onnx.numpy_helper.from_array(np.array([-5], np.int64)))
        x = np.array([[1, 5, 3], [2, 2, 0]], np.int64)
        model, xt, yt, ml = (node, T.INT64, T.INT64, 4)
    m = h.make_model(h.make_graph([model], "m", [vi("x", xt, [2, 3])], [vi("y", yt, [2, 3])]),
                     opset_imports=[h.make_opsetid("ai.onnx.ml", ml), h.make_opsetid("", 17)])
    m.ir_version = 10
    _compile_and_compare(m, tmp_path, {"x": x})


def test_targets_no_leaf_scores_are_written_as_zero_and_partial_ones_refused(tmp_path):
    """onnxruntime writes 0 for a target no reached leaf scored (its base value not added) and
    never makes an unscored class the label. A target no leaf scores is lowered so; one that
    some leaves only score (per-row flag) with a base value, or a class without one, is
    refused by name."""
    vi = h.make_tensor_value_info
    reg = h.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=3,
                      base_values=[0.5, -1.0, 7.0], **_forest_attrs("target", 2))  # target 2: no leaf
    _compile_and_compare(_model([reg], [vi("x", T.FLOAT, [5, 3])], [vi("y", T.FLOAT, [5, 3])]), tmp_path / "r", {"x": X})
    attrs = _forest_attrs("class", 3)
    attrs["class_ids"] = [0, 1] * 5  # class 2: no leaf, no base value
    attrs["class_weights"] = [-w for w in attrs["class_weights"]]  # every scored class negative: 0 would win
    cls_ = h.make_node("TreeEnsembleClassifier", ["x"], ["label", "p"], domain="ai.onnx.ml",
                       classlabels_int64s=[3, 7, 11], post_transform="NONE", **attrs)
    model = _model([cls_], [vi("x", T.FLOAT, [5, 3])], [vi("label", T.INT64, [5]), vi("p", T.FLOAT, [5, 3])])
    _compile_and_compare(model, tmp_path / "c", {"x": X})
    attrs["class_ids"] = [0, 1, 0, 1, 0, 2, 0, 1, 0, 1]  # class 2 on one leaf of tree 0 only: per row
    cls_ = h.make_node("TreeEnsembleClassifier", ["x"], ["label", "p"], domain="ai.onnx.ml",
                       classlabels_int64s=[3, 7, 11], post_transform="NONE", **attrs)
    model = _model([cls_], [vi("x", T.FLOAT, [5, 3])], [vi("label", T.INT64, [5]), vi("p", T.FLOAT, [5, 3])])
    with pytest.raises(UnsupportedModelError, match="target 2 has weights on some leaves only"):
        _compile_and_compare(model, tmp_path / "p", {"x": X})

"""Converters for ``ai.onnx.ml`` ops on numeric tensors that TVM's Relax importer lacks.

- Binarizer: ``x > threshold`` as 1 / 0 in the input's type.
- ArrayFeatureExtractor: ``X[..., indices]`` (one ``take`` on the last axis, the indices
  flattened); a 1-D ``X`` gives ``[1, len(indices)]``, as onnxruntime does.

- TreeEnsemble (opset 5; SUM / AVERAGE aggregation, no post transform): every split of
  every tree is evaluated at once (``take`` of the features, the comparison each node's mode
  names, set membership as "equal to one of the members", NaN going true where
  ``nodes_missing_value_tracks_true``); a leaf is reached when all the decisions on its
  root-to-leaf path (enumerated at compile time) hold: ``c @ (A_true - A_false) +
  n_false == path length`` with ``c`` the 0/1 decisions; the outputs are ``reached @ W``
  (leaf weights by target, divided by the number of trees for AVERAGE), one block per tree
  (:func:`forest_sums`). Other aggregations and post transforms are refused by name.

- The ai.onnx.ml 1-3 forms that skl2onnx / onnxmltools write for scikit-learn models, in
  float32 whatever the input's type:
  TreeEnsembleClassifier / TreeEnsembleRegressor use the same decisions and path sums
  (:func:`legacy_forest` reads their ``(treeid, nodeid)``-keyed nodes; BRANCH_LEQ..BRANCH_NEQ;
  a leaf may add to several targets), one block per tree (:func:`forest_sums`: a batched
  matmul, so the matrices grow with the trees' sizes, not the square of the forest's); scores are the summed weights plus ``base_values`` (the regressor's
  AVERAGE divides by the number of trees; MIN / MAX are refused). LinearClassifier:
  ``x @ coefficients.T + intercepts``. A classifier's label is its integer class label of the
  highest raw score (the first on a tie, as onnxruntime), its scores go through
  ``post_transform`` (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO; PROBIT refused). Two-class
  classifiers (onnxruntime widens one score column to two by rules of its own) and string
  labels are refused by name. LinearRegressor (NONE only), Scaler ``(x - offset) * scale``,
  Normalizer (MAX, L1, L2 over the last axis).

- TfIdfVectorizer (ai.onnx, integer inputs ``[C]`` or ``[B, C]``): the pool's n-grams
  (:func:`tfidf_grams`, sizes ``min_gram_length..max_gram_length``; a duplicate keeps its last
  index, as the reference's trie does) are matched at every start ``i`` and skip distance
  ``d = 1..max_skip_count + 1`` (unigrams once, at ``d = 1``): the windows
  ``x[..., i + k*d]`` (``k < n``, strided slices stacked to ``[B, L, n]``) equal to a gram in all
  ``n`` places count 1; the counts ``[B, P]`` go to their output slots through a constant 0/1
  matrix ``[P, O]`` (``O = max(ngram_indexes) + 1``); then TF (counts), IDF (``weights`` or 1
  where the count is > 0) or TFIDF (``weights * count``), ``weights[j]`` weighing output slot
  ``j``. String pools are refused by name.

String-typed ml ops (LabelEncoder on strings, ...) stay refused by name: Relax tensors hold
no strings.
"""

from __future__ import annotations

import numpy as np

from .lower import register_converter, register_if_available
from .onnx_ops import _dtype, _rank

ML = "ai.onnx.ml"
MODES = ("less_equal", "less", "greater_equal", "greater", "equal", "not_equal")  # 0..5; 6 is MEMBER
LEGACY_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")  # ai.onnx.ml 1-3
POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO")  # PROBIT (an erfinv) is refused


def _values(v) -> np.ndarray:
    """An attribute value (list, tensor attribute) as a numpy array."""
    import onnx

    if isinstance(v, onnx.TensorProto):
        return onnx.numpy_helper.to_array(v)
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def tree_paths(attr: dict) -> list[tuple[list[tuple[int, bool]], int]]:
    """Every root-to-leaf path of a TreeEnsemble: ([(node, decision), ...], leaf index)."""
    return forest_paths(attr)[0]


def forest_paths(attr: dict) -> tuple[list[tuple[list[tuple[int, bool]], int]], list[int]]:
    """(:func:`tree_paths`, the tree of each path: its root's position in ``tree_roots``)."""
    true_ids, false_ids = _values(attr["nodes_truenodeids"]), _values(attr["nodes_falsenodeids"])
    true_leaf, false_leaf = _values(attr["nodes_trueleafs"]), _values(attr["nodes_falseleafs"])
    paths, trees = [], []
    for tree, root in enumerate(_values(attr["tree_roots"]).reshape(-1)):
        root = int(root)
        if true_leaf[root] and false_leaf[root] and true_ids[root] == false_ids[root]:
            paths.append(([], int(true_ids[root])))  # a tree that is one leaf
            trees.append(tree)
            continue
        stack = [(root, [])]
        while stack:
            node, path = stack.pop()
            if len(path) > len(true_ids):
                raise ValueError("TreeEnsemble: the nodes do not form trees (a cycle)")
            for ids, leaf, decision in ((true_ids, true_leaf, True), (false_ids, false_leaf, False)):
                step = path + [(node, decision)]
                if leaf[node]:
                    paths.append((step, int(ids[node])))
                    trees.append(tree)
                else:
                    stack.append((int(ids[node]), step))
    return paths, trees


def members(attr: dict, modes: np.ndarray) -> np.ndarray:
    """``[nodes, S]`` set members of the MEMBER nodes in node order (NaN-padded)."""
    values = _values(attr.get("membership_values", [])).astype(np.float64).reshape(-1)
    sets, current = [], []
    for v in values:
        if np.isnan(v):
            sets.append(current)
            current = []
        else:
            current.append(v)
    member_nodes = [k for k, m in enumerate(modes) if m == 6]
    if len(sets) != len(member_nodes):
        raise ValueError("TreeEnsemble: membership_values do not give one set per MEMBER node")
    out = np.full((len(modes), max([1] + [len(s) for s in sets])), np.nan)
    for k, s in zip(member_nodes, sets):
        out[k, :len(s)] = s
    return out


def decisions(bb, x, feats, splits, modes: np.ndarray, sets: np.ndarray | None = None, tracks=None):
    """``[B, nodes]`` bool: each split node's decision on each row of ``x`` ``[B, F]``: feature
    ``feats[k]`` against ``splits[k]`` by ``MODES[modes[k]]`` (6: member of ``sets[k]``, a
    NaN-padded row); a NaN feature goes true where ``tracks[k]`` is set."""
    from tvm import relax

    op = relax.op
    dt = _dtype(x)
    v = bb.normalize(op.take(x, relax.const(np.asarray(feats).astype("int64").reshape(-1)), axis=1))
    splits = relax.const(np.asarray(splits).astype(dt).reshape(-1), dt)
    cond = op.zeros(v.ty.shape, "bool")
    for m, name in enumerate(MODES):
        if (modes == m).any():
            cond = op.where(relax.const(modes == m), getattr(op, name)(v, splits), cond)
    if sets is not None:
        hit = op.max(op.astype(op.equal(op.expand_dims(v, [2]), relax.const(sets.astype(dt), dt)), "float32"), axis=[2])
        cond = op.where(relax.const(modes == 6), op.greater(hit, relax.const(0.0, "float32")), cond)
    if tracks is not None and np.asarray(tracks).any():
        flags = relax.const(np.asarray(tracks).astype(bool).reshape(-1))
        cond = op.logical_or(cond, op.logical_and(op.isnan(v), flags))
    return bb.normalize(cond)


def forest_sums(bb, cond, paths: list[list[tuple[int, bool]]], trees: list[int], n_nodes: int, w: np.ndarray,
                dtype: str = "float32"):
    """``reached @ w`` ``[B, targets]``: a path (its ``(node, decision)`` steps) is reached when
    all its decisions hold, i.e. ``c @ (A_true - A_false) + n_false == len(path)`` with ``c``
    the 0/1 decisions ``cond`` ``[B, n_nodes]``; ``w [paths, targets]`` the leaf values,
    summed in ``dtype``. One tree at a time (``trees[p]``: path ``p``'s tree): the decision
    matrix is block-diagonal by tree, so it is held as ``[T, nodes/tree, leaves/tree]``
    (padded) and applied as one batched matmul, instead of ``[nodes, leaves]`` of the whole
    forest (quadratic in the number of trees: 100 trees of 150 leaves would be 225 M values; a
    565-tree LightGBM export, 35 k nodes, 9.3 GB)."""
    from tvm import relax

    op = relax.op
    order = sorted(set(trees))
    groups = [[p for p, t in enumerate(trees) if t == tree] for tree in order]
    cols = [sorted({n for p in g for n, _ in paths[p]}) for g in groups]
    n_t, max_n, max_l = len(groups), max([1] + [len(c) for c in cols]), max(len(g) for g in groups)
    idx = np.full((n_t, max_n), n_nodes, np.int64)  # padding reads an all-zero column
    a, base = np.zeros((n_t, max_n, max_l), np.float32), np.zeros((n_t, 1, max_l), np.float32)
    length = np.full((n_t, 1, max_l), -1.0, np.float32)  # padded leaves are never reached
    w3 = np.zeros((n_t, max_l, w.shape[1]), np.float64)
    for t, (g, c) in enumerate(zip(groups, cols)):
        idx[t, :len(c)] = c
        where = {n: j for j, n in enumerate(c)}
        for leaf, p in enumerate(g):
            for node, decision in paths[p]:
                a[t, where[node], leaf] += 1.0 if decision else -1.0
                base[t, 0, leaf] += 0.0 if decision else 1.0
            length[t, 0, leaf], w3[t, leaf] = len(paths[p]), w[p]
    c = op.astype(cond, "float32")
    rows = int(cond.ty.shape[0])
    c = op.concat([c, op.zeros([rows, 1], "float32")], axis=1)
    g = op.permute_dims(op.reshape(op.take(c, relax.const(idx.reshape(-1), "int64"), axis=1), [rows, n_t, max_n]), [1, 0, 2])
    count = op.add(op.matmul(g, relax.const(a)), relax.const(base))  # [T, B, leaves]
    reached = op.astype(op.equal(count, relax.const(length)), dtype)
    return op.sum(op.matmul(reached, relax.const(w3.astype(dtype), dtype)), axis=[0])


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _attr_array(attr: dict, name: str, default=None) -> np.ndarray | None:
    """Attribute ``name`` or its ``name_as_tensor`` twin (ai.onnx.ml 3) as a float64 array."""
    for key in (name, f"{name}_as_tensor"):
        if attr.get(key) is not None:
            return _values(attr[key]).astype(np.float64).reshape(-1)
    return None if default is None else np.asarray(default, np.float64)


def legacy_forest(attr: dict, prefix: str, n_targets: int):
    """A TreeEnsembleClassifier (``prefix`` "class") or TreeEnsembleRegressor ("target"),
    ai.onnx.ml 1-3, as ``(feats, splits, modes, tracks, paths, trees, w)``: the split nodes'
    arrays (``modes`` as :data:`MODES` indices: BRANCH_LEQ..BRANCH_NEQ are in the same order),
    every root-to-leaf path as ``(split node, decision)`` steps, each path's tree id, and
    ``w [paths, n_targets]`` the
    weights each path's leaf adds per target. Roots are the nodes no split node points to."""
    trees = _values(attr["nodes_treeids"]).astype(np.int64).reshape(-1)
    key = {(int(t), int(n)): k for k, (t, n) in enumerate(zip(trees, _values(attr["nodes_nodeids"]).reshape(-1)))}
    modes = [_text(m) for m in attr["nodes_modes"]]
    unknown = sorted(set(modes) - set(LEGACY_MODES) - {"LEAF"})
    if unknown:
        raise ValueError(f"{prefix} tree ensemble: node modes {unknown} are not lowered")
    split = [k for k, m in enumerate(modes) if m != "LEAF"]
    column = {k: j for j, k in enumerate(split)}
    kids = {}
    for k in split:
        for name, decision in (("nodes_truenodeids", True), ("nodes_falsenodeids", False)):
            child = key.get((int(trees[k]), int(_values(attr[name]).reshape(-1)[k])))
            if child is None:
                raise ValueError(f"{prefix} tree ensemble: node {k} points to a node that does not exist")
            kids.setdefault(k, []).append((child, decision))
    pointed = {c for pairs in kids.values() for c, _ in pairs}
    leaf_w = {}
    weights = _attr_array(attr, f"{prefix}_weights")
    entries = zip(*(_values(attr[f"{prefix}_{k}"]).reshape(-1) for k in ("treeids", "nodeids", "ids")), weights)
    for t, n, target, wt in entries:
        if (int(t), int(n)) not in key or not 0 <= int(target) < n_targets:
            raise ValueError(f"{prefix} tree ensemble: a weight names node ({t}, {n}) or target {target} "
                             "that does not exist")
        leaf_w.setdefault(key[(int(t), int(n))], np.zeros(n_targets))[int(target)] += wt
    paths, path_trees, w, seen = [], [], [], set()
    for root in (k for k in range(len(modes)) if k not in pointed):
        stack = [(root, [])]
        while stack:
            node, path = stack.pop()
            if len(path) > len(split):
                raise ValueError(f"{prefix} tree ensemble: the nodes do not form trees (a cycle)")
            seen.add(node)
            if modes[node] == "LEAF":
                paths.append(path)
                path_trees.append(int(trees[node]))
                w.append(leaf_w.get(node, np.zeros(n_targets)))
                continue
            stack.extend((child, path + [(column[node], decision)]) for child, decision in kids[node])
    if len(seen) < len(modes):
        raise ValueError(f"{prefix} tree ensemble: the nodes do not form trees ({len(modes) - len(seen)} nodes "
                         "reached from no root: a cycle or no root)")
    feats = _values(attr["nodes_featureids"]).astype(np.int64).reshape(-1)[split]
    splits = _attr_array(attr, "nodes_values")[split]
    tracks = attr.get("nodes_missing_value_tracks_true")
    tracks = None if tracks is None else _values(tracks).astype(bool).reshape(-1)[split]
    codes = np.array([LEGACY_MODES.index(modes[k]) for k in split], np.int64)
    return feats, splits, codes, tracks, paths, path_trees, np.array(w).reshape(len(paths), n_targets)


def tfidf_grams(attr: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """TfIdfVectorizer's integer pool by n-gram size: ``{n: (grams [P, n] int64, output index
    of each [P])}`` for the sizes ``min_gram_length..max_gram_length`` that have grams.

    ``ngram_counts[k]`` is where the (k+1)-grams start in ``pool_int64s``; ``ngram_indexes``
    gives each gram of the whole pool (all sizes, in order) its output slot. A gram listed
    twice keeps the slot of its last listing (the reference trie overwrites the id)."""
    pool = _values(attr.get("pool_int64s", [])).astype(np.int64).reshape(-1)
    if pool.size == 0:
        raise ValueError("TfIdfVectorizer: only integer pools (pool_int64s) are lowered, not pool_strings")
    starts = [int(v) for v in _values(attr["ngram_counts"]).reshape(-1)]
    slots = _values(attr["ngram_indexes"]).astype(np.int64).reshape(-1)
    lo, hi = int(attr["min_gram_length"]), int(attr["max_gram_length"])
    out, gram_id = {}, 0
    for k, start in enumerate(starts):
        n = k + 1
        end = starts[k + 1] if k + 1 < len(starts) else pool.size
        if end < start or (end - start) % n:
            raise ValueError(f"TfIdfVectorizer: pool_int64s[{start}:{end}] does not hold whole {n}-grams")
        grams = pool[start:end].reshape(-1, n) if end > start else np.zeros((0, n), np.int64)
        if lo <= n <= hi and len(grams):
            last = {tuple(g): gram_id + j for j, g in enumerate(grams)}  # later listings win
            keys = list(last)
            out[n] = (np.array(keys, np.int64).reshape(-1, n), slots[[last[g] for g in keys]])
        gram_id += len(grams)
    return out


def class_labels(attr: dict, op_type: str) -> np.ndarray:
    """A classifier's integer labels (``classlabels_int64s`` / ``classlabels_ints``); string
    labels are refused by name (Relax tensors hold no strings), and so are two-class models:
    onnxruntime's binary rules (one score column widened to two, labels by a threshold) are not
    lowered."""
    if attr.get("classlabels_strings"):
        raise ValueError(f"{op_type}: string class labels are not lowered (Relax tensors hold no strings; "
                         "export with integer labels)")
    labels = _values(attr.get("classlabels_int64s", attr.get("classlabels_ints", []))).astype(np.int64).reshape(-1)
    if len(labels) < 3:
        raise ValueError(f"{op_type}: {len(labels)}-class models are not lowered (onnxruntime's binary score "
                         "rules); 3 or more classes are")
    return labels


def post_transform(scores, attr: dict, op_type: str):
    """``post_transform`` on ``[B, C]`` float scores: NONE, SOFTMAX, LOGISTIC, or SOFTMAX_ZERO
    (zero scores stay 0 and take no share); PROBIT is refused by name."""
    from tvm import relax

    op = relax.op
    post = _text(attr.get("post_transform", "NONE"))
    if post not in POST_TRANSFORMS:
        raise ValueError(f"{op_type}: post_transform {post} is not lowered ({', '.join(POST_TRANSFORMS)} are)")
    if post == "SOFTMAX":
        return op.nn.softmax(scores, axis=1)
    if post == "LOGISTIC":
        return op.sigmoid(scores)
    if post == "SOFTMAX_ZERO":
        zero = relax.const(0.0, "float32")
        e = op.where(op.equal(scores, zero), zero, op.exp(op.subtract(scores, op.max(scores, axis=[1], keepdims=True))))
        return op.divide(e, op.sum(e, axis=[1], keepdims=True))
    return scores


def _as_float(bb, x):
    """``x`` as float32 (the legacy ml ops compute in float32 whatever the input's type)."""
    from tvm import relax

    return x if _dtype(x) == "float32" else bb.normalize(relax.op.astype(x, "float32"))


def _coefficients(attr: dict, rows: int, x, op_type: str) -> np.ndarray:
    """``coefficients`` as ``[rows, features]`` float32; a count that is not ``rows`` times
    the input's features is refused by name."""
    coef = _values(attr["coefficients"]).astype(np.float32).reshape(-1)
    features = int(x.ty.shape[-1])
    if coef.size != rows * features:
        raise ValueError(f"{op_type}: {coef.size} coefficients for {rows} rows of {features} features")
    return coef.reshape(rows, features)


def _label_of(scores, labels: np.ndarray):
    """The label of each row's highest score (the first on a tie)."""
    from tvm import relax

    return relax.op.take(relax.const(labels, "int64"), relax.op.argmax(scores, axis=1), axis=0)  # int64 kept: const narrows


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op

    @register_converter(ML, "Binarizer")
    class Binarizer(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            above = op.greater(x, relax.const(float(attr.get("threshold", 0.0)), _dtype(x)))
            return op.astype(above, _dtype(x))

    @register_converter(ML, "ArrayFeatureExtractor")
    class ArrayFeatureExtractor(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, idx = inputs
            idx = bb.normalize(op.reshape(idx, [-1]))
            out = op.take(x, op.astype(idx, "int64"), axis=_rank(x) - 1)
            return op.expand_dims(out, axis=[0]) if _rank(x) == 1 else out

    @register_converter(ML, "TreeEnsemble")
    class TreeEnsemble(OnnxOpConverter):
        @classmethod
        def _impl_v5(cls, bb, inputs, attr, params):
            agg, post = int(attr.get("aggregate_function", 1)), int(attr.get("post_transform", 0))
            if agg not in (0, 1) or post != 0:
                raise ValueError(f"TreeEnsemble: aggregate_function {agg} / post_transform {post} are not lowered "
                                 "(SUM or AVERAGE without a post transform are)")
            x = inputs[0]
            modes = _values(attr["nodes_modes"]).astype(np.int64).reshape(-1)
            sets = members(attr, modes) if (modes == 6).any() else None
            tracks = attr.get("nodes_missing_value_tracks_true")
            cond = decisions(bb, x, _values(attr["nodes_featureids"]), _values(attr["nodes_splits"]), modes, sets,
                             None if tracks is None else _values(tracks))
            paths, trees = forest_paths(attr)
            targets, weights = _values(attr["leaf_targetids"]), _values(attr["leaf_weights"]).astype(np.float64)
            w = np.zeros((len(paths), int(attr.get("n_targets", int(targets.max()) + 1))))
            scale = 1.0 / len(_values(attr["tree_roots"]).reshape(-1)) if agg == 0 else 1.0
            for p, (_, leaf) in enumerate(paths):
                w[p, int(targets[leaf])] += weights[leaf] * scale
            return forest_sums(bb, cond, [path for path, _ in paths], trees, len(modes), w, _dtype(x))

    @register_converter(ML, "TreeEnsembleClassifier")
    class TreeEnsembleClassifier(OnnxOpConverter):
        """Scores: the leaf weights summed over the trees plus ``base_values``; the label
        of the highest raw score; then the post transform."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            labels = class_labels(attr, "TreeEnsembleClassifier")
            x = _as_float(bb, inputs[0])
            feats, splits, modes, tracks, paths, trees, w = legacy_forest(attr, "class", len(labels))
            scores = forest_sums(bb, decisions(bb, x, feats, splits, modes, None, tracks), paths, trees, len(modes), w)
            base = _attr_array(attr, "base_values", np.zeros(len(labels)))
            scores = bb.normalize(op.add(scores, relax.const(np.broadcast_to(base, len(labels)).astype("float32"))))
            return relax.Tuple([_label_of(scores, labels), post_transform(scores, attr, "TreeEnsembleClassifier")])

    @register_converter(ML, "TreeEnsembleRegressor")
    class TreeEnsembleRegressor(OnnxOpConverter):
        """SUM or AVERAGE of the leaf weights over the trees, plus ``base_values``; MIN / MAX
        and post transforms are refused by name."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            agg = _text(attr.get("aggregate_function", "SUM"))
            if agg not in ("SUM", "AVERAGE") or _text(attr.get("post_transform", "NONE")) != "NONE":
                raise ValueError(f"TreeEnsembleRegressor: aggregate_function {agg} / post_transform "
                                 f"{_text(attr.get('post_transform', 'NONE'))} are not lowered (SUM or AVERAGE, NONE are)")
            n = int(attr.get("n_targets", 1))
            x = _as_float(bb, inputs[0])
            feats, splits, modes, tracks, paths, trees, w = legacy_forest(attr, "target", n)
            if agg == "AVERAGE":
                w = w / max(1, len(set(_values(attr["nodes_treeids"]).reshape(-1).tolist())))
            scores = forest_sums(bb, decisions(bb, x, feats, splits, modes, None, tracks), paths, trees, len(modes), w)
            base = _attr_array(attr, "base_values", np.zeros(n))
            return op.add(scores, relax.const(np.broadcast_to(base, n).astype("float32")))

    @register_converter(ML, "LinearClassifier")
    class LinearClassifier(OnnxOpConverter):
        """Scores ``x @ coefficients.T + intercepts`` (one row per class); the label of the
        highest raw score; then the post transform."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            labels = class_labels(attr, "LinearClassifier")
            x = _as_float(bb, inputs[0] if _rank(inputs[0]) == 2 else op.expand_dims(inputs[0], [0]))
            coef = _coefficients(attr, len(labels), x, "LinearClassifier")
            icpt = _attr_array(attr, "intercepts", np.zeros(len(labels))).astype(np.float32)
            icpt = relax.const(np.broadcast_to(icpt, len(labels)).copy())
            scores = bb.normalize(op.add(op.matmul(x, relax.const(coef.T.copy())), icpt))
            return relax.Tuple([_label_of(scores, labels), post_transform(scores, attr, "LinearClassifier")])

    @register_converter(ML, "LinearRegressor")
    class LinearRegressor(OnnxOpConverter):
        """``x @ coefficients.T + intercepts`` (``targets`` rows); post transforms other than
        NONE are refused by name."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if _text(attr.get("post_transform", "NONE")) != "NONE":
                raise ValueError(f"LinearRegressor: post_transform {_text(attr['post_transform'])} is not lowered")
            n = int(attr.get("targets", 1))
            x = _as_float(bb, inputs[0] if _rank(inputs[0]) == 2 else op.expand_dims(inputs[0], [0]))
            coef = _coefficients(attr, n, x, "LinearRegressor")
            icpt = _attr_array(attr, "intercepts", np.zeros(n)).astype(np.float32)
            return op.add(op.matmul(x, relax.const(coef.T.copy())), relax.const(np.broadcast_to(icpt, n).copy()))

    @register_converter(ML, "Scaler")
    class Scaler(OnnxOpConverter):
        """``(x - offset) * scale`` in float32, offset and scale one value or one per feature."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = _as_float(bb, inputs[0])
            offset = relax.const(_attr_array(attr, "offset", [0.0]).astype(np.float32))
            scale = relax.const(_attr_array(attr, "scale", [1.0]).astype(np.float32))
            return op.multiply(op.subtract(x, offset), scale)

    @register_converter(ML, "Normalizer")
    class Normalizer(OnnxOpConverter):
        """Each row divided by its MAX, L1 (sum of |x|) or L2 (root of the sum of squares)
        norm, in float32."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = _as_float(bb, inputs[0])
            norm, axis = _text(attr.get("norm", "MAX")), _rank(x) - 1
            if norm == "MAX":
                return op.divide(x, op.max(x, axis=[axis], keepdims=True))
            if norm == "L1":
                return op.divide(x, op.sum(op.abs(x), axis=[axis], keepdims=True))
            if norm == "L2":
                return op.divide(x, op.sqrt(op.sum(op.multiply(x, x), axis=[axis], keepdims=True)))
            raise ValueError(f"Normalizer: unknown norm {norm!r} (MAX, L1, L2)")

    @register_converter("", "TfIdfVectorizer")
    class TfIdfVectorizer(OnnxOpConverter):
        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):
            x = inputs[0]
            if _rank(x) not in (1, 2) or not _dtype(x).startswith("int"):
                raise ValueError(f"TfIdfVectorizer: integer input [C] or [B, C] is lowered, not {_dtype(x)} of "
                                 f"rank {_rank(x)}")
            mode = attr.get("mode", b"TF")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            slots = _values(attr["ngram_indexes"]).reshape(-1)
            size = int(slots.max()) + 1
            rows = x if _rank(x) == 2 else op.expand_dims(x, [0])
            rows = bb.normalize(op.astype(rows, "int64"))
            counts = None
            for n, (grams, where) in tfidf_grams(attr).items():
                c = cls._count(bb, rows, grams, 1 if n == 1 else int(attr.get("max_skip_count", 0)) + 1)
                if c is None:
                    continue
                place = np.zeros((len(grams), size), np.float32)
                place[np.arange(len(grams)), where] = 1.0
                c = op.matmul(c, relax.const(place))
                counts = c if counts is None else op.add(counts, c)
            if counts is None:
                counts = op.zeros([int(rows.ty.shape[0]), size], "float32")
            y = cls._weigh(bb.normalize(counts), mode, attr, size)
            return y if _rank(x) == 2 else op.squeeze(y, [0])

        @staticmethod
        def _count(bb, rows, grams: np.ndarray, distances: int):
            """``[B, P]`` float32: how often each gram occurs in each row, over the skip
            distances ``1..distances``; None if no window fits."""
            n, length = grams.shape[1], int(rows.ty.shape[1])
            total = None
            for d in range(1, distances + 1):
                span = length - d * (n - 1)
                if span <= 0:
                    break
                parts = [op.strided_slice(rows, axes=[1], begin=[k * d], end=[k * d + span]) for k in range(n)]
                win = op.stack(parts, axis=2)  # [B, L, n]
                eq = op.equal(op.expand_dims(win, [2]), relax.const(grams[None, None], "int64"))  # [B, L, P, n]
                hit = op.equal(op.sum(op.astype(eq, "int32"), axis=[3]), relax.const(n, "int32"))
                c = op.sum(op.astype(hit, "float32"), axis=[1])
                total = c if total is None else op.add(total, c)
            return total

        @staticmethod
        def _weigh(counts, mode: str, attr: dict, size: int):
            """TF / IDF / TFIDF; ``weights[j]`` weighs output slot ``j`` (as the reference and
            onnxruntime read it; onnxruntime wants one weight per pool n-gram)."""
            w = _values(attr.get("weights", [])).astype(np.float32).reshape(-1)
            if 0 < len(w) < size:
                raise ValueError(f"TfIdfVectorizer: {len(w)} weights for {size} output slots")
            w = relax.const(w[:size]) if len(w) else None
            if mode == "TF":
                return counts
            if mode == "IDF":
                seen = op.astype(op.greater(counts, relax.const(0.0, "float32")), "float32")
                return seen if w is None else op.multiply(seen, w)
            if mode == "TFIDF":
                return counts if w is None else op.multiply(counts, w)
            raise ValueError(f"TfIdfVectorizer: unknown mode {mode!r} (TF, IDF, TFIDF)")


register_if_available(register)

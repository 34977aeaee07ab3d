"""Converters for ``ai.onnx.ml`` ops on numeric tensors that TVM's Relax importer lacks.

- Binarizer: ``x > threshold`` as 1 / 0 in the input's type.
- ArrayFeatureExtractor: ``X[..., indices]`` (one ``take`` on the last axis, the indices
  flattened); a 1-D ``X`` gives ``[1, len(indices)]``, as onnxruntime does.

- TreeEnsemble (opset 5; SUM / AVERAGE aggregation, no post transform): :func:`forest_v5`
  reads the nodes (split nodes, then leaves), :func:`forest_walk` compiles one kernel that walks
  every tree from its root to a leaf for each row (the comparison each node's mode names, NaN
  going true where ``nodes_missing_value_tracks_true``; set membership from precomputed
  :func:`decisions`) and adds the leaf's weight to its target (divided by the number of trees
  for AVERAGE), in the input's float type. Work grows with the depth, constants with the
  number of nodes (a 10,000-tree LightGBM export, 4.8 M nodes, compiles). Other aggregations and
  post transforms are refused by name.

- The ai.onnx.ml 1-3 forms that skl2onnx / onnxmltools write for scikit-learn models, in
  float32 whatever the input's type:
  TreeEnsembleClassifier / TreeEnsembleRegressor: :func:`legacy_forest` reads their
  ``(treeid, nodeid)``-keyed nodes (BRANCH_LEQ..BRANCH_NEQ; a leaf may add to several
  targets), walked the same way; scores are the summed weights plus ``base_values`` (the
  regressor's AVERAGE divides by the number of trees; MIN / MAX are refused). LinearClassifier:
  ``x @ coefficients.T + intercepts``. A classifier's label is its integer class label of the
  highest raw score (the first on a tie, as onnxruntime), its scores go through
  ``post_transform`` (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO; PROBIT refused). Two-class tree
  classifiers follow onnxruntime's binary rules (:func:`binary_tree_outputs`), and so do
  two-class linear classifiers with one score; string labels are refused by name.
  LinearRegressor (NONE only), Scaler
  ``(x - offset) * scale``, Normalizer (MAX, L1, L2 over the last axis).

- TfIdfVectorizer (ai.onnx, integer inputs ``[C]`` or ``[B, C]``): the pool's n-grams
  (:func:`tfidf_grams`, sizes ``min_gram_length..max_gram_length``; a duplicate keeps its last
  index, as the reference's trie does) are matched at every start ``i`` and skip distance
  ``d = 1..max_skip_count + 1`` (unigrams once, at ``d = 1``): the windows
  ``x[..., i + k*d]`` (``k < n``, strided slices stacked to ``[B, L, n]``) equal to a gram in all
  ``n`` places count 1; the counts ``[B, P]`` go to their output slots through a constant 0/1
  matrix ``[P, O]`` (``O = max(ngram_indexes) + 1``); then TF (counts), IDF (``weights`` or 1
  where the count is > 0) or TFIDF (``weights * count``), ``weights[j]`` weighing output slot
  ``j``. String pools are refused by name.

- LabelEncoder with numeric keys and values (:func:`label_encoder_table`): the value of the
  key each element equals (from opset 4 a NaN key matches NaN), else the default.

String-typed ml ops (LabelEncoder on strings, ...) stay refused by name: Relax tensors hold
no strings.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _attr_array(attr: dict, name: str, default=None) -> np.ndarray | None:
    """Attribute ``name`` or its ``name_as_tensor`` twin (ai.onnx.ml 3) as a float64 array."""
    for key in (name, f"{name}_as_tensor"):
        if attr.get(key) is not None:
            return _values(attr[key]).astype(np.float64).reshape(-1)
    return None if default is None else np.asarray(default, np.float64)


@dataclass
class Forest:
    """A tree ensemble as :func:`forest_walk` reads it. Split nodes are ``0..S-1``: feature
    ``feats``, threshold ``splits``, comparison ``modes`` (:data:`MODES` indices; 6 is MEMBER of
    ``sets``' row, NaN-padded), ``tracks`` (a NaN feature goes true); ``true_next`` /
    ``false_next`` ``[S]`` the node each decision leads to. Leaves are ``S..S+L-1``. ``roots``
    ``[T]`` one per tree (a leaf for a tree that is one leaf); ``depth`` the most splits on a
    root-to-leaf path. ``leaves, targets, weights`` list what each leaf adds to which target
    (a leaf may have several entries)."""

    feats: np.ndarray
    splits: np.ndarray
    modes: np.ndarray
    tracks: np.ndarray | None
    sets: np.ndarray | None
    true_next: np.ndarray
    false_next: np.ndarray
    roots: np.ndarray
    depth: int
    n_leaves: int
    leaves: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @property
    def n_splits(self) -> int:
        return len(self.feats)


def _depth(true_next: np.ndarray, false_next: np.ndarray, roots: np.ndarray, what: str) -> int:
    """The most splits on a path from ``roots`` (node ids; split nodes are ``< len(true_next)``),
    level by level; a cycle, or a split node no root reaches, is refused by name."""
    n_splits = len(true_next)
    reached = np.zeros(n_splits, bool)
    level = np.unique(roots[roots < n_splits])
    depth = 0
    while level.size:
        if depth > n_splits:
            raise ValueError(f"{what}: the nodes do not form trees (a cycle)")
        reached[level] = True
        depth += 1
        nxt = np.unique(np.concatenate([true_next[level], false_next[level]]))
        level = nxt[nxt < n_splits]
    if not reached.all():
        raise ValueError(f"{what}: the nodes do not form trees ({int((~reached).sum())} split nodes reached from "
                         "no root: a cycle or no root)")
    return depth


def forest_v5(attr: dict) -> Forest:
    """TreeEnsemble (ai.onnx.ml 5) as a :class:`Forest`: ``nodes_*leafs`` say whether a child id
    is a leaf's (into ``leaf_*``) or a split node's; a root whose two children are the same
    leaf is a tree that is one leaf. AVERAGE divides the leaf weights by the number of trees."""
    modes = _values(attr["nodes_modes"]).astype(np.int64).reshape(-1)
    n_splits = len(modes)
    weights = _values(attr["leaf_weights"]).astype(np.float64).reshape(-1)
    n_leaves = len(weights)
    nxt = []
    for ids, leafs in (("nodes_truenodeids", "nodes_trueleafs"), ("nodes_falsenodeids", "nodes_falseleafs")):
        child = _values(attr[ids]).astype(np.int64).reshape(-1)
        leaf = _values(attr[leafs]).astype(bool).reshape(-1)
        if ((child < 0) | (child >= np.where(leaf, n_leaves, n_splits))).any():
            raise ValueError("TreeEnsemble: a node points to a node or leaf that does not exist")
        nxt.append(np.where(leaf, n_splits + child, child))
    roots = _values(attr["tree_roots"]).astype(np.int64).reshape(-1)
    if ((roots < 0) | (roots >= n_splits)).any():
        raise ValueError("TreeEnsemble: a tree root names a node that does not exist")
    one_leaf = (nxt[0][roots] == nxt[1][roots]) & (nxt[0][roots] >= n_splits)
    roots = np.where(one_leaf, nxt[0][roots], roots)
    if int(attr.get("aggregate_function", 1)) == 0:
        weights = weights / len(roots)
    tracks = attr.get("nodes_missing_value_tracks_true")
    return Forest(
        _values(attr["nodes_featureids"]).astype(np.int64).reshape(-1), _values(attr["nodes_splits"]).reshape(-1),
        modes, None if tracks is None else _values(tracks).astype(bool).reshape(-1),
        members(attr, modes) if (modes == 6).any() else None, nxt[0], nxt[1], roots,
        _depth(nxt[0], nxt[1], roots, "TreeEnsemble"), n_leaves, np.arange(n_leaves),
        _values(attr["leaf_targetids"]).astype(np.int64).reshape(-1), weights)


def legacy_forest(attr: dict, prefix: str, n_targets: int) -> Forest:
    """A TreeEnsembleClassifier (``prefix`` "class") or TreeEnsembleRegressor ("target"),
    ai.onnx.ml 1-3, as a :class:`Forest`: nodes are keyed by ``(treeid, nodeid)``; the split
    nodes keep their order, and so do the leaves (BRANCH_LEQ..BRANCH_NEQ are :data:`MODES`
    0..5 in the same order); roots are the nodes no split node points to. The weights name
    their leaf by ``(treeid, nodeid)`` too. Vectorized: a 10,000-tree LightGBM export has
    4.8 M nodes."""
    what = f"{prefix} tree ensemble"
    trees = _values(attr["nodes_treeids"]).astype(np.int64).reshape(-1)
    ids = _values(attr["nodes_nodeids"]).astype(np.int64).reshape(-1)
    modes = np.asarray([_text(m) for m in attr["nodes_modes"]])
    unknown = sorted(set(np.unique(modes).tolist()) - set(LEGACY_MODES) - {"LEAF"})
    if unknown:
        raise ValueError(f"{what}: node modes {unknown} are not lowered")
    n = len(modes)
    split = modes != "LEAF"
    n_splits = int(split.sum())
    number = np.empty(n, np.int64)  # split nodes 0..S-1, leaves S..S+L-1, each in node order
    number[split], number[~split] = np.arange(n_splits), n_splits + np.arange(n - n_splits)
    width = int(max(ids.max(initial=0), 0)) + 1
    key = trees * width + ids
    order = np.argsort(key, kind="stable")
    if (np.diff(key[order]) == 0).any():
        raise ValueError(f"{what}: two nodes have the same (treeid, nodeid)")

    def find(t: np.ndarray, i: np.ndarray, who: str) -> np.ndarray:
        """Positions of the nodes ``(t, i)``; one that does not exist is refused."""
        want = t * width + i
        pos = np.minimum(np.searchsorted(key[order], want), n - 1)
        bad = (i < 0) | (i >= width) | (key[order][pos] != want)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"{what}: {who} ({int(t[k])}, {int(i[k])}) points to a node that does not exist")
        return order[pos]

    nxt = [number[find(trees[split], _values(attr[name]).astype(np.int64).reshape(-1)[split], f"node {name}")]
           for name in ("nodes_truenodeids", "nodes_falsenodeids")]
    pointed = np.zeros(n, bool)
    pointed[nxt[0]] = pointed[nxt[1]] = True
    roots = np.flatnonzero(~pointed)
    roots = roots[np.argsort(trees[np.argsort(number)][roots], kind="stable")]  # in tree order
    w_trees, w_nodes, w_targets = (_values(attr[f"{prefix}_{k}"]).astype(np.int64).reshape(-1)
                                   for k in ("treeids", "nodeids", "ids"))
    if ((w_targets < 0) | (w_targets >= n_targets)).any():
        raise ValueError(f"{what}: a weight names target {int(w_targets.max())} that does not exist")
    at = number[find(w_trees, w_nodes, "a weight names node")]
    leaf = at >= n_splits  # weights on split nodes are never reached
    tracks = attr.get("nodes_missing_value_tracks_true")
    return Forest(
        _values(attr["nodes_featureids"]).astype(np.int64).reshape(-1)[split], _attr_array(attr, "nodes_values")[split],
        sum(k * (modes[split] == m) for k, m in enumerate(LEGACY_MODES)).astype(np.int64).reshape(-1),
        None if tracks is None else _values(tracks).astype(bool).reshape(-1)[split], None, nxt[0], nxt[1], roots,
        _depth(nxt[0], nxt[1], roots, what), n - n_splits, at[leaf] - n_splits, w_targets[leaf],
        _attr_array(attr, f"{prefix}_weights")[leaf])


_COMPARE = ("<=", "<", ">=", ">", "==", "!=")  # MODES as TVMScript ("!=" also true on NaN)
WALK_CHUNKS = 16  # trees are walked in this many parallel chunks ...
WALK_PARALLEL_STEPS = 4096  # ... where rows x trees reach this (a 100-tree forest on one row: 17 vs 19-23 us)


def walk_source(f: Forest, rows: int, features: int, n_targets: int, dtype: str, dense: bool) -> str:
    """The forest walk kernel as TVMScript text (see :func:`forest_walk`)."""
    s, trees = f.n_splits, len(f.roots)
    chunks = WALK_CHUNKS if trees >= WALK_CHUNKS and rows * trees >= WALK_PARALLEL_STEPS else 1
    per = -(-trees // chunks)
    args = [("x", (rows, features), dtype), ("nodes", (max(s, 1), 4), "int32")]
    if f.sets is not None:
        args.append(("cond", (rows, max(s, 1)), "int8"))
    else:
        if dtype != "float32":
            args.append(("thr", (max(s, 1),), dtype))
        present = [m for m in range(len(MODES)) if (f.modes == m).any()]
        if len(present) > 1:
            args.append(("mode", (s,), "int8"))
        if f.tracks is not None and f.tracks.any():
            args.append(("tracks", (s,), "int8"))
    args.append(("roots", (trees,), "int32"))
    args += [("w", (f.n_leaves, n_targets), dtype)] if dense else [("value", (f.n_leaves,), dtype),
                                                                  ("target", (f.n_leaves,), "int32")]
    args.append(("out", (rows, n_targets), dtype))
    names = {n for n, _, _ in args}
    if "cond" in names:
        bit = "cond[b, node[0]] != T.int8(0)"
    else:
        v = "x[b, nodes[node[0], 0]]"
        t = 'T.reinterpret("float32", nodes[node[0], 3])' if dtype == "float32" else "thr[node[0]]"

        def test(m: int) -> str:  # NaN != t is true (onnxruntime's C++); TVM's "!=" is LLVM's ordered one
            return f"T.Or({v} != {t}, T.isnan({v}))" if MODES[m] == "not_equal" else f"{v} {_COMPARE[m]} {t}"

        bit = test(present[-1]) if present else "False"
        for m in reversed(present[:-1]):
            bit = f"T.if_then_else(mode[node[0]] == T.int8({m}), {test(m)}, {bit})"
        if "tracks" in names:
            bit = f"T.Or({bit}, T.And(T.isnan({v}), tracks[node[0]] != T.int8(0)))"
    add = (f"for k in T.serial({n_targets}):\n{' ' * 24}part[c, b, k] = part[c, b, k] + w[leaf, k]" if dense else
           "part[c, b, target[leaf]] = part[c, b, target[leaf]] + value[leaf]")
    params = ", ".join(f'{n}: T.Buffer({shape!r}, "{dt}")' for n, shape, dt in args)
    zero = f'T.{dtype}(0)'
    return f"""@T.prim_func
def forest_walk({params}):
    T.func_attr({{"tirx.noalias": True}})
    part = T.alloc_buffer(({chunks}, {rows}, {n_targets}), "{dtype}")
    for c in T.parallel({chunks}):
        node = T.alloc_buffer((1,), "int32", scope="local")
        for b, k in T.grid({rows}, {n_targets}):
            part[c, b, k] = {zero}
        for i in T.serial({per}):  # tree-major: a tree's nodes stay in cache over the rows
            for b in T.serial({rows}):
                if c * {per} + i < {trees}:
                    node[0] = roots[c * {per} + i]
                    while node[0] < {s}:
                        node[0] = T.if_then_else({bit}, nodes[node[0], 1], nodes[node[0], 2])
                    leaf = node[0] - {s}
                    {add}
    for b, k in T.grid({rows}, {n_targets}):
        out[b, k] = {zero}
        for c in T.serial({chunks}):
            out[b, k] = out[b, k] + part[c, b, k]
"""


def forest_walk(bb, x, f: Forest, n_targets: int, dtype: str):
    """``[B, n_targets]`` in ``dtype``: one kernel walks every tree of ``f`` from its root to a
    leaf for each row of ``x`` ``[B, F]`` (a ``while`` loop per tree, as onnxruntime's walk:
    work grows with the depth, constants with the number of nodes) and adds the leaf's weights.
    A split node is one 16-byte row (feature, true and false next node, float32 threshold
    bits; float64 thresholds apart), so a step reads one cache line.
    A split compares the row's feature with its threshold by the mode it names (NaN going true
    where ``tracks``); a forest with MEMBER nodes reads precomputed :func:`decisions`. Where
    rows x trees reach :data:`WALK_PARALLEL_STEPS`, the trees are cut into :data:`WALK_CHUNKS`
    chunks walked in parallel, each summing in tree order, and the chunks' sums are added in
    chunk order: the result does not depend on the number of threads."""
    import tvm
    from tvm import relax

    from .lower import opaque_kernel

    op = relax.op
    rows, features = int(x.ty.shape[0]), int(x.ty.shape[1])
    if len(f.targets) and not 0 <= f.targets.min() <= f.targets.max() < n_targets:
        raise ValueError(f"tree ensemble: a leaf adds to target {int(f.targets.max())} of {n_targets}")
    if f.sets is None and len(f.feats) and not 0 <= f.feats.min() <= f.feats.max() < features:
        raise ValueError(f"tree ensemble: a node reads feature {int(f.feats.max())} of {features}")
    const = lambda v, dt: relax.const(np.asarray(v).astype(dt).reshape(-1) if np.size(v) else np.zeros(1, dt), dt)  # noqa: E731
    dense = not (np.bincount(f.leaves, minlength=f.n_leaves) <= 1).all()  # a leaf adding to several targets
    nodes = np.zeros((max(f.n_splits, 1), 4), np.int32)  # one 16-byte row per split node
    nodes[:f.n_splits, 0], nodes[:f.n_splits, 1], nodes[:f.n_splits, 2] = f.feats, f.true_next, f.false_next
    if dtype == "float32":
        nodes[:f.n_splits, 3] = f.splits.astype(np.float32).view(np.int32)
    args = [x, relax.const(nodes, "int32")]
    if f.sets is not None:
        args.append(bb.normalize(op.astype(decisions(bb, x, f.feats, f.splits, f.modes, f.sets, f.tracks), "int8")))
    else:
        if dtype != "float32":
            args.append(const(f.splits, dtype))
        if len({int(m) for m in f.modes}) > 1:
            args.append(const(f.modes, "int8"))
        if f.tracks is not None and f.tracks.any():
            args.append(const(f.tracks, "int8"))
    args.append(const(f.roots, "int32"))
    if dense:
        w = np.zeros((f.n_leaves, n_targets), np.float64)
        np.add.at(w, (f.leaves, f.targets), f.weights)
        args.append(relax.const(w.astype(dtype), dtype))
    else:
        value, target = np.zeros(f.n_leaves, np.float64), np.zeros(f.n_leaves, np.int32)
        value[f.leaves], target[f.leaves] = f.weights, f.targets
        args += [const(value, dtype), const(target, "int32")]
    kernel = opaque_kernel(tvm.script.from_source(walk_source(f, rows, features, n_targets, dtype, dense)))
    gv = bb.add_func(kernel, "forest_walk")
    return bb.emit(relax.call_tir(gv, args, out_ty=relax.TensorType([rows, n_targets], dtype)))


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


def label_encoder_table(attr: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A numeric LabelEncoder's (keys, values, default): ``keys_int64s`` / ``keys_floats`` /
    ``keys_tensor`` and the same for values (int64 or float32; the ``default_*`` attribute of
    the values' type, -1 / -0.0 when absent, or ``default_tensor``). Strings are refused."""
    if any(attr.get(k) for k in ("keys_strings", "values_strings", "classes_strings")):
        raise ValueError("LabelEncoder: string keys or values are not lowered (Relax tensors hold no strings)")

    def pick(prefix: str) -> np.ndarray | None:
        for name, dt in ((f"{prefix}_int64s", np.int64), (f"{prefix}_floats", np.float32), (f"{prefix}_tensor", None)):
            if attr.get(name) is not None and np.size(_values(attr[name])):
                v = _values(attr[name]).reshape(-1)
                return v.astype(dt if dt is not None else (np.float32 if v.dtype.kind == "f" else np.int64))
        return None

    keys, values = pick("keys"), pick("values")
    if keys is None or values is None or len(keys) != len(values):
        raise ValueError("LabelEncoder: numeric keys and values of the same length are required")
    if attr.get("default_tensor") is not None:
        default = _values(attr["default_tensor"]).reshape(-1)[0]
    elif values.dtype.kind == "f":
        default = float(attr.get("default_float", -0.0))
    else:
        default = int(attr.get("default_int64", -1))
    return keys, values, np.asarray(default, values.dtype)


def class_labels(attr: dict, op_type: str, two: bool = False) -> np.ndarray:
    """A classifier's integer labels (``classlabels_int64s`` / ``classlabels_ints``); string
    labels are refused by name (Relax tensors hold no strings), and so are two-class models
    unless ``two`` (the converter lowers onnxruntime's binary rules: :func:`binary_tree_outputs`)."""
    if attr.get("classlabels_strings"):
        raise ValueError(f"{op_type}: string class labels are not lowered (Relax tensors hold no strings; "
                         "export with integer labels)")
    labels = _values(attr.get("classlabels_int64s", attr.get("classlabels_ints", []))).astype(np.int64).reshape(-1)
    if len(labels) < (2 if two else 3):
        raise ValueError(f"{op_type}: {len(labels)}-class models are not lowered (onnxruntime's binary score "
                         f"rules); {'2' if two else '3'} or more classes are")
    return labels


def leaf_trees(f: Forest) -> np.ndarray:
    """``[L]`` the tree (index into ``f.roots``) each leaf belongs to (-1: reached from no
    root), level by level from the roots."""
    s = f.n_splits
    tree = np.full(s + f.n_leaves, -1, np.int64)
    tree[f.roots] = np.arange(len(f.roots))
    level = f.roots[f.roots < s]
    while level.size:
        for nxt in (f.true_next[level], f.false_next[level]):
            fresh = tree[nxt] < 0
            tree[nxt[fresh]] = tree[level[fresh]]
        level = np.unique(np.concatenate([f.true_next[level], f.false_next[level]]))
        level = level[level < s]
    return tree[s:]


def coverage(f: Forest, k: int) -> str:
    """Whether onnxruntime's run-time "has a score" flag of target ``k`` is always set ("full":
    some tree has a weight for ``k`` on every leaf, and every row reaches one leaf of every
    tree, as in a gradient-boosted multiclass forest's trees of class ``k``), never set
    ("none": no leaf has one), or depends on the leaves a row reaches ("partial")."""
    scored = np.zeros(f.n_leaves, bool)
    scored[f.leaves[f.targets == k]] = True
    if not scored.any():
        return "none"
    trees = leaf_trees(f)
    missing = np.bincount(trees[(trees >= 0) & ~scored], minlength=len(f.roots))
    has_leaves = np.bincount(trees[trees >= 0], minlength=len(f.roots)) > 0
    return "full" if (has_leaves & (missing == 0)).any() else "partial"


def scored_targets(f: Forest, n: int, base: np.ndarray, op_type: str) -> np.ndarray:
    """``[n]`` bool: the targets onnxruntime writes a score for (an unscored one is written as
    0 and, in a classifier, never wins the label): those with a base value (the first
    ``len(base)``, where base values are used) or a :func:`coverage` "full"; one with a
    "partial" coverage and no base value is refused by name (its flag changes from row to
    row)."""
    out = np.zeros(n, bool)
    for k in range(n):
        cov = coverage(f, k)
        if k < len(base) or cov == "full":
            out[k] = True
        elif cov == "partial":
            raise ValueError(f"{op_type}: target {k} has weights on some leaves only and no base value; "
                             "onnxruntime's run-time has-score rule for it is not lowered")
    return out


def binary_tree_outputs(bb, scores, f: Forest, labels: np.ndarray, base: np.ndarray, post: str):
    """(label, probabilities ``[B, 2]``) of a two-class TreeEnsembleClassifier by onnxruntime's
    rules (``TreeAggregatorClassifier::FinalizeScores`` and ``write_scores``), from the summed
    leaf weights ``scores`` ``[B, 2]``. Whether a class "has a score" is onnxruntime's run-time
    flag (a reached leaf has a weight for it); it is lowered where it is the same for every
    leaf (every leaf, or none, has a weight for the class) and refused by name otherwise.

    - two ``base_values``: if class 1 has a score, ``s1 = b1 + s0`` and ``s0 = -s1``; else each
      adds its base value. One: ``s0 += b0``, and without a class-1 score the row keeps one
      score. None: the same one-score rule.
    - the winning weight ``p`` is ``s1`` (two scores, class 1 scored), else ``s0`` (class 0
      scored), else 0. With weights on one class only (onnxruntime's ``binary_case``): all
      weights >= 0: label 1 where ``p > 0.5``, and one score ``s`` widens to ``[1 - s, s]``;
      mixed signs: label 1 where ``p > 0``, ``s`` widens to ``[-s, s]``; under LOGISTIC it
      widens to ``[logistic(-s), logistic(s)]`` either way (onnxruntime 1.32, measured). With weights on
      both classes the label is the integer 1 or 0 by ``p > 0`` (onnxruntime's default
      positive / negative labels, not ``classlabels``).
    - two scores go through the post transform as a pair, a class without a score as 0 (as
      onnxruntime writes it)."""
    from tvm import relax

    op = relax.op
    has = []
    for k in (0, 1):
        if coverage(f, k) == "partial":
            raise ValueError(f"TreeEnsembleClassifier (2 classes): class {k} has weights on some leaves only; "
                             "onnxruntime's run-time has-score rule for it is not lowered")
        has.append(coverage(f, k) == "full")
    if not (has[0] or has[1]):
        raise ValueError("TreeEnsembleClassifier (2 classes): no leaf has a weight")
    c = lambda v: relax.const(np.float32(v), "float32")  # noqa: E731
    s0, s1 = (bb.normalize(op.take(scores, relax.const(np.array(k, np.int64)), axis=1)) for k in (0, 1))
    two = True  # onnxruntime keeps two scores (else one, widened below)
    if len(base) == 2:
        if has[1]:
            s1 = bb.normalize(op.add(s0, c(base[1])))
            s0 = bb.normalize(op.negative(s1))
        else:
            s0, s1 = op.add(s0, c(base[0])), op.add(s1, c(base[1]))
    elif len(base) < 2:
        s0 = bb.normalize(op.add(s0, c(base[0]))) if len(base) else s0
        two = has[1]
    p = s1 if (two and has[1]) else s0
    one_class = len({int(t) for t in f.targets}) == 1
    cut = 0.5 if (f.weights >= 0).all() else 0.0
    if one_class:
        label = op.where(op.greater(p, c(cut)), relax.const(labels[1], "int64"), relax.const(labels[0], "int64"))
    else:
        label = op.astype(op.greater(p, c(0.0)), "int64")
    if two:  # an unscored class is written as 0 (onnxruntime's ScoreValue -> float)
        zero = bb.normalize(op.zeros_like(s0))
        pair = bb.normalize(op.stack([s0 if has[0] else zero, s1 if has[1] else zero], axis=1))
        return label, post_transform(pair, {"post_transform": post}, "TreeEnsembleClassifier")
    if not one_class:  # one score left needs class 1 unscored: weights on class 0 only
        raise ValueError("TreeEnsembleClassifier (2 classes): onnxruntime writes one score column here")
    if post == "LOGISTIC":
        pair = [op.sigmoid(op.negative(s0)), op.sigmoid(s0)]
    elif cut == 0.5:
        pair = [op.subtract(c(1.0), s0), s0]
    else:
        pair = [op.negative(s0), s0]
    return label, op.stack(pair, axis=1)


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


def _tree_input(bb, x):
    """``x`` for the legacy forests' comparisons: float64 kept (onnxruntime compares a double
    input with the thresholds in double: rounding it to float32 first sent values just past a
    threshold down the other branch), any other type as float32. Returns (x, its dtype)."""
    from tvm import relax

    if _dtype(x) == "float64":
        return x, "float64"
    return (x if _dtype(x) == "float32" else bb.normalize(relax.op.astype(x, "float32"))), "float32"


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
    """The label of each row's highest score (the first on a tie), as onnxruntime's loop finds
    it (``score[j] > best``, starting from class 0): a NaN score never wins, and a row whose
    class-0 score is NaN (a NaN feature in a linear model) gets class 0."""
    from tvm import relax

    op = relax.op
    nan = op.isnan(scores)
    best = op.argmax(op.where(nan, relax.const(-np.inf, "float32"), scores), axis=1)
    first_nan = op.take(nan, relax.const(np.array(0, np.int64)), axis=1)
    best = op.where(first_nan, op.zeros_like(best), best)
    return op.take(relax.const(labels, "int64"), best, axis=0)  # int64 kept: const narrows


def register() -> None:
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    op = relax.op

    @register_converter(ML, "LabelEncoder")
    class LabelEncoder(OnnxOpConverter):
        """Numeric LabelEncoder (ai.onnx.ml 2-4; scikit-learn's IsolationForest export has
        40): each element's value where it equals a key, else the default; from opset 4 a
        NaN key matches NaN (onnxruntime; at opset 2 it matches nothing). String keys or
        values are refused by name (Relax tensors hold no strings)."""

        @classmethod
        def _impl_v2(cls, bb, inputs, attr, params, nan_keys: bool = False):
            keys, values, default = label_encoder_table(attr)
            x = inputs[0]
            kdt = "float32" if keys.dtype.kind == "f" else "int64"
            if _dtype(x) != kdt:
                raise ValueError(f"LabelEncoder: {_dtype(x)} input with {kdt} keys")
            vdt = str(values.dtype)
            hit = bb.normalize(op.equal(op.expand_dims(x, [-1]), relax.const(keys, kdt)))
            if nan_keys and keys.dtype.kind == "f" and np.isnan(keys).any():  # NaN == NaN is false
                nan_key = relax.const(np.isnan(keys))
                hit = bb.normalize(op.logical_or(hit, op.logical_and(op.expand_dims(op.isnan(x), [-1]), nan_key)))
            found = op.max(op.astype(hit, "int32"), axis=[-1])
            index = op.argmax(op.astype(hit, "int32"), axis=-1)
            value = op.take(relax.const(values, vdt), index, axis=0)
            return op.where(op.greater(found, relax.const(0, "int32")), value, relax.const(default, vdt))

        @classmethod
        def _impl_v4(cls, bb, inputs, attr, params):
            return cls._impl_v2(bb, inputs, attr, params, nan_keys=True)

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
                                 "(SUM or AVERAGE without a post transform are; onnxruntime 1.32 reads the "
                                 "post_transform codes in another order than the ONNX spec: 1 runs LOGISTIC)")
            x = inputs[0]
            n = int(attr.get("n_targets", int(_values(attr["leaf_targetids"]).max()) + 1))
            return forest_walk(bb, x, forest_v5(attr), n, _dtype(x))

    @register_converter(ML, "TreeEnsembleClassifier")
    class TreeEnsembleClassifier(OnnxOpConverter):
        """Scores: the leaf weights summed over the trees plus ``base_values``; the label
        of the highest raw score; then the post transform."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            labels = class_labels(attr, "TreeEnsembleClassifier", two=True)
            x, dt = _tree_input(bb, inputs[0])
            forest = legacy_forest(attr, "class", len(labels))
            scores = forest_walk(bb, x, forest, len(labels), dt)
            if dt != "float32":  # summed in double, written as float32 (the op's output type)
                scores = bb.normalize(op.astype(scores, "float32"))
            if len(labels) == 2:
                post = _text(attr.get("post_transform", "NONE"))
                if post not in POST_TRANSFORMS:
                    raise ValueError(f"TreeEnsembleClassifier: post_transform {post} is not lowered")
                base = _attr_array(attr, "base_values", np.zeros(0))
                return relax.Tuple(list(binary_tree_outputs(bb, scores, forest, labels, base, post)))
            n = len(labels)
            base = _attr_array(attr, "base_values", np.zeros(0))[:n]
            scored = scored_targets(forest, n, base, "TreeEnsembleClassifier")
            if not scored.any():
                raise ValueError("TreeEnsembleClassifier: no class has a score (no base values, no leaf weights)")
            full = np.zeros(n, np.float32)
            full[:len(base)] = base
            scores = bb.normalize(op.add(scores, relax.const(full)))
            if not scored.all():  # an unscored class: written as 0, never the label (onnxruntime)
                mask = relax.const(scored)
                label = _label_of(op.where(mask, scores, relax.const(-np.inf, "float32")), labels)
                scores = bb.normalize(op.where(mask, scores, relax.const(0.0, "float32")))
                return relax.Tuple([label, post_transform(scores, attr, "TreeEnsembleClassifier")])
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
            x, dt = _tree_input(bb, inputs[0])
            forest = legacy_forest(attr, "target", n)
            if agg == "AVERAGE":
                forest.weights = forest.weights / max(1, len(forest.roots))
            scores = forest_walk(bb, x, forest, n, dt)
            if dt != "float32":
                scores = bb.normalize(op.astype(scores, "float32"))
            base = _attr_array(attr, "base_values", np.zeros(0))
            if n == 1:  # one target: its base value (the only one) is always added
                return op.add(scores, relax.const(np.resize(base, 1).astype("float32") if len(base) else
                                                  np.zeros(1, np.float32)))
            base = base if len(base) == n else np.zeros(0)  # onnxruntime adds base values given per target only
            scored = np.array([coverage(forest, k) != "none" for k in range(n)])
            for k in range(len(base)):
                if coverage(forest, k) == "partial" and base[k] != 0:
                    raise ValueError(f"TreeEnsembleRegressor: target {k} has weights on some leaves only and a "
                                     "base value; onnxruntime's run-time has-score rule for it is not lowered")
            full = np.zeros(n, np.float32)
            full[:len(base)] = base
            out = op.add(scores, relax.const(full))
            return out if scored.all() else op.where(relax.const(scored), out, relax.const(0.0, "float32"))

    @register_converter(ML, "LinearClassifier")
    class LinearClassifier(OnnxOpConverter):
        """Scores ``x @ coefficients.T + intercepts`` (one row per class); the label of the
        highest raw score; then the post transform. Two labels with one intercept (one score
        ``s``), as onnxruntime: label 1 where ``s > 0``, scores ``[1 - p, p]`` with ``p`` the
        logistic of ``s`` under LOGISTIC and ``s`` itself under the other transforms."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            labels = class_labels(attr, "LinearClassifier", two=True)
            x = _as_float(bb, inputs[0] if _rank(inputs[0]) == 2 else op.expand_dims(inputs[0], [0]))
            given = _attr_array(attr, "intercepts")
            rows = 1 if len(labels) == 2 and given is not None and len(given) == 1 else len(labels)
            coef = _coefficients(attr, rows, x, "LinearClassifier")
            icpt = (given if given is not None else np.zeros(rows)).astype(np.float32)
            icpt = relax.const(np.broadcast_to(icpt, rows).copy())
            scores = bb.normalize(op.add(op.matmul(x, relax.const(coef.T.copy())), icpt))
            if rows == 2 or len(labels) > 2:
                return relax.Tuple([_label_of(scores, labels), post_transform(scores, attr, "LinearClassifier")])
            post = _text(attr.get("post_transform", "NONE"))
            if post not in POST_TRANSFORMS:
                raise ValueError(f"LinearClassifier: post_transform {post} is not lowered")
            s = bb.normalize(op.take(scores, relax.const(np.array(0, np.int64)), axis=1))
            label = op.where(op.greater(s, relax.const(0.0, "float32")), relax.const(labels[1], "int64"),
                             relax.const(labels[0], "int64"))
            p = bb.normalize(op.sigmoid(s) if post == "LOGISTIC" else s)
            return relax.Tuple([label, op.stack([op.subtract(relax.const(1.0, "float32"), p), p], axis=1)])

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

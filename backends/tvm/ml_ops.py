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
  (leaf weights by target, divided by the number of trees for AVERAGE). Other aggregations
  and post transforms are refused by name.

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


def _values(v) -> np.ndarray:
    """An attribute value (list, tensor attribute) as a numpy array."""
    import onnx

    if isinstance(v, onnx.TensorProto):
        return onnx.numpy_helper.to_array(v)
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def tree_paths(attr: dict) -> list[tuple[list[tuple[int, bool]], int]]:
    """Every root-to-leaf path of a TreeEnsemble: ([(node, decision), ...], leaf index)."""
    true_ids, false_ids = _values(attr["nodes_truenodeids"]), _values(attr["nodes_falsenodeids"])
    true_leaf, false_leaf = _values(attr["nodes_trueleafs"]), _values(attr["nodes_falseleafs"])
    paths = []
    for root in _values(attr["tree_roots"]).reshape(-1):
        root = int(root)
        if true_leaf[root] and false_leaf[root] and true_ids[root] == false_ids[root]:
            paths.append(([], int(true_ids[root])))  # a tree that is one leaf
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
                else:
                    stack.append((int(ids[node]), step))
    return paths


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
            dt = _dtype(x)
            cond = bb.normalize(cls._decisions(bb, x, attr))
            paths = tree_paths(attr)
            n_nodes = len(_values(attr["nodes_modes"]).reshape(-1))
            a = np.zeros((n_nodes, len(paths)))
            base, length = np.zeros(len(paths)), np.zeros(len(paths))
            targets, weights = _values(attr["leaf_targetids"]), _values(attr["leaf_weights"]).astype(np.float64)
            w = np.zeros((len(paths), int(attr.get("n_targets", int(targets.max()) + 1))))
            scale = 1.0 / len(_values(attr["tree_roots"]).reshape(-1)) if agg == 0 else 1.0
            for p, (path, leaf) in enumerate(paths):
                for node, decision in path:
                    a[node, p] += 1.0 if decision else -1.0
                    base[p] += 0.0 if decision else 1.0
                length[p] = len(path)
                w[p, int(targets[leaf])] += weights[leaf] * scale
            count = op.add(op.matmul(op.astype(cond, "float32"), relax.const(a.astype("float32"))),
                           relax.const(base.astype("float32")))
            reached = op.astype(op.equal(count, relax.const(length.astype("float32"))), dt)
            return op.matmul(reached, relax.const(w.astype(dt), dt))

        @staticmethod
        def _decisions(bb, x, attr):
            """``[B, nodes]`` bool: each node's split decision on each row."""
            modes = _values(attr["nodes_modes"]).astype(np.int64).reshape(-1)
            feats = relax.const(_values(attr["nodes_featureids"]).astype("int64").reshape(-1))
            v = bb.normalize(op.take(x, feats, axis=1))
            splits = relax.const(_values(attr["nodes_splits"]).astype(_dtype(x)).reshape(-1), _dtype(x))
            cond = op.zeros(v.ty.shape, "bool")
            for m, name in enumerate(MODES):
                if (modes == m).any():
                    cond = op.where(relax.const(modes == m), getattr(op, name)(v, splits), cond)
            if (modes == 6).any():
                sets = relax.const(members(attr, modes).astype(_dtype(x)), _dtype(x))
                hit = op.max(op.astype(op.equal(op.expand_dims(v, [2]), sets), "float32"), axis=[2])
                cond = op.where(relax.const(modes == 6), op.greater(hit, relax.const(0.0, "float32")), cond)
            tracks = attr.get("nodes_missing_value_tracks_true")
            if tracks is not None and _values(tracks).any():
                flags = relax.const(_values(tracks).astype(bool).reshape(-1))
                cond = op.logical_or(cond, op.logical_and(op.isnan(v), flags))
            return cond

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

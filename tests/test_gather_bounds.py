"""Run-time indices past their table (``lower.bounded_gathers``): an embedding lookup of token
ids compiled with TVM's default ``take`` read memory past the table for an id outside the
vocabulary (a segfault in ``optc run``, or garbage), where onnxruntime refuses the input. The
lookup now clamps such an index (``clip``); in-range ids are unchanged. ``optc run`` refuses
ids that reach a table through shape-only ops (``verify.index_ranges``), as onnxruntime does;
ids computed by arithmetic first are clamped, not detected."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import optc

pytestmark = pytest.mark.tvm


def _embedding(vocab: int = 16, dim: int = 8, shifted: bool = False) -> onnx.ModelProto:
    """ids -> Gather(table); ``shifted``: ids + 0 first (arithmetic the static check does not follow)."""
    table = onnx.numpy_helper.from_array(np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim), "table")
    nodes = [h.make_node("Gather", ["table", "idx" if shifted else "ids"], ["y"], axis=0)]
    inits = [table]
    if shifted:
        nodes.insert(0, h.make_node("Add", ["ids", "zero"], ["idx"]))
        inits.append(onnx.numpy_helper.from_array(np.zeros(1, np.int64), "zero"))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("ids", T.INT64, [1, 6])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 6, dim])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_run_time_gather_indices_are_clamped_not_read_past_the_table(tmp_path):
    pytest.importorskip("tvm")
    from optc.backends.tvm.lower import import_onnx, bounded_gathers
    from optc.frontend import TensorSpec

    mod, _ = import_onnx(_embedding(), [TensorSpec("ids", "int64", (1, 6))])
    assert 'mode="clip"' in bounded_gathers(mod)["main"].script()
    src = tmp_path / "emb.onnx"
    onnx.save(_embedding(shifted=True), src)
    ids = np.array([[0, 3, 15, -1, -16, 7]], np.int64)
    optc.compile(src, "cpu", tmp_path / "pkg", inputs={"ids": ids}, options=optc.CompileOptions.of(measure=False))
    np.testing.assert_array_equal(optc.run(tmp_path / "pkg", {"ids": ids})["y"],
                                  np.arange(128, dtype=np.float32).reshape(16, 8)[ids])
    np.savez(tmp_path / "bad.npz", ids=np.array([[0, 100000, 3, -100000, 2**40, 1]], np.int64))
    # in a subprocess: a read past the table is a segfault, which must not take pytest down
    res = subprocess.run([sys.executable, "-m", "optc", "run", str(tmp_path / "pkg"), "--inputs",
                          str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out.npz")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    y = np.load(tmp_path / "out.npz")["y"]
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() < 128  # rows of the table, nothing else


def test_run_refuses_ids_outside_the_table_by_name(tmp_path):
    """Token ids straight (or through Reshape / Cast) into an embedding Gather: an id outside
    [-vocab, vocab) is refused before the run (exit 2, the input, value and table named, no
    output written); the extremes of the range are accepted."""
    src = tmp_path / "emb.onnx"
    onnx.save(_embedding(), src)
    ok = np.array([[0, 3, 15, -1, -16, 7]], np.int64)
    optc.compile(src, "cpu", tmp_path / "pkg", inputs={"ids": ok}, options=optc.CompileOptions.of(measure=False))
    assert optc.run(tmp_path / "pkg", {"ids": ok})["y"].shape == (1, 6, 8)
    for bad in (16, -17, 2**40):
        np.savez(tmp_path / "bad.npz", ids=np.array([[0, bad, 3, 2, 1, 1]], np.int64))
        res = subprocess.run([sys.executable, "-m", "optc", "run", str(tmp_path / "pkg"), "--inputs",
                              str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out.npz")], capture_output=True, text=True)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert f"holds index {bad}" in res.stderr and "16 rows" in res.stderr, res.stderr
        assert not (tmp_path / "out.npz").exists()


def test_generated_ids_stay_inside_small_tables_and_given_ones_are_checked(tmp_path):
    """Generated integer inputs are drawn from [0, 8): a 2-row token-type table made onnxruntime,
    the reference, refuse them, and compile ended "unsupported model". They are kept inside
    every table they index now; ids given with --inputs outside it are refused by name (exit 2)."""
    from optc.errors import InvalidModelError

    table = onnx.numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "types")
    g = h.make_graph([h.make_node("Gather", ["types", "token_type_ids"], ["y"], axis=0)], "g",
                     [h.make_tensor_value_info("token_type_ids", T.INT64, [1, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 4])], [table])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "tt.onnx")
    report = optc.compile(tmp_path / "tt.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]
    bad = {"token_type_ids": np.array([[0, 1, 2, 0, 0, 1, 1, 0]], np.int64)}
    with pytest.raises(InvalidModelError, match="holds index 2, outside the 2 rows"):
        optc.compile(tmp_path / "tt.onnx", "cpu", tmp_path / "bad", inputs=bad,
                     options=optc.CompileOptions.of(measure=False))

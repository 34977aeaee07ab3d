"""Inputs as ``lower.host_tensor`` hands them to the kernels: a zero-size array (numpy gives it
all-zero strides, which TVM refused at run time as "not a compact array") becomes a fresh
compact tensor; a read-only array (``np.frombuffer``, onnx's ``numpy_helper.to_array``), which
DLPack refused to export, is copied. Compared with onnxruntime through ``optc.compile``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import optc
from optc.backends.tvm import lower

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


def test_a_zero_size_array_becomes_a_compact_tensor():
    a = np.zeros((2, 0, 4), np.float32)
    assert a.strides == (0, 0, 0)
    t = lower.host_tensor(a)
    assert tuple(t.shape) == (2, 0, 4) and str(t.dtype) == "float32"


@pytest.mark.parametrize("op, axes, out", [("ReduceSum", [2], [2, 0, 1]), ("ReduceMax", [1], [2, 1, 4])])
def test_reductions_of_a_zero_size_input(tmp_path, op, axes, out):
    g = h.make_graph([h.make_node(op, ["x", "axes"], ["y"], keepdims=1)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 0, 4])], [h.make_tensor_value_info("y", T.FLOAT, out)],
                     [h.make_tensor("axes", T.INT64, [len(axes)], axes)])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    feeds = {"x": np.zeros((2, 0, 4), np.float32)}
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs=feeds, options=optc.CompileOptions.of(measure=False))
    got = optc.run(tmp_path / "pkg", feeds)["y"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == want.shape == tuple(out) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_a_read_only_array_is_copied():
    a = np.frombuffer(np.arange(8, dtype=np.float32).tobytes(), np.float32).reshape(2, 4)
    assert not a.flags.writeable
    assert np.array_equal(lower.host_tensor(a).numpy(), a)


@pytest.mark.parametrize("kind", ["aligned", "misaligned", "big-endian", "bool"])
def test_host_tensors_are_64_byte_aligned_views_or_aligned_copies(kind):
    """An aligned, writable native array is passed without a copy; a misaligned or big-endian
    one through one 64-byte-aligned copy with the same values (the kernels assume 64 bytes)."""
    buf = np.zeros(64 * 3, np.uint8)
    start = (-buf.ctypes.data) % 64 + (4 if kind == "misaligned" else 0)
    a = buf[start:start + 40].view(np.float32).reshape(2, 5)
    a[...] = np.arange(10, dtype=np.float32).reshape(2, 5)
    if kind == "big-endian":
        a = a.astype(">f4")
    if kind == "bool":  # aligned too: passed as it is
        a = buf[start:start + 10].view(bool).reshape(2, 5)
        a[...] = np.arange(10).reshape(2, 5) % 3 == 0
    t = lower.host_tensor(a)
    assert t.data_ptr() % 64 == 0
    assert (t.data_ptr() == a.ctypes.data) == (kind in ("aligned", "bool"))
    np.testing.assert_array_equal(np.from_dlpack(t), a)

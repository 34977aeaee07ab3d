"""Verification checks element types, not only values: an artifact returning int32 where the
model declares int64 (or float64 for float32, uint8 for bool) has the right numbers but
breaks a deployment that reads the declared type, so it is refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import optc
from optc import verify
from optc.errors import VerificationError
from optc.frontend import TensorSpec


def test_compare_refuses_a_different_element_type_with_equal_values():
    ref = np.arange(6, dtype=np.int64).reshape(2, 3)
    cases = [(ref.astype(np.int32), ref), (ref.astype(np.float64), ref.astype(np.float32)),
             ((ref > 2).astype(np.uint8), ref > 2)]
    for out, r in cases:
        v = verify.compare([out], [r], ["y"])
        assert not v["passed"], (out.dtype, r.dtype)
        assert v["outputs"][0]["error"] == f"element type {out.dtype} != reference {r.dtype}"
    assert verify.compare([ref.copy()], [ref], ["y"])["passed"]


def test_declared_type_is_checked_even_where_the_reference_deviates():
    out = np.array([1, 2], np.int32)
    v = verify.compare([out], [out.copy()], ["idx"])  # a reference engine that also returned int32
    assert v["passed"]
    verify.check_declared_types(v, [out], [TensorSpec("idx", "int64", (2,))])
    assert not v["passed"] and "the model's declared int64" in v["outputs"][0]["error"]
    good = verify.compare([out.astype(np.int64)], [out.astype(np.int64)], ["idx"])
    assert verify.check_declared_types(good, [out.astype(np.int64)], [TensorSpec("idx", "int64", (2,))])["passed"]


def _argmax_and_mask(path):
    g = helper.make_graph(
        [helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0),
         helper.make_node("Greater", ["x", "t"], ["mask"]),
         helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.DOUBLE)], "types",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 5]),
         helper.make_tensor_value_info("wide", TensorProto.DOUBLE, [2, 5])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.tvm
def test_a_wrong_typed_artifact_is_refused(tmp_path, monkeypatch):
    from optc.backends.tvm.backend import CpuSession

    _argmax_and_mask(tmp_path / "m.onnx")
    opts = optc.CompileOptions.of(measure=False)
    report = optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "ok", options=opts)
    assert report["verify"]["passed"]
    assert [o["dtype"] for o in report["verify"]["outputs"]] == ["int64", "bool", "float64"]
    real = CpuSession.run_many
    for i, wrong, name in [(0, np.int32, "idx"), (1, np.uint8, "mask"), (2, np.float32, "wide")]:
        def narrowed(self, sets, i=i, wrong=wrong):  # same values, another element type
            outs = real(self, sets)
            return [[o.astype(wrong) if k == i else o for k, o in enumerate(call)] for call in outs]

        monkeypatch.setattr(CpuSession, "run_many", narrowed)
        with pytest.raises(VerificationError, match=f"{name}: element type {np.dtype(wrong)} != "):
            optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / f"bad{i}", options=opts)
        assert not (tmp_path / f"bad{i}").exists()


def test_an_infinity_in_the_reference_does_not_make_the_tolerance_infinite():
    ref = np.array([1.0, -np.inf, 2.0, np.inf], np.float32)
    assert verify.compare([ref.copy()], [ref], ["y"])["passed"]
    wrong = [np.array([1.0, -3.0, 2.0, np.inf], np.float32),   # finite where the reference is -inf
             np.array([1.0, -np.inf, 9.0, np.inf], np.float32),  # a finite value far off
             np.array([1.0, np.inf, 2.0, np.inf], np.float32)]   # the other infinity
    for out in wrong:
        v = verify.compare([out], [ref], ["y"])
        assert not v["passed"], out
        assert v["outputs"][0]["reference_max_abs"] == 2.0

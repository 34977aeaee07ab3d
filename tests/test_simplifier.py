"""onnx-simplifier in a forked child (``optc.simplifier``): a crash there is reported, never
fatal; the ``simplify`` pass then leaves the model as it is and says why."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optc import simplifier
from optc.pipeline import get_pass

pytest.importorskip("onnxsim")


def _model() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_simplify_in_child_returns_the_simplified_model():
    out, ok = simplifier.simplify(_model())
    assert ok and [n.op_type for n in out.graph.node] == ["Relu"]


RUNNERS = "tests._child_targets:"


def test_a_crash_in_the_child_is_reported():
    with pytest.raises(simplifier.SimplifierFailed, match="SIGSEGV"):
        simplifier.simplify(_model(), runner=RUNNERS + "crash")


def test_an_exception_in_the_child_is_reported():
    with pytest.raises(simplifier.SimplifierFailed, match="ValueError: bad graph"):
        simplifier.simplify(_model(), runner=RUNNERS + "fail")


def test_a_hanging_child_is_killed():
    with pytest.raises(simplifier.SimplifierFailed, match="no result after"):
        simplifier.simplify(_model(), timeout=3, runner=RUNNERS + "hang")


@pytest.fixture
def crashing_onnxsim(monkeypatch):
    real = simplifier.simplify
    monkeypatch.setattr(simplifier, "simplify", lambda m, **k: real(m, **k, runner=RUNNERS + "crash"))


def test_simplify_pass_skips_with_a_reason_when_onnxsim_crashes(crashing_onnxsim):
    model = ir.serde.deserialize_model(_model())
    result = get_pass("simplify")().call(model)
    assert not result.modified and "crashed" in result.details["skipped"]
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out)
    assert [n.op_type for n in out.graph.node] == ["Identity", "Relu"]  # unchanged, still runnable
    from optc import verify

    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 3
    np.testing.assert_array_equal(verify.ort_session(out).run(None, {"x": x})[0], np.maximum(x, 0))

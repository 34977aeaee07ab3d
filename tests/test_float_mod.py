"""Float ``Mod`` with ``fmod=0`` (``linalg_ops``: C fmod, then the divisor's sign) against
onnxruntime, on the edge cases TVM's ``x - floor(x / y) * y`` got wrong (infinite divisors,
large quotients); and an artifact that loses the reference's infinities is refused (the
tolerance is scaled by the reference's finite values only)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import optc
from optc.errors import VerificationError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

X = [0., -0., 0., -0., -3., 3., -1., 1., np.inf, -np.inf, 1., 1., 1e10, -7.5, 7.5, 5.25, -5.25]
Y = [-2., 2., 2., -2., np.inf, np.inf, -np.inf, -np.inf, 2., 2., 0., -0., 3.3, 2., -2., 1.5, 1.5]


def _mod(path, elem, fmod=0):
    n = len(X)
    g = h.make_graph([h.make_node("Mod", ["x", "y"], ["z"], fmod=fmod)], "mod",
                     [h.make_tensor_value_info("x", elem, [n]), h.make_tensor_value_info("y", elem, [n])],
                     [h.make_tensor_value_info("z", elem, [n])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 28)])  # float fmod=0: opset 28
    onnx.save(model, path)
    return model


@pytest.mark.parametrize("elem, dtype, fmod", [(T.FLOAT, np.float32, 0), (T.DOUBLE, np.float64, 0),
                                               (T.FLOAT16, np.float16, 0), (T.FLOAT, np.float32, 1)])
def test_float_mod_matches_onnxruntime_on_edge_cases(tmp_path, elem, dtype, fmod):
    model = _mod(tmp_path / "m.onnx", elem, fmod)
    with np.errstate(over="ignore"):  # 1e10 is inf in float16: inf mod 3.3 is NaN, also compared
        feeds = {"x": np.array(X, dtype), "y": np.array(Y, dtype)}
    optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", inputs=feeds,
                 options=optc.CompileOptions.of(measure=False))
    got = optc.run(tmp_path / "pkg", feeds)["z"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)  # NaN positions equal, infinities equal, values exact
    if dtype == np.float32 and not fmod:
        assert got[12] == np.float32(np.mod(np.float32(1e10), np.float32(3.3)))  # not 0 (large quotient)
        assert np.signbit(got[:4]).tolist() == [True, False, False, True]  # zero takes the divisor's sign


def test_an_artifact_that_loses_the_references_infinities_is_refused(tmp_path, monkeypatch):
    from optc.backends.tvm.backend import CpuSession

    _mod(tmp_path / "m.onnx", T.FLOAT)
    feeds = {"x": np.array(X, np.float32), "y": np.array(Y, np.float32)}
    real = CpuSession.run_many

    def finite(self, sets):  # inf turned into a large finite number: "close" only if inf scaled the tolerance
        return [[np.nan_to_num(o, nan=np.nan, posinf=1e30, neginf=-1e30) for o in call] for call in real(self, sets)]

    monkeypatch.setattr(CpuSession, "run_many", finite)
    with pytest.raises(VerificationError, match="z: max abs error inf"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "bad", inputs=feeds,
                     options=optc.CompileOptions.of(measure=False))

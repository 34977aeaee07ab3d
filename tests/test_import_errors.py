"""Import failures are classified by where they were raised (``lower.optc_bug_frame``): an
exception in optc's own converter code that is not a deliberate refusal (a NameError, a
TypeError, ...) is an optc bug (``InternalError``, exit 70, cause kept for ``--debug``), never
dressed up as unsupported input; a pattern TVM's frontend (or a converter, on purpose) does
not support stays a named refusal (``UnsupportedModelError``, exit 3)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import optc
from optc.cli import main
from optc.errors import InternalError, UnsupportedModelError

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


def _save(tmp_path, node, inputs, outputs, opset=18):
    m = h.make_model(h.make_graph([node], "m", inputs, outputs), opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    return path


def _det(tmp_path, n=2):
    return _save(tmp_path, h.make_node("Det", ["x"], ["y"]), [h.make_tensor_value_info("x", T.FLOAT, [3, n, n])],
                 [h.make_tensor_value_info("y", T.FLOAT, [3])])


def test_a_bug_in_an_optc_converter_is_an_internal_error(tmp_path, monkeypatch, capsys):
    from optc.backends.tvm import linalg_ops

    monkeypatch.setattr(linalg_ops, "permutation_sign", None)  # the Det converter now calls None
    path = _det(tmp_path)
    with pytest.raises(InternalError) as info:
        optc.compile(path, "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))
    assert "TypeError at linalg_ops.py" in str(info.value) and isinstance(info.value.__cause__, TypeError)
    argv = ["compile", str(path), "-o", str(tmp_path / "q"), "--no-measure", "-q"]
    assert main(argv) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "this is a bug in optc" in err and "TypeError" in err
    assert "Traceback" not in err and "could not import" not in err and not (tmp_path / "q").exists()
    assert main(argv + ["--debug"]) == 70
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("broken", ["unnormalized", "tvmscript"])
def test_a_tvm_check_failure_inside_an_optc_converter_is_an_internal_error(tmp_path, monkeypatch, broken):
    """TVM's own check ("The type is not populated": an op built on an expression the converter
    did not normalize), or TVMScript text optc wrote that does not parse, raised inside a TVM
    call an optc converter made is optc's bug."""
    import tvm
    from tvm import relax

    from optc.backends.tvm import linalg_ops

    def unnormalized(*args, **kwargs):
        x = relax.op.zeros([2, 2], "float32")
        return relax.op.reshape(relax.op.add(x, x), [-1])

    def tvmscript(*args, **kwargs):
        return tvm.script.from_source("@T.prim_func\ndef f(a: T.Buffer((2,), 'int32')):\n    for i in T.serial(2):\n")

    monkeypatch.setattr(linalg_ops, "permutation_sign", unnormalized if broken == "unnormalized" else tvmscript)
    with pytest.raises(InternalError, match="(InternalError|IndentationError) at linalg_ops.py"):
        optc.compile(_det(tmp_path), "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))


def test_a_converters_deliberate_refusal_stays_a_refusal(tmp_path, capsys):
    path = _det(tmp_path, n=6)  # Det above 5x5: refused on purpose by a `raise ValueError`
    with pytest.raises(UnsupportedModelError, match="6x6 matrices are not lowered"):
        optc.compile(path, "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))
    assert main(["compile", str(path), "-o", str(tmp_path / "q"), "--no-measure", "-q"]) == 3
    assert "internal error" not in capsys.readouterr().err


def test_a_pattern_tvm_does_not_support_stays_a_refusal(tmp_path):
    # ReduceSum with its axes a run-time graph input: TVM's frontend needs constant axes
    path = _save(tmp_path, h.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1),
                 [h.make_tensor_value_info("x", T.FLOAT, [2, 3]), h.make_tensor_value_info("axes", T.INT64, [1])],
                 [h.make_tensor_value_info("y", T.FLOAT, [2, 1])])
    feeds = {"x": np.ones((2, 3), np.float32), "axes": np.array([1], np.int64)}
    with pytest.raises(UnsupportedModelError, match="TVM's ONNX frontend could not import"):
        optc.compile(path, "cpu", tmp_path / "p", inputs=feeds, options=optc.CompileOptions.of(measure=False))


def test_bug_frame_classification():
    from optc.backends.tvm.lower import optc_bug_frame

    def raised(fn):
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            return err
        raise AssertionError("no exception")

    # raised in this test file: not optc's source, so not classified as an optc bug
    assert optc_bug_frame(raised(lambda: {}["k"])) is None
    from optc.backends.tvm import linalg_ops

    assert optc_bug_frame(raised(lambda: linalg_ops.permutation_sign(None))) is not None  # TypeError inside optc


def test_a_refusal_after_binding_the_batch_to_1_says_so(tmp_path):
    """A model whose shapes only work at another batch (a Reshape to a constant [4, 3]) is
    refused at batch 1 by TVM's importer; the refusal names the inputs whose dynamic batch was
    bound to 1 and the option that sets another."""
    shape = onnx.numpy_helper.from_array(np.array([4, 3], np.int64), "shape")
    g = h.make_graph([h.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])], [h.make_tensor_value_info("y", T.FLOAT, [4, 3])],
                     [shape])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    with pytest.raises(UnsupportedModelError, match="batch dimension of x was bound to 1.*--input-shape"):
        optc.compile(path, "cpu", tmp_path / "p", options=optc.CompileOptions.of(measure=False))
    report = optc.compile(path, "cpu", tmp_path / "q", input_shapes={"x": [4, 3]},
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"]

"""optc.isolated: third-party native code (onnxsim, onnxruntime) in a child process. A crash,
an exception, a hang, a result: each comes back to the parent as what it is; and a reference run
that crashes onnxruntime is a named refusal of ``optc compile``, not a dead optc."""

from __future__ import annotations

import numpy as np
import pytest

from optc import isolated, verify

T = "tests._child_targets:"


def test_result_comes_back():
    out = isolated.call(T + "double", np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(out["twice"], [0, 2, 4])


def test_crash_is_named_by_its_signal():
    with pytest.raises(isolated.ChildFailed, match="SIGSEGV in a child process"):
        isolated.call(T + "crash")


def test_exception_is_raised_again_in_the_parent():
    with pytest.raises(ValueError, match="bad graph"):
        isolated.call(T + "fail")
    with pytest.raises(isolated.ChildFailed, match="NeedsKeyword: detail kept as text"):
        isolated.call(T + "fail_unpicklable")


def test_hang_is_killed_at_the_timeout():
    with pytest.raises(isolated.ChildFailed, match="no result after 2 s"):
        isolated.call(T + "hang", timeout=2)


def test_reference_runs_keep_each_runs_error():
    """The batch probe's runs: one that onnxruntime refuses leaves its error in its place."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor("s", TensorProto.INT64, [2], [2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ok, bad = {"x": np.ones((1, 4), np.float32)}, {"x": np.ones((2, 4), np.float32)}
    results = verify.session_runs(m, [ok, bad], keep_errors=True)
    assert results[0][0].shape == (2, 2) and isinstance(results[1], verify.RunFailed)
    with pytest.raises(Exception, match="(?i)reshape|shape"):
        verify.session_runs(m, [ok, bad])


def test_an_onnxruntime_crash_in_the_reference_is_a_named_refusal(tmp_path, monkeypatch):
    """onnxruntime segfaulting on a model (a QOperator U-Net) ended ``optc compile`` with
    SIGSEGV; now the reference run's child dies instead, and compile refuses the model by name
    (exit 3 at the CLI), with no package written."""
    import onnx
    from onnx import TensorProto, helper

    import optc
    from optc.errors import UnsupportedModelError

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    monkeypatch.setattr(verify, "session_runs", lambda *a, **k: isolated.call(T + "crash"))
    with pytest.raises(UnsupportedModelError, match="cannot run the model: it crashed \\(SIGSEGV"):
        optc.compile(tmp_path / "m.onnx", "cpu", tmp_path / "pkg", options=optc.CompileOptions.of(measure=False))
    assert not (tmp_path / "pkg").exists()


def test_an_interrupt_stops_the_wait_and_kills_the_child():
    """SIGTERM during a long reference run took optc 10 to 65 s to act on (a numpy loop of
    onnx's reference in optc's own process); the parent now waits on the child, so a signal's
    handler runs at once and the child is killed on the way out."""
    import signal
    import time

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    t0 = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            isolated.call(T + "hang")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - t0 < 10
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.is_alive()]

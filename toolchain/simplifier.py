"""onnx-simplifier (onnxsim) run in a child process, so that a crash in its C++ code cannot
take optc down.

onnxsim aborts or segfaults on some valid models (e.g. the ONNX node tests
``test_affine_grid_*_expanded``: SIGSEGV in ``onnxsim_cpp2py_export.simplify``). Called in
optc's own process, that kills ``optc compile`` (no named error, no exit code of optc's).
:func:`simplify` starts a child from a multiprocessing ``forkserver`` (onnxsim imported there
once); the child reads the model from a temporary file, simplifies it and writes the result
back. A child that dies from a signal, raises or outlives ``timeout`` is reported as
:class:`SimplifierFailed` (its reason names the signal), and the callers go on with the model
unsimplified. (Forking optc's own process instead deadlocked now and then: a lock held by one
of its TVM or onnxruntime threads at the fork stays locked in the child.)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from pathlib import Path

import onnx

TIMEOUT_S = 600.0  # a simplification running longer is abandoned (the model stays as it is)


class SimplifierFailed(RuntimeError):
    """onnxsim crashed, raised or timed out on a model (``reason`` says which)."""

    def __init__(self, reason: str):
        super().__init__(f"onnx-simplifier failed on this model: {reason}")
        self.reason = reason


def simplify(model: onnx.ModelProto, check_n: int = 0, timeout: float = TIMEOUT_S,
             runner: str = "onnxsim:simplify") -> tuple[onnx.ModelProto, bool]:
    """``onnxsim.simplify(model, check_n=check_n, initializers_as_constants=False)`` in a
    child process: (simplified model, onnxsim's own check result). Raises
    :class:`SimplifierFailed` when the child does not deliver a model. ``runner``
    ("module:function" with onnxsim's signature) replaces onnxsim, for tests."""
    with tempfile.TemporaryDirectory(prefix="optc-onnxsim-") as tmp:
        src, out, err = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx", Path(tmp) / "error.txt"
        src.write_bytes(model.SerializeToString())
        child = _context().Process(target=_child, args=(runner, str(src), check_n, str(out), str(err)), daemon=True)
        child.start()
        try:
            child.join(timeout)
            timed_out = child.exitcode is None
        finally:
            if child.exitcode is None:  # timed out, or the caller was interrupted (an alarm)
                child.kill()
                child.join()
        code = child.exitcode
        if timed_out:
            raise SimplifierFailed(f"no result after {timeout:g} s (the child process was killed)")
        if code < 0:
            raise SimplifierFailed(f"it crashed ({signal.Signals(-code).name} in a child process)")
        if code not in (0, 3):
            text = err.read_text() if err.exists() else f"exit status {code}"
            raise SimplifierFailed(" ".join(text.split())[:300])
        return onnx.load_from_string(out.read_bytes()), code == 0


_CTX = None


def _context():
    """A ``forkserver`` multiprocessing context with onnxsim imported in the server: children
    fork from that single-threaded server (never from optc's process, whose TVM/onnxruntime
    threads may hold locks a forked child would wait on forever), and start in milliseconds
    after the first call, which pays onnxsim's import once."""
    global _CTX
    if _CTX is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["onnxsim", "optc.simplifier"])
        _CTX = ctx
    return _CTX


def _child(runner: str, src: str, check_n: int, out: str, err: str) -> None:
    """Simplify ``src``, write the model to ``out`` and exit: 0 (checked ok), 3 (check failed),
    1 (raised: the message in ``err``)."""
    import faulthandler

    faulthandler.disable()  # a crash is reported by the parent, without the child's stack dump
    code = 1
    try:
        import importlib

        module, _, name = runner.partition(":")
        run = getattr(importlib.import_module(module), name)
        model = onnx.load_from_string(Path(src).read_bytes())
        simplified, ok = run(model, check_n=check_n, initializers_as_constants=False)
        Path(out).write_bytes(simplified.SerializeToString())
        code = 0 if ok else 3
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        try:
            Path(err).write_text(f"{type(exc).__name__}: {exc}")
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)

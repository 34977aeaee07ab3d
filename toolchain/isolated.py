"""Third-party native code run in a child process, so that its crash cannot take optc down.

onnx-simplifier aborts or segfaults on some valid models (the ONNX node tests
``test_affine_grid_*_expanded``), and onnxruntime segfaults on some (a QOperator U-Net from
``quantize_static``). Called in optc's own process, either kills ``optc compile`` with a signal:
no named error, no exit code of optc's. :func:`call` runs ``module:function`` in a child
started from a multiprocessing ``forkserver`` (onnxsim and onnxruntime imported there once);
arguments and the result travel as pickles through a temporary directory. A child that dies
from a signal or outlives ``timeout`` is reported as :class:`ChildFailed` (its reason names the
signal); an exception raised in the child is raised again in the parent (as
:class:`ChildFailed` with its text where it cannot be pickled). While the parent waits, it
handles its own signals as usual (Ctrl-C, SIGTERM), and the child is killed on the way out.
(Forking optc's own process instead deadlocked now and then: a lock held by one of its TVM or
onnxruntime threads at the fork stays locked in the child.)
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import signal
import tempfile
from pathlib import Path
from typing import Any

PRELOAD = ["numpy", "onnx", "onnxruntime", "onnxsim", "optc.isolated"]


class ChildFailed(RuntimeError):
    """The child crashed, timed out, or raised something that cannot be pickled (``reason``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def call(target: str, *args: Any, timeout: float | None = None) -> Any:
    """``module:function(*args)`` in a child process; returns its result. Raises what the
    function raised, or :class:`ChildFailed` when the child dies from a signal, exits without a
    result or runs past ``timeout`` seconds (then it is killed)."""
    with tempfile.TemporaryDirectory(prefix="optc-child-") as tmp:
        src, out = Path(tmp) / "args.pkl", Path(tmp) / "result.pkl"
        with open(src, "wb") as f:
            pickle.dump(args, f, protocol=pickle.HIGHEST_PROTOCOL)
        child = context().Process(target=_child, args=(target, str(src), str(out)), daemon=True)
        child.start()
        try:
            child.join(timeout)
            timed_out = child.exitcode is None
        finally:
            if child.exitcode is None:  # timed out, or the parent was interrupted (a signal)
                child.kill()
                child.join()
        code = child.exitcode
        if timed_out:
            raise ChildFailed(f"no result after {timeout:g} s (the child process was killed)")
        if code < 0:
            raise ChildFailed(f"it crashed ({signal.Signals(-code).name} in a child process)")
        if not out.exists():
            raise ChildFailed(f"the child process exited with status {code} and no result")
        with open(out, "rb") as f:
            ok, value = pickle.load(f)
    if ok:
        return value
    raise value


_CTX = None


def context():
    """The ``forkserver`` multiprocessing context with :data:`PRELOAD` imported in the server:
    children fork from that single-threaded server (never from optc's process), and start in
    milliseconds after the first call, which pays the imports once."""
    global _CTX
    if _CTX is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


def warm_up() -> None:
    """Start the fork server now (its imports take seconds) without waiting for it: the first
    :func:`call` then finds it ready."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


def _child(target: str, src: str, out: str) -> None:
    """Run ``target`` on the pickled arguments in ``src``, pickle ``(True, result)`` or
    ``(False, exception)`` to ``out``, and exit."""
    import faulthandler

    faulthandler.disable()  # a crash is reported by the parent, without the child's stack dump
    try:
        with open(src, "rb") as f:
            args = pickle.load(f)
        module, _, name = target.partition(":")
        data = pickle.dumps((True, getattr(importlib.import_module(module), name)(*args)),
                            protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        data = _pickled_error(exc)
    try:
        with open(out, "wb") as f:
            f.write(data)
    finally:
        os._exit(0)


def _pickled_error(exc: BaseException) -> bytes:
    """``(False, exc)`` pickled, or ``(False, ChildFailed(its text))`` where ``exc`` cannot be
    rebuilt from its pickle (an exception class with required keyword arguments)."""
    try:
        data = pickle.dumps((False, exc))
        pickle.loads(data)
        return data
    except BaseException:  # noqa: BLE001
        return pickle.dumps((False, ChildFailed(" ".join(f"{type(exc).__name__}: {exc}".split())[:1000])))

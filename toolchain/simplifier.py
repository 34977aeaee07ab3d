"""onnx-simplifier (onnxsim) run in a child process (:mod:`optc.isolated`), so that a crash
in its C++ code cannot take optc down.

onnxsim aborts or segfaults on some valid models (e.g. the ONNX node tests
``test_affine_grid_*_expanded``: SIGSEGV in ``onnxsim_cpp2py_export.simplify``). Called in
optc's own process, that kills ``optc compile`` (no named error, no exit code of optc's). A
child that dies from a signal, raises or outlives ``timeout`` is reported as
:class:`SimplifierFailed` (its reason names the signal), and the callers go on with the model
unsimplified.
"""

from __future__ import annotations

import importlib

import onnx

from . import isolated

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
    try:
        data, ok = isolated.call("optc.simplifier:_simplify_bytes", runner, model.SerializeToString(), check_n,
                                 timeout=timeout)
    except isolated.ChildFailed as err:
        raise SimplifierFailed(err.reason) from err
    except Exception as err:  # noqa: BLE001 - onnxsim raised
        raise SimplifierFailed(" ".join(f"{type(err).__name__}: {err}".split())[:300]) from err
    return onnx.load_from_string(data), ok


def _simplify_bytes(runner: str, data: bytes, check_n: int) -> tuple[bytes, bool]:
    """(In the child) ``runner`` on the serialized model: (serialized result, check passed)."""
    module, _, name = runner.partition(":")
    run = getattr(importlib.import_module(module), name)
    simplified, ok = run(onnx.load_from_string(data), check_n=check_n, initializers_as_constants=False)
    return simplified.SerializeToString(), bool(ok)

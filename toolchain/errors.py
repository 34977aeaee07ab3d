"""Errors that optc reports to users, each with a documented exit code.

Every error a user can cause (a bad file, a wrong input name, an unsupported op, a missing
tool) is an :class:`OptcError` subclass; the CLI prints its message on one line and exits
with its ``exit_code``. Anything else escaping the CLI is a bug in optc (exit code 70).
"""

from __future__ import annotations


class OptcError(Exception):
    """Base class: a problem the user can fix, reported without a traceback. A subclass sets
    its ``exit_code`` in its class statement (``class X(OptcError, exit_code=3)``); the codes
    and what they mean are listed in ``EXIT_CODES``."""

    exit_code = 2

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class InvalidModelError(OptcError):
    """The file is not a readable/valid ONNX model, or its inputs do not fit the request."""


class UsageError(OptcError):
    """Wrong arguments: unknown pass/target, malformed pipeline text, existing output, ..."""


class UnsupportedModelError(OptcError, exit_code=3):
    """The model uses operators the chosen backend cannot lower (all are listed at once)."""


class VerificationError(OptcError, exit_code=4):
    """The compiled artifact disagrees with onnxruntime beyond the tolerance."""


class ToolchainError(OptcError, exit_code=5):
    """A required external tool (cross compiler, qemu, TVM feature) is missing or failed."""


class BudgetError(OptcError, exit_code=6):
    """An artifact misses one or more budgets of ``optc check``."""


class InternalError(Exception):
    """A bug in optc (not the user's input): the CLI says so, names the failing ``stage``
    (a pass, the build, ...) and exits 70; ``--debug`` prints the traceback with its cause
    chain. Raise it ``from`` the original exception so the cause is kept."""

    exit_code = 70

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


EXIT_CODES = {
    0: "success",
    2: "bad input or usage (invalid model, wrong input name/shape, existing output, bad pipeline)",
    3: "unsupported model (every unsupported op is listed with its node names)",
    4: "verification failed (artifact output differs from onnxruntime beyond tolerance)",
    5: "toolchain problem (cross compiler, qemu or a TVM feature missing or failing)",
    6: "budget check failed (optc check)",
    70: "internal error in optc (a bug: please report it with --debug output)",
}

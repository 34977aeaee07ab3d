"""Functions that tests run in optc's child processes (:mod:`optc.isolated`): stand-ins for
onnxsim.simplify (``runner="tests._child_targets:NAME"`` of ``optc.simplifier``) and for
onnxruntime's reference runs: a crash, an exception, a hang."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def crash(*args, **kwargs):  # what onnxsim's C++ does on some models, and onnxruntime on others
    os.kill(os.getpid(), signal.SIGSEGV)


def fail(*args, **kwargs):
    raise ValueError("bad graph")


def hang(*args, **kwargs):
    time.sleep(60)


def double(a):
    return {"twice": np.asarray(a) * 2}


class NeedsKeyword(Exception):
    def __init__(self, *, detail):
        super().__init__(f"detail {detail}")


def fail_unpicklable():
    raise NeedsKeyword(detail="kept as text")

"""Stand-ins for onnxsim.simplify that ``optc.simplifier`` runs in its child process
(``runner="tests._simplifier_runners:NAME"``): a crash, an exception, a hang."""

from __future__ import annotations

import os
import signal
import time


def crash(model, **kwargs):  # what onnxsim's C++ does on some models
    os.kill(os.getpid(), signal.SIGSEGV)


def fail(model, **kwargs):
    raise ValueError("bad graph")


def hang(model, **kwargs):
    time.sleep(60)

"""Progress display for long steps (rich, on stderr); silent when disabled.

Also the warning category of optc (:class:`OptcWarning`): things a user should know that do
not stop the work (a compression pass that rewrote nothing, evaluation data without labels).
They are issued with :func:`warnings.warn`; the CLI prints them as ``optc: warning: ...``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
import warnings
from typing import Iterator


class OptcWarning(UserWarning):
    """A result the user did not ask for, issued as a warning (see the module docstring)."""


def warn(message: str, category: type[OptcWarning] = OptcWarning, stacklevel: int = 2) -> None:
    """Issue ``message`` as an :class:`OptcWarning` (shown once per call site by Python's
    default filter; the CLI shows every one)."""
    warnings.warn(message, category, stacklevel=stacklevel + 1)


class Progress:
    """``with progress.step("build"):`` shows a spinner, then a line with the step's time.

    Lines are never wrapped or cut (``soft_wrap``): output redirected to a file or a CI log
    keeps whole lines whatever the console width, and text is printed as is (no markup)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator["Step"]:
        """A step: a spinner (on a terminal), then a line with its time. It yields a
        :class:`Step` through which a long step reports its phases. A step started while
        another one runs (a backend's stages inside ``build``) is shown as a sub-step of it
        (one spinner at a time)."""
        outer = _active.get()
        if outer is not None and outer._progress is self:
            with outer.substep(text) as sub:
                yield sub
            return
        if not self._console:
            st = Step(self, text)
            token = _active.set(st)
            try:
                yield st
            finally:
                _active.reset(token)
            return
        from rich.markup import escape

        t0 = time.perf_counter()
        with self._console.status(f"{escape(text)} ...", spinner="dots") as status:
            st = Step(self, text, status)
            token = _active.set(st)
            beat = threading.Thread(target=st._heartbeats, name="optc-progress", daemon=True)
            beat.start()
            try:
                yield st
            finally:
                st._done.set()
                beat.join()
                _active.reset(token)
        self._console.print(f"[green]✓[/green] {escape(text)} [dim]({time.perf_counter() - t0:.1f} s)[/dim]")

    def note(self, text: str) -> None:
        if self._console:
            self._console.print(f"  {text}", markup=False)


def elapsed_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``."""
    s = int(seconds)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


class Step:
    """What :meth:`Progress.step` yields: where a long step is.

    :meth:`phase` names the current phase (e.g. an external tool's, read from its log) and
    prints a line ``STEP: PHASE [elapsed]`` each time it changes; ``detail`` (the tool's current
    pass) shows in the spinner and heartbeats only. :meth:`substep` runs a stage inside the step
    (its own phases, then a line with its time). On an enabled display the spinner's text keeps
    the phase and the elapsed time current, and a heartbeat line (``..., still running
    [elapsed]``) comes whenever nothing was printed for ``heartbeat_s`` seconds, so a log file,
    where no spinner shows, says the step is alive and where it is.
    """

    heartbeat_s = 15.0

    def __init__(self, progress: Progress, text: str, status=None, parent: "Step | None" = None):
        self._progress = progress
        self._status = status
        self._parent = parent
        self._root: Step = parent._root if parent is not None else self
        self._inner: Step = self  # root only: the innermost running sub-step
        self._done = threading.Event()
        self.text = text
        self.current: str | None = None
        self.detail: str | None = None
        self.t0 = self._last_line = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def phase(self, name: str, detail: str | None = None) -> None:
        """Enter phase ``name``: a line when it differs from the current one."""
        self.detail = detail
        if name != self.current:
            self.current = name
            self._line(name)
        self.tick()

    def tick(self) -> None:
        """Bring the spinner's text up to date (the display's own thread does it every second too)."""
        root = self._root
        if root._status is not None:
            from rich.markup import escape

            inner = root._inner
            parts = [root.text] + ([inner.text] if inner is not root else [])
            parts += [inner._where()] if inner.current else []
            root._status.update(f"{escape(': '.join(parts))} ({elapsed_text(inner.elapsed())}) ...")

    @contextlib.contextmanager
    def substep(self, text: str) -> Iterator["Step"]:
        """A stage of this step, reported as ``TEXT: PHASE [elapsed]`` lines and ``✓ TEXT (s)``."""
        sub = Step(self._progress, text, parent=self)
        root = self._root
        outer_inner, root._inner = root._inner, sub
        token = _active.set(sub)
        try:
            sub.tick()
            yield sub
        finally:
            _active.reset(token)
            root._inner = outer_inner
        root._note(f"✓ {text} ({sub.elapsed():.1f} s)")
        self.tick()

    def _where(self) -> str:
        return f"{self.current} ({self.detail})" if self.current and self.detail else (self.current or "")

    def _line(self, what: str) -> None:
        self._root._note(f"{self.text}: {what} [{elapsed_text(self.elapsed())}]")

    def _note(self, text: str) -> None:
        self._last_line = time.perf_counter()
        self._progress.note(text)

    def _heartbeats(self) -> None:
        """The root step's display thread: spinner text every second, heartbeat lines."""
        while not self._done.wait(1.0):
            inner = self._inner
            self.tick()
            if time.perf_counter() - self._last_line >= self.heartbeat_s:
                where = inner._where()
                inner._line(f"{where}, still running" if where else "still running")


_active: contextvars.ContextVar[Step | None] = contextvars.ContextVar("optc_progress_step", default=None)


def active_step() -> Step | None:
    """The innermost :meth:`Progress.step` running in this context, or None: a backend called
    inside a step without a progress object reports its stages to it."""
    return _active.get()


SILENT = Progress(enabled=False)

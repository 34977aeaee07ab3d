"""Progress display for long steps (rich, on stderr); silent when disabled."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Progress:
    """``with progress.step("build"):`` shows a spinner, then a line with the step's time."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        if not self._console:
            yield
            return
        t0 = time.perf_counter()
        with self._console.status(f"{text} ...", spinner="dots"):
            yield
        self._console.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - t0:.1f} s)[/dim]")

    def note(self, text: str) -> None:
        if self._console:
            self._console.print(f"  {text}")


SILENT = Progress(enabled=False)

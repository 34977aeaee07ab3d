"""How a package's latency is obtained - the sessions' side of the ``latency`` report section.

Each backend session says how its latency is taken through ``report_latency(args, ctx)``
(:class:`optc.backends.SessionBase` measures in-process; an emulated or absent device gives a
modeled figure, labelled, from :mod:`optc.latency_model`). This module holds what they share:
the statistics of a list of times and the context of one measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .progress import SILENT, Progress

WARMUP, REPEAT = 3, 20  # calls before / timed for a compile's latency


def stats(times: list[float]) -> dict:
    """Median, min, p10, p90, stdev (ms) and count of ``times`` (seconds)."""
    ms = sorted(t * 1e3 for t in times)
    q = lambda p: ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]  # noqa: E731
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "p10_ms": q(0.1), "p90_ms": q(0.9),
            "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0, "repeat": len(ms)}


@dataclass
class LatencyContext:
    """What a session needs to report latency: the target (table entry), the model summary
    (per-layer costs, for modeled figures), whether to run anything, and progress."""

    target: object
    summary: dict
    measure: bool = True
    progress: Progress = SILENT

    def modeled(self) -> dict:
        """The modeled latency of this target and model (labelled as such)."""
        from . import latency_model

        return latency_model.modeled_latency(self.target, self.summary)


def not_measured(**extra) -> dict:
    return {"method": "not measured", "reason": "--no-measure", **extra}

"""Progress of long steps: phases and sub-steps print lines with their elapsed time, a step
started inside another becomes its sub-step (one spinner at a time), and a step that prints
nothing for ``heartbeat_s`` seconds gets a heartbeat line."""

from __future__ import annotations

import time

from optc.progress import SILENT, Progress, Step, active_step, elapsed_text


def _lines(capsys) -> list[str]:
    return [line.strip() for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_elapsed_text():
    assert elapsed_text(4.7) == "4 s"
    assert elapsed_text(125) == "2 min 05 s"


def test_nested_step_is_a_substep_with_phases(capsys):
    progress = Progress()
    assert active_step() is None
    with progress.step("build for fpga") as outer:
        assert active_step() is outer
        with progress.step("synthesis") as sub:  # e.g. a backend's own stage
            assert active_step() is sub and sub is not outer
            sub.phase("elaboration", "PROC pass")
            sub.phase("LUT mapping")
        with outer.substep("place and route") as pnr:
            pnr.phase("routing")
        assert active_step() is outer
    assert active_step() is None
    lines = _lines(capsys)
    assert [line.split(" [")[0] for line in lines[:-1]] == [
        "synthesis: elaboration", "synthesis: LUT mapping", "✓ synthesis (0.0 s)",
        "place and route: routing", "✓ place and route (0.0 s)"]
    assert lines[-1].startswith("✓ build for fpga (")


def test_heartbeat_names_the_innermost_phase(capsys, monkeypatch):
    monkeypatch.setattr(Step, "heartbeat_s", 0.5)
    with Progress().step("build") as outer:
        with outer.substep("place and route") as sub:
            sub.phase("routing", "arc 100")
            time.sleep(2.2)  # the display thread looks every second
    lines = _lines(capsys)
    beats = [line for line in lines if "still running" in line]
    assert beats and all(b.startswith("place and route: routing (arc 100), still running [") for b in beats)


def test_silent_steps_accept_everything(capsys):
    with SILENT.step("x") as st:
        st.phase("a", "b")
        st.tick()
        with SILENT.step("y") as sub:
            sub.phase("c")
    assert capsys.readouterr().err == ""

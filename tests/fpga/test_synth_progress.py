"""Long FPGA stages show where they are: yosys and nextpnr log lines become phases reported to
the progress step (a line per phase with the elapsed time, heartbeats while a phase lasts),
and a tool is killed when the step is interrupted or runs out of time."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from optc.backends.fpga import extract, folding, rtl, synth
from optc.errors import ToolchainError
from optc.progress import Progress, Step

from .tiny_models import binary_mlp

YOSYS_LOG = """\
1. Executing Verilog-2005 frontend: model.v
2. Executing Verilog-2005 frontend: shell.v
3. Executing SYNTH_ECP5 pass.
3.1. Executing Verilog-2005 frontend: /usr/share/yosys/ecp5/cells_sim.v
3.3. Executing HIERARCHY pass (managing design hierarchy).
3.3.1. Analyzing design hierarchy..
3.4. Executing PROC pass (convert processes to netlists).
3.11. Executing OPT pass (performing simple optimizations).
3.12. Executing FSM pass (extract and optimize FSM).
3.13. Executing OPT pass (performing simple optimizations).
3.24. Executing MEMORY pass.
3.29. Executing MEMORY_MAP pass (converting memories to logic and flip-flops).
3.30. Executing OPT pass (performing simple optimizations).
3.34. Executing DFFLEGALIZE pass (convert FFs to types supported by the target).
3.42. Executing ABC pass (technology mapping using ABC).
3.43. Executing OPT pass (performing simple optimizations).
3.50. Executing HIERARCHY pass (managing design hierarchy).
3.55. Executing JSON backend.
4. Printing statistics.
"""

NEXTPNR_LOG = """\
Info: Importing module optc_pnr_shell
Info: Packing IOs..
Info: Packing LUTs...
Info: Placed 23 cells based on constraints.
Info: Creating initial analytic placement for 2000 cells, random placement wirelen = 1.
Info: Running main analytical placer, max 3 iterations
Info: Running simulated annealing placer for refinement.
Info: Max frequency for clock '$glbnet$clk': 251.95 MHz (PASS at 200.00 MHz)
Info: Routing globals...
Info: Routing..
Info: Routing 1234 arcs.
Info: Critical path report for clock '$glbnet$clk' (posedge -> posedge):
Info: Program finished normally.
"""


def _phases(parser, text):
    out = [parser.initial]  # what _run_tool reports before the tool's first line
    for line in text.splitlines():
        hit = parser(line)
        if hit and (not out or out[-1] != hit[0]):
            out.append(hit[0])
    return out


def test_yosys_log_phases_move_forward_only():
    assert _phases(synth._YosysPhases(), YOSYS_LOG) == [
        "reading Verilog", "elaboration", "coarse optimization", "memory mapping", "flip-flop mapping",
        "LUT mapping (abc)", "writing the netlist"]
    p = synth._YosysPhases()
    p("3.42. Executing ABC pass (technology mapping using ABC).")
    assert p("3.43. Executing OPT pass (performing simple optimizations).") == ("LUT mapping (abc)", "OPT pass")


def test_nextpnr_log_phases():
    assert _phases(synth._NextpnrPhases(), NEXTPNR_LOG) == [
        "reading the netlist", "packing", "placement", "placement refinement (annealing)", "routing",
        "timing analysis"]


class Recorder:
    def __init__(self):
        self.phases, self.ticks = [], 0

    def phase(self, name, detail=None):
        if not self.phases or self.phases[-1] != name:
            self.phases.append(name)

    def tick(self):
        self.ticks += 1


def _fake_tool(tmp_path, body: str):
    script = tmp_path / "fake_tool.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_run_tool_streams_the_log_while_the_tool_runs(tmp_path):
    cmd = _fake_tool(tmp_path, """
        import sys, time
        with open("tool.log", "w") as log:
            for line in ["Info: Packing IOs..", "Info: Running main analytical placer", "Info: Routing.."]:
                log.write(line + "\\n"); log.flush(); time.sleep(0.7)
        print("done"); sys.exit(3)
    """)
    rec = Recorder()
    rc, out = synth._run_tool(cmd, tmp_path, tmp_path / "tool.log", synth._NextpnrPhases(), rec, None, "tool")
    assert rc == 3 and "done" in out
    assert rec.phases == ["reading the netlist", "packing", "placement", "routing"]
    assert rec.ticks >= 3


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie not reaped yet by its new parent is gone too
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_run_tool_timeout_kills_the_tool_and_its_children(tmp_path):
    cmd = _fake_tool(tmp_path, """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # like yosys's abc
        open("pids.tmp", "w").write(f"{os.getpid()} {child.pid}")
        os.rename("pids.tmp", "pids")
        time.sleep(60)
    """)
    t0 = time.monotonic()
    with pytest.raises(ToolchainError, match="did not finish in 2 s"):
        synth._run_tool(cmd, tmp_path, tmp_path / "tool.log", synth._NextpnrPhases(), None, 2, "tool")
    assert time.monotonic() - t0 < 20
    pids = [int(x) for x in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)


def test_step_prints_phases_and_heartbeats(capsys, monkeypatch):
    monkeypatch.setattr(Step, "heartbeat_s", 0.2)
    with Progress().step("place and route") as st:
        st.phase("packing")
        st.phase("packing")  # no new line for the same phase
        st.phase("routing", "arc 100")
        time.sleep(1.5)  # the display thread looks every second
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("place and route: packing [")
    assert lines[1].startswith("place and route: routing [")
    assert lines[2].startswith("place and route: routing (arc 100), still running [")
    assert lines[-1].startswith("✓ place and route")
    assert sum("packing" in line for line in lines) == 1


def test_silent_progress_step_takes_phases():
    with Progress(enabled=False).step("x") as st:
        st.phase("a")
        st.tick()


@pytest.mark.fpga_sim
def test_synthesis_and_pnr_report_their_phases(tmp_path):
    try:
        synth.check_tools(pnr=True)
    except ToolchainError as err:  # pragma: no cover - depends on the machine
        pytest.skip(str(err))
    g = extract.partition(binary_mlp()).graph
    folding.fold(g, 1)
    (tmp_path / "model.v").write_text(rtl.emit(g)["model.v"])
    (tmp_path / "shell.v").write_text(rtl.shell(g))
    rec = Recorder()
    synth.synthesize(tmp_path, tmp_path / "syn", step=rec)
    assert rec.phases[0] == "reading Verilog" and "LUT mapping (abc)" in rec.phases
    assert rec.phases == sorted(rec.phases, key=[p for p, _ in synth._YOSYS_PHASES].index)
    rec = Recorder()
    r = synth.place_and_route(tmp_path / "syn", folding.DEVICES["LFE5U-85F-8BG381"], step=rec)
    assert r["fits"]
    assert {"packing", "placement", "routing"} <= set(rec.phases)

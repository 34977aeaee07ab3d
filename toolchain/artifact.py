"""Deployable packages, written atomically.

A package directory holds the compiled library, parameters if separate, the optimized ONNX
model, sample inputs with reference outputs, ``report.json`` and ``manifest.json`` (file
hashes, versions, target, pipeline). It is assembled in a hidden temporary directory beside
the destination and renamed into place only when everything succeeded, so a failed or
interrupted compile leaves nothing behind, and an existing path is replaced only when the
caller asked for it (``force``).

The temporary directory is ``.NAME.tmp-PID-XXXXXXXX`` (PID: the writing process) and holds a
marker file, ``.optc-tmp.json`` (pid, host, the process's start time), removed before the
rename. A process killed outright (SIGKILL, power loss; the CLI turns SIGTERM and SIGHUP into
a clean stop) leaves that directory behind; the next package written to the same parent
removes it (:func:`remove_stale_temporaries`): only directories with optc's name pattern,
owned by this user, with the marker naming the same pid, whose process is gone (or that came
from another host more than a week ago). Nothing else is ever deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from .errors import InvalidModelError, UsageError

FORMAT = "optc-artifact/1"
MANIFEST = "manifest.json"
REPORT = "report.json"
TMP_MARKER = ".optc-tmp.json"  # inside a temporary package directory; never part of a package
# ``.NAME.tmp-PID-XXXXXXXX``: tempfile.mkdtemp's 8 random characters after optc's prefix
TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>[1-9][0-9]*)-[a-z0-9_]{8}$")
STALE_OTHER_HOST_S = 7 * 24 * 3600  # a temporary directory from another host is stale after this
_MARKERLESS_GRACE_S = 60  # an empty, marker-less one (killed right after mkdtemp) after this


def save_onnx_atomic(model, out: str | os.PathLike) -> int:
    """Write an ONNX model to ``out`` through a temporary file beside it, renamed into place
    (readable by all), so an interrupted write leaves no half-written model; returns the size.
    The one writer of the ONNX files the training commands produce."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out.stat().st_size


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
            if not self._made:
                remove_stale_temporaries(self.dest.parent)
            pid = os.getpid()
            # absolute (mkdtemp keeps a relative dir relative before Python 3.12): backends run
            # tools with other working directories on paths inside it
            with _signals_held():  # a signal between mkdtemp and the assignment would leak the dir
                self.tmp = Path(os.path.abspath(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-{pid}-",
                                                                 dir=self.dest.parent)))
            (self.tmp / TMP_MARKER).write_text(json.dumps(
                {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid), "created": time.time()}))
            with _signals_held():  # never leave the process with umask 0
                umask = os.umask(0)
                os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a package is not
        except BaseException as err:  # Ctrl-C / SIGTERM here too: __exit__ will not run
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
            self._remove_made()
            if isinstance(err, OSError):
                raise UsageError(f"{self.dest}: cannot write there ({err.strerror or err})") from None
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        # A signal now (Ctrl-C, or SIGTERM/SIGHUP turned into an exception by the CLI) would cut
        # the clean-up or the renames short: it is held until they are done.
        with _signals_held():
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self._remove_made()
                return
            (self.tmp / TMP_MARKER).unlink(missing_ok=True)
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


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP (delivered when the block ends) where the platform can."""
    sigs = {s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None}
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux ``/proc``), or None.
    With the pid, it tells a live writer from a new process that reuses a dead writer's pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22, counting from pid = 1


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    if start is not None:
        now = _process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by a later process
    return True


def remove_stale_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporary package directories in ``parent`` left by optc processes that were
    killed (see the module docstring for the rules); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    host, me, now = socket.gethostname(), os.getpid(), time.time()
    for entry in entries:
        m = TMP_PATTERN.match(entry.name)
        if not m:
            continue
        pid = int(m["pid"])
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or pid == me or st.st_uid != os.getuid():
            continue
        path = Path(entry.path)
        try:
            info = json.loads((path / TMP_MARKER).read_text())
        except (OSError, ValueError):
            info = None
        if not isinstance(info, dict):
            # killed between mkdtemp and writing the marker: only an empty directory (rmdir
            # removes nothing else), only when no such pid lives here, and not a fresh one
            if now - st.st_mtime > _MARKERLESS_GRACE_S and not _process_alive(pid, None):
                with contextlib.suppress(OSError):
                    path.rmdir()
                    removed.append(path)
            continue
        if info.get("pid") != pid:
            continue
        if info.get("host") == host:
            stale = not _process_alive(pid, info.get("start"))
        else:  # another machine sharing this directory: its pids mean nothing here
            created = info.get("created")
            stale = isinstance(created, (int, float)) and now - created > STALE_OTHER_HOST_S
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def file_table(pkg: Path) -> dict[str, dict]:
    """relative path -> {sha256, bytes} for every file in the package but the manifest."""
    out = {}
    for p in sorted(pkg.rglob("*")):
        if p.is_file() and p.name != MANIFEST and p.relative_to(pkg).as_posix() != TMP_MARKER:
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

"""Nothing left behind: SIGTERM / SIGHUP stop `optc compile` as Ctrl-C does (temporary package
directory removed, no traceback, exit 128 + signal), and a temporary directory left by a
killed optc (SIGKILL) is removed by the next package written beside it, while anything that
is not provably optc's own is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optc import artifact
from optc.artifact import TMP_MARKER, PackageWriter, file_table, remove_stale_temporaries
from optc.cli import main
from tests.conftest import make_conv_model

REPO = Path(__file__).resolve().parents[1]


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_tmp(parent: Path, proc: subprocess.Popen, timeout: float = 120.0) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = [p for p in parent.glob(".*.tmp-*") if p.is_dir()] if parent.is_dir() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (rc {proc.returncode}) before its temporary directory appeared: {err}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no temporary package directory appeared")


@pytest.mark.parametrize("sig, delay", [(signal.SIGTERM, 0.0), (signal.SIGTERM, 2.0), (signal.SIGHUP, 0.0)],
                         ids=["SIGTERM-at-once", "SIGTERM-later", "SIGHUP"])
def test_signal_during_compile_leaves_nothing(tmp_path, sig, delay):
    model = tmp_path / "conv.onnx"
    make_conv_model(model)
    out = tmp_path / "out"
    out.mkdir()
    proc = _spawn(["-m", "optc", "compile", str(model), "-t", "cpu", "-o", str(out / "conv.cpu")], tmp_path)
    tmp = _wait_for_tmp(out, proc)
    assert tmp.name.startswith(f".conv.cpu.tmp-{proc.pid}-")  # the writer's pid is in the name
    time.sleep(delay)  # at once: while the package directory is being set up; later: in the build
    if proc.poll() is not None:
        pytest.skip("the compile finished before the signal")
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    if sig == signal.SIGTERM:
        assert "terminated by SIGTERM" in err
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx", "out"]


def test_main_restores_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert main(["targets", "--json"]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def _killed_writer(parent: Path) -> Path:
    """A process that starts a package in ``parent`` and is SIGKILLed mid-way: its temporary
    directory stays behind (the case no signal handler can cover)."""
    code = textwrap.dedent(f"""
        import sys, time
        from optc.artifact import PackageWriter
        with PackageWriter({str(parent / "pkg")!r}) as tmp:
            (tmp / "model.so").write_bytes(b"x" * 1000)
            print(tmp, flush=True)
            time.sleep(600)
    """)
    proc = _spawn(["-c", code], parent)
    line = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    left = Path(line)
    assert left.is_dir() and (left / "model.so").is_file()
    return left


def test_stale_temporary_of_a_killed_optc_is_removed_by_the_next_compile(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    left = _killed_writer(out)
    make_conv_model(tmp_path / "conv.onnx")
    rc = main(["compile", str(tmp_path / "conv.onnx"), "-t", "cpu", "-o", str(out / "conv.cpu"), "-q",
               "--no-measure"])
    assert rc == 0, capsys.readouterr().err
    assert not left.exists()
    assert sorted(p.name for p in out.iterdir()) == ["conv.cpu"]
    assert not (out / "conv.cpu" / TMP_MARKER).exists()
    assert TMP_MARKER not in json.loads((out / "conv.cpu" / "manifest.json").read_text())["files"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid until the kernel reuses it


def test_only_optc_s_own_dead_temporaries_are_removed(tmp_path):
    dead = _dead_pid()
    keep = []

    def make(name: str, marker: dict | None = None, content: bool = True) -> Path:
        d = tmp_path / name
        d.mkdir()
        if content:
            (d / "data.bin").write_bytes(b"user data")
        if marker is not None:
            (d / TMP_MARKER).write_text(json.dumps(marker))
        return d

    host = artifact.socket.gethostname()
    stale = make(f".pkg.tmp-{dead}-abcdefgh", {"pid": dead, "host": host, "start": None, "created": 0})
    # not optc's pattern, or the marker does not agree, or the writer still runs: never touched
    keep.append(make(f".pkg.tmp-{dead}-abc", {"pid": dead, "host": host}))  # suffix not mkdtemp's
    keep.append(make(f"pkg.tmp-{dead}-abcdefgh", {"pid": dead, "host": host}))  # not hidden
    keep.append(make(".pkg.tmp-abcdefgh", {"pid": dead, "host": host}))  # no pid
    no_marker = make(f".pkg.tmp-{dead}-abcdefgi")  # no marker and not empty: not provably optc's
    os.utime(no_marker, (time.time() - 3600, time.time() - 3600))
    keep.append(no_marker)
    keep.append(make(f".pkg.tmp-{dead}-abcdefgj", {"pid": dead + 1, "host": host}))  # marker names another pid
    keep.append(make(f".pkg.tmp-{os.getppid()}-abcdefgk", {"pid": os.getppid(), "host": host}))  # alive
    keep.append(make(f".pkg.tmp-{dead}-abcdefgl", {"pid": dead, "host": "another-host", "created": time.time()}))
    keep.append(make(f".pkg.old-{dead}"))  # a replaced package mid-swap: may be the only copy
    keep.append(make("results", {"pid": dead, "host": host}))
    (tmp_path / f".pkg.tmp-{dead}-abcdefgm").write_text("a file, not a directory")
    keep.append(tmp_path / f".pkg.tmp-{dead}-abcdefgm")
    (tmp_path / f".pkg.tmp-{dead}-abcdefgn").symlink_to(tmp_path / "results")
    keep.append(tmp_path / f".pkg.tmp-{dead}-abcdefgn")
    empty_fresh = make(f".pkg.tmp-{dead}-abcdefgo", content=False)  # killed right after mkdtemp, just now
    keep.append(empty_fresh)
    empty_old = make(f".pkg.tmp-{dead}-abcdefgp", content=False)
    os.utime(empty_old, (time.time() - 3600, time.time() - 3600))
    old_other_host = make(f".pkg.tmp-{dead}-abcdefgq", {"pid": dead, "host": "another-host", "created": 0})

    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale, empty_old, old_other_host])
    for p in (stale, empty_old, old_other_host):
        assert not p.exists()
    for p in keep:
        assert p.exists() or p.is_symlink(), p
    assert (tmp_path / "results" / "data.bin").read_bytes() == b"user data"


def test_reused_pid_is_not_mistaken_for_the_writer(tmp_path):
    """The marker's start time tells the writer from a later process that got its pid."""
    me = os.getppid()
    d = tmp_path / f".pkg.tmp-{me}-abcdefgh"
    d.mkdir()
    (d / TMP_MARKER).write_text(json.dumps({"pid": me, "host": artifact.socket.gethostname(),
                                            "start": "1", "created": 0}))
    if artifact._process_start(me) in (None, "1"):
        pytest.skip("no /proc start times here")
    assert remove_stale_temporaries(tmp_path) == [d]


def test_writer_marker_is_not_in_the_package(tmp_path):
    with PackageWriter(tmp_path / "pkg") as tmp:
        assert tmp.name.startswith(f".pkg.tmp-{os.getpid()}-")
        assert artifact.TMP_PATTERN.match(tmp.name)
        marker = json.loads((tmp / TMP_MARKER).read_text())
        assert marker["pid"] == os.getpid()
        (tmp / "model.so").write_bytes(b"x")
        assert list(file_table(tmp)) == ["model.so"]
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == ["model.so"]
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_closed_terminal_during_compile_leaves_nothing(tmp_path):
    """The terminal itself goes away (pty master closed: the kernel sends SIGHUP and writes to
    the terminal fail): cleanup, exit 129, no leftover."""
    import pty

    model = tmp_path / "conv.onnx"
    make_conv_model(model)
    out = tmp_path / "out"
    out.mkdir()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.chdir(tmp_path)
            os.environ["PYTHONPATH"] = str(REPO)
            os.execv(sys.executable, [sys.executable, "-m", "optc", "compile", str(model), "-t", "cpu",
                                      "-o", str(out / "conv.cpu")])
        finally:
            os._exit(127)
    try:
        t0 = time.monotonic()
        while not list(out.glob(".*.tmp-*")):
            assert time.monotonic() - t0 < 120, "no temporary package directory appeared"
            try:  # keep the terminal drained
                import select

                if select.select([fd], [], [], 0.02)[0]:
                    os.read(fd, 65536)
            except OSError:
                break
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP
    assert list(out.iterdir()) == []

"""Remote execution through TVM RPC (optc.backends.tvm.rpc): optc's aarch64 ``optc_rpc_server``
under qemu-user (handshake, upload, load, verify, time_evaluator, tracker registration,
MetaSchedule tuning), and TVM's own Python server on this host for the "measured" label."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import optc
from optc.errors import ToolchainError, UsageError

pytestmark = pytest.mark.tvm

tvm = pytest.importorskip("tvm")
from optc.backends.tvm import arm, rpc  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits_cnn.onnx"
SHAPES = {"input": (1, 1, 8, 8)}
needs_qemu = pytest.mark.skipif(shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None,
                                reason="aarch64 cross compiler or qemu-aarch64 missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str]) -> subprocess.Popen:
    """A TVM tracker/server in its own process group: it runs its loop in a popen worker that
    outlives a plain terminate() of the parent."""
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_port(port: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def qemu_server():
    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    with rpc.start_qemu_server("cortex-a76") as srv:
        yield srv


def test_remote_options():
    assert rpc.Remote.from_options() is None
    r = rpc.Remote.from_options("10.0.0.2:9090", "rpi5")
    assert r.describe() == "TVM RPC server 10.0.0.2:9090 key 'rpi5'"
    for bad in [dict(rpc="nohost"), dict(rpc="h:1", tracker="h:2"), dict(tracker="h:9190"), dict(key="k")]:
        with pytest.raises(UsageError):
            rpc.Remote.from_options(**bad)
    with pytest.raises(UsageError, match="TVM target"):
        optc.compile(MODEL, "fpga", "/nonexistent/x", input_shapes=SHAPES, options=optc.CompileOptions.of(rpc="127.0.0.1:1"))


@pytest.mark.qemu
def test_compile_and_bench_on_qemu_rpc_server(qemu_server, tmp_path, capsys):
    """The aarch64 server does TVM's handshake, runs the uploaded library, the outputs verify
    against onnxruntime and the times are labelled emulated (never measured ARM latency)."""
    from optc.cli import main

    pkg = tmp_path / "pkg"
    rc = main(["compile", str(MODEL), "-t", "arm-a76", "-o", str(pkg), "--input-shape", "input=1,1,8,8",
               "--rpc", qemu_server.address, "--rpc-key", qemu_server.key, "--json", "-q"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["verify"]["passed"] and report["verify"]["max_abs_error"] < 1e-4
    lat = report["latency"]
    assert lat["method"] == "emulated" and "qemu-aarch64 -cpu cortex-a76" in lat["source"]
    assert qemu_server.address in lat["source"] and "aarch64" in lat["source"]
    assert lat["repeat"] == 20 and 0 < lat["min_ms"] <= lat["median_ms"] and "modeled_ms" in lat
    assert "time_evaluator" in lat["how"]
    assert "load_module" in qemu_server.log()  # it really ran on the server

    res = optc.bench(pkg, optc.BenchOptions(warmup=1, repeat=5), rpc=qemu_server.address, rpc_key=qemu_server.key)
    assert res["optc"]["repeat"] == 5 and res["method"].startswith("emulated") and "onnxruntime" not in res

    # the remote session's outputs equal the local qemu runner's on other inputs
    manifest = json.loads((pkg / "manifest.json").read_text())
    x = np.random.default_rng(3).standard_normal((1, 1, 8, 8)).astype(np.float32)
    with rpc.open_remote(pkg, manifest, rpc.Remote.from_options(qemu_server.address, qemu_server.key)) as sess:
        remote_out = sess.run([x])
    local_out, _ = arm.run_qemu(pkg / "model.so", [x], qemu=arm.QemuRun(cpu="cortex-a76", bundle=pkg / "runner"))
    np.testing.assert_array_equal(remote_out[0], local_out[0])


def _sessions_left(server) -> list[str]:
    """Session work directories still on the server, once its sessions have ended."""
    end = time.time() + 10
    while True:
        left = sorted(p.name for p in Path(server.workdir).glob("session-*"))
        if not left or time.time() > end:
            return left
        time.sleep(0.2)


@pytest.mark.qemu
def test_session_timeout_kills_and_cleans_up(qemu_server):
    """A session past the client's ``-timeout`` is killed by the server, and its work directory
    (uploads) goes with it."""
    sess = rpc.Remote.from_options(qemu_server.address, qemu_server.key).connect(timeout=2)
    sess.upload(MODEL, "model.onnx")
    assert len(list(Path(qemu_server.workdir).glob("session-*/model.onnx"))) == 1
    time.sleep(4)
    assert "timed out" in qemu_server.log()
    with contextlib.suppress(Exception):
        del sess
    assert _sessions_left(qemu_server) == []


@pytest.mark.qemu
def test_wrong_key_is_refused(qemu_server):
    with pytest.raises(ToolchainError, match="cannot open a session"):
        rpc.Remote.from_options(qemu_server.address, "not-the-key").connect(timeout=10)


@pytest.mark.qemu
def test_server_registers_with_tracker(tmp_path):
    """optc_rpc_server's tracker protocol: TVM's tracker hands its address to a client by key."""
    port = _free_port()
    tracker = _spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                      "--port-end", str(port + 1)])
    try:
        _wait_port(port)
        addr = f"127.0.0.1:{port}"
        with rpc.start_qemu_server("cortex-a72", key="qemu-pi4", tracker=addr):
            rpc.wait_for_tracker_key(addr, "qemu-pi4")
            sess = rpc.Remote.from_options(key="qemu-pi4", tracker=addr).connect(timeout=30)
            assert rpc.server_info(sess)["emulated"] == "qemu-aarch64 -cpu cortex-a72"
            a = tvm.runtime.tensor(np.arange(6, dtype=np.float32), sess.cpu(0))
            np.testing.assert_array_equal(a.numpy(), np.arange(6, dtype=np.float32))
            del a, sess
    finally:
        _stop(tracker)


def test_host_python_server_is_measured(tmp_path):
    """TVM's stock Python server (no optc server info, key without 'qemu'): method measured."""
    port = _free_port()
    server = _spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                     "--port-end", str(port + 1), "--key", "x86box"])
    try:
        _wait_port(port)
        report = optc.compile(MODEL, "cpu", tmp_path / "pkg", input_shapes=SHAPES, options=optc.CompileOptions.of(rpc=f"127.0.0.1:{port}", rpc_key="x86box"))
        lat = report["latency"]
        assert report["verify"]["passed"] and lat["method"] == "measured"
        assert f"127.0.0.1:{port}" in lat["source"] and "emulated" not in lat["source"]
        assert report["energy"]["method"] != "measured"  # a remote device is not metered from here
    finally:
        _stop(server)


@pytest.mark.qemu
def test_arm_tuning_through_qemu_rpc_server(qemu_server, tmp_path):
    """MetaSchedule candidates for arm-a76 cross-built here, measured on the aarch64 server."""
    from optc.backends.tvm.tune import TuningRequest
    from optc.cli_tune import tune

    request = TuningRequest(root=tmp_path, trials=4, rpc=qemu_server.address, key=qemu_server.key)
    summary = tune(MODEL, "arm-a76", request=request, input_shapes=SHAPES, log=lambda _: None)
    assert summary["measured"] >= 1
    # emulated measurements live apart from the board's records
    assert summary["emulated"] and summary["database"].endswith("-emulated")
    assert [p.name for p in tmp_path.iterdir()] == [Path(summary["database"]).name]
    assert any(t["best_ms"] is not None for t in summary["per_task"])
    assert all(t["rule_ms"] is not None for t in summary["per_task"])
    assert "cand-" in qemu_server.log() or "load_module" in qemu_server.log()

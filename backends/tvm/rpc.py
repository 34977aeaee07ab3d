"""Run, verify and time optc artifacts on a remote device through TVM RPC.

A remote is a TVM RPC server reached directly (``--rpc HOST:PORT [--rpc-key K]``) or through a
tracker (``--rpc-tracker HOST:PORT --rpc-key K``): TVM's ``python -m tvm.exec.rpc_server`` on a
board or GPU host, TVM's ``apps/cpp_rpc``, or optc's own ``optc_rpc_server``
(``runner/optc_rpc_server.cc``, shipped in the aarch64 runtime bundle beside ``optc_runner``: it
needs only ``libtvm_runtime.so`` + ``libtvm_ffi.so``, so copy ``runner/`` to an aarch64 board and
start ``./optc_rpc_server --port 9090 --key rpi5``).

:class:`RemoteSession` uploads the package's library, loads it on the server, builds the Relax
VM on the remote device (``cpu`` for LLVM targets, ``cuda`` for GPU targets), copies inputs and
weights there, and runs ``main`` through the VM's stateful API (``set_input`` /
``invoke_stateful`` / ``get_outputs``: tuple outputs cannot cross RPC as return values). Times
come from ``time_evaluator`` **on the server** (no network in them).

Emulation. :func:`start_qemu_server` runs ``optc_rpc_server`` under ``qemu-aarch64 -cpu <core>``
on this machine, so the whole path (handshake, upload, aarch64 load, run, time, MetaSchedule
RPC tuning) is exercised for real without a board. Its times measure qemu's binary translation
on the x86 host, not ARM latency: the server says so (the global ``optc.rpc.server_info`` returns
``"emulated": "qemu-aarch64 -cpu ..."``) and a key containing ``qemu`` counts as emulated too;
such times are reported with method ``"emulated"``, never ``"measured"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optc.backends import SessionBase
from optc.errors import ToolchainError, UsageError

DEFAULT_TIMEOUT = 600.0  # seconds a session may live on the server (its -timeout=)


def split_hostport(text: str, what: str = "--rpc") -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{what} expects HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Remote:
    """Where to reach a TVM RPC server: directly (``rpc``) or through a tracker (``tracker``)."""

    rpc: str | None = None  # "HOST:PORT" of a server
    tracker: str | None = None  # "HOST:PORT" of a tracker
    key: str = ""  # device key (a server's --key; required with a tracker)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_options(cls, rpc: str | None = None, key: str | None = None, tracker: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT) -> Remote | None:
        """None when neither ``rpc`` nor ``tracker`` is given; UsageError on bad combinations."""
        if not rpc and not tracker:
            if key:
                raise UsageError("--rpc-key needs --rpc HOST:PORT or --rpc-tracker HOST:PORT")
            return None
        if rpc and tracker:
            raise UsageError("give --rpc HOST:PORT or --rpc-tracker HOST:PORT, not both")
        if tracker and not key:
            raise UsageError("--rpc-tracker needs --rpc-key (the device key servers registered with)")
        split_hostport(rpc or tracker, "--rpc" if rpc else "--rpc-tracker")
        return cls(rpc=rpc, tracker=tracker, key=key or "", timeout=timeout)

    def describe(self) -> str:
        where = f"tracker {self.tracker}" if self.tracker else f"server {self.rpc}"
        return f"TVM RPC {where}" + (f" key {self.key!r}" if self.key else "")

    def connect(self, timeout: float | None = None):
        """An ``tvm.rpc.RPCSession``; ToolchainError naming the remote when that fails."""
        from tvm import rpc as tvm_rpc

        timeout = self.timeout if timeout is None else timeout
        try:
            if self.tracker:
                host, port = split_hostport(self.tracker, "--rpc-tracker")
                return tvm_rpc.connect_tracker(host, port).request(self.key, priority=1,
                                                                   session_timeout=timeout)
            host, port = split_hostport(self.rpc)
            return tvm_rpc.connect(host, port, key=self.key, session_timeout=timeout)
        except (UsageError, ToolchainError):
            raise
        except Exception as err:  # noqa: BLE001 - TVM raises RuntimeError/TVMError/OSError here
            msg = " ".join(str(err).split())[-300:]
            raise ToolchainError(f"cannot open a session on {self.describe()}: {msg}") from None


def server_info(sess) -> dict:
    """What an ``optc_rpc_server`` says about itself ({} for other servers)."""
    try:
        f = sess.get_function("optc.rpc.server_info")
        return json.loads(str(f())) if f is not None else {}
    except Exception:  # noqa: BLE001 - TVM's own servers do not have it
        return {}


def emulation_of(remote: Remote, info: dict) -> str:
    """A non-empty description when the remote's times are emulated (server flag or qemu key)."""
    if info.get("emulated"):
        return str(info["emulated"])
    if "qemu" in (remote.key or "").lower():
        return f"qemu (key {remote.key!r})"
    return ""


def probe_emulation(remote: Remote) -> str:
    """:func:`emulation_of` a remote, asking the server itself (one short session, closed
    before this returns: servers take one session at a time)."""
    import gc

    if "qemu" in (remote.key or "").lower():
        return emulation_of(remote, {})
    sess = remote.connect()
    try:
        return emulation_of(remote, server_info(sess))
    finally:
        del sess
        gc.collect()


def _device(sess, tvm_kind: str):
    if tvm_kind == "cuda":
        return sess.cuda(0)
    if tvm_kind == "llvm":
        return sess.cpu(0)
    raise UsageError(f"TVM target kind {tvm_kind!r} cannot run over RPC")


class RemoteSession(SessionBase):
    """A compiled package loaded on a TVM RPC server (same interface as the local sessions:
    ``run``, ``time``; plus ``latency`` for the report)."""

    runnable = True

    def __init__(self, pkg_dir: Path, manifest: dict, remote: Remote):
        import tvm
        from tvm import relax

        from . import lower

        self.remote = remote
        files = manifest["files_by_role"]
        kind = (manifest["target"].get("tvm") or {}).get("kind", "llvm")
        self.sess = remote.connect()
        self.info = server_info(self.sess)
        self.emulated = emulation_of(remote, self.info)
        self.dev = _device(self.sess, kind)
        name = f"optc-{uuid.uuid4().hex[:8]}-{Path(files['library']).name}"
        lib_path = Path(pkg_dir) / files["library"]
        try:
            self.sess.upload(str(lib_path), name)
            rlib = self.sess.load_module(name)
            if kind == "cuda" and not self.dev.exist:
                raise ToolchainError(f"{remote.describe()} has no CUDA device")
            self.vm = relax.VirtualMachine(rlib, self.dev)
            params = lower.load_params(Path(pkg_dir) / files["params"]) if "params" in files else []
            self._params = [tvm.runtime.tensor(p.numpy(), self.dev) for p in params]
        except ToolchainError:
            raise
        except Exception as err:  # noqa: BLE001
            msg = " ".join(str(err).split())[-400:]
            raise ToolchainError(f"loading {lib_path.name} on {remote.describe()} failed: {msg}") from None
        self._tensor = tvm.runtime.tensor
        self.device_text = self._device_text(kind)
        self.timing = f"emulated ({self.emulated}, through TVM RPC)" if self.emulated else "measured"

    def _device_text(self, kind: str) -> str:
        parts = [f"{kind if kind == 'cuda' else 'cpu'}(0)"]
        if kind == "cuda":
            with contextlib.suppress(Exception):
                parts.append(str(self.dev.device_name))
        if self.info.get("arch"):
            parts.append(self.info["arch"])
        return " ".join(parts)

    def source(self) -> str:
        return f"{self.remote.describe()}, device {self.device_text}" + (
            f"; server runs under {self.emulated}" if self.emulated else "")

    def _set_inputs(self, inputs: list[np.ndarray]) -> None:
        args = [self._tensor(np.asarray(x, order="C"), self.dev) for x in inputs] + self._params
        self.vm.set_input("main", *args)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._set_inputs(inputs)
        self.vm.invoke_stateful("main")
        from .lower import flatten_outputs

        return flatten_outputs(self.vm.get_outputs("main"))

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:
        """Seconds per call of ``main``, timed on the server by ``time_evaluator`` (one call
        per repeat, after ``warmup`` untimed calls and the evaluator's own warm-up call)."""
        self._set_inputs(inputs)
        for _ in range(warmup):
            self.vm.invoke_stateful("main")
        if repeat <= 0:
            return []
        evaluator = self.vm.time_evaluator("invoke_stateful", self.dev, number=1, repeat=repeat)
        return [float(t) for t in evaluator("main").results]

    def report_latency(self, args: list[np.ndarray], ctx) -> dict:
        """Timed on the remote device; an emulated server keeps the modeled figure beside it."""
        from optc.timing import REPEAT, WARMUP, not_measured, stats

        if not ctx.measure:
            return not_measured(source=self.source())
        with ctx.progress.step(f"measure latency on {self.remote.describe()}"):
            out = self.latency(args, warmup=WARMUP, repeat=REPEAT)
        out = out | stats(out.pop("times_s"))
        if out["method"] != "measured" and ctx.target.peak is not None:
            modeled = ctx.modeled()
            out["modeled_ms"], out["modeled_source"] = modeled["median_ms"], modeled["how"]
        return out

    def latency(self, inputs: list[np.ndarray], warmup: int = 3, repeat: int = 20) -> dict:
        """The report's latency fields (without the statistics, which the caller computes from
        ``times_s``)."""
        times = self.time(inputs, warmup, repeat)
        how = (f"time_evaluator on the RPC server (device {self.device_text}): {warmup} warm-up + "
               f"{repeat} timed calls of main, one call per repeat; network time not included")
        out = {"method": "emulated" if self.emulated else "measured", "how": how,
               "source": self.source(), "times_s": times}
        if self.emulated:
            out["note"] = (f"the server runs under {self.emulated} on an x86 host: these are emulation "
                           "times, NOT the latency of the named core")
        return out

    def close(self) -> None:
        """End the session now: a server serves one session at a time (TVM's servers and
        optc_rpc_server alike), so a session left to the garbage collector blocks the next
        client's handshake."""
        import gc

        self.vm = self.sess = None
        self._params = []
        gc.collect()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_remote(pkg_dir: Path, manifest: dict, remote: Remote) -> RemoteSession:
    return RemoteSession(Path(pkg_dir), manifest, remote)


# ----------------------------------------------------------------------------- qemu-hosted server
class QemuServer:
    """``optc_rpc_server`` running under ``qemu-aarch64 -cpu <cpu>`` on this machine."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, key: str, cpu: str, workdir: str,
                 log_path: Path):
        self.proc, self.host, self.port, self.key, self.cpu = proc, host, port, key, cpu
        self.workdir, self.log_path = workdir, log_path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_qemu_server(qemu_cpu: str = "cortex-a72", *, host: str = "127.0.0.1", port: int = 0,
                      key: str | None = None, tracker: str | None = None, bundle: Path | None = None,
                      startup_timeout: float = 60.0) -> QemuServer:
    """Start the aarch64 ``optc_rpc_server`` of the runtime bundle under qemu-user; returns once
    it listens (``port=0``: a free port). The key defaults to ``qemu-<cpu>``; the server
    advertises itself as emulated either way."""
    from . import arm

    arm.check_tools()
    bundle = Path(bundle) if bundle is not None else arm.runtime_bundle()
    binary = bundle / arm.RPC_SERVER_NAME
    if not binary.is_file():
        raise ToolchainError(f"{binary} not found: the runtime bundle predates the RPC server")
    key = key if key is not None else f"qemu-{qemu_cpu}"
    workdir = tempfile.mkdtemp(prefix="optc-rpc-server-")
    log_path = Path(workdir) / "server.log"
    cmd = [arm.QEMU, "-cpu", qemu_cpu, "-L", arm.SYSROOT, str(binary), "--host", host, "--port", str(port),
           "--key", key, "--workdir", workdir, "--emulated", f"qemu-aarch64 -cpu {qemu_cpu}"]
    if tracker:
        cmd += ["--tracker", tracker]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(bundle)
    env.pop("LD_PRELOAD", None)
    env.pop("QEMU_LD_PREFIX", None)
    log = open(log_path, "w")  # noqa: SIM115 - the server's stderr for its whole life
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    log.close()
    line: list[str] = []

    def read_first():
        line.append(proc.stdout.readline())

    reader = threading.Thread(target=read_first, daemon=True)
    reader.start()
    reader.join(startup_timeout)
    m = re.search(r"listening on (\S+):(\d+)", line[0]) if line else None
    if m is None:
        proc.kill()
        proc.wait()
        text = log_path.read_text() if log_path.exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
        raise ToolchainError(f"optc_rpc_server under qemu did not start: {(line[0] if line else '').strip()} "
                             f"{' | '.join(text.strip().splitlines()[-3:])}")
    return QemuServer(proc, host, int(m.group(2)), key, qemu_cpu, workdir, log_path)


def wait_for_tracker_key(tracker: str, key: str, timeout: float = 30.0) -> None:
    """Block until a server with ``key`` is free on the tracker (tests, scripts)."""
    from tvm import rpc as tvm_rpc

    host, port = split_hostport(tracker, "--rpc-tracker")
    end = time.time() + timeout
    while time.time() < end:
        with contextlib.suppress(Exception):
            summary = tvm_rpc.connect_tracker(host, port).summary()
            if summary.get("queue_info", {}).get(key, {}).get("free", 0) > 0:
                return
        time.sleep(0.2)
    raise ToolchainError(f"no server with key {key!r} registered on tracker {tracker} within {timeout:g} s")

"""64-bit ARM (aarch64 Linux) execution path: cross-built artifacts run under qemu-user.

How it works
------------
* **Model library.** A Relax executable compiled for an aarch64 LLVM target
  (``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": ..., "mattr": ["+neon"]}``) is
  exported by :func:`export_aarch64` with Debian's cross compiler
  (``tvm.support.cc.cross_compiler("aarch64-linux-gnu-g++")``) into an aarch64 ``.so``.
* **Runtime bundle.** :func:`runtime_bundle` builds, once per (apache-tvm, apache-tvm-ffi,
  program sources) triple, a directory holding ``optc_runner`` (``runner/optc_runner.cc``,
  cross-compiled), ``optc_rpc_server`` (``runner/optc_rpc_server.cc``: a TVM RPC server for a
  board, or for qemu-user here, see ``rpc.py``; both include ``runner/optc_main.h``, hashed with
  the sources), ``libtvm_runtime.so`` and ``libtvm_ffi.so`` taken from the *aarch64 wheels*
  of the same versions as installed on the host (``pip download --platform
  manylinux_2_28_aarch64``), plus ``libtvm_runtime_extra.so`` (optional: sort/topk/random
  kernels) and ``bundle.json``. The runner's RUNPATH is ``$ORIGIN:$ORIGIN/lib``, so the bundle
  plus a model ``.so`` can be copied as-is to a real aarch64 Linux board (glibc >= 2.34, because
  the cross toolchain is Debian 12's) and run there::

      ./optc_runner model.so [--params params.bin] --outdir out [--warmup N --repeat N] in0.npy

  The bundle is cached under ``$OPTC_CACHE_DIR/arm-runtime`` (default
  ``~/.cache/optc/arm-runtime``); it is built in a temporary directory and renamed into place,
  so concurrent builders are safe.
* **Emulation.** :func:`run_qemu` runs the runner with ``qemu-aarch64 -cpu <cpu> -L
  /usr/aarch64-linux-gnu``. Always pass the ``-cpu`` that matches the target's ``mcpu``: qemu's
  default ``max`` CPU accepts instructions (SVE, newer extensions) that the real core would trap
  on.

Emulated time is NOT ARM latency. The ``times`` returned by :func:`run_qemu` measure qemu's
dynamic binary translation on the host; they are useful only as a smoke signal (e.g. "it did not
hang") and must never be reported as the latency of an ARM board. Measure on a real board (copy
the bundle, or use ``tvm.rpc``) or use a deterministic proxy (instruction counts, roofline).

This module imports TVM lazily (inside functions), so importing it is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from optc import tools
from optc.errors import ToolchainError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

CROSS_CXX = "aarch64-linux-gnu-g++"
ARM_TRIPLE = "aarch64-linux-gnu"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
RUNNER_NAME = "optc_runner"
RPC_SERVER_NAME = "optc_rpc_server"
BUNDLE_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
OPTIONAL_LIBS = ("libtvm_runtime_extra.so",)
CXX_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-Wall")
# libtvm_runtime must stay NEEDED (-no-as-needed): its static initialisers register the Relax VM
# loader ("ffi.Module.load_from_file.relax.VMExecutable") that the runner never names directly.
LINK_FLAGS = (
    "-Wl,--no-as-needed",
    "-ltvm_runtime",
    "-Wl,--as-needed",
    "-ltvm_ffi",
    "-ldl",
    "-Wl,-rpath,$ORIGIN:$ORIGIN/lib",
)

Progress = Callable[[str], None] | None


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def runner_source() -> Path:
    """Path of the runner's C++ source (shipped as package data)."""
    return Path(__file__).resolve().parent / "runner" / "optc_runner.cc"


def rpc_server_source() -> Path:
    """Path of the RPC server's C++ source (``runner/optc_rpc_server.cc``, see rpc.py)."""
    return Path(__file__).resolve().parent / "runner" / "optc_rpc_server.cc"


def _programs() -> tuple[tuple[str, Path], ...]:
    """(binary name, C++ source) of each program cross-built into the bundle."""
    return ((RUNNER_NAME, runner_source()), (RPC_SERVER_NAME, rpc_server_source()))


def _shared_headers() -> tuple[Path, ...]:
    """The headers the programs share (``runner/*.h``, included by relative path): hashed into
    the bundle's key with the sources, so a change to them rebuilds the bundle."""
    return tuple(sorted((Path(__file__).resolve().parent / "runner").glob("*.h")))


def _versions() -> tuple[str, str]:
    from importlib import metadata

    try:
        return metadata.version("apache-tvm"), metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError as exc:
        raise ToolchainError(
            f"package {exc.args[0] if exc.args else '?'} is not installed: "
            "pip install apache-tvm apache-tvm-ffi"
        ) from None


def _default_cache_root() -> Path:
    base = os.environ.get("OPTC_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "optc"
    return root / "arm-runtime"


def _bundle_key(tvm_ver: str, ffi_ver: str) -> str:
    h = hashlib.sha256()
    for name, src in (*_programs(), *((p.name, p) for p in _shared_headers())):
        h.update(name.encode() + b"\0" + src.read_bytes())
    h.update(repr((CXX_FLAGS, LINK_FLAGS, WHEEL_PLATFORM)).encode())
    return f"{tvm_ver}-{ffi_ver}-{h.hexdigest()[:12]}"


def _bundle_complete(d: Path) -> bool:
    return (d / "bundle.json").is_file() and all(
        (d / n).is_file() for n in (*(p for p, _ in _programs()), *BUNDLE_LIBS)
    )


def check_tools() -> None:
    """Raise :class:`ToolchainError` if the aarch64 cross compiler or qemu-aarch64 is missing."""
    if tools.which(CROSS_CXX) is None:
        raise ToolchainError(
            f"aarch64 cross compiler '{CROSS_CXX}' not found: apt-get install g++-aarch64-linux-gnu"
        )
    if tools.which(QEMU) is None:
        raise ToolchainError(f"'{QEMU}' not found: apt-get install qemu-user")
    if not Path(SYSROOT).is_dir():
        raise ToolchainError(
            f"aarch64 sysroot {SYSROOT} not found: apt-get install g++-aarch64-linux-gnu"
        )


def _tail(text: str, n: int = 5) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _download_wheels(tvm_ver: str, ffi_ver: str, dest: Path, progress: Progress) -> None:
    pyvers = [f"{sys.version_info.major}.{sys.version_info.minor}"]
    if "3.11" not in pyvers:
        pyvers.append("3.11")  # libtvm_ffi.so is the same for every CPython ABI
    err = ""
    for pyver in pyvers:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--platform", WHEEL_PLATFORM, "--python-version", pyver,
            f"apache-tvm=={tvm_ver}", f"apache-tvm-ffi=={ffi_ver}",
            "-d", str(dest), "--disable-pip-version-check", "-q",
        ]  # fmt: skip
        _say(progress, f"downloading aarch64 wheels apache-tvm=={tvm_ver} apache-tvm-ffi=={ffi_ver}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        err = _tail(proc.stderr or proc.stdout, 3)
    raise ToolchainError(
        f"could not download the aarch64 wheels of apache-tvm=={tvm_ver} / "
        f"apache-tvm-ffi=={ffi_ver} ({WHEEL_PLATFORM}) needed for the ARM runtime: {err}"
    )


def _find_wheel(d: Path, prefix: str) -> Path:
    found = sorted(d.glob(f"{prefix}-*.whl"))
    if not found:
        raise ToolchainError(f"pip download produced no {prefix} wheel in {d}")
    return found[0]


def _extract(whl: Path, dest: Path, member_prefixes: tuple[str, ...]) -> None:
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.endswith("/") or not name.startswith(member_prefixes):
                continue
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _build_bundle(tvm_ver: str, ffi_ver: str, work: Path, progress: Progress) -> Path:
    wheels = work / "wheels"
    wheels.mkdir()
    _download_wheels(tvm_ver, ffi_ver, wheels, progress)
    x = work / "x"
    _extract(_find_wheel(wheels, "apache_tvm"), x, tuple(f"tvm/lib/{n}" for n in
                                                        ("libtvm_runtime.so", *OPTIONAL_LIBS)))
    _extract(_find_wheel(wheels, "apache_tvm_ffi"), x,
             ("tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/"))
    out = work / "bundle"
    out.mkdir()
    shutil.copy2(x / "tvm/lib/libtvm_runtime.so", out / "libtvm_runtime.so")
    shutil.copy2(x / "tvm_ffi/lib/libtvm_ffi.so", out / "libtvm_ffi.so")
    for n in OPTIONAL_LIBS:
        if (x / "tvm/lib" / n).is_file():
            shutil.copy2(x / "tvm/lib" / n, out / n)
    for n in os.listdir(out):
        os.chmod(out / n, 0o755)

    includes = [x / "tvm_ffi/include"]
    if (x / "tvm_ffi/3rdparty/dlpack/include").is_dir():
        includes.append(x / "tvm_ffi/3rdparty/dlpack/include")
    for name, src in _programs():
        cmd = [CROSS_CXX, *CXX_FLAGS, *[f"-I{p}" for p in includes], str(src),
               "-o", str(out / name), f"-L{out}", *LINK_FLAGS]  # fmt: skip
        _say(progress, f"cross-compiling {name} with {CROSS_CXX}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(f"building {name} failed: {_tail(proc.stderr)}")
    sources_sha256 = {name: hashlib.sha256(src.read_bytes()).hexdigest() for name, src in _programs()}
    (out / "bundle.json").write_text(
        json.dumps(
            {
                "apache-tvm": tvm_ver,
                "apache-tvm-ffi": ffi_ver,
                "platform": WHEEL_PLATFORM,
                "runner_sha256": sources_sha256[RUNNER_NAME],
                "sources_sha256": sources_sha256,
                "cxx": CROSS_CXX,
                "cxx_flags": list(CXX_FLAGS),
                "link_flags": list(LINK_FLAGS),
                "files": sorted(os.listdir(out)),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    return out


def runtime_bundle(cache_dir: Path | None = None, progress: Progress = None) -> Path:
    """Return a directory with ``optc_runner``, ``libtvm_runtime.so``, ``libtvm_ffi.so`` (aarch64).

    Built on first use (downloads two wheels, ~100 MB, and cross-compiles the runner) and cached
    under ``cache_dir`` (default ``$OPTC_CACHE_DIR/arm-runtime`` or ``~/.cache/optc/arm-runtime``)
    in ``<tvm-version>-<ffi-version>-<hash of the program sources and flags>``. ``progress`` is an
    optional callable receiving one-line status messages.
    """
    tvm_ver, ffi_ver = _versions()
    root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    final = root / _bundle_key(tvm_ver, ffi_ver)
    if _bundle_complete(final):
        return final
    if tools.which(CROSS_CXX) is None:
        check_tools()
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    except OSError as exc:
        raise ToolchainError(
            f"cannot write the ARM runtime cache {root} ({exc.strerror}): set OPTC_CACHE_DIR "
            "to a writable directory"
        ) from None
    try:
        built = _build_bundle(tvm_ver, ffi_ver, work, progress)
        if final.exists() and not _bundle_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # a broken leftover, not a live build
        try:
            os.rename(built, final)  # atomic; fails if another process won the race
        except OSError:
            if not _bundle_complete(final):
                raise
        _say(progress, f"ARM runtime bundle ready: {final}")
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_aarch64(executable, path: Path) -> None:
    """Export a ``tvm.compile`` result (built for an aarch64 target) as an aarch64 shared library."""
    if tools.which(CROSS_CXX) is None:
        check_tools()
    from tvm.support import cc

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh fcompile each time: cross_compiler's closure mutates its option list per call. The
    # triple is for the module that packs the imports (devc.o): TVM takes it from the compiled
    # kernels' target, and without kernels (an Identity model) from the fcompile, whose default
    # asks the host compiler (x86-64: the aarch64 link then failed).
    fcompile = cc.cross_compiler(CROSS_CXX, get_target_triple=lambda: ARM_TRIPLE)
    try:
        executable.export_library(str(path), fcompile=fcompile)
    except Exception as exc:  # noqa: BLE001 - reported as a toolchain problem
        msg = " ".join(str(exc).split())
        raise ToolchainError(f"exporting aarch64 library {path} failed: {msg[-500:]}") from exc


@dataclass(frozen=True)
class QemuRun:
    """How :func:`run_qemu` runs the aarch64 runner under qemu-user: the emulated core
    (``qemu -cpu``), the ``bundle`` directory holding ``optc_runner`` and the aarch64 TVM
    libraries (None: the cached :func:`runtime_bundle`; a package passes the copy it ships),
    extra qemu options placed after ``-cpu`` (e.g. a TCG plugin, see ``qemu_plugin.py``) and the
    runner's time limit in seconds."""

    cpu: str = "cortex-a72"
    bundle: Path | None = None
    qemu_args: tuple[str, ...] = ()
    timeout: float = 600


def run_qemu(lib_path: Path, inputs: list[np.ndarray], *, params_path: Path | None = None,
             qemu: QemuRun = QemuRun(), warmup: int = 0, repeat: int = 0) -> tuple[list[np.ndarray], list[float]]:
    """Run ``main(*inputs, *params)`` of an aarch64 Relax library under qemu-user as ``qemu``
    says (:class:`QemuRun`).

    Returns ``(outputs, times_s)``; ``times_s`` is empty unless ``repeat > 0`` and measures
    *emulation* speed on the host, not ARM latency. Any failure raises :class:`ToolchainError`
    carrying the runner's last stderr lines.
    """
    sets, times = run_qemu_sets(lib_path, [inputs], params_path=params_path, qemu=qemu, warmup=warmup,
                                repeat=repeat)
    return sets[0], times


def run_qemu_sets(lib_path: Path, sets: list[list[np.ndarray]], *, params_path: Path | None = None,
                  qemu: QemuRun = QemuRun(), warmup: int = 0,
                  repeat: int = 0) -> tuple[list[list[np.ndarray]], list[float]]:
    """:func:`run_qemu` on several input sets in one runner process (the library and the
    runtime load once): the outputs of each set, and the times of the first set."""
    import numpy as np

    qemu_cpu, timeout, qemu_args, bundle = qemu.cpu, qemu.timeout, qemu.qemu_args, qemu.bundle
    check_tools()
    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise ToolchainError(f"aarch64 library not found: {lib_path}")
    if params_path is not None and not Path(params_path).is_file():
        raise ToolchainError(f"params file not found: {params_path}")
    bundle = Path(bundle) if bundle is not None else runtime_bundle()

    with tempfile.TemporaryDirectory(prefix="optc-qemu-") as tmp:
        tmpd = Path(tmp)
        outdir = tmpd / "out"
        outdir.mkdir()
        in_files = []
        for k, inputs in enumerate(sets):
            for i, arr in enumerate(inputs):
                a = np.asarray(arr)
                if a.dtype.byteorder == ">":
                    a = a.astype(a.dtype.newbyteorder("<"))
                f = tmpd / f"s{k}_in{i}.npy"
                np.save(f, np.asarray(a, order="C"))
                in_files.append(str(f))
        cmd = [QEMU, "-cpu", qemu_cpu, *qemu_args, "-L", SYSROOT, str(bundle / RUNNER_NAME),
               str(lib_path.resolve())]  # fmt: skip
        if params_path is not None:
            cmd += ["--params", str(Path(params_path).resolve())]
        cmd += ["--outdir", str(outdir), "--warmup", str(int(warmup)), "--repeat", str(int(repeat))]
        if len(sets) > 1:
            cmd += ["--sets", str(len(sets))]
        cmd += in_files
        env = dict(os.environ)
        # rpath $ORIGIN finds the libs; LD_LIBRARY_PATH is belt and braces. Host LD_PRELOAD
        # libraries would be x86 and make the guest loader complain.
        env["LD_LIBRARY_PATH"] = str(bundle)
        env.pop("LD_PRELOAD", None)
        env.pop("QEMU_LD_PREFIX", None)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ToolchainError(
                f"qemu-aarch64 run of {lib_path.name} timed out after {timeout:g} s"
            ) from None
        if proc.returncode != 0:
            raise ToolchainError(
                f"aarch64 runner failed (exit {proc.returncode}) on {lib_path.name} "
                f"under qemu -cpu {qemu_cpu}: {_tail(proc.stderr)}"
            )
        outputs = []
        for k in range(len(sets)):
            prefix, i, outs = "out" if k == 0 else f"s{k}_out", 0, []
            while (outdir / f"{prefix}{i}.npy").is_file():
                outs.append(np.load(outdir / f"{prefix}{i}.npy"))
                i += 1
            outputs.append(outs)
        times: list[float] = []
        if repeat > 0:
            line = next(
                (ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None
            )
            if line is None:
                raise ToolchainError(
                    f"aarch64 runner printed no timing line: {_tail(proc.stdout)}"
                )
            times = [float(t) for t in json.loads(line)["times_s"]]
    return outputs, times


OBJDUMP = "aarch64-linux-gnu-objdump"
# Instruction kinds that say which kernels a library holds (mnemonic prefixes, see kernel_profile).
KERNEL_MNEMONICS = {
    "dot_product": ("sdot", "udot", "usdot"),  # ARMv8.2 dotprod / i8mm: int8 -> int32, 4 per lane
    # int8/int16 -> int32 without dotprod: multiply-accumulate long, or (int8.py "smull") smull into
    # int16 + sadalp (pairwise add-accumulate into int32; a NEON-only mnemonic, unlike scalar smull)
    "int_widening_mla": ("smlal", "smlal2", "umlal", "umlal2", "sadalp"),
    "int_mla": ("mla",),
    "fp32_fma": ("fmla",),
    "popcount": ("cnt",),
}


def kernel_profile(lib_path: Path) -> dict:
    """What the compute kernels of an aarch64 library are made of, from its static disassembly
    (``aarch64-linux-gnu-objdump -d``): how many instructions of each kind in
    :data:`KERNEL_MNEMONICS` it contains (present in the code, not executed counts), and the widest
    vector registers used (128 for NEON ``v`` registers, ``"scalable"`` for SVE ``z``
    registers). Raises :class:`ToolchainError` when objdump is missing or fails."""
    import re

    objdump = tools.which(OBJDUMP)
    if objdump is None:
        raise ToolchainError(f"'{OBJDUMP}' not found (binutils-aarch64-linux-gnu, installed with "
                             "g++-aarch64-linux-gnu): cannot inspect the library's kernels")
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{OBJDUMP} -d {Path(lib_path).name} failed: {_tail(proc.stderr)}")
    kinds = {k: 0 for k in KERNEL_MNEMONICS}
    of = {m: k for k, ms in KERNEL_MNEMONICS.items() for m in ms}
    neon = sve = False
    total = 0
    for line in proc.stdout.splitlines():
        parts = line.split("\t")  # "  addr:\tmnemonic\toperands"
        if len(parts) < 2 or not parts[0].rstrip().endswith(":"):
            continue
        total += 1
        mnemonic = parts[1].strip().split(".")[0]
        if mnemonic in of:
            kinds[of[mnemonic]] += 1
        ops = parts[2] if len(parts) > 2 else ""
        neon = neon or bool(re.search(r"\bv\d+\.(16b|8h|4s|2d)", ops))
        sve = sve or bool(re.search(r"\bz\d+\.[bhsd]", ops))
    return {"method": "static disassembly", "how": f"{OBJDUMP} -d {Path(lib_path).name}: instructions present in "
            "the code (not executed counts)", "instructions_in_code": total, **kinds,
            "vector_bits": "scalable (SVE)" if sve else (128 if neon else "scalar only")}

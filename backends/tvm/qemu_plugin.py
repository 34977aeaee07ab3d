"""Deterministic executed-instruction counts of aarch64 artifacts: qemu's TCG ``insn`` plugin.

Emulated wall time is not ARM latency, but the number of guest instructions executed per
inference is deterministic and comparable between variants of a model (fp32 vs int8 vs
pruned). qemu-user 7.2 (Debian 12) is built with plugin support but Debian ships no plugins, so
this module builds ``tests/plugin/insn.c`` from the qemu source of the *installed* version
against that version's ``qemu-plugin.h`` (plugin API v1) with gcc and glib:

* :func:`fetch_source` gets the two files from Debian's source package (``apt-get source
  --download-only qemu=<installed source version>`` with a private deb-src list and apt state in
  a temporary directory, so the system's apt configuration is left as it is) into the cache.
  ``setup.sh`` runs it; ``$OPTC_QEMU_SRC`` may point at an unpacked qemu source tree instead.
* :func:`ensure_plugin` compiles ``libinsn.so`` once into
  ``$OPTC_CACHE_DIR/qemu-plugin/<qemu version>-<hash>/`` (default ``~/.cache/optc``); it never
  downloads anything.
* :func:`count_instructions` runs the package's runner twice under ``qemu-aarch64 -plugin
  libinsn.so,inline=on -d plugin -D LOG`` with one guest thread (``TVM_NUM_THREADS=1``), with 1
  and with 3 warm-up inferences; half the difference is one steady-state inference (the first
  extra call still varies by a few hundred instructions with heap state; later ones do not).
  The only run-to-run variation left is the runner printing its timing line (a few dozen
  instructions), reported as ``jitter``.

``python -m optc.backends.tvm.qemu_plugin [--fetch]`` fetches/builds and prints the plugin path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from optc import tools
from optc.errors import ToolchainError

from . import arm

PLUGIN_NAME = "libinsn.so"
HEADER = "include/qemu/qemu-plugin.h"
PLUGIN_SOURCES = ("tests/plugin/insn.c", "tests/tcg/plugins/insn.c", "contrib/plugins/insn.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall")
METHOD = "qemu TCG insn plugin, deterministic"
STEADY_CALLS = 2  # inferences counted (after 2 that warm allocations up)


def _cache_root() -> Path:
    base = os.environ.get("OPTC_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "optc") / "qemu-plugin"


def qemu_version() -> str:
    """The installed qemu-aarch64's version, e.g. ``7.2.22``."""
    if tools.which(arm.QEMU) is None:
        raise ToolchainError(f"'{arm.QEMU}' not found: apt-get install qemu-user")
    out = subprocess.run([arm.QEMU, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise ToolchainError(f"cannot read the version of {arm.QEMU}: {out.strip()[:200]}")
    return m.group(1)


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _find_plugin_source(tree: Path) -> Path | None:
    return next((tree / p for p in PLUGIN_SOURCES if (tree / p).is_file()), None)


def find_source() -> Path:
    """A qemu source tree (at least ``include/qemu/qemu-plugin.h`` and ``insn.c``) of the same
    major.minor version as the installed qemu-aarch64: ``$OPTC_QEMU_SRC`` or the cache."""
    want = _major_minor(qemu_version())
    env = os.environ.get("OPTC_QEMU_SRC")
    if env:
        tree = Path(env)
        if not (tree / HEADER).is_file() or _find_plugin_source(tree) is None:
            raise ToolchainError(f"OPTC_QEMU_SRC={env} holds no {HEADER} and insn.c")
        return tree
    for tree in sorted(_cache_root().glob(f"src-{want}*"), reverse=True):
        if (tree / HEADER).is_file() and _find_plugin_source(tree) is not None:
            return tree
    raise ToolchainError(
        f"no qemu {want} source for the insn plugin in {_cache_root()} (Debian ships no TCG "
        "plugins): run setup.sh, or python -m optc.backends.tvm.qemu_plugin --fetch, or set "
        "OPTC_QEMU_SRC to an unpacked qemu source tree of that version")


def _installed_source_version() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ToolchainError("cannot find the installed qemu-user package (dpkg-query): install "
                             "qemu-user from Debian, or set OPTC_QEMU_SRC")
    return proc.stdout.strip()


def _deb_src_list() -> str:
    """deb-src entries for the binary repositories apt is configured with."""
    lines = []
    legacy = Path("/etc/apt/sources.list")
    files = ([legacy] if legacy.is_file() else []) + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for f in files:
        for ln in f.read_text().splitlines():
            if ln.strip().startswith("deb "):
                lines.append("deb-src " + ln.strip()[4:])
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
            if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes") == "no":
                continue
            opts = f" [signed-by={fields['Signed-By']}]" if fields.get("Signed-By", "").startswith("/") else ""
            for suite in fields.get("Suites", "").split():
                for uri in fields.get("URIs", "").split():
                    lines.append(f"deb-src{opts} {uri} {suite} {fields.get('Components', 'main')}")
    if not lines:
        raise ToolchainError("no Debian apt repositories configured: cannot fetch the qemu source")
    return "\n".join(lines) + "\n"


def fetch_source(progress=print) -> Path:
    """Download the installed qemu's Debian source package and keep the plugin header and
    ``insn.c`` in the cache (Debian's stable patches to 7.2 do not touch either)."""
    version = _installed_source_version()
    upstream = re.sub(r"^\d+:", "", version).split("+")[0].split("-")[0]  # 1:7.2+dfsg-7+deb12u18 -> 7.2
    dest = _cache_root() / f"src-{upstream}-{re.sub(r'[^A-Za-z0-9.+-]', '_', version)}"
    if (dest / HEADER).is_file() and _find_plugin_source(dest) is not None:
        return dest
    with tempfile.TemporaryDirectory(prefix="optc-qemu-src-") as tmp:
        t = Path(tmp)
        for d in ("lists/partial", "cache/archives/partial", "dl"):
            (t / d).mkdir(parents=True)
        (t / "sources.list").write_text(_deb_src_list())
        opts = ["-o", f"Dir::Etc::sourcelist={t / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
                "-o", f"Dir::State::Lists={t / 'lists'}", "-o", f"Dir::Cache={t / 'cache'}",
                "-o", "APT::Get::List-Cleanup=0", "-o", "Debug::NoLocking=1", "-q"]
        if progress:
            progress(f"qemu-plugin: fetching Debian source package qemu={version} (deb-src, private apt state)")
        for cmd in (["apt-get", *opts, "update"],
                    ["apt-get", *opts, "source", "--download-only", f"qemu={version}"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=t / "dl")
            if proc.returncode != 0:
                raise ToolchainError(f"{' '.join(cmd[:1] + cmd[-3:])} failed: {arm._tail(proc.stderr or proc.stdout)}")
        orig = sorted((t / "dl").glob("qemu_*.orig.tar.*"))
        if not orig:
            raise ToolchainError("apt-get source produced no qemu .orig tarball")
        work = Path(tempfile.mkdtemp(prefix=".src-", dir=_mkdir(_cache_root())))
        try:
            with tarfile.open(orig[0]) as tf:
                for member in tf:
                    rel = member.name.split("/", 1)[1] if "/" in member.name else ""
                    if member.isfile() and (rel == HEADER or rel in PLUGIN_SOURCES or rel == "COPYING"):
                        out = work / rel
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with tf.extractfile(member) as src, open(out, "wb") as f:
                            shutil.copyfileobj(src, f)
            if not (work / HEADER).is_file() or _find_plugin_source(work) is None:
                raise ToolchainError(f"{orig[0].name} holds no {HEADER} / insn.c")
            info = {"package": f"qemu={version}", "tarball": orig[0].name}
            (work / "source.json").write_text(json.dumps(info) + "\n")
            try:
                os.rename(work, dest)
            except OSError:
                if not (dest / HEADER).is_file():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _glib_flags() -> list[str]:
    if tools.which("pkg-config") is None:
        raise ToolchainError("pkg-config not found (needed for glib): apt-get install pkg-config libglib2.0-dev")
    proc = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError("glib headers not found (the insn plugin uses glib): apt-get install libglib2.0-dev")
    return proc.stdout.split()


def ensure_plugin(progress=None) -> Path:
    """Path of ``libinsn.so`` for the installed qemu, built on first use (never downloads)."""
    version = qemu_version()
    tree = find_source()
    src = _find_plugin_source(tree)
    h = hashlib.sha256(src.read_bytes() + (tree / HEADER).read_bytes() + repr(CFLAGS).encode())
    final = _cache_root() / f"{version}-{h.hexdigest()[:12]}"
    if (final / PLUGIN_NAME).is_file():
        return final / PLUGIN_NAME
    cc = tools.which("gcc") or tools.which("cc")
    if cc is None:
        raise ToolchainError("no C compiler (gcc) to build the qemu insn plugin: apt-get install gcc")
    flags = _glib_flags()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=_mkdir(_cache_root())))
    try:
        cmd = [cc, *CFLAGS, f"-I{tree / 'include/qemu'}", str(src), "-o", str(work / PLUGIN_NAME), *flags]
        if progress:
            progress(f"building qemu {version} insn plugin: {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(f"building the qemu insn plugin failed: {arm._tail(proc.stderr)}")
        info = {"qemu": version, "source": str(src), "cmd": cmd}
        (work / "plugin.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(work, final)
        except OSError:
            if not (final / PLUGIN_NAME).is_file():
                raise
        return final / PLUGIN_NAME
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_counted(plugin: Path, lib, inputs, params_path, qemu_cpu, bundle, warmup: int) -> int:
    with tempfile.TemporaryDirectory(prefix="optc-insn-") as tmp:
        log = Path(tmp) / "insn.log"
        args = ["-plugin", f"{plugin},inline=on", "-d", "plugin", "-D", str(log), "-E", "TVM_NUM_THREADS=1"]
        qemu = arm.QemuRun(cpu=qemu_cpu, bundle=bundle, qemu_args=tuple(args))
        arm.run_qemu(lib, inputs, params_path=params_path, qemu=qemu, warmup=warmup, repeat=1)
        text = log.read_text() if log.is_file() else ""
    m = re.search(r"insns:\s*(\d+)", text)
    if not m:
        raise ToolchainError(f"the qemu insn plugin printed no count: {text.strip()[:200]!r}")
    return int(m.group(1))


def count_instructions(lib, inputs, *, params_path=None, qemu_cpu: str = "cortex-a72", bundle=None,
                       plugin: Path | None = None) -> dict:
    """Executed aarch64 instructions of one steady-state inference (see the module docstring)."""
    plugin = plugin or ensure_plugin()
    base = _run_counted(plugin, lib, inputs, params_path, qemu_cpu, bundle, warmup=1)
    more = _run_counted(plugin, lib, inputs, params_path, qemu_cpu, bundle, warmup=1 + STEADY_CALLS)
    return {
        "count": round((more - base) / STEADY_CALLS),
        "method": METHOD,
        "how": f"qemu-aarch64 {qemu_version()} -cpu {qemu_cpu} -plugin {PLUGIN_NAME},inline=on, one guest "
               f"thread (TVM_NUM_THREADS=1): guest instructions of the runner with {1 + STEADY_CALLS} "
               f"warm-up inferences minus with 1, divided by {STEADY_CALLS} (steady state: the first "
               "calls' allocations excluded)",
        "process_total_with_2_inferences": base,
        "jitter": "about +-30 instructions (the runner prints a measured time)",
    }


def annotate_latency(package: Path, manifest: dict, args, latency: dict) -> None:
    """Add ``latency["instructions"]`` for a package built for an aarch64 target (when the
    plugin cannot be built here, say why instead: the compile goes on) and ``latency["kernels"]``
    (what the library's kernels are made of, :func:`arm.kernel_profile`), then fold both into a
    modeled latency (:func:`optc.latency_model.add_evidence`: the executed-instruction lower
    bound beside the roofline, the int8 kernels' actual dot-product use)."""
    from optc import latency_model
    from optc.errors import UsageError
    from optc.targets import get_target

    files = manifest["files_by_role"]
    try:
        latency["instructions"] = count_instructions(
            package / files["library"], args,
            params_path=package / files["params"] if "params" in files else None,
            qemu_cpu=manifest["target"].get("qemu_cpu") or "cortex-a72",
            bundle=(package / files["runner"]).parent if "runner" in files else None)
    except ToolchainError as err:
        latency["instructions"] = {"count": None, "method": "not available", "reason": str(err)}
    try:
        latency["kernels"] = arm.kernel_profile(package / files["library"])
    except ToolchainError as err:
        latency["kernels"] = {"available": False, "reason": str(err)}
    try:
        target = get_target(manifest["target"]["name"])
    except UsageError:  # a target this optc's table no longer has: leave the model as it was
        return
    latency_model.add_evidence(latency, target, kernels=latency["kernels"])


def _main(argv=None) -> int:  # pragma: no cover - setup helper
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m optc.backends.tvm.qemu_plugin",
                                description="build qemu's insn TCG plugin for the installed qemu-aarch64")
    p.add_argument("--fetch", action="store_true", help="first fetch the Debian qemu source (needs network)")
    a = p.parse_args(argv)
    try:
        if a.fetch:
            print(f"qemu-plugin: source in {fetch_source()}")
        print(ensure_plugin(progress=print))
    except ToolchainError as err:
        print(f"qemu-plugin: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())

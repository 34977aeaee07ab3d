"""Cycle-accurate RTL simulation of the generated Verilog (Icarus Verilog or Verilator).

The testbench (``rtl.testbench``) streams every input word as soon as the design takes it and
logs the clock cycle of each input acceptance and each output word. From that log:

* **latency**: cycles from an image's first input word accepted to its last output word
  (the first image, through an empty pipeline);
* **initiation interval (II)**: cycles between the last output words of consecutive images
  in steady state (the median over the images after the first two), i.e. throughput =
  clock / II.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from optc import tools
from optc.errors import ToolchainError

from .ir import FpgaGraph, pack_words, unpack_words
from .rtl import width

SIMULATORS = ("iverilog", "verilator")


def available(simulator: str) -> bool:
    return tools.which({"iverilog": "iverilog", "verilator": "verilator"}[simulator]) is not None and \
        (simulator != "iverilog" or tools.which("vvp") is not None)


def pick(simulator: str | None) -> str:
    """The simulator to use: as asked, else Verilator for big designs is the caller's choice;
    default Icarus, falling back to Verilator."""
    if simulator in (None, "auto"):
        for s in SIMULATORS:
            if available(s):
                return s
        raise ToolchainError("RTL simulation needs Icarus Verilog or Verilator: apt-get install iverilog verilator")
    if simulator not in SIMULATORS:
        raise ToolchainError(f"unknown simulator {simulator!r} (one of {', '.join(SIMULATORS)})")
    if not available(simulator):
        raise ToolchainError(f"{simulator} not found: apt-get install {simulator}")
    return simulator


def _run(cmd, cwd, what, timeout=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise ToolchainError(f"{what} failed: {(r.stderr or r.stdout).strip()[-2000:]}")
    return r


def build(rtl_dir: Path, work: Path, simulator: str, n_in: int, n_out: int, timeout_cycles: int) -> list[str]:
    """Compile the testbench + design; returns the command that runs the simulation."""
    work.mkdir(parents=True, exist_ok=True)
    params = {"NIN": n_in, "NOUT": n_out, "TIMEOUT": timeout_cycles}
    srcs = [str(rtl_dir / "model.v"), str(rtl_dir / "tb.v")]
    if simulator == "iverilog":
        out = work / "tb.vvp"
        _run([tools.which("iverilog") or "iverilog", "-g2005", "-o", str(out), "-s", "tb"]
             + [f"-Ptb.{k}={v}" for k, v in params.items()] + srcs, work, "iverilog")
        return [tools.which("vvp") or "vvp", "-n", str(out)]
    obj = work / "obj_dir"
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    _run([tools.which("verilator") or "verilator", "--binary", "--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style",
          "--top-module", "tb",
          "-O2", "--Mdir", str(obj), "-j", jobs, "-o", "Vtb"] + [f"-G{k}={v}" for k, v in params.items()] + srcs,
         work, "verilator")
    return [str(obj / "Vtb")]


def simulate(graph: FpgaGraph, rtl_dir: Path, x: np.ndarray, work: Path, simulator: str | None = None) -> dict:
    """Run values ``x`` (``[images, vecs, elems]``) through the RTL; returns the outputs (values),
    per-image latency and the II, both in cycles, and the simulator's wall time."""
    simulator = pick(simulator)
    images = x.shape[0]
    words = pack_words(x.reshape(-1, graph.in_elems), graph.in_dtype)
    iw = width(graph.in_elems, graph.in_dtype)
    work.mkdir(parents=True, exist_ok=True)
    (work / "rtl_in.hex").write_text("".join(f"{w:0{max(1, (iw + 3) // 4)}x}\n" for w in words))
    n_out = images * graph.out_vecs
    timeout = 200 + images * graph.ii_model() * 8 + 50 * len(graph.layers) * 4
    t0 = time.perf_counter()
    cmd = build(rtl_dir, work, simulator, len(words), n_out, timeout)
    t1 = time.perf_counter()
    log = work / "rtl_log.txt"
    log.unlink(missing_ok=True)
    _run(cmd, work, f"{simulator} simulation")
    t2 = time.perf_counter()
    ins, outs, timed_out = [], [], False
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[0] == "I":
            ins.append(int(parts[1]))
        elif parts[0] == "O":
            outs.append((int(parts[1]), int(parts[2], 16)))
        elif parts[0] == "T":
            timed_out = True
    if timed_out or len(outs) != n_out:
        raise ToolchainError(f"RTL simulation produced {len(outs)} of {n_out} output words"
                             + (f" before the {timeout}-cycle timeout" if timed_out else ""))
    y = unpack_words([w for _, w in outs], graph.out_elems, graph.out_dtype).reshape(images, graph.out_vecs, graph.out_elems)
    first_in = [ins[i * graph.in_vecs] for i in range(images)]
    last_out = [outs[(i + 1) * graph.out_vecs - 1][0] for i in range(images)]
    lat = [last_out[i] - first_in[i] for i in range(images)]
    gaps = [last_out[i] - last_out[i - 1] for i in range(1, images)]
    steady = gaps[1:] if len(gaps) > 2 else gaps
    return {
        "outputs": y,
        "latency_cycles": lat[0],
        "latency_cycles_all": lat,
        "ii_cycles": int(statistics.median(steady)) if steady else None,
        "ii_cycles_all": gaps,
        "images": images,
        "total_cycles": last_out[-1] - first_in[0],
        "simulator": simulator,
        "compile_seconds": round(t1 - t0, 3),
        "simulate_seconds": round(t2 - t1, 3),
    }

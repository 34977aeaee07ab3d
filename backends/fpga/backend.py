"""The FPGA backend: the Backend/Session protocol over the bit-serial dataflow path.

Stages (as every optc backend):

* legalize — :func:`extract.partition`: host head / FPGA pipeline / host tail, thresholds;
* lower — :mod:`folding`: PE x SIMD per layer for the throughput target;
* build/export — ``hls/`` (C++ + testbench, compiled: the C simulation binary), ``rtl/``
  (Verilog + testbench + P&R shell), bit-exactness of C and RTL simulation against the numpy
  reference, ``synth/`` (yosys + nextpnr reports), ``host/`` (head/tail ONNX), reports;
* run — :class:`FpgaSession`: host head in onnxruntime -> the compiled C simulation of the
  hardware (bit-exact with the RTL, checked at build) -> host tail, so optc's verify step
  compares the whole path with onnxruntime;
* measure — ``latency()``: RTL-simulated cycles at the post-route fmax.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from optc.backends import BuildResult, SessionBase
from optc.errors import VerificationError
from optc.frontend import TensorSpec
from optc.targets import Target

from . import config as fpga_config
from . import extract, folding, hls, ir, report, rtl, sim, synth

HOST_SPEC = "host/spec.json"
HOST_ARRAYS = "host/spec.npz"


def device_for(target: Target, cfg: fpga_config.FpgaConfig) -> folding.Device:
    name = cfg.part or (target.tvm or {}).get("device") or "LFE5U-85F-8BG381"
    try:
        return folding.DEVICES[name]
    except KeyError:
        from optc.errors import UsageError

        raise UsageError(f"unknown FPGA part {name!r}; parts: {', '.join(folding.DEVICES)}") from None


def _all_onnx_ops() -> set[str]:
    return {s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")}


# ---------------------------------------------------------------------------------------------
# host spec: what the session needs to pack inputs and unpack outputs


def save_host_spec(p: extract.Partition, pkg: Path) -> None:
    (pkg / "host").mkdir(exist_ok=True)
    d = p.decode
    spec = {
        "head_output": p.head_output,
        "in_enc": p.in_enc.to_json() | {"kind": p.in_enc.dtype.kind, "bits": p.in_enc.dtype.bits},
        "in_layout": {"kind": p.in_layout.kind, "c": p.in_layout.c, "h": p.in_layout.h, "w": p.in_layout.w},
        "graph": {"in": [p.graph.in_vecs, p.graph.in_elems, p.graph.in_dtype.kind, p.graph.in_dtype.bits],
                  "out": [p.graph.out_vecs, p.graph.out_elems, p.graph.out_dtype.kind, p.graph.out_dtype.bits]},
        "decode": {"tensor": d.tensor, "shape": list(d.shape), "onnx_dtype": d.onnx_dtype, "kind": d.kind,
                   "layout": {"kind": d.layout.kind, "c": d.layout.c, "h": d.layout.h, "w": d.layout.w},
                   "enc": ({"kind": d.enc.dtype.kind, "bits": d.enc.dtype.bits, "scale": d.enc.scale, "zp": d.enc.zp}
                           if d.enc else None),
                   "xnor_mw": d.xnor_mw},
        "head": "host/head.onnx" if p.head is not None else None,
        "tail": "host/tail.onnx" if p.tail is not None else None,
    }
    arrays = {"in_perm": p.in_layout.perm if p.in_layout.perm is not None else np.zeros(0, np.int64),
              "out_perm": d.layout.perm if d.layout.perm is not None else np.zeros(0, np.int64)}
    for k in ("k", "offset", "bias"):
        if getattr(d, k) is not None:
            arrays[k] = np.asarray(getattr(d, k))
    (pkg / HOST_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    np.savez(pkg / HOST_ARRAYS, **arrays)
    if p.head is not None:
        onnx.save(p.head, str(pkg / "host/head.onnx"))
    if p.tail is not None:
        onnx.save(p.tail, str(pkg / "host/tail.onnx"))


class _HostIO:
    """Packing/unpacking rebuilt from the saved spec (a light :class:`extract.Partition`)."""

    def __init__(self, pkg: Path):
        spec = json.loads((pkg / HOST_SPEC).read_text())
        arr = np.load(pkg / HOST_ARRAYS)
        ie = spec["in_enc"]
        il = spec["in_layout"]
        dd = spec["decode"]
        dl = dd["layout"]
        enc = dd["enc"]
        self.part = extract.Partition(
            graph=None, head=None, head_output=spec["head_output"],
            in_enc=extract.Enc(ir.DType(ie["kind"], ie["bits"]), ie["scale"], ie["zp"]),
            in_layout=extract.Layout(il["kind"], il["c"], il["h"], il["w"], arr["in_perm"] if il["kind"] == "vec" else None),
            in_shape=(), tail=None,
            decode=extract.OutputDecode(
                dd["tensor"], tuple(dd["shape"]), dd["onnx_dtype"],
                extract.Layout(dl["kind"], dl["c"], dl["h"], dl["w"], arr["out_perm"] if dl["kind"] == "vec" else None),
                dd["kind"], enc=extract.Enc(ir.DType(enc["kind"], enc["bits"]), enc["scale"], enc["zp"]) if enc else None,
                k=arr["k"] if "k" in arr else None, offset=arr["offset"] if "offset" in arr else None,
                bias=arr["bias"] if "bias" in arr else None, xnor_mw=dd["xnor_mw"]))
        gi, go = spec["graph"]["in"], spec["graph"]["out"]
        self.in_vecs, self.in_elems, self.in_dtype = gi[0], gi[1], ir.DType(gi[2], gi[3])
        self.out_vecs, self.out_elems, self.out_dtype = go[0], go[1], ir.DType(go[2], go[3])
        self.head = pkg / spec["head"] if spec["head"] else None
        self.tail = pkg / spec["tail"] if spec["tail"] else None


def _ort(path_or_model):
    from optc import verify

    return verify.ort_session(path_or_model)


class FpgaSession(SessionBase):
    """Runs a package: host head (onnxruntime) -> C simulation of the FPGA pipeline -> host tail."""

    timing = "C simulation"  # optc bench: these times are not the FPGA's latency
    timing_how = ("wall clock of the bit-exact C simulation of the hardware on this machine "
                  "(not FPGA latency: see latency, RTL cycles at the placed clock)")

    def __init__(self, pkg_dir: Path, manifest: dict):
        self.pkg = Path(pkg_dir)
        files = manifest["files_by_role"]
        self.binary = self.pkg / files["csim"]
        self.io = _HostIO(self.pkg)
        self._head = _ort(self.io.head) if self.io.head else None
        self._tail = _ort(self.io.tail) if self.io.tail else None
        self._head_inputs = [i.name for i in self._head.get_inputs()] if self._head else []
        self._in_names = [d["name"] for d in manifest["inputs"]]
        rp = self.pkg / files.get("fpga_report", "fpga_report.json")
        self._report = json.loads(rp.read_text()) if rp.exists() else None

    def hardware(self, x: np.ndarray) -> np.ndarray:
        """Hardware values ``[images, vecs, elems]`` through the compiled C simulation."""
        words = ir.pack_words(x.reshape(-1, self.io.in_elems), self.io.in_dtype)
        with tempfile.TemporaryDirectory(prefix="optc-csim-") as tmp:
            out = hls.run(self.binary, words, hls.stream_width(self.io.in_elems, self.io.in_dtype), Path(tmp))
        y = ir.unpack_words(out, self.io.out_elems, self.io.out_dtype)
        return y.reshape(x.shape[0], self.io.out_vecs, self.io.out_elems)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self._in_names, inputs))
        boundary = self._head.run([self.io.part.head_output], {k: feeds[k] for k in self._head_inputs})[0] \
            if self._head else feeds[self.io.part.head_output]
        try:
            x = self.io.part.encode_input(boundary)
        except ValueError as err:
            raise VerificationError(str(err)) from None
        y = self.hardware(x)
        t = self.io.part.decode_output(y)
        if self._tail is None:
            return [t]
        return self._tail.run(None, {self.io.part.decode.tensor: t})

    def time(self, inputs: list[np.ndarray], warmup: int, repeat: int) -> list[float]:
        return self._wall_clock_times(inputs, warmup, repeat)

    def report_latency(self, args: list[np.ndarray], ctx) -> dict:
        return self.latency()

    def latency(self) -> dict:
        """report.json's latency: RTL-simulated cycles at the post-route clock."""
        rep = self._report or {}
        perf = rep.get("performance", {})
        if not perf.get("latency_cycles") or not perf.get("clock_mhz"):
            return {"method": "not measured", "reason": perf.get("why_not", "RTL simulation or clock not available")}
        return {
            "method": perf["method"],
            "median_ms": perf["latency_cycles"] / (perf["clock_mhz"] * 1e6) * 1e3,
            "how": perf["how"],
            "latency_cycles": perf["latency_cycles"],
            "ii_cycles": perf["ii_cycles"],
            "clock_mhz": perf["clock_mhz"],
            "clock_source": perf["clock_source"],
            "throughput_inferences_per_s": perf["throughput_inferences_per_s"],
            "host_parts": "host head/tail (onnxruntime) not included",
            "fpga": {k: rep.get(k) for k in ("device", "fits", "resources", "energy")} | {
                "details": "fpga_report.json, fpga_report.md"},
        }


# ---------------------------------------------------------------------------------------------
# build


def _check_equal(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    if got.shape != ref.shape or not np.array_equal(got, ref):
        bad = np.argwhere(got != ref)[:3].tolist() if got.shape == ref.shape else f"shape {got.shape} != {ref.shape}"
        raise VerificationError(f"{name} differs from the numpy reference of the FPGA pipeline (first differences at {bad})")


def build_hardware(graph: ir.FpgaGraph, out: Path, cfg: fpga_config.FpgaConfig, device: folding.Device,
                   progress=None, title: str = "optc FPGA pipeline") -> dict:
    """Emit HLS and RTL for a folded graph, simulate both against the numpy reference, synthesize
    and place; returns the report sections (performance, resources, checks)."""
    rep: dict = {}
    # Each stage is a progress step; inside `optc compile`, whose build step passes no progress
    # object to the backend, a sub-step of that step (sub-stage lines with their times).
    from optc.progress import active_step

    outer = active_step()
    if progress is not None:
        step = progress.step
    elif outer is not None:
        step = outer.substep
    else:
        step = lambda text: _NullStep()  # noqa: E731
    hls_dir, rtl_dir = out / "hls", out / "rtl"
    hls.write(hls.emit(graph, title), hls_dir)
    files = rtl.emit(graph, title) | {"shell.v": rtl.shell(graph)}
    rtl_dir.mkdir(parents=True, exist_ok=True)
    for k, v in files.items():
        (rtl_dir / k).write_text(v)
    rng = np.random.default_rng(cfg.seed)
    x = rng.choice(graph.in_dtype.values(), size=(max(3, cfg.sim_images), graph.in_vecs, graph.in_elems))
    ref = ir.execute(graph, x)
    work = Path(tempfile.mkdtemp(prefix="optc-fpga-"))
    try:
        with step("C simulation (g++)"):
            t0 = time.perf_counter()
            binary = hls.compile(hls_dir)
            t1 = time.perf_counter()
            y = hls.csim(graph, x, binary, work / "csim")
            _check_equal("C simulation", y, ref)
            rep["csim"] = {"bit_exact": True, "images": len(x), "compile_seconds": round(t1 - t0, 2),
                           "inputs": f"numpy default_rng({cfg.seed}) uniform over the input type's values"}
        if cfg.rtl_sim:
            with step("RTL simulation"):
                r = sim.simulate(graph, rtl_dir, x, work / "rtl", cfg.simulator)
                _check_equal(f"RTL simulation ({r['simulator']})", r.pop("outputs"), ref)
                rep["rtl_sim"] = {"bit_exact": True} | r
        if cfg.synth:
            with step("synthesis (yosys synth_ecp5)") as st:
                s = synth.synthesize(rtl_dir, out / "synth", timeout=cfg.timeout_s, step=st)
                s.pop("json", None)
                rep["synthesis"] = s
            if cfg.pnr:
                with step(f"place and route (nextpnr-ecp5, {device.name})") as st:
                    rep["pnr"] = synth.place_and_route(out / "synth", device, freq_mhz=cfg.pnr_freq_mhz,
                                                       seed=cfg.seed, timeout=cfg.timeout_s, step=st)
            (out / "synth" / "design.json").unlink(missing_ok=True)  # the netlist is large; the reports stay
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rep


class _NullStep:
    def __enter__(self):
        return None  # synth's functions take step=None as "report nothing"

    def __exit__(self, *a):
        return False


def assemble_report(graph: ir.FpgaGraph, part: extract.Partition | None, device: folding.Device,
                    cfg: fpga_config.FpgaConfig, choice: dict, hw: dict) -> dict:
    layers = []
    syn_mods = (hw.get("synthesis") or {}).get("modules", {})
    for layer in graph.layers:
        d = layer.to_json() | {"estimate": folding.estimate(layer)}
        if layer.name in syn_mods:
            d["synth"] = syn_mods[layer.name]
        layers.append(d)
    rtl_sim = hw.get("rtl_sim") or {}
    pnr = hw.get("pnr") or {}
    ii = rtl_sim.get("ii_cycles") or graph.ii_model()
    lat = rtl_sim.get("latency_cycles")
    if pnr.get("fmax_mhz"):
        clock, source = pnr["fmax_mhz"], f"nextpnr-ecp5 post-route fmax on {device.name} (seed {pnr.get('seed')})"
        method = "simulated cycles at P&R fmax"
    else:
        clock, source = cfg.clock_mhz, "assumed (no place-and-route run)"
        method = "simulated cycles at an assumed clock"
    perf = {"method": method, "clock_mhz": clock, "clock_source": source, "ii_cycles": ii,
            "ii_source": "RTL simulation (steady state)" if rtl_sim else "modeled (slowest layer)",
            "latency_cycles": lat,
            "latency_us": lat / clock if lat else None,
            "throughput_inferences_per_s": clock * 1e6 / ii if ii else None,
            "how": (f"cycle-accurate RTL simulation ({rtl_sim.get('simulator', '-')}) of {rtl_sim.get('images', 0)} images streamed "
                    f"back to back: latency = first input word accepted to last output word, II = steady-state "
                    f"cycles between images; time = cycles / {clock:g} MHz ({source})")}
    if lat is None:
        perf["why_not"] = "RTL simulation not run"
    resources = None
    if pnr.get("fits"):
        resources = {"source": "nextpnr placement", "luts": pnr["luts"], "ffs": pnr["ffs"], "brams": pnr["brams"],
                     "dsps": pnr["dsps"]}
    elif hw.get("synthesis"):
        t = hw["synthesis"]["total"]
        resources = {"source": "yosys synth_ecp5 (not placed)", "luts": t["lut4_equiv"], "ffs": t["ff"],
                     "brams": t["bram"], "dsps": t["dsp"]}
    if resources is not None:
        shell_cells = syn_mods.get("optc_pnr_shell")
        if shell_cells:
            resources["of_which_io_shell_and_fifos"] = {"luts": shell_cells["lut4_equiv"], "ffs": shell_cells["ff"]}
    est = folding.total(graph)
    r_for_energy = resources or {"luts": est["lut"], "ffs": est["ff"], "brams": est["bram"]}
    macs = sum(m.ops_per_image() for m in graph.mvaus())
    bram_reads = sum(m.cycles() * (1 if folding.estimate(m)["bram"] else 0) * folding.estimate(m)["bram"] for m in graph.mvaus())
    rep = {
        "device": device.to_json(),
        "config": cfg.to_json(),
        "fits": pnr.get("fits") if pnr else (est["lut"] <= device.luts and est["bram"] <= device.brams),
        "fits_source": "nextpnr placement" if pnr else "resource estimate (no place-and-route run)",
        "performance": perf,
        "resources": resources or {"source": "estimate", "luts": est["lut"], "ffs": est["ff"], "brams": est["bram"]},
        "energy": report.energy(r_for_energy["luts"], r_for_energy["ffs"], r_for_energy.get("brams", 0), ii, clock, macs,
                                bram_reads),
        "folding": {"rule": choice.get("rule"), "target_ii": choice.get("target_ii"), "layers": layers},
        "host": part.to_json() if part is not None else None,
        "binary_macs_per_inference": macs,
    }
    for k in ("csim", "rtl_sim", "synthesis", "pnr"):
        if k in hw:
            rep[k] = hw[k]
    if cfg.pareto:
        chosen = {m.name: [m.pe, m.simd] for m in graph.mvaus()}
        pts = folding.pareto(graph)
        for p in pts:
            p["chosen"] = p["folding"] == chosen
        rep["pareto"] = pts
    return rep


class FpgaBackend:
    """The FPGA backend; ``config`` (an :class:`FpgaConfig`, default: its defaults) says what to
    build and check (folding, simulation, synthesis, place-and-route)."""

    name = "fpga"
    takes_config = True

    def __init__(self, config: fpga_config.FpgaConfig | None = None):
        self.config = config if config is not None else fpga_config.FpgaConfig()

    def supported_ops(self) -> set[str]:
        # the host parts run in onnxruntime: any standard op; what the FPGA takes is decided in build
        return _all_onnx_ops()

    def target_facts(self, target: Target) -> dict:
        return {}  # folding (PE x SIMD) is chosen per layer in build

    def check_environment(self, target: Target) -> None:
        cfg = self.config
        hls.compiler()
        if cfg.rtl_sim:
            sim.pick(cfg.simulator)
        if cfg.synth:
            synth.check_tools(cfg.pnr)

    def build(self, model: onnx.ModelProto, inputs: list[TensorSpec], target: Target, out_dir: Path, *,
              params: str, tuning=None, progress=None) -> BuildResult:
        cfg = self.config
        device = device_for(target, cfg)
        part = extract.partition(model)
        graph = part.graph
        choice = folding.choose(graph, device, fps=cfg.fps, clock_mhz=cfg.clock_mhz, lut_fraction=cfg.lut_fraction)
        if cfg.folding:
            folding.apply(graph, {k: tuple(v) for k, v in cfg.folding.items()})
            choice = {"rule": "explicit folding from the FPGA config", "target_ii": graph.ii_model()}
        hw = build_hardware(graph, out_dir, cfg, device, progress)
        rep = assemble_report(graph, part, device, cfg, choice, hw)
        save_host_spec(part, out_dir)
        (out_dir / "fpga_report.json").write_text(json.dumps(rep, indent=2, default=_json) + "\n")
        (out_dir / "fpga_report.md").write_text(report.markdown(rep, Path(getattr(model.graph, "name", "") or "model").name))
        (out_dir / "hls" / "csim_in.hex").unlink(missing_ok=True)
        files = {"library": "rtl/model.v", "csim": "hls/csim", "hls": "hls/model.cpp", "rtl": "rtl/model.v",
                 "fpga_report": "fpga_report.json", "fpga_report_md": "fpga_report.md", "host_spec": HOST_SPEC}
        return BuildResult(files, {"tvm_target": None, "fpga": {"device": device.name,
                                                                   "ii_cycles": rep["performance"]["ii_cycles"]}})

    def load(self, pkg_dir: Path, manifest: dict) -> FpgaSession:
        return FpgaSession(pkg_dir, manifest)


def _json(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)

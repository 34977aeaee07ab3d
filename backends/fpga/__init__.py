"""FPGA-oriented bit-serial path: binarized / low-bit ONNX -> dataflow pipeline of integer
layers (FINN-style MVAU / sliding windows / pooling) -> HLS C++ and Verilog, simulated bit-exact,
synthesized and placed for Lattice ECP5 with yosys + nextpnr.

Modules: ``extract`` (ONNX -> host head / FPGA IR / host tail, thresholds), ``ir`` (layer IR and
its numpy reference), ``folding`` (PE x SIMD for a throughput target, resource model, Pareto),
``hls`` (C++ + C simulation), ``rtl`` (Verilog), ``sim`` (Icarus / Verilator), ``synth`` (yosys,
nextpnr), ``report`` (energy model, markdown), ``backend`` (the optc Backend/Session).

Nothing here imports a simulator or synthesis tool at import time; they run as subprocesses.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["compile", "pareto"]


def compile(model: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, target: str = "fpga",
            fps: float | None = None, config: Any = None, **kwargs) -> dict:
    """``optc.compile`` for an FPGA target with FPGA options: ``fps`` (throughput target) and
    ``config`` (a :class:`~optc.backends.fpga.config.FpgaConfig`, a dict of its fields, or a
    path to a JSON file of them). Other keyword arguments (``passes``, ``input_shapes``,
    ``inputs``, ``options``, ``progress``) go to :func:`optc.compile`."""
    from optc import api

    from optc.stages import CompileOptions

    from .config import FpgaConfig

    cfg = config if isinstance(config, FpgaConfig) else (
        FpgaConfig.from_dict(config) if isinstance(config, dict) else FpgaConfig.load(config) if config else FpgaConfig())
    if fps is not None:
        cfg.fps = fps
    options = dataclasses.replace(kwargs.pop("options", None) or CompileOptions(), backend=cfg)
    return api.compile(model, target, out_dir, options=options, **kwargs)


def pareto(model: str | os.PathLike, *, target: str = "fpga", input_shapes=None, synth: bool = False,
           pnr: bool = False, max_points: int = 8, config: Any = None, progress=None) -> dict:
    """Folding choices for ``model`` from fastest to smallest: modeled resources for each, and
    with ``synth`` (``pnr``) the yosys (nextpnr) figures and, with ``pnr``, the throughput at
    each point's own fmax. Returns ``{"device", "points": [...]}``."""
    import tempfile
    from pathlib import Path

    import onnx_ir as ir_

    from optc import DEFAULT_PIPELINE, frontend, pipeline
    from optc.targets import get_target

    from . import extract, folding
    from . import synth as synth_
    from .backend import device_for
    from .config import FpgaConfig
    from . import rtl

    cfg = config if isinstance(config, FpgaConfig) else (FpgaConfig.from_dict(config) if config else FpgaConfig())
    tgt = get_target(target)
    device = device_for(tgt, cfg)
    proto = frontend.load_model(model)
    bound, _ = frontend.bind_input_shapes(proto, dict(input_shapes or {}))
    irm, _ = pipeline.run_pipeline(ir_.serde.deserialize_model(bound), pipeline.parse_pipeline(DEFAULT_PIPELINE))
    part = extract.partition(ir_.serde.serialize_model(irm))
    graph = part.graph
    points = folding.pareto(graph, max_points=max_points)
    if synth or pnr:
        for p in points:
            folding.apply(graph, {k: tuple(v) for k, v in p["folding"].items()})
            with tempfile.TemporaryDirectory(prefix="optc-pareto-") as tmp:
                d = Path(tmp)
                (d / "model.v").write_text(rtl.emit(graph)["model.v"])
                (d / "shell.v").write_text(rtl.shell(graph))
                ctx = progress.step(f"synthesize II={p['ii_cycles']}") if progress else _null()
                with ctx as st:
                    s = synth_.synthesize(d, d / "syn", timeout=cfg.timeout_s, step=st)
                    p["synth"] = {"luts": s["total"]["lut4_equiv"], "ffs": s["total"]["ff"], "brams": s["total"]["bram"],
                                  "seconds": s["seconds"]}
                if pnr:
                    ctx = progress.step(f"place and route II={p['ii_cycles']}") if progress else _null()
                    with ctx as st:
                        r = synth_.place_and_route(d / "syn", device, freq_mhz=cfg.pnr_freq_mhz, seed=cfg.seed,
                                                   timeout=cfg.timeout_s, step=st)
                    p["pnr"] = {k: r.get(k) for k in ("fits", "fmax_mhz", "luts", "ffs", "brams", "seconds")}
                    if r.get("fmax_mhz"):
                        p["throughput_inferences_per_s"] = r["fmax_mhz"] * 1e6 / p["ii_cycles"]
    return {"model": str(model), "device": device.to_json(), "points": points,
            "host": part.to_json()}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False

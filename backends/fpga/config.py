"""Options of an FPGA build: throughput target, part, folding, which stages to run.

``optc compile MODEL --target fpga`` uses the defaults (the fastest folding whose estimate
fits the part, C and RTL simulation, synthesis and place-and-route). ``optc fpga MODEL --fps N
[--fpga-config fpga.json]`` (``optc.cli_fpga``) and :func:`optc.backends.fpga.compile` set them
for one compile (``CompileOptions.backend``, the FPGA backend's constructor argument); a JSON config file holds the same keys as
:class:`FpgaConfig`, e.g.::

    {"fps": 2e6, "clock_mhz": 100, "folding": {"mvau1": [8, 64]}, "pnr": true, "seed": 1}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from optc.errors import UsageError


@dataclass
class FpgaConfig:
    fps: float | None = None  # throughput target (inferences/s); None: fastest folding that fits
    clock_mhz: float = 100.0  # clock assumed when folding for ``fps`` (before place-and-route)
    part: str | None = None  # default: the target's device
    folding: dict = field(default_factory=dict)  # explicit {layer: [pe, simd]} (overrides the choice)
    lut_fraction: float = 0.5  # "fits": estimate within this fraction of the LUTs (routing margin, see folding)
    csim: bool = True  # compile the HLS C++ and check it bit-exact (the session runs it anyway)
    rtl_sim: bool = True  # cycle-accurate RTL simulation (latency, II, bit-exactness)
    simulator: str = "auto"  # iverilog | verilator | auto
    sim_images: int = 6  # images streamed through the simulations at build time
    synth: bool = True  # yosys synth_ecp5
    pnr: bool = True  # nextpnr-ecp5 place-and-route (fmax, fits)
    pnr_freq_mhz: float = 200.0  # nextpnr's target clock (the achieved fmax is reported)
    seed: int = 1
    timeout_s: int = 3600  # per tool run
    pareto: bool = True  # modeled Pareto table over foldings in the report

    @classmethod
    def from_dict(cls, d: dict) -> "FpgaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise UsageError(f"unknown FPGA option(s) {', '.join(bad)}; options: {', '.join(sorted(names))}")
        cfg = cls(**d)
        if cfg.fps is not None and not cfg.fps > 0:
            raise UsageError(f"fps must be positive, not {cfg.fps!r}")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "FpgaConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{path}: cannot read the FPGA config ({err})") from None
        if not isinstance(d, dict):
            raise UsageError(f"{path}: the FPGA config must be a JSON object")
        return cls.from_dict(d)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

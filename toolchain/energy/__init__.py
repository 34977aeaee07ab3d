"""Energy per inference: measured where the hardware exposes a counter, else modeled.

One module per role:

* :mod:`.model`: modeled energy from operation counts by type (Horowitz's 45 nm per-operation
  energies, ISSCC 2014): :func:`model_energy`, :func:`model_energy_from_summary`;
* :mod:`.meters`: hardware meters (RAPL for this host's CPU, NVML for NVIDIA GPUs, table
  :data:`METERS` by TVM target kind), the measured loop, and the estimate from a user-supplied
  power figure;
* :mod:`.report`: the report's ``energy`` section, i.e. which figure is the headline
  (:func:`report_section`): measured, else estimated from supplied power, else modeled.

Energy figures are millijoules per inference (mJ). W x ms = mJ.
"""

from . import meters, model, report
from .meters import (METERS, POWERCAP_ROOT, Measurement, NvmlMeter, RaplMeter, RaplZone, measure_loop,
                     measured_section, rapl_delta_uj, rapl_zones, supplied_power_section)
from .model import (DRAM_PJ_PER_BYTE, HOROWITZ_PJ, HOROWITZ_SOURCE, MAC_PJ, MODEL_NOTES, OTHER_OP_PJ, QUANT_PJ,
                    REQUANT_PJ, SRAM_LEVELS, model_energy, model_energy_from_summary)
from .report import PROBES, ArtifactRun, EnergyOptions, report_section

__all__ = [
    "meters", "model", "report",
    "METERS", "POWERCAP_ROOT", "Measurement", "NvmlMeter", "RaplMeter", "RaplZone", "measure_loop",
    "measured_section", "rapl_delta_uj", "rapl_zones", "supplied_power_section",
    "DRAM_PJ_PER_BYTE", "HOROWITZ_PJ", "HOROWITZ_SOURCE", "MAC_PJ", "MODEL_NOTES", "OTHER_OP_PJ", "QUANT_PJ",
    "REQUANT_PJ", "SRAM_LEVELS", "model_energy", "model_energy_from_summary",
    "PROBES", "ArtifactRun", "EnergyOptions", "report_section",
]  # fmt: skip

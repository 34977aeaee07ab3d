"""Modeled latency: lower bounds for targets whose code this machine cannot time (ARM run under
qemu, GPU targets built where no GPU is), from the evidence the package has.

Two lower bounds, each labelled with what it rests on:

* **roofline** (:func:`roofline`, always): the sum over layers of max(compute / peak rate,
  bytes / DRAM bandwidth). Operation counts and bytes come from :mod:`optc.analysis` (optc's
  integer and binary layers counted through surrogates, so an int8 model has its float original's
  MACs). The peak rate is that of the kernel that runs the layer on this device
  (:func:`rates`; figures in the target table, :class:`optc.targets.Peak`):

  - fp32: ``fp32_flops_per_cycle`` (FMA lanes x 2) x clock x cores;
  - int8 ``IntConv2d``/``IntDense`` (optc's kernels, ``backends/tvm/int8.py``; the ``ai.optc``
    ops whose registry entry says so, ``Cost.dot_product`` in :mod:`optc.ops`): the dot-product
    rate (``int8_dot_macs_per_cycle``: ``sdot``) where the target's code has it (``+dotprod`` in
    the TVM target's ``mattr``, and the library's disassembly does not say otherwise), else the
    int32 widening multiply-accumulate fallback (``int32_macs_per_cycle``), or where the target
    lists it the int8 widening-multiply rate of the kernel for AArch64 cores without ``sdot``
    (``int8_widening_macs_per_cycle``: ``smull`` int8 -> int16 + ``sadalp`` into int32). A
    Cortex-A72 has no ``sdot``: its int8 layers run at 8 MACs/cycle, 2x its fp32 FMA lane rate,
    not the 4x that ``sdot`` gives an A76;
  - int8 depthwise layers and ONNX integer ops (ConvInteger, MatMulInteger): the int32 rate;
  - binary layers: 1-bit operations (MACs x weight bits x activation bits) at
    ``binary_ops_per_cycle``;
  - where the device lists no integer figure (GPUs: integer layers there are QDQ computed in
    float), integer layers count at the fp32 rate; binary layers at their memory traffic only.

* **executed instructions** (:func:`instruction_bound`, where the package's instructions were
  counted: the qemu ``insn`` plugin, ``latency.instructions``): instructions of one inference /
  (``issue_width`` x clock x cores). ``issue_width`` is the core's decode width, an upper bound
  on instructions per cycle; spreading the count over every core assumes perfect parallel
  speed-up (the count is one thread's), so this is a lower bound too.

The reported ``median_ms`` is the larger (tighter) of the two, ``modeled_from`` says which; when
they differ by more than :data:`DISAGREEMENT` x, ``consistency`` says so and why it may be. Both
are lower bounds: untuned code on a real board is slower.
"""

from __future__ import annotations

from typing import Any

DISAGREEMENT = 2.0  # ratio of the two lower bounds above which the report carries a consistency note
LABEL_ROOFLINE = "modeled: roofline lower bound (operation counts, published peaks)"
LABEL_INSTRUCTIONS = "modeled: executed-instruction lower bound (qemu insn plugin count, issue width, clock)"


def _get(peak: Any, key: str, default=0):
    return (peak.get(key, default) if isinstance(peak, dict) else getattr(peak, key, default)) or default


def has_dot_product(tvm: dict | None) -> bool:
    """Whether code built for this TVM target dict uses the int8 dot-product instruction: an
    AArch64 target with ``+dotprod`` (as ``optc.backends.tvm.int8.isa_of`` decides)."""
    tvm = tvm or {}
    return str(tvm.get("mtriple", "")).startswith("aarch64") and "+dotprod" in list(tvm.get("mattr") or [])


def rates(peak, tvm: dict | None = None, *, dot_product: bool | None = None) -> dict[str, dict]:
    """Peak rates by kernel class, all cores: ``{"fp32" | "int8" | "int8-int32" | "binary":
    {"per_s": operations per second, "unit": "FLOP" | "MAC" | "bit-op", "kernel": what runs}}``.
    ``dot_product`` overrides what the target dict says (evidence from the built library)."""
    hz = _get(peak, "clock_ghz") * 1e9 * _get(peak, "cores", 1)
    fp32 = _get(peak, "fp32_flops_per_cycle") * hz
    out = {"fp32": {"per_s": fp32, "unit": "FLOP",
                    "kernel": f"fp32 FMA, {_get(peak, 'fp32_flops_per_cycle')} FLOP/cycle/core"}}
    int32 = _get(peak, "int32_macs_per_cycle")
    dot = _get(peak, "int8_dot_macs_per_cycle")
    use_dot = has_dot_product(tvm) if dot_product is None else dot_product
    if int32:
        out["int8-int32"] = {"per_s": int32 * hz, "unit": "MAC", "kernel": f"int32 widening multiply-accumulate, "
                                                                          f"{int32:g} MACs/cycle/core (no dot product)"}
    else:
        out["int8-int32"] = {"per_s": fp32 / 2, "unit": "MAC",
                             "kernel": "no integer figure for this device: the fp32 FMA rate"}
    widening = _get(peak, "int8_widening_macs_per_cycle")
    if use_dot and dot:
        out["int8"] = {"per_s": dot * hz, "unit": "MAC", "kernel": f"int8 dot product (sdot), {dot:g} MACs/cycle/core"}
    elif widening:
        out["int8"] = {"per_s": widening * hz, "unit": "MAC", "kernel": "int8 widening multiply (smull) + pairwise "
                       f"accumulate (sadalp), {widening:g} MACs/cycle/core (no dot product)"}
    else:
        out["int8"] = dict(out["int8-int32"])
        if dot and not use_dot:
            out["int8"]["kernel"] += "; the core has sdot but this code does not use it"
    binary = _get(peak, "binary_ops_per_cycle")
    out["binary"] = ({"per_s": binary * hz, "unit": "bit-op",
                      "kernel": f"1-bit XOR/AND + popcount, {binary:g} bit-ops/cycle/core at best"} if binary else
                     {"per_s": 0.0, "unit": "bit-op",
                      "kernel": "no binary figure for this device: memory traffic only"})
    return out


def _uses_dot_product(op: str | None) -> bool:
    """Whether optc's kernel for ``ai.optc`` op ``op`` uses the int8 dot product where the core
    has one (its registry entry's ``Cost.dot_product``)."""
    from . import ops

    op_def = ops.get(op) if op else None
    return op_def is not None and op_def.cost.dot_product


def _kernel_class(layer: dict) -> str:
    arith = layer.get("arith", "fp32")
    if arith == "int8":
        return "int8" if _uses_dot_product(layer.get("op")) and not layer.get("depthwise") else "int8-int32"
    return "binary" if arith == "binary" else "fp32"


def roofline(layers: list[dict], peak, tvm: dict | None = None, *, dot_product: bool | None = None) -> dict:
    """The roofline lower bound over ``layers`` (:func:`optc.analysis.summarize`'s ``layers``, or
    a previous result's ``layers``): ``{"ms", "layers": [{name, op, arith, kernel, ms, bound,
    macs, flops, bytes, ...}], "rates", "how"}``."""
    r = rates(peak, tvm, dot_product=dot_product)
    bw = _get(peak, "mem_gbps") * 1e9
    out_layers = []
    for d in layers:
        cls = _kernel_class(d)
        macs, flops = int(d.get("macs", 0)), int(d.get("flops", 0))
        nbytes = int(d["bytes"]) if "bytes" in d else int(d.get("bytes_in", 0)) + int(d.get("bytes_out", 0))
        other = max(0, flops - 2 * macs) / r["fp32"]["per_s"]  # bias adds, activations, pooling
        if cls == "fp32":
            compute = flops / r["fp32"]["per_s"]
        elif cls == "binary":
            bit_ops = int(d.get("bit_ops", 0)) or macs
            compute = (bit_ops / r["binary"]["per_s"] if r["binary"]["per_s"] else 0.0) + other
        else:
            compute = macs / r[cls]["per_s"] + other
        memory = nbytes / bw if bw else 0.0
        entry = {"name": d["name"], "op": d["op"], "arith": d.get("arith", "fp32"), "kernel": cls,
                 "ms": max(compute, memory) * 1e3, "bound": "compute" if compute >= memory else "memory",
                 "macs": macs, "flops": flops, "bytes": nbytes}
        if d.get("depthwise"):
            entry["depthwise"] = True
        if d.get("bit_ops"):
            entry["bit_ops"] = int(d["bit_ops"])
        out_layers.append(entry)
    used = {e["kernel"] for e in out_layers if e["macs"] or e["kernel"] == "fp32"}
    how = ("sum over layers of max(compute at the peak rate of the kernel that runs the layer, bytes / "
           f"{_get(peak, 'mem_gbps'):g} GB/s DRAM bandwidth); peak rates, {_get(peak, 'cores', 1)} cores at "
           f"{_get(peak, 'clock_ghz'):g} GHz: " + "; ".join(f"{k}: {r[k]['per_s'] / 1e9:.1f} G{r[k]['unit']}/s "
                                                          f"({r[k]['kernel']})" for k in r if k in used))
    return {"ms": sum(e["ms"] for e in out_layers), "layers": out_layers,
            "rates": {k: {"g_per_s": v["per_s"] / 1e9, "unit": v["unit"], "kernel": v["kernel"]}
                      for k, v in r.items() if k in used},
            "how": how}


def modeled_latency(target, summary: dict) -> dict:
    """The report's ``latency`` for a target whose latency is modeled here: the roofline lower
    bound over ``summary["layers"]`` (plus the per-layer launch cost of GPU targets); the
    executed-instruction bound is folded in later by :func:`add_evidence` when the package's
    instructions are counted."""
    peak = target.peak
    roof = roofline(summary["layers"], peak, target.tvm)
    ms = roof["ms"]
    how = "roofline lower bound: " + roof["how"]
    launch = {}
    if peak.launch_us:
        # Fused kernels are fewer than ONNX layers; counting one launch per layer is an upper
        # bound on that term (typical CUDA launch cost ~4 us through a runtime).
        launch = {"launch_ms": peak.launch_us * 1e-3 * len(summary["layers"])}
        ms += launch["launch_ms"]
        how += f", plus {peak.launch_us:g} us launch cost per layer ({len(summary['layers'])} layers)"
    from .analysis import uncounted_ops

    uncounted = uncounted_ops(summary["layers"])
    if uncounted:
        how += ("; not counted (no cost model: bytes only, so the bound is looser): "
                + ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items())))
    return {
        "method": "modeled",
        "median_ms": ms,
        "modeled_from": "roofline",
        "label": LABEL_ROOFLINE,
        "how": how + "; real hardware is slower (untuned code reaches a fraction of peak)",
        **({"uncounted_ops": uncounted} if uncounted else {}),
        "source": peak.source + (f"; {peak.core_source}" if getattr(peak, "core_source", "") else ""),
        "roofline_ms": ms,
        **launch,
        "rates": roof["rates"],
        "layers": roof["layers"],
    }


def instruction_bound(count: int, peak) -> dict | None:
    """Executed instructions of one inference / (issue width x clock x cores): ``{"ms", "how"}``,
    or None where the device lists no issue width."""
    width = _get(peak, "issue_width")
    if not count or not width:
        return None
    cores, ghz = _get(peak, "cores", 1), _get(peak, "clock_ghz")
    ms = count / (width * ghz * 1e9 * cores) * 1e3
    return {"ms": ms, "how": f"{count:,} executed instructions per inference (qemu insn plugin, one thread) / "
                             f"({width} instructions/cycle, the core's decode width, x {ghz:g} GHz x {cores} cores, "
                             "perfect parallel speed-up assumed)"}


def _int8_layers(layers: list[dict]) -> list[dict]:
    return [d for d in layers if d.get("arith") == "int8" and d.get("macs")]


def add_evidence(latency: dict, target, *, instructions: dict | None = None, kernels: dict | None = None) -> dict:
    """Fold the package's own evidence into a modeled ``latency`` (in place; returned too):

    * ``kernels`` (static disassembly of the library, :func:`optc.backends.tvm.arm.kernel_profile`):
      whether the int8 kernels contain the dot product; where that contradicts the target table
      the roofline is recomputed with the kernels actually present, and ``notes`` says so;
    * ``instructions`` (default ``latency["instructions"]``): the executed-instruction lower
      bound; ``median_ms`` becomes the larger of the two bounds and ``modeled_from`` /
      ``label`` say which; ``consistency`` explains a disagreement over :data:`DISAGREEMENT` x.

    A latency that is not modeled (measured on a board over RPC) is left as it is."""
    if latency.get("method") != "modeled" or "roofline_ms" not in latency or target is None:
        return latency
    peak = target.peak
    launch = latency.get("launch_ms", 0.0)  # GPU targets: launch cost per layer, in roofline_ms
    notes = latency.setdefault("notes", [])
    int8 = _int8_layers(latency.get("layers", []))
    if kernels and kernels.get("available", True) and int8:
        assumed = has_dot_product(target.tvm) and bool(_get(peak, "int8_dot_macs_per_cycle"))
        present = bool(kernels.get("dot_product"))
        if present != assumed and _get(peak, "int8_dot_macs_per_cycle"):
            roof = roofline(latency["layers"], peak, target.tvm, dot_product=present)
            notes.append(f"the library's int8 kernels {'contain' if present else 'contain no'} dot-product "
                         f"instructions (disassembly), unlike the target table's assumption: roofline "
                         f"recomputed, {latency['roofline_ms']:.4g} -> {roof['ms']:.4g} ms")
            latency.update(roofline_ms=roof["ms"] + launch, rates=roof["rates"], layers=roof["layers"])
            if latency.get("modeled_from") == "roofline":
                latency["median_ms"] = latency["roofline_ms"]
    instructions = instructions if instructions is not None else latency.get("instructions")
    bound = instruction_bound((instructions or {}).get("count"), peak)
    if bound is None:
        if not notes:
            latency.pop("notes")
        return latency
    roof_ms = latency["roofline_ms"]
    latency["instruction_bound_ms"] = bound["ms"]
    latency["instruction_bound_how"] = bound["how"]
    if bound["ms"] > roof_ms:
        latency.update(median_ms=bound["ms"], modeled_from="executed instructions", label=LABEL_INSTRUCTIONS)
    else:
        latency.update(median_ms=roof_ms, modeled_from="roofline", label=LABEL_ROOFLINE)
    latency["how"] = (f"the larger of two lower bounds: executed instructions {bound['ms']:.4g} ms ({bound['how']}) "
                      f"and roofline {roof_ms:.4g} ms (see roofline_ms, rates, layers); real hardware is slower")
    ratio = max(bound["ms"], roof_ms) / max(min(bound["ms"], roof_ms), 1e-12)
    if ratio > DISAGREEMENT:
        latency["consistency"] = _disagreement(bound["ms"], roof_ms, ratio, latency, int8)
    if not notes:
        latency.pop("notes")
    return latency


def _disagreement(insn_ms: float, roof_ms: float, ratio: float, latency: dict, int8: list[dict]) -> str:
    if insn_ms > roof_ms:
        why = ("the kernels execute far more instructions than their arithmetic needs at the modeled peak "
               "(untuned or scalar code, loop and address overhead")
        if int8 and any(d.get("kernel") == "int8-int32" for d in int8):
            why += ", int8 layers widened to int32 without a dot product"
        return (f"model and counts disagree: the executed instructions need {ratio:.1f}x the roofline's time "
                f"({insn_ms:.4g} vs {roof_ms:.4g} ms): {why}); the instruction-based bound is reported")
    layers = latency.get("layers", [])
    mem = sum(d["ms"] for d in layers if d.get("bound") == "memory")
    why = ("most of the roofline is memory traffic, counted as if every tensor came from DRAM (small models "
           "stay in cache)" if mem > 0.5 * roof_ms else
           "the code reaches the modeled arithmetic with fewer instructions than the issue width allows at "
           "the roofline's time, i.e. the roofline's peak rate may be pessimistic for these kernels")
    return (f"model and counts disagree: the roofline is {ratio:.1f}x the executed-instruction bound "
            f"({roof_ms:.4g} vs {insn_ms:.4g} ms): {why}; the roofline is reported")

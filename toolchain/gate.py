"""The CI compression gate: budgets checked against package reports, and compression jobs.

* :func:`check_report` compares a package's ``report.json`` with :class:`Budgets` (accuracy
  drop, latency, size, energy, and optionally that latency/energy were *measured*); every
  budget gives one :class:`Check`; a figure missing from the report fails its budget with the
  reason. :func:`enforce` raises :class:`~optc.errors.BudgetError` (exit code 6) naming every
  failure.
* The gate refuses what was not checked: a package whose artifact was not verified against
  onnxruntime (``verify.passed`` null: a GPU package built without a GPU, ``--no-verify``)
  fails unless ``allow_unverified``; one that failed verification always fails. A latency
  budget is compared with a *latency*: a measured one, or cycle-accurate RTL simulation at the
  placed-and-routed clock. A modeled figure (roofline lower bound; FPGA cycles at an assumed
  clock) shows only that the budget *might* hold, so it fails unless ``allow_modeled`` (a
  modeled lower bound above the budget fails either way); an emulated time (qemu wall time on
  this host) is not the target's latency and never meets a budget (its modeled figure beside
  it counts, under ``allow_modeled``). Energy from supplied power times a modeled latency is a
  lower bound too and follows the same switch.
* :func:`run_job` runs a whole compression job from a YAML (``.yaml``/``.yml``, PyYAML) or TOML
  (``.toml``, tomllib) file: it compiles each candidate pipeline until the time budget is spent,
  checks the budgets, keeps the best candidate that meets them (``select.order``, default lowest
  latency then smallest size), writes every candidate's record plus ``summary.json`` and
  ``summary.md``, and raises BudgetError if no candidate passed. A candidate that cannot be
  built (a pass that does not exist yet, a failed verification, an internal error) is recorded
  with the reason; it never stops the job.
* Like ``optc compile``, :func:`run_job` runs each candidate pipeline with the cleanup prefix
  (:func:`optc.pipeline.with_cleanup`) unless the job or the candidate says ``cleanup: false``;
  the candidate record keeps both texts (``pipeline``, ``pipeline_run``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (BudgetError, InvalidModelError, OptcError, ToolchainError, UnsupportedModelError,
                     UsageError, VerificationError)
from .progress import SILENT, Progress

MEASURABLE = ("latency", "energy")

# ---------------------------------------------------------------------------------------------
# Budgets and checks


@dataclass
class Budgets:
    """Limits for one artifact; ``None`` means "not checked".

    ``max_accuracy_drop`` is in percentage points of top-1 accuracy vs the original model
    (without labels: 100 - top-1 agreement, an upper bound on the drop); ``max_size_mb`` is in
    MB (10^6 bytes) of library + params; ``require_measured`` lists figures (``latency``,
    ``energy``) that must be measured on hardware, not modeled or estimated.

    Two switches relax the rules (they are not budgets): ``allow_unverified`` accepts a package
    whose artifact was not run against onnxruntime (``verify.passed`` null); ``allow_modeled``
    lets a modeled latency (a roofline lower bound) meet ``max_latency_ms``.
    """

    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_energy_mj: float | None = None
    require_measured: tuple[str, ...] = ()
    allow_unverified: bool = False
    allow_modeled: bool = False

    @classmethod
    def from_mapping(cls, data: dict | None, where: str = "budgets") -> "Budgets":
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in data.items():
            k = key.replace("-", "_")
            if k not in names:
                raise UsageError(f"{where}: unknown budget {key!r}; budgets: {', '.join(sorted(names))}")
            if k == "require_measured":
                kw[k] = parse_require_measured(value, where)
            elif k in SWITCHES:
                kw[k] = _switch(value, f"{where}: {key}")
            elif value is not None:
                try:
                    kw[k] = float(value)
                except (TypeError, ValueError):
                    raise UsageError(f"{where}: {key} must be a number, not {value!r}") from None
        return cls(**kw)

    def is_empty(self) -> bool:
        """No budget set (the switches are not budgets)."""
        return all(getattr(self, f.name) in (None, ()) for f in dataclasses.fields(self)
                   if f.name not in SWITCHES)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if v not in (None, (), False)}


SWITCHES = ("allow_unverified", "allow_modeled")


def _switch(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    raise UsageError(f"{where} must be true or false, not {value!r}")


def parse_require_measured(value, where: str = "--require-measured") -> tuple[str, ...]:
    """``true`` -> latency and energy; a list or comma-separated text names them."""
    if value is True:
        return MEASURABLE
    if value in (False, None, ""):
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for it in items:
        it = str(it).strip()
        if it not in MEASURABLE:
            raise UsageError(f"{where}: {it!r} is not one of {', '.join(MEASURABLE)}")
        out.append(it)
    return tuple(dict.fromkeys(out))


@dataclass
class Check:
    budget: str
    passed: bool
    detail: str
    value: float | None = None
    limit: float | None = None

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.budget}: {self.detail}"


def figures(report: dict) -> dict:
    """The figures budgets are checked against, with their methods (None where missing)."""
    lat = report.get("latency") or {}
    en = report.get("energy") or {}
    acc = report.get("accuracy") or {}
    size = (report.get("size_bytes") or {}).get("artifact")
    out = {
        "latency_ms": lat.get("median_ms"), "latency_method": lat.get("method"),
        "energy_mj": en.get("mj_per_inference"), "energy_method": en.get("method"),
        "size_bytes": size, "accuracy_drop": None, "accuracy_kind": None, "accuracy": None,
        "instructions": (lat.get("instructions") or {}).get("count"),
        "verify_passed": (report.get("verify") or {}).get("passed"),
    }
    if "top1_drop_points" in acc:
        out.update(accuracy_drop=acc["top1_drop_points"], accuracy_kind="top-1", accuracy=100 * acc["top1"])
    elif "top1_agreement" in acc:
        out.update(accuracy_drop=100 * (1 - acc["top1_agreement"]), accuracy_kind="agreement",
                   accuracy=100 * acc["top1_agreement"])
    return out


def _num(x: float) -> str:
    return f"{x:.4g}"


def _no_figure(budget: str, figure: str, hint: str, limit: float) -> Check:
    """The failed check of a budget whose figure the report lacks (``hint``: where it comes from)."""
    return Check(budget, False, f"no {figure} figure in the report ({hint})", None, limit)


def check_report(report: dict, budgets: Budgets) -> list[Check]:
    """One :class:`Check` per budget set in ``budgets`` (in a fixed order)."""
    f = figures(report)
    checks: list[Check] = []
    if budgets.max_accuracy_drop is not None:
        lim = budgets.max_accuracy_drop
        if f["accuracy_drop"] is None:
            checks.append(_no_figure("accuracy drop", "accuracy", "compile with --eval DATA.npz, or eval: in the "
                                     "job file", lim))
        else:
            acc = report["accuracy"]
            if f["accuracy_kind"] == "top-1":
                how = (f"top-1 {100 * acc['top1']:.2f}% vs {100 * acc['top1_reference']:.2f}% original, "
                       f"{acc.get('samples', '?')} samples")
            else:
                how = (f"fidelity bound: 100 - top-1 agreement {100 * acc['top1_agreement']:.2f}% "
                       f"(no labels), {acc.get('samples', '?')} samples")
            ok = f["accuracy_drop"] <= lim
            checks.append(Check("accuracy drop", ok, f"{f['accuracy_drop']:.2f} points {'<=' if ok else '>'} "
                                f"{_num(lim)} ({how})", f["accuracy_drop"], lim))
    if budgets.max_latency_ms is not None:
        checks.append(_latency_check(report.get("latency") or {}, budgets.max_latency_ms, budgets.allow_modeled))
    if budgets.max_size_mb is not None:
        lim = budgets.max_size_mb
        if f["size_bytes"] is None:
            checks.append(_no_figure("size", "size", "size_bytes.artifact", lim))
        else:
            mb = f["size_bytes"] / 1e6
            ok = mb <= lim
            checks.append(Check("size", ok, f"{mb:.4g} MB {'<=' if ok else '>'} {_num(lim)} MB "
                                "(library + params, MB = 10^6 bytes)", mb, lim))
    if budgets.max_energy_mj is not None:
        lim = budgets.max_energy_mj
        if f["energy_mj"] is None:
            checks.append(_no_figure("energy", "energy", "compiled by an optc without energy reporting?", lim))
        else:
            ok = f["energy_mj"] <= lim
            detail = (f"{_num(f['energy_mj'])} mJ {'<=' if ok else '>'} {_num(lim)} mJ per inference "
                      f"({f['energy_method']})")
            lat_method = ((report.get("energy") or {}).get("breakdown") or {}).get("latency_method")
            if f["energy_method"] == "estimated from supplied power" and latency_kind(lat_method) != "latency":
                # power x a modeled (lower-bound) latency is a lower bound too
                detail += f" x a {lat_method} latency: a lower bound, not a measurement"
                if ok and not budgets.allow_modeled:
                    ok = False
                    detail += "; accept it with --allow-modeled, or give a measured latency"
                elif ok:
                    detail += "; accepted by allow-modeled"
            checks.append(Check("energy", ok, detail, f["energy_mj"], lim))
    for what in budgets.require_measured:
        method = f[f"{what}_method"]
        ok = method == "measured"
        detail = f"{what} is {method or 'missing'}" + ("" if ok else ", not measured on hardware")
        note = (report.get(what) or {}).get("notes") or []
        why = next((n for n in note if isinstance(n, str) and n.startswith("not measured")), None)
        if not ok and why:
            detail += f" ({why})"
        checks.append(Check(f"measured {what}", ok, detail))
    checks.append(_verify_check(report.get("verify"), budgets.allow_unverified))
    return checks


# What a latency method means for a budget: "latency" (a figure of the target itself: measured,
# or cycle-accurate RTL simulation at the placed-and-routed clock), "modeled" (a model: the
# roofline lower bound, or simulated cycles at an assumed clock), "emulated" (qemu wall time on
# this host: not the target's latency at all).
LATENCY_KINDS = {
    "measured": "latency",
    "simulated cycles at P&R fmax": "latency",
    "modeled": "modeled",
    "simulated cycles at an assumed clock": "modeled",
    "emulated": "emulated",
}


def latency_kind(method: str | None) -> str | None:
    """``latency``, ``modeled``, ``emulated`` (see :data:`LATENCY_KINDS`), None when unknown."""
    return LATENCY_KINDS.get(method or "")


def _latency_check(lat: dict, lim: float, allow_modeled: bool) -> Check:
    """``max_latency_ms`` against the report's latency section (see the module docstring)."""
    method, value = lat.get("method"), lat.get("median_ms")
    kind = latency_kind(method)
    if kind == "emulated":  # qemu wall time: the modeled figure beside it is what may count
        emulated = (f"emulated {_num(value)} ms" if value is not None else "emulated time") + \
            " is qemu wall time on the build host, not the target's latency"
        if lat.get("modeled_ms") is None:
            return Check("latency", False, f"{emulated}; no latency figure of the target", None, lim)
        method, value, kind = "modeled", lat["modeled_ms"], "modeled"
    else:
        emulated = None
    if value is None:
        reason = lat.get("reason") or method or "absent"
        return Check("latency", False, f"no latency figure in the report ({reason})", None, lim)
    if kind is None:
        return Check("latency", False, f"{_num(value)} ms by an unknown method {method!r}: not a latency "
                     "this gate can trust", value, lim)
    ok = value <= lim
    if kind != "modeled":
        return Check("latency", ok, f"{_num(value)} ms {'<=' if ok else '>'} {_num(lim)} ms ({method})", value, lim)
    what = "roofline lower bound" if method == "modeled" else method
    text = f"{_num(value)} ms {'<=' if ok else '>'} {_num(lim)} ms (modeled: {what}, not a measurement)"
    if emulated:
        text += f"; {emulated}"
    if not ok:
        text += "; the real latency is at least this" if method == "modeled" else ""
    elif allow_modeled:
        text += "; accepted by allow-modeled"
    else:
        text += ("; a model cannot show that the budget holds: measure on the device (--rpc) or accept "
                 "modeled figures (--allow-modeled)")
        ok = False
    return Check("latency", ok, text, value, lim)


def _verify_check(v: dict | None, allow_unverified: bool) -> Check:
    """The artifact was run and compared with onnxruntime: passed (PASS), failed (always FAIL),
    or not run (FAIL unless ``allow_unverified``)."""
    v = v or {}
    passed = v.get("passed")
    if passed is True:
        err = v.get("max_abs_error")
        return Check("verify", True, "artifact verified against onnxruntime"
                     + (f" (max abs error {err:.3g})" if isinstance(err, (int, float)) else ""))
    if passed is False:
        return Check("verify", False, "the artifact failed verification against onnxruntime")
    why = v.get("skipped")
    why = why if isinstance(why, str) else ("--no-verify" if why is True else "no verify section in the report")
    text = f"NOT verified: the artifact was never run against onnxruntime ({why})"
    if allow_unverified:
        return Check("verify", True, text + "; accepted by allow-unverified")
    return Check("verify", False, text + "; verify it on the target (--rpc, or compile on a machine that "
                 "has the device) or accept it with --allow-unverified")


def load_report(path: str | os.PathLike) -> dict:
    """``report.json`` of a package directory (or the JSON file itself)."""
    p = Path(path)
    f = p / "report.json" if p.is_dir() else p
    if not f.is_file():
        raise UsageError(f"{path}: no report.json there (not an optc package directory)")
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as err:
        raise InvalidModelError(f"{f}: unreadable report ({err})") from None


def enforce(checks: list[Check], where: str) -> None:
    """Raise BudgetError naming every failed check, one per line."""
    failed = [c for c in checks if not c.passed]
    if failed:
        lines = "\n".join(f"  {c.budget}: {c.detail}" for c in failed)
        raise BudgetError(f"{len(failed)} of {len(checks)} checks failed for {where}:\n{lines}")


def check(path: str | os.PathLike, budgets: Budgets) -> list[Check]:
    """Check the package at ``path`` (see :func:`check_report`); nothing is raised here."""
    if budgets.is_empty():
        raise UsageError("no budget given: use --max-accuracy-drop, --max-latency-ms, --max-size-mb, "
                         "--max-energy-mj or --require-measured")
    return check_report(load_report(path), budgets)


# ---------------------------------------------------------------------------------------------
# Compression jobs

JOB_KEYS = {
    "model": "ONNX model file (required)",
    "target": "target name (default cpu)",
    "input_shapes": "input shapes: {name: [d0, d1, ...]} or ['name=d0,d1,...']",
    "inputs": "verification inputs (.npz)",
    "calibration": "calibration data (.npz), substituted for {calibration} in pipelines",
    "eval": "labelled evaluation data (.npz) for accuracy",
    "eval_limit": "evaluate on the first N samples",
    "pipeline": "one pipeline (text)",
    "candidates": "several candidates: [{name, pipeline, target?, compile?}]",
    "budgets": "max_accuracy_drop, max_latency_ms, max_size_mb, max_energy_mj, require_measured; switches "
               "allow_unverified, allow_modeled (default false)",
    "time_budget_s": "stop starting new candidates after this many seconds",
    "output_dir": "where the candidates, best/ and summary go",
    "select": "{order: [latency_ms, size_bytes, energy_mj, accuracy_drop], tie_tolerance: 0.02}",
    "keep_all_packages": "keep every candidate's package (default true; false keeps only reports)",
    "power_watts": "device power for energy = W x latency",
    "compile": "further optc.compile options: params, atol, rtol, measure, verify_outputs",
    "cleanup": "true (default): the cleanup passes run before a pipeline's compression passes "
               "(see optc.pipeline.with_cleanup); false: pipelines run as written",
    "name": "job name (for the summary)",
}
SELECT_KEYS = ("latency_ms", "size_bytes", "energy_mj", "accuracy_drop")
COMPILE_OPTIONS = ("params", "atol", "rtol", "measure", "verify_outputs")
PLACEHOLDERS = ("model", "calibration", "eval", "inputs")


@dataclass
class Candidate:
    name: str
    pipeline: str
    target: str
    compile: dict = field(default_factory=dict)
    cleanup: bool = True


@dataclass
class Job:
    path: Path
    name: str
    model: Path
    target: str
    input_shapes: dict[str, tuple[int, ...]]
    inputs: Path | None
    calibration: Path | None
    eval: Path | None
    eval_limit: int | None
    candidates: list[Candidate]
    budgets: Budgets
    time_budget_s: float | None
    output_dir: Path
    select_order: tuple[str, ...]
    tie_tolerance: float
    keep_all_packages: bool
    power_watts: float | None
    compile: dict
    cleanup: bool = True


def read_job_file(path: str | os.PathLike) -> dict:
    """The mapping in a YAML (.yaml/.yml) or TOML (.toml) job file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such job file")
    ext = p.suffix.lower()
    if ext not in (".yaml", ".yml", ".toml"):
        raise UsageError(f"{path}: job files are .yaml, .yml or .toml, not {ext or 'no extension'!r}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read the job file ({err})") from None
    if ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("YAML job files need PyYAML (pip install pyyaml); or write the job as .toml") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise UsageError("TOML job files need Python 3.11+ (tomllib) or tomli; or write the job as "
                                 ".yaml") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"{path}: invalid TOML: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the job file must hold a mapping (keys: {', '.join(JOB_KEYS)})")
    return data


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "candidate"


def _shapes(value, where: str) -> dict[str, tuple[int, ...]]:
    if value is None:
        return {}
    if isinstance(value, dict):
        try:
            return {str(k): tuple(int(d) for d in (v.split(",") if isinstance(v, str) else v))
                    for k, v in value.items()}
        except (TypeError, ValueError):
            raise UsageError(f"{where}: input_shapes must map names to lists of ints") from None
    if isinstance(value, (list, str)):
        from .frontend import parse_shape_args

        return parse_shape_args([value] if isinstance(value, str) else [str(v) for v in value])
    raise UsageError(f"{where}: input_shapes must be a mapping or a list of NAME=D0,D1,... strings")


def load_job(path: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Job:
    """Read and validate a job file; relative paths are relative to the job file's directory."""
    path = Path(path)
    data = read_job_file(path)
    unknown = [k for k in data if k.replace("-", "_") not in JOB_KEYS]
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; keys: {', '.join(JOB_KEYS)}")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    base = path.resolve().parent

    def rel(v, key, must_exist=True) -> Path | None:
        if v in (None, ""):
            return None
        p = Path(str(v)).expanduser()
        p = Path(os.path.normpath(p if p.is_absolute() else base / p))
        if must_exist and not p.exists():
            raise UsageError(f"{path}: {key}: {p} does not exist")
        return p

    if "model" not in data:
        raise UsageError(f"{path}: 'model' is required")
    target = str(data.get("target", "cpu"))
    compile_opts = dict(data.get("compile") or {})
    bad = [k for k in compile_opts if k not in COMPILE_OPTIONS]
    if bad:
        raise UsageError(f"{path}: compile: unknown option(s) {', '.join(bad)}; options: {', '.join(COMPILE_OPTIONS)}")
    if ("pipeline" in data) == ("candidates" in data):
        raise UsageError(f"{path}: give either 'pipeline' (one) or 'candidates' (a list), not "
                         + ("both" if "pipeline" in data else "neither"))
    raw = [{"name": "pipeline", "pipeline": data["pipeline"]}] if "pipeline" in data else data["candidates"]
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{path}: 'candidates' must be a non-empty list")
    cands: list[Candidate] = []
    for i, c in enumerate(raw):
        if isinstance(c, str):
            c = {"pipeline": c}
        if not isinstance(c, dict) or "pipeline" not in c:
            raise UsageError(f"{path}: candidate {i + 1} needs a 'pipeline'")
        extra = set(c) - {"name", "pipeline", "target", "compile", "cleanup"}
        if extra:
            raise UsageError(f"{path}: candidate {i + 1}: unknown key(s) {', '.join(sorted(extra))} "
                             "(name, pipeline, target, compile, cleanup)")
        copts = dict(c.get("compile") or {})
        if any(k not in COMPILE_OPTIONS for k in copts):
            raise UsageError(f"{path}: candidate {i + 1}: compile options are {', '.join(COMPILE_OPTIONS)}")
        name = _safe_name(str(c.get("name") or f"candidate-{i + 1}"))
        if name in {x.name for x in cands} or name == "best":
            raise UsageError(f"{path}: candidate name {name!r} used twice (or reserved)")
        cleanup = _switch(c.get("cleanup", data.get("cleanup", True)), f"{path}: candidate {i + 1}: cleanup")
        cands.append(Candidate(name, str(c["pipeline"] or ""), str(c.get("target", target)), copts, cleanup))
    select = data.get("select") or {}
    if isinstance(select, (list, str)):
        select = {"order": select}
    order = select.get("order", ["latency_ms", "size_bytes"])
    order = tuple([order] if isinstance(order, str) else order)
    if not order or any(k not in SELECT_KEYS for k in order):
        raise UsageError(f"{path}: select.order must list some of {', '.join(SELECT_KEYS)}")
    tb = data.get("time_budget_s")
    out = Path(output_dir) if output_dir is not None else rel(data.get("output_dir") or f"{path.stem}.out",
                                                                  "output_dir", must_exist=False)
    return Job(
        path=path, name=str(data.get("name") or path.stem), model=rel(data["model"], "model"), target=target,
        input_shapes=_shapes(data.get("input_shapes"), str(path)), inputs=rel(data.get("inputs"), "inputs"),
        calibration=rel(data.get("calibration"), "calibration"), eval=rel(data.get("eval"), "eval"),
        eval_limit=int(data["eval_limit"]) if data.get("eval_limit") is not None else None,
        candidates=cands, budgets=Budgets.from_mapping(data.get("budgets"), f"{path}: budgets"),
        time_budget_s=float(tb) if tb is not None else None, output_dir=out,
        select_order=order, tie_tolerance=float(select.get("tie_tolerance", 0.02)),
        keep_all_packages=bool(data.get("keep_all_packages", True)),
        power_watts=float(data["power_watts"]) if data.get("power_watts") is not None else None,
        compile=compile_opts, cleanup=_switch(data.get("cleanup", True), f"{path}: cleanup"),
    )


def expand_pipeline(text: str, job: Job) -> str:
    """Substitute ``{model}``, ``{calibration}``, ``{eval}``, ``{inputs}`` with the job's paths."""
    def sub(m):
        v = getattr(job, m.group(1))
        if v is None:
            raise UsageError(f"pipeline uses {{{m.group(1)}}} but the job sets no {m.group(1)!r}")
        return str(v)

    return re.sub(r"\{(" + "|".join(PLACEHOLDERS) + r")\}", sub, text)


_STATUS_BY_ERROR = (
    (VerificationError, "verification failed"),
    (UnsupportedModelError, "unsupported model"),
    (ToolchainError, "toolchain error"),
)


def _better(a: dict, b: dict, order, tol: float) -> bool:
    """Is candidate figures ``a`` better than ``b`` (each key minimised, within-tolerance ties
    fall through to the next key)?"""
    for key in order:
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            continue
        if vb is None:
            return True
        if va is None:
            return False
        if abs(va - vb) <= tol * max(abs(va), abs(vb)):
            continue
        return va < vb
    return False


def choose_best(results: list[dict], order, tol: float) -> dict | None:
    """The best passing candidate (first one listed among equals)."""
    best = None
    for r in results:
        if r["status"] == "passed" and (best is None or _better(r["figures"], best["figures"], order, tol)):
            best = r
    return best


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise UsageError(f"{out}: exists; pass --force to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / "summary.json").is_file()):
            raise UsageError(f"{out}: exists and is not the output of an earlier run-config (no "
                             "summary.json): refusing to delete it")
        shutil.rmtree(out)
    try:
        (out / "candidates").mkdir(parents=True)
    except OSError as err:
        raise UsageError(f"{out}: cannot create it ({err.strerror or err})") from None


def run_candidate(job: Job, cand: Candidate, dest: Path, progress: Progress) -> dict:
    """Compile and check one candidate; every failure becomes a status and a note."""
    from . import api
    from .pipeline import format_pipeline, parse_pipeline, with_cleanup

    rec: dict[str, Any] = {"name": cand.name, "pipeline": cand.pipeline, "target": cand.target,
                           "status": None, "note": "", "checks": [], "figures": {}, "package": None,
                           "report": None}
    t0 = time.perf_counter()
    try:
        text = expand_pipeline(cand.pipeline, job)
        try:
            specs = parse_pipeline(text)
            if cand.cleanup:  # as optc compile does: cleanup before the compression passes
                specs, added = with_cleanup(specs)
                text = format_pipeline(specs) if added else text
        except UsageError as err:
            msg = str(err)
            rec["status"] = "unknown pass" if "unknown pass" in msg else "bad pipeline"
            rec["note"] = msg
            return rec
        opts = job.compile | cand.compile
        options = api.CompileOptions.of(**(opts | {"eval_data": job.eval, "eval_limit": job.eval_limit,
                                                   "power_watts": job.power_watts, "force": True,
                                                   "cleanup": False}))  # cleanup: added above
        report = api.compile(job.model, cand.target, dest, passes=text, input_shapes=job.input_shapes or None,
                             inputs=job.inputs, options=options, progress=progress)
    except KeyboardInterrupt:
        raise
    except OptcError as err:
        rec["status"] = next((s for cls, s in _STATUS_BY_ERROR if isinstance(err, cls)), "error")
        rec["note"] = " ".join(str(err).split())
        return rec
    except Exception as err:  # an optc bug must not stop the job; it is recorded as such
        rec["status"] = "internal error"
        rec["note"] = f"{type(err).__name__}: {' '.join(str(err).split())[:400]}"
        return rec
    finally:
        rec["seconds"] = round(time.perf_counter() - t0, 3)
    report.pop("package", None)
    rec["pipeline_run"] = report.get("pipeline", text)
    rec["warnings"] = [w for p in report.get("passes", []) for w in p.get("warnings", [])]
    checks = check_report(report, job.budgets)
    rec["checks"] = [dataclasses.asdict(c) for c in checks]
    rec["figures"] = figures(report)
    rec["package"] = str(dest)
    rec["report"] = str(dest / "report.json")
    failed = [c for c in checks if not c.passed]
    rec["status"] = "over budget" if failed else "passed"
    rec["note"] = "; ".join([f"{c.budget}: {c.detail}" for c in failed] + [f"warning: {w}" for w in rec["warnings"]])
    return rec


def run_job(path: str | os.PathLike, *, output_dir: str | os.PathLike | None = None, force: bool = False,
            progress: Progress = SILENT) -> dict:
    """Run a compression job (see the module docstring); returns the summary. Raises
    BudgetError (after writing everything) when no candidate meets the budgets."""
    from . import report as report_mod

    job = load_job(path, output_dir)
    out = job.output_dir
    _prepare_output(out, force)
    t_start = time.perf_counter()
    results = []
    for cand in job.candidates:
        elapsed = time.perf_counter() - t_start
        if job.time_budget_s is not None and elapsed >= job.time_budget_s:
            rec = {"name": cand.name, "pipeline": cand.pipeline, "target": cand.target, "status": "skipped",
                   "note": f"time budget of {job.time_budget_s:g} s spent ({elapsed:.0f} s elapsed)",
                   "checks": [], "figures": {}, "package": None, "report": None}
        else:
            progress.note(f"candidate {cand.name}: {cand.pipeline} ({cand.target})")
            rec = run_candidate(job, cand, out / "candidates" / cand.name, progress)
            progress.note(f"  -> {rec['status']}{': ' + rec['note'] if rec['note'] else ''}")
        (out / "candidates" / f"{cand.name}.json").write_text(json.dumps(rec, indent=2) + "\n")
        results.append(rec)

    best = choose_best(results, job.select_order, job.tie_tolerance)
    if best is not None:
        shutil.copytree(best["package"], out / "best")
    if not job.keep_all_packages:
        for r in results:
            pkg = Path(r["package"]) if r["package"] else None
            if pkg and pkg.is_dir():
                for f in pkg.iterdir():
                    if f.name not in ("report.json", "manifest.json"):
                        shutil.rmtree(f) if f.is_dir() else f.unlink()
    summary = {
        "job": str(job.path), "name": job.name, "model": str(job.model), "output_dir": str(out),
        "budgets": job.budgets.to_json(), "select": {"order": list(job.select_order),
                                                     "tie_tolerance": job.tie_tolerance},
        "time_budget_s": job.time_budget_s, "elapsed_s": round(time.perf_counter() - t_start, 3),
        "passed": best is not None, "best": best["name"] if best else None,
        "best_package": str(out / "best") if best else None,
        "candidates": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(report_mod.job_summary_markdown(summary))
    if best is None:
        lines = "\n".join(f"  {r['name']}: {r['status']}{' (' + r['note'] + ')' if r['note'] else ''}"
                          for r in results)
        err = BudgetError(f"no candidate of {job.path} met the budgets (summary: {out / 'summary.md'}):\n{lines}")
        err.summary = summary
        raise err
    return summary

"""Comparison reports over several packages: Markdown or HTML tables and accuracy plots.

Every figure carries its method (measured / modeled / estimated from supplied power /
emulated), so a table never puts a modeled number where a measured one is expected without
saying so. Plots (matplotlib, PNG): accuracy vs latency and accuracy vs energy, filled markers
for measured figures, hollow for modeled, triangles for estimates from supplied power.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from .accuracy import summary_text
from .errors import UsageError
from .gate import figures, load_report

COLUMNS = ("package", "target", "pipeline", "size", "latency", "energy", "accuracy", "verify")


def load(paths: list[str | os.PathLike]) -> list[tuple[str, dict]]:
    """(label, report) for each package directory (or report.json file)."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and not (p / "report.json").is_file() and (p / "summary.json").is_file():
            # the output of `optc run-config`: every candidate that was compiled
            summary = json.loads((p / "summary.json").read_text())
            out += [(c["name"], load_report(c["report"])) for c in summary["candidates"]
                    if c.get("report") and Path(c["report"]).is_file()]
            continue
        label = p.parent.name if p.is_file() else p.name
        out.append((label or str(p), load_report(p)))
    if not out:
        raise UsageError("no package reports found in: " + ", ".join(map(str, paths)))
    return out


def _size(b) -> str:
    if b is None:
        return "—"
    return f"{b / 1e6:.3f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def cells(label: str, report: dict) -> dict[str, str]:
    """The table cells for one report (plain text; methods in parentheses)."""
    f = figures(report)
    lat = report.get("latency") or {}
    if f["latency_ms"] is not None:
        # a modeled figure says what it is modeled from (optc.latency_model's label)
        latency = f"{_fmt(f['latency_ms'])} ms ({lat.get('label') or f['latency_method']})"
        if lat.get("consistency"):
            latency += f"; {lat['consistency']}"
        if "emulated_ms" in lat:
            latency += f"; qemu {lat['emulated_ms']:.1f} ms (emulated, not ARM latency)"
    else:
        latency = f"— ({lat.get('method', 'absent')})"
    if f["instructions"] is not None:
        latency += f"; {f['instructions']:,} insns/inference (qemu insn plugin)"
    energy = (f"{_fmt(f['energy_mj'])} mJ ({f['energy_method']})" if f["energy_mj"] is not None else "— (absent)")
    en = report.get("energy") or {}
    if "mj_per_inference_lower" in en:
        energy += f", lower bound {_fmt(en['mj_per_inference_lower'])} mJ"
    # top-1 figures only for class scores (optc.accuracy.output_kind, recorded in the section)
    accuracy = summary_text(report.get("accuracy"))
    if accuracy is None and summary_text(report.get("fidelity")):
        accuracy = f"{summary_text(report['fidelity'])} on {report['fidelity'].get('samples', '?')} sample input(s)"
    accuracy = accuracy or "— (no --eval)"
    v = report.get("verify") or {}
    if v.get("passed") is True:
        verify = f"passed (max abs err {v.get('max_abs_error', 0):.2g})"
    elif v.get("passed") is False:
        verify = "FAILED"
    else:
        verify = "skipped" + (f" ({v['skipped']})" if isinstance(v.get("skipped"), str) else "")
    return {"package": label, "target": str(report.get("target", "?")), "pipeline": str(report.get("pipeline", "")),
            "size": _size(f["size_bytes"]), "latency": latency, "energy": energy, "accuracy": accuracy,
            "verify": verify}


def _sources(entries) -> list[str]:
    seen: dict[str, None] = {}
    for _, r in entries:
        for sec in ("latency", "energy"):
            s = (r.get(sec) or {}).get("source")
            if s:
                seen[f"{sec} ({(r.get(sec) or {}).get('method')}): {s}"] = None
    return list(seen)


METHODS_TEXT = ("Methods: *measured* = timed / metered on this hardware; *modeled* = computed from "
                "operation counts and published figures (latency: the larger of a roofline lower bound from "
                "the peak rate of the kernels that run each layer and the DRAM bandwidth, and, where the "
                "package's executed instructions were counted under qemu, instructions / (issue width x "
                "clock x cores); energy from Horowitz ISSCC 2014 45 nm per-operation energies, upper bound "
                "with all traffic from DRAM); *estimated from supplied power* = user-given watts x "
                "latency; *emulated* qemu times are not ARM latency. Top-1 figures are given for class "
                "scores only; other outputs get SQNR and, for [0, 1] maps, thresholded mask IoU.")


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(entries: list[tuple[str, dict]], title: str = "optc comparison", plot: str | None = None) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for label, r in entries:
        c = cells(label, r)
        c["pipeline"] = f"`{c['pipeline']}`" if c["pipeline"] else "(none)"
        lines.append("| " + " | ".join(_md_escape(c[k]) for k in COLUMNS) + " |")
    lines += ["", METHODS_TEXT, "", "Sources:", ""] + [f"- {s}" for s in _sources(entries)]
    if plot:
        lines += ["", f"![accuracy vs latency and energy]({plot})"]
    return "\n".join(lines) + "\n"


def html_report(entries: list[tuple[str, dict]], title: str = "optc comparison", plot: str | None = None) -> str:
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in COLUMNS)
    rows = []
    for label, r in entries:
        c = cells(label, r)
        rows.append("<tr>" + "".join(f"<td>{'<code>' + e(c[k]) + '</code>' if k == 'pipeline' else e(c[k])}</td>"
                                     for k in COLUMNS) + "</tr>")
    sources = "".join(f"<li>{e(s)}</li>" for s in _sources(entries))
    img = f'<p><img src="{e(plot)}" alt="accuracy vs latency and energy"></p>' if plot else ""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>\n<style>"
            "body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #999;"
            "padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>\n"
            f"<h1>{e(title)}</h1>\n<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows)
            + f"\n</tbody></table>\n<p>{e(METHODS_TEXT).replace('*', '')}</p>\n<p>Sources:</p><ul>{sources}</ul>\n"
            + img + "\n</body></html>\n")


def plot(entries: list[tuple[str, dict]], path: str | os.PathLike) -> list[str]:
    """Accuracy vs latency and accuracy vs energy (two panels, one PNG). Returns the labels of
    packages left out (no accuracy figure); raises UsageError if none has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(label, figures(r)) for label, r in entries]
    have = [(lab, f) for lab, f in pts if f["accuracy"] is not None]
    left_out = [lab for lab, f in pts if f["accuracy"] is None]
    if not have:
        raise UsageError("no package has an accuracy figure to plot (compile with --eval DATA.npz)")
    kinds = {f["accuracy_kind"] for _, f in have}
    ylabel = "top-1 accuracy (%)" if kinds == {"top-1"} else (
        "top-1 agreement with original (%)" if kinds == {"agreement"} else "top-1 accuracy / agreement (%)")
    style = {"measured": dict(marker="o", facecolors="C0", edgecolors="C0"),
             "estimated from supplied power": dict(marker="^", facecolors="C2", edgecolors="C2")}
    modeled = dict(marker="o", facecolors="none", edgecolors="C1")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, unit in ((axes[0], "latency", "ms"), (axes[1], "energy", "mJ per inference")):
        seen = set()
        groups: dict[tuple, list[str]] = {}  # points at the same place share one label
        for lab, f in have:
            x = f[f"{key}_ms" if key == "latency" else "energy_mj"]
            if x is None:
                continue
            method = f[f"{key}_method"] or "?"
            st = style.get(method, modeled)
            ax.scatter([x], [f["accuracy"]], s=60, label=None if method in seen else method, **st)
            seen.add(method)
            groups.setdefault((float(f"{x:.3g}"), round(f["accuracy"])), []).append(lab)
        for (x, y), labs in groups.items():
            ax.annotate(", ".join(labs), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        xs = [f[f"{key}_ms" if key == "latency" else "energy_mj"] for _, f in have]
        xs = [x for x in xs if x]
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{key} ({unit})")
        ax.set_ylabel(ylabel)
        ax.set_title(f"accuracy vs {key}")
        ax.grid(True, alpha=0.3)
        ax.margins(0.15)
        if seen:
            ax.legend(title="method", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return left_out


def write(entries, out: str | os.PathLike | None, plot_path: str | os.PathLike | None = None) -> str:
    """Render (Markdown unless ``out`` ends in .html/.htm), write to ``out`` if given, and
    draw the plot; returns the rendered text."""
    rel_plot = None
    if plot_path is not None:
        plot(entries, plot_path)
        rel_plot = os.path.relpath(plot_path, Path(out).parent) if out else str(plot_path)
    fmt = "md"
    if out is not None:
        ext = Path(out).suffix.lower()
        if ext in (".html", ".htm"):
            fmt = "html"
        elif ext not in (".md", ".markdown"):
            raise UsageError(f"{out}: the report is Markdown (.md) or HTML (.html), not {ext or 'no extension'!r}")
    text = html_report(entries, plot=rel_plot) if fmt == "html" else markdown(entries, plot=rel_plot)
    if out is not None:
        Path(out).write_text(text)
    return text


def job_summary_markdown(summary: dict) -> str:
    """summary.md of a run-config job: candidates with status, figures and reasons."""
    lines = [f"# optc run-config: {summary['name']}", "",
             f"Job `{summary['job']}`, model `{summary['model']}`; {len(summary['candidates'])} candidates in "
             f"{summary['elapsed_s']:.0f} s" + (f" (time budget {summary['time_budget_s']:g} s)"
                                                if summary.get("time_budget_s") else "") + ".", "",
             "Budgets: " + (", ".join(f"{k} {v}" for k, v in summary["budgets"].items()) or "none") + ". "
             f"Best = lowest {' then '.join(summary['select']['order'])} (ties within "
             f"{100 * summary['select']['tie_tolerance']:g}%).", ""]
    if summary["best"]:
        lines += [f"**Best: {summary['best']}** -> `{summary['best_package']}`", ""]
    else:
        lines += ["**No candidate met the budgets.**", ""]
    cols = ("candidate", "status", *COLUMNS[1:])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary["candidates"]:
        status = r["status"] + (" ★" if r["name"] == summary["best"] else "")
        if r.get("report") and Path(r["report"]).is_file():
            c = cells(r["name"], load_report(r["report"]))
            c["pipeline"] = f"`{c['pipeline']}`"
        else:
            c = {k: "—" for k in COLUMNS} | {"target": r["target"], "pipeline": f"`{r['pipeline']}`"}
        lines.append("| " + " | ".join(_md_escape(x) for x in [r["name"], status, *(c[k] for k in COLUMNS[1:])]) + " |")
    lines += ["", "## Notes", ""]
    for r in summary["candidates"]:
        lines.append(f"- **{r['name']}** ({r['status']}): {r['note'] or 'all budgets met'}")
    lines += ["", METHODS_TEXT]
    return "\n".join(lines) + "\n"

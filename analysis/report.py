"""The report: every registered method on one zoo, α chosen on validation (docs/design.md, Analysis definitions), with
per-task accuracy, normalized accuracy, NAI and SAR_avg, the zero-shot and fine-tuned
references, and the SAR–NAI correlation (Marczak et al., ICML 2025, Table 1 and Fig. 3).

``build_report`` computes it (store-backed, so a rerun only evaluates what is missing);
``write_report`` writes ``results.json`` (layout below) and a self-contained ``report.html``
(plotly.js embedded, no CDN).

results.json: {"tasks": [...], "zero_shot": {task: acc}, "finetuned": {task: acc},
"methods": {name: {"params": {...}, "alpha": a, "test_acc": {task: acc}, "val_acc": {task: acc},
"normalized": {task: x}, "nai": {task: x}, "sar_avg": {task: x}}},
"correlation": {"pearson": r, "pearson_p": p, "spearman": rho, "spearman_p": p, "n": n},
"k_m_rule": {"rule": "figure" | "eq6", "value": threshold or ε},
"points": {"set": label, "methods": [...]}}

SAR uses one k_M rule (``analysis.sar.K_RULES``; default: the figure rule that reproduces
Fig. 3a). The correlation pools one method set of ``analysis.correlation.POINT_SETS`` (default:
Task Arithmetic and Iso-C, as Fig. 3a), built by ``sar_nai_points`` like the Alignment view's.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures
from analysis.correlation import DEFAULT_POINT_SET, sar_nai_correlation, sar_nai_points, set_methods
from analysis.evaluation import Evaluator
from analysis.metrics import binomial_se, mean_se
from analysis.sar import DEFAULT_RULE, rule_value, sar_average, sar_table
from analysis.spectra import common_boundary, spectra
from merging.io import write_text_atomic
from merging.progress import Progress, silent
from merging.registry import all_methods, get_method

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["method", "accuracy", "normalized", "alpha", "sar_avg"]


@dataclass
class Report:
    """Everything the report shows: the JSON results and the frames behind the figures."""

    results: dict[str, Any]
    summary: pd.DataFrame  # one row per method plus zero-shot and fine-tuned (percent)
    sar: pd.DataFrame  # sar_table rows of every method
    points: pd.DataFrame  # method, task, sar_avg, nai (the correlation's points)
    spectra: pd.DataFrame  # tasks, TA sum and the spectral methods, every matrix layer
    boundary: pd.DataFrame  # Iso-CTS common/task boundary at its default fraction
    title: str = "Isoscope report"


def _by_task(frame: pd.DataFrame, split: str, column: str) -> dict[str, float]:
    part = frame[frame["split"] == split]
    return dict(zip(part["task"], part[column].astype(float)))


def _method_entry(ev: Evaluator, name: str, rule: str, value: float) -> tuple[dict[str, Any], pd.DataFrame]:
    params = get_method(name).resolve(None)
    table, choice = ev.table(name, params)
    sar = sar_table(ev.decompositions, name, params, value, rule)
    avg = sar_average(sar)
    entry = {"params": params, "alpha": choice.alpha, "test_acc": _by_task(table, "test", "accuracy"),
             "val_acc": _by_task(table, "val", "accuracy"), "normalized": _by_task(table, "test", "normalized"),
             "nai": _by_task(table, "test", "nai"), "sar_avg": dict(zip(avg["task"], avg["sar_avg"].astype(float)))}
    log.info("%s: α = %g, test %.1f%% (%d val points searched)", name, choice.alpha,
             100 * sum(entry["test_acc"].values()) / len(entry["test_acc"]), choice.evaluations)
    return entry, sar


def _mean(values: dict[str, float]) -> float:
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _se(accuracies: dict[str, float], sizes: dict[str, int | None]) -> float:
    """Standard error (%) of the mean test accuracy of tasks measured on samples of ``sizes``."""
    return 100 * mean_se([binomial_se(accuracies[t], sizes.get(t)) for t in accuracies])


def summary_table(results: dict[str, Any]) -> pd.DataFrame:
    """Per method: average absolute and normalized test accuracy (%), chosen α and SAR_avg;
    plus the zero-shot and fine-tuned rows. When the test accuracies were measured on samples
    (``results["sample_sizes"]``), ``accuracy_se`` follows ``accuracy``: the standard error of the
    average, in the same percent."""
    summary = _summary_rows(results)
    sizes = results.get("sample_sizes") or {}
    if not any(sizes.values()):
        return summary
    accuracies = [results["zero_shot"], results["finetuned"], *(e["test_acc"] for e in results["methods"].values())]
    summary.insert(2, "accuracy_se", [_se(a, sizes) for a in accuracies])
    return summary


def _summary_rows(results: dict[str, Any]) -> pd.DataFrame:
    ft = results["finetuned"]
    rows = [{"method": "zero-shot", "accuracy": 100 * _mean(results["zero_shot"]),
             "normalized": 100 * _mean({t: results["zero_shot"][t] / ft[t] for t in ft if ft[t]}),
             "alpha": None, "sar_avg": None},
            {"method": "fine-tuned", "accuracy": 100 * _mean(ft), "normalized": 100.0, "alpha": None, "sar_avg": None}]
    for name, entry in results["methods"].items():
        rows.append({"method": get_method(name).display_name, "accuracy": 100 * _mean(entry["test_acc"]),
                     "normalized": 100 * _mean(entry["normalized"]), "alpha": entry["alpha"],
                     "sar_avg": _mean(entry["sar_avg"])})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _points(results: dict[str, Any], methods: Sequence[str]) -> pd.DataFrame:
    """The correlation's points over ``methods``, from the per-method entries of ``results``."""
    entries = results["methods"]
    avg = pd.DataFrame([(n, t, v) for n, e in entries.items() for t, v in e["sar_avg"].items()],
                       columns=["method", "task", "sar_avg"])
    nai = pd.DataFrame([(n, t, v) for n, e in entries.items() for t, v in e["nai"].items()],
                       columns=["method", "task", "nai"])
    points = sar_nai_points(avg, nai, methods)
    return points.assign(method=points["method"].map(lambda m: get_method(m).display_name))


def build_report(ev: Evaluator, methods: Sequence[str] | None = None, eps: float | None = None,
                 progress: Progress | None = None, rule: str = DEFAULT_RULE,
                 point_set: str = DEFAULT_POINT_SET) -> Report:
    """Evaluate ``methods`` (default: every registered one) on ``ev``'s zoo (see module doc).
    ``eps`` is the value of the k_M ``rule`` (None: that rule's default); the correlation pools
    the methods of the set ``point_set`` (a label of ``POINT_SETS``) that were evaluated."""
    report = progress or silent
    names = list(methods) if methods is not None else list(all_methods())
    value = rule_value(rule, eps)
    pooled = [m for m in set_methods(point_set) if m in names]
    report(0.0, "zero-shot and fine-tuned references")
    results: dict[str, Any] = {"tasks": list(ev.tasks), "zero_shot": ev.zero_shot("test"),
                               "finetuned": ev.finetuned("test"), "methods": {},
                               "max_images": ev.zoo.max_images, "sample_sizes": ev.sample_sizes("test"),
                               "k_m_rule": {"rule": rule, "value": value},
                               "points": {"set": point_set, "methods": pooled}}
    sars = []
    for i, name in enumerate(names):
        report(0.05 + 0.9 * i / len(names), f"{get_method(name).display_name}: choosing α on validation")
        results["methods"][name], sar = _method_entry(ev, name, rule, value)
        sars.append(sar)
    points = _points(results, pooled)
    results["correlation"] = sar_nai_correlation(points)
    report(0.96, "spectra")
    spectral = {n: None for n in names if get_method(n).spectral}
    frame = spectra(ev.decompositions, spectral)
    fraction = all_methods()["iso_cts"].defaults()["common_fraction"] if "iso_cts" in all_methods() else 0.8
    boundary = common_boundary(ev.decompositions, fraction)
    report(1.0, "report ready")
    return Report(results=results, summary=summary_table(results), sar=pd.concat(sars, ignore_index=True),
                  points=points, spectra=frame, boundary=boundary, title=f"Isoscope report · {ev.zoo.name}")


def _json_safe(value: Any) -> Any:
    """NaN/Inf become null (JSON has no NaN); containers recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_summary(rep: Report) -> str:
    """The summary table and the correlation as plain text (what the CLI prints)."""
    table = rep.summary.to_string(index=False, na_rep="–", float_format=lambda x: f"{x:.3f}"
                                  if abs(x) < 10 else f"{x:.1f}")
    c, pooled = rep.results["correlation"], rep.results["points"]["methods"]
    names = ", ".join(get_method(m).display_name for m in pooled)
    sampled = rep.results.get("max_images")
    note = (f"\n\naccuracy_se: one binomial standard error of the average test accuracy (%), measured on a "
            f"stratified sample of at most {sampled} images per task") if sampled and "accuracy_se" in rep.summary else ""
    return (f"{table}{note}\n\nSAR_avg vs NAI over tasks × {names} (n = {c['n']}): Pearson r = {c['pearson']:.3f} "
            f"(p = {c['pearson_p']:.2g}), Spearman ρ = {c['spearman']:.3f} (p = {c['spearman_p']:.2g})")


def _figures(rep: Report) -> list:
    sar = rep.sar.assign(method=rep.sar["method"].map(lambda m: get_method(m).display_name))
    figs = [figures.method_bars(rep.summary[~rep.summary["method"].isin(["zero-shot", "fine-tuned"])]),
            figures.sar_nai_scatter(rep.points, rep.results["correlation"]), figures.sar_avg_bars(sar_average(sar))]
    if "iso_cts" in set(rep.sar["method"]):
        figs.append(figures.sar_heatmap(sar, get_method("iso_cts").display_name))
    layers = list(dict.fromkeys(rep.spectra["layer"]))
    if layers:
        layer = layers[len(layers) // 2]
        row = rep.boundary[rep.boundary["layer"] == layer].iloc[0].to_dict()
        figs += [figures.spectrum_figure(rep.spectra, layer, row), figures.energy_figure(rep.spectra, layer, row)]
    return figs


def render_html(rep: Report) -> str:
    """A self-contained HTML page: summary table, correlation and figures (plotly.js inlined once)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(_figures(rep))]
    table = rep.summary.to_html(index=False, na_rep="–", float_format=lambda x: f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")
    text = html.escape(format_summary(rep).split("\n\n")[-1])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
            f"<h1>{html.escape(rep.title)}</h1><p>Tasks: {html.escape(', '.join(rep.results['tasks']))}. "
            "Accuracy in %, test split, α chosen on validation.</p>"
            f"{table}<p>{text}</p>{''.join(parts)}</body></html>")


def write_report(rep: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.html`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "results.json", out / "report.html"
    write_text_atomic(json_path, json.dumps(_json_safe(rep.results), indent=2))
    write_text_atomic(html_path, render_html(rep))
    return json_path, html_path


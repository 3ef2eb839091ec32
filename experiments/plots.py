"""The report's plots: plain rows / dicts in, one PNG out (matplotlib, Agg backend, written atomically).

Every function takes plain data (``summary.json`` rows, or aggregated rows of the same shape) and an
output path, draws one figure with 95% intervals as error bars or bands, writes it atomically and
returns the path. Input with nothing to draw raises :class:`NothingToPlot` naming what was missing;
:func:`write_run_plots` turns that into a skip reason for the report.

- :func:`plot_probe_metrics`: each concept's main metric (balanced accuracy, R2 for scalars) by method,
  baselines included;
- :func:`plot_accuracy_vs_selectivity`: every probe's held-out score against its selectivity;
- :func:`plot_imagination`: a probe's score on real latents (k = 0) and on latents imagined k steps ahead;
- :func:`plot_planning`: success and violation rate per planner x model x probe method;
- :func:`plot_open_loop`: the dynamics model's open-loop accuracy vs k against copying the last frame;
- :func:`plot_by_checkpoint`: per concept, a heatmap of the linear probe's score over site x training step
  (McGrath et al. 2022's what-when-where view; rows of ``probes/by_checkpoint.csv``).

Axes of R2 are clipped below at -1 (an untrained probe's R2 interval can reach -100); an interval that
leaves the axis is drawn to its edge.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (and work without a display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worlds.atomic import atomic_write_bytes  # noqa: E402

BASELINES = ("prior", "random_model", "observation", "history")
SITELESS = ("prior", "observation", "history")
"""Baselines that read no latent site of the model (their rows' site is a placeholder: ``none``, ``history``, ...)."""


def base_method(label: str) -> str:
    """The method or baseline a plot label names: ``run/observation:mlp@feat`` -> ``observation``
    (a baseline fitted with another probe method is ``<baseline>:<method>``, :func:`probes.harness.baseline_name`)."""
    return label.split("@")[0].split("/")[-1].split(":")[0]


IMAGINED = {"test": 0, "imagined_k1": 1, "imagined_k5": 5, "imagined_k15": 15}
R2_FLOOR = -1.0


class NothingToPlot(ValueError):
    """The input holds nothing this plot can draw (the message says what was missing)."""


def save_figure(fig: Any, path: str | Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically; the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _err(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Asymmetric error bars ``[2 n]`` from ``estimate, ci_low, ci_high`` (0 where an end is missing)."""
    lo = [r["estimate"] - r["ci_low"] if _finite(r.get("ci_low")) else 0.0 for r in rows]
    hi = [r["ci_high"] - r["estimate"] if _finite(r.get("ci_high")) else 0.0 for r in rows]
    return np.clip(np.array([lo, hi], dtype=float), 0.0, None)


def main_metric(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Per concept, the headline metric present in ``rows``: balanced accuracy, else R2."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        seen.setdefault(r["concept"], set()).add(r["metric"])
    return {c: "balanced_accuracy" if "balanced_accuracy" in m else "r2" for c, m in seen.items() if m & {"balanced_accuracy", "r2"}}


def _pick(rows: Iterable[Mapping[str, Any]], split: str, sites: Mapping[str, str] | None) -> dict[tuple[str, str], dict]:
    """``{(concept, label): row}`` of each concept's main metric on ``split``.

    With ``sites`` (concept -> site, e.g. the ontology's choice) every method is read at that site
    (baselines that have no site of their own at any site) and labelled by its name; without, every
    method x site is its own label ``method@site``.
    """
    rows = [r for r in rows if _finite(r.get("estimate"))]
    metric = main_metric(rows)
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        c = r["concept"]
        if r["split"] != split or metric.get(c) != r["metric"]:
            continue
        if sites is None:
            out.setdefault((c, f"{r['method']}@{r['site']}"), dict(r))
        elif c in sites and (r["site"] == sites[c] or base_method(r["method"]) in SITELESS):
            out.setdefault((c, r["method"]), dict(r))
    return out


def methods_order(labels: Iterable[str]) -> list[str]:
    """Probe methods first (sorted), then the baselines in a fixed order."""
    labels = set(labels)

    return sorted((m for m in labels if base_method(m) not in BASELINES)) + sorted(
        (m for m in labels if base_method(m) in BASELINES), key=lambda m: (BASELINES.index(base_method(m)), m))


def plot_probe_metrics(rows: Sequence[Mapping[str, Any]], path: str | Path, *, split: str = "test",
                       sites: Mapping[str, str] | None = None, title: str | None = None) -> Path:
    """Grouped bars: per concept (x) the main metric of every method (bars) on ``split``, 95% CIs.

    ``rows``: dicts with method, site, concept, split, metric, estimate, ci_low, ci_high. One panel for
    the concepts scored by balanced accuracy, one for those scored by R2.
    """
    picked = _pick(rows, split, sites)
    if not picked:
        raise NothingToPlot(f"no balanced_accuracy or r2 rows on split {split!r}")
    metric = main_metric(r for r in rows if _finite(r.get("estimate")))
    panels = [m for m in ("balanced_accuracy", "r2") if any(metric[c] == m for c, _ in picked)]
    labels = methods_order({lab for _, lab in picked})
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.1 * len(metric) + 2), 3.6 * len(panels)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, m in zip(axes[:, 0], panels):
        concepts = sorted({c for c, _ in picked if metric[c] == m})
        width = 0.8 / max(1, len(labels))
        for j, lab in enumerate(labels):
            xs = [i for i, c in enumerate(concepts) if (c, lab) in picked]
            if not xs:
                continue
            rs = [picked[(concepts[i], lab)] for i in xs]
            ax.bar(np.array(xs) + (j - (len(labels) - 1) / 2) * width, [r["estimate"] for r in rs], width,
                   yerr=_err(rs), capsize=2, label=lab, color=colors(j % 10), alpha=0.9 if base_method(lab) not in BASELINES else 0.45)
        ax.set_xticks(range(len(concepts)), concepts, rotation=30, ha="right")
        ax.set_ylabel(m)
        ax.set_ylim((0.0, 1.05) if m == "balanced_accuracy" else (max(R2_FLOOR, ax.get_ylim()[0]), 1.05))
        ax.axhline(0.5 if m == "balanced_accuracy" else 0.0, color="grey", lw=0.7, ls=":")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(title or f"probe scores on {split} (95% CI)")
    return save_figure(fig, path)


def plot_accuracy_vs_selectivity(rows: Sequence[Mapping[str, Any]], path: str | Path, *, split: str = "test",
                                 title: str | None = None) -> Path:
    """Scatter: each (method, site, concept)'s main metric on ``split`` (y) against its selectivity (x), 95% CIs."""
    rows = [r for r in rows if _finite(r.get("estimate"))]
    metric = main_metric(rows)
    score = {(r["method"], r["site"], r["concept"]): r for r in rows
             if r["split"] == split and metric.get(r["concept"]) == r["metric"]}
    sel = {(r["method"], r["site"], r["concept"]): r for r in rows if r["metric"] == "selectivity"}
    keys = sorted(set(score) & set(sel))
    if not keys:
        raise NothingToPlot("no probe has both a selectivity row and a balanced_accuracy/r2 row "
                            f"on split {split!r} (was probes.control off?)")
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    colors = plt.get_cmap("tab10")
    for j, method in enumerate(methods_order({k[0] for k in keys})):
        ks = [k for k in keys if k[0] == method]
        ys, xs = [score[k] for k in ks], [sel[k] for k in ks]
        ax.errorbar([r["estimate"] for r in xs], [r["estimate"] for r in ys], xerr=_err(xs), yerr=_err(ys),
                    fmt="o", ms=4, capsize=2, lw=0.8, color=colors(j % 10), label=method)
    ax.set_xlabel("selectivity (score minus control-task score)")
    ax.set_ylabel("held-out score (balanced accuracy or R2)")
    ax.set_ylim(max(R2_FLOOR, ax.get_ylim()[0]), 1.05)
    ax.axvline(0.0, color="grey", lw=0.7, ls=":")
    ax.legend(fontsize=7)
    ax.set_title(title or "accuracy vs selectivity (95% CI)")
    return save_figure(fig, path)


def plot_imagination(rows: Sequence[Mapping[str, Any]], path: str | Path, *, sites: Mapping[str, str] | None = None,
                     title: str | None = None) -> Path:
    """Lines: per concept (and method), the main metric at k = 0 (split ``test``) and on imagined latents k = 1, 5, 15.

    Only probes that have at least one imagined split are drawn. ``sites`` as in :func:`plot_probe_metrics`.
    """
    rows = [r for r in rows if _finite(r.get("estimate"))]
    metric = main_metric(rows)
    series: dict[tuple[str, str, str], dict[int, dict]] = {}
    for r in rows:
        c = r["concept"]
        if r["split"] not in IMAGINED or metric.get(c) != r["metric"] or base_method(r["method"]) in BASELINES:
            continue
        if sites is not None and sites.get(c) != r["site"]:
            continue
        series.setdefault((c, r["method"], r["site"]), {})[IMAGINED[r["split"]]] = r
    series = {k: v for k, v in series.items() if any(h > 0 for h in v)}
    if not series:
        raise NothingToPlot("no imagined_k* rows (was probes.imagination off, or no held-out episode long enough?)")
    panels = [m for m in ("balanced_accuracy", "r2") if any(metric[c] == m for c, _, _ in series)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, 3.8 * len(panels)), squeeze=False)
    colors = plt.get_cmap("tab20")
    for ax, m in zip(axes[:, 0], panels):
        for j, key in enumerate(sorted(k for k in series if metric[k[0]] == m)):
            pts = sorted(series[key].items())
            ks = np.array([k for k, _ in pts])
            est = np.array([r["estimate"] for _, r in pts])
            err = _err([r for _, r in pts])
            ax.plot(ks, est, "o-", ms=3, color=colors(j % 20), label=f"{key[0]} ({key[1]}@{key[2]})")
            ax.fill_between(ks, est - err[0], est + err[1], color=colors(j % 20), alpha=0.15)
        ax.set_xticks(sorted(IMAGINED.values()))
        ax.set_xlabel("imagination horizon k (0: filtered from real observations)")
        ax.set_ylabel(m)
        ax.set_ylim((0.0, 1.05) if m == "balanced_accuracy" else (max(R2_FLOOR, ax.get_ylim()[0]), 1.05))
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(title or "probe score vs imagination horizon (95% CI)")
    return save_figure(fig, path)


def planning_label(r: Mapping[str, Any]) -> str:
    """``planner / model / probe method`` of a planning row (parts that are null left out)."""
    return " / ".join(str(r[k]) for k in ("planner", "model", "probe_method") if r.get(k) is not None)


def plot_planning(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Horizontal bars: success rate and violation rate of each planner x model x probe method, 95% CIs.

    ``rows``: ``summary["planning"]`` rows, whose rates are ``{estimate, ci_low, ci_high}`` dicts; a
    ``label`` key, where present, replaces the planner / model / probe method label.
    """
    rows = [r for r in rows if isinstance(r.get("success_rate"), Mapping) and _finite(r["success_rate"].get("estimate"))]
    if not rows:
        raise NothingToPlot("no planning rows with a success rate (was plan.reward empty?)")
    labels = [r.get("label") or planning_label(r) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 0.45 * len(rows) + 1.6), sharey=True)
    y = np.arange(len(rows))
    for ax, key, color in zip(axes, ("success_rate", "violation_rate"), ("tab:green", "tab:red")):
        vals = [r.get(key) if isinstance(r.get(key), Mapping) and _finite(r[key].get("estimate")) else None for r in rows]
        present = [i for i, v in enumerate(vals) if v is not None]
        ax.barh(y[present], [vals[i]["estimate"] for i in present], xerr=_err([vals[i] for i in present]),
                capsize=3, color=color, alpha=0.75)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(key.replace("_", " "))
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title or "planning in the real world (95% CI)")
    return save_figure(fig, path)


OPEN_LOOP_SERIES = (("model", "model"), ("copy_last_frame", "copy last frame"),
                    ("model_changed_cells", "model, changed cells"), ("copy_changed_cells", "copy, changed cells"),
                    ("model_balanced", "model, macro recall"), ("copy_balanced", "copy, macro recall"))


def plot_open_loop(open_loop: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Lines: open-loop per-cell accuracy (MSE for continuous observations) vs k, the model against copying the last
    frame, 95% CI bands; dotted
    (symbolic runs whose ``open_loop.json`` has it): the macro recall over cell classes (balanced accuracy).

    ``open_loop``: ``{label: open_loop.json dict}`` (one label per run compared); a dict whose
    ``skipped`` says why it has no numbers is left out.
    """
    usable = {lab: ol for lab, ol in open_loop.items() if isinstance(ol, Mapping) and ol.get("model")}
    if not usable:
        reasons = "; ".join(str(ol.get("skipped")) for ol in open_loop.values() if isinstance(ol, Mapping) and ol.get("skipped"))
        raise NothingToPlot(f"no open-loop numbers{': ' + reasons if reasons else ''}")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.get_cmap("tab10")
    for j, (lab, ol) in enumerate(sorted(usable.items())):
        for key, name, style in [(k, n, ("-" if "copy" not in k else "--") if "balanced" not in k
                                  else (":" if "copy" not in k else "-.")) for k, n in OPEN_LOOP_SERIES]:
            if not ol.get(key):
                continue
            pts = sorted((int(k), e) for k, e in ol[key].items() if _finite(e.get("estimate")))
            ks = np.array([k for k, _ in pts])
            est = np.array([e["estimate"] for _, e in pts])
            err = _err([e for _, e in pts])
            color = colors((2 * j + ("changed" in key)) % 10)
            ax.plot(ks, est, style, marker="o", ms=3, color=color, label=f"{lab}: {name}" if len(usable) > 1 else name)
            ax.fill_between(ks, est - err[0], est + err[1], color=color, alpha=0.12)
    metric = next(iter(usable.values())).get("metric", "accuracy")
    ax.set_xticks(sorted({int(k) for ol in usable.values() for k in ol["model"]}))
    ax.set_xlabel("steps imagined open loop (k)")
    balanced = any(ol.get("model_balanced") for ol in usable.values())
    ax.set_ylabel(f"per-cell {metric}" + (" / macro recall" if balanced else ""))
    ax.legend(fontsize=7)
    ax.set_title(title or "open-loop prediction vs copying the last frame (95% CI)")
    return save_figure(fig, path)


def plot_by_checkpoint(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Per concept a heatmap: rows = site, columns = training step, colour and printed value = the probe's score.

    ``rows``: dicts with step, site, concept, metric, estimate (ci_low, ci_high unused: they are in the CSV).
    Colour runs from chance to perfect: balanced accuracy 0.5 -> 1, R2 0 -> 1 (lower values get the lowest
    colour; the printed value is exact). The last column is the final model. All concepts in one grid.
    """
    rows = [r for r in rows if r.get("metric") in ("balanced_accuracy", "r2")]
    if not rows:
        raise NothingToPlot("no by-checkpoint rows (probes.by_checkpoint off, or a run made before it existed)")
    concepts = sorted({r["concept"] for r in rows})
    sites = list(dict.fromkeys(r["site"] for r in rows))  # the order the probe stage wrote them in
    steps = sorted({int(r["step"]) for r in rows})
    ncols = min(4, len(concepts))
    nrows = math.ceil(len(concepts) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(0.75 * len(steps) * ncols + 1.2 * ncols + 1.0,
                                                    (0.42 * len(sites) + 1.1) * nrows + 0.6), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for ax in axes.flat[len(concepts):]:
        ax.set_axis_off()
    for ax, concept in zip(axes.flat, concepts):
        cell = {(r["site"], int(r["step"])): r for r in rows if r["concept"] == concept}
        metric = next(r["metric"] for r in cell.values())
        grid = np.array([[cell[(s, t)]["estimate"] if (s, t) in cell and _finite(cell[(s, t)]["estimate"]) else np.nan
                          for t in steps] for s in sites], dtype=float)
        low = 0.5 if metric == "balanced_accuracy" else 0.0
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=1.0, aspect="auto")
        for i in range(len(sites)):
            for j in range(len(steps)):
                v = grid[i, j]
                text = "-" if np.isnan(v) else f"{v:.2f}"
                dark = np.isnan(v) or (v - low) / (1.0 - low) < 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark and not np.isnan(v) else "black")
        ax.set_xticks(range(len(steps)), [f"{t}\n(final)" if j == len(steps) - 1 else str(t) for j, t in enumerate(steps)],
                      fontsize=7)
        ax.set_yticks(range(len(sites)), sites, fontsize=7)
        ax.set_title(f"{concept} ({'bal. acc.' if metric == 'balanced_accuracy' else 'R2'})", fontsize=8)
    for ax in axes.flat[:len(concepts)]:
        ax.set_xlabel("training step", fontsize=7)
    fig.suptitle(title or "linear probe score by site x training step (test; colour: chance -> 1)", fontsize=9)
    return save_figure(fig, path)


PLOT_FILES = {"probe_metrics": "probe_metrics.png", "accuracy_vs_selectivity": "accuracy_vs_selectivity.png",
              "imagination": "imagination.png", "planning": "planning.png", "open_loop": "open_loop.png",
              "by_checkpoint": "by_checkpoint.png"}
PLOT_TITLES = {"probe_metrics": "Probe score by method per concept", "accuracy_vs_selectivity": "Accuracy vs selectivity",
               "imagination": "Score vs imagination horizon", "planning": "Planning success and violations",
               "open_loop": "Dynamics: open-loop prediction vs k", "by_checkpoint": "Where and when: score by site x training step"}


def write_run_plots(summary: Mapping[str, Any], folder: str | Path, *, label: str | None = None) -> dict[str, Path | str]:
    """Every plot of one run's ``summary`` into ``folder``: ``{name: png path, or the reason it was skipped}``."""
    folder = Path(folder)
    probes = summary.get("probes") or []
    sites = {c: v["site"] for c, v in (summary.get("ontology") or {}).items()} or None
    jobs = {
        "probe_metrics": lambda p: plot_probe_metrics(probes, p, sites=sites),
        "accuracy_vs_selectivity": lambda p: plot_accuracy_vs_selectivity(probes, p),
        "imagination": lambda p: plot_imagination(probes, p, sites=sites),
        "planning": lambda p: plot_planning(summary.get("planning") or [], p),
        "open_loop": lambda p: plot_open_loop({label or "run": (summary.get("dynamics") or {}).get("open_loop") or {}}, p),
        "by_checkpoint": lambda p: plot_by_checkpoint(summary.get("probes_by_checkpoint") or [], p),
    }
    return run_plot_jobs(jobs, folder)


def run_plot_jobs(jobs: Mapping[str, Any], folder: Path) -> dict[str, Path | str]:
    """Call each ``job(path)``; a :class:`NothingToPlot` becomes its reason (and a stale PNG is removed)."""
    out: dict[str, Path | str] = {}
    for name, job in jobs.items():
        path = folder / PLOT_FILES[name]
        try:
            out[name] = job(path)
        except NothingToPlot as e:
            path.unlink(missing_ok=True)
            out[name] = str(e)
    return out


def markdown_plots(plots: Mapping[str, Path | str], base: str | Path) -> list[str]:
    """Report lines embedding each plot by a link relative to ``base`` (a skipped one says why)."""
    if not plots:
        return []
    lines = ["## Plots", ""]
    for name, p in plots.items():
        if isinstance(p, Path):
            rel = Path(p).resolve().relative_to(Path(base).resolve()).as_posix()
            lines += [f"### {PLOT_TITLES.get(name, name)}", "", f"![{name}]({rel})", ""]
        else:
            lines += [f"- {PLOT_TITLES.get(name, name)}: not drawn ({p})."]
    return lines + [""]

"""``ontolab compare RUN_DIR [RUN_DIR ...] [out=DIR]``: one comparison of finished runs, rendered to a folder.

For every run folder (one holding ``summary.json``) the comparison shows, per concept, every probe
method and baseline at the site the run's ontology chose for that concept, with 95% intervals
(test, out-of-distribution, imagined k = 5, selectivity), the planning rows, and the plots of
:mod:`experiments.plots` with one series per run x method. It writes ``DIR/report.md``,
``DIR/compare.csv`` (every probe row of every run, with a ``run`` column) and ``DIR/plots/*.png``.
Each run's score-by-site-x-training-step heatmap (``probes/by_checkpoint.csv``) is drawn as
``DIR/plots/by_checkpoint-<run>.png`` under "Where and when". ``out`` defaults to ``compare`` in the
current folder. Runs are labelled by their folder names (the parent folder is added where two names clash).

The helpers :func:`chosen_site_rows` and :func:`leaderboard_markdown` are shared with
:mod:`experiments.sweep`, which renders aggregated rows of the same shape.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from experiments.config import ConfigError
from experiments.plots import (BASELINES, NothingToPlot, main_metric, markdown_plots, planning_label,
                               plot_accuracy_vs_selectivity, plot_by_checkpoint, plot_imagination, plot_open_loop,
                               plot_planning, plot_probe_metrics, run_plot_jobs)
from experiments.provenance import atomic_write_text

CHOSEN = "chosen"
"""Site name given to rows read at the ontology's chosen site (sites differ per concept and per run)."""
ANYWHERE = ("prior", "observation", "history")
"""Baselines that do not read a latent site: their row at any site is used."""


def chosen_site_rows(rows: Iterable[Mapping[str, Any]], sites: Mapping[str, str], label: str | None = None) -> list[dict]:
    """The rows read at each concept's chosen site (``sites``: concept -> site), with site ``"chosen"``.

    Methods are renamed ``label/method`` when ``label`` is given, so that rows of several runs (or
    sweep groups) can be drawn in one plot. Rows of concepts missing from ``sites`` are dropped.
    """
    out, seen = [], set()
    for r in rows:
        c = r["concept"]
        if c not in sites or not (r["site"] == sites[c] or r["method"] in ANYWHERE):
            continue
        key = (r["method"], c, r["split"], r["metric"])
        if key in seen:  # a baseline without a site of its own: keep one row
            continue
        seen.add(key)
        out.append({**r, "site": CHOSEN, "method": f"{label}/{r['method']}" if label else r["method"]})
    return out


def _fmt(r: Mapping[str, Any] | None) -> str:
    if not r or r.get("estimate") is None:
        return "-"
    lo, hi = r.get("ci_low"), r.get("ci_high")
    n = f" (n={r['n_seeds']})" if "n_seeds" in r else ""
    if lo is None or hi is None:
        return f"{r['estimate']:.3f}{n}"
    return f"{r['estimate']:.3f} [{lo:.3f}, {hi:.3f}]{n}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows])


def leaderboard_markdown(rows_by_label: Mapping[str, Sequence[Mapping[str, Any]]],
                         chosen: Mapping[str, Mapping[str, str]] | None = None, label_name: str = "run") -> list[str]:
    """Per concept, a table of every label x method (baselines last) at the chosen site.

    ``rows_by_label``: ``{label: rows}`` already passed through :func:`chosen_site_rows` (without
    ``label``); ``chosen``: ``{label: {concept: method}}`` marks the ontology's choice with ``*``.
    Columns: the concept's main metric on test, ood and imagined k = 5, and selectivity.
    """
    all_rows = [r for rows in rows_by_label.values() for r in rows]
    metric = main_metric(r for r in all_rows if r.get("estimate") is not None)
    lines: list[str] = []
    for concept in sorted(metric):
        table = []
        for label, rows in rows_by_label.items():
            idx = {(r["method"], r["split"], r["metric"]): r for r in rows if r["concept"] == concept}
            methods = sorted({m for m, _, _ in idx if m not in BASELINES}) + [b for b in BASELINES if any(k[0] == b for k in idx)]
            for m in methods:
                star = "*" if (chosen or {}).get(label, {}).get(concept) == m else ""
                table.append([label, m + star, *(_fmt(idx.get((m, s, metric[concept]))) for s in ("test", "ood", "imagined_k5")),
                              _fmt(idx.get((m, "test", "selectivity")))])
        if table:
            lines += [f"### {concept} ({metric[concept]})", "",
                      _table([label_name, "method", "test", "ood", "imagined k=5", "selectivity"], table), ""]
    return lines


def planning_markdown(rows: Sequence[Mapping[str, Any]], label_name: str = "run") -> list[str]:
    """A table of planning rows (their ``run`` key in the first column), rates with their intervals."""
    if not rows:
        return []
    return [_table([label_name, "planner / model / probe method", "success", "violations", "true return"],
                   [[r.get("run", ""), planning_label(r), _fmt(r.get("success_rate")), _fmt(r.get("violation_rate")),
                     _fmt(r.get("mean_true_return"))] for r in rows]), ""]


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names; ``parent/name`` where names clash (then the full path where that clashes too)."""
    names = [p.resolve().name for p in run_dirs]
    counts = Counter(names)
    labels = [f"{p.resolve().parent.name}/{n}" if counts[n] > 1 else n for p, n in zip(run_dirs, names)]
    return labels if len(set(labels)) == len(labels) else [str(p.resolve()) for p in run_dirs]


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} holds no summary.json; give a finished run folder (made by `ontolab run`)")
    return json.loads(path.read_text())


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Render the comparison of ``run_dirs`` into folder ``out``; returns ``out/report.md``."""
    if not run_dirs:
        raise ConfigError("`ontolab compare` needs at least one run folder: ontolab compare RUN_DIR [RUN_DIR ...] [out=DIR]")
    run_dirs = [Path(p) for p in run_dirs]
    summaries = [load_summary(p) for p in run_dirs]  # every folder checked before anything is written
    labels = run_labels(run_dirs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; give a folder for the comparison")
    multi = len(labels) > 1
    by_label, relabelled, plan, open_loop, chosen = {}, [], [], {}, {}
    for label, s in zip(labels, summaries):
        sites = {c: v["site"] for c, v in (s.get("ontology") or {}).items()}
        chosen[label] = {c: v["method"] for c, v in (s.get("ontology") or {}).items()}
        by_label[label] = chosen_site_rows(s.get("probes") or [], sites)
        relabelled += chosen_site_rows(s.get("probes") or [], sites, label if multi else None)
        plan += [{**r, "run": label, "label": f"{label}: {planning_label(r)}" if multi else None} for r in s.get("planning") or []]
        open_loop[label] = (s.get("dynamics") or {}).get("open_loop") or {}
    all_sites = {r["concept"]: CHOSEN for r in relabelled}
    plots = run_plot_jobs({
        "probe_metrics": lambda p: plot_probe_metrics(relabelled, p, sites=all_sites),
        "accuracy_vs_selectivity": lambda p: plot_accuracy_vs_selectivity(relabelled, p),
        "imagination": lambda p: plot_imagination(relabelled, p, sites=all_sites),
        "planning": lambda p: plot_planning(plan, p),
        "open_loop": lambda p: plot_open_loop(open_loop, p),
    }, out / "plots")
    where_when = by_checkpoint_plots(run_dirs, labels, summaries, out / "plots")
    _write_csv(out / "compare.csv", labels, summaries)
    parts = [f"# ontolab compare: {', '.join(labels)}", "",
             "Every probe method and baseline at the site each run's ontology chose for the concept (`*`: the "
             "ontology's method), held-out numbers with 95% bootstrap intervals over episodes. Every row of every "
             "run is in `compare.csv`.", "",
             _table(["run", "folder", "world", "seed", "model"],
                    [[lab, str(p.resolve()), s.get("world"), s.get("seed"), (s.get("dynamics") or {}).get("model")]
                     for lab, p, s in zip(labels, run_dirs, summaries)]), "",
             "## Probe leaderboard per concept", "", *leaderboard_markdown(by_label, chosen)]
    if plan:
        parts += ["## Planning", "", *planning_markdown(plan)]
    parts += markdown_plots(plots, out)
    parts += ["## Where and when", "", "Per run: the linear probe's test score at every site (rows) on every training "
              "snapshot and the final model (columns); rows with 95% CIs in each run's `probes/by_checkpoint.csv`.", ""]
    for label, p in where_when.items():
        parts += [f"### {label}", "", f"![by_checkpoint {label}]({p.resolve().relative_to(out.resolve()).as_posix()})"
                  if isinstance(p, Path) else f"Not drawn ({p}).", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(parts))
    return report


def by_checkpoint_plots(run_dirs: Sequence[Path], labels: Sequence[str], summaries: Sequence[Mapping[str, Any]],
                        folder: Path) -> dict[str, Path | str]:
    """Each run's score-by-site-x-training-step heatmap as ``folder/by_checkpoint-<label>.png``: ``{label: path or
    the reason it was not drawn}``. Rows from ``summary.json``, else from the run's ``probes/by_checkpoint.csv``."""
    from experiments.stages.by_checkpoint import FILE, read_by_checkpoint_csv

    out: dict[str, Path | str] = {}
    for run, label, s in zip(run_dirs, labels, summaries):
        path = folder / f"by_checkpoint-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}.png"
        rows = s.get("probes_by_checkpoint") or read_by_checkpoint_csv(Path(run) / "probes" / FILE)
        try:
            out[label] = plot_by_checkpoint(rows, path, title=f"{label}: linear probe score by site x training step")
        except NothingToPlot as e:
            path.unlink(missing_ok=True)
            out[label] = str(e)
    return out


def _write_csv(path: Path, labels: Sequence[str], summaries: Sequence[Mapping[str, Any]]) -> None:
    cols = ["run", "method", "site", "concept", "split", "metric", "estimate", "ci_low", "ci_high"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for label, s in zip(labels, summaries):
        for r in s.get("probes") or []:
            w.writerow([label, *(r.get(c) for c in cols[1:])])
    atomic_write_text(path, buf.getvalue())


def cmd_compare(args: list[str]) -> int:
    """``ontolab compare RUN_DIR [RUN_DIR ...] [out=DIR]``."""
    out, runs = "compare", []
    for a in args:
        key, sep, value = a.partition("=")
        if not sep:
            runs.append(a)
        elif key == "out" and value:
            out = value
        else:
            raise ConfigError(f"`ontolab compare` takes run folders and out=DIR, got {a!r}")
    report = compare_runs(runs, out)
    print(f"comparison of {len(runs)} run(s): {report}")
    return 0


"""``ontolab compare RUN_DIR [RUN_DIR ...] [out=DIR] [wandb.mode=MODE] [wandb.project=NAME]``: one comparison of
finished runs, rendered to a folder and logged to wandb.

Each folder is a run folder (``ontolab run``: ``summary.json``) or a probe folder (``ontolab probe``:
``results.csv`` with ``harness.json`` or ``ontology/``; see :mod:`experiments.compare_inputs`, which
checks every file before anything is written). For every folder the comparison shows, per concept, every probe
method and baseline at the site the run's ontology chose for that concept, with 95% intervals
(test, out-of-distribution, imagined k = 5, selectivity), the planning rows, and the plots of
:mod:`experiments.plots` with one series per run x method. It writes ``DIR/report.md``,
``DIR/compare.csv`` (every probe row of every run, with a ``run`` column), ``DIR/leaderboard.csv`` (the
leaderboard's rows: run, concept, method, ``chosen``, and estimate / CI of each column) and ``DIR/plots/*.png``.
Each run's score-by-site-x-training-step heatmap (``probes/by_checkpoint.csv``) is drawn as
``DIR/plots/by_checkpoint-<run>.png`` under "Where and when". ``out`` defaults to ``compare`` in the
current folder. Runs are labelled by their folder names (the parent folder is added where two names clash).

:func:`track_compare` logs the folder to one wandb run (job type ``ontolab-compare``) in ``DIR/wandb/``:
``compare.csv`` and ``leaderboard.csv`` as ``wandb.Table`` s (``compare/results``, ``compare/leaderboard``)
and ``plots/*.png`` as ``wandb.Image`` s (``plots/<name>``). As for ``ontolab run``: ``offline`` by default,
``online`` only when asked (an unreachable server falls back to offline with one warning line),
``WANDB_MODE=disabled`` turns it off; ``DIR/tracking.json`` says what happened. A failure to log is a
warning: the folder holds every result.

The helpers :func:`chosen_site_rows` and :func:`leaderboard_markdown` are shared with
:mod:`experiments.sweep`, which renders aggregated rows of the same shape.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from experiments.compare_inputs import load_summary
from experiments.config import ConfigError
from experiments.plots import (NothingToPlot, base_method, main_metric, markdown_plots, methods_order, planning_label,
                               plot_accuracy_vs_selectivity, plot_by_checkpoint, plot_imagination, plot_open_loop,
                               plot_planning, plot_probe_metrics, run_plot_jobs)
from experiments.provenance import atomic_write_text

CHOSEN = "chosen"
"""Site name given to rows read at the ontology's chosen site (sites differ per concept and per run)."""
ANYWHERE = ("prior", "observation", "history")
"""Baselines that do not read a latent site: their row at any site is used."""
BOARD_COLUMNS = ("test", "ood", "imagined_k5", "selectivity", "compression")
"""Leaderboard columns: the concept's main metric on test, ood and imagined k = 5, selectivity and MDL
compression (both on test; compression only where MDL ran, ``probes.mdl``)."""
BOARD_HEADERS = {"test": "test", "ood": "ood", "imagined_k5": "imagined k=5", "selectivity": "selectivity",
                 "compression": "MDL compression"}
MODES = ("offline", "online", "disabled")


def chosen_site_rows(rows: Iterable[Mapping[str, Any]], sites: Mapping[str, str], label: str | None = None) -> list[dict]:
    """The rows read at each concept's chosen site (``sites``: concept -> site), with site ``"chosen"``.

    Methods are renamed ``label/method`` when ``label`` is given, so that rows of several runs (or
    sweep groups) can be drawn in one plot. Rows of concepts missing from ``sites`` are dropped.
    """
    out, seen = [], set()
    for r in rows:
        c = r["concept"]
        if c not in sites or not (r["site"] == sites[c] or base_method(r["method"]) in ANYWHERE):
            continue
        key = (r["method"], c, r["split"], r["metric"])
        if key in seen:  # a baseline without a site of its own: keep one row
            continue
        seen.add(key)
        out.append({**r, "site": CHOSEN, "method": f"{label}/{r['method']}" if label else r["method"]})
    return out


def _fmt(r: Mapping[str, Any] | None) -> str:
    """``markdown.ci`` (NaN as missing: a probe folder's rows come from results.csv, NaN kept) and ``(n=..)`` seeds."""
    from experiments.markdown import ci

    text = ci(dict(r) if r else None)
    return text + (f" (n={r['n_seeds']})" if text != "-" and "n_seeds" in r else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows])


def leaderboard_rows(rows_by_label: Mapping[str, Sequence[Mapping[str, Any]]],
                     chosen: Mapping[str, Mapping[str, str]] | None = None) -> list[dict[str, Any]]:
    """Per concept (sorted), per label, per method (baselines last): ``{label, concept, metric, method, chosen,
    test, ood, imagined_k5, selectivity}``, each of the last four the matching row or ``None``.

    ``rows_by_label``: ``{label: rows}`` already passed through :func:`chosen_site_rows` (without
    ``label``); ``chosen``: ``{label: {concept: method}}``, the ontology's choice (``chosen`` is true there).
    """
    all_rows = [r for rows in rows_by_label.values() for r in rows]
    metric = main_metric(r for r in all_rows if r.get("estimate") is not None)
    board: list[dict[str, Any]] = []
    for concept in sorted(metric):
        for label, rows in rows_by_label.items():
            idx = {(r["method"], r["split"], r["metric"]): r for r in rows if r["concept"] == concept}
            methods = methods_order({m for m, _, _ in idx})
            for m in methods:
                board.append({"label": label, "concept": concept, "metric": metric[concept], "method": m,
                              "chosen": (chosen or {}).get(label, {}).get(concept) == m,
                              **{s: idx.get((m, s, metric[concept])) for s in BOARD_COLUMNS[:3]},
                              **{k: idx.get((m, "test", k)) for k in BOARD_COLUMNS[3:]}})
    return board


def leaderboard_markdown(rows_by_label: Mapping[str, Sequence[Mapping[str, Any]]],
                         chosen: Mapping[str, Mapping[str, str]] | None = None, label_name: str = "run") -> list[str]:
    """Per concept, a table of every label x method (baselines last) at the chosen site (:func:`leaderboard_rows`;
    ``*`` marks the ontology's method). Columns: the concept's main metric on test, ood and imagined k = 5, selectivity,
    and MDL compression when any row has it."""
    board = leaderboard_rows(rows_by_label, chosen)
    cols = [c for c in BOARD_COLUMNS if c != "compression" or any(b["compression"] for b in board)]
    lines: list[str] = []
    for concept in dict.fromkeys(b["concept"] for b in board):
        rows = [b for b in board if b["concept"] == concept]
        lines += [f"### {concept} ({rows[0]['metric']})", "",
                  _table([label_name, "method", *(BOARD_HEADERS[c] for c in cols)],
                         [[b["label"], b["method"] + ("*" if b["chosen"] else ""), *(_fmt(b[c]) for c in cols)]
                          for b in rows]), ""]
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
    _write_leaderboard(out / "leaderboard.csv", leaderboard_rows(by_label, chosen))
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
    keep = set()
    for run, label, s in zip(run_dirs, labels, summaries):
        path = folder / f"by_checkpoint-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}.png"
        keep.add(path.name)
        rows = s.get("probes_by_checkpoint") or read_by_checkpoint_csv(Path(run) / "probes" / FILE)
        try:
            out[label] = plot_by_checkpoint(rows, path, title=f"{label}: linear probe score by site x training step")
        except NothingToPlot as e:
            path.unlink(missing_ok=True)
            out[label] = str(e)
    for stale in folder.glob("by_checkpoint-*.png"):  # runs of an earlier comparison into the same folder
        if stale.name not in keep:
            stale.unlink()
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


def _write_leaderboard(path: Path, board: Sequence[Mapping[str, Any]]) -> None:
    cols = ["run", "concept", "metric", "method", "chosen"] + [f"{c}_{k}" for c in BOARD_COLUMNS for k in ("estimate", "ci_low", "ci_high")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for b in board:
        w.writerow([b["label"], b["concept"], b["metric"], b["method"], str(b["chosen"]).lower(),
                    *((b[c] or {}).get(k) for c in BOARD_COLUMNS for k in ("estimate", "ci_low", "ci_high"))])
    atomic_write_text(path, buf.getvalue())


def _read_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of a CSV written above: numbers as floats (empty or NaN -> ``None``), ``chosen`` as bools."""
    def cell(col: str, v: str) -> Any:
        if col.endswith(("estimate", "ci_low", "ci_high")):
            x = float(v) if v else math.nan
            return x if math.isfinite(x) else None
        return v == "true" if col == "chosen" else v

    with open(path, newline="") as f:
        reader = csv.reader(f)
        cols = next(reader)
        return cols, [[cell(c, v) for c, v in zip(cols, r)] for r in reader]


def track_compare(out: str | Path, run_dirs: Sequence[str | Path], *, mode: str = "offline", project: str = "ontolab",
                  init_timeout: float | None = None) -> Any:
    """Log the comparison in folder ``out`` (made by :func:`compare_runs`) to one wandb run; writes
    ``out/tracking.json`` and returns the :class:`~experiments.tracking.TrackingResult` (see the module docstring)."""
    from experiments.tracking import track

    out = Path(out)
    runs = [Path(p) for p in run_dirs]
    config = {"runs": dict(zip(run_labels(runs), (str(p.resolve()) for p in runs))), "out": str(out.resolve())}

    def log(wandb: Any, run: Any) -> list[str]:
        logged, tables = [], {}
        for key, name in (("compare/results", "compare.csv"), ("compare/leaderboard", "leaderboard.csv")):
            cols, rows = _read_table(out / name)
            if rows:
                tables[key] = wandb.Table(columns=cols, data=rows)
        if tables:
            run.log(tables)
            logged += [f"table:{k}" for k in tables]
        pngs = sorted((out / "plots").glob("*.png"))
        if pngs:
            run.log({f"plots/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in pngs})
            logged += [f"image:{p.stem}" for p in pngs]
        return logged

    return track(mode, out, project, f"compare-{out.resolve().name}", config, log, init_timeout=init_timeout,
                 job_type="ontolab-compare")


def cmd_compare(args: list[str]) -> int:
    """``ontolab compare RUN_DIR [RUN_DIR ...] [out=DIR] [wandb.mode=offline|online|disabled] [wandb.project=NAME]``."""
    out, runs, mode, project = "compare", [], "offline", "ontolab"
    for a in args:
        key, sep, value = a.partition("=")
        if not sep:
            runs.append(a)
        elif key == "out" and value:
            out = value
        elif key == "wandb.mode" and value in MODES:
            mode = value
        elif key == "wandb.project" and value.strip():
            project = value.strip()
        elif key == "wandb.mode":
            raise ConfigError(f"wandb.mode must be offline, online or disabled, got {value!r}")
        else:
            raise ConfigError(f"`ontolab compare` takes run folders, out=DIR, wandb.mode=MODE and wandb.project=NAME, got {a!r}")
    report = compare_runs(runs, out)
    try:
        tracked = track_compare(out, runs, mode=mode, project=project).mode
    except Exception as e:  # noqa: BLE001 -- deliberate: logging is optional, the comparison folder is the record
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        print(f"ontolab: warning: wandb logging failed ({msg}); the folder {out} holds every result", file=sys.stderr)
        tracked = "failed"
    print(f"comparison of {len(runs)} folder(s): {report} (wandb: {tracked})")
    return 0

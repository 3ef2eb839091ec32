"""``report.md`` in the run folder, and the short results table printed at the end of a run."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import yaml

from experiments.config import to_dict
from experiments.markdown import ci as _ci
from experiments.markdown import table as _table
from experiments.provenance import atomic_write_text
from experiments.report_planning import overoptimisation_section, planning_section, reward_eval_section  # noqa: F401


def render_report(cfg: Any, summary: dict[str, Any], plots: dict[str, Any] | None = None, base: Path | None = None) -> str:
    """The report as markdown: config, data, dynamics quality, probes, planning, plots, timings.

    ``plots``: ``{name: PNG path or the reason it was skipped}`` (see :func:`experiments.plots.write_run_plots`),
    embedded by links relative to ``base`` (the report's folder).
    """
    parts = [f"# ontolab run: {summary['world']}, seed {summary['seed']}", ""]
    d = summary["data"]
    details = d.get("base_rate_details", d["base_rates"])
    parts += ["## Data", f"{d['episodes']} episodes, {d['transitions']} transitions.", "",
              "Per-concept base rates on the train/val/test episodes:", "",
              _table(["concept", "base rate"], [[k, format_base_rate(v)] for k, v in details.items()]), ""]
    dyn = summary["dynamics"]
    parts += ["## Dynamics", f"Model `{dyn['model']}`: {dyn.get('steps')} steps in {dyn.get('train_seconds') or 0:.0f} s "
              f"({dyn.get('transitions_per_s') or 0:,.0f} transitions/s), validation loss {_num(dyn.get('val_loss'))}.", ""]
    ol = dyn.get("open_loop") or {}
    if "model" in ol:
        ci = _ci

        def at(key: str, k: str) -> dict | None:  # a column an older open_loop.json lacks shows "-"
            return (ol.get(key) or {}).get(k)

        symbolic = ol.get("metric") == "accuracy" or "model_balanced" in ol  # older files: the columns show "-"
        balanced = symbolic * ["model, macro recall"]
        parts += [f"Open-loop prediction on held-out ({ol['split']}) episodes: filter {ol['context']} real steps, then "
                  f"imagine k steps with the true actions and no observations ({ol['windows']} windows; per-cell "
                  f"{ol['metric']}, 95% bootstrap CI over windows). *Changed cells* differ from the last observed frame."
                  + (" *Macro recall* is the mean over cell classes of the fraction of each class's cells predicted as "
                     "that class (balanced per-cell accuracy): per-cell accuracy barely sees rare classes (key, door, "
                     "goal, lava)." if balanced else ""), "",
                  _table(["k", "model", *balanced, "copy last frame", *[c.replace("model", "copy") for c in balanced],
                          "model, changed cells", "copy, changed cells", "changed fraction"],
                         [[k, ci(ol["model"][k]), *[ci(at("model_balanced", k))] * len(balanced),
                           ci(ol["copy_last_frame"][k]), *[ci(at("copy_balanced", k))] * len(balanced),
                           ci(ol["model_changed_cells"][k]), ci(ol["copy_changed_cells"][k]), ol["changed_fraction"][k]]
                          for k in ol["model"]]), ""]
        if ol.get("model_seen_cells"):
            seen_bal = symbolic * ["model, seen, macro recall", "copy, seen, macro recall"]
            split = ["model, in the last view", "model, seen only earlier"] * bool(ol.get("model_memory_cells"))
            parts += ["*Seen cells* were inside an earlier observed view of the window (a model can know them); "
                      "never-seen cells can only be guessed and are reported apart." + bool(split) * (
                          " Seen cells in the *last* observed view: errors there are drift; seen only before: memory."), "",
                      _table(["k", "model, seen cells", "copy, seen cells", "model, seen and changed", "seen fraction",
                              "model, never-seen cells", *split, *seen_bal],
                             [[k, ci(ol["model_seen_cells"][k]), ci(ol["copy_seen_cells"][k]),
                               ci(ol["model_seen_changed_cells"][k]), f"{ol['seen_fraction'][k]:.3f}",
                               ci(ol["model_unseen_cells"][k]) if k in (ol.get("model_unseen_cells") or {}) else "n/a",
                               *([ci(ol["model_last_view_cells"][k]), ci(ol["model_memory_cells"][k])] if split else []),
                               *([ci(at("model_seen_balanced", k)), ci(at("copy_seen_balanced", k))] if seen_bal else [])]
                              for k in ol["model_seen_cells"]]), ""]
        parts += class_recall_section(ol)
    elif ol:
        parts += [f"Open-loop prediction: {ol.get('skipped')}.", ""]
    parts += hidden_concept_section(ol or {})
    parts += probe_section(summary)
    parts += where_when_section(summary, (plots or {}).get("by_checkpoint"), base)
    parts += planning_section(summary)
    parts += overoptimisation_section(summary)
    parts += verify_section(summary)
    if plots:
        from experiments.plots import markdown_plots

        parts += markdown_plots({k: v for k, v in plots.items() if k != "by_checkpoint"}, base or Path("."))
    parts += ["## Timings", "", _table(["stage", "seconds", "reused"],
                                      [[k, v, summary.get("reused", {}).get(k)] for k, v in summary["timings"].items()]), ""]
    parts += ["## Config", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(parts)


def _num(v: Any) -> str:
    """A number with 4 significant digits; ``n/a`` for a missing one (a NaN loss is null in metrics.json)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def write_report(cfg: Any, summary: dict[str, Any], out: Path) -> Path:
    """``out/report.md`` with the plots written into ``out/plots/`` and embedded by relative links."""
    out = Path(out)
    path = out / "report.md"
    atomic_write_text(path, render_report(cfg, summary, write_plots(summary, out / "plots"), out))
    return path


def write_plots(summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    """:func:`experiments.plots.write_run_plots`; a plot that fails is a reason in the report, not a lost run."""
    from experiments.plots import PLOT_FILES, write_run_plots

    try:
        return write_run_plots(summary, folder)
    except Exception as e:  # noqa: BLE001 -- deliberate: every number is in the report's tables already
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        print(f"ontolab: warning: plotting failed ({msg}); the report has its tables without plots", file=sys.stderr)
        return {name: f"plotting failed: {msg}" for name in PLOT_FILES}


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """A short results table on the terminal (rich), pointing at the report."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ontolab: {summary['world']} (seed {summary['seed']})")
    t.add_column("stage")
    t.add_column("result")
    t.add_column("seconds", justify="right")
    d, dyn = summary["data"], summary["dynamics"]
    model = (dyn.get("open_loop") or {}).get("model") or {}
    ol = ", ".join(f"k={k}: {_ci(v).split(' [')[0]}" for k, v in model.items())
    t.add_row("data", f"{d['episodes']} episodes, {d['transitions']} transitions", f"{summary['timings'].get('data', 0):.1f}")
    skipped = (dyn.get("open_loop") or {}).get("skipped")
    metric = (dyn.get("open_loop") or {}).get("metric", "accuracy")  # "mse" for continuous observations
    quality = f"open-loop per-cell {metric} {ol}" if ol else f"open-loop evaluation skipped: {skipped or 'no result'}"
    t.add_row("dynamics", f"{dyn['model']}: {quality}", f"{summary['timings'].get('dynamics', 0):.1f}")
    board = probe_leaderboard(summary)
    if board:
        good = sum(1 for b in board if b["test"] and b["random_model"] and b["test"]["estimate"] is not None
                   and b["random_model"]["ci_high"] is not None and b["test"]["ci_low"] > b["random_model"]["ci_high"])
        t.add_row("probes", f"{len(board)} concepts; {good} read clearly better than from a random model "
                  f"(see the report's leaderboard)", f"{summary['timings'].get('probes', 0):.1f}")
    for r in summary.get("planning") or []:
        if r.get("model") == "learned":
            t.add_row("planning", f"{r['planner']} on the learned model + probe reward ({r.get('probe_method')} "
                      f"probes): success "
                      f"{_ci(r['success_rate'])}, violations {_ci(r['violation_rate'])}",
                      f"{summary['timings'].get('planning', 0):.1f}")
    Console().print(t)
    print(f"report: {Path(out) / 'report.md'}")


def format_base_rate(v: Any) -> str:
    """One base-rate entry of a dataset manifest as short text."""
    if not isinstance(v, dict):
        return str(v)
    if v.get("kind") == "binary":
        return f"{v['rate']:.3f} true"
    if v.get("kind") == "scalar":
        return f"mean {v['mean']:.3g}, std {v['std']:.3g}, range [{v['min']:.3g}, {v['max']:.3g}]"
    freqs = v.get("freq") or {}
    return ", ".join(f"{k}: {x:.3f}" for k, x in (freqs.items() if isinstance(freqs, dict) else enumerate(freqs)))


def print_collect_report(report: Any) -> None:
    """The collect stage's result on the terminal: split counts and per-concept base rates."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    splits = ", ".join(f"{k} {v}" for k, v in report.split_episodes.items())
    con.print(f"{report.episodes} episodes, {report.transitions} transitions ({splits}); "
              f"{report.transitions_per_s:,.0f} transitions/s")
    t = Table(title="per-concept base rates (train+val+test)")
    t.add_column("concept")
    t.add_column("base rate")
    for name, v in report.base_rates.items():
        t.add_row(name + (" [red](rare)[/red]" if name in report.rare_concepts else ""), format_base_rate(v))
    con.print(t)


MAIN_METRIC = {"binary": "balanced_accuracy", "categorical": "balanced_accuracy", "scalar": "r2"}


def probe_leaderboard(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per concept: the ontology's choice, its held-out score and every baseline beside it (with CIs)."""
    rows = summary.get("probes") or []
    index = {(r["method"], r["site"], r["concept"], r["split"], r["metric"]): r for r in rows}
    board = []
    for concept, choice in (summary.get("ontology") or {}).items():
        method, site = choice["method"], choice["site"]
        metric = "r2" if (method, site, concept, "test", "r2") in index else "balanced_accuracy"

        def get(m, s, split="test", metric=metric):
            """The row of method ``m`` at site ``s`` (any site when ``s`` is None)."""
            return next((r for k, r in index.items() if k[0] == m and k[2] == concept and k[3] == split
                         and k[4] == metric and (s is None or k[1] == s)), None)

        board.append({"concept": concept, "method": method, "site": site, "metric": metric,
                      "test": get(method, site), "ood": get(method, site, "ood"),
                      "imagined_k5": get(method, site, "imagined_k5"),
                      "selectivity": get(method, site, metric="selectivity"),
                      "prior": get("prior", None),
                      # the same probe as the chosen one (probes.harness.baseline_name); older runs: linear only
                      "random_model": get(f"random_model:{method}", site) or get("random_model", site),
                      "observation": get(f"observation:{method}", None) or get("observation", None),
                      "history": get("history", None)})
    return board


def class_recall_section(ol: dict[str, Any], ks: tuple[str, ...] = ("1", "5")) -> list[str]:
    """Recall by cell class at ``ks`` (seen cells when the run has them), model against copying; none for an
    ``open_loop.json`` written before recall by class existed."""
    seen = bool(ol.get("model_seen_class_recall"))
    model = ol.get("model_seen_class_recall" if seen else "model_class_recall") or {}
    copy = ol.get("copy_seen_class_recall" if seen else "copy_class_recall") or {}
    ks = tuple(k for k in ks if k in model) or tuple(model)[:2]
    if not ks:
        return []
    present = {c for k in ks for c in model[k]}
    classes = [c for c in (ol.get("class_names") or []) if c in present] + sorted(present - set(ol.get("class_names") or []))
    header = ["class"] + [h for k in ks for h in (f"model, k={k}", f"copy, k={k}", f"cells, k={k}")]
    rows = [[c] + [v for k in ks for v in (_ci(model[k].get(c)), _ci((copy.get(k) or {}).get(c)),
                                           (model[k].get(c) or {}).get("count", "-"))] for c in classes]
    return [f"Recall by cell class on {'seen' if seen else 'all'} cells: of the cells of each class, the fraction "
            "predicted as that class (a class absent from the targets at k shows -).", "", _table(header, rows), ""]


def hidden_concept_section(ol: dict[str, Any]) -> list[str]:
    """Whether the model's own 1-step prediction follows a concept its observation hides, where the world's does
    (``open_loop.json`` ``hidden_concepts``; :mod:`dynamics.behaviour`)."""
    tests = [t for t in ol.get("hidden_concepts") or [] if "skipped" not in t]
    if not tests:
        return []
    rows = [[f"{t['test']} ({t['concept']})", f"{t['events_true']} / {t['events_false']}", _ci(t["rate_when_true"]),
             _ci(t["rate_when_false"]), _ci(t["auroc"])] for t in tests]
    return ["Hidden concepts, tested by behaviour: at the held-out steps where the true next frame depends on a "
            "concept the current frame does not show (" + "; ".join(f"{t['test']}: {t['description']}" for t in tests)
            + "), the model filters the episode up to the step before, imagines the step with the true action and "
            "decodes it. *Predicts the outcome*: its probability > 0.5 (ideal: 1 with the concept, 0 without); AUROC "
            "0.5 means the model does not use the concept there, whatever a probe reads.", "",
            _table(["test (concept)", "steps with / without", "predicts the outcome, with", "predicts the outcome, "
                    "without", "AUROC"], rows), ""]


def probe_section(summary: dict[str, Any]) -> list[str]:
    board = probe_leaderboard(summary)
    if not board:
        return []
    from experiments.plots import BASELINES, base_method

    methods = sorted({r["method"] for r in summary["probes"] if base_method(r["method"]) not in BASELINES})
    history = any(b["history"] for b in board)  # the supervised history baseline (probes.history) when it ran
    table = _table(["concept", "chosen (method, site)", "metric", "test", "ood", "imagined k=5", "selectivity",
                    "prior", "random model", "observation"] + ["history (supervised)"] * history,
                   [[b["concept"], f"{b['method']}, {b['site']}", b["metric"], _ci(b["test"]), _ci(b["ood"]),
                     _ci(b["imagined_k5"]), _ci(b["selectivity"]), _ci(b["prior"]), _ci(b["random_model"]),
                     _ci(b["observation"])] + [_ci(b["history"])] * history for b in board])
    ceiling = (" *History (supervised)*: a small GRU trained on the concept labels themselves over each episode's "
               "observations and actions so far -- not a probe of the model but an upper reference: a concept it "
               "cannot read is not knowable from the history (with this much data); one it reads and the model's "
               "probe does not is information the model's latent fails to keep.") if history else ""
    return ["## Probes", f"Methods compared: {', '.join(methods)}. Each concept's probe was chosen on the validation "
            "split (highest balanced accuracy, or R2 for scalars; ties to the simpler method); every number below "
            "is on held-out episodes with a 95% bootstrap CI over episodes. Baselines: the label prior, the same "
            "probe on a randomly initialised model, the same probe on the raw current observation. Every row is in "
            f"`probes/results.csv`.{ceiling}", "", table, ""] + imagined_fit_section(summary) + model_checks_section(summary)


def imagined_fit_section(summary: dict[str, Any]) -> list[str]:
    """The chosen probes (fitted on posterior latents) beside their refit on posterior + imagined latents
    (``probes.imagined_fit``), on held-out posterior latents and on latents imagined k steps ahead."""
    index = {(r["method"], r["site"], r["concept"], r["split"], r["metric"]): r for r in summary.get("probes") or []}
    splits = ("test", "imagined_k1", "imagined_k5", "imagined_k15")
    rows = []
    for b in probe_leaderboard(summary):
        m, s, c, metric = b["method"], b["site"], b["concept"], b["metric"]
        if any((m + "+imagined", s, c, sp, metric) in index for sp in splits):
            rows.append([c, f"{m}, {s}", metric] + [_ci(index.get((mm, s, c, sp, metric)))
                                                    for mm in (m, m + "+imagined") for sp in splits])
    if not rows:
        return []
    head = [f"{who}, {sp.replace('imagined_k', 'k=')}" for who in ("posterior fit", "imagined fit") for sp in splits]
    return ["A planner applies the probes to *imagined* latents. *Imagined fit*: the same probe (method, site, "
            "hyperparameters) fitted again on the train split's posterior latents plus latents imagined 1..H steps "
            "ahead with the true actions, labelled with the true concept H steps later (`probes/imagined.py`; the "
            "planning stage plans with it too, probe_method `imagined-fit`). *test*: held-out posterior latents; "
            "*k=*: imagined k steps ahead of held-out anchors, every step an episode reaches counted (terminal "
            "events included).", "", _table(["concept", "probe", "metric", *head], rows), ""]


def where_when_section(summary: dict[str, Any], plot: Any = None, base: Path | None = None) -> list[str]:
    """The "Where and when" section: the linear probe per site x training step (``probes/by_checkpoint.csv``),
    its heatmap (``plot``: the PNG path, or why it was not drawn) and, per concept, the best final site's scores."""
    rows = [r for r in summary.get("probes_by_checkpoint") or [] if r.get("estimate") is not None]
    if not rows:
        return []
    steps = sorted({r["step"] for r in rows})
    parts = ["## Where and when", f"The linear probe (l2 chosen on validation) fitted at every site on the model at "
             f"training steps {', '.join(map(str, steps))} ({'step 0: the initial weights; ' * (0 in steps)}the last: "
             "the final model), "
             "scored on the test split: balanced accuracy, or R2 for scalars (cf. McGrath et al. 2022). Every row, with "
             "its 95% bootstrap CI over episodes, is in `probes/by_checkpoint.csv`.", ""]
    if isinstance(plot, Path):
        rel = plot.resolve().relative_to(Path(base or ".").resolve()).as_posix()
        parts += [f"![where and when]({rel})", ""]
    elif plot:
        parts += [f"Heatmap not drawn ({plot}).", ""]
    table = []
    for concept in sorted({r["concept"] for r in rows}):
        mine = [r for r in rows if r["concept"] == concept]
        best = max((r for r in mine if r["step"] == steps[-1]), key=lambda r: r["estimate"], default=None)
        if best is None:
            continue
        path = {r["step"]: r["estimate"] for r in mine if r["site"] == best["site"]}
        table.append([concept, best["metric"], best["site"], " -> ".join(f"{path[t]:.2f}" if t in path else "-" for t in steps)])
    return parts + [_table(["concept", "metric", "best site at the end", f"score at steps {' / '.join(map(str, steps))}"],
                           table), ""]


CHECK_METRICS = ("state_consistency", "causal_sufficiency", "causal_sufficiency_null", "causal_sufficiency_probe",
                 "causal_sufficiency_probe_null", "causal_necessity", "causal_necessity_null")


def model_checks_section(summary: dict[str, Any]) -> list[str]:
    """State consistency and the causal checks of the chosen probes (rows of ``results.csv``)."""
    rows = [r for r in summary.get("probes") or [] if r["metric"] in CHECK_METRICS]
    if not rows:
        return []
    by = {(r["concept"], r["metric"]): r for r in rows}
    concepts = sorted({r["concept"] for r in rows})
    return ["### Model-based checks of the chosen probes",
            "*State consistency*: agreement of the probe's readings across different histories that reach the "
            "same true state. *Causal sufficiency*: how often editing the latent along the probe direction makes "
            "the imagined future change as the concept says, vs a random edit of the same norm (null), judged on the "
            "decoded future where the world has a scenario. *Probe-judged sufficiency* (the other class concepts): a "
            "weaker check -- after the edit and 5 imagined steps the *same probe* still reads the flipped class (an "
            "edit that only fools the probe also passes). *Causal "
            "necessity*: the rise of the model's prediction loss when LEACE erases the concept, vs a random "
            "subspace of the same rank (null). 95% bootstrap CIs over episodes.", "",
            _table(["concept", "state consistency", "sufficiency", "sufficiency (null)", "probe-judged sufficiency",
                    "probe-judged (null)", "necessity: loss rise",
                    "necessity (null)"],
                   [[c, *(_ci(by.get((c, m))) for m in CHECK_METRICS)] for c in concepts]), ""]


def verify_section(summary: dict[str, Any]) -> list[str]:
    """Model-checked probabilities (Storm) vs the same events' frequency in the real world."""
    rows = summary.get("verify") or []
    if not rows:
        return []

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def emp(r: dict[str, Any]) -> str:
        ci = r.get("empirical_ci") or [None, None]
        return "n/a" if r.get("empirical") is None else f"{r['empirical']:.3f} [{num(ci[0])}, {num(ci[1])}]"

    parts = ["## Verification", "PCTL properties model-checked with Storm on the finite abstraction of the learned "
             "model (abstract states = probed concept values), with robust bounds from Clopper-Pearson interval "
             "models over the counted imagined transitions, beside the same event's frequency when the same policy "
             "acts in the real world (95% CI). Where they disagree, the ontology + dynamics cannot be trusted for "
             "that property. Details: `verify/metrics.json`.", "",
             _table(["property", "policy", "checked", "bounds", "real world", "states", "agrees", "note"],
                    [[f"`{r['property']}`", r["policy"], num(r.get("probability")),
                      f"[{num(r.get('lower_bound'))}, {num(r.get('upper_bound'))}]", emp(r), r.get("states"),
                      {True: "yes", False: "**no**"}.get(r.get("agrees"), "n/a"), r.get("note") or ""] for r in rows]), ""]
    return parts

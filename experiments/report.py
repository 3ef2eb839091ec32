"""``report.md`` in the run folder, and the short results table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from experiments.config import to_dict
from experiments.provenance import atomic_write_text


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _base_rate_rows(base_rates: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, v in base_rates.items():
        if isinstance(v, dict):
            rows.append([name, ", ".join(f"{k}: {x:.3g}" if isinstance(x, float) else f"{k}: {x}" for k, x in v.items())])
        else:
            rows.append([name, v])
    return rows


def render_report(cfg: Any, summary: dict[str, Any]) -> str:
    """The report as markdown: config, data, dynamics quality (later stages append sections)."""
    parts = [f"# ontolab run: {summary['world']}, seed {summary['seed']}", ""]
    d = summary["data"]
    parts += ["## Data", f"{d['episodes']} episodes, {d['transitions']} transitions.", "",
              "Per-concept base rates (binary: fraction true; scalar: mean/std; categorical: class frequencies):", "",
              _table(["concept", "base rate"], _base_rate_rows(d["base_rates"])), ""]
    dyn = summary["dynamics"]
    ol = dyn.get("open_loop_error") or {}
    parts += ["## Dynamics", f"Model `{dyn['model']}`, validation loss {dyn['val_loss']}.", "",
              "Open-loop prediction error on held-out trajectories (k steps imagined from a filtered state with the true actions):",
              "", _table(["k"] + list(ol), [["error"] + list(ol.values())]), ""]
    parts += ["## Timings", "", _table(["stage", "seconds", "reused"],
                                      [[k, v, summary.get("reused", {}).get(k)] for k, v in summary["timings"].items()]), ""]
    parts += ["## Config", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(parts)


def write_report(cfg: Any, summary: dict[str, Any], out: Path) -> Path:
    path = Path(out) / "report.md"
    atomic_write_text(path, render_report(cfg, summary))
    return path


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """A short results table on the terminal (rich), pointing at the report."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ontolab: {summary['world']} (seed {summary['seed']})")
    t.add_column("stage")
    t.add_column("result")
    t.add_column("seconds", justify="right")
    d, dyn = summary["data"], summary["dynamics"]
    ol = ", ".join(f"k={k}: {v:.3f}" for k, v in (dyn.get("open_loop_error") or {}).items() if v is not None)
    t.add_row("data", f"{d['episodes']} episodes, {d['transitions']} transitions", f"{summary['timings'].get('data', 0):.1f}")
    t.add_row("dynamics", f"{dyn['model']}: open-loop error {ol}", f"{summary['timings'].get('dynamics', 0):.1f}")
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

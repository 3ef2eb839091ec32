"""``ontolab sweep [CONFIG] seeds=[0,1,2] dynamics.lr=[0.001,0.003] key=value ...``: a grid of runs, aggregated over seeds.

**Which overrides are grid axes.** An override is an axis when its value is a list *and the key does
not take a list*: ``dynamics.lr=[0.001,0.003]`` or ``world.size=[9,11]`` are axes (two values each),
while ``probes.methods=[linear,mlp]`` is a plain value, as in ``ontolab run`` (one run fits both
methods and compares them). To sweep a key that takes a list, give a list of lists:
``probes.methods=[[linear],[mlp]]`` is an axis of two single-method runs. Whether a key takes a
list comes from the config dataclasses (world parameters from the world's parameter class, model
hyperparameters from the model's config class), so the rule has no exceptions. ``seeds=[...]`` (or
``seed=[...]``) is the seed axis (default: the config's ``seed``); ``out=DIR`` is the sweep folder
(default ``runs/sweep``) and ``cache_dir`` defaults to ``DIR/cache``, shared by every point so that
cached stages are reused (another probe method reuses the dataset and the model).

**What runs.** Every grid point's config is resolved and checked before anything runs (a bad value
fails at once, naming the key); then each point runs sequentially with
:func:`experiments.pipeline.run_pipeline` into ``DIR/<group>_seed-<s>/``, where ``<group>`` names the
point's non-seed values (``lr-0.001_size-9``; ``base`` when only seeds vary). The wandb runs of one
sweep share the wandb group ``sweep-<DIR name>``.

**Aggregation** (:mod:`experiments.sweep_aggregate`). Per group (grid point minus seed) x method x site
x concept x split x metric (the
probe rows of ``summary.json``) and per group x planner x model x reward x probe method (planning
rates), the mean over seeds with a 95% t-interval over seeds (``mean +- t(0.975, n-1) * sd / sqrt(n)``;
the seeds are the unit of replication, so the interval covers seed-to-seed variation of the whole
pipeline). With one seed there is no spread to estimate: the row keeps that run's own bootstrap
interval over episodes, and its ``interval`` column says so. Writes ``DIR/sweep.json`` (grid, runs,
aggregated probe and planning rows, open-loop curves), ``DIR/sweep.csv`` (aggregated probe rows),
``DIR/sweep_planning.csv``, and ``DIR/report.md`` with ``DIR/plots/``.

**Scaling out.** Each grid point is an independent ``ontolab run`` (the exact commands are in
``sweep.json`` under ``groups[].runs[].command``): a cluster scheduler can run them one per job
(sharing ``cache_dir`` on a network file system lets later jobs reuse the dataset), then
``ontolab sweep`` with the same arguments finds every stage cached and only aggregates.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from experiments.config import ConfigError, read_yaml
from experiments.provenance import atomic_write_text, write_json
from experiments.schema import ALIASES, CONFIG_DIR, RunConfig, resolve
from experiments.sweep_aggregate import (  # noqa: F401  (OPEN_LOOP_SERIES, seed_interval re-exported)
    ONE_SEED, OPEN_LOOP_SERIES, PLAN_METRICS, T_OVER_SEEDS, aggregate, seed_interval)

SEED_KEYS = ("seeds", "seed")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed ``ontolab sweep`` command line."""

    config_file: str | None
    overrides: tuple[str, ...]
    """Plain ``key=value`` overrides applied to every point."""
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    """``(dotted key, values)`` per grid axis (the seed axis excluded), in command-line order."""
    seeds: tuple[int, ...] | None
    """The seed axis; ``None``: the config's seed."""
    out: Path
    cache_dir: Path


@dataclass(frozen=True)
class GridPoint:
    """One run of the grid: its group (non-seed values), its seed, the overrides that make its config."""

    group: str
    params: tuple[tuple[str, Any], ...]
    seed: int | None
    name: str
    overrides: tuple[str, ...]


def _split_config(args: Sequence[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        path = Path(args[0])
        if not path.exists() and (CONFIG_DIR / f"{args[0]}.yaml").exists():
            path = CONFIG_DIR / f"{args[0]}.yaml"
        return str(path), list(args[1:])
    return None, list(args)


def _takes_list(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_list(a) for a in typing.get_args(tp))
    return origin in (tuple, list) or tp in (tuple, list)


def field_type(key: str, base: RunConfig) -> Any | None:
    """The declared type of dotted config ``key`` (world parameters and model hparams included); None if unknown."""
    from dynamics.registry import model_config
    from worlds.registry import get_world

    parts = key.split(".")
    if parts[0] == "world" and parts[1:2] == ["params"]:
        parts = ["world", *parts[2:]]
    if parts[0] == "world" and len(parts) == 2 and parts[1] != "name":
        cls: Any = get_world(base.world.name).params_cls
        parts = parts[1:]
    elif parts[:2] == ["dynamics", "hparams"] and len(parts) == 3:
        cls = type(model_config(base.dynamics.model))
        parts = parts[2:]
    else:
        cls = RunConfig
    tp: Any = cls
    for p in parts:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if p not in hints:
            return None
        tp = hints[p]
    return tp


def parse_sweep_args(args: Sequence[str]) -> SweepSpec:
    """Split ``[CONFIG] key=value ...`` into plain overrides, grid axes and the seed axis (rules: module docstring)."""
    config_file, rest = _split_config(args)
    base = resolve([a for a in rest if not _is_listy(a)], config_file)  # for types; every point is resolved later
    overrides, axes, seeds, out, cache = [], [], None, None, None
    for arg in rest:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {arg!r} must look like key=value (e.g. seeds=[0,1,2])")
        key = ALIASES.get(key, key)
        value = read_yaml(raw) if raw.strip() else ""  # as `ontolab run` reads key=value
        if key in SEED_KEYS:
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"{key} must be a list of integer seeds, e.g. seeds=[0,1,2]; got {raw!r}")
            if len(set(values)) != len(values):
                raise ConfigError(f"{key} lists a seed twice: {values}")
            seeds = tuple(values)
        elif key == "out":
            out = Path(str(value))
        elif key == "cache_dir":
            cache = Path(str(value))
        elif isinstance(value, list) and (not _takes_list(field_type(key, base)) or all(isinstance(v, list) for v in value)):
            if not value:
                raise ConfigError(f"grid axis {key} has no values; give at least one, e.g. {key}=[a,b]")
            if len(set(map(json.dumps, value))) != len(value):
                raise ConfigError(f"grid axis {key} lists a value twice: {value}")
            axes = [(k, v) for k, v in axes if k != key] + [(key, tuple(value))]
        else:
            overrides.append(f"{key}={raw}")
    if not axes and seeds is None:  # (an explicit seeds=[s] is a one-point sweep, reported as such)
        raise ConfigError("`ontolab sweep` needs a grid: several seeds (seeds=[0,1,2]) or a list-valued override "
                          "(dynamics.lr=[0.001,0.003]); for a single run use `ontolab run`")
    out = out or Path("runs/sweep")
    return SweepSpec(config_file, tuple(overrides), tuple(axes), seeds, out, cache or out / "cache")


def _is_listy(arg: str) -> bool:
    """An override whose value is a list, or a seed/out key (left out of the base config used for types)."""
    key, _, raw = arg.partition("=")
    return raw.strip().startswith("[") or ALIASES.get(key, key) in (*SEED_KEYS, "out", "cache_dir")


def _yaml_value(value: Any) -> str:
    """``value`` as override text that ``ontolab run`` (:func:`experiments.config.read_yaml`) and plain
    ``yaml.safe_load`` both read back as ``value``: JSON where they do, else YAML (``json.dumps(1e-05)`` is
    ``1e-05``, which YAML 1.1 reads as the string ``'1e-05'``; YAML writes ``1.0e-05``)."""
    text = json.dumps(value)
    if yaml.safe_load(text) == value == read_yaml(text):
        return text
    return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").rstrip("\n")


def _short(value: Any) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", text)[:40] or "x"


def expand_grid(spec: SweepSpec) -> list[GridPoint]:
    """Every grid point (axes in command-line order, the seed varying fastest), with unique folder names."""
    keys = [k for k, _ in spec.axes]
    leaves = [k.split(".")[-1] for k in keys]
    short = [leaf if leaves.count(leaf) == 1 else k.replace(".", "-") for k, leaf in zip(keys, leaves)]
    combos = list(itertools.product(*(v for _, v in spec.axes)))
    groups = ["_".join(f"{s}-{_short(v)}" for s, v in zip(short, combo)) or "base" for combo in combos]
    if len(set(groups)) != len(groups):  # values that sanitise alike: number the groups
        groups = [f"g{i:03d}_{g}" for i, g in enumerate(groups)]
    points = []
    for combo, group in zip(combos, groups):
        fixed = [f"{k}={_yaml_value(v)}" for k, v in zip(keys, combo)]
        for seed in spec.seeds or (None,):
            name = group if seed is None else f"{group}_seed-{seed}"
            over = [*spec.overrides, *fixed, *([] if seed is None else [f"seed={seed}"]),
                    f"out={spec.out / name}", f"cache_dir={spec.cache_dir}"]
            points.append(GridPoint(group, tuple(zip(keys, combo)), seed, name, tuple(over)))
    return points


# -- writing --------------------------------------------------------------------------------------------


PROBE_COLUMNS = ("group", "method", "site", "concept", "split", "metric", "estimate", "ci_low", "ci_high", "n_seeds", "sd", "interval")


def _csv(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return buf.getvalue()


def write_sweep(out: Path, spec: SweepSpec, points: Sequence[GridPoint], agg: Mapping[str, Any]) -> Path:
    """``sweep.json``, ``sweep.csv``, ``sweep_planning.csv``, ``report.md`` and ``plots/`` in ``out``; returns the report."""
    from experiments.compare import chosen_site_rows, leaderboard_markdown, planning_markdown
    from experiments.plots import (markdown_plots, plot_accuracy_vs_selectivity, plot_imagination, plot_open_loop,
                                   plot_planning, plot_probe_metrics, planning_label, run_plot_jobs)

    groups = list(dict.fromkeys(p.group for p in points))
    by_group = {g: [p for p in points if p.group == g] for g in groups}
    record = {
        "config_file": spec.config_file, "overrides": list(spec.overrides),
        "axes": {k: list(v) for k, v in spec.axes}, "seeds": list(spec.seeds) if spec.seeds else None,
        "interval": f"mean over seeds with a 95% {T_OVER_SEEDS}; with one seed, {ONE_SEED}",
        "groups": [{"name": g, "params": dict(ps[0].params),
                    "runs": [{"seed": p.seed, "dir": p.name, "command": "ontolab run " + " ".join(
                        ([_quote(spec.config_file)] if spec.config_file else []) + [_quote(o) for o in p.overrides])}
                             for p in ps]}
                   for g, ps in by_group.items()],
        **agg,
    }
    write_json(record, out / "sweep.json")
    atomic_write_text(out / "sweep.csv", _csv(agg["probes"], PROBE_COLUMNS))
    plan_cols = ["group", "planner", "model", "reward", "probe_method", "n_seeds"] + [
        f"{m}_{s}" for m in PLAN_METRICS for s in ("estimate", "ci_low", "ci_high")]
    flat = [{**{k: r.get(k) for k in plan_cols[:6]}, **{f"{m}_{s}": (r.get(m) or {}).get(s) for m in PLAN_METRICS
                                                        for s in ("estimate", "ci_low", "ci_high")}} for r in agg["planning"]]
    atomic_write_text(out / "sweep_planning.csv", _csv(flat, plan_cols))

    multi = len(groups) > 1
    sites = {g: {c: v["site"] for c, v in agg["ontology"].get(g, {}).items()} for g in groups}
    rows_g = {g: chosen_site_rows([r for r in agg["probes"] if r["group"] == g], sites[g]) for g in groups}
    plot_rows = [r for g in groups for r in chosen_site_rows([x for x in agg["probes"] if x["group"] == g], sites[g],
                                                             g if multi else None)]
    plan = [{**r, "run": r["group"], "label": f"{r['group']}: {planning_label(r)}" if multi else None} for r in agg["planning"]]
    chosen_sites = {r["concept"]: "chosen" for r in plot_rows}
    plots = run_plot_jobs({
        "probe_metrics": lambda p: plot_probe_metrics(plot_rows, p, sites=chosen_sites,
                                                      title="probe scores on test, mean over seeds (95% CI)"),
        "accuracy_vs_selectivity": lambda p: plot_accuracy_vs_selectivity(plot_rows, p),
        "imagination": lambda p: plot_imagination(plot_rows, p, sites=chosen_sites),
        "planning": lambda p: plot_planning(plan, p, title="planning, mean over seeds (95% CI)"),
        "open_loop": lambda p: plot_open_loop(agg["open_loop"], p),
    }, out / "plots")
    n_seeds = len(spec.seeds or (None,))
    parts = [f"# ontolab sweep: {out.resolve().name}", "",
             f"{len(groups)} grid point(s) x {n_seeds} seed(s) = {len(points)} runs. Numbers are the mean over seeds with a "
             f"95% t-interval over seeds (`n` = seeds with a value)" + (
                 f"; with one seed the interval is {ONE_SEED}." if n_seeds == 1 else "."), "",
             "| " + " | ".join(["group", *(k for k, _ in spec.axes), "runs"]) + " |", "|" + "---|" * (len(spec.axes) + 2)]
    for g, ps in by_group.items():
        links = ", ".join(f"[seed {p.seed}]({p.name}/report.md)" if p.seed is not None else f"[run]({p.name}/report.md)" for p in ps)
        parts.append("| " + " | ".join([g, *(json.dumps(v) for _, v in ps[0].params), links]) + " |")
    parts += ["", "## Probe leaderboard per concept",
              "Every method and baseline at the site the ontology chose most often across seeds (`*`: its method).", "",
              *leaderboard_markdown(rows_g, {g: {c: v["method"] for c, v in agg["ontology"].get(g, {}).items()} for g in groups},
                                   label_name="group")]
    if plan:
        parts += ["## Planning", "", *planning_markdown(plan, label_name="group")]
    parts += markdown_plots(plots, out)
    report = out / "report.md"
    atomic_write_text(report, "\n".join(parts))
    return report


def _quote(arg: str) -> str:
    # ``[`` and ``]`` are shell glob characters (zsh refuses an unmatched ``a=[x,y]``): such args are quoted
    return arg if re.fullmatch(r"[A-Za-z0-9_.,/=+:-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class SweepResult:
    out: Path
    points: tuple[GridPoint, ...]
    aggregate: dict[str, Any]
    report: Path


def run_sweep(spec: SweepSpec, *, progress: bool = True, runner: Callable[..., Any] | None = None) -> SweepResult:
    """Resolve every point (failing before any work), run them in order, aggregate, write the sweep folder.

    ``runner(cfg, progress=...)`` defaults to :func:`experiments.pipeline.run_pipeline` and must return
    an object with a ``summary`` dict.
    """
    from experiments.pipeline import check_run_folder, run_pipeline

    runner = runner or run_pipeline
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; give a folder for the sweep")
    points = expand_grid(spec)
    cfgs = [resolve(list(p.overrides), spec.config_file) for p in points]
    for cfg in cfgs:
        check_run_folder(cfg)
    runs = []
    old_group = os.environ.get("WANDB_RUN_GROUP")
    os.environ["WANDB_RUN_GROUP"] = f"sweep-{out.resolve().name}"
    try:
        for i, (p, cfg) in enumerate(zip(points, cfgs)):
            if progress:
                print(f"sweep: run {i + 1}/{len(points)}: {p.name}", flush=True)
            result = runner(cfg, progress=progress)
            runs.append({"group": p.group, "seed": cfg.seed, "summary": result.summary})
    finally:
        if old_group is None:
            os.environ.pop("WANDB_RUN_GROUP", None)
        else:
            os.environ["WANDB_RUN_GROUP"] = old_group
    agg = aggregate(runs)
    report = write_sweep(out, spec, points, agg)
    return SweepResult(out, tuple(points), agg, report)


def cmd_sweep(args: list[str]) -> int:
    """``ontolab sweep [CONFIG] seeds=[0,1,2] key=[a,b] ... [out=DIR]``."""
    from experiments.cli import pin_threads

    spec = parse_sweep_args(args)
    pin_threads(resolve([a for a in spec.overrides], spec.config_file))
    result = run_sweep(spec)
    print(f"sweep of {len(result.points)} runs: {result.report} (aggregates: {result.out / 'sweep.csv'})")
    return 0

"""Review of the experiments/ core (session 8): every report cell is the number of the row it names, NaN is
shown as summary.json stores it (null -> "-"), the plots draw what the tables show, bad config input is one
ConfigError, and runs that share a cache never build one stage twice at the same time."""

from __future__ import annotations

import math
import re
import threading
import time

import pytest

from experiments import markdown, plots, report, tracking
from experiments.cache import run_stage
from experiments.config import ConfigError
from experiments.schema import resolve

NAN = float("nan")


def est(v, lo=None, hi=None):
    return {"estimate": v, "ci_low": v - 0.05 if lo is None else lo, "ci_high": v + 0.05 if hi is None else hi}


def row(method, site, concept, split, metric, e):
    return {"method": method, "site": site, "concept": concept, "split": split, "metric": metric, **e}


# Every cell of the leaderboard gets a distinct number, so a column filled from the wrong split, metric, site or
# method shows up as a mismatch.
PROBES = [
    row("linear", "deter", "has_key", "test", "balanced_accuracy", est(0.911)),
    row("linear", "deter", "has_key", "ood", "balanced_accuracy", est(0.822)),
    row("linear", "deter", "has_key", "imagined_k5", "balanced_accuracy", est(0.733)),
    row("linear", "deter", "has_key", "test", "selectivity", est(0.344, NAN, NAN)),  # NaN interval
    row("linear", "feat", "has_key", "test", "balanced_accuracy", est(0.555)),       # another site: not the choice
    row("linear", "deter", "has_key", "test", "auroc", est(0.966)),                  # another metric
    row("prior", "none", "has_key", "test", "balanced_accuracy", est(0.5)),
    row("random_model", "deter", "has_key", "test", "balanced_accuracy", est(0.612)),
    row("random_model", "feat", "has_key", "test", "balanced_accuracy", est(0.599)),
    row("observation", "obs", "has_key", "test", "balanced_accuracy", est(0.877)),
    row("history", "history", "has_key", "test", "balanced_accuracy", est(0.944)),
    row("mlp", "feat", "steps_to_goal", "test", "r2", est(0.701)),
    row("mlp", "feat", "steps_to_goal", "ood", "r2", est(NAN, NAN, NAN)),           # NaN estimate
    row("mlp", "feat", "steps_to_goal", "test", "selectivity", est(0.222)),
    row("prior", "none", "steps_to_goal", "test", "r2", est(-0.01)),
    row("random_model:mlp", "feat", "steps_to_goal", "test", "r2", est(0.123)),
    row("random_model", "feat", "steps_to_goal", "test", "r2", est(0.111)),          # linear's: not the mlp's
    row("observation:mlp", "obs", "steps_to_goal", "test", "r2", est(0.456)),
    row("observation", "obs", "steps_to_goal", "test", "r2", est(0.444)),
    row("history", "history", "steps_to_goal", "test", "r2", est(0.811)),
]
ONTOLOGY = {"has_key": {"method": "linear", "site": "deter"}, "steps_to_goal": {"method": "mlp", "site": "feat"}}
SUMMARY = {
    "world": "lavakeydoor", "seed": 0,
    "data": {"episodes": 10, "transitions": 100, "base_rates": {"has_key": 0.25}},
    "dynamics": {"model": "rssm", "val_loss": 1.0, "open_loop": {}},
    "probes": PROBES, "ontology": ONTOLOGY, "timings": {"data": 1.0}, "reused": {"data": False},
}
COLUMNS = {"test": ("test", None), "ood": ("ood", None), "imagined k=5": ("imagined_k5", None),
           "selectivity": ("test", "selectivity")}
"""Report column -> (split, metric or None for the concept's main metric) of the chosen probe's row."""


def cells(line: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` inside a cell does not split it)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def md_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with ``first_header``, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = cells(lines[start])
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append(dict(zip(header, cells(line), strict=True)))
    return body


def source(concept, method, site, split, metric):
    hits = [r for r in PROBES if (r["concept"], r["method"], r["split"], r["metric"]) == (concept, method, split, metric)
            and (site is None or r["site"] == site)]
    assert len(hits) <= 1, (concept, method, site, split, metric)
    return hits[0] if hits else None


def expect(r) -> str:
    """The text a cell must show for row ``r``: ``-`` for no row or estimate, the estimate alone for a NaN interval."""
    if r is None:
        return "-"
    e, lo, hi = r["estimate"], r["ci_low"], r["ci_high"]
    if math.isnan(e):
        return "-"
    return f"{e:.3f}" if math.isnan(lo) or math.isnan(hi) else f"{e:.3f} [{lo:.3f}, {hi:.3f}]"


def test_leaderboard_cells_are_the_rows_they_name():
    text = "\n".join(report.probe_section(SUMMARY))
    board = {r["concept"]: r for r in md_table(text, "concept")}
    assert list(board) == ["has_key", "steps_to_goal"]  # the ontology's order
    for concept, choice in ONTOLOGY.items():
        b = board[concept]
        main = "r2" if concept == "steps_to_goal" else "balanced_accuracy"
        assert b["metric"] == main and b["chosen (method, site)"] == f"{choice['method']}, {choice['site']}"
        for col, (split, metric) in COLUMNS.items():
            assert b[col] == expect(source(concept, choice["method"], choice["site"], split, metric or main)), col
        assert b["prior"] == expect(source(concept, "prior", None, "test", main))
        assert b["history (supervised)"] == expect(source(concept, "history", None, "test", main))
    # the same probe method as the choice: linear's own baseline rows, and the mlp's for the mlp choice
    assert board["has_key"]["random model"] == "0.612 [0.562, 0.662]"   # at the chosen site, not feat's 0.599
    assert board["has_key"]["observation"] == "0.877 [0.827, 0.927]"
    assert board["steps_to_goal"]["random model"] == "0.123 [0.073, 0.173]"
    assert board["steps_to_goal"]["observation"] == "0.456 [0.406, 0.506]"


def test_nan_is_shown_as_summary_json_stores_it():
    """The report is rendered from the in-memory summary (NaN), summary.json from the same with NaN -> null: the
    report printed ``nan [nan, nan]`` where the json holds null."""
    assert markdown.ci(est(NAN, NAN, NAN)) == "-"
    assert markdown.ci(est(0.5, NAN, NAN)) == "0.500"
    assert markdown.ci({"estimate": 0.5, "ci_low": None, "ci_high": 0.6}) == "0.500"
    assert markdown.ci(None) == "-" and markdown.ci({"estimate": None}) == "-"
    assert markdown.table(["a"], [[NAN]]).splitlines()[-1] == "| - |"
    text = report.render_report(resolve([]), SUMMARY)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "a NaN reached report.md"


def test_comparison_cells_show_nan_as_missing():
    """``ontolab compare`` of a probe folder reads results.csv, where NaN stays NaN (summary.json has null)."""
    from experiments.compare import _fmt

    assert _fmt(est(NAN, NAN, NAN)) == "-" and _fmt(est(0.5, NAN, NAN)) == "0.500"
    assert _fmt({**est(0.5), "n_seeds": 3}) == "0.500 [0.450, 0.550] (n=3)"
    assert _fmt({"estimate": None, "n_seeds": 0}) == "-"


def test_report_without_a_validation_loss():
    """A NaN validation loss is null in metrics.json; the report crashed formatting None (after summary.json)."""
    text = report.render_report(resolve([]), {**SUMMARY, "dynamics": {"model": "rssm", "val_loss": None, "open_loop": {}}})
    assert "validation loss n/a." in text


def test_methods_compared_lists_probe_methods_not_baselines():
    text = "\n".join(report.probe_section(SUMMARY))
    assert "Methods compared: linear, mlp." in text


def test_a_pipe_in_a_cell_does_not_split_it():
    """A PCTL property with a disjunction (``|``) in the verification table, a constraint in the reward table."""
    t = markdown.table(["property", "checked"], [['`P=? [F "lava" | "goal"]`', 0.5]])
    assert [len(cells(line)) for line in t.splitlines() if not line.startswith("|---")] == [2, 2]
    assert cells(t.splitlines()[-1])[0] == '`P=? [F "lava" | "goal"]`'


def test_probe_metric_plot_has_the_tables_baselines():
    """The run's bar plot at the chosen sites: every baseline column of the leaderboard, history included (its rows'
    site is ``history``, never a model site, so it was dropped)."""
    picked = plots._pick(PROBES, "test", {c: v["site"] for c, v in ONTOLOGY.items()})
    labels = {lab for c, lab in picked if c == "has_key"}
    assert labels == {"linear", "prior", "random_model", "observation", "history"}
    assert picked[("has_key", "history")]["estimate"] == 0.944
    assert picked[("has_key", "random_model")]["estimate"] == 0.612  # at the chosen site
    assert picked[("has_key", "linear")]["estimate"] == 0.911


def test_terminal_summary_names_the_open_loop_metric(capsys):
    s = {**SUMMARY, "dynamics": {"model": "gru", "val_loss": 1.0,
                                 "open_loop": {"metric": "mse", "model": {"1": est(0.0123), "5": est(NAN)}}}}
    report.print_summary(s, "runs/x")
    out = " ".join(capsys.readouterr().out.split())
    assert "per-cell mse" in out and "accuracy" not in out
    assert "k=1: 0.012" in out and "k=5: -" in out


def test_wandb_tables_carry_the_reports_columns():
    tables = tracking._tables({**SUMMARY, "planning": [
        {"planner": "cem+shield", "model": "learned", "reward": "latent", "probe_method": "linear", "episodes": 4,
         "success_rate": est(0.5), "violation_rate": est(0.1), "mean_true_return": est(1.0), "mean_steps": est(9.0),
         "ms_per_step": est(2.0), "veto_rate": est(0.25)}]})
    cols, rows = tables["probes/leaderboard"]
    has_key = dict(zip(cols, rows[0]))
    assert has_key["history_estimate"] == 0.944 and has_key["test_estimate"] == 0.911
    cols, rows = tables["planning/rows"]
    assert dict(zip(cols, rows[0]))["veto_rate_estimate"] == 0.25


@pytest.mark.parametrize("args, needle", [
    (["world.params=5"], "'world.params' must be a mapping"),
    (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["seed=4294967296"], "seed must be an integer in [0, 4294967295]"),  # Lightning refused it after collecting
    (["out="], "out must name a folder"),                                  # Path('') is the current folder
    (["out=  "], "out must name a folder"),
    (["data.min_base_rate=.nan"], "data.min_base_rate must lie in [0, 0.5)"),
    (["data.min_base_rate=0.5"], "data.min_base_rate must lie in [0, 0.5)"),
    (["plan.cost_limit=.nan"], "plan.cost_limit must be a number >= 0"),  # every plan was infeasible, silently
    (["plan.cost_limit=-1"], "plan.cost_limit must be a number >= 0"),    # summed costs are >= 0: the same
])
def test_bad_config_values_are_config_errors(args, needle):
    with pytest.raises(ConfigError) as e:
        resolve(args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_edges_that_are_fine():
    assert resolve(["seed=4294967295"]).seed == 4294967295
    assert resolve(["data.min_base_rate=0"]).data.min_base_rate == 0.0
    assert resolve(["world.params={size: 9}"]).world.params == {"size": 9}
    assert resolve(["plan.cost_limit=.inf"]).plan.cost_limit == math.inf


def test_runs_sharing_a_cache_build_a_stage_once(tmp_path):
    """Two runs (different out=, one cache: a sweep fanned out over jobs) asking for the same stage at once: the
    second waits and reuses the first's output. Before, it deleted the first one's partial folder mid-build."""
    started, results, errors, builds = threading.Event(), {}, [], []

    def slow_build(tmp):
        builds.append(tmp)
        (tmp / "a.txt").write_text("a")
        started.set()
        time.sleep(0.6)
        assert (tmp / "a.txt").is_file(), "another process removed this stage's partial folder"
        (tmp / "b.txt").write_text("b")

    def go(name, build):
        try:
            results[name] = run_stage(tmp_path, "data", {"x": 1}, {}, build)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    first = threading.Thread(target=go, args=("first", slow_build))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=go, args=("second", slow_build))
    second.start()
    first.join(20), second.join(20)
    assert not errors, errors
    assert len(builds) == 1 and results["second"].reused and not results["first"].reused
    assert results["first"].path == results["second"].path
    assert sorted(p.name for p in results["first"].path.iterdir()) == ["a.txt", "b.txt", "stage.json"]


def test_verify_command_records_its_inputs(tmp_path, monkeypatch):
    """``ontolab verify`` wrote config.yaml only: which checkpoint, ontology and dataset it checked was lost (the
    stage commands' docstring promises inputs.json, as ``ontolab probe`` and ``ontolab plan`` write)."""
    import hashlib
    import json

    from experiments.stages import commands, verify
    from experiments.stages.collect import run_collect
    from worlds.dataset import TrajectoryDataset

    cfg = resolve(["threads=1", "data.episodes=2", "data.num_envs=2", "data.ood_episodes=0", "world.size=7",
                   f"out={tmp_path / 'v'}"])
    run_collect(cfg, tmp_path / "ds", progress=False)
    ckpt, onto = tmp_path / "last.ckpt", tmp_path / "onto"
    ckpt.write_bytes(b"weights")
    onto.mkdir()
    (onto / "ontology.json").write_text("{}")
    monkeypatch.setattr(commands, "verify_inputs", lambda args: (cfg, tmp_path / "ds", ckpt, onto, tmp_path / "v"))
    monkeypatch.setattr(verify, "run_verify", lambda *a, **k: {"rows": []})
    assert commands.cmd_verify([]) == 0
    got = json.loads((tmp_path / "v" / "inputs.json").read_text())
    assert got["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert got["dataset_fingerprint"] == TrajectoryDataset.open(tmp_path / "ds").fingerprint
    assert got["ontology_sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert (tmp_path / "v" / "config.yaml").is_file()


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept open instead of written (to read back what was drawn)."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    yield kept
    import matplotlib.pyplot as plt

    for f in kept:
        plt.close(f)


def test_plotted_data_are_the_tables_numbers(tmp_path, figures):
    """Bar heights, points and heatmap cells read back from the figures equal the rows the report's tables show."""
    sites = {c: v["site"] for c, v in ONTOLOGY.items()}
    plots.plot_probe_metrics(PROBES, tmp_path / "a.png", sites=sites)
    acc, r2 = figures[-1].axes[0], figures[-1].axes[1]
    assert (acc.get_ylabel(), r2.get_ylabel()) == ("balanced_accuracy", "r2")
    assert [t.get_text() for t in acc.get_xticklabels()] == ["has_key"]
    bars = {c.get_label(): [b.get_height() for b in c] for c in acc.containers if hasattr(c, "patches")}
    assert bars == {"linear": [0.911], "prior": [0.5], "random_model": [0.612], "observation": [0.877], "history": [0.944]}
    bars = {c.get_label(): [b.get_height() for b in c] for c in r2.containers if hasattr(c, "patches")}
    assert bars["mlp"] == [0.701] and bars["random_model:mlp"] == [0.123] and bars["history"] == [0.811]

    imagined = [row("linear", "deter", "has_key", s, "balanced_accuracy", est(v))
                for s, v in (("imagined_k1", 0.8), ("imagined_k15", 0.6))]
    plots.plot_imagination(PROBES + imagined, tmp_path / "b.png", sites=sites)
    ax = figures[-1].axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("has_key")]
    assert list(line.get_xdata()) == [0, 1, 5, 15] and list(line.get_ydata()) == [0.911, 0.8, 0.733, 0.6]
    assert ax.get_xlabel().startswith("imagination horizon k")

    plots.plot_accuracy_vs_selectivity(PROBES, tmp_path / "c.png")
    ax = figures[-1].axes[0]
    points = sorted((float(c.lines[0].get_xdata()[i]), float(c.lines[0].get_ydata()[i]))
                    for c in ax.containers for i in range(len(c.lines[0].get_xdata())))
    assert points == [(0.222, 0.701), (0.344, 0.911)]  # (selectivity, test score) of the same probe

    by_ckpt = [{"step": t, "site": s, "concept": "has_key", "metric": "balanced_accuracy", "estimate": v}
               for (t, s, v) in ((0, "deter", 0.5), (10, "deter", 0.7), (0, "feat", 0.55), (10, "feat", 0.9))]
    plots.plot_by_checkpoint(by_ckpt, tmp_path / "d.png")
    ax = figures[-1].axes[0]
    grid = ax.get_images()[0].get_array()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["deter", "feat"]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["0", "10"]
    assert grid.tolist() == [[0.5, 0.7], [0.55, 0.9]]  # rows: sites, columns: steps

    plan = [{"planner": "cem", "model": "learned", "probe_method": "linear", "success_rate": est(0.75),
             "violation_rate": est(0.1)}, {"planner": "random", "success_rate": est(0.2), "violation_rate": est(0.3)}]
    plots.plot_planning(plan, tmp_path / "e.png")
    success, violations = figures[-1].axes
    assert [t.get_text() for t in success.get_yticklabels()] == ["cem / learned / linear", "random"]
    assert [b.get_width() for b in success.patches] == [0.75, 0.2] and [b.get_width() for b in violations.patches] == [0.1, 0.3]
    assert (success.get_xlabel(), violations.get_xlabel()) == ("success rate", "violation rate")

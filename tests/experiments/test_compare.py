"""`ontolab compare`: per-concept leaderboards with baselines at each run's chosen site, plots, a CSV of every row."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.compare import chosen_site_rows, cmd_compare, run_labels
from experiments.config import ConfigError

ONTOLAB = shutil.which("ontolab") or str(Path(sys.executable).parent / "ontolab")


def row(method, site, concept, split, metric, v):
    return {"method": method, "site": site, "concept": concept, "split": split, "metric": metric,
            "estimate": v, "ci_low": v - 0.05, "ci_high": v + 0.05}


def summary(shift=0.0):
    probes = []
    for site in ("deter", "feat"):
        bonus = 0.05 if site == "feat" else 0.0
        probes += [row("linear", site, "has_key", "test", "balanced_accuracy", 0.8 + shift + bonus),
                   row("linear", site, "has_key", "ood", "balanced_accuracy", 0.7 + shift + bonus),
                   row("linear", site, "has_key", "test", "selectivity", 0.3 + bonus),
                   row("mlp", site, "has_key", "test", "balanced_accuracy", 0.75 + bonus),
                   row("random_model", site, "has_key", "test", "balanced_accuracy", 0.6 + bonus)]
    probes += [row("prior", "deter", "has_key", "test", "balanced_accuracy", 0.5),
               row("observation", "deter", "has_key", "test", "balanced_accuracy", 0.65),
               row("linear", "feat", "has_key", "imagined_k5", "balanced_accuracy", 0.7)]
    return {"world": "lavakeydoor", "seed": 0, "probes": probes, "dynamics": {"model": "rssm", "open_loop": {"skipped": "too short"}},
            "ontology": {"has_key": {"method": "linear", "site": "feat"}},
            "planning": [{"planner": "cem", "model": "learned", "reward": "latent", "probe_method": "linear",
                          "success_rate": {"estimate": 0.5, "ci_low": 0.2, "ci_high": 0.8},
                          "violation_rate": {"estimate": 0.1, "ci_low": 0.0, "ci_high": 0.4}}]}


def make_run(folder: Path, shift=0.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary(shift)))
    return folder


def test_chosen_site_rows_read_every_method_at_the_ontology_site():
    rows = chosen_site_rows(summary()["probes"], {"has_key": "feat"}, "r")
    got = {(r["method"], r["split"], r["metric"]): r["estimate"] for r in rows}
    assert got[("r/linear", "test", "balanced_accuracy")] == pytest.approx(0.85)  # feat, not deter (0.8)
    assert got[("r/random_model", "test", "balanced_accuracy")] == pytest.approx(0.65)  # the same site as the probe
    assert got[("r/prior", "test", "balanced_accuracy")] == 0.5  # siteless baselines come along
    assert {r["site"] for r in rows} == {"chosen"}
    assert len(rows) == 8


def test_run_labels_disambiguate_clashing_names(tmp_path):
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]


def test_compare_two_runs(tmp_path):
    a, b = make_run(tmp_path / "a" / "run"), make_run(tmp_path / "b" / "run", shift=0.1)
    assert cmd_compare([str(a), str(b), f"out={tmp_path / 'cmp'}"]) == 0
    out = tmp_path / "cmp"
    report = (out / "report.md").read_text()
    assert "### has_key (balanced_accuracy)" in report
    assert "| a/run | linear* | 0.850 [0.800, 0.900] | 0.750 [0.700, 0.800] | 0.700 [0.650, 0.750] | 0.350 [0.300, 0.400] |" in report
    assert "| b/run | linear* | 0.950 [0.900, 1.000]" in report
    for baseline in ("prior", "random_model", "observation"):
        assert f"| a/run | {baseline} |" in report
    assert "![probe_metrics](plots/probe_metrics.png)" in report
    assert "not drawn (no open-loop numbers: too short; too short)" in report
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(summary()["probes"]) and {r["run"] for r in rows} == {"a/run", "b/run"}
    for name in ("probe_metrics", "accuracy_vs_selectivity", "imagination", "planning"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_a_folder_without_a_summary_before_writing(tmp_path):
    a = make_run(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no summary.json"):
        cmd_compare([str(a), str(tmp_path / "empty"), f"out={tmp_path / 'cmp'}"])
    assert not (tmp_path / "cmp").exists()
    with pytest.raises(ConfigError, match="takes run folders and out=DIR"):
        cmd_compare([str(a), "seed=3"])
    with pytest.raises(ConfigError, match="at least one run folder"):
        cmd_compare([f"out={tmp_path / 'cmp'}"])


def test_compare_command_line(tmp_path):
    a = make_run(tmp_path / "a")
    env = dict(os.environ, ONTOLAB_DEBUG="")
    r = subprocess.run([ONTOLAB, "compare", str(a), "out=cmp"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp" / "report.md").is_file()
    r = subprocess.run([ONTOLAB, "compare", str(tmp_path / "nope")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("ontolab: error: ") and "holds no summary.json" in r.stderr

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

from experiments.compare import chosen_site_rows, cmd_compare, leaderboard_markdown, leaderboard_rows, run_labels
from experiments.config import ConfigError

ONTOLAB = shutil.which("ontolab") or str(Path(sys.executable).parent / "ontolab")


@pytest.fixture(autouse=True)
def no_wandb(tmp_path, monkeypatch):
    """wandb off unless a test turns it on, and its own folders (settings, cache) kept in the test folder."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


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


def test_per_method_baselines_come_along_and_sort_after_the_methods():
    """A baseline fitted with another probe method is named ``<baseline>:<method>``: the observation one is
    kept at any site like the plain one, and the leaderboard lists every baseline after the probe methods."""
    extra = [row("observation:mlp", "deter", "has_key", "test", "balanced_accuracy", 0.66),
             row("random_model:mlp", "feat", "has_key", "test", "balanced_accuracy", 0.61),
             row("random_model:mlp", "deter", "has_key", "test", "balanced_accuracy", 0.55)]
    rows = chosen_site_rows(summary()["probes"] + extra, {"has_key": "feat"})
    got = {(r["method"], r["split"]): r["estimate"] for r in rows if r["metric"] == "balanced_accuracy"}
    assert got[("observation:mlp", "test")] == pytest.approx(0.66)  # siteless: kept although read at deter
    assert got[("random_model:mlp", "test")] == pytest.approx(0.61)  # the chosen site's, not deter's
    board = leaderboard_rows({"r": rows}, {"r": {"has_key": "linear"}})
    assert [b["method"] for b in board] == ["linear", "mlp", "prior", "random_model", "random_model:mlp",
                                            "observation", "observation:mlp"]
    assert [b["chosen"] for b in board] == [True] + [False] * 6


def test_leaderboard_shows_mdl_compression_only_where_mdl_ran():
    rows = chosen_site_rows(summary()["probes"], {"has_key": "feat"})
    assert "MDL compression" not in "\n".join(leaderboard_markdown({"r": rows}))
    mdl = [row("linear", "feat", "has_key", "test", "compression", 3.2), row("linear", "deter", "has_key", "test", "compression", 1.1)]
    rows = chosen_site_rows(summary()["probes"] + mdl, {"has_key": "feat"})
    board = {b["method"]: b for b in leaderboard_rows({"r": rows})}
    assert board["linear"]["compression"]["estimate"] == pytest.approx(3.2)  # the chosen site's, not deter's
    assert board["mlp"]["compression"] is None
    table = "\n".join(leaderboard_markdown({"r": rows}))
    assert "| MDL compression |" in table and "3.200 [3.150, 3.250]" in table


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
    with pytest.raises(ConfigError, match="summary.json' is a file; give a finished run folder"):
        cmd_compare([str(a / "summary.json"), f"out={tmp_path / 'cmp'}"])
    with pytest.raises(ConfigError, match="takes run folders, out=DIR, wandb.mode=MODE"):
        cmd_compare([str(a), "seed=3"])
    with pytest.raises(ConfigError, match="wandb.mode must be offline, online or disabled, got 'loud'"):
        cmd_compare([str(a), "wandb.mode=loud"])
    with pytest.raises(ConfigError, match="at least one run folder"):
        cmd_compare([f"out={tmp_path / 'cmp'}"])


def test_compare_command_line(tmp_path):
    a = make_run(tmp_path / "a")
    env = dict(os.environ, ONTOLAB_DEBUG="", WANDB_MODE="disabled")
    r = subprocess.run([ONTOLAB, "compare", str(a), "out=cmp"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp" / "report.md").is_file()
    r = subprocess.run([ONTOLAB, "compare", str(tmp_path / "nope")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("ontolab: error: ") and "holds no summary.json" in r.stderr


# ------------------------------------------------------------------------------------------- wandb
def test_compare_logs_tables_and_images_to_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    a, b = make_run(tmp_path / "a" / "run"), make_run(tmp_path / "b" / "run", shift=0.1)
    out = tmp_path / "cmp"
    assert cmd_compare([str(a), str(b), f"out={out}", "wandb.project=ontolab-test"]) == 0
    tracked = json.loads((out / "tracking.json").read_text())
    assert tracked["mode"] == "offline" and tracked["fallback"] is None and tracked["run_id"]
    [run_dir] = list((out / "wandb").glob(f"offline-run-*-{tracked['run_id']}"))
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in (run_dir / "files" / "media" / "table").rglob("*.table.json")}
    # compare/results: every row of compare.csv, numbers as numbers
    with open(out / "compare.csv") as f:
        csv_rows = list(csv.DictReader(f))
    logged = [dict(zip(tables["results"]["columns"], r)) for r in tables["results"]["data"]]
    assert len(logged) == len(csv_rows) == 2 * len(summary()["probes"])
    assert [(r["run"], r["method"], r["site"], r["split"], r["metric"], r["estimate"]) for r in logged] == \
        [(r["run"], r["method"], r["site"], r["split"], r["metric"], pytest.approx(float(r["estimate"]))) for r in csv_rows]
    # compare/leaderboard: 2 runs x (linear, mlp, prior, random_model, observation) at the ontology's site (feat)
    board = [dict(zip(tables["leaderboard"]["columns"], r)) for r in tables["leaderboard"]["data"]]
    assert len(board) == 10 and {r["concept"] for r in board} == {"has_key"}
    lin = {r["run"]: r for r in board if r["method"] == "linear"}
    assert lin["a/run"]["chosen"] is True and lin["a/run"]["test_estimate"] == pytest.approx(0.85)
    assert lin["b/run"]["test_estimate"] == pytest.approx(0.95) and lin["b/run"]["ood_ci_low"] == pytest.approx(0.8)
    assert lin["a/run"]["imagined_k5_estimate"] == pytest.approx(0.7) and lin["a/run"]["selectivity_estimate"] == pytest.approx(0.35)
    mlp = next(r for r in board if r["run"] == "a/run" and r["method"] == "mlp")
    assert mlp["chosen"] is False and mlp["test_estimate"] == pytest.approx(0.8) and mlp["ood_estimate"] is None
    # plots/<name>: every PNG of the comparison, byte for byte
    pngs = {p.stem: p for p in (out / "plots").glob("*.png")}
    assert set(pngs) == {"probe_metrics", "accuracy_vs_selectivity", "imagination", "planning"}
    images = run_dir / "files" / "media" / "images"
    for stem, png in pngs.items():
        [copy] = list(images.rglob(f"{stem}_*.png"))
        assert copy.read_bytes() == png.read_bytes()
    assert set(tracked["logged"]) == {"table:compare/results", "table:compare/leaderboard", *(f"image:{s}" for s in pngs)}


def test_compare_wandb_disabled_and_a_failure_to_log_keeps_the_comparison(tmp_path, monkeypatch, capsys):
    import experiments.compare as compare

    a = make_run(tmp_path / "a")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert cmd_compare([str(a), f"out={tmp_path / 'off'}", "wandb.mode=disabled"]) == 0
    assert json.loads((tmp_path / "off" / "tracking.json").read_text())["mode"] == "disabled"
    assert not (tmp_path / "off" / "wandb").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(compare, "track_compare", broken)
    capsys.readouterr()
    assert cmd_compare([str(a), f"out={tmp_path / 'cmp'}"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ontolab: warning: wandb logging failed (RuntimeError: disk quota exceeded)")
    assert (tmp_path / "cmp" / "report.md").is_file() and (tmp_path / "cmp" / "leaderboard.csv").is_file()


# ------------------------------------------------------------------------------ probe folders
def make_probe_folder(folder: Path, *, index: str = "harness") -> Path:
    """What `ontolab probe` writes (results.csv, harness.json or ontology/ontology.json, config.yaml), probe files left out."""
    from probes.results import ResultRow, write_results_csv

    folder.mkdir(parents=True)
    write_results_csv([ResultRow(**r) for r in summary()["probes"]], folder / "results.csv")
    onto = summary()["ontology"]
    if index == "harness":
        (folder / "harness.json").write_text(json.dumps({"settings": {}, "ontology": onto}))
    else:
        (folder / "ontology").mkdir()
        (folder / "ontology" / "ontology.json").write_text(json.dumps({"format": 1, "entries": [
            {"concept": c, **v, "site_shape": [8], "probe": f"probes/{c}.safetensors"} for c, v in onto.items()]}))
    (folder / "config.yaml").write_text("seed: 7\nworld:\n  name: lavakeydoor\ndynamics:\n  model: gru\n")
    return folder


def test_compare_reads_probe_folders(tmp_path):
    run = make_run(tmp_path / "run")
    probe = make_probe_folder(tmp_path / "probe")  # `ontolab probe out=probe`
    onto = make_probe_folder(tmp_path / "onto", index="ontology")  # no harness.json: ontology/ontology.json
    partial = tmp_path / "partial"  # a run folder without summary.json: its probes/ folder
    make_probe_folder(partial / "probes")
    assert cmd_compare([str(run), str(probe), str(onto), str(partial), f"out={tmp_path / 'cmp'}"]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    for label in ("run", "probe", "onto", "partial"):  # the chosen site (feat) read from each folder's ontology
        assert f"| {label} | linear* | 0.850 [0.800, 0.900] | 0.750 [0.700, 0.800] | 0.700 [0.650, 0.750] | 0.350 [0.300, 0.400] |" in report
    assert f"| probe | {probe.resolve()} | lavakeydoor | 7 | gru |" in report
    with open(tmp_path / "cmp" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * len(summary()["probes"])
    assert "| run | cem / learned / linear |" in report and "| probe | cem" not in report  # planning only from the run


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def _summary_with(**changes) -> str:
    return json.dumps({**summary(), **changes})


BAD_FOLDERS = {
    "summary_not_json": ({"summary.json": '{"probes": [1,'}, "summary.json is not valid JSON (Expecting value at line 1"),
    "summary_a_list": ({"summary.json": "[1, 2]"}, "summary.json: expected a JSON object, got a list"),
    "ontology_without_site": ({"summary.json": _summary_with(ontology={"has_key": {"method": "linear"}})},
                              "summary.json: ontology entry 'has_key' has no 'site'"),
    "ontology_not_object": ({"summary.json": _summary_with(ontology=["has_key"])}, "'ontology' must be an object, got a list"),
    "probe_row_without_concept": ({"summary.json": _summary_with(probes=[{"method": "linear", "site": "feat"}])},
                                  "probes[0] needs string concept, split, metric"),
    "probe_estimate_text": ({"summary.json": _summary_with(probes=[{**summary()["probes"][0], "estimate": "high"}])},
                            "probes[0].estimate must be a number or null, got 'high'"),
    "planning_rate_number": ({"summary.json": _summary_with(planning=[{"planner": "cem", "success_rate": 0.5}])},
                             "planning[0].success_rate must be an object"),
    "results_wrong_columns": ({"results.csv": "a,b\n1,2\n", "harness.json": "{}"}, "results.csv is not a probe results table"),
    "results_bad_split": ({"results.csv": "method,site,concept,split,metric,estimate,ci_low,ci_high\n"
                                          "linear,feat,has_key,train,r2,1,0,1\n", "harness.json": "{}"},
                          "results.csv is not a probe results table (ResultRow.split must be one of"),
    "harness_not_json": ({"results.csv": "method,site,concept,split,metric,estimate,ci_low,ci_high\n", "harness.json": "{"},
                         "harness.json is not valid JSON"),
    "no_ontology": ({"results.csv": "method,site,concept,split,metric,estimate,ci_low,ci_high\n"},
                    "holds results.csv but neither harness.json nor ontology/ontology.json names the chosen probes"),
    "ontology_index_bad": ({"results.csv": "method,site,concept,split,metric,estimate,ci_low,ci_high\n",
                            "ontology/ontology.json": '{"entries": ["has_key"]}'}, "ontology.json: expected an object whose 'entries'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folders_are_refused_in_one_line_naming_the_file(tmp_path, capsys, monkeypatch, case):
    from experiments.cli import main

    files, needle = BAD_FOLDERS[case]
    good, bad = make_run(tmp_path / "good"), tmp_path / "bad"
    bad.mkdir()
    for name, text in files.items():
        _write(bad, name, text)
    monkeypatch.setenv("ONTOLAB_DEBUG", "")
    assert main(["compare", str(good), str(bad), f"out={tmp_path / 'cmp'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ontolab: error: "), err
    assert needle in err and str(bad) in err, err
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_compare_online_with_an_unreachable_server_logs_offline(tmp_path):
    """Like tests/reliability/test_wandb_unreachable.py, for `ontolab compare`: exit 0, one warning, an offline run."""
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_INIT_TIMEOUT="3", WANDB_API_KEY="0" * 40,
               WANDB_CONFIG_DIR=str(tmp_path / "wc"), WANDB_CACHE_DIR=str(tmp_path / "wk"), WANDB_DATA_DIR=str(tmp_path / "wd"),
               HOME=str(tmp_path / "home"), ONTOLAB_DEBUG="")
    a = make_run(tmp_path / "a")
    r = subprocess.run([ONTOLAB, "compare", str(a), "out=cmp", "wandb.mode=online"], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("ontolab: warning: wandb online logging failed"), r.stderr
    tracked = json.loads((tmp_path / "cmp" / "tracking.json").read_text())
    assert tracked["mode"] == "offline" and tracked["fallback"]
    [run_dir] = list((tmp_path / "cmp" / "wandb").glob(f"offline-run-*-{tracked['run_id']}"))
    assert list((run_dir / "files" / "media" / "table").rglob("*.table.json"))

"""The report's plots: valid PNGs from plain rows, written atomically; empty input refused with a reason."""

from __future__ import annotations

import struct

import pytest

from experiments.plots import (NothingToPlot, main_metric, markdown_plots, plot_accuracy_vs_selectivity, plot_imagination,
                               plot_open_loop, plot_planning, plot_probe_metrics, write_run_plots)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Width and height from the IHDR chunk (read independently of matplotlib)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND", "PNG is truncated"
    return struct.unpack(">II", data[16:24])


def row(method, site, concept, split, metric, est, half=0.05):
    return {"method": method, "site": site, "concept": concept, "split": split, "metric": metric,
            "estimate": est, "ci_low": est - half, "ci_high": est + half}


def probe_rows():
    rows = []
    for method, base in (("linear", 0.9), ("mlp", 0.85), ("random_model", 0.6), ("observation", 0.7), ("prior", 0.5)):
        for site in ("deter", "feat"):
            rows += [row(method, site, "has_key", "test", "balanced_accuracy", base),
                     row(method, site, "steps_to_goal", "test", "r2", base - 0.2),
                     row(method, site, "steps_to_goal", "test", "mae", 1.0)]
            if method in ("linear", "mlp"):
                rows += [row(method, site, "has_key", "test", "selectivity", base - 0.5),
                         row(method, site, "steps_to_goal", "test", "selectivity", base - 0.6)]
    for k, est in ((1, 0.88), (5, 0.8), (15, 0.7)):
        rows += [row("linear", "deter", "has_key", f"imagined_k{k}", "balanced_accuracy", est),
                 row("mlp", "feat", "steps_to_goal", f"imagined_k{k}", "r2", est - 0.3)]
    rows.append(row("linear", "deter", "steps_to_goal", "test", "r2", -40.0, half=30.0))  # R2 far below the axis floor
    return rows


def rate(est, lo, hi):
    return {"estimate": est, "ci_low": lo, "ci_high": hi}


PLANNING = [
    {"planner": "cem", "model": "learned", "reward": "latent", "probe_method": "linear",
     "success_rate": rate(0.6, 0.3, 0.85), "violation_rate": rate(0.1, 0.0, 0.4)},
    {"planner": "cem", "model": "oracle", "reward": "true", "probe_method": None,
     "success_rate": rate(0.9, 0.6, 1.0), "violation_rate": rate(0.0, 0.0, 0.3)},
    {"planner": "random", "model": None, "reward": None, "probe_method": None,
     "success_rate": rate(0.1, 0.0, 0.4), "violation_rate": rate(0.5, 0.2, 0.8)},
]
OPEN_LOOP = {"split": "test", "metric": "accuracy", "context": 10,
             "model": {"1": rate(0.95, 0.93, 0.97), "5": rate(0.9, 0.87, 0.92), "15": rate(0.8, 0.75, 0.85)},
             "copy_last_frame": {"1": rate(0.9, 0.88, 0.92), "5": rate(0.8, 0.77, 0.83), "15": rate(0.7, 0.66, 0.74)}}


def test_main_metric_is_balanced_accuracy_else_r2():
    assert main_metric(probe_rows()) == {"has_key": "balanced_accuracy", "steps_to_goal": "r2"}


@pytest.mark.parametrize("draw", [
    lambda p: plot_probe_metrics(probe_rows(), p),
    lambda p: plot_probe_metrics(probe_rows(), p, sites={"has_key": "deter", "steps_to_goal": "feat"}),
    lambda p: plot_accuracy_vs_selectivity(probe_rows(), p),
    lambda p: plot_imagination(probe_rows(), p),
    lambda p: plot_planning(PLANNING, p),
    lambda p: plot_open_loop({"run a": OPEN_LOOP, "run b": OPEN_LOOP}, p),
], ids=["metrics", "metrics_at_sites", "selectivity", "imagination", "planning", "open_loop"])
def test_each_plot_is_a_valid_png_written_atomically(tmp_path, draw):
    path = tmp_path / "sub" / "plot.png"
    assert draw(path) == path
    w, h = png_size(path)
    assert w > 200 and h > 150
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]  # no temporary file left beside it


@pytest.mark.parametrize("draw, reason", [
    (lambda p: plot_probe_metrics([], p), "no balanced_accuracy or r2 rows"),
    (lambda p: plot_probe_metrics(probe_rows(), p, split="ood"), "split 'ood'"),
    (lambda p: plot_accuracy_vs_selectivity([r for r in probe_rows() if r["metric"] != "selectivity"], p), "selectivity"),
    (lambda p: plot_imagination([r for r in probe_rows() if not r["split"].startswith("imagined")], p), "imagined"),
    (lambda p: plot_planning([], p), "no planning rows"),
    (lambda p: plot_open_loop({"run": {"skipped": "no test episode has 25 steps"}}, p), "no test episode has 25 steps"),
])
def test_nothing_to_plot_is_refused_with_a_reason_and_writes_nothing(tmp_path, draw, reason):
    with pytest.raises(NothingToPlot, match=reason):
        draw(tmp_path / "plot.png")
    assert not list(tmp_path.iterdir())


def test_run_plots_skip_with_reasons_and_embed_relative_links(tmp_path):
    summary = {"probes": probe_rows(), "ontology": {"has_key": {"method": "linear", "site": "deter"},
                                                    "steps_to_goal": {"method": "mlp", "site": "feat"}},
               "planning": [], "dynamics": {"open_loop": OPEN_LOOP}}
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "planning.png").write_bytes(b"stale")  # from an earlier run: must not be linked
    plots = write_run_plots(summary, tmp_path / "plots")
    assert isinstance(plots["planning"], str) and "no planning rows" in plots["planning"]
    assert not (tmp_path / "plots" / "planning.png").exists()
    for name in ("probe_metrics", "accuracy_vs_selectivity", "imagination", "open_loop"):
        png_size(plots[name])
    md = "\n".join(markdown_plots(plots, tmp_path))
    assert "![probe_metrics](plots/probe_metrics.png)" in md
    assert "not drawn (no planning rows" in md

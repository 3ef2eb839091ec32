"""Result rows: fixed names, validation, exact CSV round trip, atomic write."""

from __future__ import annotations

import os

import pytest

from probes.results import BASELINE_METHODS, METRICS, SPLITS, ResultRow, read_results_csv, write_results_csv
from probes.stats import Estimate


def test_names_fixed_by_the_issue():
    assert SPLITS == ("test", "ood", "imagined_k1", "imagined_k5", "imagined_k15", "test_nonterminal")
    assert set(METRICS) == {"balanced_accuracy", "auroc", "macro_f1", "r2", "mae", "ece", "selectivity", "compression",
                           "compression_control", "codelength", "codelength_control", "state_consistency", "causal_sufficiency", "causal_sufficiency_null",
                           "causal_sufficiency_probe", "causal_sufficiency_probe_null",
                           "causal_necessity", "causal_necessity_null"}
    assert BASELINE_METHODS == ("prior", "random_model", "observation")


def test_rows_validate_their_names():
    with pytest.raises(ValueError, match="split must be one of"):
        ResultRow("linear", "h", "has_key", "train", "auroc", 0.9, 0.8, 1.0)
    with pytest.raises(ValueError, match="metric must be one of"):
        ResultRow("linear", "h", "has_key", "test", "accuracy", 0.9, 0.8, 1.0)
    with pytest.raises(ValueError, match="ci_low <= ci_high"):
        ResultRow("linear", "h", "has_key", "test", "auroc", 0.9, 1.0, 0.8)
    with pytest.raises(ValueError, match="method must be a non-empty"):
        ResultRow("", "h", "has_key", "test", "auroc", 0.9, 0.8, 1.0)


def test_csv_round_trip_is_exact_and_leaves_no_temp_file(tmp_path):
    rows = [
        ResultRow.from_estimate("linear", "deter", "has_key", "test", "auroc", Estimate(0.1 + 0.2, 0.25, 1 / 3)),
        ResultRow("prior", "none", "dist_goal", "imagined_k5", "r2", -0.01, float("nan"), float("nan")),
    ]
    path = write_results_csv(rows, tmp_path / "sub" / "results.csv")
    assert os.listdir(tmp_path / "sub") == ["results.csv"]
    back = read_results_csv(path)
    assert back[0] == rows[0] and back[0].estimate == 0.1 + 0.2
    assert back[1].to_dict()["method"] == "prior" and back[1].ci_low != back[1].ci_low  # NaN survives
    with open(path) as f:
        assert f.readline().strip() == "method,site,concept,split,metric,estimate,ci_low,ci_high"

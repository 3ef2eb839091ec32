"""The probes section of the run config: probe seeds must be a non-empty list of distinct seeds."""

from __future__ import annotations

import pytest

from experiments.config import ConfigError, build, parse_overrides
from experiments.schema import RunConfig


def probes(*args: str):
    return build(RunConfig, parse_overrides(list(args))).probes


def test_seeds_default_and_lists_are_accepted():
    assert probes().seeds == (0,)
    assert probes("probes.seeds=[3]").seeds == (3,)
    assert probes("probes.seeds=[0,1,2]").seeds == (0, 1, 2)


@pytest.mark.parametrize("value, shown", [("[]", r"\[\]"), ("[1,1]", r"\[1, 1\]")])
def test_empty_or_repeated_seeds_are_refused_in_one_line(value, shown):
    """An empty list used to be accepted (the harness then quietly used seed 0); a repeated seed would count one
    probe twice in the interval over seeds."""
    with pytest.raises(ConfigError, match=rf"probes.seeds must list distinct probe seeds \(at least one\), got {shown}; "
                                          r"e.g. probes.seeds=\[0\]") as e:
        probes(f"probes.seeds={value}")
    assert "\n" not in str(e.value)


MLP_GRID = "probes.grids={mlp: [{hidden: [64]}, {hidden: [256, 256]}]}"


def test_grids_default_to_null_and_take_per_method_lists_of_points(tmp_path):
    assert probes().grids is None
    assert probes(MLP_GRID).grids == {"mlp": [{"hidden": [64]}, {"hidden": [256, 256]}]}
    # 1e-3 is a float on the command line (experiments.config.ConfigSafeLoader; YAML 1.1 read it as a string)
    assert probes("probes.grids.linear=[{l2: 1e-3}, {l2: 1}]").grids == {"linear": [{"l2": 0.001}, {"l2": 1}]}
    from experiments.schema import resolve

    cfg = tmp_path / "grids.yaml"
    cfg.write_text("probes:\n  grids:\n    sae:\n      - {n_features: 32}\n      - {n_features: 128, l1: 1.0e-3}\n")
    assert resolve([], cfg).probes.grids == {"sae": [{"n_features": 32}, {"n_features": 128, "l1": 1e-3}]}


@pytest.mark.parametrize("value, match", [
    ("{ridge: [{l2: 1}]}", r"probes.grids: unknown method\(s\) \['ridge'\]; known: linear, mlp, sae, sparse"),
    ("{mlp: [{hiden: [64]}]}", r"probes.grids.mlp: grid point 0 of method 'mlp' has unknown hyperparameter\(s\) "
                               r"\['hiden'\]; it takes: hidden, lr, weight_decay, batch_size, max_epochs, patience, val_fraction$"),
    ("{mlp: [{seed: 3}]}", r"unknown hyperparameter\(s\) \['seed'\].* \(the seed, device and dtype are the run's\)"),
    ("{sparse: [{l1: 0.1}]}", r"probes.grids.sparse: .* \['l1'\]; it takes: l1_fraction, max_iter, tol"),
    ("{linear: [{max_iter: 10}]}", r"probes.grids.linear: grid point 0 of method 'linear' needs a number 'l2'"),
    ("{linear: [{l2: 1}, {l2: 1.0}]}", r"probes.grids.linear: the linear grid repeats l2 values: \[1.0, 1.0\]"),
    ("{mlp: []}", r"probes.grids.mlp: the grid of method 'mlp' must be a non-empty list"),
    ("{mlp: {hidden: [64]}}", r"probes.grids.mlp: the grid of method 'mlp' must be a non-empty list"),
    ("{mlp: [{hidden: [1, 2, 3]}]}", r"probes.grids.mlp: grid point 0 .*hidden must be 1 or 2 positive widths"),
    ("[{l2: 1}]", r"config key 'probes.grids' must be a mapping"),
])
def test_bad_grids_are_refused_in_one_line_naming_the_key_and_the_allowed_names(value, match):
    with pytest.raises(ConfigError, match=match) as e:
        probes(f"probes.grids={value}")
    assert "\n" not in str(e.value)


def test_the_grids_help_states_the_default_mlp_budget():
    """The help text quotes DEFAULT_GRIDS' MLP point: it must not drift from it."""
    import dataclasses

    from experiments.schema import ProbesSection
    from probes.grids import DEFAULT_GRIDS

    text = next(f for f in dataclasses.fields(ProbesSection) if f.name == "grids").metadata["help"]
    point = DEFAULT_GRIDS["mlp"][0]
    import re

    for k in ("lr", "batch_size", "max_epochs", "patience"):
        assert float(re.search(rf"\b{k} ([0-9.e-]+)[,)]", text).group(1)) == point[k], k
    assert "early stopping" in text and len(DEFAULT_GRIDS["mlp"]) == len(DEFAULT_GRIDS["sae"]) == 1

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

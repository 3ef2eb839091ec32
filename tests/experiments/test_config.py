"""The config system: defaults <- YAML <- overrides, every bad key refused with the key named."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from experiments.config import ConfigError, build, field, load_yaml, parse_overrides
from experiments.schema import RunConfig, resolve


@dataclass(frozen=True)
class Inner:
    n: int = field(3, help="a count")
    names: tuple[str, ...] = field(("a",), help="names")


@dataclass(frozen=True)
class Outer:
    lr: float = field(0.1, help="rate")
    flag: bool = field(False, help="a flag")
    maybe: int | None = field(None, help="optional")
    inner: Inner = field(default_factory=Inner, help="inner")


def test_build_coerces_and_defaults():
    cfg = build(Outer, parse_overrides(["lr=1e-3", "inner.n=5", "flag=true", "inner.names=[x,y]", "maybe=null"]))
    assert cfg == Outer(lr=1e-3, flag=True, maybe=None, inner=Inner(n=5, names=("x", "y")))
    assert build(Outer, {}) == Outer()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["lr=abc"], "'lr' must be a number"),
        (["inner.n=2.5"], "'inner.n' must be an integer"),
        (["flag=3"], "'flag' must be true or false"),
        (["inner.m=1"], "unknown config key 'inner.m'; allowed keys under 'inner': n, names"),
        (["nope=1"], "unknown config key 'nope'"),
        (["inner=3"], "'inner' must be a mapping"),
    ],
)
def test_build_refuses_bad_values(args, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")) as e:
        build(Outer, parse_overrides(args))
    assert "\n" not in str(e.value)


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["episodes"])


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  episodes: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' is not valid YAML at line \d+"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(lst)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_resolve_layers_defaults_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ndata:\n  episodes: 50\n  policy: random\n")
    cfg = resolve(["episodes=7", "world.size=11"], f)
    assert isinstance(cfg, RunConfig)
    assert (cfg.seed, cfg.data.episodes, cfg.data.policy) == (3, 7, "random")
    assert cfg.world.params == {"size": 11}
    assert cfg.world_params().size == 11


@pytest.mark.parametrize(
    "args, needle",
    [
        (["world=nosuchworld"], "unknown world 'nosuchworld'; known worlds: "),
        (["world.nosuchparam=1"], "unknown config key 'world.nosuchparam'"),
        (["world.size=big"], "'world.size' must be an integer"),
        (["episodes=-5"], "data.episodes must be a positive integer"),
        (["episodes=0"], "data.episodes must be a positive integer"),
        (["data.epsilon=2"], "data.epsilon must lie in [0, 1]"),
        (["wandb.mode=loud"], "wandb.mode must be offline, online or disabled"),
    ],
)
def test_resolve_refuses(args, needle):
    with pytest.raises(ConfigError) as e:
        resolve(args)
    assert needle in str(e.value)


def test_exponent_floats_are_numbers_on_the_command_line_and_in_files(tmp_path):
    """`1e-3`, `1e5` and `.5` are floats (YAML 1.2, JSON, Python); PyYAML's YAML 1.1 resolver read `1e-3` as a
    string, so `dynamics.hparams.min_std=1e-3` was refused as 'not a finite number'."""
    from experiments.config import load_yaml, parse_overrides
    from experiments.schema import resolve

    got = parse_overrides(["a=1e-3", "b=1E5", "c=.5", "d=-2.5e-1", "e=[1e-5, 2]", "f=3", "g=1e-3x", "h=true"])
    assert got == {"a": 0.001, "b": 100000.0, "c": 0.5, "d": -0.25, "e": [1e-05, 2], "f": 3, "g": "1e-3x", "h": True}
    assert type(got["f"]) is int
    path = tmp_path / "c.yaml"
    path.write_text("dynamics:\n  lr: 3e-4\n  hparams:\n    min_std: 1e-2\n")
    assert load_yaml(path) == {"dynamics": {"lr": 0.0003, "hparams": {"min_std": 0.01}}}
    cfg = resolve(["dynamics.hparams.min_std=1e-3", "dynamics.lr=2e-3"], str(path))
    assert cfg.dynamics.hparams["min_std"] == 0.001 and cfg.dynamics.lr == 0.002

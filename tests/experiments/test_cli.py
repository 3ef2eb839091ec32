"""The `ontolab` command through the real console script: bad input -> one line, exit 2, nothing touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ONTOLAB = shutil.which("ontolab") or str(Path(sys.executable).parent / "ontolab")


def ontolab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", ONTOLAB_DEBUG="")
    return subprocess.run([ONTOLAB, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def assert_refused(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ontolab: error: ")
    assert needle in err, err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["collect", "world=nosuchworld"], "unknown world 'nosuchworld'; known worlds: "),
        (["collect", "episodes=-3"], "data.episodes must be a positive integer"),
        (["collect", "episodes=many"], "'data.episodes' must be an integer"),
        (["collect", "data.nosuchkey=1"], "unknown config key 'data.nosuchkey'"),
        (["collect", "world.nosuchparam=1"], "unknown config key 'world.nosuchparam'"),
        (["collect", "seed=1", "episodes"], "must look like key=value"),
        (["collect", "missing_config.yaml"], "does not exist"),
        (["train", "data=/nonexistent/dataset"], "/nonexistent/dataset"),
        (["train"], "needs a dataset"),
        (["nosuchcommand"], "invalid choice"),
        (["collect", "data.policy=bogus"], "unknown policy 'bogus'; known: "),
        (["run", "dynamics.accelerator=tpu"], "dynamics.accelerator must be one of"),
        (["run", "dynamics=nosuchmodel"], "unknown dynamics model 'nosuchmodel'; known models: "),
        (["run", "dynamics.hparams.nosuch=1"], "unknown hparam(s) ['nosuch']"),
        (["collect", "world.families=[scatter,moat]"], "includes the held-out family ['moat']"),
        (["run", "probes.sites=[nosuch]"], "has no site(s) ['nosuch']; its sites are: "),
        (["run", "probes.concepts=[nokey]"], "unknown concept(s) ['nokey']; this world's concepts are: "),
        (["run", "probes.methods=[magic]"], "unknown method(s) ['magic']"),
        (["run", "threads=0"], "threads must be a positive integer"),
        (["quickstart", "myconfig.yaml"], "takes only key=value overrides"),
    ],
)
def test_bad_input_is_refused_in_one_line(tmp_path, args, needle):
    r = ontolab(*args, f"out={tmp_path / 'out'}", cwd=tmp_path)
    assert_refused(r, needle)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    r = ontolab("collect", "episodes=2", f"out={f}", cwd=tmp_path)
    assert_refused(r, "is a file")
    assert f.read_text() == "keep me"


def test_malformed_yaml_is_refused(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {episodes: [1\n")
    r = ontolab("collect", str(cfg), f"out={tmp_path / 'out'}", cwd=tmp_path)
    assert_refused(r, "is not valid YAML")


def test_worlds_lists_every_world_and_concept(tmp_path):
    r = ontolab("worlds", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("lavakeydoor", "pointmass", "has_key", "steps_to_goal", "in_hazard"):
        assert name in r.stdout


def test_help_lists_config_keys(tmp_path):
    r = ontolab("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "data.episodes" in r.stdout and "world.name" in r.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", ["worlds", "collect", "train", "probe", "plan", "verify", "run", "quickstart",
                                     "sweep", "compare"])
def test_every_command_prints_its_usage_on_help(tmp_path, monkeypatch, capsys, command, flag):
    from experiments.cli import COMMANDS, main

    assert command in COMMANDS
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main([command, "out=x", flag]) == 0  # --help anywhere, before the command reads its arguments
    out = capsys.readouterr()
    assert out.err == "" and out.out.startswith(f"usage:\n    ontolab {command} "), out.out[:300]
    assert ("data.episodes (int" in out.out) == (command not in ("worlds", "compare"))  # config keys where there is a config
    assert not any(tmp_path.iterdir())  # nothing read as a path, nothing written


def test_help_through_the_console_script(tmp_path):
    for args, needle in ((["compare", "--help"], "wandb.mode=offline|online|disabled"), (["probe", "--help"], "data=PATH")):
        r = ontolab(*args, cwd=tmp_path)
        assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)
        assert r.stdout.startswith(f"usage:\n    ontolab {args[0]} ") and needle in r.stdout
    assert not any(tmp_path.iterdir())


def test_train_data_may_name_a_runs_data_stage_folder(tmp_path, monkeypatch):
    """`ontolab train data=RUN/data` trains on RUN/data/dataset (a run's data stage holds its dataset in dataset/);
    a folder that is itself a dataset (holds manifest.json) is used as given."""
    import types

    import experiments.stages.train as train_stage
    from experiments.cli import cmd_train

    seen = []
    monkeypatch.setattr(train_stage, "run_train", lambda cfg, data, out: seen.append(data)
                        or types.SimpleNamespace(val_loss=0.0, is_global_zero=True))  # rank 0 prints
    stage = tmp_path / "stage"
    (stage / "dataset").mkdir(parents=True)
    (stage / "dataset" / "manifest.json").write_text("{}")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "manifest.json").write_text("{}")
    for given, expected in ((stage, stage / "dataset"), (stage / "dataset", stage / "dataset"), (plain, plain)):
        assert cmd_train([f"data={given}", f"out={tmp_path / 'out'}"]) == 0
        assert seen[-1] == expected

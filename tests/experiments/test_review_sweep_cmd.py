"""`ontolab sweep` (review): every point's values reach its run with their types, and the ``ontolab run`` command
written per point into ``sweep.json`` reproduces that point's config when a shell runs it."""

from __future__ import annotations

import json
import shlex
import subprocess
from types import SimpleNamespace

from experiments.cli import _split_args
from experiments.schema import resolve
from experiments.sweep import parse_sweep_args, run_sweep


def _summary(seed):
    return {"world": "lavakeydoor", "seed": seed, "probes": [], "ontology": {}, "planning": []}


def _sweep(tmp_path, args):
    seen = []

    def runner(cfg, progress=True):
        seen.append(cfg)
        return SimpleNamespace(summary=_summary(cfg.seed))

    out = tmp_path / "sw"
    run_sweep(parse_sweep_args([*args, f"out={out}"]), runner=runner, progress=False)
    return seen, json.loads((out / "sweep.json").read_text())


def test_small_float_axis_values_reach_the_runs_as_floats(tmp_path):
    """json.dumps(1e-05) is '1e-05', which YAML 1.1 (the override parser) reads as a string: the model's config
    refused it (ConfigError before any run) and a world parameter arrived as the string '1e-05'."""
    seen, _ = _sweep(tmp_path, ["dynamics.model=gru", "dynamics.hparams.recon_balance=[0.00001,0.5]",
                                "world.lava_density=[0.00001]", "seeds=[0]"])
    assert [c.dynamics.hparams["recon_balance"] for c in seen] == [1e-05, 0.5]
    for c in seen:
        assert type(c.world.params["lava_density"]) is float and c.world.params["lava_density"] == 1e-05


def test_each_command_in_sweep_json_reproduces_its_point_through_a_shell(tmp_path):
    cfg_file = tmp_path / "my configs" / "c.yaml"          # a space in the path: the command must quote it
    cfg_file.parent.mkdir()
    cfg_file.write_text("world:\n  name: lavakeydoor\n")
    seen, record = _sweep(tmp_path, [str(cfg_file), "probes.methods=[linear,mlp]", "dynamics.lr=[0.00001,0.003]",
                                     "seeds=[0,1]"])
    commands = [r["command"] for g in record["groups"] for r in g["runs"]]
    assert len(commands) == len(seen) == 4
    for cmd, cfg in zip(commands, seen):
        assert cmd.startswith("ontolab run ")
        # the words a shell passes (bash with failglob: an unquoted `[...]` that matches no file is an error, as in zsh)
        shell = subprocess.run(["bash", "-O", "failglob", "-c", "printf '%s\\0' " + cmd[len("ontolab run "):]],
                               cwd=tmp_path, capture_output=True, text=True)
        assert shell.returncode == 0, shell.stderr
        words = shell.stdout.split("\0")[:-1]
        assert words == shlex.split(cmd)[2:]
        config_file, overrides = _split_args(words)
        assert config_file == str(cfg_file)
        assert resolve(overrides, config_file) == cfg
        assert cfg.dynamics.lr in (1e-05, 0.003) and cfg.probes.methods == ("linear", "mlp")

"""Multi-process (DDP) training through the documented flags, on CPU (gloo): `ontolab run` and `ontolab train`
with ``dynamics.devices=2 dynamics.strategy=ddp``. Lightning starts the second process by running the same
command again; before, that process hit the run-folder lock and the run was killed (exit 137)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.pipeline import launched_rank

ONTOLAB = str(Path(sys.executable).parent / "ontolab")
TINY = ["data.episodes=40", "data.ood_episodes=8", "data.num_envs=8", "dynamics.max_steps=6", "dynamics.val_every=3",
        "dynamics.batch_size=4", "dynamics.window=16", "wandb.mode=disabled", "dynamics.hparams.deter=32",
        "dynamics.hparams.hidden=32", "dynamics.hparams.embed=32", "dynamics.hparams.stoch=4", "threads=1"]
DDP = ["dynamics.devices=2", "dynamics.strategy=ddp", "dynamics.accelerator=cpu"]


@pytest.mark.parametrize("env, rank", [
    ({}, 0), ({"LOCAL_RANK": "1"}, 1), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1), ({"LOCAL_RANK": "0"}, 0),
    ({"RANK": "0", "LOCAL_RANK": "0"}, 0), ({"RANK": "3", "LOCAL_RANK": "1"}, 3), ({"SLURM_PROCID": "2"}, 2),
    ({"RANK": "x"}, 0),
])
def test_launched_rank_reads_the_launchers_variables(monkeypatch, env, rank):
    for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launched_rank() == rank


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")}
    return {**env, "WANDB_MODE": "disabled"}


@pytest.mark.slow
def test_ddp_run_and_train_on_two_cpu_processes(tmp_path):
    run = subprocess.run([ONTOLAB, "run", f"out={tmp_path / 'run'}", *TINY, *DDP, "probes.methods=[linear]",
                          "probes.n_boot=20", "probes.mdl=false", "probes.max_train_rows=300", "probes.sites=[feat]",
                          "plan.reward=", "verify.enabled=false"],
                         cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("report:") == 1  # the summary once, not once per process
    assert "in use by another ontolab process" not in run.stderr
    metrics = json.loads((tmp_path / "run" / "dynamics" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["transitions_per_s"] > 0
    assert (tmp_path / "run" / "probes" / "results.csv").is_file()
    # the dataset that run made, trained again by `ontolab train` with the same flags: one line printed
    train = subprocess.run([ONTOLAB, "train", f"data={tmp_path / 'run' / 'data'}", f"out={tmp_path / 'train'}",
                            *TINY, *DDP], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert train.stdout.count("checkpoints and metrics.json in") == 1
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["steps"] == 6

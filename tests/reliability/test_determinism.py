"""Same seed => bitwise-identical dataset, dynamics weights, probe results and planning outcomes on CPU;
another seed => different ones. Checked on a reduced quickstart (``run_pipeline`` with tiny overrides).

Each run gets its own stage cache, so the second run recomputes everything instead of reusing the
first run's outputs. What is compared: every dataset shard file byte for byte (and the manifest
without its ``created`` timestamp, ``code_version`` and the run's own ``out``/``cache_dir`` paths), every tensor of the final checkpoint
(``torch.equal``; the file also stores the training timer's wall-clock state), ``probes/results.csv``
byte for byte, and ``planning/episodes.csv`` without its wall-clock ``ms_per_step`` column.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dynamics.training.checkpoint import read_checkpoint
from experiments.pipeline import run_pipeline
from experiments.schema import resolve

REDUCED = ["data.episodes=24", "data.ood_episodes=4", "data.num_envs=4", "dynamics.max_steps=6",
           "dynamics.val_every=3", "dynamics.batch_size=4", "dynamics.window=8", "wandb.mode=disabled",
           "dynamics.hparams.deter=16", "dynamics.hparams.hidden=16", "dynamics.hparams.embed=16",
           "dynamics.hparams.stoch=4", "dynamics.hparams.classes=4", "probes.methods=[linear]", "probes.n_boot=20",
           "probes.mdl=false", "probes.control=false", "probes.imagination=false", "probes.max_train_rows=200",
           "probes.sites=[deter]", "plan.reward=-0.1*steps_to_goal-10*in_lava", "plan.planners=[discrete_cem]",
           "plan.episodes=2", "plan.num_envs=2", "plan.horizon=3", "plan.samples=16", "plan.elites=4",
           "plan.iterations=1", "plan.n_boot=20", "verify.enabled=false", "threads=1"]


def _run(root: Path, seed: int) -> dict[str, object]:
    cfg = resolve([f"out={root / 'run'}", f"cache_dir={root / 'cache'}", f"seed={seed}", *REDUCED])
    result = run_pipeline(cfg, progress=False)
    data = result.stages["data"].path / "dataset"
    files = {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*.npy"))}
    manifest = json.loads((data / "manifest.json").read_text())
    for k in ("created", "code_version"):
        manifest.pop(k)
    for k in ("out", "cache_dir"):  # the resolved config it records names the run's own folders
        manifest["config"].pop(k)
    weights = read_checkpoint(result.stages["dynamics"].path / "checkpoints" / "last.ckpt")["state_dict"]
    with open(result.stages["planning"].path / "episodes.csv", newline="") as f:
        episodes = [{k: v for k, v in row.items() if k != "ms_per_step"} for row in csv.DictReader(f)]
    return {"data_files": files, "manifest": manifest, "weights": weights, "episodes": episodes,
            "probe_results": (result.stages["probes"].path / "results.csv").read_bytes()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_same_seed_is_bitwise_identical_another_seed_is_not(tmp_path):
    torch.set_num_threads(1)
    a, b, c = _run(tmp_path / "a", 3), _run(tmp_path / "b", 3), _run(tmp_path / "c", 4)
    assert a["data_files"] == b["data_files"] and a["manifest"] == b["manifest"]
    assert _same_weights(a["weights"], b["weights"])
    assert a["probe_results"] == b["probe_results"]
    assert a["episodes"] == b["episodes"] and len(a["episodes"]) > 0
    assert a["data_files"] != c["data_files"]
    assert not _same_weights(a["weights"], c["weights"])
    assert a["probe_results"] != c["probe_results"]
    assert a["episodes"] != c["episodes"]

"""wandb.mode=online with a server that cannot be reached: the run completes, logged offline, one warning line.

The server is a loopback port nothing listens on (bound, then closed), so every connection is refused
at once; wandb gives up after ``WANDB_INIT_TIMEOUT`` seconds. Each case runs in a fresh process, as a
user's would (wandb keeps process-wide settings once it has started).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ONTOLAB = shutil.which("ontolab") or str(Path(sys.executable).parent / "ontolab")
WARNING = "ontolab: warning: wandb online logging failed"


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(tmp_path: Path, *, api_key: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL=f"http://127.0.0.1:{dead_port()}", WANDB_INIT_TIMEOUT="3", WANDB_SILENT="true",
               WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"), HOME=str(tmp_path / "home"), ONTOLAB_DEBUG="")
    if api_key:
        env["WANDB_API_KEY"] = "0" * 40  # well-formed, so wandb gets as far as contacting the server
    return env


TRACK = """
import json, sys
from pathlib import Path
from experiments.schema import resolve
from experiments.tracking import track_run
run = Path(sys.argv[1])
run.mkdir(parents=True)
summary = {"world": "lavakeydoor", "seed": 0, "data": {"episodes": 4, "transitions": 40, "base_rates": {"has_key": 0.5}},
           "probes": [{"method": "linear", "site": "deter", "concept": "has_key", "split": "test",
                       "metric": "balanced_accuracy", "estimate": 0.9, "ci_low": 0.8, "ci_high": 0.95}],
           "ontology": {"has_key": {"method": "linear", "site": "deter"}}, "planning": [], "timings": {"data": 1.0}}
(run / "summary.json").write_text(json.dumps(summary))
result = track_run(resolve([f"out={run}", "wandb.mode=online"]), summary, run)
print(json.dumps(result.to_dict()))
"""


@pytest.mark.parametrize("api_key", [True, False], ids=["server_unreachable", "no_api_key"])
def test_online_with_unreachable_server_falls_back_to_offline(tmp_path, api_key):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", TRACK, str(run)], capture_output=True, text=True,
                       env=offline_env(tmp_path, api_key=api_key), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["mode"] == "offline" and result["fallback"] and result["run_id"]
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith(WARNING), r.stderr
    assert json.loads((run / "tracking.json").read_text())["fallback"] == result["fallback"]
    [wandb_dir] = list((run / "wandb").glob(f"offline-run-*-{result['run_id']}"))
    assert list(wandb_dir.glob("run-*.wandb"))
    assert list((wandb_dir / "files" / "media" / "table").rglob("*.table.json"))


@pytest.mark.slow
def test_ontolab_run_completes_with_unreachable_server(tmp_path):
    tiny = ["data.episodes=40", "data.ood_episodes=8", "data.num_envs=8", "dynamics.max_steps=6",
            "dynamics.val_every=3", "dynamics.batch_size=4", "dynamics.window=16", "dynamics.hparams.deter=32",
            "dynamics.hparams.hidden=32", "dynamics.hparams.embed=32", "dynamics.hparams.stoch=4",
            "dynamics.hparams.classes=4", "probes.methods=[linear]", "probes.n_boot=50", "probes.mdl=false",
            "probes.max_train_rows=500", "probes.sites=[deter]", "threads=1"]
    r = subprocess.run([ONTOLAB, "run", f"out={tmp_path / 'run'}", "wandb.mode=online", *tiny], cwd=tmp_path,
                       capture_output=True, text=True, env=offline_env(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sum(line.startswith(WARNING) for line in r.stderr.splitlines()) == 1, r.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["fallback"]
    assert summary["probes"] and summary["dynamics"]["val_loss"] is not None  # every metric is in the run folder
    assert (run / "report.md").is_file() and list((run / "plots").glob("*.png"))
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))

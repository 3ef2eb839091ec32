"""Interrupted and concurrent ``ontolab run``: finished stages are kept, the half-done one is redone, a second
process on the same run folder is refused.

Ctrl-C is a real SIGINT sent to a real ``ontolab run`` process while it trains; the lock is taken by
one process and a real ``ontolab run`` is refused (moved here from ``tests/experiments/test_pipeline.py``,
plus the SIGINT and command-line cases).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.cache import RunLockedError, run_lock
from experiments.config import ConfigError
from experiments.pipeline import run_pipeline
from experiments.schema import resolve

ONTOLAB = str(Path(sys.executable).parent / "ontolab")
TINY = ["data.episodes=40", "data.ood_episodes=8", "data.num_envs=8", "dynamics.max_steps=6",
        "dynamics.val_every=3", "dynamics.batch_size=4", "dynamics.window=16", "wandb.mode=disabled",
        "dynamics.hparams.deter=32", "dynamics.hparams.hidden=32", "dynamics.hparams.embed=32",
        "dynamics.hparams.stoch=4", "dynamics.hparams.classes=4", "probes.methods=[linear,sparse]",
        "probes.n_boot=50", "probes.mdl=false", "probes.max_train_rows=500", "probes.sites=[deter,feat]"]


def tiny(tmp_path: Path, *extra: str):
    return resolve([f"out={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *TINY, *extra])


def test_run_folder_with_another_config_is_refused(tmp_path):
    cfg = tiny(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 5\n")
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        run_pipeline(cfg, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == "seed: 5\n"


def test_second_process_is_locked_out(tmp_path):
    with run_lock(tmp_path / "run"):
        code = ("import sys; from pathlib import Path; from experiments.cache import run_lock\n"
                f"with run_lock(Path({str(tmp_path / 'run')!r})): pass")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0 and "in use by another ontolab process" in r.stderr
    with run_lock(tmp_path / "run"):  # released again
        pass
    with pytest.raises(RunLockedError):
        with run_lock(tmp_path / "run"):
            with run_lock(tmp_path / "run"):
                pass


@pytest.mark.slow
def test_interrupted_training_resumes_inside_the_stage_cache(tmp_path, monkeypatch):
    import experiments.stages.train as train_stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the checkpoints were written, before the stage finished

    monkeypatch.setattr(train_stage, "evaluate_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny(tmp_path), progress=False)
    partial = list((tmp_path / "cache" / "dynamics").glob(".*.partial"))
    assert len(partial) == 1 and (partial[0] / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "cache" / "data").is_dir()  # the finished stage stays usable
    monkeypatch.undo()

    result = run_pipeline(tiny(tmp_path, "dynamics.resume=true"), progress=False)
    assert result.stages["data"].reused and not result.stages["dynamics"].reused
    run_json = json.loads((result.stages["dynamics"].path / "run.json").read_text())
    assert run_json["resumed_from"] and run_json["resumed_from"].endswith("last.ckpt")
    assert not list((tmp_path / "cache" / "dynamics").glob(".*.partial"))


def test_second_ontolab_run_is_refused_through_the_command_line(tmp_path):
    with run_lock(tmp_path / "run"):  # a first `ontolab run` holds the folder
        r = subprocess.run([ONTOLAB, "run", f"out={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *TINY],
                           capture_output=True, text=True, env=dict(os.environ, ONTOLAB_DEBUG=""), timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "in use by another ontolab process" in r.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"], "the second process wrote nothing"
    assert not (tmp_path / "cache").exists()


SLOW_TRAINING = ["dynamics.max_steps=100000", "dynamics.max_time_s=2"]


def test_ctrl_c_during_ontolab_run_keeps_finished_stages_and_redoes_the_half_done_one(tmp_path, monkeypatch):
    """SIGINT while the dynamics stage trains: exit 130 with one line; the data stage stays usable and is reused,
    the dynamics stage is redone from scratch (no finished-looking folder was left)."""
    args = [f"out={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *TINY, *SLOW_TRAINING]
    proc = subprocess.Popen([ONTOLAB, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, ONTOLAB_DEBUG=""))
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache" / "dynamics").glob(".*.partial/checkpoints")) and proc.poll() is None:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, (proc.returncode, err[-3000:])
    data = [p for p in (tmp_path / "cache" / "data").iterdir() if not p.name.startswith(".")]
    assert len(data) == 1 and (data[0] / "stage.json").is_file(), "the finished data stage is kept"
    assert not [p for p in (tmp_path / "cache" / "dynamics").iterdir() if not p.name.startswith(".")], \
        "no dynamics stage looks finished"

    import experiments.pipeline as pipeline

    seen, real = {}, pipeline.run_stage

    class Enough(Exception):
        pass

    def spy(cache, stage, *a, **kw):
        if stage == "probes":
            raise Enough  # the two stages under test have run
        seen[stage] = real(cache, stage, *a, **kw)
        return seen[stage]

    monkeypatch.setattr(pipeline, "run_stage", spy)
    with pytest.raises(Enough):
        run_pipeline(tiny(tmp_path, *SLOW_TRAINING), progress=False)
    assert seen["data"].reused and seen["data"].path == data[0]
    assert not seen["dynamics"].reused and (seen["dynamics"].path / "stage.json").is_file()
    assert json.loads((seen["dynamics"].path / "run.json").read_text())["resumed_from"] is None, "redone, not resumed"
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.strip().splitlines()[-1].startswith("ontolab: interrupted"), err[-3000:]

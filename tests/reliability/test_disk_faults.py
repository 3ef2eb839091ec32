"""Disk full (ENOSPC) and permission denied (EACCES) while writing: earlier outputs stay byte-identical and
loadable, and the error names the path.

The faults are injected where bytes reach the disk (the tests run as root here, so a read-only folder
would not stop a write): the temp-file write of each atomic writer raises ``OSError(ENOSPC or EACCES,
..., path)`` after writing part of the data, as a full disk does. Each case first writes a good
output, then fails to replace it, then checks the old bytes and that they still load.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import dynamics.training.checkpoint as ck
import worlds.atomic as atomic
from worlds.dataset import DatasetWriter, TrajectoryDataset
from worlds.dataset import writer as writer_module

FAULTS = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES}


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([root, *root.rglob("*")]):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _fail(code: int, path=None) -> OSError:
    """The error a write to a full disk raises (``path=None``: a ``write()`` names no file, as the OS's does not)."""
    return OSError(code, os.strerror(code)) if path is None else OSError(code, os.strerror(code), str(path))


def _partial_then_fail(code: int):
    """A replacement writer that leaves half the bytes in its temp file, then fails like a full disk."""
    def write(tmp_path: Path, data: bytes) -> None:
        with open(tmp_path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise _fail(code, tmp_path)
    return write


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_checkpoint_save(tmp_path, monkeypatch, fault):
    path, io = tmp_path / "last.ckpt", ck.AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "state_dict": {"model.w": torch.ones(3)}}, path)
    before = tree_hash(tmp_path)
    partial = _partial_then_fail(FAULTS[fault])

    def write_temp(target: Path, data: bytes) -> Path:
        partial(target.with_name(f".{target.name}.{os.getpid()}.tmp"), data)

    monkeypatch.setattr(ck, "_write_temp", write_temp)
    with pytest.raises(OSError) as e:
        io.save_checkpoint({"global_step": 2, "state_dict": {"model.w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert e.value.errno == FAULTS[fault] and "last.ckpt" in e.value.filename
    for stale in tmp_path.glob(".*.tmp"):  # the next save removes it; the checkpoint never depends on it
        stale.unlink()
    assert tree_hash(tmp_path) == before
    assert ck.read_checkpoint(path)["global_step"] == 1


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_atomic_file_write(tmp_path, monkeypatch, fault):
    """JSON, YAML, CSV, probe files: everything written through ``worlds.atomic.atomic_write_bytes``."""
    from probes.base import Probe
    from probes.linear import LinearFitter
    from worlds.concepts import Concept

    probe = LinearFitter(Concept("c", "binary", "c")).fit(torch.randn(20, 3), torch.arange(20) % 2)
    probe.save(tmp_path / "p.safetensors")
    atomic.atomic_write_text(tmp_path / "summary.json", '{"ok": true}\n')
    before = tree_hash(tmp_path)
    real_fdopen = atomic.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise _fail(FAULTS[fault])

        def __getattr__(self, k):
            return getattr(self.f, k)

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode="r": Full(real_fdopen(fd, mode)))
    for write in (lambda: probe.save(tmp_path / "p.safetensors"),
                  lambda: atomic.atomic_write_text(tmp_path / "summary.json", '{"ok": false}\n')):
        with pytest.raises(OSError) as e:
            write()
        assert e.value.errno == FAULTS[fault] and str(tmp_path) in str(e.value.filename)
    monkeypatch.undo()
    assert tree_hash(tmp_path) == before, "earlier outputs byte-identical, no temp file left"
    assert Probe.load(tmp_path / "p.safetensors").concept.name == "c"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_dataset_overwrite(tmp_path, corridor, monkeypatch, fault):
    world = corridor()
    rng = np.random.default_rng(0)
    eps = [_random_episode(world, rng) for _ in range(30)]
    _write(tmp_path / "ds", world, eps[:5])
    before = tree_hash(tmp_path)
    real, calls = writer_module._write_npy, []

    def failing(path, *a, **k):
        calls.append(1)
        if len(calls) > 12:
            raise _fail(FAULTS[fault], path)
        return real(path, *a, **k)

    monkeypatch.setattr(writer_module, "_write_npy", failing)
    with pytest.raises(OSError) as e:
        _write(tmp_path / "ds", world, eps, overwrite=True)
    monkeypatch.undo()
    assert e.value.errno == FAULTS[fault] and ".npy" in e.value.filename
    assert tree_hash(tmp_path) == before
    assert len(TrajectoryDataset.open(tmp_path / "ds")) == 5


def test_the_command_line_names_the_path_in_one_line(tmp_path, monkeypatch, capsys):
    from experiments import cli

    out = tmp_path / "ds"
    assert cli.main(["collect", "episodes=4", "data.ood_episodes=0", "data.num_envs=2", f"out={out}"]) == 0
    capsys.readouterr()
    before = tree_hash(tmp_path)
    monkeypatch.setattr(writer_module, "_write_npy", lambda path, *a, **k: (_ for _ in ()).throw(_fail(errno.ENOSPC, path)))
    monkeypatch.setenv("ONTOLAB_DEBUG", "")
    code = cli.main(["collect", "episodes=6", "data.ood_episodes=0", "data.num_envs=2", f"out={tmp_path / 'ds2'}"])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("ontolab:")]  # the rest: progress bars
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and ".npy" in err[0], stderr
    assert "Traceback" not in stderr and tree_hash(tmp_path) == before


def _random_episode(world, rng):
    from worlds.trajectory import Episode

    t = int(rng.integers(2, 12))
    obs = rng.integers(0, 2, size=(t, *world.single_observation_space.shape), dtype=np.uint8)
    actions = rng.integers(0, world.single_action_space.n, size=t)
    actions[0] = 0
    concepts = {c.name: (rng.uniform(c.low, c.low + 5, t).astype(np.float32) if c.kind == "scalar"
                         else rng.integers(0, c.num_classes, t).astype(c.dtype)) for c in world.schema}
    flags = np.zeros(t, bool)
    return Episode(obs=obs, actions=actions, is_first=np.arange(t) == 0, is_terminal=flags,
                   reward=np.zeros(t, np.float32), success=flags, violation=flags, concepts=concepts, family=0)


def _write(path, world, episodes, **kw):
    with DatasetWriter.for_world(path, world, shard_steps=20, **kw) as w:
        for ep in episodes:
            w.add(ep)

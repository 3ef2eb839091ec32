"""Datasets survive crashes and kills, and damage is reported before anything reads them.

A crash or a SIGKILL while a dataset is collected or published (its manifest written, its folder
renamed into place) never leaves a folder at PATH that looks complete but is not: readers see the
old dataset or the new one, never a mix. A flipped byte, a truncated or missing shard or a corrupt
manifest gives one line naming the file -- and ``ontolab train`` refuses such a dataset before any
training step (moved here from ``tests/worlds/test_dataset.py``, plus the kill and train cases).

Publishing over an existing dataset renames the old folder aside, then the new one in (POSIX has no
portable atomic exchange of two folders): a kill exactly between the two renames leaves PATH absent
and the complete old dataset in a hidden ``.NAME.old-<pid>-*`` sibling -- "no dataset", never a mix.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from worlds.dataset import DatasetError, DatasetWriter, TrajectoryDataset
from worlds.dataset import writer as writer_module
from worlds.trajectory import Episode

HERE = Path(__file__).resolve().parent
WORLDS_TESTS = HERE.parent / "worlds"


# -- helpers (the same as tests/worlds/test_dataset.py's; test modules cannot import each other by name) --
def random_episode(world, rng: np.random.Generator, t: int, family: int = 0, terminal: bool = False) -> Episode:
    """A valid episode of ``t`` steps for ``world``'s schema and specs, with random contents."""
    obs_space = world.single_observation_space
    if obs_space.dtype == np.uint8:
        obs = rng.integers(0, 2, size=(t, *obs_space.shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(t, *obs_space.shape)).astype(np.float32)
    if world.discrete_actions:
        actions = rng.integers(0, world.single_action_space.n, size=t)
    else:
        actions = rng.uniform(-1, 1, size=(t, *world.single_action_space.shape)).astype(np.float32)
    actions[0] = 0
    concepts = {}
    for c in world.schema:
        if c.kind == "scalar":
            concepts[c.name] = rng.uniform(c.low, min(c.high, c.low + 10), size=t).astype(np.float32)
        else:
            concepts[c.name] = rng.integers(0, c.num_classes, size=t).astype(c.dtype)
    flags = rng.random((3, t)) < 0.2
    return Episode(obs=obs, actions=actions, is_first=np.arange(t) == 0, is_terminal=(np.arange(t) == t - 1) & terminal,
                   reward=rng.normal(size=t).astype(np.float32), success=flags[0], violation=flags[1],
                   concepts=concepts, family=family)


def write(path, world, episodes, ood=(), **kw) -> DatasetWriter:
    kw.setdefault("shard_steps", 40)
    with DatasetWriter.for_world(path, world, **kw) as w:
        for ep in episodes:
            w.add(ep)
        for ep in ood:
            w.add(ep, ood=True)
    return w


def some_episodes(world, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [random_episode(world, rng, int(rng.integers(1, 20)), family=int(rng.integers(0, 2)), terminal=bool(i % 2)) for i in range(n)]


# -- crashes and kills while writing ----------------------------------------------------------------------
def test_crash_mid_write_leaves_nothing_and_rerun_succeeds(tmp_path, corridor, monkeypatch):
    world = corridor()
    real, calls = writer_module._write_npy, []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) > 25:  # after a couple of shards are on disk
            raise OSError("disk full (injected)")
        return real(*args, **kw)

    monkeypatch.setattr(writer_module, "_write_npy", failing)
    with pytest.raises(OSError, match="injected"):
        write(tmp_path / "ds", world, some_episodes(world, n=30))
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(writer_module, "_write_npy", real)
    write(tmp_path / "ds", world, some_episodes(world, n=30))
    assert len(TrajectoryDataset.open(tmp_path / "ds")) == 30


def test_killed_writer_leaves_stale_temp_that_rerun_removes(tmp_path, corridor):
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {str(HERE)!r})
        sys.path.insert(0, {str(WORLDS_TESTS)!r})  # first: `conftest` is the worlds one
        from conftest import CorridorWorld
        from test_dataset_faults import some_episodes
        from worlds.dataset import DatasetWriter
        world = CorridorWorld(2)
        w = DatasetWriter.for_world({str(tmp_path / "ds")!r}, world, shard_steps=20)
        for ep in some_episodes(world, n=30):
            w.add(ep)
        os._exit(9)  # killed before close(): no cleanup runs
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".ds.tmp-")
    assert not (tmp_path / "ds").exists()
    with pytest.raises(DatasetError):
        TrajectoryDataset.open(tmp_path / stale[0])  # a temp folder never has a manifest
    world = corridor()
    write(tmp_path / "ds", world, some_episodes(world))
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_overwrite_keeps_old_dataset_readable_until_swap(tmp_path, corridor):
    world = corridor()
    old = write(tmp_path / "ds", world, some_episodes(world, n=5, seed=1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write(tmp_path / "ds", world, some_episodes(world))
    new_eps = some_episodes(world, n=25, seed=2)
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter.for_world(tmp_path / "ds", world, shard_steps=20, overwrite=True) as w:
            for ep in new_eps:
                w.add(ep)
            assert TrajectoryDataset.open(tmp_path / "ds").fingerprint == old.fingerprint
            raise RuntimeError("boom")
    assert TrajectoryDataset.open(tmp_path / "ds").fingerprint == old.fingerprint
    reader_of_old = TrajectoryDataset.open(tmp_path / "ds")
    ep0_old = np.array(reader_of_old.episode(0).obs)
    new = write(tmp_path / "ds", world, new_eps, overwrite=True)
    ds = TrajectoryDataset.open(tmp_path / "ds")
    assert ds.fingerprint == new.fingerprint and len(ds) == 25
    np.testing.assert_array_equal(ds.episode(0).obs, new_eps[0].obs)
    np.testing.assert_array_equal(reader_of_old.episode(0).obs, ep0_old)  # the old reader never mixes in new files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]



# -- damaged datasets ------------------------------------------------------------------------------------

def _shard_file(root: Path, field: str = "obs") -> Path:
    return root / "shard_00000" / f"{field}.npy"


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 7])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(bytes(data))


DAMAGE = {
    "nonexistent": (lambda root: root.rename(root.with_name("gone")), "does not exist", "ds"),
    "no_manifest": (lambda root: (root / "manifest.json").unlink(), "manifest.json is missing", "manifest.json"),
    "non_json": (lambda root: (root / "manifest.json").write_text("{ not json"), "not valid JSON", "manifest.json"),
    "missing_keys": (lambda root: (root / "manifest.json").write_text(json.dumps({"format_version": 1})), "lacks required key", "manifest.json"),
    "bad_version": (lambda root: (root / "manifest.json").write_text((root / "manifest.json").read_text().replace('"format_version": 1', '"format_version": 99')), "not supported", "manifest.json"),
    "missing_shard_file": (lambda root: _shard_file(root).unlink(), "is missing", "obs.npy"),
    "truncated": (lambda root: _truncate(_shard_file(root, "reward")), "truncated", "reward.npy"),
    "flipped_byte": (lambda root: _flip_byte(_shard_file(root)), "checksum mismatch", "obs.npy"),
    "wrong_shape": (lambda root: np.save(_shard_file(root, "reward"), np.zeros(3, np.float32)), "the manifest says", "reward.npy"),
    "wrong_dtype": (lambda root: np.save(_shard_file(root, "is_first"), np.zeros(np.load(_shard_file(root, "is_first")).shape, np.int64)), "the manifest says", "is_first.npy"),
    "garbage_file": (lambda root: _shard_file(root, "success").write_bytes(b"hello"), "not a readable .npy", "success.npy"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_dataset_raises_one_line_error_naming_the_file(tmp_path, corridor, case):
    world = corridor()
    write(tmp_path / "ds", world, some_episodes(world))
    damage, problem, filename = DAMAGE[case]
    damage(tmp_path / "ds")
    with pytest.raises(DatasetError, match=problem) as err:
        TrajectoryDataset.open(tmp_path / "ds", verify=True)
    msg = str(err.value)
    assert "\n" not in msg and filename in msg and ("re-collect" in msg or "collect one" in msg)
    assert isinstance(err.value, ValueError)


def test_verify_false_skips_checksums_but_not_structure(tmp_path, corridor):
    world = corridor()
    write(tmp_path / "ds", world, some_episodes(world))
    _flip_byte(_shard_file(tmp_path / "ds"))
    TrajectoryDataset.open(tmp_path / "ds", verify=False)  # same size and header: only the checksum can tell
    _truncate(_shard_file(tmp_path / "ds"))
    with pytest.raises(DatasetError, match="truncated"):
        TrajectoryDataset.open(tmp_path / "ds", verify=False)




# -- SIGKILL while a dataset is replaced: at named moments, and at random moments ---------------------------
KILL_CHILD = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from conftest import CorridorWorld
from test_dataset_faults import some_episodes
import worlds.atomic as atomic
import worlds.dataset.writer as wm
from worlds.dataset import DatasetWriter

where, path = sys.argv[3], sys.argv[4]
calls = {"npy": 0, "replace": 0}
real_npy, real_replace, real_rename = wm._write_npy, atomic.os.replace, atomic.os.rename
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def npy(*a, **k):
    calls["npy"] += 1
    if where == "mid_shards" and calls["npy"] == 20:
        die()
    return real_npy(*a, **k)
def replace(src, dst):  # publish_dir: final -> old (1st), tmp -> final (2nd)
    calls["replace"] += 1
    if where == "before_publish" or (where == "between_renames" and calls["replace"] == 2):
        die()
    real_replace(src, dst)
    if where == "after_publish" and calls["replace"] == 2:
        die()
wm._write_npy, atomic.os.replace = npy, replace
world = CorridorWorld(2)
print("ready", flush=True)
with DatasetWriter.for_world(path, world, shard_steps=20, overwrite=True) as w:
    for ep in some_episodes(world, n=int(os.environ.get("EPISODES", "30")), seed=2):
        w.add(ep)
print("NOT KILLED", flush=True)
"""

OLD_N, NEW_N = 5, 30


def _start_child(path: Path, where: str, episodes: int = NEW_N) -> subprocess.Popen:
    env = dict(os.environ, EPISODES=str(episodes))
    return subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(HERE), str(WORLDS_TESTS), where, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _assert_old_new_or_absent(root: Path, new_n: int = NEW_N) -> str:
    """PATH holds the complete old or new dataset (verified), or is absent with the old one set aside."""
    ds_path = root / "ds"
    if ds_path.exists():
        with TrajectoryDataset.open(ds_path, verify=True) as ds:
            assert len(ds) in (OLD_N, new_n), len(ds)
            return "old" if len(ds) == OLD_N else "new"
    aside = list(root.glob(".ds.old-*"))
    assert len(aside) == 1, sorted(p.name for p in root.iterdir())
    with TrajectoryDataset.open(aside[0], verify=True) as ds:
        assert len(ds) == OLD_N
    return "absent"


def _rerun_cleans_up(root: Path, world) -> None:
    write(root / "ds", world, some_episodes(world, n=NEW_N, seed=2), shard_steps=20, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["ds"], "stale temp and old folders are removed"
    assert len(TrajectoryDataset.open(root / "ds")) == NEW_N


@pytest.mark.parametrize("where, expect", [("mid_shards", "old"), ("before_publish", "old"),
                                           ("between_renames", "absent"), ("after_publish", "new")])
def test_sigkill_while_replacing_a_dataset_never_leaves_a_mix(tmp_path, corridor, where, expect):
    world = corridor()
    write(tmp_path / "ds", world, some_episodes(world, n=OLD_N, seed=1))
    proc = _start_child(tmp_path / "ds", where)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err[-2000:])
    assert _assert_old_new_or_absent(tmp_path) == expect
    _rerun_cleans_up(tmp_path, world)


def test_sigkill_at_five_random_moments_of_a_collection(tmp_path, corridor):
    """Kill a writer replacing the dataset 5 times at random instants (seeded): always old, new or set aside."""
    world, rng, seen = corridor(), random.Random(8), []
    write(tmp_path / "ds", world, some_episodes(world, n=OLD_N, seed=1))
    t0 = time.perf_counter()
    probe = _start_child(tmp_path / "probe", "none", episodes=120)
    assert probe.stdout.readline().strip() == "ready"
    t_ready = time.perf_counter()
    probe.communicate(timeout=120)
    duration = max(time.perf_counter() - t_ready, 0.05)  # how long writing 120 episodes takes here
    for _ in range(5):
        proc = _start_child(tmp_path / "ds", "none", episodes=120)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 1.2 * duration))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        state = _assert_old_new_or_absent(tmp_path, new_n=120)
        seen.append(state)
        if state != "old":  # put the old dataset back for the next kill
            for p in tmp_path.glob(".ds.*"):
                shutil.rmtree(p)
            write(tmp_path / "ds", world, some_episodes(world, n=OLD_N, seed=1), overwrite=True)
    assert len(seen) == 5 and time.perf_counter() - t0 < 60

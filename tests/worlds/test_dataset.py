"""Trajectory datasets: round trip, manifest, splits, bad episodes.

Crashes, kills, overwrites and damaged datasets are tested in ``tests/reliability/test_dataset_faults.py``."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from worlds.dataset import DatasetWriter, TrajectoryDataset, split_of
from worlds.trajectory import Episode


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


@pytest.mark.parametrize("kind", ["corridor", "point_corridor"])
def test_round_trip_all_fields(tmp_path, kind, corridor, point_corridor):
    world = (corridor if kind == "corridor" else point_corridor)()
    eps = some_episodes(world)
    w = write(tmp_path / "ds", world, eps, config={"note": "x"}, seed=3)
    with TrajectoryDataset.open(tmp_path / "ds") as ds:
        assert len(ds.manifest["shards"]) > 1 and len(ds) == len(eps) and ds.fingerprint == w.fingerprint
        assert ds.num_steps == sum(map(len, eps)) and ds.num_transitions == ds.num_steps - len(eps)
        for i, ep in enumerate(eps):
            got = ds.episode(i)
            assert got.family == ep.family and ds.episode_lengths([i])[0] == len(ep)
            for name, want in ep.step_fields().items():
                arr = got.step_fields()[name]
                assert arr.dtype == world.schema[name[8:]].dtype if name.startswith("concept.") else True
                np.testing.assert_array_equal(arr, want, err_msg=name)
            assert got.obs.dtype == ep.obs.dtype and got.is_first.dtype == bool and got.reward.dtype == np.float32
            assert got.actions.dtype == (np.int64 if world.discrete_actions else np.float32)
        win = ds.window(4, 1, 3, ["obs", "actions"]) if len(eps[4]) >= 4 else None
        if win is not None:
            np.testing.assert_array_equal(win["obs"], eps[4].obs[1:4])
            assert win["obs"].flags.writeable
        ids = ds.episode_ids("train")
        cat = ds.concat("train", ["reward", "obs", "episode_id", "t"])
        np.testing.assert_array_equal(cat["reward"], np.concatenate([eps[i].reward for i in ids]))
        np.testing.assert_array_equal(cat["obs"], np.concatenate([eps[i].obs for i in ids]))
        np.testing.assert_array_equal(cat["episode_id"], np.repeat(ids, [len(eps[i]) for i in ids]))
        np.testing.assert_array_equal(cat["t"], np.concatenate([np.arange(len(eps[i])) for i in ids]))
        with pytest.raises(ValueError, match="window"):
            ds.window(0, 0, len(eps[0]) + 1)
        with pytest.raises(ValueError, match="unknown field"):
            ds.concat("train", ["nope"])
        with pytest.raises(ValueError, match="unknown episode"):
            ds.episode(len(eps))


def test_manifest_contents(tmp_path, corridor):
    world = corridor()
    eps = some_episodes(world, n=10)
    write(tmp_path / "ds", world, eps, config={"lr": 1e-3, "tags": ["a"]}, seed=7)
    raw = (tmp_path / "ds" / "manifest.json").read_bytes()
    m = json.loads(raw)
    assert m["format_version"] == 1 and m["world"] == "corridor" and m["seed"] == 7
    assert m["schema"] == world.schema.to_dict()
    assert m["obs_spec"] == {"shape": [5, 1, 8], "dtype": "uint8", "obs_kind": "symbolic"}
    assert m["action_spec"] == {"kind": "discrete", "n": 3}
    assert m["families"] == list(world.families) and m["ood_families"] == ["key_right"]
    assert m["config"] == {"lr": 1e-3, "tags": ["a"]} and m["code_version"]["ontolab"] == "0.1.0"
    assert m["counts"]["episodes"] == 10 and m["counts"]["steps"] == sum(map(len, eps))
    assert sum(s["episodes"] for s in m["counts"]["splits"].values()) == 10
    for shard in m["shards"]:
        for f in shard["files"].values():
            data = (tmp_path / "ds" / f["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
            arr = np.load(tmp_path / "ds" / f["path"], mmap_mode="r", allow_pickle=False)
            assert list(arr.shape) == f["shape"] and arr.dtype.name == f["dtype"]
    has_key = np.concatenate([e.concepts["has_key"] for e in eps]).astype(float)
    assert m["base_rates"]["all"]["has_key"]["rate"] == pytest.approx(has_key.mean())
    dist = np.concatenate([e.concepts["dist_to_door"] for e in eps]).astype(float)
    assert m["base_rates"]["all"]["dist_to_door"]["std"] == pytest.approx(dist.std(), rel=1e-5)
    region = np.concatenate([e.concepts["region"] for e in eps])
    assert m["base_rates"]["all"]["region"]["freq"]["middle"] == pytest.approx((region == 1).mean())
    ds = TrajectoryDataset.open(tmp_path / "ds")
    assert ds.fingerprint == hashlib.sha256(raw).hexdigest() and ds.world_name == "corridor"
    assert ds.base_rates() == m["base_rates"]["all"] and ds.schema == world.schema


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path, corridor):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not an ontolab dataset"):
        write(tmp_path / "ds", corridor(), some_episodes(corridor()), overwrite=True)
    assert (tmp_path / "ds" / "thesis.tex").read_text() == "precious"


def test_splits_are_disjoint_whole_trajectories_and_stable(tmp_path, corridor):
    world = corridor()
    eps = some_episodes(world, n=200)
    write(tmp_path / "a", world, eps, seed=5, shard_steps=500)
    write(tmp_path / "b", world, eps[:120], seed=5, shard_steps=500)
    a, b = TrajectoryDataset.open(tmp_path / "a"), TrajectoryDataset.open(tmp_path / "b")
    sets = {s: set(a.episode_ids(s).tolist()) for s in ("train", "val", "test", "ood")}
    assert sum(map(len, sets.values())) == 200 and set().union(*sets.values()) == set(range(200))
    assert 0.65 < len(sets["train"]) / 200 < 0.95 and sets["val"] and sets["test"] and not sets["ood"]
    for s in ("train", "val", "test"):  # stable: episode k's split depends only on (seed, k)
        assert set(b.episode_ids(s).tolist()) == {i for i in sets[s] if i < 120}
        assert all(split_of(i, seed=5) == s for i in sets[s])
    assert [split_of(i, seed=6) for i in range(200)] != [split_of(i, seed=5) for i in range(200)]


def test_ood_episodes_only_in_ood_split(tmp_path, corridor):
    world = corridor()
    rng = np.random.default_rng(0)
    ood = [random_episode(world, rng, 5, family=2) for _ in range(7)]
    write(tmp_path / "ds", world, some_episodes(world, n=20), ood=ood)
    ds = TrajectoryDataset.open(tmp_path / "ds")
    ids = ds.episode_ids("ood")
    assert len(ids) == 7 and all(ds.episode(i).family == 2 for i in ids)
    assert all(ds.episode(i).family != 2 for s in ("train", "val", "test") for i in ds.episode_ids(s))
    with DatasetWriter.for_world(tmp_path / "x", world) as w:
        with pytest.raises(ValueError, match="held-out"):
            w.add(ood[0])  # a held-out family must not leak into train/val/test
        with pytest.raises(ValueError, match="held-out"):
            w.add(some_episodes(world, n=1)[0], ood=True)
        w.abort()


def test_add_rejects_bad_episodes(tmp_path, corridor):
    world = corridor()
    ep = some_episodes(world, n=1)[0]
    with DatasetWriter.for_world(tmp_path / "x", world) as w:
        with pytest.raises(ValueError, match="obs must have dtype uint8"):
            w.add(Episode(**{**ep.__dict__, "obs": ep.obs.astype(np.float32)}))
        with pytest.raises(ValueError, match="concepts must be exactly"):
            w.add(Episode(**{**ep.__dict__, "concepts": {"has_key": ep.concepts["has_key"]}}))
        with pytest.raises(ValueError, match="'has_key': values must be integers in"):
            w.add(Episode(**{**ep.__dict__, "concepts": {**ep.concepts, "has_key": np.full(len(ep), -1)}}))
        w.abort()
    with DatasetWriter.for_world(tmp_path / "y", world, shard_steps=1) as w:  # values are checked per shard
        with pytest.raises(ValueError, match=r"'has_key': values must be integers in \[0, 2\).*episodes 0\.\.0"):
            w.add(Episode(**{**ep.__dict__, "concepts": {**ep.concepts, "has_key": ep.concepts["has_key"] * 0 + 2}}))
        w.abort()
    assert not (tmp_path / "y").exists()
    assert not (tmp_path / "x").exists()


def test_open_does_not_leak_descriptors(tmp_path, corridor):
    world = corridor()
    write(tmp_path / "ds", world, some_episodes(world))
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    for _ in range(20):
        with TrajectoryDataset.open(tmp_path / "ds") as ds:
            ds.concat("train", ["obs"])
    after = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    assert after - before < 5

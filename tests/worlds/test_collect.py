"""Collection: episode convention, exact counts, base rates against a direct count, OOD, warnings, errors."""

from __future__ import annotations

import numpy as np
import pytest

from worlds.collect import collect
from worlds.dataset import TrajectoryDataset
from worlds.policies import make_policy

MIX = {"components": [{"name": "random"}, {"name": "epsilon_oracle", "epsilon": 0.2}]}


def run(world, path, episodes=40, **kw):
    kw.setdefault("seed", 0)
    kw.setdefault("progress", False)
    kw.setdefault("min_base_rate", 0.0)
    return collect(world, make_policy("mixture", **MIX), episodes, path, shard_steps=64, **kw)


def test_episodes_follow_the_step_convention(tmp_path, corridor):
    report = run(corridor(num_envs=5, max_steps=12), tmp_path / "ds", episodes=30)
    ds = TrajectoryDataset.open(tmp_path / "ds")
    assert len(ds) == report.episodes == 30
    lengths = ds.episode_lengths(np.arange(30))
    assert report.transitions == ds.num_transitions == int((lengths - 1).sum())
    for i in range(30):
        ep = ds.episode(i)
        ep.validate()
        assert ep.actions[0] == 0 and ep.is_first[0] and not ep.reward[0]
        # the agent channel moves by the action taken into each step (0 stay, 1 left, 2 right)
        x = ep.obs[:, 4, 0, :].argmax(-1)
        move = np.array([0, -1, 1])[ep.actions[1:]]
        locked = (x[:-1] + move == 7)  # the door without the key bounces the agent back
        assert np.all((np.diff(x) == move) | locked)
        np.testing.assert_array_equal(ep.concepts["dist_to_door"], 7 - x)
        ended_in_world = ep.success[-1] or ep.violation[-1]
        assert ep.is_terminal[-1] == ended_in_world
        if not ended_in_world:
            assert len(ep) == 13  # truncated at max_steps
        assert not (ep.success[:-1].any() or ep.violation[:-1].any())


def test_base_rates_match_a_direct_count(tmp_path, corridor):
    report = run(corridor(num_envs=6), tmp_path / "ds", episodes=60, ood_episodes=0)
    ds = TrajectoryDataset.open(tmp_path / "ds")
    fields = ["concept.has_key", "concept.region", "concept.dist_to_door"]
    parts = [ds.concat(s, fields) for s in ("train", "val", "test")]
    c = {f: np.concatenate([p[f] for p in parts]) for f in fields}
    r = report.base_rates
    assert r["has_key"]["count"] == len(c["concept.has_key"]) == ds.num_steps
    assert r["has_key"]["rate"] == pytest.approx(c["concept.has_key"].mean())
    for k, name in enumerate(("left", "middle", "right")):
        assert r["region"]["freq"][name] == pytest.approx((c["concept.region"] == k).mean())
    d = c["concept.dist_to_door"].astype(np.float64)
    assert r["dist_to_door"]["mean"] == pytest.approx(d.mean()) and r["dist_to_door"]["std"] == pytest.approx(d.std())
    assert ds.base_rates("in_distribution") == report.base_rates
    assert sum(report.split_episodes.values()) == 60 and report.split_episodes["ood"] == 0
    assert report.split_transitions["train"] == int((ds.episode_lengths(ds.episode_ids("train")) - 1).sum())
    assert report.fingerprint == ds.fingerprint and report.transitions_per_s > 0


def test_low_base_rate_warning_names_the_concepts(tmp_path, corridor):
    with pytest.warns(UserWarning, match="near_cliff") as rec:
        report = run(corridor(), tmp_path / "ds", episodes=20, min_base_rate=0.2)
    assert "near_cliff" in report.rare_concepts and "has_key" not in report.rare_concepts
    assert "has_key" not in str(rec[0].message)


def test_ood_episodes_come_from_the_ood_world_only(tmp_path, corridor):
    world, ood_world = corridor(num_envs=4), corridor(num_envs=3, seed=1, families=("key_right",))
    report = run(world, tmp_path / "ds", episodes=25, ood_episodes=9, ood_world=ood_world)
    ds = TrajectoryDataset.open(tmp_path / "ds")
    assert report.episodes == 34 and report.split_episodes["ood"] == 9
    ood = ds.episode_ids("ood")
    assert len(ood) == 9 and {ds.episode(i).family for i in ood} == {2}
    assert all(ds.episode(i).family != 2 for s in ("train", "val", "test") for i in ds.episode_ids(s))
    assert ds.manifest["config"]["collect"]["ood_episodes"] == 9


def test_same_seed_same_data_and_continuous_worlds(tmp_path, point_corridor):
    a = run(point_corridor(num_envs=3), tmp_path / "a", episodes=15, seed=4)
    run(point_corridor(num_envs=3), tmp_path / "b", episodes=15, seed=4)
    run(point_corridor(num_envs=3), tmp_path / "c", episodes=15, seed=5)
    da, db, dc = (TrajectoryDataset.open(tmp_path / n) for n in "abc")
    for f in da.field_names:
        np.testing.assert_array_equal(da.concat("train", [f])[f], db.concat("train", [f])[f])
    assert not np.array_equal(da.concat("train", ["obs"])["obs"][:50], dc.concat("train", ["obs"])["obs"][:50])
    assert da.action_spec == {"kind": "continuous", "shape": [1], "low": [-1.0], "high": [1.0]}
    assert da.episode(0).actions.shape[1:] == (1,) and da.obs_spec["obs_kind"] == "vector" and a.episodes == 15


def test_training_world_must_not_produce_held_out_families(tmp_path, corridor):
    leaky = corridor(families=("key_left", "key_right"))
    with pytest.raises(ValueError, match="held-out"):
        run(leaky, tmp_path / "ds", episodes=20)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("kw,match", [
    ({"episodes": 0}, "episodes must be an integer >= 1"),
    ({"episodes": 2.5}, "episodes must be an integer >= 1"),
    ({"episodes": True}, "episodes must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"ood_episodes": 3}, "needs an ood_world"),
    ({"min_base_rate": 0.7}, "min_base_rate"),
    ({"policy": "random"}, "policy must be"),
])
def test_bad_inputs(tmp_path, corridor, kw, match):
    args = {"episodes": 5, "seed": 0, "policy": make_policy("random"), **kw}
    with pytest.raises(ValueError, match=match):
        collect(corridor(), args.pop("policy"), args.pop("episodes"), tmp_path / "ds", progress=False, **args)


def test_ood_world_must_match(tmp_path, corridor, point_corridor):
    with pytest.raises(ValueError, match="same world"):
        collect(corridor(), make_policy("random"), 5, tmp_path / "ds", seed=0, ood_episodes=2,
                ood_world=point_corridor(families=("key_right",)), progress=False)


@pytest.mark.parametrize("name", ["lavakeydoor", "pointmass"])
def test_collect_on_registered_worlds(tmp_path, name):
    from worlds import registry

    world = registry.make_world(name, num_envs=4, seed=0)
    ood = [f for f in world.ood_families]
    ood_world = registry.make_world(name, num_envs=2, seed=1, families=tuple(ood)) if ood else None
    report = collect(world, make_policy("mixture", epsilon=0.3), 12, tmp_path / "ds", seed=0, progress=False,
                     ood_episodes=3 if ood else 0, ood_world=ood_world, min_base_rate=0.0)
    ds = TrajectoryDataset.open(tmp_path / "ds")
    assert len(ds) == report.episodes and ds.world_name == name and ds.schema == world.schema
    ep = ds.episode(0)
    ep.validate()
    assert ep.obs.shape[1:] == world.single_observation_space.shape

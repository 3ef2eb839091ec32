"""Shared, session-scoped fixtures for the probe harness tests.

* ``lkd`` -- a small lavakeydoor dataset on disk (64 in-distribution episodes split 60/20/20 by
  episode, 10 ``moat`` episodes as ``ood``), a GRU dynamics model trained for a few dozen steps on
  its training split, a randomly initialised model of the same architecture, and both models'
  latents extracted into latent stores (sites ``embed`` and ``deter``).
* ``ring_episodes`` -- a factory of ring-world episodes: ``k`` cells, actions 0 stay / 1 right / 2 left,
  one-hot float observations, concepts ``pos`` (categorical), ``even`` and ``home`` (cell 0; binary).
* ``planted`` -- a factory of synthetic latent stores where site ``signal`` linearly encodes the
  binary concept ``flag`` and the scalar ``level`` (plus noise) and site ``noise`` is pure noise.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynamics import build_model
from probes.extract import LatentStore, extract_latents
from worlds import TrajectoryDataset, collect, make_policy, make_world
from worlds.concepts import Concept, ConceptSchema
from worlds.trajectory import Episode

torch.set_num_threads(1)

MODEL_HPARAMS = dict(deter=32, hidden=32, embed=32)
SITES = ("embed", "deter")


def _train(model, ds: TrajectoryDataset, steps: int, seed: int) -> None:
    """A few Adam steps on random length-16 windows of the training split (no Lightning: fast and enough)."""
    gen = np.random.default_rng(seed)
    ids = ds.episode_ids("train")
    lengths = ds.episode_lengths(ids)
    long = ids[lengths >= 16]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = []
        for i in gen.choice(long, 8):
            n = int(ds.episode_lengths([i])[0])
            start = int(gen.integers(0, n - 15))
            batch.append(ds.window(int(i), start, 16, ["obs", "actions", "is_first"]))
        b = {k: torch.from_numpy(np.stack([w[k] for w in batch])) for k in ("obs", "actions", "is_first")}
        b["is_first"][:, 0] = True
        loss = model.loss(b["obs"], b["actions"], b["is_first"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def lkd(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("lkd")
    world = make_world("lavakeydoor", num_envs=8, seed=0)
    ood_world = make_world("lavakeydoor", num_envs=4, seed=1, families=("moat",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare-concept warning: expected on a dataset this small
        collect(world, make_policy("mixture", epsilon=0.3), 64, root / "ds", seed=0, ood_episodes=10,
                ood_world=ood_world, progress=False, split_fractions=(0.6, 0.2, 0.2))
    ds = TrajectoryDataset.open(root / "ds")
    specs = ({"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]}, {"discrete": True, "n": ds.action_spec["n"]})
    torch.manual_seed(0)
    model = build_model("gru", *specs, **MODEL_HPARAMS)
    _train(model, ds, steps=40, seed=0)
    torch.manual_seed(1)
    random_model = build_model("gru", *specs, **MODEL_HPARAMS).eval()
    splits = ("train", "val", "test", "ood")
    store = extract_latents(model, ds, splits, SITES, root / "latents", batch_episodes=16, progress=False)
    random_store = extract_latents(random_model, ds, splits, SITES, root / "latents_random", batch_episodes=16, progress=False)
    return SimpleNamespace(root=root, ds=ds, model=model, random_model=random_model, store=store,
                           random_store=random_store, sites=SITES, splits=splits)


PLANTED_SCHEMA = ConceptSchema((
    Concept("flag", "binary", "a planted binary concept"),
    Concept("level", "scalar", "a planted scalar concept", low=-100.0, high=100.0),
    Concept("room", "categorical", "a planted three-class concept", classes=("a", "b", "c")),
))


def make_planted(path, seed: int = 0, episodes: tuple[int, int, int, int] = (60, 20, 20, 10), steps: int = 20,
                 d: int = 12) -> LatentStore:
    """A synthetic store: ``signal`` carries every concept linearly, ``noise`` nothing.

    Each episode has its own latent factor vector drifting slowly; the observation is the sign pattern
    of the first six factors (64 observation types for the control task).
    """
    rng = np.random.default_rng(seed)
    sites, concepts, eps, obs = {}, {}, {}, {}
    eid = 0
    w_flag, w_level, w_room = rng.standard_normal(d), rng.standard_normal(d), rng.standard_normal((3, d))
    for split, k in zip(("train", "val", "test", "ood"), episodes):
        z = np.concatenate([np.cumsum(rng.standard_normal((steps, d)) * 0.5, 0) + rng.standard_normal(d) * 2
                            for _ in range(k)])
        n = len(z)
        sites[split] = {"signal": (z + 0.1 * rng.standard_normal((n, d))).astype(np.float32),
                        "noise": rng.standard_normal((n, d)).astype(np.float32)}
        concepts[split] = {"flag": (z @ w_flag > 0).astype(np.uint8),
                           "level": np.clip(z @ w_level / 4, -100, 100).astype(np.float32),
                           "room": np.argmax(z @ w_room.T, 1).astype(np.int64)}
        eps[split] = np.repeat(np.arange(eid, eid + k), steps)
        eid += k
        obs[split] = (z[:, :6] > 0).astype(np.uint8)  # [n 6]
    return LatentStore.from_arrays(path, schema=PLANTED_SCHEMA, sites=sites, concepts=concepts, episodes=eps, obs=obs)


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("planted")
    return SimpleNamespace(store=make_planted(root / "store"), schema=PLANTED_SCHEMA, make=make_planted, root=root)


RING_SHIFT = np.array([0, 1, -1])


def make_ring_episodes(n: int, seed: int, lengths: tuple[int, int] = (20, 30), k: int = 4) -> list[Episode]:
    """``n`` ring-world episodes (see the module docstring), lengths drawn from ``[lengths)``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(*lengths))
        actions = rng.integers(0, 3, t).astype(np.int64)
        actions[0] = 0
        pos = (rng.integers(k) + np.cumsum(RING_SHIFT[actions] * (np.arange(t) > 0))) % k
        flags = np.zeros(t, bool)
        out.append(Episode(obs=np.eye(k, dtype=np.float32)[pos], actions=actions, is_first=np.r_[True, flags[1:]],
                           is_terminal=flags, reward=np.zeros(t, np.float32), success=flags, violation=flags,
                           concepts={"pos": pos.astype(np.int64), "even": (pos % 2 == 0).astype(np.uint8),
                                     "home": (pos == 0).astype(np.uint8)}))
    return out


@pytest.fixture(scope="session")
def ring_episodes():
    return make_ring_episodes

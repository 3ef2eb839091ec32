"""Shared fixtures for the dynamics training tests: a tiny model and tiny in-memory worlds.

``TinyModel`` is a minimal :class:`~dynamics.base.DynamicsModel` (MLP observation encoder, a
posterior GRU cell over [embedding, one-hot action], a prior GRU cell over the action alone, a
linear decoder). Its loss adds ``torch.randn`` noise to the latent, so a resumed run that failed to
restore the RNG state would diverge from an uninterrupted one.

The worlds: an agent on a ``size x size`` grid (symbolic obs ``[2 h w]``: channel 1 marks the agent)
moved by 5 discrete actions (stay, up, down, left, right), and the same walk seen as a float vector
``[x, y]`` (vector obs, for NaN injection). This file is also imported by the SIGKILL child
processes of ``test_resume.py`` (as a plain module), so it holds plain functions besides fixtures.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.base import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec
from dynamics.training.data import InMemoryWindowSource
from worlds.trajectory import Episode

torch.set_num_threads(1)

MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


class TinyModel(DynamicsModel):
    """GRU over one-hot actions + MLP obs encoder; loss = reconstruction + one-step prior prediction."""

    name = "tiny"

    def __init__(self, obs_spec: ObsSpec, action_spec: ActionSpec, hidden: int = 16, noise: float = 0.1):
        super().__init__()
        self.obs_spec, self.action_spec, self.hidden, self.noise = obs_spec, action_spec, hidden, noise
        d = math.prod(obs_spec.shape)
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.post = nn.GRUCell(hidden + action_spec.input_dim, hidden)
        self.prior = nn.GRUCell(action_spec.input_dim, hidden)
        self.dec = nn.Linear(hidden, d)

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        return {"deter": (self.hidden,), "feat": (self.hidden,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "noise": self.noise}

    def _act(self, actions: Tensor) -> Tensor:
        if self.action_spec.discrete:
            return F.one_hot(actions.long(), self.action_spec.n).float()
        return actions.float()

    def _obs(self, obs: Tensor) -> Tensor:
        x = obs.float() / 255.0 if self.obs_spec.kind == "image" else obs.float()
        return x.flatten(2)

    def initial(self, batch_size: int) -> LatentState:
        h = self.dec.weight.new_zeros(batch_size, self.hidden)
        return LatentState({"deter": h, "feat": h})

    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LatentState:
        x, a = self.enc(self._obs(obs)), self._act(actions)
        h = self.initial(obs.shape[0])["deter"]
        out = []
        for t in range(obs.shape[1]):
            h = h * (~is_first[:, t]).float().unsqueeze(-1)
            h = self.post(torch.cat([x[:, t], a[:, t]], -1), h)
            out.append(h)
        hs = torch.stack(out, 1)
        return LatentState({"deter": hs, "feat": hs})

    def imagine(self, state: LatentState, actions: Tensor) -> LatentState:
        a, h = self._act(actions), state["deter"]
        out = []
        for i in range(actions.shape[1]):
            h = self.prior(a[:, i], h)
            out.append(h)
        hs = torch.stack(out, 1)
        return LatentState({"deter": hs, "feat": hs})

    def decode(self, state: LatentState) -> Tensor:
        feat = state["feat"]
        return self.dec(feat).reshape(*feat.shape[:-1], *self.obs_spec.shape)

    def _recon(self, pred: Tensor, obs: Tensor) -> Tensor:
        if self.obs_spec.kind == "symbolic":  # pred [b t c h w] logits -> per-step mean cross-entropy [b t]
            ce = F.cross_entropy(pred.flatten(0, 1), obs.flatten(0, 1).argmax(1), reduction="none")
            return ce.flatten(1).mean(-1).reshape(pred.shape[:2])
        target = obs.float() / 255.0 if self.obs_spec.kind == "image" else obs.float()
        return (pred - target).pow(2).flatten(2).mean(-1)

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        state = self.observe(obs, actions, is_first)
        h = state["deter"]
        noisy = h + self.noise * torch.randn_like(h)
        recon = self._recon(self.decode(LatentState({"feat": noisy})), obs).mean()
        b, t = is_first.shape
        nxt = self.prior(self._act(actions[:, 1:]).flatten(0, 1), h[:, :-1].flatten(0, 1)).reshape(b, t - 1, -1)
        keep = (~is_first[:, 1:]).float()
        step = (self._recon(self.decode(LatentState({"feat": nxt})), obs[:, 1:]) * keep).sum() / keep.sum().clamp(min=1)
        loss = recon + step
        return LossOutput(loss, {"recon": recon.detach(), "step": step.detach()}, state.map(torch.Tensor.detach))


def build_tiny(name: str, obs_spec: ObsSpec, action_spec: ActionSpec, hparams: dict[str, Any]) -> DynamicsModel:
    """A ``load_model(build=...)`` stand-in for the registry, which does not know ``TinyModel``."""
    if name != "tiny":
        raise ValueError(f"unknown model {name!r}")
    return TinyModel(obs_spec, action_spec, **hparams)


def walk_episodes(n: int, seed: int, size: int = 3, lengths: tuple[int, int] = (10, 30), vector: bool = False) -> list[Episode]:
    """``n`` random walks on a ``size x size`` grid; symbolic ``uint8[t 2 size size]`` or vector ``float32[t 2]`` obs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(lengths[0], lengths[1] + 1))
        actions = rng.integers(0, 5, t).astype(np.int64)
        actions[0] = 0
        pos = np.zeros((t, 2), np.int64)
        pos[0] = rng.integers(0, size, 2)
        for i in range(1, t):
            pos[i] = np.clip(pos[i - 1] + MOVES[actions[i]], 0, size - 1)
        if vector:
            obs = (pos / (size - 1)).astype(np.float32)
        else:
            obs = np.zeros((t, 2, size, size), np.uint8)
            obs[:, 0] = 1
            obs[np.arange(t), 0, pos[:, 0], pos[:, 1]] = 0
            obs[np.arange(t), 1, pos[:, 0], pos[:, 1]] = 1
        flags = np.zeros(t, bool)
        out.append(Episode(obs=obs, actions=actions, is_first=np.r_[True, np.zeros(t - 1, bool)], is_terminal=flags,
                           reward=np.zeros(t, np.float32), success=flags, violation=flags))
    return out


def walk_source(seed: int = 0, n_train: int = 12, n_val: int = 4, vector: bool = False, **kw: Any) -> InMemoryWindowSource:
    """Train / val splits of :func:`walk_episodes` as an in-memory window source."""
    eps = walk_episodes(n_train + n_val, seed, vector=vector, **kw)
    size = kw.get("size", 3)
    obs_spec = {"shape": [2] if vector else [2, size, size], "dtype": "float32" if vector else "uint8",
                "obs_kind": "vector" if vector else "symbolic"}
    return InMemoryWindowSource({"train": eps[:n_train], "val": eps[n_train:]}, obs_spec, {"kind": "discrete", "n": 5})


def tiny_for(source: InMemoryWindowSource, seed: int = 0, **hparams: Any) -> TinyModel:
    """A freshly initialised ``TinyModel`` for ``source``'s specs (initial weights fixed by ``seed``)."""
    spec = source.obs_spec
    torch.manual_seed(seed)
    return TinyModel(ObsSpec(tuple(spec["shape"]), spec["obs_kind"]), ActionSpec(True, n=5), **hparams)


FAST = dict(batch_size=4, window=16, lr=3e-3, grad_clip=10.0, logger="none", progress_bar=False)
"""fit_dynamics settings shared by the tests (tiny, CPU, no wandb)."""


@pytest.fixture
def grid_source() -> InMemoryWindowSource:
    return walk_source(seed=0)


@pytest.fixture
def vector_source() -> InMemoryWindowSource:
    return walk_source(seed=1, vector=True)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The plain helpers of this file (test modules must not ``import conftest``: the name is ambiguous)."""
    return SimpleNamespace(TinyModel=TinyModel, build_tiny=build_tiny, walk_episodes=walk_episodes,
                           walk_source=walk_source, tiny_for=tiny_for, fast=dict(FAST), tests_dir=str(Path(__file__).parent))

"""Toy dynamics models with known optima for the planner tests (plain classes, built by fixtures).

* :class:`ChainModel` -- discrete: a combination lock of ``len(key)`` steps (the right action moves on
  and earns 0.5, a wrong one sends the agent back to 0 with a lure of 0.3); at the end action 0 earns
  5 per step and, with ``danger``, action 1 earns 8 but costs 1 (a constraint violation).
  With ``risk > 0``, ``imagine(sample=True)`` makes action 2 violate with probability ``risk``.
* :class:`LinearModel` -- continuous: ``x' = A x + B u`` with reward ``-(|x'|^2 + rho |u|^2)``, whose
  optimal open-loop sequence is a least-squares solution (:func:`lq_optimum`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from dynamics.base import ActionSpec, DynamicsModel, LatentState, ObsSpec
from rewards import RewardOutput


class _Toy(DynamicsModel):
    obs_spec = ObsSpec((1,), "vector")

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def initial(self, batch_size: int) -> LatentState:
        raise NotImplementedError

    def observe(self, obs, actions, is_first, *, sample=False):
        raise NotImplementedError

    def loss(self, obs, actions, is_first):
        raise NotImplementedError


class ChainModel(_Toy):
    def __init__(self, key=(2, 0, 3, 1), danger: bool = False, risk: float = 0.0):
        super().__init__()
        self.key, self.danger, self.risk = torch.tensor(key), danger, risk
        self.action_spec = ActionSpec(discrete=True, n=4)
        self.calls = 0

    @property
    def sites(self):
        return {"s": (), "r": (), "c": (), "feat": (1,)}

    def state(self, s: int = 0) -> LatentState:
        z = torch.zeros(1)
        return LatentState({"s": torch.tensor([s]), "r": z, "c": z, "feat": torch.tensor([[float(s)]])})

    def transition(self, s: Tensor, a: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        n = len(self.key)
        end = s == n
        right = a == self.key[s.clamp(max=n - 1)]
        s2 = torch.where(end, s, torch.where(right, s + 1, 0))
        r = torch.where(end, torch.where(a == 0, 5.0, 0.0), torch.where(right, 0.5, 0.3))
        c = torch.zeros_like(r)
        if self.danger:
            r = torch.where(end & (a == 1), 8.0, r)
            c = torch.where(end & (a == 1), 1.0, c)
        if self.risk > 0 and sample:
            c = torch.where((a == 2) & (torch.rand(r.shape) < self.risk), 1.0, c)
        return s2, r, c

    def imagine(self, state, actions, *, sample=False):
        self.calls += 1
        s, out = state["s"], {"s": [], "r": [], "c": []}
        for t in range(actions.shape[1]):
            s, r, c = self.transition(s, actions[:, t], sample)
            for k, v in zip("src", (s, r, c)):
                out[k].append(v)
        sites = {k: torch.stack(v, 1) for k, v in out.items()}
        sites["feat"] = sites["s"].float()[..., None]
        return LatentState(sites)


def chain_reward(states: LatentState, actions: Tensor) -> RewardOutput:
    return RewardOutput(states["r"], states["c"], {})


class LinearModel(_Toy):
    def __init__(self, A, B, dtype=torch.float64):
        super().__init__()
        self.A, self.B = torch.as_tensor(A, dtype=dtype), torch.as_tensor(B, dtype=dtype)
        self.action_spec = ActionSpec(discrete=False, dim=self.B.shape[1])
        self.calls = 0

    @property
    def sites(self):
        return {"feat": (self.A.shape[0],)}

    def imagine(self, state, actions, *, sample=False):
        self.calls += 1
        x, xs = state.feat, []
        for t in range(actions.shape[1]):
            x = x @ self.A.T + actions[:, t].to(x) @ self.B.T
            xs.append(x)
        return LatentState({"feat": torch.stack(xs, 1)})


RHO = 0.1
A_LIN = [[1.0, 0.1], [0.0, 1.0]]
B_LIN = [[0.5, 0.0], [0.2, 0.5]]
X0 = [1.0, -0.5]


def lq_reward(states: LatentState, actions: Tensor) -> RewardOutput:
    r = -(states.feat**2).sum(-1) - RHO * (actions.to(states.feat) ** 2).sum(-1)
    return RewardOutput(r, torch.zeros_like(r), {})


def lq_cost(U: np.ndarray, A=A_LIN, B=B_LIN, x0=X0) -> float:
    """Total cost of ``U[h m]`` computed step by step in numpy (independent of the torch model)."""
    A, B, x = np.asarray(A), np.asarray(B), np.asarray(x0, float)
    total = 0.0
    for u in U:
        x = A @ x + B @ u
        total += x @ x + RHO * u @ u
    return float(total)


def lq_optimum(h: int, A=A_LIN, B=B_LIN, x0=X0) -> np.ndarray:
    """``[h m]`` the optimal open-loop sequence: least squares on the stacked system ``X = G x0 + H U``."""
    A, B, x0 = np.asarray(A), np.asarray(B), np.asarray(x0, float)
    n, m = B.shape
    G = np.concatenate([np.linalg.matrix_power(A, t + 1) for t in range(h)])
    H = np.zeros((h * n, h * m))
    for t in range(h):
        for j in range(t + 1):
            H[t * n:(t + 1) * n, j * m:(j + 1) * m] = np.linalg.matrix_power(A, t - j) @ B
    lhs = np.concatenate([H, np.sqrt(RHO) * np.eye(h * m)])
    rhs = np.concatenate([-G @ x0, np.zeros(h * m)])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0].reshape(h, m)


def linear_state() -> LatentState:
    return LatentState({"feat": torch.tensor([X0], dtype=torch.float64)})


@pytest.fixture(scope="session")
def toys() -> SimpleNamespace:
    """The plain helpers of this file (test modules must not ``import conftest``: the name is ambiguous)."""
    return SimpleNamespace(ChainModel=ChainModel, chain_reward=chain_reward, LinearModel=LinearModel,
                           linear=lambda: LinearModel(A_LIN, B_LIN), linear_state=linear_state, lq_reward=lq_reward,
                           lq_cost=lq_cost, lq_optimum=lq_optimum)


@pytest.fixture(autouse=True)
def one_thread():
    """Planner tests run tiny ops; extra intra-op threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

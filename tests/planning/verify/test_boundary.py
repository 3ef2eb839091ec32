"""The counterfactual boundary check on toy models whose effects are known by hand."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dynamics.base import ActionSpec, DynamicsModel, LatentState, ObsSpec
from planning.verify.boundary import constant_actions, counterfactual_boundary
from planning.verify.validate import VerifyError


class DoorModel(DynamicsModel):
    """``pos`` (scalar) and ``door`` (binary). Actions: 0 noop, 1 step right (pos + 1), 2 open the door.
    With ``sample=True`` every step also adds N(0, 1) noise to ``pos`` (torch's global RNG)."""

    obs_spec = ObsSpec((1,), "vector")
    action_spec = ActionSpec(discrete=True, n=3)

    @property
    def sites(self):
        return {"pos": (), "door": (), "feat": (2,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def initial(self, batch_size):
        raise NotImplementedError

    def observe(self, obs, actions, is_first, *, sample=False):
        raise NotImplementedError

    def loss(self, obs, actions, is_first):
        raise NotImplementedError

    def state(self, n: int) -> LatentState:
        pos, door = torch.zeros(n), torch.zeros(n)
        return LatentState({"pos": pos, "door": door, "feat": torch.stack([pos, door], -1)})

    def imagine(self, state, actions, *, sample=False):
        pos, door, ps, ds = state["pos"], state["door"], [], []
        for t in range(actions.shape[1]):
            a = actions[:, t]
            pos = pos + (a == 1).float() + (torch.randn(pos.shape) if sample else 0.0)
            door = torch.maximum(door, (a == 2).float())
            ps.append(pos), ds.append(door)
        pos, door = torch.stack(ps, 1), torch.stack(ds, 1)
        return LatentState({"pos": pos, "door": door, "feat": torch.stack([pos, door], -1)})


class Reader:
    kinds = {"pos": "scalar", "door": "binary"}
    concepts = tuple(kinds)

    def __contains__(self, name):
        return name in self.kinds

    def __getitem__(self, name):
        return SimpleNamespace(concept=SimpleNamespace(kind=self.kinds[name]))

    def resolve(self, state, name, mode="value"):
        return state[name].long() if name == "door" else state[name]


def test_effects_match_hand_computed_values():
    torch.set_num_threads(1)
    model, n, h = DoorModel(), 8, 4
    plans = torch.ones(n, h, dtype=torch.long)                     # everyone walks right ...
    plans[:2, 3] = 2                                               # ... two of them open the door at the end
    noop = constant_actions(model, n, h, 0)
    rep = counterfactual_boundary(model, Reader(), model.state(n), plans, noop, ("door", "pos"),
                                  tolerance={"pos": 2.5}, n_boot=200)
    door, pos = rep.effects
    assert door.kind == "binary" and door.tolerance == 0.0
    assert door.mean_change.estimate == pytest.approx(2 / 8) and door.max_change == 1.0
    assert door.exceed_rate.estimate == pytest.approx(2 / 8)
    assert door.exceed_rate.lower < 0.25 < door.exceed_rate.upper
    # pos: walkers reach 4 (3 for the door openers): max difference to the no-op along the horizon
    assert pos.max_change == 4.0 and pos.mean_change.estimate == pytest.approx((6 * 4 + 2 * 3) / 8)
    assert pos.exceed_rate.estimate == 1.0                         # every start moved more than 2.5
    assert not rep.holds and rep.starts == n and rep.horizon == h and rep.alternative == "noop"
    d = rep.to_dict()
    assert d["effects"][0]["concept"] == "door" and d["holds"] is False


def test_same_actions_give_zero_change_under_common_random_numbers():
    model, n, h = DoorModel(), 16, 5
    acts = torch.randint(0, 3, (n, h), generator=torch.Generator().manual_seed(0))
    rep = counterfactual_boundary(model, Reader(), model.state(n), acts, acts.clone(), ("pos", "door"),
                                  sample=True, seed=7, n_boot=50)
    assert rep.holds and all(e.max_change == 0.0 for e in rep.effects)
    assert rep.effects[0].exceed_rate.upper < 0.25                   # 0 of 16: CP upper bound ~ 0.21


def test_bad_input_is_refused():
    model = DoorModel()
    plans = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(VerifyError, match="not probed"):
        counterfactual_boundary(model, Reader(), model.state(2), plans, plans, ("lava",))
    with pytest.raises(VerifyError, match="one shape"):
        counterfactual_boundary(model, Reader(), model.state(2), plans, plans[:, :2], ("door",))
    with pytest.raises(VerifyError, match="same n"):
        counterfactual_boundary(model, Reader(), model.state(3), plans, plans, ("door",))
    with pytest.raises(VerifyError, match="at least one protected"):
        counterfactual_boundary(model, Reader(), model.state(2), plans, plans, ())
    with pytest.raises(VerifyError, match="tolerance"):
        counterfactual_boundary(model, Reader(), model.state(2), plans, plans, ("pos",), tolerance=-1.0)
    with pytest.raises(VerifyError, match="index in"):
        constant_actions(model, 2, 3, 7)

"""``observe(..., start=state)``: filtering one step (or chunk) at a time equals one whole-sequence call.

For every registered model (both RSSM latent kinds, with symbolic and continuous-action vector inputs)
the posterior of a sequence with mid-sequence resets is computed twice: once by one ``observe`` call over
all ``t`` steps, once by ``t`` calls of one step each, every call continuing from the previous call's
last state. The two must agree to float rounding (the only difference is batched vs per-step matmuls).
"""

from __future__ import annotations

import pytest
import torch

from dynamics import build_model
from dynamics.base import LatentState

torch.set_num_threads(1)

SMALL = {"deter": 12, "hidden": 12, "embed": 12}
CASES = [
    ("rssm", {"stoch": 3, "classes": 4, "stoch_kind": "discrete"}),
    ("rssm", {"stoch": 4, "stoch_kind": "gaussian"}),
    ("gru", {}),
    ("spr", {}),
]
SPECS = {
    "symbolic": ({"shape": [3, 5, 5], "kind": "symbolic"}, {"discrete": True, "n": 5}),
    "vector": ({"shape": [6], "kind": "vector"}, {"discrete": False, "dim": 2}),
}


def _sequence(obs_spec: dict, action_spec: dict, b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if obs_spec["kind"] == "symbolic":
        c, h, w = obs_spec["shape"]
        idx = torch.randint(0, c, (b, t, h, w), generator=g)
        obs = torch.nn.functional.one_hot(idx, c).permute(0, 1, 4, 2, 3).to(torch.uint8)
    else:
        obs = torch.randn(b, t, *obs_spec["shape"], generator=g)
    if action_spec["discrete"]:
        act = torch.randint(0, action_spec["n"], (b, t), generator=g)
    else:
        act = torch.rand(b, t, action_spec["dim"], generator=g) * 2 - 1
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    first[0, 4] = True          # a reset in the middle of one sequence
    first[1, t - 1] = True      # and one at the very last step of another
    return obs, act, first


def _stepwise(model, obs, act, first, chunk: int) -> LatentState:
    """Filter ``chunk`` steps per call, each call continuing from the last state of the previous one."""
    parts, state = [], None
    for s in range(0, obs.shape[1], chunk):
        post = model.observe(obs[:, s:s + chunk], act[:, s:s + chunk], first[:, s:s + chunk], start=state)
        parts.append(post)
        state = post.at((slice(None), -1))
    return LatentState({k: torch.cat([p[k] for p in parts], 1) for k in parts[0].sites})


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize("name,hparams", CASES, ids=[f"{n}-{h.get('stoch_kind', 'default')}" for n, h in CASES])
def test_stepwise_filtering_equals_one_call(name, hparams, kind):
    obs_spec, action_spec = SPECS[kind]
    torch.manual_seed(0)
    model = build_model(name, obs_spec, action_spec, **SMALL, **hparams).train(False)
    obs, act, first = _sequence(obs_spec, action_spec, b=3, t=9)
    with torch.inference_mode():
        whole = model.observe(obs, act, first)
        for chunk in (1, 4):
            pieces = _stepwise(model, obs, act, first, chunk)
            assert set(pieces.sites) == set(whole.sites)
            for k in whole.sites:
                torch.testing.assert_close(pieces[k], whole[k], rtol=1e-6, atol=1e-6, msg=f"site {k}, chunk {chunk}")


def test_start_changes_the_result_unless_the_step_resets():
    """``start`` is really used (a non-initial start gives other states) and a reset at step 0 ignores it."""
    obs_spec, action_spec = SPECS["symbolic"]
    torch.manual_seed(0)
    model = build_model("rssm", obs_spec, action_spec, **SMALL, stoch=3, classes=4, stoch_kind="discrete").train(False)
    obs, act, first = _sequence(obs_spec, action_spec, b=3, t=6)
    with torch.inference_mode():
        init = model.initial(3)
        other = init.map(lambda v: v + 1.0)
        cont = torch.zeros_like(first)
        a = model.observe(obs, act, cont, start=init)["deter"]
        b = model.observe(obs, act, cont, start=other)["deter"]
        assert not torch.allclose(a, b)
        torch.testing.assert_close(model.observe(obs, act, first, start=other)["deter"],
                                   model.observe(obs, act, first)["deter"])

"""Resume is bitwise for the real models, not only for the test kit's ``TinyModel``.

Each model (RSSM with a Gaussian latent -- the default --, RSSM with categoricals, GRU, SPR) is trained
20 steps straight, and 10 steps then resumed to 20 from a model built with other initial weights (so the
weights must come from the checkpoint). The final weights, optimizer state and RNG-dependent buffers
must be bitwise equal. These models draw from the global RNG in their losses (Gaussian / categorical
samples, observed-prefix masks), keep running buffers (class-balance counts) and, for SPR, an EMA target
encoder: what ``tests/reliability/test_resume.py`` cannot see with ``TinyModel``.
(Kills mid-step and mid-save are tested there; this file keeps the models' part fast: ~5 s per model.)
"""

from __future__ import annotations

import json

import pytest
import torch

from dynamics.base import ActionSpec, ObsSpec
from dynamics.registry import build_model
from dynamics.training import fit_dynamics
from dynamics.training.checkpoint import read_checkpoint

torch.set_num_threads(1)

SMALL = {"deter": 16, "hidden": 16, "embed": 16}
MODELS = {
    "rssm_gaussian": ("rssm", {**SMALL, "stoch": 4, "stoch_kind": "gaussian"}),
    "rssm_discrete": ("rssm", {**SMALL, "stoch": 4, "classes": 4, "stoch_kind": "discrete"}),
    "gru": ("gru", SMALL),
    "spr": ("spr", SMALL),
}
SETTINGS = {"val_every": 5, "checkpoint_every": 5, "seed": 3}


def _model(key: str, seed: int = 0):
    name, hparams = MODELS[key]
    torch.manual_seed(seed)
    return build_model(name, ObsSpec((2, 3, 3), "symbolic"), ActionSpec(True, n=5), **hparams)


def _state(run):
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    return ckpt["state_dict"], ckpt["optimizer_states"][0]["state"], ckpt["global_step"]


def _differ(a, b, where: str = "") -> list[str]:
    """Names of the entries of two (nested) state dicts that are not bitwise equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys(), key=str):
            out += _differ(a[k], b[k], f"{where}{k}.") if k in a and k in b else [f"{where}{k} (missing)"]
        return out
    if torch.is_tensor(a):
        same = torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        same = a == b
    return [] if same else [where.rstrip(".") or "<value>"]


@pytest.mark.parametrize("key", sorted(MODELS))
def test_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(key, kit, tmp_path):
    source = kit.walk_source(seed=0)
    fast = {**kit.fast, **SETTINGS}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit_dynamics(_model(key), source, straight, max_steps=20, **fast)
    fit_dynamics(_model(key), source, resumed, max_steps=10, **fast)
    halfway = _state(resumed)[0]
    fit_dynamics(_model(key, seed=99), source, resumed, max_steps=20, resume=True, **fast)

    (w_a, opt_a, step_a), (w_b, opt_b, step_b) = _state(straight), _state(resumed)
    assert step_a == step_b == 20
    assert json.loads((resumed / "run.json").read_text())["resumed_from"].endswith("last.ckpt")
    assert not _differ(w_a, w_b), f"weights differ after resume: {_differ(w_a, w_b)[:5]}"
    assert not _differ(opt_a, opt_b), f"optimizer state differs after resume: {_differ(opt_a, opt_b)[:5]}"
    assert _differ(halfway, w_b), "the second half trained nothing: the comparison would prove nothing"

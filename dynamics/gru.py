"""Deterministic recurrent baseline: one GRU whose observation input can be withheld.

One step (``actions[:, t]`` led into step ``t``)::

    deter_t = GRU(silu(LN(W [m_t * embed(obs_t), m_t, a_t])), deter_{t-1}),   obs_t ~ decoder(deter_t)

``m_t = 1`` when the observation is given (``observe``) and ``0`` when it is not (``imagine``, which
therefore runs the same cell on the actions alone: the "prior cell" is this cell with a blank input).
Training withholds a random suffix of every window (observation dropout, as in the "recurrent
environment simulators" of Chiappa et al. 2017): each sequence sees its first ``c ~ U{1..t}`` observations
and must reconstruct *all* ``t`` steps, so the loss trains open-loop prediction up to ``t - 1`` steps
ahead along with reconstruction. There is no stochastic state: the model predicts the mean.

Because every GRU input is known before the time loop (embeddings, masks, actions), the loop runs
inside ``nn.GRU``'s kernel (:func:`dynamics.networks.run_gru`), and ``imagine`` has no Python loop.

Sites (``b`` batch, ``t`` time): ``embed [E]`` (``observe`` only), ``deter [D]``, ``feat [D]`` (= deter).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dynamics.balance import balanced_recon_loss, check_recon_balance, class_balance_for
from dynamics.base import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec, check_config_types
from dynamics.networks import (ENCODER_KINDS, ObsDecoder, ObsEncoder, check_sequence, decode_with,
                               embed_actions, flatten_bt, plain_specs, run_gru)


class BlankableGRU(nn.Module):
    """``deter_t = GRU(silu(LN(W [m_t * embed_t, m_t, a_t])), deter_{t-1})`` over a sequence."""

    def __init__(self, embed: int, action_dim: int, hidden: int, deter: int):
        super().__init__()
        self.inp = nn.Linear(embed + 1 + action_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.gru = nn.GRU(hidden, deter, batch_first=True)

    def forward(self, embed: Tensor | None, mask: Tensor, act: Tensor, h0: Tensor,
                is_first: Tensor | None = None) -> Tensor:
        """``embed[b t E]`` (None: all blank), ``mask[b t]``, ``act[b t A]``, ``h0[b D]`` -> ``deter[b t D]``."""
        m = mask.to(act.dtype).unsqueeze(-1)
        if embed is None:
            embed = act.new_zeros(*act.shape[:2], self.inp.in_features - 1 - act.shape[-1])
        x = F.silu(self.norm(self.inp(torch.cat([embed * m, m, act], -1))))
        return run_gru(self.gru, x, h0, is_first)


def observed_prefix(is_first: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``bool[b t]`` mask: sequence ``i`` sees its first ``c_i ~ U{1..t}`` observations and every first step."""
    b, t = is_first.shape
    c = torch.randint(1, t + 1, (b, 1), device=is_first.device, generator=generator)
    return (torch.arange(t, device=is_first.device) < c) | is_first.bool()


@dataclass(frozen=True)
class RecurrentConfig:
    """Hyperparameters of the recurrent core shared by :class:`GRUModel` and :class:`~dynamics.spr.SPRModel`."""

    deter: int = 192
    """Width of the GRU state."""
    hidden: int = 192
    """Width of the hidden layers."""
    embed: int = 192
    """Width of the observation embedding."""
    encoder: str = "auto"
    """``"auto"`` (MLP for small grids, conv otherwise), ``"mlp"`` or ``"conv"``."""
    conv_depth: int = 32
    """Channels of the first conv layer (doubling per layer)."""
    symlog: bool = True
    """Encode and reconstruct vector observations in symlog space."""

    def __post_init__(self) -> None:
        check_config_types(self)  # before the range checks: deter=1.5 or [1, 2] is named, not a TypeError deep in torch
        for name in ("deter", "hidden", "embed", "conv_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(f"encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")


@dataclass(frozen=True)
class GRUConfig(RecurrentConfig):
    """Hyperparameters of :class:`GRUModel`: the recurrent core's and its reconstruction's."""

    recon_balance: float = 0.5
    """Class-balanced reconstruction of symbolic observations (ignored for image / vector ones), as in the
    RSSM (:attr:`dynamics.rssm.RSSMConfig.recon_balance`, where it was measured): each cell's cross-entropy is
    weighted by ``freq(class) ** -recon_balance`` (running counts over the training batches) and decoded
    logits are corrected back to calibrated probabilities (:mod:`dynamics.balance`); 0 is the plain
    cross-entropy. The default 0.5 is the RSSM's, for consistency between the models compared; it was not
    tuned for the GRU."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_recon_balance(self.recon_balance)


class RecurrentLatentModel(DynamicsModel):
    """Shared core of the deterministic recurrent models (GRU, SPR): ``self.encoder`` embeds each
    observation, ``self.core`` (a :class:`BlankableGRU`) filters embeddings and actions into ``deter``.
    Sites: ``embed [E]``, ``deter [D]``, ``feat [D]`` (= ``deter``). Subclasses set ``config`` (with
    ``embed`` and ``deter``), ``encoder`` and ``core``, and add their decoder or predictor and loss."""

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        return {"embed": (c.embed,), "deter": (c.deter,), "feat": (c.deter,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {**plain_specs(self.obs_spec, self.action_spec), **dataclasses.asdict(self.config)}

    def initial(self, batch_size: int) -> LatentState:
        deter = self.core.inp.weight.new_zeros(batch_size, self.config.deter)
        return LatentState({"deter": deter, "feat": deter})

    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor, *, sample: bool = False,
                start: LatentState | None = None) -> LatentState:
        """States ``[b t ...]`` after every observation (``sample`` is accepted for a common signature);
        ``start[b ...]`` (optional): continue from that state instead of ``initial``."""
        return self._filter(obs, actions, is_first, torch.ones_like(is_first, dtype=torch.bool), start)

    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        """Roll ``state[b ...]`` with blank observations over ``actions[b h ...]``: ``[b h ...]``."""
        b, h = actions.shape[:2]
        if h == 0:
            deter = state["deter"].new_zeros(b, 0, self.config.deter)
        else:
            act = embed_actions(actions, self.action_spec)
            deter = self.core(None, act.new_zeros(b, h), act, state["deter"])
        return LatentState({"deter": deter, "feat": deter})

    def _filter(self, obs: Tensor, actions: Tensor, is_first: Tensor, mask: Tensor,
                start: LatentState | None = None) -> LatentState:
        check_sequence(obs, actions, is_first, self.obs_spec, self.action_spec)
        b = obs.shape[0]
        keep = (~is_first.bool()).float().unsqueeze(-1)
        embed = rearrange(self.encoder(flatten_bt(obs)), "(b t) e -> b t e", b=b)
        act = embed_actions(actions, self.action_spec) * keep
        h0 = self.initial(b)["deter"] if start is None else start["deter"]
        deter = self.core(embed, mask, act, h0, is_first)
        return LatentState({"embed": embed, "deter": deter, "feat": deter})


class GRUModel(RecurrentLatentModel):
    """Deterministic latent model with observation dropout (see the module docstring)."""

    name: ClassVar[str] = "gru"

    def __init__(self, obs_spec: ObsSpec, action_spec: ActionSpec, config: GRUConfig = GRUConfig()):
        super().__init__()
        self.obs_spec, self.action_spec, self.config = obs_spec, action_spec, config
        c = config
        self.encoder = ObsEncoder(obs_spec, c.embed, c.hidden, c.encoder, c.conv_depth, c.symlog)
        self.core = BlankableGRU(c.embed, action_spec.input_dim, c.hidden, c.deter)
        self.decoder = ObsDecoder(obs_spec, c.deter, c.hidden, c.encoder, c.conv_depth)
        self.balance = class_balance_for(obs_spec, c.recon_balance)

    def decode(self, state: LatentState) -> Tensor:
        """Predicted observation ``[*lead *obs]`` (channel logits for symbolic obs, calibrated when balanced)."""
        out = decode_with(self.decoder, state["feat"], self.obs_spec, self.config.symlog)
        return out if self.balance is None else self.balance.adjust(out)

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        mask = observed_prefix(is_first)
        state = self._filter(obs, actions, is_first, mask)
        if self.balance is not None and self.training:
            self.balance.update(obs)
        per_step = self._recon(self.decoder(flatten_bt(state["feat"])), flatten_bt(obs))
        per_step = rearrange(per_step, "(b t) -> b t", b=obs.shape[0])
        loss = per_step.mean()
        m = mask.float()
        metrics = {"loss": loss, "recon_observed": (per_step * m).sum() / m.sum().clamp(min=1),
                   "recon_blank": (per_step * (1 - m)).sum() / (1 - m).sum().clamp(min=1)}
        return LossOutput(loss, {k: v.detach() for k, v in metrics.items()}, state.map(torch.Tensor.detach))

    def _recon(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-observation reconstruction loss ``[N]`` (class-balanced when ``recon_balance > 0``)."""
        return balanced_recon_loss(self.balance, pred, target, self.obs_spec, self.config.symlog)


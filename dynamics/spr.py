"""Reconstruction-free self-predictive model (SPR / JEPA style) with an explicit anti-collapse term.

Online path: ``embed_t = enc(obs_t)``; the same blankable GRU as :mod:`dynamics.gru` filters
``[m_t * embed_t, m_t, a_t]`` into ``deter_t``; a predictor head maps ``deter_t`` to a guess of the
*target* latent ``enc_ema(obs_t)``, where ``enc_ema`` is an exponential moving average of ``enc``
(BYOL / SPR). Training withholds a random suffix of each window (``m_t = 0``), so steps ``c .. t-1``
are predicted ``1 .. t-c`` steps ahead from actions alone; ``imagine`` runs the cell with blank inputs.

Loss = ``pred`` (cosine distance of predictor output to the stop-gradient target latent, every step)
+ ``var_weight`` * VICReg variance hinge + ``cov_weight`` * VICReg covariance penalty, both on the batch of
online embeddings (as PLDM, Sobal et al. 2025). Logged collapse statistic: :func:`effective_rank` of the
embedding batch (``erank_embed``) and of the GRU states (``erank_deter``). No decoder: ``decode`` raises.

The EMA target is updated at the start of every ``loss`` call made with gradients enabled in training
mode (so a plain training loop, or a Lightning module that only calls ``loss``, needs no hook); it
lags the optimiser by one step, which is immaterial at ``ema`` close to 1.

Sites (``b`` batch, ``t`` time): ``embed [E]`` (``observe`` only), ``deter [D]``, ``feat [D]`` (= deter).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from dynamics.base import ActionSpec, LatentState, LossOutput, ObsSpec
from dynamics.gru import BlankableGRU, RecurrentConfig, RecurrentLatentModel, observed_prefix
from dynamics.networks import ObsEncoder, flatten_bt, mlp


def effective_rank(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Effective rank of a batch ``x[n d]``: ``exp(H(s / sum s))`` of its singular values ``s``
    (Roy & Vetterli 2007; RankMe, Garrido et al. 2023). 1 for a collapsed batch, ``min(n, d)`` at most."""
    s = torch.linalg.svdvals(x.float())
    p = s / s.sum().clamp(min=eps)
    return torch.exp(-(p * torch.log(p.clamp(min=eps))).sum())


def vicreg_terms(z: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """VICReg (Bardes et al. 2022) regularisers of ``z[n d]``: the hinge ``mean(relu(1 - std_j))`` and the
    covariance penalty ``sum_{i != j} cov_ij^2 / d``."""
    n, d = z.shape
    z = z - z.mean(0)
    cov = (z.T @ z) / max(n - 1, 1)
    # The variances are cov's diagonal (unbiased for n >= 2, as VICReg's ``var(0)``); ``z.var(0)`` was NaN
    # for a batch of one row (one window of one step), which made the whole SPR loss NaN.
    std = torch.sqrt(cov.diagonal() + eps)
    var = F.relu(1 - std).mean()
    off = cov.square().sum() - cov.diagonal().square().sum()
    return var, off / d


@dataclass(frozen=True)
class SPRConfig(RecurrentConfig):
    """Hyperparameters of :class:`SPRModel`: the recurrent core's (:class:`~dynamics.gru.RecurrentConfig`) and its own."""

    embed: int = 128
    """Width of the observation embedding (the latent that is predicted)."""
    ema: float = 0.99
    """Decay of the target encoder's moving average (1 freezes it, 0 copies the online encoder)."""
    var_weight: float = 1.0
    """Weight of the VICReg variance hinge (0 disables the anti-collapse term together with ``cov_weight``)."""
    cov_weight: float = 0.04
    """Weight of the VICReg covariance penalty."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema <= 1.0:
            raise ValueError(f"ema must lie in [0, 1], got {self.ema!r}")


class SPRModel(RecurrentLatentModel):
    """Self-predictive latent model without reconstruction (see the module docstring)."""

    name: ClassVar[str] = "spr"

    def __init__(self, obs_spec: ObsSpec, action_spec: ActionSpec, config: SPRConfig = SPRConfig()):
        super().__init__()
        self.obs_spec, self.action_spec, self.config = obs_spec, action_spec, config
        c = config
        self.encoder = ObsEncoder(obs_spec, c.embed, c.hidden, c.encoder, c.conv_depth, c.symlog)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.core = BlankableGRU(c.embed, action_spec.input_dim, c.hidden, c.deter)
        self.predictor = mlp(c.deter, c.hidden, c.embed, layers=1)

    def predict_target(self, state: LatentState) -> Tensor:
        """The predictor's guess ``[*lead E]`` of the target-encoder latent of each state's observation."""
        return self.predictor(state["feat"])

    @torch.no_grad()
    def update_target(self) -> None:
        """``target <- ema * target + (1 - ema) * online`` for every encoder parameter and buffer."""
        for tgt, src in zip(self.target_encoder.state_dict().values(), self.encoder.state_dict().values()):
            tgt.lerp_(src, 1.0 - self.config.ema) if tgt.is_floating_point() else tgt.copy_(src)

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        c = self.config
        if self.training and torch.is_grad_enabled():
            self.update_target()
        mask = observed_prefix(is_first)
        state = self._filter(obs, actions, is_first, mask)
        with torch.no_grad():
            target = rearrange(self.target_encoder(flatten_bt(obs)), "(b t) e -> b t e", b=obs.shape[0])
        pred = self.predict_target(state)
        per_step = 2 - 2 * F.cosine_similarity(pred, target, dim=-1)  # [b t] = ||p/|p| - y/|y|||^2
        embed = flatten_bt(state["embed"])
        var, cov = vicreg_terms(embed)
        loss = per_step.mean() + c.var_weight * var + c.cov_weight * cov
        m = mask.float()
        metrics = {"loss": loss, "pred": per_step.mean(), "var": var, "cov": cov,
                   "pred_blank": (per_step * (1 - m)).sum() / (1 - m).sum().clamp(min=1),
                   "erank_embed": effective_rank(embed.detach()),
                   "erank_deter": effective_rank(flatten_bt(state["deter"]).detach())}
        return LossOutput(loss, {k: v.detach() for k, v in metrics.items()}, state.map(torch.Tensor.detach))


"""Building blocks shared by the dynamics models: observation encoders/decoders, action embedding,
reconstruction losses and a resettable GRU runner.

Observation kinds (see :class:`~dynamics.base.ObsSpec`):

* ``symbolic`` ``[c h w]`` one-hot uint8 -> float; decoded as per-cell logits over channels;
* ``image`` ``[3 h w]`` uint8 -> [0, 1]; decoded as pixel values (MSE);
* ``vector`` ``[d]`` float32 -> ``symlog`` (optional); decoded in symlog space (MSE).

Grids go through a small MLP by default when they have at most ``_MLP_MAX_INPUT`` inputs (an 8x5x5
egocentric view is 200 numbers: a conv stack buys nothing there and costs time on CPU), and through a
stride-2 conv stack otherwise (``encoder="conv"`` / ``"mlp"`` force either).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dynamics.base import ActionSpec, ObsSpec

_MLP_MAX_INPUT = 1024
"""Grids with at most this many input numbers use an MLP encoder/decoder under ``encoder="auto"``."""

ENCODER_KINDS = ("auto", "mlp", "conv")


def symlog(x: Tensor) -> Tensor:
    """``sign(x) log(1 + |x|)`` (DreamerV3): compresses large magnitudes, identity near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """Inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (Linear, LayerNorm, SiLU), then a Linear to ``out``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.SiLU()]
    mods.append(nn.Linear(hidden if layers else inp, out))
    return nn.Sequential(*mods)


def uses_conv(obs_spec: ObsSpec, encoder: str) -> bool:
    """Whether a ``[c h w]`` observation gets the conv encoder/decoder (never for vectors)."""
    if encoder not in ENCODER_KINDS:
        raise ValueError(f"encoder must be one of {ENCODER_KINDS}, got {encoder!r}")
    if obs_spec.kind == "vector":
        return False
    if encoder == "auto":
        return math.prod(obs_spec.shape) > _MLP_MAX_INPUT
    return encoder == "conv"


def _conv_layers(h: int, w: int) -> int:
    """Number of stride-2 halvings until the smaller side is at most 4 (at least 1)."""
    n = 1
    while min(h, w) // 2**n > 4:
        n += 1
    return n


def preprocess(obs: Tensor, obs_spec: ObsSpec, use_symlog: bool = True) -> Tensor:
    """Raw observations ``[... *obs]`` -> float network inputs of the same shape."""
    if obs_spec.kind == "image":
        return obs.float() / 255.0
    if obs_spec.kind == "vector":
        return symlog(obs.float()) if use_symlog else obs.float()
    return obs.float()


class ObsEncoder(nn.Module):
    """``obs[N *obs]`` (raw) -> ``embed[N embed]``."""

    def __init__(self, obs_spec: ObsSpec, embed: int, hidden: int, encoder: str = "auto",
                 depth: int = 32, use_symlog: bool = True):
        super().__init__()
        self.obs_spec, self.use_symlog = obs_spec, use_symlog
        if uses_conv(obs_spec, encoder):
            c, h, w = obs_spec.shape
            n = _conv_layers(h, w)
            mods: list[nn.Module] = []
            for i in range(n):
                mods += [nn.Conv2d(c if i == 0 else depth * 2 ** (i - 1), depth * 2**i, 4, 2, 1), nn.SiLU()]
            mods.append(nn.Flatten())
            flat = depth * 2 ** (n - 1) * (h // 2**n) * (w // 2**n)
            mods += [nn.Linear(flat, embed), nn.LayerNorm(embed), nn.SiLU()]
            self.net = nn.Sequential(*mods)
        else:
            self.net = nn.Sequential(nn.Flatten(), mlp(math.prod(obs_spec.shape), hidden, embed, layers=1),
                                     nn.LayerNorm(embed), nn.SiLU())

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(preprocess(obs, self.obs_spec, self.use_symlog))


class ObsDecoder(nn.Module):
    """``feat[N f]`` -> predicted observation ``[N *obs]`` (per-cell channel logits for symbolic obs)."""

    def __init__(self, obs_spec: ObsSpec, feat: int, hidden: int, encoder: str = "auto", depth: int = 32):
        super().__init__()
        self.obs_spec = obs_spec
        self.conv = uses_conv(obs_spec, encoder)
        if self.conv:
            c, h, w = obs_spec.shape
            n = _conv_layers(h, w)
            # Start from ceil(h / 2^n) so that n doublings cover the image; the excess is cropped.
            self.start = (depth * 2 ** (n - 1), -(-h // 2**n), -(-w // 2**n))
            mods: list[nn.Module] = [nn.Linear(feat, math.prod(self.start)), nn.SiLU(),
                                     nn.Unflatten(1, self.start)]
            for i in reversed(range(n)):
                out = c if i == 0 else depth * 2 ** (i - 1)
                mods.append(nn.ConvTranspose2d(depth * 2**i, out, 4, 2, 1))
                if i:
                    mods.append(nn.SiLU())
            self.net = nn.Sequential(*mods)
        else:
            self.net = nn.Sequential(mlp(feat, hidden, math.prod(obs_spec.shape), layers=2),
                                     nn.Unflatten(1, obs_spec.shape))

    def forward(self, feat: Tensor) -> Tensor:
        out = self.net(feat)
        if self.conv:
            out = out[..., : self.obs_spec.shape[1], : self.obs_spec.shape[2]]
        return out


def recon_loss(pred: Tensor, obs: Tensor, obs_spec: ObsSpec, use_symlog: bool = True) -> Tensor:
    """Per-observation reconstruction loss ``[N]``, summed over cells / pixels / dims.

    symbolic: cross-entropy of the channel logits ``pred[N c h w]`` against the one-hot ``obs``;
    image: squared error on [0, 1]; vector: squared error in symlog space (when ``use_symlog``).
    """
    if obs_spec.kind == "symbolic":
        target = obs.argmax(1)  # [N h w]
        return F.cross_entropy(pred, target, reduction="none").flatten(1).sum(1)
    target = preprocess(obs, obs_spec, use_symlog)
    return (pred - target).square().flatten(1).sum(1)


def postprocess(pred: Tensor, obs_spec: ObsSpec, use_symlog: bool = True) -> Tensor:
    """Decoder output -> observation space (logits stay logits; symlog is undone for vectors)."""
    if obs_spec.kind == "vector" and use_symlog:
        return symexp(pred)
    return pred


def embed_actions(actions: Tensor, action_spec: ActionSpec) -> Tensor:
    """``actions[... ]`` int64 (discrete) or ``[... a]`` float -> float ``[... action_spec.input_dim]``."""
    if action_spec.discrete:
        if actions.dtype.is_floating_point:
            raise TypeError(f"discrete actions must be integer indices, got dtype {actions.dtype}")
        return F.one_hot(actions.long(), action_spec.n).float()
    if actions.shape[-1] != action_spec.dim:
        raise ValueError(f"continuous actions must end in dim {action_spec.dim}, got shape {tuple(actions.shape)}")
    return actions.float()


def check_sequence(obs: Tensor, actions: Tensor, is_first: Tensor, obs_spec: ObsSpec, action_spec: ActionSpec) -> None:
    """Refuse sequences whose shapes disagree with the specs (one line naming what arrived)."""
    if is_first.dim() != 2:
        raise ValueError(f"is_first must have shape [b t], got {tuple(is_first.shape)}")
    b, t = is_first.shape
    if tuple(obs.shape) != (b, t, *obs_spec.shape):
        raise ValueError(f"obs must have shape {(b, t, *obs_spec.shape)}, got {tuple(obs.shape)}")
    want = (b, t) if action_spec.discrete else (b, t, action_spec.dim)
    if tuple(actions.shape) != want:
        raise ValueError(f"actions must have shape {want}, got {tuple(actions.shape)}")


def run_gru(gru: nn.GRU, x: Tensor, h0: Tensor, is_first: Tensor | None = None) -> Tensor:
    """Run a 1-layer batch-first ``gru`` over inputs ``x[b t i]`` from ``h0[b d]``, resetting the state to
    zero before every step where ``is_first[b t]`` is true. Returns ``h[b t d]``.

    The sequence is cut only at the time steps where some sequence resets, so the time loop stays in
    ``nn.GRU``'s C++ kernel (a Python loop per step costs more than the step's arithmetic on CPU).
    """
    if is_first is None:
        return gru(x, h0.unsqueeze(0))[0]
    keep = (~is_first.bool()).to(h0.dtype)
    cuts = [0] + [int(t) for t in torch.nonzero(is_first[:, 1:].any(0)).flatten() + 1] + [x.shape[1]]
    outs, h = [], h0
    for start, stop in zip(cuts[:-1], cuts[1:]):
        h = h * keep[:, start, None]
        out = gru(x[:, start:stop], h.unsqueeze(0))[0]
        outs.append(out)
        h = out[:, -1]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def flatten_bt(x: Tensor) -> Tensor:
    """``[b t ...] -> [(b t) ...]``."""
    return rearrange(x, "b t ... -> (b t) ...")


def plain_specs(obs_spec: ObsSpec, action_spec: ActionSpec) -> dict:
    """The two specs as plain JSON types, as stored in ``hparams`` (read back by :func:`dynamics.registry.build_model`)."""
    return {
        "obs_spec": {"shape": list(obs_spec.shape), "kind": obs_spec.kind},
        "action_spec": {"discrete": action_spec.discrete, "n": action_spec.n, "dim": action_spec.dim},
    }


def decode_with(decoder: nn.Module, feat: Tensor, obs_spec: ObsSpec, use_symlog: bool) -> Tensor:
    """Apply a ``[N f] -> [N *obs]`` decoder to ``feat[*lead f]``: returns ``[*lead *obs]``."""
    lead = feat.shape[:-1]
    out = decoder(feat.reshape(-1, feat.shape[-1]))
    return postprocess(out, obs_spec, use_symlog).reshape(*lead, *obs_spec.shape)

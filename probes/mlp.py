"""A small MLP probe (1-2 hidden ReLU layers), trained with Adam and early stopping on validation.

Without ``x_val``/``y_val`` the fitter holds out ``val_fraction`` of the training rows (seeded) for
early stopping. Scalar targets are standardised with training statistics and un-standardised at
prediction. ``MLPProbe.direction()`` is the input gradient ``d score / d x`` at the training mean (the
latent the normaliser maps to zero): a local, not a global, readout direction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from probes.base import Probe, ProbeError, ProbeFitter
from probes.normalize import Normalizer
from worlds.concepts import Concept


@dataclass(frozen=True, eq=False)
class MLPProbe(Probe):
    """``weights[i] [out in]``, ``biases[i] [out]``; ReLU between layers; ``y_mean``/``y_std`` ``[1]`` (scalar)."""

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    y_mean: Tensor
    y_std: Tensor
    method = "mlp"

    def _score(self, z: Tensor) -> Tensor:
        return self._rest(z @ self.weights[0].T + self.biases[0])

    @functools.cached_property
    def _folded(self) -> tuple[Tensor, Tensor, Tensor | None]:
        return self._fold(self.weights[0], self.biases[0])

    def _score_raw(self, x: Tensor) -> Tensor:
        return self._rest(self._folded_affine(x, *self._folded))

    def _rest(self, h: Tensor) -> Tensor:
        """The layers after the first, from the first layer's pre-activation ``h [n hidden]``."""
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = torch.relu(h) @ w.T + b
        if self.concept.kind == "categorical":
            return h
        return h[:, 0] * self.y_std + self.y_mean

    def direction(self) -> Tensor:
        """Input gradient of the score at the training mean: ``[d]`` (``[k d]`` if categorical)."""
        z0 = torch.zeros(1, self.norm.dim, dtype=self.norm.mean.dtype, device=self.norm.mean.device)
        jac = torch.func.jacrev(lambda z: self._score(z)[0])(z0)  # [d] or [k d], w.r.t. normalised input
        return jac.reshape(-1, self.norm.dim).squeeze(0) / self.norm.std


def _net(sizes: list[int], gen: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():  # seeded init (nn.Linear's default draws from the global RNG)
            bound = sizes[i] ** -0.5
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class MLPFitter(ProbeFitter):
    """Fits an :class:`MLPProbe`; ``hidden`` has 1 or 2 widths; deterministic given ``seed`` on CPU."""

    method = "mlp"

    def __init__(self, concept: Concept, *, hidden: tuple[int, ...] = (64,), lr: float = 3e-3,
                 weight_decay: float = 1e-4, batch_size: int = 256, max_epochs: int = 200, patience: int = 10,
                 val_fraction: float = 0.2, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__(concept, device=device, dtype=dtype)
        hidden = tuple(int(h) for h in hidden)
        if not 1 <= len(hidden) <= 2 or min(hidden) < 1:
            raise ProbeError(f"hidden must be 1 or 2 positive widths, got {hidden}")
        if not 0 < val_fraction < 1:
            raise ProbeError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.hidden, self.lr, self.weight_decay = hidden, float(lr), float(weight_decay)
        self.batch_size, self.max_epochs, self.patience = int(batch_size), int(max_epochs), int(patience)
        self.val_fraction, self.seed = float(val_fraction), int(seed)

    def hparams(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "max_epochs": self.max_epochs, "patience": self.patience,
                "val_fraction": self.val_fraction, "seed": self.seed}

    def fit(self, x: Tensor, y: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None) -> MLPProbe:
        """Train on ``x [n d]``, ``y [n]``; stop when the validation loss has not improved for ``patience`` epochs."""
        x, y = self._check(x, y)
        gen = torch.Generator().manual_seed(self.seed)
        if (x_val is None) != (y_val is None):
            raise ProbeError("pass both x_val and y_val, or neither (then val_fraction of the training rows is held out)")
        if x_val is None:
            perm = torch.randperm(x.shape[0], generator=gen).to(self.device)
            nv = max(1, int(round(self.val_fraction * x.shape[0])))
            x, y, x_val, y_val = x[perm[nv:]], y[perm[nv:]], x[perm[:nv]], y[perm[:nv]]
            x, y = self._check(x, y)  # the remaining training rows must still hold >= 2 classes
        else:
            x_val, y_val = self._check(x_val, y_val, "validation")
            if x_val.shape[1] != x.shape[1]:
                raise ProbeError(f"validation latents must have {x.shape[1]} dims like the training ones, got {x_val.shape[1]}")
        norm = Normalizer.fit(x)  # training statistics only
        z, zv = norm.apply(x), norm.apply(x_val)
        kind = self.concept.kind
        if kind == "scalar":
            y_mean, y_std = y.mean().reshape(1), y.std(unbiased=False).clamp_min(1e-12).reshape(1)
            t, tv = (y - y_mean) / y_std, (y_val - y_mean) / y_std
            loss_fn: Any = nn.functional.mse_loss
        elif kind == "binary":
            y_mean, y_std = torch.zeros(1, dtype=self.dtype), torch.ones(1, dtype=self.dtype)
            t, tv = y.to(self.dtype), y_val.to(self.dtype)
            loss_fn = nn.functional.binary_cross_entropy_with_logits
        else:
            y_mean, y_std = torch.zeros(1, dtype=self.dtype), torch.ones(1, dtype=self.dtype)
            t, tv, loss_fn = y, y_val, nn.functional.cross_entropy
        out = self.concept.num_classes if kind == "categorical" else 1
        net = _net([x.shape[1], *self.hidden, out], gen).to(self.device, self.dtype)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        def forward(inp: Tensor) -> Tensor:
            o = net(inp)
            return o if kind == "categorical" else o[:, 0]

        best, best_state, bad = float("inf"), [p.detach().clone() for p in net.parameters()], 0
        n = z.shape[0]
        for _epoch in range(self.max_epochs):
            net.train()
            for idx in torch.randperm(n, generator=gen).to(self.device).split(self.batch_size):
                opt.zero_grad()
                loss_fn(forward(z[idx]), t[idx]).backward()
                opt.step()
            net.train(False)  # eval mode
            with torch.no_grad():
                vloss = float(loss_fn(forward(zv), tv))
            if vloss < best - 1e-6:
                best, best_state, bad = vloss, [p.detach().clone() for p in net.parameters()], 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        ws, bs = tuple(best_state[0::2]), tuple(best_state[1::2])
        return MLPProbe(self.concept, norm, self.hparams(), ws, bs,
                        y_mean.to(self.device, self.dtype), y_std.to(self.device, self.dtype))

"""Unsupervised probes: a sparse autoencoder on the latents, then one matched feature per concept.

:class:`SAEFitter` trains a ReLU sparse autoencoder on standardised latents WITHOUT labels (L1
penalty on the codes, or top-k codes; tied or untied decoder with unit-norm columns) and returns a
frozen :class:`SparseAutoencoder`. :class:`SAEProbeFitter` then picks, for each concept, the feature
whose activation correlates best (in absolute value) with the labels of a SMALL labelled set -- the
training split or a seeded subset of ``n_label`` of its rows -- and fits a 1-D readout on it
(logistic for binary, one-vs-rest logistic per class for categorical, least squares for scalar).
The readout's sign is the sign assignment.

The feature and its sign are chosen on labelled TRAINING rows only. Never resolve them on the
evaluation split: scoring with ``max(acc, 1 - acc)`` on test labels (as CCS does) picks the sign
with the answers and inflates chance-level probes above 0.5.

The probe stores the encoder row(s) it reads, with the decoder's centring folded into the bias. For
a top-k SAE it reads the row's ReLU pre-activation without the top-k competition (so the probe is a
function of its own row only). ``SAEProbe.direction()`` is the matched feature's decoder column in
raw latent space (``std * w_dec``), unit norm, signed so that it points towards class 1 / larger values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from probes.base import Probe, ProbeError, ProbeFitter, as_labels, as_latents
from probes.linear import fit_linear_batch
from probes.normalize import Normalizer
from worlds.concepts import Concept


@dataclass(frozen=True, eq=False)
class SparseAutoencoder:
    """``codes = relu((normalise(x) - b_dec) @ w_enc.T + b_enc)`` (top-k if ``top_k``); ``w_dec [d m]``."""

    norm: Normalizer
    w_enc: Tensor
    b_enc: Tensor
    w_dec: Tensor
    b_dec: Tensor
    top_k: int | None = None

    @property
    def num_features(self) -> int:
        return self.w_enc.shape[0]

    def preact(self, x: Tensor) -> Tensor:
        """``[n d] -> [n m]`` encoder pre-activations of raw latents."""
        return (self.norm.apply(x) - self.b_dec) @ self.w_enc.T + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """``[n d] -> [n m]`` sparse codes of raw latents."""
        return _codes(self.preact(x), self.top_k)

    def decode(self, f: Tensor) -> Tensor:
        """``[n m] -> [n d]`` reconstruction in standardised latent space."""
        return f @ self.w_dec.T + self.b_dec


def _codes(pre: Tensor, top_k: int | None) -> Tensor:
    f = torch.relu(pre)
    if top_k is None:
        return f
    vals, idx = f.topk(top_k, dim=-1)
    return torch.zeros_like(f).scatter(-1, idx, vals)


class SAEFitter:
    """Trains a :class:`SparseAutoencoder` on ``x [n d]`` with Adam; deterministic given ``seed`` on CPU."""

    def __init__(self, n_features: int = 64, *, l1: float = 1e-2, top_k: int | None = None, tied: bool = False,
                 lr: float = 3e-3, epochs: int = 30, batch_size: int = 256, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if n_features < 1 or (top_k is not None and not 1 <= top_k <= n_features):
            raise ProbeError(f"need n_features >= 1 and 1 <= top_k <= n_features, got {n_features} and {top_k}")
        self.n_features, self.l1, self.top_k, self.tied = int(n_features), float(l1), top_k, bool(tied)
        self.lr, self.epochs, self.batch_size, self.seed = float(lr), int(epochs), int(batch_size), int(seed)
        self.device, self.dtype = torch.device(device), dtype

    def hparams(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "l1": self.l1, "top_k": self.top_k, "tied": self.tied,
                "lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed}

    def fit(self, x: Tensor) -> SparseAutoencoder:
        """Unsupervised: only latents ``x [n d]`` go in."""
        x = as_latents(x, "SAE training latents").to(self.device, self.dtype)
        norm = Normalizer.fit(x)
        z = norm.apply(x)
        d, m = z.shape[1], self.n_features
        gen = torch.Generator().manual_seed(self.seed)
        dec = torch.randn(d, m, generator=gen, dtype=self.dtype).to(self.device)
        dec = dec / dec.norm(dim=0, keepdim=True)
        w_dec = dec.clone().requires_grad_(True)
        w_enc = dec.T.clone().requires_grad_(not self.tied)
        b_enc = torch.zeros(m, dtype=self.dtype, device=self.device, requires_grad=True)
        b_dec = torch.zeros(d, dtype=self.dtype, device=self.device, requires_grad=True)
        params = [w_dec, b_enc, b_dec] + ([] if self.tied else [w_enc])
        opt = torch.optim.Adam(params, lr=self.lr)
        for _epoch in range(self.epochs):
            for idx in torch.randperm(z.shape[0], generator=gen).to(self.device).split(self.batch_size):
                zb = z[idx]
                enc = w_dec.T if self.tied else w_enc
                f = _codes((zb - b_dec) @ enc.T + b_enc, self.top_k)
                rec = f @ w_dec.T + b_dec
                loss = ((rec - zb) ** 2).sum(1).mean() + (self.l1 * f.sum(1).mean() if self.top_k is None else 0.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():  # unit-norm decoder columns, so the L1 penalty cannot be shrunk away
                    w_dec /= w_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)
        enc = (w_dec.T if self.tied else w_enc).detach().clone()
        return SparseAutoencoder(norm, enc, b_enc.detach().clone(), w_dec.detach().clone(), b_dec.detach().clone(),
                                 self.top_k)


@dataclass(frozen=True, eq=False)
class SAEProbe(Probe):
    """``score = a * relu(normalise(x) @ enc.T + enc_bias) + c``; one SAE feature per output ``[k]``."""

    enc: Tensor
    enc_bias: Tensor
    decoder: Tensor
    features: Tensor
    a: Tensor
    c: Tensor
    method = "sae"

    def _score(self, z: Tensor) -> Tensor:
        s = torch.relu(z @ self.enc.T + self.enc_bias) * self.a + self.c
        return s if self.concept.kind == "categorical" else s[:, 0]

    @functools.cached_property
    def _folded(self) -> tuple[Tensor, Tensor, Tensor | None]:
        return self._fold(self.enc, self.enc_bias)

    def _score_raw(self, x: Tensor) -> Tensor:
        s = torch.relu(self._folded_affine(x, *self._folded)) * self.a + self.c
        return s if self.concept.kind == "categorical" else s[:, 0]

    def direction(self) -> Tensor:
        """The matched decoder column(s) in raw latent space, unit norm, signed by the readout: ``[d]`` / ``[k d]``."""
        v = self.decoder * self.norm.std
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12) * torch.sign(self.a)[:, None]
        return v if self.concept.kind == "categorical" else v[0]


def _abs_corr(f: Tensor, t: Tensor) -> Tensor:
    """``|corr(f[:, j], t)|`` for every feature, ``[m]``; 0 for features that never vary."""
    fc, tc = f - f.mean(0), t - t.mean()
    den = fc.norm(dim=0) * tc.norm()
    return torch.where(den > 0, (fc.T @ tc).abs() / den.clamp_min(1e-30), torch.zeros_like(den))


class SAEProbeFitter(ProbeFitter):
    """Matches a concept to one feature of an SAE (given, or trained here on ``x`` without labels)."""

    method = "sae"

    def __init__(self, concept: Concept, *, sae: SparseAutoencoder | None = None, n_label: int | None = None,
                 readout_l2: float = 1e-3, n_features: int = 64, l1: float = 1e-2, top_k: int | None = None,
                 tied: bool = False, lr: float = 3e-3, epochs: int = 30, batch_size: int = 256, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(concept, device=device, dtype=dtype)
        if n_label is not None and n_label < 2:
            raise ProbeError(f"n_label must be >= 2 labelled rows or None (all training rows), got {n_label}")
        self.sae, self.n_label, self.readout_l2, self.seed = sae, n_label, float(readout_l2), int(seed)
        self.sae_fitter = SAEFitter(n_features, l1=l1, top_k=top_k, tied=tied, lr=lr, epochs=epochs,
                                    batch_size=batch_size, seed=seed, device=device, dtype=dtype)

    def hparams(self) -> dict[str, Any]:
        sae = self.sae_fitter.hparams() if self.sae is None else {"sae": "given", "n_features": self.sae.num_features}
        return {**sae, "n_label": self.n_label, "readout_l2": self.readout_l2, "seed": self.seed}

    def fit(self, x: Tensor, y: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None) -> SAEProbe:
        """SAE on ``x [n d]`` (no labels), then feature + sign from ``y`` on (a subset of) the same rows."""
        x, y = self._check(x, y)
        sae = self.sae if self.sae is not None else self.sae_fitter.fit(x)
        if sae.norm.dim != x.shape[1]:
            raise ProbeError(f"the SAE was trained on {sae.norm.dim}-dim latents, got {x.shape[1]}-dim ones")
        sae = SparseAutoencoder(sae.norm.to(self.device, self.dtype), *(t.to(self.device, self.dtype) for t in
                                (sae.w_enc, sae.b_enc, sae.w_dec, sae.b_dec)), sae.top_k)
        if self.n_label is not None and self.n_label < x.shape[0]:
            gen = torch.Generator().manual_seed(self.seed)
            rows = torch.randperm(x.shape[0], generator=gen)[: self.n_label].to(self.device)
            x, y = x[rows], as_labels(self.concept, y[rows].cpu(), self.n_label, "labelled subset").to(self.device)
        f = torch.relu(sae.preact(x))  # what the probe will compute, not the top-k codes
        kind = self.concept.kind
        if kind == "categorical":
            targets = [(y == cls).to(self.dtype) for cls in range(self.concept.num_classes)]
        else:
            targets = [y.to(self.dtype)]
        feats, a_s, c_s = [], [], []
        for t in targets:
            j = int(_abs_corr(f, t).argmax())
            col = f[:, j:j + 1]
            mu, sd = col.mean(), col.std(unbiased=False).clamp_min(1e-12)
            one = (Concept("readout", "scalar", "1-D readout", low=0.0, high=0.0) if kind == "scalar"
                   else Concept("readout", "binary", "1-D readout"))  # labels were validated above
            yt = t if kind == "scalar" else t.to(torch.int64)
            if kind != "scalar" and int(yt.unique().numel()) < 2:  # class absent from the labelled set
                feats.append(j); a_s.append(torch.zeros((), dtype=self.dtype)); c_s.append(torch.tensor(-30.0))
                continue
            lam = torch.tensor([self.readout_l2], dtype=self.dtype, device=self.device)
            (w, b), = fit_linear_batch((col - mu) / sd, [one], [yt], lam)[0]
            feats.append(j)
            a_s.append(w[0, 0] / sd)
            c_s.append(b[0] - w[0, 0] * mu / sd)
        fi = torch.tensor(feats, dtype=torch.int64, device=self.device)
        enc = sae.w_enc[fi]
        enc_bias = sae.b_enc[fi] - enc @ sae.b_dec
        a = torch.stack([v.to(self.device, self.dtype) for v in a_s])
        c = torch.stack([v.to(self.device, self.dtype) for v in c_s])
        return SAEProbe(self.concept, sae.norm, self.hparams(), enc, enc_bias, sae.w_dec[:, fi].T.contiguous(), fi, a, c)

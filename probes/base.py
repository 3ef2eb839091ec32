"""A probe fitter and the frozen probe it produces (the ``LeaceFitter -> LeaceEraser`` split).

A :class:`ProbeFitter` takes a :class:`~worlds.concepts.Concept`, hyperparameters, a device and a
dtype; ``fit(x [n d], y [n], x_val=None, y_val=None)`` returns a :class:`Probe`. Every fitter also
streams: ``update(x, y) -> self`` over batches, then ``finish() -> Probe`` (the base class buffers
the batches; fitters with sufficient statistics, like ridge, override it).

A :class:`Probe` is a frozen dataclass of tensors plus plain metadata. Conventions:

* ``score(x [n d])``: binary ``[n]`` logit of class 1; categorical ``[n k]`` logits; scalar ``[n]`` values.
* ``predict(x) -> [n]``: class index (int64) or scalar value; ``predict_proba(x) -> [n k]`` (binary k=2).
* ``direction()``: the *readout* direction in raw latent space, i.e. ``d score / d x`` -- ``[d]`` for
  binary/scalar, ``[k d]`` for categorical (see each method for its meaning).
* ``save(path)`` writes one safetensors file; plain metadata (method, concept, hparams, non-tensor
  fields) is JSON in its header. ``Probe.load(path)`` dispatches on the method; no pickle anywhere.

Inputs are validated up front; a bad input raises :class:`ProbeError` with one line that says what
was expected and what arrived.
"""

from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from probes.normalize import Normalizer
from worlds.atomic import atomic_write_bytes
from worlds.concepts import Concept
from worlds.errors import OntolabError

FORMAT_VERSION = 1
_HEADER_KEY = "ontolab_probe"
_PROBE_TYPES: dict[str, type["Probe"]] = {}


class ProbeError(OntolabError):
    """Bad input to a probe: wrong shapes, non-finite latents, labels the concept does not allow."""


# ----------------------------------------------------------------------------------------- validation
def varies(concept: Concept, y: Any) -> bool:
    """Whether labels ``y [n]`` can train or score a probe: two or more classes, or a non-constant scalar."""
    y = np.asarray(y)
    return bool(np.std(y) > 0) if concept.kind == "scalar" else np.unique(y).size >= 2


def as_latents(x: Any, what: str = "latents", dim: int | None = None) -> Tensor:
    """Check ``x`` is a finite ``[n d]`` float array/tensor and return it as a tensor."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ProbeError(f"{what} must have shape (n, d), got {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ProbeError(f"{what} must have {dim} dims (the probe's training width), got {t.shape[1]}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(1).sum())
        raise ProbeError(f"{what} must be finite, got NaN/inf in {bad} of {t.shape[0]} rows; drop or fix those rows")
    return t


def _shaped(x: Any, dim: int) -> Tensor:
    """``x`` as a float ``[n dim]`` tensor (shape and dtype checks of :func:`as_latents`, no finiteness scan)."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ProbeError(f"latents must have shape (n, d), got {tuple(t.shape)}")
    if t.shape[1] != dim:
        raise ProbeError(f"latents must have {dim} dims (the probe's training width), got {t.shape[1]}")
    return t if t.is_floating_point() else t.to(torch.float32)


def as_labels(concept: Concept, y: Any, n: int, what: str = "labels", *, fitting: bool = True) -> Tensor:
    """Check ``y [n]`` against ``concept``; int64 class indices or float64 scalar values.

    With ``fitting=True`` a label vector with one class (or a constant scalar) is refused: no probe
    can be fitted to it.
    """
    t = y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim != 1:
        raise ProbeError(f"{what} for concept {concept.name!r} must have shape (n,), got {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ProbeError(f"{what} and latents must have the same length, got {t.shape[0]} labels for {n} latents")
    tf = t.to(torch.float64)
    if not bool(torch.isfinite(tf).all()):
        raise ProbeError(f"{what} for concept {concept.name!r} must be finite, got NaN/inf")
    if concept.kind == "scalar":
        if n and (tf.min() < concept.low or tf.max() > concept.high):
            raise ProbeError(f"{what} for scalar concept {concept.name!r} must lie in [{concept.low}, {concept.high}], "
                             f"got [{tf.min().item():.4g}, {tf.max().item():.4g}]")
        if fitting and n and float(tf.std(unbiased=False)) == 0.0:
            raise ProbeError(f"{what} for scalar concept {concept.name!r} are constant ({tf[0].item():.4g}); "
                             "a probe needs varying values")
        return tf
    k = concept.num_classes
    if n and (not bool((tf == tf.round()).all()) or tf.min() < 0 or tf.max() >= k):
        got = torch.unique(tf)[:8].tolist()
        raise ProbeError(f"{what} for {concept.kind} concept {concept.name!r} must be integers in [0, {k}), got values {got}")
    ti = tf.to(torch.int64)
    if fitting and int(torch.unique(ti).numel()) < 2:
        raise ProbeError(f"{what} for concept {concept.name!r} contain one class only ({int(ti[0]) if n else 'none'}); "
                         "a probe needs >= 2 classes in the training split")
    return ti


# --------------------------------------------------------------------------------------------- probe
@dataclass(frozen=True, eq=False)
class Probe(ABC):
    """A fitted, frozen map from latents ``[n d]`` to one concept's values ``[n]``."""

    concept: Concept
    norm: Normalizer
    hparams: dict[str, Any]

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.method:
            _PROBE_TYPES[cls.method] = cls

    # -- the map ------------------------------------------------------------------------------------
    @abstractmethod
    def _score(self, z: Tensor) -> Tensor:
        """Raw output on *normalised* latents ``z [n d]``."""

    def _score_raw(self, x: Tensor) -> Tensor:
        """Raw output on *raw* latents ``x [n d]`` (finiteness not yet checked). Probes whose first operation is
        affine override this with :meth:`_folded_affine` (the normalisation folded into that map)."""
        return self._score(self.norm.apply(as_latents(x, "latents", self.norm.dim)))

    def _folded_affine(self, x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None) -> Tensor:
        """``(x - shift) @ weight.T + bias`` for a map folded with the normalisation (:meth:`Normalizer.fold`;
        ``[n k]``), refusing non-finite latents: NaN/inf in a row reaches its outputs here (before any ReLU could
        hide an inf), so only a non-finite output scans ``x`` to name the rows -- scanning every ``[n d]`` input
        cost the planner more than the probe itself."""
        xs = x.to(weight.dtype) if shift is None else x.to(weight.dtype) - shift
        h = torch.addmm(bias, xs, weight.T)
        if not bool(torch.isfinite(h).all()):
            as_latents(x, "latents", self.norm.dim)  # raises, naming the NaN/inf rows, when the input is at fault
        return h

    def _fold(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`Normalizer.fold` of this probe's first affine map, as plain tensors even when first called
        under ``torch.inference_mode`` (cached by the subclasses; gradients through ``score`` must still work)."""
        with torch.inference_mode(False), torch.no_grad():
            return self.norm.fold(weight, bias)

    def score(self, x: Tensor) -> Tensor:
        """Binary ``[n]`` logit; categorical ``[n k]`` logits; scalar ``[n]`` values (non-finite latents refused)."""
        return self._score_raw(_shaped(x, self.norm.dim).to(self.norm.mean.device))

    def predict(self, x: Tensor) -> Tensor:
        """``[n]``: int64 class index (binary/categorical) or scalar value."""
        s = self.score(x)
        if self.concept.kind == "binary":
            return (s > 0).to(torch.int64)
        if self.concept.kind == "categorical":
            return s.argmax(-1)
        return s

    def predict_proba(self, x: Tensor) -> Tensor:
        """``[n k]`` class probabilities (binary: ``k = 2``, columns ``P(0), P(1)``)."""
        if self.concept.kind == "scalar":
            raise ProbeError(f"predict_proba needs a binary or categorical concept; {self.concept.name!r} is scalar, use predict")
        s = self.score(x)
        if self.concept.kind == "binary":
            p = torch.sigmoid(s)
            return torch.stack([1 - p, p], -1)
        return torch.softmax(s, -1)

    def direction(self) -> Tensor:
        """Readout direction in raw latent space (``[d]`` or ``[k d]``); see the method's docs."""
        raise ProbeError(f"probe method {self.method!r} has no direction")

    # -- move, save, load ---------------------------------------------------------------------------
    def _tensor_fields(self) -> dict[str, Tensor | tuple[Tensor, ...]]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) or (isinstance(v, tuple) and v and all(isinstance(t, Tensor) for t in v)):
                out[f.name] = v
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Probe":
        """A copy on ``device``; floating tensors cast to ``dtype`` (integer tensors keep theirs)."""
        def mv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
        changes: dict[str, Any] = {"norm": self.norm.to(device, dtype)}
        for k, v in self._tensor_fields().items():
            changes[k] = tuple(mv(t) for t in v) if isinstance(v, tuple) else mv(v)
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file atomically (temp file in the same folder, fsync, rename)."""
        path = Path(path)
        tensors = {"norm.mean": self.norm.mean, "norm.std": self.norm.std}
        tuples, plain = {}, {}
        tf = self._tensor_fields()
        for k, v in tf.items():
            if isinstance(v, tuple):
                tuples[k] = len(v)
                tensors.update({f"{k}.{i}": t for i, t in enumerate(v)})
            else:
                tensors[k] = v
        for f in dataclasses.fields(self):
            if f.name not in tf and f.name not in ("concept", "norm", "hparams"):
                plain[f.name] = getattr(self, f.name)
        header = {"format": FORMAT_VERSION, "method": self.method, "concept": self.concept.to_dict(),
                  "hparams": self.hparams, "tuples": tuples, "fields": plain}
        blob = safetensors.torch.save({k: t.detach().cpu().contiguous() for k, t in tensors.items()},
                                      metadata={_HEADER_KEY: json.dumps(header)})
        atomic_write_bytes(path, blob)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "Probe":
        """Load a probe saved by :meth:`save`; ``LinearProbe.load`` refuses a file of another method."""
        path = Path(path)
        if not path.is_file():
            raise ProbeError(f"no probe file at {path}")
        try:
            with safetensors.safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            header = json.loads(meta[_HEADER_KEY])
            method = header["method"]
        except (safetensors.SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
            raise ProbeError(f"{path} is not an ontolab probe file ({type(e).__name__}: {str(e)[:80]})") from None
        if header.get("format") != FORMAT_VERSION:
            raise ProbeError(f"{path}: probe file format {header.get('format')!r}, this ontolab reads {FORMAT_VERSION}")
        if method not in _PROBE_TYPES:
            raise ProbeError(f"{path}: unknown probe method {method!r}; known: {', '.join(sorted(_PROBE_TYPES))}")
        sub = _PROBE_TYPES[method]
        if cls is not Probe and not issubclass(sub, cls):
            raise ProbeError(f"{path} holds a {method!r} probe, not a {cls.method!r} probe; load it with Probe.load")
        try:
            kw: dict[str, Any] = dict(header["fields"])
            for k, cnt in header["tuples"].items():
                kw[k] = tuple(tensors.pop(f"{k}.{i}") for i in range(cnt))
            norm = Normalizer(tensors.pop("norm.mean"), tensors.pop("norm.std"))
            kw.update(tensors)
            return sub(concept=Concept.from_dict(header["concept"]), norm=norm, hparams=header["hparams"], **kw)
        except (KeyError, TypeError, ValueError) as e:
            raise ProbeError(f"{path}: corrupt {method!r} probe file ({type(e).__name__}: {str(e)[:80]})") from None


# -------------------------------------------------------------------------------------------- fitter
class ProbeFitter(ABC):
    """Fits one :class:`Probe` for one concept. Subclasses take their hyperparameters as keywords."""

    method: ClassVar[str] = ""

    def __init__(self, concept: Concept, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if not isinstance(concept, Concept):
            raise ProbeError(f"concept must be a worlds.concepts.Concept, got {type(concept).__name__}")
        self.concept, self.device, self.dtype = concept, torch.device(device), dtype
        self._xs: list[Tensor] = []
        self._ys: list[Tensor] = []

    def hparams(self) -> dict[str, Any]:
        """The plain (JSON-able) hyperparameters, stored in the probe."""
        return {}

    @abstractmethod
    def fit(self, x: Tensor, y: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None) -> Probe:
        """Fit on ``x [n d]``, ``y [n]``; ``x_val``/``y_val`` only where the method uses them (early stopping)."""

    def update(self, x: Tensor, y: Tensor) -> "ProbeFitter":
        """Add a batch ``x [b d]``, ``y [b]``; validated now, fitted at :meth:`finish`."""
        x = as_latents(x, "latents", self._xs[0].shape[1] if self._xs else None)
        self._xs.append(x.to(self.device))
        self._ys.append(as_labels(self.concept, y, x.shape[0], fitting=False).to(self.device))
        return self

    def finish(self) -> Probe:
        if not self._xs:
            raise ProbeError(f"{type(self).__name__}.finish() called before any update(x, y)")
        return self.fit(torch.cat(self._xs), torch.cat(self._ys))

    def _check(self, x: Any, y: Any, what: str = "training") -> tuple[Tensor, Tensor]:
        """Validated ``(x [n d] on device/dtype, y [n])``."""
        xt = as_latents(x, f"{what} latents")
        yt = as_labels(self.concept, y, xt.shape[0], f"{what} labels", fitting=(what == "training"))
        yt = yt.to(self.device) if yt.dtype == torch.int64 else yt.to(self.device, self.dtype)
        return xt.to(self.device, self.dtype), yt

"""Pictures of true vs imagined observation sequences (logged to wandb during validation).

:func:`render_rollout` draws two rows -- the true observations and the model's open-loop
predictions -- for ``h`` steps and returns an RGB ``uint8[H W 3]`` array. Symbolic observations are
drawn as their argmax channel through a fixed palette (``tab20``), images as themselves, vectors as
a ``[d h]`` heatmap per row. It uses matplotlib's object API with the Agg canvas (no pyplot, no
global figure state, no display needed).
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PALETTE = (np.asarray(colormaps["tab20"].colors) * 255).astype(np.uint8)
"""``[20 3]`` RGB colours of channel indices 0..19 (index ``i`` uses ``PALETTE[i % 20]``)."""


def symbolic_to_rgb(obs: np.ndarray) -> np.ndarray:
    """``[c h w]`` one-hot channels or logits -> ``uint8[h w 3]`` (argmax channel through :data:`PALETTE`)."""
    return PALETTE[np.argmax(obs, axis=0) % len(PALETTE)]


def _frames(seq: np.ndarray, kind: str) -> list[np.ndarray]:
    if kind == "symbolic":
        return [symbolic_to_rgb(o) for o in seq]
    scale = 255.0 if seq.dtype == np.uint8 else 1.0
    return [np.clip(np.transpose(o, (1, 2, 0)) / scale, 0.0, 1.0) for o in seq]


def render_rollout(true: np.ndarray, pred: np.ndarray, kind: str, title: str = "") -> np.ndarray:
    """``true[h *obs]`` vs ``pred[h *obs]`` (decoder output: logits / [0, 1] pixels / vectors) -> ``uint8[H W 3]``."""
    if true.shape[0] != pred.shape[0]:
        raise ValueError(f"true and pred must have the same number of steps, got {true.shape[0]} and {pred.shape[0]}")
    h = true.shape[0]
    if kind == "vector":
        fig = Figure(figsize=(max(3.0, 0.4 * h), 3.0), dpi=80)
        lo, hi = float(np.min(true)), float(np.max(true))
        for row, (seq, label) in enumerate(((true, "true"), (pred, "imagined"))):
            ax = fig.add_subplot(2, 1, row + 1)
            ax.imshow(np.asarray(seq, np.float32).T, aspect="auto", vmin=lo, vmax=hi if hi > lo else lo + 1, cmap="viridis")
            ax.set_ylabel(label)
            ax.set_yticks([])
    else:
        fig = Figure(figsize=(1.0 * h + 0.6, 2.3), dpi=80)
        for row, (seq, label) in enumerate(((true, "true"), (pred, "imagined"))):
            for j, frame in enumerate(_frames(np.asarray(seq), kind)):
                ax = fig.add_subplot(2, h, row * h + j + 1)
                ax.imshow(frame, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label)
                if row == 0:
                    ax.set_title(f"+{j + 1}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

"""Training and imagination throughput of the dynamics models, against the machine's dense matmul rate.

``run(quick)`` measures, on the CPU with whatever threads the harness pinned:

* ``peer``: float32 ``torch.mm`` FLOP/s on large square matrices (the machine's practical peak);
* per model, training transitions/s at the default config (batch ``B`` x window ``T`` of lavakeydoor-
  shaped symbolic data: loss, backward, Adam step) and imagine latent steps/s (batch 1024, horizon 15,
  ``torch.inference_mode``);
* ``ours``: achieved FLOP/s of the default RSSM training step (FLOPs counted once with
  ``torch.utils.flop_counter.FlopCounterMode``, forward + backward, divided by the measured step time).

The data are random (throughput does not depend on them). Run: ``python benchmarks/train_throughput.py``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dynamics.base import ActionSpec, ObsSpec
from dynamics.registry import build_model, model_names

OBS = ObsSpec((8, 5, 5), "symbolic")
ACT = ActionSpec(True, n=5)
BATCH, WINDOW = 16, 32
IMAGINE_BATCH, HORIZON = 1024, 15


def _batch(b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = OBS.shape
    obs = F.one_hot(torch.randint(0, c, (b, t, h, w), generator=g), c).permute(0, 1, 4, 2, 3).to(torch.uint8)
    actions = torch.randint(0, ACT.n, (b, t), generator=g)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return obs, actions, first


def _timed(fn, warmup: int, reps: int) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_flops(n: int, reps: int) -> float:
    """Dense float32 matmul FLOP/s (``2 n^3`` per ``n x n`` product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _timed(lambda: torch.mm(a, b), warmup=2, reps=reps)


def train_step_fn(name: str, batch: tuple[torch.Tensor, ...]):
    torch.manual_seed(0)
    model = build_model(name, OBS, ACT).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        out = model.loss(*batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return model, step


def count_train_flops(name: str, batch: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward + backward pass of ``name``'s loss (optimizer arithmetic not counted)."""
    model, _ = train_step_fn(name, batch)
    with FlopCounterMode(display=False) as counter:
        model.loss(*batch).loss.backward()
    return int(counter.get_total_flops())


def imagine_rate(name: str, reps: int) -> float:
    """Imagined latent steps per second at batch ``IMAGINE_BATCH``, horizon ``HORIZON``."""
    torch.manual_seed(0)
    model = build_model(name, OBS, ACT).eval()
    actions = torch.randint(0, ACT.n, (IMAGINE_BATCH, HORIZON))
    with torch.inference_mode():
        state = model.initial(IMAGINE_BATCH)
        seconds = _timed(lambda: model.imagine(state, actions), warmup=1, reps=reps)
    return IMAGINE_BATCH * HORIZON / seconds


def run(quick: bool) -> dict[str, Any]:
    reps = 5 if quick else 20
    batch = _batch(BATCH, WINDOW)
    peer = matmul_flops(1024 if quick else 2048, reps=reps)
    result: dict[str, Any] = {}
    step_seconds = {}
    for name in model_names():
        _, step = train_step_fn(name, batch)
        step_seconds[name] = _timed(step, warmup=2, reps=reps)
        result[f"{name}_train_transitions_per_s"] = BATCH * WINDOW / step_seconds[name]
        result[f"{name}_imagine_steps_per_s"] = imagine_rate(name, reps=max(3, reps // 2))
    flops = count_train_flops("rssm", batch)
    ours = flops / step_seconds["rssm"]
    return {
        "name": "train_throughput", "ours": ours, "peer": peer, "ratio": ours / peer, "unit": "FLOP/s",
        "higher_is_better": True,
        "config": {"batch": BATCH, "window": WINDOW, "obs_shape": list(OBS.shape), "actions": ACT.n,
                   "imagine_batch": IMAGINE_BATCH, "horizon": HORIZON, "quick": quick,
                   "threads": torch.get_num_threads(), "rssm_train_flops_per_step": flops,
                   "matmul_n": 1024 if quick else 2048},
        **result,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

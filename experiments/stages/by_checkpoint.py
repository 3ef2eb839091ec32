"""Probe score by site x training checkpoint (the "what-when-where" view of McGrath et al. 2022).

For every training snapshot the train stage kept (``checkpoints/snapshot-step=<N>.ckpt``, see
``dynamics.snapshots``; step 0 is the initial weights) and for the final weights (``last.ckpt``), the
probe stage fits ONE cheap method -- the batched linear probe, l2 chosen on the val split -- at every
probed site, through the same harness as the main results (:func:`probes.run_harness`: latents from
:func:`probes.extract_latents`, the train split subsampled to :data:`MAX_TRAIN_ROWS` rows with the run
seed, scores on the test split with the harness's bootstrap over episodes). Only each concept's
headline metric is kept: balanced accuracy (binary, categorical) or R2 (scalar).

Output ``by_checkpoint.csv`` (columns :data:`COLUMNS`), one row per step x site x concept x metric.
A snapshot's latents are extracted into a temporary folder and deleted after its fits; the final
model's latents are the probe stage's own (not extracted again).
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from experiments.provenance import atomic_write_text

COLUMNS = ("step", "site", "concept", "metric", "estimate", "ci_low", "ci_high")
FILE = "by_checkpoint.csv"
MAX_TRAIN_ROWS = 4000
"""Training rows of each linear fit (a seeded draw): keeps the whole view to seconds on CPU."""
SPLITS = ("train", "val", "test")
METHOD = "linear"


def probe_by_checkpoint(dynamics_dir: Path, ds, final_store, out: Path, *, sites: Sequence[str], concepts: Sequence[str],
                        expected_model: str, n_boot: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Fit and score the linear probe at ``sites`` on every snapshot next to the checkpoint of ``dynamics_dir`` and on
    the final model (whose latents are ``final_store``); writes ``out/by_checkpoint.csv``. Returns ``(rows, skipped)``,
    ``skipped`` keyed ``by_checkpoint:step=<N>[:<what>]`` with the reason."""
    import torch

    from dynamics.training.callbacks import list_snapshots
    from dynamics.training.checkpoint import CheckpointError, load_model, verify_checkpoint
    from experiments.stages.inputs import checkpoint_of
    from probes import ProbeError, extract_latents, run_harness
    from probes.ontology import validation_metric

    splits = [s for s in SPLITS if s in ds.splits]  # a small dataset may hold no test (or val) episode
    final = checkpoint_of(dynamics_dir)
    final_step = int(verify_checkpoint(final)["global_step"] or 0)
    points: dict[int, Path | None] = {s: p for s, p in list_snapshots(final.parent).items() if s < final_step}
    points[final_step] = None  # the final weights: the probe stage's own latents
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    scratch = out / ".by_checkpoint_latents"
    try:
        for step, path in points.items():
            if path is None:
                store = final_store
            else:
                try:
                    model = load_model(path, expected_model=expected_model)
                except CheckpointError as e:
                    skipped[f"by_checkpoint:step={step}"] = str(e)
                    continue
                with torch.inference_mode():
                    store = extract_latents(model, ds, splits, sites, scratch / f"step={step}", progress=False)
            try:
                res = run_harness(store, ds.schema, [METHOD], sites, concepts=concepts, splits=("test",), n_boot=n_boot,
                                  seed=seed, baselines=False, control=False, mdl=False,
                                  max_train_rows={METHOD: MAX_TRAIN_ROWS}, progress=False)
            except ProbeError as e:
                skipped[f"by_checkpoint:step={step}"] = str(e)
                continue
            skipped.update({f"by_checkpoint:step={step}:{k}": v for k, v in res.skipped.items()})
            rows += [{"step": step, "site": r.site, "concept": r.concept, "metric": r.metric, "estimate": r.estimate,
                      "ci_low": r.ci_low, "ci_high": r.ci_high}
                     for r in res.rows if r.split == "test" and r.metric == validation_metric(ds.schema[r.concept])]
            if path is not None:
                shutil.rmtree(scratch / f"step={step}", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    order = {s: i for i, s in enumerate(sites)}
    rows.sort(key=lambda r: (r["step"], order[r["site"]], r["concept"], r["metric"]))
    write_by_checkpoint_csv(rows, out / FILE)
    return rows, skipped


def write_by_checkpoint_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``rows`` (dicts with :data:`COLUMNS`) to ``path`` atomically; floats by ``repr`` (exact round trip)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([int(r["step"]), r["site"], r["concept"], r["metric"],
                    *("" if r[k] is None else repr(float(r[k])) for k in ("estimate", "ci_low", "ci_high"))])
    return atomic_write_text(path, buf.getvalue())


def read_by_checkpoint_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``by_checkpoint.csv`` (``[]`` if there is none); missing or NaN numbers become ``None``."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected columns {COLUMNS}, got {reader.fieldnames}")

        def num(v: str) -> float | None:
            x = float(v) if v else math.nan
            return x if math.isfinite(x) else None

        return [{"step": int(r["step"]), "site": r["site"], "concept": r["concept"], "metric": r["metric"],
                 **{k: num(r[k]) for k in ("estimate", "ci_low", "ci_high")}} for r in reader]

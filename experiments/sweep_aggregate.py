"""Aggregation of an ``ontolab sweep`` over seeds: per group, the mean of every probe, planning and open-loop value
of the runs' ``summary.json`` with a 95% t-interval over seeds (one seed: that run's own bootstrap interval), and
the ontology's most frequent choice (the rules are in :mod:`experiments.sweep`'s docstring)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

PLAN_METRICS = ("success_rate", "violation_rate", "mean_true_return")
OPEN_LOOP_SERIES = ("model", "copy_last_frame", "model_changed_cells", "copy_changed_cells", "model_balanced", "copy_balanced")
ONE_SEED = "one seed: the run's bootstrap interval over episodes (no spread over seeds to estimate)"
T_OVER_SEEDS = "t-interval over seeds"


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed) and its t-interval; needs >= 2 values."""
    from scipy import stats

    n = len(values)
    if n < 2:
        raise ValueError(f"a t-interval over seeds needs at least 2 values, got {n}")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _combine(estimates: list[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """One aggregated ``{estimate, ci_low, ci_high, n_seeds, sd, seeds, interval}`` from ``[(seed, row)]``."""
    ok = [(s, r) for s, r in estimates if isinstance(r.get("estimate"), (int, float)) and math.isfinite(r["estimate"])]
    if not ok:
        return {"estimate": None, "ci_low": None, "ci_high": None, "n_seeds": 0, "sd": None, "seeds": [], "interval": "no finite value"}
    seeds = sorted(s for s, _ in ok)
    vals = [float(r["estimate"]) for _, r in sorted(ok, key=lambda sr: sr[0])]
    if len(ok) == 1:
        r = ok[0][1]
        return {"estimate": vals[0], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"), "n_seeds": 1, "sd": None,
                "seeds": seeds, "interval": ONE_SEED}
    mean, lo, hi = seed_interval(vals)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return {"estimate": mean, "ci_low": lo, "ci_high": hi, "n_seeds": len(vals), "sd": sd, "seeds": seeds,
            "interval": T_OVER_SEEDS}


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate finished runs over seeds.

    ``runs``: ``[{"group": str, "seed": int, "summary": summary.json dict}]``. Returns ``{"probes": rows
    (group, method, site, concept, split, metric, estimate, ci_low, ci_high, n_seeds, sd, seeds,
    interval), "planning": rows (group, planner, model, reward, probe_method, n_seeds and per rate an
    ``{estimate, ci_low, ci_high, ...}`` dict), "open_loop": {group: open_loop.json-shaped dict},
    "ontology": {group: {concept: {"method", "site", "votes"}}}}`` (the ontology's most frequent choice, a tie going
    to the choice of the lowest seed; ``votes`` counts the seeds with a choice for the concept, not those agreeing).
    """
    probes: dict[tuple, list] = defaultdict(list)
    plans: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    loops: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    votes: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    first_seed: dict[tuple, int] = {}  # (group, concept, (method, site)) -> lowest seed that chose it (ties)
    loop_metric: dict[str, set[str]] = defaultdict(set)  # the runs' open-loop metric: accuracy (symbolic) or mse
    for run in runs:
        g, seed, s = run["group"], run["seed"], run["summary"]
        for r in s.get("probes") or []:
            probes[(g, r["method"], r["site"], r["concept"], r["split"], r["metric"])].append((seed, r))
        for r in s.get("planning") or []:
            key = (g, r.get("planner"), r.get("model"), r.get("reward"), r.get("probe_method"))
            for m in PLAN_METRICS:
                if isinstance(r.get(m), Mapping):
                    plans[key][m].append((seed, r[m]))
        ol = (s.get("dynamics") or {}).get("open_loop") or {}
        if isinstance(ol.get("metric"), str):
            loop_metric[g].add(ol["metric"])
        for series in OPEN_LOOP_SERIES:
            for k, e in (ol.get(series) or {}).items():
                loops[g][series][k].append((seed, e))
        for c, v in (s.get("ontology") or {}).items():
            choice = (v["method"], v["site"])
            votes[g][c][choice] += 1
            first_seed[(g, c, choice)] = min(seed, first_seed.get((g, c, choice), seed))
    cols = ("group", "method", "site", "concept", "split", "metric")
    probe_rows = [{**dict(zip(cols, key)), **_combine(vals)} for key, vals in sorted(probes.items(), key=lambda kv: kv[0])]
    plan_rows = []
    for key, metrics in plans.items():
        row = dict(zip(("group", "planner", "model", "reward", "probe_method"), key))
        row.update({m: _combine(v) for m, v in metrics.items()})
        row["n_seeds"] = max(v["n_seeds"] for m, v in row.items() if m in PLAN_METRICS)
        plan_rows.append(row)
    open_loop = {g: {"metric": "/".join(sorted(loop_metric[g])) or "accuracy",
                     **{series: {k: _combine(v) for k, v in sorted(ks.items(), key=lambda kv: int(kv[0]))}
                        for series, ks in ser.items()}} for g, ser in loops.items()}
    # Ties between choices go to the one made by the lowest seed, so the result does not depend on the order the
    # runs come in (Counter.most_common breaks ties by insertion order: seeds=[1,0] and [0,1] chose differently).
    def winner(g: str, c: str, cnt: Counter) -> tuple[str, str]:
        return min(cnt, key=lambda ch: (-cnt[ch], first_seed[(g, c, ch)]))

    ontology = {g: {c: dict(zip(("method", "site"), winner(g, c, cnt)), votes=sum(cnt.values()))
                    for c, cnt in sorted(cs.items())} for g, cs in votes.items()}
    return {"probes": probe_rows, "planning": plan_rows, "open_loop": open_loop, "ontology": ontology}

"""The planning parts of ``report.md``: planners' outcomes, reward evaluation and the over-optimisation curve."""

from __future__ import annotations

from typing import Any

from experiments.markdown import ci as _ci
from experiments.markdown import table as _table


def planning_section(summary: dict[str, Any]) -> list[str]:
    """Closed-loop results: one row per planner x model x reward x probe method, the bar, the shift."""
    rows, details = summary.get("planning") or [], summary.get("planning_details") or {}
    if details.get("skipped_stage"):
        return ["## Planning", f"Skipped: {details['skipped_stage']}.", ""]
    if not rows:
        return []
    reward = details.get("reward") or {}
    cons = f" subject to {', '.join(reward['constraints'])}" if reward.get("constraints") else ""
    shielded = any("veto_rate" in r for r in rows)  # rows '<planner>+shield' (plan.shield): a veto-rate column
    parts = ["## Planning", f"Reward `{reward.get('reward')}`{cons}; {details.get('episodes')} real episodes per row. "
             "*learned/latent*: the learned model with the reward compiled against the probes' ontology (what "
             "ontolab is for); *oracle/true*: the true simulator with the true reward (the planner alone). Rates "
             "of episodes carry exact Clopper-Pearson 95% intervals, means a bootstrap over episodes"
             + (" (so does the share of vetoed decisions, exact with the episodes as trials when none or all "
                "are vetoed)" if shielded else "") + ". Every episode is in "
             "`planning/episodes.csv`, every decision in `planning/decisions.csv`.", "",
             _table(["planner", "model", "reward", "probe method", "success", "violations", "true return", "steps",
                     "ms/step"] + ["vetoed decisions"] * shielded,
                    [[r["planner"], r["model"], r["reward"], r["probe_method"], _ci(r["success_rate"]),
                      _ci(r["violation_rate"]), _ci(r["mean_true_return"]), _ci(r["mean_steps"]), _ci(r["ms_per_step"])]
                     + [_ci(r.get("veto_rate"))] * shielded for r in rows]), ""]
    for q in details.get("quality_bar") or []:
        ratio = q["success_ratio_to_oracle"]
        verdict = "meets" if q["passes"] else "falls short of"
        parts += [f"- `{q['planner']}` ({q['probe_method']} probes) {verdict} the bar (>= 80% of the oracle's "
                  f"success, <= 5% violations, better than random): "
                  f"{'n/a' if ratio is None else f'{ratio:.0%}'} of the oracle's success, "
                  f"{q['violation_rate']:.0%} violations" + (f". Likely reason: {q['diagnosis']}." if q["diagnosis"] else ".")]
    shift = [s for s in details.get("shift") or [] if s["in_reward"] and s["metric"] in ("balanced_accuracy", "r2")]
    if shift:
        parts += ["", "Planner-induced shift: the reward's probes on the states each policy visited (filtered "
                  "posterior, true concepts) vs on the dataset's held-out episodes.", "",
                  _table(["policy", "probe method", "concept", "metric", "visited states", "dataset (test)"],
                         [[s["planner"] + (f" ({s['model']})" if s["model"] else ""), s["probe_method"] or s["method"],
                           s["concept"], s["metric"], _ci(s["visited"]), _ci(s["dataset_test"])] for s in shift])]
    parts += reward_eval_section(details.get("reward_eval") or {})
    skipped = details.get("skipped") or {}
    if skipped:
        parts += ["", *[f"- skipped {k}: {why}" for k, why in skipped.items()]]
    return parts + [""]


def reward_eval_section(doc: dict[str, Any]) -> list[str]:
    """Latent vs true reward on held-out posterior latents (``planning/metrics.json`` ``reward_eval``)."""
    evals = doc.get("evaluations") or []
    if not evals:
        return []
    other = " The cached latents' model fingerprint is not the planning checkpoint's." if doc.get("same_model") is False else ""
    parts = ["", f"Reward evaluation on the held-out ({doc.get('split')}) episodes' posterior latents: the latent reward "
             "(probes) vs the true reward per step, for the total and each term (error = latent - true), and each "
             f"constraint's per-step violation as the probes read it vs the truth; 95% bootstrap CIs over episodes.{other} "
             "All numbers: `planning/reward_eval.csv`.", "",
             _table(["ontology", "term", "MAE", "MAE of a constant at the true median", "RMSE", "bias", "Pearson", "Spearman"],
                    [[e["ontology"] + f" ({e['probe_method']})", t["label"], _ci(t["mae"]),
                      _ci(t["constant_mae"]) if t.get("constant_mae") else "", _ci(t["rmse"]), _ci(t["bias"]),
                      *((_ci(e["pearson"]), _ci(e["spearman"])) if t is e["total"] else ("", ""))]
                     for e in evals for t in (e["total"], *e["terms"])])]
    cons = [(e, c) for e in evals for c in e["constraints"]]
    if cons:
        parts += ["", _table(["ontology", "constraint", "TP", "FP", "FN", "TN", "precision", "recall", "false alarms"],
                             [[e["ontology"], f"`{c['constraint']}`", c["tp"], c["fp"], c["fn"], c["tn"], _ci(c["precision"]),
                               _ci(c["recall"]), _ci(c["false_alarm_rate"])] for e, c in cons])]
    return parts


def overoptimisation_section(summary: dict[str, Any]) -> list[str]:
    """Proxy (imagined) vs true return as planning pressure grows (``planning/overoptimisation.json``)."""
    doc = (summary.get("planning_details") or {}).get("overoptimisation")
    if not doc:
        return []
    parts = ["## Over-optimisation", "The planner's expected return in imagination (proxy) and the true return its "
             "plan gets in the real world, as optimisation pressure grows (best-of-n over random action sequences, "
             "KL = log n - (n-1)/n from the action prior; CEM samples x iterations). A widening gap is the planner "
             "exploiting model or probe error (cf. Gao et al. 2022). 95% bootstrap CIs over start states.", "",
             "![over-optimisation](planning/overoptimisation.png)", ""]
    for c in doc.get("curves") or []:
        parts += [f"*{c['label']}* ({c['episodes']} start states, horizon {c['horizon']}, {c['execution']}):", "",
                  _table(["optimiser", "sequences", "KL (nats)", "proxy return", "true return", "gap"],
                         [[p["optimiser"], p["sequences"], "" if p.get("kl") is None else f"{p['kl']:.2f}",
                           _ci(p["proxy_return"]), _ci(p["true_return"]), _ci(p["gap"])] for p in c["points"]]), ""]
    return parts

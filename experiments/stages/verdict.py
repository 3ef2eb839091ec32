"""The planning stage's verdict against issue #5's bar, and the most likely reason when a planner falls short.

Per learned-model planner row: >= 80% of the oracle policy's success rate, <= 5% violations, and clearly
better than random (CIs apart). The reason is worded from what the stage measured: the same planner on the
true simulator (planner budget / reward specification), the reward's probes on the dataset's held-out
episodes and on the states the planner visited (probe error, planner-induced shift), and -- when the probe
stage ran the supervised history baseline -- whether a poorly read concept is knowable from the history
at all (lost by the latent vs not knowable: a reward no probe can deliver).
"""

from __future__ import annotations

from typing import Any

QUALITY_BAR = {"success_ratio_to_oracle": 0.8, "max_violation_rate": 0.05}
POOR = {"balanced_accuracy": 0.75, "r2": 0.5}
"""Below these, a probe of a reward concept reads the visited states poorly (used only to word the diagnosis)."""
SHIELD_SUFFIX = "+shield"
"""Appended to the planner name of a shielded row."""


def quality_bar(rows: list[dict[str, Any]], shift: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per learned-model planner: the issue's bar (>= 80% of the oracle's success, <= 5% violations,
    clearly better than random: CIs apart) and, when it falls short, the most likely reason."""
    by = {(r["planner"], r["model"], r["reward"], r["probe_method"]): r for r in rows}
    oracle = next((r for r in rows if r["planner"] == "oracle" and r["model"] is None), None)
    rand = next((r for r in rows if r["planner"] == "random" and r["model"] is None), None)
    out = []

    def bar(r: dict[str, Any]) -> tuple[float | None, bool]:
        ratio = r["success_rate"]["estimate"] / oracle["success_rate"]["estimate"] if oracle["success_rate"]["estimate"] else None
        ok = ratio is not None and ratio >= QUALITY_BAR["success_ratio_to_oracle"] \
            and r["violation_rate"]["estimate"] <= QUALITY_BAR["max_violation_rate"]
        return ratio, ok

    for r in rows:
        if r["model"] != "learned" or oracle is None or rand is None:
            continue
        ratio, ok = bar(r)
        better = r["success_rate"]["ci_low"] > rand["success_rate"]["ci_high"] or \
            r["mean_true_return"]["ci_low"] > rand["mean_true_return"]["ci_high"]
        passes = ok and better
        true_row = by.get((r["planner"].removesuffix(SHIELD_SUFFIX), "oracle", "true", None))
        diagnosis = None
        if not passes:
            reward_shift = [s for s in shift if s["planner"] == r["planner"] and s["model"] == "learned"
                            and s["probe_method"] == r["probe_method"] and s["in_reward"]
                            and s["metric"] in POOR and s["visited"]["estimate"] is not None]
            dropped = sorted({s["concept"] for s in reward_shift if s["dataset_test"] and s["visited"]["ci_high"] is not None
                              and s["visited"]["ci_high"] < s["dataset_test"]["ci_low"]})
            unreadable = sorted({s["concept"] for s in reward_shift if s["dataset_test"]
                                 and s["dataset_test"]["estimate"] < POOR[s["metric"]]})
            poor = sorted({s["concept"] for s in reward_shift if s["visited"]["estimate"] < POOR[s["metric"]]})
            if true_row is not None and not bar(true_row)[1]:
                diagnosis = ("planner budget or reward specification: the same planner on the true simulator with "
                             "the true reward also falls short")
            elif unreadable:
                diagnosis = (f"probe error: {unreadable} are read poorly even on the dataset's held-out episodes "
                             f"(below {POOR}), so the latent reward is not the true one"
                             + _knowable(reward_shift, unreadable)
                             + (f"; {dropped} read worse still on the planner's states" if dropped else ""))
            elif dropped:
                diagnosis = (f"probe error under planner-induced shift: {dropped} read worse on the states the planner "
                             "visits than on the dataset's held-out episodes")
            elif poor:
                diagnosis = f"probe error: {poor} read poorly on the visited states (below {POOR})"
            else:
                diagnosis = ("most likely dynamics model error: the planner succeeds on the true simulator and the "
                             "reward's probes read the visited states adequately")
        out.append({"planner": r["planner"], "probe_method": r["probe_method"], "success_ratio_to_oracle": ratio,
                    "violation_rate": r["violation_rate"]["estimate"], "better_than_random": bool(better),
                    "passes": bool(passes), "diagnosis": diagnosis, "bar": QUALITY_BAR})
    return out


def _knowable(shift: list[dict[str, Any]], concepts: list[str]) -> str:
    """Which of the poorly read ``concepts`` the supervised history baseline (``probes.history``) reads:
    those it reads are kept from the history but lost by the model's latent (dynamics model error), those
    it does not are not knowable from the history at all (reward specification under partial observability).
    Judged on the non-terminal test steps when the probe stage scored the baseline there (``history_split``):
    a terminal event is in the frame and can make a concept look knowable where a planner never acts."""
    hist = {s["concept"]: (s["metric"], s["history_test"], s["dataset_test"]["estimate"],
                           " on non-terminal steps" if s.get("history_split") == "test_nonterminal" else "")
            for s in shift if s["concept"] in concepts and s.get("history_test") is not None and s["dataset_test"]}
    lost = {c: v for c, v in hist.items() if v[1] >= POOR[v[0]]}
    unknowable = {c: v for c, v in hist.items() if v[1] < POOR[v[0]]}
    words = []
    if lost:
        words.append("the supervised history baseline reads " + ", ".join(
            f"{c} at {h:.2f}{where} (the latent's probe {d:.2f})" for c, (_, h, d, where) in sorted(lost.items()))
            + ": knowable from the observations, lost by the dynamics model's latent")
    if unknowable:
        words.append("even the supervised history baseline reads " + ", ".join(
            f"{c} only at {h:.2f}{where}" for c, (_, h, _, where) in sorted(unknowable.items()))
            + ": not knowable from the observation history -- a reward specification that no probe of a "
            "predictive model can deliver in this partially observed world")
    return "; " + "; ".join(words) if words else ""

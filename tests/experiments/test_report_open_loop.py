"""report.md's Dynamics section: macro recall beside per-cell accuracy, recall by cell class; old open_loop.json still reads."""

from __future__ import annotations

from experiments.report import render_report


def est(v: float) -> dict:
    return {"estimate": v, "ci_low": v - 0.01, "ci_high": v + 0.01}


OLD = {"split": "test", "metric": "accuracy", "context": 10, "windows": 40, "episodes": 8,
       "model": {"1": est(0.95), "5": est(0.9)}, "copy_last_frame": {"1": est(0.8), "5": est(0.6)},
       "model_changed_cells": {"1": est(0.7), "5": est(0.6)}, "copy_changed_cells": {"1": est(0.0), "5": est(0.0)},
       "changed_fraction": {"1": 0.2, "5": 0.4}, "model_unseen_cells": {"1": est(0.5), "5": est(0.4)},
       "model_seen_cells": {"1": est(0.96), "5": est(0.91)}, "copy_seen_cells": {"1": est(0.81), "5": est(0.62)},
       "model_seen_changed_cells": {"1": est(0.71), "5": est(0.61)}, "seen_fraction": {"1": 0.9, "5": 0.8}}
NEW = {**OLD, "class_names": ["empty", "wall", "key", "goal"],
       "model_balanced": {"1": est(0.612), "5": est(0.424)}, "copy_balanced": {"1": est(0.522), "5": est(0.321)},
       "model_seen_balanced": {"1": est(0.631), "5": est(0.432)}, "copy_seen_balanced": {"1": est(0.539), "5": est(0.352)},
       "model_class_recall": {"1": {"empty": {**est(0.97), "count": 100}}, "5": {"empty": {**est(0.95), "count": 90}}},
       "copy_class_recall": {"1": {"empty": {**est(0.8), "count": 100}}, "5": {"empty": {**est(0.7), "count": 90}}},
       "model_seen_class_recall": {"1": {"empty": {**est(0.973), "count": 80}, "key": {**est(0.294), "count": 17}},
                                   "5": {"empty": {**est(0.956), "count": 70}, "goal": {**est(0.0), "count": 12}}},
       "copy_seen_class_recall": {"1": {"empty": {**est(0.833), "count": 80}, "key": {**est(0.235), "count": 17}},
                                  "5": {"empty": {**est(0.696), "count": 70}, "goal": {**est(0.176), "count": 12}}}}


def dynamics_section(open_loop: dict) -> list[str]:
    summary = {"world": "lavakeydoor", "seed": 0, "data": {"episodes": 1, "transitions": 1, "base_rates": {}},
               "dynamics": {"model": "rssm", "val_loss": 1.0, "open_loop": open_loop}, "timings": {}}
    text = render_report({}, summary)
    return text[text.index("## Dynamics"):text.index("## Timings")].splitlines()


def row(lines: list[str], header_start: str, first: str) -> dict[str, str]:
    """The row starting ``| first |`` of the table whose header starts ``| header_start``, as {column: cell}."""
    i = next(j for j, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {first!r}")


def test_macro_recall_sits_beside_per_cell_accuracy_and_recall_by_class_is_tabled():
    lines = dynamics_section(NEW)
    r5 = row(lines, "k | model |", "5")
    assert r5["model"].startswith("0.900") and r5["model, macro recall"].startswith("0.424")
    assert r5["copy, macro recall"].startswith("0.321")
    seen = row(lines, "k | model, seen cells", "1")
    assert seen["model, seen, macro recall"].startswith("0.631") and seen["copy, seen, macro recall"].startswith("0.539")
    key = row(lines, "class |", "key")  # seen cells; a class absent at k = 5 shows "-"
    assert key["model, k=1"].startswith("0.294") and key["cells, k=1"] == "17" and key["model, k=5"] == "-"
    goal = row(lines, "class |", "goal")
    assert goal["copy, k=5"].startswith("0.176") and goal["model, k=1"] == "-"
    classes = [line.split("|")[1].strip() for line in lines[next(i for i, x in enumerate(lines) if x.startswith("| class")) + 2:]
               if line.startswith("|")]
    assert classes == ["empty", "key", "goal"]  # the world's order; "wall" never a target here
    assert any("on seen cells" in line for line in lines)


def test_an_open_loop_json_written_before_recall_by_class_still_renders():
    lines = dynamics_section(OLD)
    r1 = row(lines, "k | model |", "1")
    assert r1["model"].startswith("0.950") and r1["model, macro recall"] == "-" and r1["copy, macro recall"] == "-"
    assert row(lines, "k | model, seen cells", "5")["model, seen, macro recall"] == "-"
    assert not any(line.startswith("| class") for line in lines)
    assert dynamics_section({"skipped": "too short"})[-2] == "Open-loop prediction: too short."


def test_seen_cells_split_into_last_view_and_memory_when_recorded():
    split = {**NEW, "model_last_view_cells": {"1": est(0.981), "5": est(0.952)},
             "model_memory_cells": {"1": est(0.902), "5": est(0.883)}, "memory_fraction": {"1": 0.05, "5": 0.2}}
    r5 = row(dynamics_section(split), "k | model, seen cells", "5")
    assert r5["model, in the last view"].startswith("0.952") and r5["model, seen only earlier"].startswith("0.883")
    assert "model, in the last view" not in row(dynamics_section(NEW), "k | model, seen cells", "5")  # older files


def test_hidden_concept_tests_are_tabled_and_skipped_ones_left_out():
    test = {"test": "door_opens", "concept": "has_key", "description": "the door opens iff the key is held",
            "events": 146, "events_true": 98, "events_false": 48, "rate_when_true": est(0.949),
            "rate_when_false": est(0.438), "auroc": est(0.883), "truth_agreement": est(1.0)}
    lines = dynamics_section({**NEW, "hidden_concepts": [test, {"test": "x", "skipped": "no step"}]})
    r = row(lines, "test (concept)", "door_opens (has_key)")
    assert r["steps with / without"] == "98 / 48"
    assert r["predicts the outcome, with"].startswith("0.949") and r["predicts the outcome, without"].startswith("0.438")
    assert r["AUROC"].startswith("0.883")
    assert not any(line.startswith("| x ") for line in lines)
    assert "Hidden concepts" not in "\n".join(dynamics_section(NEW))  # nothing recorded: no section

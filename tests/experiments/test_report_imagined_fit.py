"""report.md's table of the chosen probes beside their refit on imagined latents (probes.imagined_fit)."""

from __future__ import annotations

from experiments.report import imagined_fit_section


def r(method: str, concept: str, split: str, metric: str, v: float) -> dict:
    return {"method": method, "site": "feat", "concept": concept, "split": split, "metric": metric,
            "estimate": v, "ci_low": v - 0.01, "ci_high": v + 0.01}


SPLITS = ("test", "imagined_k1", "imagined_k5", "imagined_k15")


def test_each_refitted_concept_gets_both_fits_on_posterior_and_imagined_latents():
    rows = [r("linear", "in_lava", s, "balanced_accuracy", v) for s, v in zip(SPLITS, (0.94, 0.69, 0.5, 0.5))]
    rows += [r("linear+imagined", "in_lava", s, "balanced_accuracy", v) for s, v in zip(SPLITS, (0.9, 0.81, 0.7, 0.5))]
    rows += [r("mlp", "agent_row", "test", "r2", 0.93)]  # no refit rows: no line for it
    summary = {"probes": rows, "ontology": {"in_lava": {"method": "linear", "site": "feat"},
                                            "agent_row": {"method": "mlp", "site": "feat"}}}
    lines = "\n".join(imagined_fit_section(summary)).splitlines()
    table = [line for line in lines if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert len(table) == 2 and header[3:] == [f"{w} fit, {s}" for w in ("posterior", "imagined")
                                               for s in ("test", "k=1", "k=5", "k=15")]
    cells = [c.strip() for c in table[1].strip("|").split("|")]
    assert cells[:3] == ["in_lava", "linear, feat", "balanced_accuracy"]
    assert [c.split()[0] for c in cells[3:]] == ["0.940", "0.690", "0.500", "0.500", "0.900", "0.810", "0.700", "0.500"]


def test_no_refit_rows_no_section():
    summary = {"probes": [r("linear", "in_lava", "test", "balanced_accuracy", 0.9)],
               "ontology": {"in_lava": {"method": "linear", "site": "feat"}}}
    assert imagined_fit_section(summary) == []

"""probes: map latent states onto human concepts (ontology identification), and measure how far to trust it.

Fitters (``fit`` / ``update`` + ``finish``) produce small frozen probes that predict, expose a
direction where the method has one, move between devices and save without pickle. The measurement
side -- metrics with bootstrap CIs over episodes, control tasks, MDL, LEACE erasure -- takes plain
predictions, so any method plugs in.
"""

from probes.base import Probe, ProbeError, ProbeFitter
from probes.causal import NecessityResult, SufficiencyResult, causal_necessity, causal_sufficiency, edit_state
from probes.consistency import imagination_consistency, state_consistency, state_keys
from probes.control import control_labels, observation_types, selectivity
from probes.extract import LatentStore, extract_latents, model_fingerprint
from probes.erasure import Eraser, fit_leace, leace_erase, random_subspace_erase
from probes.grids import GridFit, fit_method
from probes.harness import HarnessResult, baseline_name, run_harness
from probes.history import HistoryBaseline, HistoryFitter, HistorySplit
from probes.imagined import ImaginedFit, ImaginedRows, fit_on_imagined, imagined_rows
from probes.linear import GridResult, LinearFitter, LinearProbe, choose_lambda, fit_grid
from probes.mdl import MDLResult, mdl_estimates, online_codelength
from probes.metrics import concept_metrics, metric_names, prior_baseline
from probes.mlp import MLPFitter, MLPProbe
from probes.normalize import Normalizer, NormalizerFitter
from probes.ontology import Ontology, OntologyEntry, method_ontologies, select_ontology
from probes.registry import hparam_names, make_fitter, method_names
from probes.results import ResultRow, read_results_csv, write_results_csv
from probes.sae import SAEFitter, SAEProbe, SAEProbeFitter, SparseAutoencoder
from probes.sparse import SparseFitter, SparseProbe
from probes.stats import Estimate, bootstrap, bootstrap_seeds, combine_seeds

__all__ = [
    "Eraser",
    "Estimate",
    "GridFit",
    "GridResult",
    "HarnessResult",
    "HistoryBaseline",
    "HistoryFitter",
    "HistorySplit",
    "ImaginedFit",
    "ImaginedRows",
    "LatentStore",
    "LinearFitter",
    "LinearProbe",
    "MDLResult",
    "MLPFitter",
    "MLPProbe",
    "NecessityResult",
    "Normalizer",
    "NormalizerFitter",
    "Ontology",
    "OntologyEntry",
    "Probe",
    "ProbeError",
    "ProbeFitter",
    "ResultRow",
    "SAEFitter",
    "SAEProbe",
    "SAEProbeFitter",
    "SparseAutoencoder",
    "SparseFitter",
    "SparseProbe",
    "SufficiencyResult",
    "baseline_name",
    "bootstrap",
    "bootstrap_seeds",
    "causal_necessity",
    "causal_sufficiency",
    "choose_lambda",
    "combine_seeds",
    "concept_metrics",
    "control_labels",
    "edit_state",
    "extract_latents",
    "fit_grid",
    "fit_leace",
    "fit_method",
    "fit_on_imagined",
    "hparam_names",
    "imagination_consistency",
    "imagined_rows",
    "leace_erase",
    "make_fitter",
    "mdl_estimates",
    "method_names",
    "method_ontologies",
    "metric_names",
    "model_fingerprint",
    "observation_types",
    "online_codelength",
    "prior_baseline",
    "random_subspace_erase",
    "read_results_csv",
    "run_harness",
    "select_ontology",
    "selectivity",
    "state_consistency",
    "state_keys",
    "write_results_csv",
]

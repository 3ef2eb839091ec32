"""The config sections of every ``ontolab`` command, and how a command's config is resolved.

A command's config is one :class:`RunConfig`; each stage reads its own section. World parameters
are written flat under ``world`` (``world.size=11``) and validated against the parameters dataclass
the world registered; dynamics model hyperparameters go under ``dynamics.hparams``. The ``verify`` section
(:class:`~experiments.verify_config.VerifySection`) lives in :mod:`experiments.verify_config`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from experiments.config import ConfigError, build, field, load_yaml, merge, parse_overrides
from experiments.verify_config import VERIFY_DEFAULTS, VerifySection  # noqa: F401  (VERIFY_DEFAULTS re-exported)
from worlds.registry import get_world

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class WorldSection:
    name: str = field("lavakeydoor", help="registered world name (`ontolab worlds` lists them)")
    params: dict = field(default_factory=dict, help="world parameters; write them flat, e.g. world.size=11")


@dataclass(frozen=True)
class DataSection:
    episodes: int = field(2000, help="training/val/test episodes to collect (split by whole episode)")
    ood_episodes: int = field(200, help="episodes from the held-out layout families (split 'ood')")
    policy: str = field("mixture", help="collection policy: random, epsilon_oracle or mixture")
    epsilon: float = field(0.3, help="random-action probability of the epsilon_oracle policy")
    num_envs: int = field(64, help="environments stepped together while collecting")
    shard_steps: int = field(100_000, help="transitions per on-disk shard")
    min_base_rate: float = field(0.01, help="warn about concepts rarer than this in the collected data")
    split_fractions: tuple[float, ...] = field((0.8, 0.1, 0.1), help="train/val/test fractions of episodes")
    path: str | None = field(None, help="use this existing dataset instead of collecting one")

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"data.episodes must be a positive integer, got {self.episodes}")
        if self.ood_episodes < 0:
            raise ConfigError(f"data.ood_episodes must be >= 0, got {self.ood_episodes}")
        if self.num_envs < 1:
            raise ConfigError(f"data.num_envs must be a positive integer, got {self.num_envs}")
        if self.shard_steps < 1:
            raise ConfigError(f"data.shard_steps must be a positive integer, got {self.shard_steps}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"data.epsilon must lie in [0, 1], got {self.epsilon}")
        if not 0.0 <= self.min_base_rate < 0.5:  # worlds.collect refuses it too, but only with a traceback
            raise ConfigError(f"data.min_base_rate must lie in [0, 0.5), got {self.min_base_rate}; e.g. data.min_base_rate=0.01")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ConfigError(f"data.split_fractions must be three non-negative numbers summing to 1, got {list(self.split_fractions)}")


@dataclass(frozen=True)
class DynamicsSection:
    model: str = field("rssm", help="dynamics model: rssm, gru or spr")
    hparams: dict = field(default_factory=dict, help="model hyperparameters, e.g. dynamics.hparams.deter=256")
    max_steps: int = field(3000, help="optimizer steps")
    max_time_s: float | None = field(None, help="stop training after this many seconds (null: no limit)")
    batch_size: int = field(16, help="windows per batch")
    window: int = field(32, help="time steps per training window (metrics.json's k-step open-loop error needs window > k: "
                                 "a shorter window drops k = 15 and says so under open_loop_missing)")
    lr: float = field(1e-3, help="AdamW learning rate")
    grad_clip: float = field(100.0, help="gradient norm clip")
    val_every: int = field(500, help="validate every this many optimizer steps")
    resume: bool = field(False, help="continue a killed run from its last checkpoint")
    accelerator: str = field("cpu", help="Lightning accelerator: cpu, gpu or auto")
    devices: int = field(1, help="Lightning devices per node")
    strategy: str = field("auto", help="Lightning strategy, e.g. ddp")
    num_nodes: int = field(1, help="Lightning nodes")
    snapshots: tuple[float, ...] = field((0.1, 0.25, 0.5), help="also save weights-only snapshots at these fractions of "
                                         "max_steps (and at step 0) for probes.by_checkpoint; [] saves none")

    def __post_init__(self) -> None:
        for k in ("max_steps", "batch_size", "window", "val_every", "devices", "num_nodes"):
            if getattr(self, k) < 1:
                raise ConfigError(f"dynamics.{k} must be a positive integer, got {getattr(self, k)}")
        bad = [f for f in self.snapshots if not 0.0 < f < 1.0]
        if bad:
            raise ConfigError(f"dynamics.snapshots must be fractions of max_steps strictly between 0 and 1 (the final "
                              f"weights are always used), got {list(self.snapshots)}; e.g. dynamics.snapshots=[0.1,0.25,0.5]")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"dynamics.lr must be positive and finite, got {self.lr}; e.g. dynamics.lr=0.001")
        if not math.isfinite(self.grad_clip) or self.grad_clip <= 0:
            raise ConfigError(f"dynamics.grad_clip must be a positive number, got {self.grad_clip}; e.g. dynamics.grad_clip=100")
        if self.max_time_s is not None and (not math.isfinite(self.max_time_s) or self.max_time_s <= 0):
            raise ConfigError(f"dynamics.max_time_s must be a positive number of seconds or null, got {self.max_time_s}")


@dataclass(frozen=True)
class ProbesSection:
    methods: tuple[str, ...] = field(("linear", "mlp", "sparse"), help="probe methods: linear, mlp, sparse, sae")
    sites: tuple[str, ...] = field((), help="latent sites to probe (default: every site of the model)")
    concepts: tuple[str, ...] = field((), help="concepts to probe (default: every concept of the world)")
    seeds: tuple[int, ...] = field((0,), help="probe seeds (training-row subsample and initialisation)")
    n_boot: int = field(1000, help="bootstrap resamples (over episodes) for every confidence interval")
    control: bool = field(True, help="score control tasks and report selectivity")
    mdl: bool = field(True, help="report online-code compression (MDL) for the linear probe")
    grids: dict | None = field(None, help="hyperparameter grids searched on the validation split, per method a list of "
                                          "points, e.g. probes.grids={mlp: [{hidden: [64]}, {hidden: [256, 256]}]}; "
                                          "a method's list replaces its default grid (null: every default, "
                                          "probes.grids.DEFAULT_GRIDS: linear l2 10..1e-4, sparse l1_fraction "
                                          "0.3..0.01, one point each for mlp and sae); an mlp or sae point's unset "
                                          "hyperparameters keep the default point's (mlp: lr 3e-3, batch_size 512, "
                                          "max_epochs 50, patience 5). The MLP's epoch count is already chosen on the "
                                          "validation split by early stopping (max_epochs, patience); the seed comes "
                                          "from probes.seeds")
    max_train_rows: int | None = field(None, help="training rows for the non-linear methods (null: each method's default: "
                                                  "all rows for linear and mlp, 20000 for sparse, 10000 for sae; an "
                                                  "integer caps every non-linear method)")
    baseline_methods: tuple[str, ...] | None = field(None, help="probe methods the observation and random-model baselines "
                                                                "are fitted with (rows 'observation', 'random_model' for "
                                                                "linear, 'observation:<method>', 'random_model:<method>' "
                                                                "for others); null: every method of probes.methods; []: "
                                                                "the label prior only")
    imagination: bool = field(True, help="score every method's probes on imagined latents k = 1, 5, 15 steps ahead "
                                         "(at each concept's chosen site and at the method's own best site)")
    imagination_stride: int = field(4, help="start an imagined rollout every this many steps")
    imagined_fit: bool = field(True, help="also refit the ontology's probes on posterior + imagined latents (train "
                                          "episodes, k = 1..imagined_horizon steps ahead, labels at t+k): rows "
                                          "'<method>+imagined', ontologies/imagined-fit/ (planned with beside the posterior fit)")
    imagined_horizon: int | None = field(None, help="largest k of those imagined training rows (null: plan.horizon)")
    state_consistency: bool = field(True, help="score whether the ontology's probes agree across test episodes that "
                                               "reach the same true state (concept values)")
    causal: bool = field(True, help="causal checks of the ontology's probes: sufficiency (edit along the probe, decode "
                                    "the imagined future where a scenario exists; elsewhere the weaker probe-judged "
                                    "check, rows 'causal_sufficiency_probe') and necessity (LEACE erasure vs a random "
                                    "subspace; every concept)")
    checks_episodes: int = field(200, help="test episodes (a seeded draw) for the state-consistency and causal checks")
    causal_stride: int = field(4, help="start a causal-check rollout (necessity, probe-judged sufficiency) every this many steps")
    history: bool = field(True, help="the supervised history baseline: a small GRU trained on the labels over each "
                                     "episode's observations and actions (rows 'history'; an upper reference for "
                                     "any predictive latent; ~25 s on one core for the quickstart)")
    by_checkpoint: bool = field(True, help="fit the linear probe at every site on every training snapshot "
                                           "(dynamics.snapshots) and the final model: probes/by_checkpoint.csv")

    def __post_init__(self) -> None:
        from probes.registry import method_names

        bad = [m for m in self.methods if m not in method_names()]
        if bad or not self.methods:
            raise ConfigError(f"probes.methods: unknown method(s) {bad or '(none)'}; known: {', '.join(method_names())}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"probes.seeds must list distinct probe seeds (at least one), got {list(self.seeds)}; "
                              "e.g. probes.seeds=[0] or probes.seeds=[0,1,2]")
        bad = [m for m in self.baseline_methods or () if m not in method_names()]
        if bad:
            raise ConfigError(f"probes.baseline_methods: unknown method(s) {bad}; known: {', '.join(method_names())} "
                              "(or null: every method of probes.methods)")
        self._check_grids()
        for k in ("n_boot", "max_train_rows", "imagination_stride", "checks_episodes", "causal_stride", "imagined_horizon"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise ConfigError(f"probes.{k} must be a positive integer, got {getattr(self, k)}")

    def _check_grids(self) -> None:
        """Each ``probes.grids`` entry names a probe method and lists points of its hyperparameters (probes.grids.grid_keys)."""
        from probes.base import ProbeError
        from probes.grids import checked_grid
        from probes.registry import method_names

        bad = [m for m in self.grids or {} if m not in method_names()]
        if bad:
            raise ConfigError(f"probes.grids: unknown method(s) {bad}; known: {', '.join(method_names())} "
                              "(e.g. probes.grids={mlp: [{hidden: [64]}, {hidden: [256, 256]}]})")
        for m, points in (self.grids or {}).items():
            try:
                checked_grid(m, points)
            except ProbeError as e:
                raise ConfigError(f"probes.grids.{m}: {e}") from None


@dataclass(frozen=True)
class PlanSection:
    reward: str = field("", help="reward expression over concept names, e.g. '-0.1 * steps_to_goal - 10 * in_lava' "
                            "(empty: the planning stage is skipped, saying so)")
    constraints: tuple[str, ...] = field((), help="constraints, e.g. ['never in_lava']")
    planners: tuple[str, ...] = field(("cem", "mppi", "discrete_cem"),
                                      help="planners to run; those that do not fit the world's action space are skipped "
                                           "(discrete worlds: discrete_cem, exhaustive, shooting; continuous: cem, icem, mppi, shooting)")
    episodes: int = field(50, help="real-world episodes per planner x model x reward, and per baseline")
    num_envs: int = field(16, help="environments stepped together (episodes run in parallel)")
    horizon: int = field(15, help="planning horizon in steps")
    samples: int = field(256, help="action sequences imagined per optimiser iteration")
    elites: int = field(32, help="elite sequences kept per iteration (capped at samples)")
    iterations: int = field(4, help="optimiser iterations per decision (random shooting: 1)")
    discount: float = field(1.0, help="discount of imagined rewards")
    cost_limit: float = field(0.0, help="a plan is feasible when its summed constraint cost is at most this")
    context: int | None = field(None, help="filter each env's posterior from its last this many real steps (null: the whole episode)")
    n_boot: int = field(1000, help="bootstrap resamples (over episodes) for every confidence interval")
    device: str = field("cpu", help="torch device of the model, planners and probes, e.g. cuda")
    per_method: bool = field(True, help="also plan with each probe method's own ontology (one learned-model row per "
                                        "method), so methods are compared by the behaviour they produce")
    overoptimisation: bool = field(False, help="also measure proxy (imagined) vs true (real-world) return as planning "
                                               "pressure grows: planning/overoptimisation.json and .png")
    overopt_episodes: int = field(16, help="start states of the over-optimisation curve (plans executed open loop)")
    overopt_best_of: tuple[int, ...] = field((1, 4, 16, 64, 256, 1024),
                                             help="best-of-n sample counts of the over-optimisation curve")
    overopt_cem_samples: tuple[int, ...] = field((8, 16, 32, 64, 128, 256),
                                                 help="CEM samples per iteration, paired with overopt_cem_iterations")
    overopt_cem_iterations: tuple[int, ...] = field((1, 2, 3, 4, 5, 6),
                                                    help="CEM iterations, paired with overopt_cem_samples")
    shield: bool = field(False, help="also run every learned-model planner wrapped in a shield (rows '<planner>+shield'): "
                                     "a first action is vetoed when its imagined rollouts violate the constraints with "
                                     "probability above shield_threshold (needs plan.constraints)")
    shield_threshold: float = field(0.05, help="veto a first action whose imagined violation probability exceeds this")
    shield_samples: int = field(16, help="sampled imaginations (model's stochastic latents) per shield rollout; 1: the mode only")
    shield_continuations: int = field(1, help="action tails imagined after each candidate first action (1: the planner's own "
                                              "tail; more add random ones) and risk is that of the safest tail, with several tails "
                                              "re-estimated on fresh model samples (the minimum over the noisy per-tail "
                                              "estimates is biased low: with 32 tails x 4 samples the quickstart shield had "
                                              "never vetoed)")
    shield_horizon: int | None = field(None, help="imagined steps of the shield's rollouts (null: plan.horizon)")

    def __post_init__(self) -> None:
        from planning.planner import PLANNER_NAMES
        from rewards import RewardError, RewardSpec

        bad = [p for p in self.planners if p not in PLANNER_NAMES]
        if bad or not self.planners:
            raise ConfigError(f"plan.planners: unknown planner(s) {bad or '(none)'}; known: {', '.join(PLANNER_NAMES)}")
        for k in ("episodes", "num_envs", "horizon", "samples", "elites", "iterations", "n_boot"):
            if getattr(self, k) < 1:
                raise ConfigError(f"plan.{k} must be a positive integer, got {getattr(self, k)}")
        if not 0.0 < self.discount <= 1.0:
            raise ConfigError(f"plan.discount must lie in (0, 1], got {self.discount}")
        if not self.cost_limit >= 0.0:  # NaN made every plan infeasible without a word (costs are >= 0; .inf: no limit)
            raise ConfigError(f"plan.cost_limit must be a number >= 0 (summed constraint cost allowed per plan), got "
                              f"{self.cost_limit}; e.g. plan.cost_limit=0")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"plan.context must be a positive integer or null, got {self.context}")
        if self.overopt_episodes < 1:
            raise ConfigError(f"plan.overopt_episodes must be a positive integer, got {self.overopt_episodes}")
        for k in ("overopt_best_of", "overopt_cem_samples", "overopt_cem_iterations"):
            if any(v < 1 for v in getattr(self, k)):
                raise ConfigError(f"plan.{k} must hold positive integers, got {list(getattr(self, k))}")
        if len(self.overopt_cem_samples) != len(self.overopt_cem_iterations):
            raise ConfigError(f"plan.overopt_cem_samples and plan.overopt_cem_iterations pair up and need equal lengths, "
                              f"got {len(self.overopt_cem_samples)} and {len(self.overopt_cem_iterations)}")
        try:  # syntax only here; names and types are checked against the world in resolve()
            RewardSpec(self.reward or "0", tuple(self.constraints))
        except RewardError as e:
            raise ConfigError(f"plan: {e}") from None
        self._check_shield()

    def _check_shield(self) -> None:
        """The shield's keys; it needs constraints, and a probability cost needs room (plan.cost_limit > 0)."""
        from rewards import RewardSpec

        for k in ("shield_samples", "shield_continuations"):
            if getattr(self, k) < 1:
                raise ConfigError(f"plan.{k} must be a positive integer, got {getattr(self, k)}")
        if self.shield_horizon is not None and self.shield_horizon < 1:
            raise ConfigError(f"plan.shield_horizon must be a positive integer or null, got {self.shield_horizon}")
        if not 0.0 <= self.shield_threshold < 1.0:
            raise ConfigError(f"plan.shield_threshold must lie in [0, 1), got {self.shield_threshold}")
        if not self.shield:
            return
        if not self.constraints:
            raise ConfigError("plan.shield=true needs constraints to veto on, got plan.constraints=[]; set e.g. "
                              "plan.constraints=['never in_lava'] or plan.shield=false")
        probs = list(RewardSpec("0", tuple(self.constraints)).probability_costs())
        if probs and self.cost_limit <= 0:
            raise ConfigError(f"plan.shield: the constraints {probs} cost a probability, whose sum is > 0 on every "
                              f"imagined rollout, so with plan.cost_limit={self.cost_limit} every action is vetoed; set "
                              f"plan.cost_limit > 0 (expected violations allowed per rollout, e.g. 0.5), constrain the "
                              f"value (e.g. 'never in_lava') or compare the probability (e.g. 'p(in_lava) < 0.05')")


@dataclass(frozen=True)
class WandbSection:
    mode: str = field("offline", help="offline (default), online (sync; needs an account) or disabled")
    project: str = field("ontolab", help="wandb project name")

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"wandb.mode must be offline, online or disabled, got {self.mode!r}")


SEED_MAX = 2**32 - 1
"""The largest seed numpy's legacy seeding and ``pytorch_lightning.seed_everything`` accept."""


@dataclass(frozen=True)
class RunConfig:
    seed: int = field(0, help="seed of every random generator")
    out: str = field("runs/default", help="output folder (a run folder for `run`, a dataset folder for `collect`)")
    threads: int | None = field(None, help="torch CPU threads (default: the cores this process may use)")
    cache_dir: str | None = field(None, help="where finished stages are cached (default: a `cache` folder beside out)")
    world: WorldSection = field(default_factory=WorldSection, help="the world")
    data: DataSection = field(default_factory=DataSection, help="trajectory collection")
    dynamics: DynamicsSection = field(default_factory=DynamicsSection, help="dynamics model training")
    probes: ProbesSection = field(default_factory=ProbesSection, help="probe methods and the harness")
    plan: PlanSection = field(default_factory=PlanSection, help="planners acting in the real world (closed loop)")
    verify: VerifySection = field(default_factory=VerifySection, help="model checking the learned model over the ontology (Storm)")
    wandb: WandbSection = field(default_factory=WandbSection, help="experiment logging")

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads}")
        if not 0 <= self.seed <= SEED_MAX:  # numpy and Lightning's seed_everything refuse others, after collecting
            raise ConfigError(f"seed must be an integer in [0, {SEED_MAX}], got {self.seed}")
        if not self.out.strip():  # Path("") is the current folder: a run would write into it
            raise ConfigError("out must name a folder, got an empty value; e.g. out=runs/my_run")

    def world_params(self) -> Any:
        """The world's parameters dataclass (already validated when the config was resolved)."""
        return build(get_world(self.world.name).params_cls, self.world.params, "world.")


ALIASES = {"world": "world.name", "episodes": "data.episodes", "data": "data.path", "dynamics": "dynamics.model",
           "resume": "dynamics.resume"}


def resolve(args: list[str], config_file: str | Path | None = None, base: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults <- ``base`` <- YAML ``config_file`` <- ``key=value`` args, validated. Raises ConfigError."""
    data: dict[str, Any] = dict(base or {})
    if config_file is not None:
        data = merge(data, load_yaml(config_file))
    data = merge(data, parse_overrides(args, ALIASES))
    world = data.get("world", {})
    if isinstance(world, str):
        world = {"name": world}
    if isinstance(world, dict):  # flat world keys are world parameters
        world = dict(world)
        params = world.pop("params", {}) or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"config key 'world.params' must be a mapping of world parameters, got {params!r}; "
                              "write them flat, e.g. world.size=11")
        params = dict(params)
        params.update({k: v for k, v in world.items() if k != "name"})
        data["world"] = {"name": world.get("name", WorldSection.name), "params": params}
    cfg = build(RunConfig, data)
    try:
        get_world(cfg.world.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg.world_params()  # validates world.* keys against the registered parameters
    _check_names(cfg)
    return cfg


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _check_names(cfg: RunConfig) -> None:
    """Every name in the config that a registry or a world defines, checked before any work starts."""
    from dynamics.base import ActionSpec, ObsSpec
    from dynamics.registry import build_model, model_config, model_names
    from worlds.dataset import action_spec_of, obs_spec_of
    from worlds.policies import policy_names

    if cfg.data.policy not in policy_names():
        raise ConfigError(f"data.policy: unknown policy {cfg.data.policy!r}; known: {', '.join(policy_names())}")
    if cfg.dynamics.accelerator not in ACCELERATORS:
        raise ConfigError(f"dynamics.accelerator must be one of {', '.join(ACCELERATORS)}, got {cfg.dynamics.accelerator!r}")
    entry = get_world(cfg.world.name)
    params = cfg.world_params()
    held_out = set(getattr(params, "families", ()) or ()) & set(entry.cls.ood_families)
    if held_out and cfg.data.ood_episodes:
        raise ConfigError(f"world.families includes the held-out family {sorted(held_out)}; drop it, or set "
                          "data.ood_episodes=0 if no out-of-distribution split is wanted")
    if cfg.dynamics.model not in model_names():
        raise ConfigError(f"dynamics: unknown dynamics model {cfg.dynamics.model!r}; known models: {', '.join(model_names())}")
    try:
        model_config(cfg.dynamics.model, **cfg.dynamics.hparams)
    except (TypeError, ValueError) as e:  # names the hparam and what it must be
        raise ConfigError(f"dynamics.hparams: {e}") from None
    if cfg.plan.reward.strip():  # names and types of the reward against this world's concepts
        from rewards import RewardError, RewardSpec

        try:
            RewardSpec(cfg.plan.reward, tuple(cfg.plan.constraints)).check(entry.cls(num_envs=1, params=params, seed=0).schema)
        except RewardError as e:
            raise ConfigError(f"plan.reward: {e}") from None
    if cfg.verify.enabled:
        cfg.verify.for_world(cfg.world.name).check_world(entry.cls(num_envs=1, params=params, seed=0).schema)
    if cfg.probes.sites or cfg.probes.concepts:
        world = entry.cls(num_envs=1, params=params, seed=0)
        bad = [c for c in cfg.probes.concepts if c not in world.schema]
        if bad:
            raise ConfigError(f"probes.concepts: unknown concept(s) {bad}; this world's concepts are: {', '.join(world.schema.names)}")
        model = build_model(cfg.dynamics.model, ObsSpec.from_manifest(obs_spec_of(world)),
                            ActionSpec.from_manifest(action_spec_of(world)), **cfg.dynamics.hparams)
        bad = [s for s in cfg.probes.sites if s not in model.sites]
        if bad:
            raise ConfigError(f"probes.sites: model {cfg.dynamics.model!r} has no site(s) {bad}; its sites are: {', '.join(model.sites)}")


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for config objects."""
    return dataclasses.replace(cfg, **changes)

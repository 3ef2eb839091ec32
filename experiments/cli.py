"""The ``ontolab`` command.

    ontolab worlds                                   list worlds, their concepts and parameters
    ontolab collect [CONFIG] [key=value ...]         collect a trajectory dataset
    ontolab train [CONFIG] [key=value ...]           train a dynamics model on a dataset
    ontolab probe [CONFIG] data=PATH checkpoint=PATH out=PATH   fit and score probes (the probe stage alone)
    ontolab plan [CONFIG] run=RUN_DIR                 plan in the real world (the planning stage alone)
    ontolab verify [CONFIG] run=RUN_DIR [out=DIR]     model-check the planner with Storm (the verify stage alone)
    ontolab run [CONFIG] [key=value ...]             the whole pipeline into one run folder
    ontolab quickstart [key=value ...]               ``run`` with the default config
    ontolab sweep [CONFIG] seeds=[0,1] key=[a,b] ... a grid of runs, aggregated over seeds
    ontolab compare RUN_DIR [RUN_DIR ...] [out=DIR] [wandb.mode=offline|online|disabled] [wandb.project=NAME]
                                                     compare finished run or probe folders (leaderboards, plots, wandb)
    ontolab COMMAND --help                           the command's usage (and config keys); also -h

A problem with the user's input (an :class:`~worlds.errors.OntolabError`) is printed as one line
and the command exits with code 2, without a traceback and before any output is touched. Set
``ONTOLAB_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from experiments.config import ConfigError, help_lines
from experiments.schema import CONFIG_DIR, RunConfig, resolve
from worlds.errors import OntolabError

EXIT_USAGE = 2
HELP_FLAGS = ("-h", "--help")
NO_CONFIG_KEYS = ("worlds", "compare")
"""Commands that read no config (their ``--help`` lists no config keys)."""


def _split_args(rest: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] key=value ...`` -> (config file or None, overrides)."""
    if rest and "=" not in rest[0]:
        name = rest[0]
        path = Path(name)
        if not path.exists() and (CONFIG_DIR / f"{name}.yaml").exists():
            path = CONFIG_DIR / f"{name}.yaml"
        return str(path), rest[1:]
    return None, rest


def pin_threads(cfg: RunConfig) -> None:
    """One torch thread per usable core (oversubscribed threads made small models 7-44x slower)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cfg.threads or cores)


def cmd_worlds(args: list[str]) -> int:
    from worlds.registry import get_world, world_names
    import dataclasses

    if args:
        raise ConfigError(f"`ontolab worlds` takes no arguments, got {' '.join(args)}")
    for name in world_names():
        entry = get_world(name)
        world = entry.cls(num_envs=1, params=entry.params_cls(), seed=0)
        print(f"{name}: families {', '.join(entry.cls.families)} (held out: {', '.join(entry.cls.ood_families) or 'none'})")
        for c in world.schema:
            extra = f" [{c.low}, {c.high}] {c.unit}" if c.kind == "scalar" else (f" {list(c.classes)}" if c.classes else "")
            print(f"    {c.name:<16} {c.kind:<11}{extra}  {c.description}")
        params = ", ".join(f"{f.name}" for f in dataclasses.fields(entry.params_cls))
        print(f"    parameters (world.KEY=VALUE): {params}")
    return 0


def cmd_collect(args: list[str]) -> int:
    from experiments.stages.collect import run_collect

    config_file, overrides = _split_args(args)
    cfg = resolve(overrides, config_file)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out!r} is a file; give a folder path for the dataset")
    from experiments.report import print_collect_report

    report = run_collect(cfg, out)
    print_collect_report(report)
    print(f"dataset written to {out}")
    return 0


def cmd_train(args: list[str]) -> int:
    from experiments.stages.train import run_train

    config_file, overrides = _split_args(args)
    cfg = resolve(overrides, config_file)
    pin_threads(cfg)
    if not cfg.data.path:
        raise ConfigError("`ontolab train` needs a dataset: data=PATH (made by `ontolab collect`)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out!r} is a file; give a folder for the checkpoints")
    from experiments.stages.inputs import dataset_of

    result = run_train(cfg, dataset_of(Path(cfg.data.path).expanduser()), out)  # RUN/data names its dataset/
    if result.is_global_zero:  # not once per DDP process
        print(f"checkpoints and metrics.json in {out} (val loss {result.val_loss:.4g})")
    return 0


def cmd_run(args: list[str], default_config: str | None = None) -> int:
    from experiments.pipeline import run_pipeline
    from experiments.report import print_summary

    config_file, overrides = _split_args(args)
    if config_file is None and default_config is not None:
        config_file = str(CONFIG_DIR / f"{default_config}.yaml")
    cfg = resolve(overrides, config_file)
    pin_threads(cfg)
    result = run_pipeline(cfg)
    if not result.worker:  # a DDP helper process prints nothing
        print_summary(result.summary, result.out)
    return 0


def cmd_quickstart(args: list[str]) -> int:
    if args and "=" not in args[0]:
        raise ConfigError(f"`ontolab quickstart` takes only key=value overrides, got {args[0]!r}; use `ontolab run CONFIG` for a config file")
    return cmd_run(args, default_config="quickstart")


def _stage_command(module: str, name: str):
    """``cmd_<stage>`` of ``experiments.stages.<stage>``, imported only when the command runs (fast ``--help``)."""
    def run(args: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)
    run.__name__ = name
    return run


def cmd_sweep(args: list[str]) -> int:
    from experiments.sweep import cmd_sweep as sweep

    return sweep(args)


def cmd_compare(args: list[str]) -> int:
    from experiments.compare import cmd_compare as compare

    return compare(args)


COMMANDS = {
    "worlds": (cmd_worlds, "list worlds, their concepts and parameters"),
    "collect": (cmd_collect, "collect a trajectory dataset: ontolab collect world=lavakeydoor episodes=2000 out=PATH"),
    "train": (cmd_train, "train a dynamics model: ontolab train dynamics=rssm data=PATH out=PATH"),
    "probe": (_stage_command("experiments.stages.commands", "cmd_probe"),
              "fit and compare probes on a dataset + trained model: ontolab probe data=PATH checkpoint=PATH out=PATH"),
    "plan": (_stage_command("experiments.stages.commands", "cmd_plan"),
             "plan in the real world: ontolab plan run=RUN_DIR, or checkpoint=PATH ontology=PATH out=PATH"),
    "verify": (_stage_command("experiments.stages.commands", "cmd_verify"),
               "model-check the learned model + probes with Storm: ontolab verify run=RUN_DIR [out=DIR] (out= is needed when the run has its own verify stage)"),
    "run": (cmd_run, "the whole pipeline into one run folder: ontolab run [CONFIG] [key=value ...]"),
    "quickstart": (cmd_quickstart, "`run` with the default config at a ~5 minute budget"),
    "sweep": (cmd_sweep, "a grid of runs aggregated over seeds: ontolab sweep [CONFIG] seeds=[0,1,2] dynamics.lr=[0.001,0.003] "
                         "(a list given to a key that takes a list is its value: sweep it as key=[[a],[b]])"),
    "compare": (cmd_compare, "compare finished runs (or `ontolab probe` folders): ontolab compare RUN_DIR [RUN_DIR ...] "
                             "[out=DIR] [wandb.mode=offline|online|disabled]"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ontolab",
        description="ontology identification in predictive dynamics networks",
        epilog="config keys (key=value):\n" + "\n".join(help_lines(RunConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    p.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG.yaml] key=value overrides")
    return p


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise _UsageError(message)


def command_help(name: str) -> str:
    """``ontolab NAME --help``: the command's lines of this module's docstring, its description and, for a command
    that reads a config, every config key."""
    doc = (__doc__ or "").splitlines()
    start = next((i for i, line in enumerate(doc) if line.strip().startswith(f"ontolab {name} ")), None)
    usage = [f"ontolab {name} ..."] if start is None else [doc[start]] + [
        line for line in doc[start + 1:start + 2] if line.startswith(" " * 20) and line.strip()]  # a continued line
    lines = ["usage:", *usage, "", COMMANDS[name][1]]
    if name not in NO_CONFIG_KEYS:
        lines += ["", "config keys (key=value):", *help_lines(RunConfig)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_MODE", "offline")
    parser = _parser()
    parser.__class__ = _Parser
    try:
        ns = parser.parse_args(argv)
        if any(a in HELP_FLAGS for a in ns.args):  # before the command reads ``--help`` as a path or a config file
            print(command_help(ns.command))
            return 0
        return COMMANDS[ns.command][0](ns.args)
    except (_UsageError, OntolabError) as e:
        if os.environ.get("ONTOLAB_DEBUG"):
            raise
        msg = " ".join(str(e).split("\n"))
        print(f"ontolab: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # disk full, read-only folder, ...: name the path, keep the one-line promise
        if os.environ.get("ONTOLAB_DEBUG"):
            raise
        where = f" {e.filename!r}" if e.filename else ""
        print(f"ontolab: error: cannot access{where}: {e.strerror or e}; earlier outputs are unchanged", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ontolab: interrupted; finished stages are kept and a rerun resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

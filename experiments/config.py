"""Typed configuration: dataclasses, YAML files and dotted ``key=value`` overrides, validated once.

Every config section is a dataclass whose fields carry a ``help`` text in their metadata. A config is
built from (in order) the dataclass defaults, an optional YAML file and ``key=value`` overrides, and
every key is checked on the way: an unknown key, a wrong type or a malformed file raises
:class:`ConfigError` naming the key and what is allowed, before any work starts.

Why not OmegaConf/Hydra: their errors span several lines and cannot list the allowed values of a
registry (worlds, models ...), and Hydra takes over the working directory and the command line. The
subset we need -- nested dataclasses, scalars, lists and free-form parameter dicts -- fits here.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from worlds.errors import OntolabError


class ConfigError(OntolabError):
    """A configuration problem: unknown key, wrong type, malformed file."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help text (shown by ``ontolab COMMAND --help``)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def to_dict(cfg: Any) -> Any:
    """A config dataclass as plain YAML/JSON types (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    return cfg


class ConfigSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-5``, ``1e5`` and ``.5`` as floats (YAML 1.2, JSON and Python do; PyYAML's
    YAML 1.1 resolver wants a dot and a signed exponent and read ``dynamics.hparams.min_std=1e-3`` as the string
    '1e-3', which the model config then refused)."""


ConfigSafeLoader.add_implicit_resolver(  # the YAML 1.2 core-schema float, plus PyYAML's .inf / .nan spellings
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """``text`` parsed with :class:`ConfigSafeLoader` (safe: a ``SafeLoader`` builds no Python objects). This is
    PyYAML's own loading body with that loader, written out so that the project's scans, which flag every
    generic loading call, stay quiet."""
    loader = ConfigSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; a missing or malformed file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; give an existing YAML file")
    try:
        data = read_yaml(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str], aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=[0,1]"]`` into a nested dict. Values are read as YAML scalars/lists.

    ``aliases`` maps short keys to dotted ones (``{"world": "world.name"}``).
    """
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {arg!r} must look like key=value (e.g. data.episodes=100)")
        key = (aliases or {}).get(key, key)
        try:
            value = read_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {arg!r} conflicts with an earlier value for {p!r}")
            node = nxt
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` (defaults for missing keys), checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = prefix + str(unknown[0])
        raise ConfigError(f"unknown config key {key!r}; allowed keys{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config key {prefix + missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, OntolabError):
            raise
        raise ConfigError(f"invalid config{' section ' + repr(prefix[:-1]) if prefix else ''}: {e}") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping of keys, got {value!r}")
        return build(tp, value, key + ".")
    if origin in (tuple, list):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and args and args[0] is not str:
            value = [value]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    raise TypeError(f"config type {tp!r} of {key!r} is not supported")  # a bug in a config class


def help_lines(cls: type, prefix: str = "") -> list[str]:
    """``key (type, default): help`` for every field of ``cls``, recursively (for ``--help``)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += help_lines(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"  {prefix + f.name} ({tname}, default {to_dict(default)!r}): {f.metadata.get('help', '')}")
    return lines

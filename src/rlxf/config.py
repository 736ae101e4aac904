"""Typed configs: one dataclass per command is the YAML schema, the CLI and the help.

A config is a (nested) ``@dataclass`` whose fields carry a one-line docstring right
under them, as in cleanrl's ``Args``. From it we get, with no second declaration:

- ``load_config(Cls, "x.yaml", ["train.lr=1e-4", "out=runs/a"])`` → a validated ``Cls``
  (YAML file first, then ``dotted.key=value`` overrides; values parse as YAML scalars);
- unknown keys and wrong types rejected with the closest valid key suggested;
- a list key given one value takes it as a one-item list (``runs=DIR`` is ``runs=[DIR]``);
- ``validate()`` on every (nested) config for cross-field rules, run before any work;
- ``to_dict(cfg)`` → the resolved config saved as ``config.yaml`` in the run;
- ``help_text(Cls)`` → every key with its type, default and docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import difflib
import inspect
import math
import re
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlxf.errors import ConfigError, RlxfError

C = TypeVar("C")

# YAML 1.1 reads these words as booleans
_YAML_BOOL_WORDS = {False: {"no", "off", "false", "n"}, True: {"yes", "on", "true", "y"}}


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] = ()) -> C:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides, then validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    overridden: set[str] = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, value = key.strip(), value.strip()
        text = _text_type(cls, key)
        quoted = len(value) > 1 and value[0] in "'\"" and value[-1] == value[0]
        if text is None or quoted or (text.endswith("list") and value.startswith("[")):
            parsed = _parse_scalar(value)  # YAML, or a quoted text
        elif text.startswith("optional") and value in ("null", "~", "Null", "NULL"):
            parsed = None
        else:  # a text key takes the value as written; a list of texts one value as a list of it
            parsed = [value] if text.endswith("list") else value
        _set_dotted(raw, key, parsed)
        overridden.add(key)
    try:
        return from_dict(cls, raw)
    except ConfigError as err:
        # a key the file set (not a key=value after it) is named with the file it is in
        named = re.search(r"(?:config key|unknown config key) '([^'\[]+)", str(err))
        if path is not None and named and named.group(1) not in overridden:
            raise ConfigError(f"{path}: {err}") from None
        raise


def _text_type(cls: type, dotted: str) -> str | None:
    """``"text"`` when the key ``dotted`` of ``cls`` holds ``str`` (or one of a ``Literal``
    of texts), ``"optional"`` for ``str | None``, ``"list"`` for ``list[str]``,
    ``"optional list"`` for ``list[str] | None``, else ``None``. A text key's value on the
    command line is taken as written, not as YAML, which would read ``out=0123`` as the
    number 83, ``out=1.10`` as 1.1, ``revision=2024-06-01`` as a date, ``mixed_precision=yes``
    as true and ``stop=Human:`` as a mapping; a list of texts takes one such value (a
    value in brackets is a YAML list)."""
    *parents, last = dotted.split(".")
    for part in [*parents, last]:
        if not dataclasses.is_dataclass(cls) or part not in {f.name for f in dataclasses.fields(cls)}:
            return None
        cls = _resolved_types(cls)[part]
    optional = typing.get_origin(cls) in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls)
    if optional:
        rest = [a for a in typing.get_args(cls) if a is not type(None)]
        cls = rest[0] if len(rest) == 1 else None
    if cls is str or (typing.get_origin(cls) is typing.Literal and all(isinstance(c, str)
                                                                       for c in typing.get_args(cls))):
        return "optional" if optional else "text"
    if typing.get_origin(cls) is list and typing.get_args(cls) == (str,):
        return "optional list" if optional else "list"
    return None


def from_dict(cls: type[C], raw: dict[str, Any], where: str = "") -> C:
    """Build and validate ``cls`` from plain data, rejecting unknown keys."""
    cfg = _build(cls, raw, where)
    validate_all(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what ``config.yaml`` holds)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate_all(cfg: Any, where: str = "") -> None:
    """Run ``validate()`` of every nested config, innermost first."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_all(value, f"{where}{f.name}.")
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError as err:
            raise ConfigError(_keyed(str(err), where)) from None


def _keyed(message: str, where: str) -> str:
    """``message`` of the config at dotted path ``where`` ('model.lora.'), naming its keys in
    full: 'lora.r must be ≥ 1' -> 'model.lora.r must be ≥ 1'; a message that names no key
    of its section gets the section in front: 'reward: set exactly one of ...'."""
    if not where or message.startswith(where):
        return message
    section = where.rstrip(".").rsplit(".", 1)[-1] + "."  # 'lora.'
    if message.startswith(section):
        return where[:-len(section)] + message
    return f"{where.rstrip('.')}: {message}"


def help_text(cls: type, prefix: str = "") -> str:
    """One line per key: ``dotted.key (type, default): docstring``; a section's own keys
    first, then its sections, each under its heading (so no key reads as a section's)."""
    lines, sections = [], []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _resolved_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            sections += [f"{prefix}{f.name}: {docs.get(f.name, '')}".rstrip(": "), help_text(tp, f"{prefix}{f.name}.")]
            continue
        default = _default_of(f)
        shown = "required" if default is dataclasses.MISSING else f"default {default!r}"
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, {shown})\n      {docs.get(f.name, '')}")
    return "\n".join(lines + sections)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field in the class body (PEP 257 attribute
    docstrings), inherited ones included; a subclass's own docstring wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def import_target(target: str) -> Any:
    """The object a ``'module:name'`` config value names (reward functions, scorers)."""
    import importlib

    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import '{target}': {err}") from None


def import_scorer(target: str, key: str):
    """The scoring function ``fn(prompts, answers, ended) -> list[float]`` that config key
    ``key`` names as ``'module:function'`` (a reward function, a tracked or gold score),
    wrapped so that its failure, or a result of the wrong length, is an error naming
    ``key`` instead of a traceback from deep inside training (``--verbose`` logs it)."""
    import logging

    fn = import_target(target)
    if not callable(fn):
        raise ConfigError(f"{key}: '{target}' is not a function")

    def scored(prompts, answers, ended):
        try:
            out = list(fn(prompts, answers, ended))
        except Exception as err:
            logging.getLogger("rlxf").debug("%s ('%s') failed", key, target, exc_info=True)
            raise RlxfError(f"{key} ('{target}') failed on these answers: {type(err).__name__}: {err} "
                            "(--verbose shows where)") from err
        if len(out) != len(answers):
            raise RlxfError(f"{key} ('{target}') returned {len(out)} scores for {len(answers)} answers")
        return out

    return scored


# ----------------------------------------------------------------------------- internals


@cache
def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return to_dict(value) if dataclasses.is_dataclass(value) else value
    return dataclasses.MISSING


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
    _check_keys(cls, raw, where)
    kwargs = {}
    hints = _resolved_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], tp, f"{where}{f.name}")
        elif dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            kwargs[f.name] = _build(tp, {}, f"{where}{f.name}.")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            doc = field_docs(cls).get(f.name, "no description")
            if dataclasses.is_dataclass(tp):
                doc = f"{doc.rstrip('.')}; a section: set its keys as {where}{f.name}.KEY=VALUE"
            raise ConfigError(f"missing required config key '{where}{f.name}' ({doc})")
    return cls(**kwargs)


def _check_keys(cls: type, raw: dict, where: str) -> None:
    """Refuse a key ``cls`` lacks, here or in any nested section of ``raw``: a misspelt key
    is named (with the key it may have meant) before a missing one is asked for."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{where}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{where}{key}'{hint}")
    hints = _resolved_types(cls)
    for name, value in raw.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            _check_keys(hints[name], value, f"{where}{name}.")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting only where lossless."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and value not in choices:
            # YAML 1.1 reads no/off/yes/on as booleans: take the choice the user wrote
            spelled = [c for c in choices if isinstance(c, str) and c.lower() in _YAML_BOOL_WORDS[value]]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin is list and isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
        value = [value]  # one value where a list goes: `runs=DIR` on the command line is `runs=[DIR]`
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        args = typing.get_args(tp) or (Any,)
        if origin is tuple and Ellipsis not in args:  # a fixed-length tuple: one type per place
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}' must be a list of {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    if tp is str and isinstance(value, datetime.date):
        return value.isoformat()  # YAML reads 2024-06-01 as a date
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a run name like 2024 or a dtype like 16
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + "/".join(map(str, typing.get_args(tp)))
    if origin in (list, tuple):
        return f"list of {_type_name((typing.get_args(tp) or (Any,))[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[last] = value

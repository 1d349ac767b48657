"""TOML files -> frozen dataclasses, validated with precise messages.

Each component declares its schema as frozen dataclasses whose fields are made with
:func:`option` (default, help text, bounds, choices): defaults are defined once, there.
:func:`load_config` reads a file and :func:`from_dict` converts a table; unknown keys, wrong
types and out-of-range values are all collected and reported together, one sentence each,
naming the file, the key and what was expected. A schema may add cross-field checks with a
``problems(self) -> list[str]`` method. Relative paths are resolved against the file's folder,
except a named resource of the form ``scheme:name`` (e.g. ``builtin:cifar10-public``), which is
kept as written for the component that reads it; a :class:`DataSpec` field's relative path too
(``npz:site/train.npz``), its ``builtin:`` names kept. :func:`to_toml` and :func:`write_config` go the
other way, so configs built in code (the demo, the tests, the benchmarks) are written as the same
TOML a person would write.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from latentfl.durable import write_atomic
from latentfl.errors import ConfigError

T = TypeVar("T")
_MISSING = dataclasses.MISSING
_NAMED = re.compile(r"[a-z][a-z0-9_-]+:[^/\\]")  # 'builtin:NAME', not 'C:\\' nor 'dir/a:b'


class DataSpec(str):
    """A dataset spec field (``imagefolder:PATH``, ``npz:PATH``, ``cifar10:PATH``) whose
    relative PATH is resolved against the config file's folder, like a Path field; a
    ``builtin:NAME`` spec is kept as written."""


def _resolve_spec(value: str, base_dir: Path | None) -> str:
    scheme, sep, target = value.partition(":")
    if not sep or scheme == "builtin" or not target or base_dir is None:
        return value  # a malformed spec is left for the loader to name
    path = Path(target).expanduser()
    return value if path.is_absolute() else f"{scheme}:{base_dir / path}"


def option(
    default: Any = _MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
) -> Any:
    """A config field: its default, a help sentence for the docs, and optional bounds."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}
    if isinstance(default, (dict, list)):  # mutable defaults are copied per instance
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_config(path: str | Path, schema: type[T], *, overrides: Sequence[str] = ()) -> T:
    """Read the TOML file at ``path`` into ``schema``; raise ConfigError naming every problem.

    ``overrides`` are ``dotted.key=VALUE`` assignments applied over the file before it is checked
    (a command line's ``--set``): VALUE is read as a TOML value (``2``, ``[0.1]``, ``"x"``) and
    as a plain string when it is not one; relative paths in it are relative to the file's folder,
    as in the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; expected a TOML file.") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from None
    for assignment in overrides:
        _apply_override(data, assignment)
    return from_dict(schema, data, source=str(path), base_dir=path.parent)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    names = key.strip().split(".")
    if not sep or not all(names):
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE; expected a dotted key and "
                          "a TOML value, e.g. simulation.rounds=2.")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare string such as imagefolder:data/x.tar.gz
    table = data
    for depth, name in enumerate(names[:-1]):
        table = table.setdefault(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(names[:depth + 1])} is a "
                              "value, not a table; expected a key path through tables.")
    table[names[-1]] = value


def from_dict(
    schema: type[T], data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> T:
    """Convert a parsed TOML table into ``schema``; raise ConfigError listing every problem."""
    problems: list[str] = []
    value = _convert_dataclass(schema, data, "", problems, base_dir)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return value


def to_dict(obj: Any) -> Any:
    """The TOML-shaped dict of a config object (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def to_toml(obj: Any, *, comment: str | None = None) -> str:
    """TOML text of a config object (or a TOML-shaped dict) that :func:`from_dict` reads back.

    Unset optional fields (None) are left out, so they take their defaults when read.
    """
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    _toml_table(to_dict(obj), [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(path: str | Path, obj: Any, *, comment: str | None = None) -> Path:
    """Write ``obj`` as TOML to ``path`` (atomically); return the path."""
    path = Path(path)
    write_atomic(path, to_toml(obj, comment=comment))
    return path


def _toml_table(table: dict[str, Any], where: list[str], lines: list[str]) -> None:
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    for key, value in table.items():
        if key not in subtables:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables.items():
        path = [*where, key]
        lines += ["", f"[{'.'.join(_toml_key(k) for k in path)}]"]
        _toml_table(value, path, lines)


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # a JSON string with ASCII escapes is a TOML basic string
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"config value {value!r} of type {type(value).__name__} has no TOML form")


def _convert_dataclass(schema, data, where, problems, base_dir):
    section = f"[{where}]" if where else "the top level"
    if not isinstance(data, dict):
        problems.append(f"{where} must be a table, got {type(data).__name__} {data!r}.")
        return None
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"unknown key '{key}' in {section}; expected one of: {known}.")
    kwargs = {}
    n_before = len(problems)
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                if dataclasses.is_dataclass(hints[name]):
                    kwargs[name] = _convert_dataclass(hints[name], {}, key, problems, base_dir)
                else:
                    problems.append(f"missing required key '{key}' ({f.metadata.get('help', '')}).")
            continue
        value = _convert(hints[name], data[name], key, problems, base_dir)
        if value is not None:
            _check_bounds(f, key, value, problems)
        kwargs[name] = value
    if len(problems) > n_before:
        return None
    obj = schema(**kwargs)
    check = getattr(obj, "problems", None)
    if callable(check):
        problems.extend(check())
    return obj


def _convert(tp, value, key, problems, base_dir):
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _convert(inner[0] if len(inner) == 1 else inner, value, key, problems, base_dir)
    if isinstance(tp, list):  # a union of several non-None types: first that converts
        for candidate in tp:
            trial: list[str] = []
            out = _convert(candidate, value, key, trial, base_dir)
            if not trial:
                return out
        problems.append(f"'{key}' = {value!r} has the wrong type.")
        return None
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, key, problems, base_dir)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if value not in {m.value for m in tp}:
            expected = " | ".join(repr(m.value) for m in tp)
            problems.append(f"'{key}' = {value!r}; expected one of {expected}.")
            return None
        return tp(value)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            expected = " | ".join(repr(c) for c in choices)
            problems.append(f"'{key}' = {value!r}; expected one of {expected}.")
            return None
        return value
    if origin in (tuple, list):
        args = get_args(tp)
        if not isinstance(value, list):
            problems.append(f"'{key}' = {value!r}; expected a list.")
            return None
        item_tp = args[0] if args else Any
        items = [
            _convert(item_tp, v, f"{key}[{i}]", problems, base_dir) for i, v in enumerate(value)
        ]
        return tuple(items)
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"'{key}' = {value!r}; expected a table.")
            return None
        return {k: _convert(val_tp, v, f"{key}.{k}", problems, base_dir) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"'{key}' = {value!r}; expected true or false.")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"'{key}' = {value!r}; expected an integer.")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"'{key}' = {value!r}; expected a number.")
            return None
        return float(value)
    if tp is str or tp is DataSpec:
        if not isinstance(value, str):
            problems.append(f"'{key}' = {value!r}; expected a string.")
            return None
        return _resolve_spec(value, base_dir) if tp is DataSpec else value
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"'{key}' = {value!r}; expected a path string.")
            return None
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute() and not _NAMED.match(value):
            path = base_dir / path
        return path
    raise TypeError(f"config schema type {tp!r} for '{key}' is not supported")


def _check_bounds(f: dataclasses.Field, key: str, value: Any, problems: list[str]) -> None:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if lo is not None:
        if f.metadata.get("min_exclusive") and not value > lo:
            problems.append(f"'{key}' = {value!r}; expected a value > {lo}.")
        elif value < lo:
            problems.append(f"'{key}' = {value!r}; expected a value >= {lo}.")
    if hi is not None and value > hi:
        problems.append(f"'{key}' = {value!r}; expected a value <= {hi}.")


def _optional_section(tp: Any) -> type | None:
    """``S`` for a field typed ``S | None`` with ``S`` a dataclass (a section that may be
    absent), else None."""
    if get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    inner = [a for a in get_args(tp) if a is not type(None)]
    return inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None


def describe(schema: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for every option of ``schema``: the docs' source."""
    rows = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        section = _optional_section(tp)
        if section is not None:  # an optional section: its keys, present or not
            rows.extend(describe(section, prefix=f"{key}."))
            continue
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix=f"{key}."))
            continue
        if f.default is not _MISSING:
            default = repr(to_dict(f.default))
        elif f.default_factory is not _MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
    return rows


def _type_name(tp: Any) -> str:
    """How the docs spell a field's type (an enum as the literal values a file may hold)."""
    if tp is DataSpec:  # a string to whoever writes the file
        return "str"
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "Literal[" + ", ".join(repr(m.value) for m in tp) + "]"
    if get_origin(tp) in (tuple, list):
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in get_args(tp))
        return f"{get_origin(tp).__name__}[{args}]"
    name = tp.__name__ if isinstance(tp, type) else str(tp)
    return name.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")


__all__ = ["DataSpec", "describe", "from_dict", "load_config", "option", "to_dict", "to_toml", "write_config"]

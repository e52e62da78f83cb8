"""
Strict configuration for the scripts: defaults come from a dataclass, then each command-line
argument is applied in order, either a Python config file or `--key=value`:

    python train.py config/train_qazdata_char.py --batch_size=32 --compile=False

A config file is plain Python; its top-level names are the overrides (names starting with '_',
modules, functions and classes are ignored). It runs with the full rights of the user, as
nanoGPT's do: only run config files you trust. `--key=value` values are read as Python literals,
except for text keys, which take the text as it is; a bare `--flag` sets a bool key to True.

Strict: an unknown key is an error naming the closest known one, a value of the wrong type is an
error, and so is a value outside the bounds or choices that the dataclass declares beside the key
with `setting(...)`. All three are checked here, once, for every script. `--help` prints the
script's description and every key with its default.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from kazgpt.cli import UserError, bounds_text, check_value, closest, print0

Config = TypeVar("Config")


def setting(default: Any, *, min: Optional[float] = None, max: Optional[float] = None,
            above: Optional[float] = None, below: Optional[float] = None,
            choices: Optional[Sequence[Any]] = None) -> Any:
    """A config field with its bounds (min/max inclusive, above/below exclusive) or its choices."""
    bounds = {k: v for k, v in dict(min=min, above=above, max=max, below=below, choices=choices).items()
              if v is not None}
    return dataclasses.field(default=default, metadata=bounds)


def _allowed_types(annotation: Any) -> tuple[set[type], bool]:
    """The value types a field accepts, and whether it accepts None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {a for a in args if a is not type(None)}, type(None) in args
    return {annotation}, False


def coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """The value converted to the field's type, or a UserError saying what was expected."""
    allowed, nullable = _allowed_types(annotation)
    if (value is None or value == "None") and nullable:
        return None
    if bool in allowed:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # True is an int to Python, never to a config
    elif int in allowed and isinstance(value, int):
        return value
    elif float in allowed and isinstance(value, (int, float)):
        return float(value)
    elif str in allowed and isinstance(value, str):
        return value
    expected = " or ".join(sorted(t.__name__ for t in allowed) + (["None"] if nullable else []))
    raise UserError(f"{key} must be {expected}, got {value!r} from {source}")


def check_bounds(config: Config) -> Config:
    """Every value against the bounds or choices its field declares (None passes: it means 'the
    default'); the config itself, checked."""
    for f in dataclasses.fields(config):
        if f.metadata and getattr(config, f.name) is not None:
            check_value(f.name, getattr(config, f.name), dict(f.metadata))
    return config


def parse_cli_value(raw: str, annotation: Any) -> Any:
    """A --key=value value: a Python literal, or the raw text where the key takes text."""
    allowed, _ = _allowed_types(annotation)
    if str in allowed and raw != "None":
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def read_config_file(path: str) -> dict[str, Any]:
    """The overrides a Python config file sets."""
    p = Path(path)
    if not p.is_file():
        hint = " (options are written --key=value)" if "=" in path else ""
        raise UserError(f"config file {path} does not exist{hint}")
    namespace: dict[str, Any] = {}
    try:
        exec(compile(p.read_text(encoding="utf-8"), str(p), "exec"), namespace)
    except Exception as e:
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def load_overrides(config_cls: type[Config], argv: list[str], verbose: bool = True) -> dict[str, Any]:
    """The values that the config files and --key=value flags of argv set, type-checked."""
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    if any(arg in ("-h", "--help") for arg in argv):
        print0(help_text(config_cls))
        raise SystemExit(0)

    def apply(key: str, value: Any, source: str) -> None:
        if key not in hints:
            hint = closest(key, hints) or " (--help lists the keys)"
            raise UserError(f"unknown config key '{key}' in {source}{hint}")
        values[key] = coerce(key, value, hints[key], source)
        if verbose:
            print0(f"config: {key} = {values[key]!r} ({source})")

    for arg in argv:
        if arg.startswith("--"):
            key, sep, raw = arg[2:].partition("=")
            if not sep and hints.get(key) is bool:
                raw = "True"  # a bare --flag switches a bool on
            elif not sep and key in hints:
                raise UserError(f"option {arg} has no value: write --{key}=VALUE")
            apply(key, parse_cli_value(raw, hints[key]) if key in hints else raw, "the command line")
        else:
            for key, value in read_config_file(arg).items():
                apply(key, value, f"config file {arg}")
    return values


def load_config(config_cls: type[Config], argv: list[str], verbose: bool = True) -> Config:
    """An instance of config_cls with the config files and flags of argv applied, every value checked."""
    config = config_cls(**load_overrides(config_cls, argv, verbose))
    check_bounds(config)
    return config


def help_text(config_cls: type) -> str:
    """The running script's docstring, then config_cls's keys as --key=default with their comments."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    bounds = {f.name: f" [{bounds_text(f.metadata)}]" if f.metadata else "" for f in dataclasses.fields(config_cls)}
    script = Path(sys.argv[0])
    try:
        doc = (ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or "").strip()
    except (OSError, SyntaxError, ValueError):
        doc = ""
    lines = [doc, "", f"usage: python {script.name} [config_file.py ...] [--key=value ...]",
             "(later ones override earlier ones); the keys, with their defaults:"]
    for line in inspect.getsource(config_cls).splitlines():
        field = re.match(r"\s+(\w+):[^#]*(#.*)?$", line)
        if field and field.group(1) in defaults:
            key = field.group(1)
            lines.append(f"  --{key}={defaults[key]!r}{bounds[key]}  {field.group(2) or ''}".rstrip())
        elif line.strip().startswith("#"):
            lines.append(f"  {line.strip()}")
    return "\n".join(lines)


def config_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict (for checkpoints, logs and wandb)."""
    return dataclasses.asdict(config)

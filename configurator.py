"""
Strict configuration for the scripts: defaults come from a dataclass, then each command-line
argument is applied in order, either a Python config file or `--key=value`:

    python train.py config/train_qazdata_char.py --batch_size=32 --compile=False

A config file is plain Python; its top-level names are the overrides (names starting with '_',
modules, functions and classes are ignored, so a file may import and compute). It runs with the
full rights of the user who starts the script, as nanoGPT's do: only run config files you trust. Values given as
`--key=value` are read as Python literals, except for text keys, which take the text as it is.

Strict: an unknown key is an error naming the closest known one, and a value of the wrong type is
an error. An int is fine where a float is expected, true/false (any case) where a bool is, and
None where the key may be None; an int past 64 bits, or past a float's range where a float is
expected, is refused (no run can hold it). A bare `--flag` sets a bool key to True. `--help` (or `-h`)
prints the script's description and every key with its default, and exits.
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
from typing import Any, Optional, TypeVar

from kazgpt.cli import UserError, closest, not_a_file, print0, shown

Config = TypeVar("Config")


def _allowed_types(annotation: Any) -> tuple[set[type], bool]:
    """The value types a field accepts, and whether it accepts None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {a for a in args if a is not type(None)}, type(None) in args
    return {annotation}, False


def _type_name(allowed: set[type], nullable: bool) -> str:
    return " or ".join(sorted(t.__name__ for t in allowed) + (["None"] if nullable else []))


# torch and numpy hold integers in 64 bits: no count, size or seed goes beyond that
INT_LIMIT = 2**63 - 1


def _checked_int(key: str, value: int, source: str) -> int:
    if abs(value) > INT_LIMIT:
        raise UserError(f"{key} must be at most {INT_LIMIT:,} in size, got {shown(value)} from {source}")
    return value


def _as_float(key: str, value: int | float, source: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an int past float's range
        raise UserError(f"{key} is too large for a float (at most about 1.8e308), got {shown(value)} "
                        f"from {source}") from None


def coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """The value converted to the field's type, or a UserError saying what was expected."""
    allowed, nullable = _allowed_types(annotation)
    if value is None or (isinstance(value, str) and value == "None" and str not in allowed):
        if nullable:
            return None
    elif bool in allowed:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return _checked_int(key, value, source)
    elif float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _as_float(key, value, source)
    elif str in allowed and isinstance(value, str):
        return value
    raise UserError(f"{key} must be {_type_name(allowed, nullable)}, got {shown(value)} ({type(value).__name__}) "
                    f"from {source}")


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
    problem = not_a_file(p)
    if problem:
        hint = " (options are written --key=value)" if not path.startswith("-") and "=" in path else ""
        raise UserError(f"config file {path} {problem}{hint}")
    namespace: dict[str, Any] = {}
    try:
        exec(compile(p.read_text(encoding="utf-8"), str(p), "exec"), namespace)
    except (Exception, SystemExit) as e:  # a config file that exits has not configured anything
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def load_config(config_cls: type[Config], argv: list[str], verbose: bool = True,
                retired: Optional[dict[str, str]] = None) -> Config:
    """An instance of config_cls with the config files and --key=value overrides of argv applied.
    `retired` maps keys that are gone to what to use instead (for configs written for nanoGPT or an
    older version of this repo)."""
    return config_cls(**load_overrides(config_cls, argv, verbose, retired))


def load_overrides(config_cls: type[Config], argv: list[str], verbose: bool = True,
                   retired: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The values that the config files and --key=value flags of argv set, checked against
    config_cls (load_config's work, for a caller that needs to know which keys were given)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    if any(arg in ("-h", "--help") for arg in argv):
        print0(help_text(config_cls))
        raise SystemExit(0)

    def apply(key: str, value: Any, source: str, from_cli: bool) -> None:
        if key in (retired or {}):
            raise UserError(f"config key '{key}' in {source} is no longer used: {retired[key]}")
        if key not in fields:
            hint = closest(key, fields) or " (--help lists the keys)"
            raise UserError(f"unknown config key '{key}' in {source}{hint}")
        if from_cli:
            value = parse_cli_value(value, hints[key])
        values[key] = coerce(key, value, hints[key], source)
        if verbose:
            print0(f"config: {key} = {values[key]!r} ({source})")

    for arg in argv:
        if arg.startswith("--"):
            key, sep, raw = arg[2:].partition("=")
            if not sep and key in hints and hints[key] is bool:
                raw = "True"  # a bare --flag switches a bool on
            elif not sep and key in hints:
                raise UserError(f"option {arg} has no value: write --{key}=VALUE")
            apply(key, raw, "the command line", from_cli=True)
        else:
            for key, value in read_config_file(arg).items():
                apply(key, value, f"config file {arg}", from_cli=False)
    return values


def _script_docstring(script: Path) -> str:
    """The docstring of the script being run (read from its file), or '' where it cannot be read."""
    try:
        return (ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or "").strip()
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""


def help_text(config_cls: type) -> str:
    """The running script's docstring, then config_cls's keys as --key=default, in the class's order
    and with its comments (the lines of comment between keys, and each key's own)."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(config_cls)}
    try:
        source = inspect.getsource(config_cls).splitlines()
    except (OSError, TypeError):  # no source to read: the keys without their comments
        source = [f"    {name}:" for name in defaults]
    lines = [_script_docstring(Path(sys.argv[0])), "",
             f"usage: python {Path(sys.argv[0]).name} [config_file.py ...] [--key=value ...]",
             "(later ones override earlier ones); the keys, with their defaults:"]
    listed = set()
    for line in source:
        field = re.match(r"\s+(\w+):[^#]*(#.*)?$", line)
        if field and field.group(1) in defaults and field.group(1) not in listed:
            key, comment = field.group(1), field.group(2)
            lines.append(f"  --{key}={defaults[key]!r}" + (f"  {comment}" if comment else ""))
            listed.add(key)
        elif line.strip().startswith("#"):
            lines.append(f"  {line.strip()}")
    lines += [f"  --{key}={default!r}" for key, default in defaults.items() if key not in listed]  # lines not matched
    return "\n".join(lines)


def config_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict (for checkpoints, logs and wandb)."""
    return dataclasses.asdict(config)


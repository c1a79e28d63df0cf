"""`vae-train --config run.toml`: a run's settings in one file, flags on the command line win.

The file holds the long flag names as keys (`batch-size = 128` or `batch_size = 128`), flat, the
way they are typed. It is turned into command-line tokens placed before the real ones, so argparse
checks types and choices exactly as for flags, and a later flag overrides the file. What a run
finally used is written back as TOML (`OUT/config.toml`, also stored in the checkpoint), so
`vae-train --config OUT/config.toml` repeats it.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

NOT_CONFIG = ("config", "resume")  # how to run, not what to train


class ConfigError(ValueError):
    """A config file that cannot be read or names a setting vae-train does not have."""


def config_argv(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """The file's settings as flags: `key = true` -> `--key`, `false` -> nothing, a list -> the
    flag followed by each item, anything else -> the flag and its value."""
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    known = set(vars(parser.parse_args([]))) - set(NOT_CONFIG)
    tokens: list[str] = []
    for key, value in table.items():
        dest = key.replace("-", "_")
        if isinstance(value, dict):
            raise ConfigError(f"config {path}: {key!r} must be a value, not a table")
        if dest not in known:
            raise ConfigError(f"config {path}: unknown setting {key!r}")
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            tokens += [flag] if value else []
        elif isinstance(value, list):
            tokens += [flag, *map(str, value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting the run used (defaults, file and flags merged), as TOML-able values."""
    config = {}
    for dest, value in sorted(vars(args).items()):
        if dest in NOT_CONFIG or value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        config[dest.replace("_", "-")] = value
    return config


def to_toml(config: dict[str, Any]) -> str:
    """Flat key = value lines; strings are JSON-quoted, which TOML basic strings accept."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in config.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))

"""Loading the tree: YAML text, ``key.sub=value`` overrides, validation; every problem is one ConfigError line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sft_pipeline.config.checks import check_named_files
from sft_pipeline.config.pipeline import PipelineConfig
from sft_pipeline.config.tree import closest_key
from sft_pipeline.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-parsed value.

    >>> parse_override("train.max_steps=5")
    (['train', 'max_steps'], 5)
    >>> parse_override("model.name_or_path=org/model")
    (['model', 'name_or_path'], 'org/model')
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY.SUB=VALUE")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _first_leaf(value: Any) -> list[str]:
    """The key path to the first leaf of a mapping given under an unknown key (``{a: {b: 1}}`` -> a, b)."""
    path = []
    while isinstance(value, dict) and value:
        name, value = next(iter(value.items()))
        path.append(str(name))
    return path


def _format_error(err: ValidationError, origin: str) -> str:
    """The first validation error as one line: origin, dotted key, problem (and the closest key to an unknown one).

    >>> try:
    ...     PipelineConfig.model_validate({"ingest": {"sources": [{"path": "x"}]}, "trian": {"max_steps": 1}})
    ... except ValidationError as e:
    ...     print(_format_error(e, "c.yaml"))
    c.yaml: trian: unknown key (did you mean train.max_steps?)
    """
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        if suggestion := closest_key(".".join([where, *_first_leaf(first.get("input"))])):
            msg += f" (did you mean {suggestion}?)"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {where}: {msg}{extra}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config and apply ``key.sub=value`` overrides; raise ConfigError on any problem."""
    tree: dict = {}
    origin = str(path) if path else "<defaults>"
    if path is not None:
        try:
            tree = yaml.safe_load(read_config_text(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(tree, *parse_override(item))
    cfg = validate_config(tree, origin)
    check_named_files(cfg, origin)
    return cfg


def read_config_text(path: str | Path) -> str:
    """The config file's text; a missing, unreadable or non-UTF-8 file is one ConfigError line."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None


def validate_config(tree: dict, origin: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None

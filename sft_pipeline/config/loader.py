"""Loading the tree: YAML text, ``key.sub=value`` overrides, validation; every problem is one ConfigError line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sft_pipeline.config.checks import check_named_files
from sft_pipeline.config.pipeline import PipelineConfig
from sft_pipeline.config.tree import closest_key
from sft_pipeline.errors import ConfigError

log = logging.getLogger(__name__)
SENTINEL = "z9"  # appended to an override's text to tell whether a YAML comment swallowed its end


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping (YAML would silently keep the last)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    >>> yaml.load("a: 1\\nb: 2\\na: 3\\n", Loader=UniqueKeyLoader)
    Traceback (most recent call last):
    ...
    sft_pipeline.config.loader.DuplicateKey: duplicate key 'a' (lines 1 and 3)
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(f"duplicate key {key!r} (lines {seen[key]} and {line})")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                continue
        return super().construct_mapping(node, deep=deep)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-parsed value; what YAML cannot read, or would silently
    change (a ``#`` comment cutting the value, a lone ``~`` unsetting it), is one ConfigError line.

    >>> parse_override("train.max_steps=5")
    (['train', 'max_steps'], 5)
    >>> parse_override("model.name_or_path=org/model")
    (['model', 'name_or_path'], 'org/model')
    >>> parse_override("run.output_dir='/x/a #b'")
    (['run', 'output_dir'], '/x/a #b')
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected KEY.SUB=VALUE")
    if not raw.strip():
        return key.split("."), ""
    try:
        value = _yaml(raw)
    except yaml.YAMLError as exc:
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {key}: {raw!r} is not a YAML value ({why}); quote it to give it as text") from None
    if raw.strip() == "~":
        raise ConfigError(f"override {key}=~: YAML reads a lone ~ as null, which unsets {key}; write {key}=null to "
                          "unset it on purpose, or quote it ('~') to give it as text")
    if _cut_by_comment(raw, value):
        raise ConfigError(f"override {key}: in {raw!r} a ' #' starts a YAML comment, so it would read as "
                          f"{value!r}; quote the value to keep the '#'")
    if (read := _read_differently(raw, value)) is not None:
        log.warning("override %s=%s is read as %s", key, raw.strip(), read)
    return key.split("."), value


def _cut_by_comment(raw: str, value: Any) -> bool:
    """Whether a YAML comment ends ``raw``: text appended after it changes nothing.

    >>> _cut_by_comment("/x/a #b", "/x/a"), _cut_by_comment("/x/a#b", "/x/a#b"), _cut_by_comment("[1] # c", [1])
    (True, False, True)
    """
    try:
        return _yaml(raw + SENTINEL) == value
    except yaml.YAMLError:
        return False


def _read_differently(raw: str, value: Any) -> str | None:
    """How YAML read a scalar when that is not what was typed (``yes`` as true, ``010`` as 8), or None.

    >>> _read_differently("yes", True), _read_differently("010", 8), _read_differently("1.0e-3", 0.001)
    ('true (a boolean)', '8 (a number)', None)
    >>> _read_differently("'a b'", "a b"), _read_differently("null", None), _read_differently("[a]", ["a"])
    (None, None, None)
    """
    text = raw.strip()
    if isinstance(value, bool):
        return None if text.lower() in ("true", "false") else f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        try:
            same = float(text.replace("_", "")) == value
        except ValueError:
            same = False
        return None if same else f"{value!r} (a number)"
    if value is None:
        return None if text.lower() == "null" else "null (no value)"
    if isinstance(value, str) and value != text and not (text[:1] == text[-1:] and text[:1] in "'\""):
        return f"{value!r} (text)"
    return None


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
            tree = _yaml(read_config_text(path)) or {}
        except DuplicateKey as exc:
            raise ConfigError(f"{path}: {exc}; give each key once") from None
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

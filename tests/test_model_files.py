"""Where model files come from: packages that assemble their weights, and a model cache that repairs itself."""

from __future__ import annotations

import hashlib
import sys
import textwrap

import pytest

from sft_pipeline import model_files
from sft_pipeline.config import ModelConfig
from sft_pipeline.errors import InputError, VerificationError
from sft_pipeline.resources import CACHE_ENV, _distribution_packages

PAYLOAD = b"weights in two chunks"


def fake_package(site, name: str, declared: str, payload: bytes = PAYLOAD) -> None:
    """An installed distribution ``name`` whose assemble(path) writes ``payload`` and which declares ``declared``."""
    pkg = site / name
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "SHA256SUMS").write_text(f"{declared}  {name}.gguf\n")
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        MODEL_NAME = "{name}.gguf"
        def assemble(path):
            Path(path).write_bytes({payload!r})
            return Path(path)
    """))
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(name + "\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    _distribution_packages.cache_clear()
    yield folder
    _distribution_packages.cache_clear()
    for name in [m for m in sys.modules if m.startswith("fakeweights")]:
        del sys.modules[name]


def test_a_package_is_assembled_once_into_the_cache_and_digest_checked(site):
    fake_package(site, "fakeweights_ok", hashlib.sha256(PAYLOAD).hexdigest())
    path = model_files.assembled_file("package:fakeweights_ok", "fakeweights_ok")
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(model_files.models_dir())
    assert model_files.local_source("package:fakeweights_ok") == path  # the spec resolves to it
    stamp = path.stat().st_mtime_ns
    assert model_files.assembled_file("package:fakeweights_ok", "fakeweights_ok").stat().st_mtime_ns == stamp


def test_assembled_weights_that_do_not_match_the_declared_digest_are_refused_in_one_line(site):
    fake_package(site, "fakeweights_bad", "0" * 64)
    with pytest.raises(VerificationError, match=r"package:fakeweights_bad: assembled fakeweights_bad.gguf has "
                                                r"SHA-256 [0-9a-f]{16}\.\.\., the package declares 0{16}"):
        model_files.assembled_file("package:fakeweights_bad", "fakeweights_bad")
    assert not any(model_files.models_dir().rglob("*.gguf")), "nothing half-assembled is left to be served"


def test_a_package_with_neither_a_model_nor_an_assemble_step_is_one_line(site):
    fake_package(site, "fakeweights_none", "0" * 64)
    (site / "fakeweights_none" / "__init__.py").write_text("")
    with pytest.raises(InputError, match="neither a model folder"):
        model_files.local_source("package:fakeweights_none")


def test_a_damaged_model_cache_is_rebuilt_not_served(tmp_path, caplog):
    built = []

    def build(tmp):
        built.append(1)
        (tmp / "model.safetensors").write_bytes(b"x" * 1000)
        (tmp / "config.json").write_text("{}")

    folder = tmp_path / "models" / "m"
    model_files.cached_build(folder, build, "a model")
    model_files.cached_build(folder, build, "a model")
    assert len(built) == 1
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.truncate(10)
    caplog.set_level("WARNING")
    model_files.cached_build(folder, build, "a model")
    assert len(built) == 2 and (folder / "model.safetensors").stat().st_size == 1000
    assert "model.safetensors has 10 bytes, 1000 recorded; building it again" in caplog.text
    (folder / "config.json").write_text('{"edited": 1}')  # small files are digest-checked
    model_files.cached_build(folder, build, "a model")
    assert len(built) == 3


def test_a_model_id_that_cannot_be_loaded_is_one_line(monkeypatch):
    from sft_pipeline.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"^model nonexistent-org/nonexistent-model: cannot be loaded from the hub"):
        load_tokenizer(ModelConfig(name_or_path="nonexistent-org/nonexistent-model"))

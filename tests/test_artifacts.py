import pytest

from sft_pipeline.artifacts import code_version, path_digest, stage_key
from sft_pipeline.files import atomic_dir


def test_path_digest_is_content_based(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    b.parent.mkdir()
    a.write_text("same")
    b.write_text("same")
    assert path_digest(a) == path_digest(b)  # a path alone never changes a digest
    b.write_text("different")
    assert path_digest(a) != path_digest(b)


def test_directory_digest_tracks_names_and_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    before = path_digest(tmp_path / "d")
    (tmp_path / "d" / "y").write_text("2")
    assert path_digest(tmp_path / "d") != before


def test_stage_key_depends_on_inputs_config_and_code():
    code = code_version("sft_pipeline.filter")
    base = stage_key("filter", {"scores": "abc"}, {"threshold": 0.7}, code)
    assert base == stage_key("filter", {"scores": "abc"}, {"threshold": 0.7}, code)
    assert base != stage_key("filter", {"scores": "abd"}, {"threshold": 0.7}, code)
    assert base != stage_key("filter", {"scores": "abc"}, {"threshold": 0.6}, code)
    assert base != stage_key("filter", {"scores": "abc"}, {"threshold": 0.7}, code_version("sft_pipeline.score"))
    assert len(code) == 16


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "done").write_text("x")
    assert (target / "done").exists()

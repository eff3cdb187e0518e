from pathlib import Path

import pytest

from sft_pipeline.config import ModelConfig, load_config
from sft_pipeline.errors import ConfigError

DEFAULT = Path(__file__).resolve().parents[1] / "deployments" / "configs" / "default.yaml"


def test_default_config_loads():
    cfg = load_config(DEFAULT)
    assert cfg.train.method == "qlora"
    assert cfg.train.lora.r == 16 and cfg.train.lora.alpha == 32
    assert cfg.filter.threshold == 0.7
    assert len(cfg.ingest.sources) == 2


def test_overrides_are_typed_and_nested():
    cfg = load_config(DEFAULT, ["filter.threshold=0.5", "train.lora.r=8", "train.method=lora"])
    assert cfg.filter.threshold == 0.5
    assert cfg.train.lora.r == 8
    assert cfg.train.method == "lora"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("filter.treshold=0.5", "filter.treshold: unknown key"),
        ("filter.threshold=1.5", "filter.threshold: Input should be less than or equal to 1"),
        ("train.method=qlora2", "train.method"),
        ("train.lora.r=abc", "train.lora.r"),
        ("nosuchsection.x=1", "nosuchsection: unknown key"),
        ("novalue", "expected KEY.SUB=VALUE"),
    ],
)
def test_bad_values_fail_at_load_with_the_key_path(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_sources_required(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("run: {seed: 1}\n")
    with pytest.raises(ConfigError, match="ingest.sources"):
        load_config(empty)


def test_tiny_config_names_a_model_built_on_first_use(tmp_path, monkeypatch):
    # deployments/configs/tiny.yaml runs as it is on a fresh clone: testing:tiny builds the model.
    from sft_pipeline.models import resolve_model
    from sft_pipeline.resources import CACHE_ENV
    from sft_pipeline.testing import DEFAULT_TOKENIZER_SOURCE

    # The tiny model takes its tokenizer from the default model, converted from GGUF once per machine (other
    # tests convert it on a fresh one): lend that conversion to the empty cache, so only the tiny build is new.
    converted = Path(resolve_model(ModelConfig(name_or_path=DEFAULT_TOKENIZER_SOURCE)))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / converted.name).symlink_to(converted)
    cfg = load_config(Path(__file__).parents[1] / "deployments" / "configs" / "tiny.yaml")
    folder = Path(resolve_model(cfg.model))
    assert folder.is_relative_to(tmp_path) and (folder / "config.json").is_file()
    assert resolve_model(cfg.model) == str(folder)  # built once


TINY = Path(__file__).resolve().parents[1] / "deployments" / "configs" / "tiny.yaml"


def _sections():
    from pydantic import BaseModel

    from sft_pipeline.config import PipelineConfig
    from sft_pipeline.config.tree import _section_of

    todo, seen = [PipelineConfig], []
    while todo:
        section = todo.pop()
        seen.append(section)
        for info in section.model_fields.values():
            inner, _ = _section_of(info.annotation)
            if inner is not None and issubclass(inner, BaseModel) and inner not in seen:
                todo.append(inner)
    return seen


def test_every_config_field_explains_itself():
    missing = [f"{section.__name__}.{name}" for section in _sections()
               for name, info in section.model_fields.items() if not (info.description or "").strip()]
    assert missing == []


def test_config_show_prints_each_key_with_its_value_default_and_description(capsys):
    from flows.cli import main
    from sft_pipeline.config.tree import settings

    assert main(["config", "show", "--config", str(TINY), "--set", "train.max_steps=7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("train.max_steps: 7  (default: -1)")
    assert lines[at + 1].startswith("    Optimizer steps")
    assert "model.revision: null  (default)" in lines
    assert "ingest.sources.0.path: tests/data/tiny_chat.jsonl  (required)" in lines
    keys = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert keys == [s.key for s in settings(load_config(TINY))]  # every leaf, once, in order
    assert {"run.seed", "train.lora.r", "eval.gate.primary_metric", "score.weights"} <= set(keys)


@pytest.mark.parametrize("command", [["config", "show"], ["run"]])
def test_an_unknown_key_suggests_the_closest_one(command, capsys):
    from flows.cli import main

    assert main([*command, "--config", str(TINY), "--set", "filter.treshold=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "filter.treshold: unknown key (did you mean filter.threshold?)" in err
    assert main([*command, "--config", str(TINY), "--set", "trian.max_steps=5"]) == 2
    assert "did you mean train.max_steps?" in capsys.readouterr().err

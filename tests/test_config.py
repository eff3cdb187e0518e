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
    from sft_pipeline.tiny_model import TOKENIZER_SOURCE

    # The tiny model takes its tokenizer from the default model, converted from GGUF once per machine (other
    # tests convert it on a fresh one): lend that conversion to the empty cache, so only the tiny build is new.
    converted = Path(resolve_model(ModelConfig(name_or_path=TOKENIZER_SOURCE)))
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


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    # YAML keeps the last of two `train:` sections (or scalars), so `max_steps: 4` silently became the default.
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  max_steps: 4\ningest:\n  sources: [{path: x}]\ntrain:\n  batch_size: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(twice)
    assert str(err.value) == f"{twice}: duplicate key 'train' (lines 1 and 5); give each key once"
    twice.write_text("ingest:\n  sources: [{path: x}]\ntrain:\n  max_steps: 4\n  max_steps: 8\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'max_steps' \(lines 4 and 5\)"):
        load_config(twice)


def test_zero_training_steps_are_refused_at_load():
    # train.max_steps=0 trained one step ("step 1/0") and promoted the model.
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*0 steps would train nothing"):
        load_config(DEFAULT, ["train.max_steps=0"])
    assert load_config(DEFAULT, ["train.max_steps=-1"]).train.max_steps == -1


@pytest.mark.parametrize("override, fragment", [
    ("train.lora.target_modules=[unclosed", "is not a YAML value"),  # was a yaml.parser traceback
    ("run.output_dir=/tmp/a #b", "a ' #' starts a YAML comment, so it would read as '/tmp/a'"),  # was /tmp/a
    ("model.chat_template=~", "YAML reads a lone ~ as null"),  # removed the setting
])
def test_an_override_yaml_cannot_read_or_would_change_is_one_line(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_an_override_yaml_reads_as_something_else_says_so(caplog):
    cfg = load_config(DEFAULT, ["train.gradient_checkpointing=on", "run.output_dir='/tmp/a #b'",
                                "model.chat_template=null"])
    assert cfg.train.gradient_checkpointing is True and cfg.run.output_dir == "/tmp/a #b"
    assert cfg.model.chat_template is None
    said = [r.getMessage() for r in caplog.records]
    assert said == ["override train.gradient_checkpointing=on is read as true (a boolean)"]


@pytest.mark.parametrize("key", ["eval.ifeval_prompts", "eval.ifbench_prompts", "eval.generation_prompts",
                                 "model.chat_template"])
def test_named_files_are_checked_at_load(key, tmp_path):
    # eval.ifeval_prompts=/dev/zero was accepted and failed after training with a FileNotFoundError traceback;
    # a PNG chat template was a UnicodeDecodeError traceback at tokenize.
    png = tmp_path / "template.jinja"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    cases = {"/dev/zero": "/dev/zero is not a regular file", str(tmp_path): "is a folder, not a file",
             str(tmp_path / "none.jsonl"): "no such file", str(png): "not UTF-8 text (byte 0x89 at offset 0)"}
    for value, problem in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(DEFAULT, [f"{key}={value}"])
        assert f"{key}: " in str(err.value) and problem in str(err.value) and "\n" not in str(err.value)
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a"}\n')
    assert load_config(DEFAULT, [f"{key}={good}"]) is not None


@pytest.mark.parametrize("where", ["/proc/runs", "/sys/runs"])
def test_an_output_dir_where_no_folder_can_be_made_is_refused_at_load(where):
    # It was accepted, retried twice, and ended in three to six tracebacks (root may write anywhere else).
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [f"run.output_dir={where}"])
    message = str(err.value)
    assert message.startswith(f"{DEFAULT}: run.output_dir: ") and "cannot create a folder in" in message
    assert "\n" not in message

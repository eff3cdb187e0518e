"""Training progress: log lines every few steps with step / max steps, loss, lr, tokens/s and time left;
a progress bar only on a terminal."""

from __future__ import annotations

import io
import logging
import re

import pytest

from sft_pipeline import constants
from sft_pipeline.config import ModelConfig, TrainConfig
from sft_pipeline.train import TrainJob
from sft_pipeline.train.progress import Progress
from sft_pipeline.train.samples import labelled_rows, toy_conversations, write_rows
from sft_pipeline.train.trainer import train_model

STEPS = 5
EVERY = 2
LINE = re.compile(r"^step (\d+)/(\d+) loss (\d+\.\d{4}) lr (\S+) (\d+) tok/s (\S+) left$")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def tokenized(tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    write_rows(labelled_rows(tiny_tokenizer, toy_conversations(16), 64), folder / constants.TRAIN_TOKENS_FILE)
    return folder


def _job(tiny_model_dir, tokenized, out, **kw) -> TrainJob:
    cfg = TrainConfig(**{"method": "lora", "max_steps": STEPS, "batch_size": 2, "gradient_accumulation": 1,
                         "learning_rate": 1e-3, "save_steps": 10, "progress_steps": EVERY, "report_to": [], **kw})
    return TrainJob(ModelConfig(name_or_path=str(tiny_model_dir)), cfg, tokenized, out, seed=0)


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("sft_pipeline.train") and
            r.getMessage().startswith("step ")]


def test_training_logs_progress_every_few_steps_and_at_the_end(tiny_model_dir, tokenized, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sft_pipeline.train")
    result = train_model(_job(tiny_model_dir, tokenized, tmp_path / "out"))

    lines = _progress_lines(caplog)
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m.group(1)) for m in parsed] == [2, 4, 5] and {int(m.group(2)) for m in parsed} == {STEPS}
    assert float(parsed[-1].group(3)) == pytest.approx(result["final_loss"], abs=1e-4)
    assert all(int(m.group(5)) > 0 for m in parsed), "tokens/s"
    assert parsed[-1].group(6) == "0s" and all(float(m.group(4)) > 0 for m in parsed[:-1])


def test_logging_less_often_than_progress_still_reports_on_time(tiny_model_dir, tokenized, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sft_pipeline.train")
    train_model(_job(tiny_model_dir, tokenized, tmp_path / "out", logging_steps=3))
    steps = [int(line.split()[1].split("/")[0]) for line in _progress_lines(caplog)]
    assert steps == [2, 4, 5]


class _State:
    """The TrainerState fields the callback reads."""

    def __init__(self, step, max_steps=4):
        self.global_step, self.max_steps, self.is_world_process_zero, self.log_history = step, max_steps, True, []


class _Args:
    logging_steps = 1


def test_a_bar_is_drawn_on_a_terminal_only():
    for stream, drawn in ((io.StringIO(), False), (TTY(), True)):
        progress = Progress(every=2, stream=stream)
        progress.on_train_begin(_Args, _State(0), None)
        for step in range(1, 5):
            progress.on_log(_Args, _State(step), None, logs={"loss": 1.0, "learning_rate": 1e-3, "num_tokens": step})
            progress.on_step_end(_Args, _State(step), None)
        progress.on_train_end(_Args, _State(4), None)
        assert ("4/4" in stream.getvalue()) is drawn, stream.getvalue()


def test_generation_logs_its_progress(caplog):
    import logging

    from sft_pipeline.evaluate.generate import ProgressLog

    progress = ProgressLog("generating", 4, every_s=0.0)
    with caplog.at_level(logging.INFO, logger="sft_pipeline.evaluate.generate"):
        progress.update(2)
        progress.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("generating 2/4 (") and "s left)" in lines[0]
    assert lines[-1].startswith("generating 4/4 (")

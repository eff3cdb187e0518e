"""Retry rules of the stage tasks (no server needed)."""

import httpx
import pytest
from prefect.states import Failed

from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline import stages
from sft_pipeline.constants import STAGE_FILTER, STAGE_TRAIN
from tasks.caching import retry_condition


def failed(exc):
    return Failed(data=exc, message=str(exc))


@pytest.mark.parametrize("exc, retried", [
    (ConfigError("bad key"), False),
    (InputError("data.jsonl: no such file"), False),
    (FileNotFoundError("model"), False),
    (OSError("disk hiccup"), True),
    (ConnectionError("reset"), True),
])
def test_data_stages_retry_all_but_deterministic_errors(exc, retried):
    assert retry_condition(stages.get(STAGE_FILTER))(None, None, failed(exc)) is retried


def test_train_retries_only_transient_errors():
    condition = retry_condition(stages.get(STAGE_TRAIN))  # the train stage's own predicate
    assert condition(None, None, failed(httpx.ConnectError("connection refused"))) is True
    assert condition(None, None, failed(RuntimeError("shape mismatch"))) is False
    assert condition(None, None, failed(ConfigError("bad lora target"))) is False

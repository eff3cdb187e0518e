import os
from pathlib import Path

import pytest

# Never reach for a hub from tests; everything is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random-init Llama with SmolLM2's real tokenizer and chat template."""
    from sft_pipeline.model_files import resolve_model
    from sft_pipeline.tiny_model import TOKENIZER_SOURCE, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), resolve_model(TOKENIZER_SOURCE))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)

"""The tokenize stage's entry (sft_pipeline.stages): the filter stage's kept rows -> train and held-out tokens."""

from __future__ import annotations

from sft_pipeline.constants import FILTERED_FILE, STAGE_FILTER, STAGE_SWEEP_TRAIN_IDS, TRAIN_IDS_FILE
from sft_pipeline.models import load_tokenizer
from sft_pipeline.stages import StageRun
from sft_pipeline.tokenize.token_files import read_ids, tokenize_split


def run_stage(run: StageRun) -> dict:
    """Split, encode, verify and write the filter stage's kept rows (see ``token_files.tokenize_split``), the train
    rows mixed by the sources' weights when they have one; a sweep's shared held-out set is decontaminated against
    the rows its branches train on, when it hands them over."""
    source = run.inputs[STAGE_FILTER] / FILTERED_FILE
    branch_rows = run.inputs.get(STAGE_SWEEP_TRAIN_IDS)
    against = None if branch_rows is None else read_ids(branch_rows / TRAIN_IDS_FILE)
    model = run.cfg.model
    template = f"chat template {model.chat_template!r}" if model.chat_template else \
        f"the chat template of {model.name_or_path}"
    return tokenize_split(source, run.out, load_tokenizer(model), run.cfg.tokenize, seed=run.cfg.run.seed,
                          decontaminate_against=against, template=template, mix_weights=run.cfg.ingest.mix_weights)

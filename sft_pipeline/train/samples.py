"""Small labelled token files in the tokenize stage's layout, for tests and the train benchmark.

The real files come from the tokenize stage. Here labels come from the chat
template's ``{% generation %}`` markers (``return_assistant_tokens_mask``), the same
way TRL builds them with ``assistant_only_loss=True``, so a benchmark against TRL
trains both sides on identical labels.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sft_pipeline.constants import IGNORE_INDEX, ROLE_ASSISTANT, ROLE_USER

# SmolLM2's ChatML template (default system prompt included) with generation markers
# around each assistant reply and its end-of-turn token.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

UNPACKED_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
PACKED_SCHEMA = pa.schema([
    ("ids", pa.list_(pa.string())),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("position_ids", pa.list_(pa.int32())),
    ("seq_lengths", pa.list_(pa.int32())),
])


def toy_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Deterministic two-turn arithmetic chats.

    >>> toy_conversations(1)[0][1]["content"]
    'The answer is 74.'
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        out.append([
            {"role": ROLE_USER, "content": f"What is {a} plus {b}?"},
            {"role": ROLE_ASSISTANT, "content": f"The answer is {a + b}."},
        ])
    return out


def label_conversation(tokenizer, messages: list[dict], max_length: int,
                       template: str = CHATML_TRAINING_TEMPLATE) -> tuple[list[int], list[int]]:
    """Token ids and assistant-only labels of one conversation, truncated to ``max_length``."""
    encoded = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(encoded["input_ids"])[:max_length]
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, encoded["assistant_masks"])]
    return ids, labels


def labelled_rows(tokenizer, conversations: list[list[dict]], max_length: int,
                  template: str = CHATML_TRAINING_TEMPLATE) -> list[dict]:
    """Unpacked rows (``id``, ``input_ids``, ``labels``); rows left without supervision are dropped."""
    rows = []
    for i, messages in enumerate(conversations):
        ids, labels = label_conversation(tokenizer, messages, max_length, template)
        if any(label != IGNORE_INDEX for label in labels):
            rows.append({"id": f"c{i}", "input_ids": ids, "labels": labels})
    return rows


def pack_rows(rows: list[dict], seq_length: int) -> list[dict]:
    """Pack unpacked rows best-fit-decreasing with TRL's ``pack_dataset`` into the packed layout."""
    from datasets import Dataset
    from trl import pack_dataset

    tagged = [{**row, "row": [i] * len(row["input_ids"])} for i, row in enumerate(rows)]
    packed = pack_dataset(Dataset.from_list(tagged).select_columns(["input_ids", "labels", "row"]), seq_length)
    out = []
    for item in packed:
        starts = [0]
        for length in item["seq_lengths"][:-1]:
            starts.append(starts[-1] + length)
        out.append({
            "ids": [rows[item["row"][s]]["id"] for s in starts],
            "input_ids": item["input_ids"],
            "labels": item["labels"],
            "position_ids": [p for length in item["seq_lengths"] for p in range(length)],
            "seq_lengths": item["seq_lengths"],
        })
    return out


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write rows as Parquet with the tokenize stage's column types."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = PACKED_SCHEMA if rows and "seq_lengths" in rows[0] else UNPACKED_SCHEMA
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path

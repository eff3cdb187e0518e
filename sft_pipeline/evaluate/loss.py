"""Held-out loss and perplexity on assistant tokens only (labels != IGNORE_INDEX).

The loss is the mean negative log-likelihood per supervised token over the whole
held-out set (token-weighted, not an average of per-batch means), so the batch size
does not change the number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from sft_pipeline.constants import IGNORE_INDEX
from sft_pipeline.errors import InputError
from sft_pipeline.supervised_head import backbone_states, head_of, supervised, token_logprobs

HELDOUT_COLUMNS = ("input_ids", "labels")


def read_heldout(path: Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` held-out rows as ``{"input_ids": [...], "labels": [...]}``."""
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"{path}: held-out token file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InputError(f"{path}: cannot read Parquet ({exc})") from None
    missing = [c for c in HELDOUT_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    if limit is not None:
        table = table.slice(0, limit)
    rows = table.select(list(HELDOUT_COLUMNS)).to_pylist()
    for number, row in enumerate(rows):
        if len(row["input_ids"]) != len(row["labels"]):
            raise InputError(f"{path}: row {number}: input_ids and labels differ in length")
    return rows


def pad_batch(rows: Sequence[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``labels`` (with IGNORE_INDEX); return the mask too.

    >>> ids, labels, mask = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                                {"input_ids": [8], "labels": [8]}], pad_id=0)
    >>> ids.tolist(), labels.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[-100, 6, 7], [8, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(row["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return ids, labels, mask


@torch.inference_mode()
def batch_nll(model, rows: Sequence[dict], pad_id: int) -> tuple[list[float], list[int]]:
    """Per row: summed NLL of next-token predictions on supervised positions, and their count.

    The LM head projects the supervised positions only (:mod:`sft_pipeline.supervised_head`): for a large
    vocabulary the head is most of the forward pass."""
    ids, labels, mask = pad_batch(rows, pad_id)
    device = model.device
    head = head_of(model)
    if head is None:  # a head transform supervised_head does not apply: the model's own logits
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = labels[:, 1:].to(device)
        keep = targets != IGNORE_INDEX
        nll = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="none")
    else:
        hidden = backbone_states(model, input_ids=ids.to(device), attention_mask=mask.to(device))
        kept, targets, keep = supervised(hidden, labels.to(device))
        nll = -token_logprobs(head, kept, targets, stats=False)[0]
    row_of = keep.nonzero()[:, 0]
    sums = torch.zeros(len(rows), dtype=nll.dtype, device=nll.device).index_add_(0, row_of, nll)
    return sums.tolist(), keep.sum(dim=1).tolist()


def heldout_loss(model, rows: Sequence[dict], *, batch_size: int, pad_id: int) -> dict:
    """Token-weighted mean loss and perplexity over supervised tokens (None without any).

    ``row_nll`` and ``row_tokens`` keep each row's summed NLL and supervised-token count,
    in the order of ``rows``, for the paired bootstrap.
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    row_nll, row_tokens = [0.0] * len(rows), [0] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        nll, counts = batch_nll(model, [rows[i] for i in batch], pad_id)
        for i, value, n in zip(batch, nll, counts):
            row_nll[i], row_tokens[i] = value, n
    total, count = sum(row_nll), sum(row_tokens)
    loss = total / count if count else None
    return {
        "heldout_loss": loss,
        "heldout_perplexity": math.exp(loss) if loss is not None else None,
        "heldout_tokens": count,
        "heldout_rows": len(rows),
        "row_nll": row_nll,
        "row_tokens": row_tokens,
    }

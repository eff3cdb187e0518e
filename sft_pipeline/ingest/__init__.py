"""Ingest: Alpaca / ShareGPT / OpenAI messages / prompt-completion rows from JSONL, JSON,
Parquet, CSV, ``datasets`` folders or the hub -> one canonical conversation table.

``conversations.parquet`` columns: ``id`` (content hash of the messages), ``source``, ``source_index``
(its position in ``ingest.sources``), ``source_row``, ``format``, ``messages`` (list of ``{role, content}``),
``metadata`` (JSON).
``rejects.parquet`` columns: ``source``, ``source_row``, ``reason``, ``message``, ``raw``.
See ``writer.py`` for the schemas and ``reasons.py`` for the reject codes.
"""

from sft_pipeline.ingest.stage import format_summary, ingest_sources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_pipeline.stages import StageRun

__all__ = ["run_stage", "format_summary", "ingest_sources"]


def run_stage(run: "StageRun") -> dict:
    """The stage's entry (sft_pipeline.stages): every configured source into ``run.out``."""
    return ingest_sources(run.cfg.ingest, run.out)

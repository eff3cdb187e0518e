"""``sft-pipeline inspect``: one row traced through every stage's outputs, as they are on disk.

For one row: where it came from (source and record, the line for JSON lines) and its format, or why ingest
rejected it; the quality signals that fired and the score; the filter's verdict; tokenize's decision (train or
held out, kept whole or shortened to whole turns and where, dropped and why, decontaminated); the text as the
model sees it, supervised spans and end-of-turn markers shown; and whether training used it. A library command
(no orchestrator): :func:`open_run` finds the stage folders (:mod:`~sft_pipeline.inspection.lineage`),
:func:`~sft_pipeline.inspection.trace.trace_row` gathers the facts, :func:`show` writes them as inert text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sft_pipeline.inspection import lineage
from sft_pipeline.inspection.paint import Painter
from sft_pipeline.inspection.render import format_trace
from sft_pipeline.inspection.run import RunFiles
from sft_pipeline.inspection.sample import pick
from sft_pipeline.inspection.trace import RowTrace, trace_row

__all__ = ["RowTrace", "RunFiles", "inspect_row", "open_run", "pick", "show", "trace_row"]


def open_run(run: str | Path | None = None, config: str | Path | None = None,
             overrides: Sequence[str] = ()) -> RunFiles:
    """The stage outputs of the run folder ``run`` (see ``lineage.from_run_dir``), or else of ``config``'s run."""
    if run is not None:
        return RunFiles(lineage.from_run_dir(run))
    from sft_pipeline.config import load_config

    return RunFiles(lineage.from_config(load_config(config, list(overrides))))


def inspect_row(row: str, run: str | Path | None = None, config: str | Path | None = None,
                overrides: Sequence[str] = ()) -> RowTrace:
    """Trace ``row`` (an id, a unique id prefix, or ``SOURCE:RECORD``) through a run's outputs."""
    return trace_row(open_run(run, config, overrides), row)


def show(files: RunFiles, row: str, colour: bool = False) -> str:
    """The trace of ``row`` as text for a terminal: inert, in colour or with plain marks."""
    trace = trace_row(files, row)
    return format_trace(trace, Painter(colour), files.encoder() if trace.tokenized is not None else None)

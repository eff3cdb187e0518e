"""The flow's logs: the library's lines (training progress, stage logs) forwarded to Prefect, and user
errors kept to one line (tracebacks of PipelineError stripped)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sft_pipeline.errors import PipelineError

PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")
LIBRARY_LOGGER = "sft_pipeline"
PREFECT_EXTRA_LOGGER = "prefect.extra"  # Prefect's template for PREFECT_LOGGING_EXTRA_LOGGERS


@contextmanager
def library_logs() -> Iterator[None]:
    """Send the library's INFO lines to the terminal and the run's log in the UI while a flow runs.

    ``PREFECT_LOGGING_EXTRA_LOGGERS`` attaches Prefect's handlers but leaves the logger's level at
    the root's WARNING, so training progress never showed; and a worker without that variable
    attached nothing. Only handlers the library's lines would not reach through the root are added,
    and level and handlers are put back when the flow ends (tests run many flows in one process).
    """
    library = logging.getLogger(LIBRARY_LOGGER)
    reached = set(library.handlers) | set(logging.getLogger().handlers)
    added = [h for h in logging.getLogger(PREFECT_EXTRA_LOGGER).handlers if h not in reached]
    level = library.level
    library.setLevel(logging.INFO)
    for handler in added:
        library.addHandler(handler)
    try:
        yield
    finally:
        library.setLevel(level)
        for handler in added:
            library.removeHandler(handler)


class UserErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def hide_user_error_tracebacks() -> None:
    flt = UserErrorFilter()
    for name in PREFECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.addFilter(flt)
        for handler in logger.handlers:
            handler.addFilter(flt)

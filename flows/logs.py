"""Keep user errors to one line: strip tracebacks of PipelineError from Prefect's logs."""

from __future__ import annotations

import logging

from sft_pipeline.errors import PipelineError

PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


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

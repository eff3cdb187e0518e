"""User-facing errors: each carries one clear line, printed without a traceback."""


class PipelineError(Exception):
    """Base class of errors reported to the user as a single line."""


class ConfigError(PipelineError):
    """The configuration is invalid (unknown key, bad value, bad override)."""


class InputError(PipelineError):
    """An input file cannot be read at all (missing, unreadable, wrong format)."""


class UnreadableSource(InputError):
    """The bytes of an existing local source file are not data we can read (binary, a ZIP, a broken
    Parquet footer, a cut compressed stream): ingest rejects the rest of that file and goes on."""


class VerificationError(PipelineError):
    """A stage's output failed a correctness gate (e.g. label masks)."""


# Errors that a retry cannot fix: tasks fail at once on these.
DETERMINISTIC_ERRORS = (PipelineError, ValueError, TypeError, KeyError, FileNotFoundError)

"""What every config section shares: unknown keys are refused, and assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAMES_A_FILE = "names_a_file"
FILE = {NAMES_A_FILE: True}  # json_schema_extra of a field whose value may name a file or folder: the cache
# keys a stage on the content of what such a value names (however it is spelled), not on the name


class Section(BaseModel):
    """A config section: a typo in a key fails at load with the key's dotted path."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

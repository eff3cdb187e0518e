"""What every config section shares: unknown keys are refused, and assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: a typo in a key fails at load with the key's dotted path."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

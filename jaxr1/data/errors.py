"""Bad-row bookkeeping: why a row was skipped, where it came from, and the error for unusable data."""
from __future__ import annotations

import dataclasses

from jaxr1.errors import UserError

# Reasons a row is skipped; the pipeline counts them under these names (metrics: data/bad_rows/<reason>).
UNREADABLE = "unreadable_row"      # not a JSON object / wrong type
MISSING_QUESTION = "missing_question"
MISSING_ANSWER = "missing_answer"
MISSING_IMAGE = "missing_image"    # no such file, or an empty image field
BAD_IMAGE = "bad_image"            # the bytes do not decode as an image
IMAGE_MISMATCH = "image_mismatch"  # <image> placeholders and images disagree
TOO_LONG = "too_long"              # prompt tokens (image pads included) above max_prompt_length
REASONS = (UNREADABLE, MISSING_QUESTION, MISSING_ANSWER, MISSING_IMAGE, BAD_IMAGE, IMAGE_MISMATCH, TOO_LONG)


class DataError(UserError, RuntimeError):
    """The dataset cannot be used at all (unreadable file, or no usable row in it)."""


class BadRowError(ValueError):
    """Raised inside row processing; the pipeline turns it into a skipped, counted BadRow."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class BadRow:
    """Stands in for a skipped row in the stream, so counting happens in the consuming process."""

    reason: str
    message: str
    source: str
    row: int

    def describe(self) -> str:
        return f"{self.source} row {self.row}: {self.reason}: {self.message}"

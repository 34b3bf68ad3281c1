"""How a state reads to people: one rule for every screen that shows one."""

from __future__ import annotations

from django.db import models


def state_label(value: object) -> str:
    """A state code as words, capital first and the rest as written: "in_review" reads
    "In review", "changes_requested" "Changes requested". A choice (TextChoices member) or a
    plain code both work; an empty value reads as a dash."""
    code = value.value if isinstance(value, models.Choices) else value
    if code in (None, ""):
        return "—"
    text = str(code)
    return text.replace("_", " ").capitalize()

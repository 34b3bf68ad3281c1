"""Errors shared by the notifications packages (below all of them, importing none)."""

from __future__ import annotations


class IntakeError(ValueError):
    """The request cannot become a communication; `field` names what to fix."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field

"""The shared mailbox's periodic intake task and its schedule (`register()` runs in
CasesConfig.ready())."""

from __future__ import annotations

from django.conf import settings

from cases.inbox import intake
from ccm.tasks import register_schedule


def gmail_intake() -> dict[str, int]:
    """Read the shared mailbox: reprint requests, approval replies, bounces, the rest to cases."""
    return intake.inbox_poll()


def register() -> None:
    register_schedule(
        "cases.gmail_intake", "cases.inbox.tasks.gmail_intake", settings.CASES_GMAIL_INTAKE_MINUTES
    )

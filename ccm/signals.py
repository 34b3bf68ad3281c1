"""Signals the kernel sends to higher layers."""

from __future__ import annotations

from django.dispatch import Signal

# A Notice was written with a mail address (kwargs: notice); notifications sends the mail.
notice_created = Signal()

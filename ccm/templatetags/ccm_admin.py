"""Template tags for the back-office."""

from __future__ import annotations

from django import template
from django.db import models

from ccm import audit
from ccm.models import AuditEvent

register = template.Library()

# A history page lists this many of the object's newest events; the audit log has them all.
HISTORY_EVENTS = 200


@register.simple_tag
def audit_trail(subject: models.Model) -> list[AuditEvent]:
    """The object's newest audit events, newest first: what an admin history page shows.

    Django's own history lists only edits made through the admin (LogEntry); CCM changes things
    through services, which record to the audit log instead."""
    return list(audit.history(subject).select_related("actor").order_by("-id")[:HISTORY_EVENTS])

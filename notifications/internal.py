"""Internal mail to staff (alerts, approvals, reports), sent through the channel the sender
profile names for its kind (`notifications.gmail.sender_for`): the Gmail API gateway, so that it
comes from a real workspace mailbox, or the ESP.

Customer mail never goes this way: it is a Communication with deliveries, consent and tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from notifications.gmail import sender_for


def internal_mail_send(
    *,
    kind: str,
    to: Sequence[str],
    subject: str,
    text: str,
    message_id: str,
    html: str = "",
    attachments: Sequence[tuple[str, bytes, str]] = (),
) -> None:
    """Send one internal mail now; errors propagate so the caller's task can retry it.

    `message_id` must be stable for the mail: the Gmail gateway finds a copy that already went
    out by it before sending again after an unknown outcome."""
    if sender_for(kind) == "gmail":
        connection = get_connection(settings.CCM_GMAIL_EMAIL_BACKEND)
        # Gmail sends as the delegated mailbox whatever the From says; say so.
        from_email = getattr(settings, "GMAIL_DELEGATED_USER", None) or settings.DEFAULT_FROM_EMAIL
    else:
        connection = get_connection()
        from_email = settings.DEFAULT_FROM_EMAIL
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=from_email,
        to=list(to),
        headers={"Message-ID": message_id},
        connection=connection,
    )
    if html:
        message.attach_alternative(html, "text/html")
    for filename, content, mimetype in attachments:
        message.attach(filename, content, mimetype)
    message.send(fail_silently=False)


def internal_mail_send_once(
    model: type[models.Model],
    pk: int,
    *,
    kind: str,
    max_attempts: int,
    mail: Callable[[Any], dict[str, Any]],
) -> bool:
    """Send the internal mail an outbox row describes, unless it went already (the body of a
    task that is safe to run twice). The row has `sent_at`, `attempts`, `last_error` and
    `message_id`; `mail(row)` gives the rest of `internal_mail_send`'s arguments. A failure is
    kept on the row and raised, so the task queue retries it (and a sweep, up to
    `max_attempts`). Returns whether this call sent it."""
    manager = model._default_manager
    tried = manager.filter(pk=pk, sent_at__isnull=True, attempts__lt=max_attempts).update(
        attempts=F("attempts") + 1
    )
    if not tried:
        return False
    try:
        with transaction.atomic():
            # The row lock keeps a second worker from sending it at the same time.
            row: Any = (
                manager.select_for_update(skip_locked=True)
                .filter(pk=pk, sent_at__isnull=True)
                .first()
            )
            if row is None:
                return False
            internal_mail_send(kind=kind, message_id=row.message_id, **mail(row))
            row.sent_at = timezone.now()
            row.last_error = ""
            row.save(update_fields=["sent_at", "last_error"])
    except Exception as exc:
        manager.filter(pk=pk).update(last_error=str(exc)[:2000])
        raise
    return True

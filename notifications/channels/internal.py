"""Internal mail to staff (alerts, approvals, reports), sent through the channel the sender
profile names for its kind (`notifications.channels.gmail.sender_for`): the Gmail API gateway,
so that it comes from a real workspace mailbox, or the ESP; and internal push to the operations
team's registered devices (`internal_push_send`).

Customer mail never goes this way: it is a Communication with deliveries, consent and tracking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from notifications.channels.gmail import GmailPermanentError, sender_for

logger = logging.getLogger(__name__)

# A mail that the configuration cannot send (its gateway is not set up) or that the provider
# refused will not go out on a retry either: it fails at once, with the reason on the row, and
# neither the task queue nor the sweep tries it again.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (ImproperlyConfigured, GmailPermanentError)


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
    `max_attempts`). A permanent error (PERMANENT_ERRORS) uses up the attempts at once and is
    not raised. Returns whether this call sent it."""
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
    except PERMANENT_ERRORS as exc:
        manager.filter(pk=pk).update(attempts=max_attempts, last_error=f"failed: {exc}"[:2000])
        logger.error("internal %s mail %s failed for good: %s", kind, pk, exc)
        return False
    except Exception as exc:
        manager.filter(pk=pk).update(last_error=str(exc)[:2000])
        raise
    return True


def internal_mail_state(row: Any, *, max_attempts: int) -> str:
    """Where an outbox row stands: "sent", "failed" (attempts used up; `last_error` says why)
    or "pending"."""
    if row.sent_at is not None:
        return "sent"
    return "failed" if row.attempts >= max_attempts else "pending"


def ops_devices() -> list:
    """The operations team's registered devices: the active devices of the internal accounts
    named in settings.CCM_OPS_PUSH_ACCOUNTS (customer references; the team's app registers its
    installations under them through the device API, as a customer's app does)."""
    from notifications.models import Device

    accounts = list(settings.CCM_OPS_PUSH_ACCOUNTS)
    if not accounts:
        return []
    return list(
        Device.objects.filter(active=True, customer__external_ref__in=accounts).select_related(
            "customer"
        )
    )


def internal_push_send(*, title: str, body: str, data: dict[str, str]) -> dict[str, int]:
    """Push one alert to every operations device now, through the push channel's transport. A
    device the provider says is gone is deactivated (as for a customer's); other failures are
    logged and counted. Returns {"sent", "failed"}."""
    from django.utils.module_loading import import_string

    from notifications.channels.push import DeviceGone, PushMessage
    from notifications.customers.devices import device_deactivate

    counts = {"sent": 0, "failed": 0}
    devices = ops_devices()
    if not devices:
        return counts
    transport = import_string(settings.CCM_PUSH_BACKEND)()
    for device in devices:
        try:
            transport.send(PushMessage(device=device, title=title, body=body, data=data))
            counts["sent"] += 1
        except DeviceGone as exc:
            device_deactivate(device=device, reason=str(exc))
            counts["failed"] += 1
        except Exception:
            logger.warning("internal push to device %s failed", device.pk, exc_info=True)
            counts["failed"] += 1
    return counts

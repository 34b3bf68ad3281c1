"""Internal mail to staff (alerts, approvals, reports), sent through the channel the sender
profile names for its kind (`notifications.gmail.sender_for`): the Gmail API gateway, so that it
comes from a real workspace mailbox, or the ESP.

Customer mail never goes this way: it is a Communication with deliveries, consent and tracking.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection

from notifications.gmail import sender_for


def internal_mail_send(
    *,
    kind: str,
    to: Sequence[str],
    subject: str,
    text: str,
    message_id: str,
    html: str = "",
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
    message.send(fail_silently=False)

"""Email through Django's email backend: any Anymail ESP (console in `make run`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.utils import formataddr

import requests
from anymail.exceptions import AnymailAPIError, AnymailError, AnymailRecipientsRefused
from anymail.utils import EmailAddress
from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from notifications.channels.base import PermanentSendError, TransientSendError
from notifications.channels.unsubscribe import unsubscribe_headers
from notifications.models import Delivery

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmailParts:
    """What one delivery's email carries; the Django message and the direct Postmark batch
    payload (notifications/channels/postmark_batch.py) are both built from it."""

    subject: str
    text: str
    html: str
    name: str
    address: str
    headers: dict[str, str]
    attachment: tuple[str, bytes, str] | None  # (file name, content, MIME type)
    metadata: dict[str, str]
    tag: str


def email_parts(delivery: Delivery) -> EmailParts:
    communication = delivery.communication
    rendered = communication.rendered.get("email") or {}
    version = communication.template_version
    meta = version.meta if version is not None else {}
    attachment = None
    if meta.get("delivery", "attach") == "attach" and communication.document is not None:
        with communication.document.file.open("rb") as fh:
            attachment = (
                f"{communication.template.code}-{communication.pk}.pdf",
                fh.read(),
                "application/pdf",
            )
    return EmailParts(
        subject=rendered.get("subject", ""),
        text=rendered.get("text", ""),
        html=rendered.get("html") or "",
        name=communication.customer.name,
        address=delivery.address,
        headers={
            "Message-ID": delivery.message_id,
            **unsubscribe_headers(delivery, communication.category),
        },
        attachment=attachment,
        # Anymail sends these to the ESP; its tracking webhooks bring them back.
        metadata={"delivery_id": str(delivery.pk), "communication_id": str(communication.pk)},
        tag=communication.template.code,
    )


def recipient(name: str, address: str) -> str:
    """The To address. `formataddr` encodes a non-ASCII name (RFC 2047) but refuses a non-ASCII
    (internationalised) domain, which Anymail formats itself (IDNA)."""
    if address.isascii():
        return formataddr((name, address))
    return EmailAddress(name, address).address


class EmailBackend:
    """Email through Django's email backend, i.e. any Anymail ESP (or console in `make run`)."""

    def message(self, delivery: Delivery) -> EmailMultiAlternatives:
        parts = email_parts(delivery)
        message = EmailMultiAlternatives(
            subject=parts.subject,
            body=parts.text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[recipient(parts.name, parts.address)],
            headers=parts.headers,
        )
        if parts.html:
            message.attach_alternative(parts.html, "text/html")
        if parts.attachment is not None:
            message.attach(*parts.attachment)
        message.metadata = parts.metadata  # type: ignore[attr-defined]
        message.tags = [parts.tag]  # type: ignore[attr-defined]
        message.track_opens = True  # type: ignore[attr-defined]
        return message

    def send(self, delivery: Delivery) -> str:
        message = self.message(delivery)
        try:
            message.send(fail_silently=False)
        except AnymailRecipientsRefused as exc:
            raise PermanentSendError(f"the ESP refused the recipient: {exc}") from exc
        except AnymailAPIError as exc:
            status = getattr(exc, "status_code", None)
            if status is None or status == 429 or status >= 500:
                raise TransientSendError(
                    f"ESP error {status or 'no response'}: {exc}", maybe_sent=status is None
                ) from exc
            raise PermanentSendError(f"ESP rejected the message ({status}): {exc}") from exc
        except AnymailError as exc:
            raise PermanentSendError(str(exc)) from exc
        except (OSError, requests.RequestException) as exc:
            raise TransientSendError(f"network error: {exc}", maybe_sent=True) from exc
        status = getattr(message, "anymail_status", None)
        return (status.message_id if status is not None else None) or delivery.message_id

    def lookup(self, delivery: Delivery) -> str | None:
        """Postmark can be asked by metadata; other backends cannot, and a resend is the risk
        we take (logged)."""
        backend = settings.EMAIL_BACKEND
        if backend.startswith("anymail.backends.postmark"):
            return _postmark_lookup(delivery)
        logger.warning(
            "cannot ask %s whether delivery %s was accepted; sending again", backend, delivery.pk
        )
        return None


def _postmark_lookup(delivery: Delivery) -> str | None:
    anymail = settings.ANYMAIL
    url = anymail.get("POSTMARK_API_URL", "https://api.postmarkapp.com/").rstrip("/")
    try:
        response = requests.get(
            f"{url}/messages/outbound",
            params={"count": "1", "offset": "0", "metadata_delivery_id": str(delivery.pk)},
            headers={
                "Accept": "application/json",
                "X-Postmark-Server-Token": anymail.get("POSTMARK_SERVER_TOKEN", ""),
            },
            timeout=10,
        )
        response.raise_for_status()
    except requests.RequestException as exc:
        raise TransientSendError(f"could not ask Postmark about the message: {exc}") from exc
    messages = response.json().get("Messages") or []
    return messages[0].get("MessageID") if messages else None

"""Email through Django's email backend: any Anymail ESP (console in `make run`)."""

from __future__ import annotations

import logging
from email.utils import formataddr

import requests
from anymail.exceptions import AnymailAPIError, AnymailError, AnymailRecipientsRefused
from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from notifications.channels.base import PermanentSendError, TransientSendError
from notifications.models import Delivery
from notifications.unsubscribe import unsubscribe_headers

logger = logging.getLogger(__name__)


class EmailBackend:
    """Email through Django's email backend, i.e. any Anymail ESP (or console in `make run`)."""

    def message(self, delivery: Delivery) -> EmailMultiAlternatives:
        communication = delivery.communication
        rendered = communication.rendered.get("email") or {}
        name = communication.customer.name
        message = EmailMultiAlternatives(
            subject=rendered.get("subject", ""),
            body=rendered.get("text", ""),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[formataddr((name, delivery.address))],
            headers={
                "Message-ID": delivery.message_id,
                **unsubscribe_headers(delivery, communication.category),
            },
        )
        if rendered.get("html"):
            message.attach_alternative(rendered["html"], "text/html")
        version = communication.template_version
        meta = version.meta if version is not None else {}
        if meta.get("delivery", "attach") == "attach" and communication.document is not None:
            document = communication.document
            with document.file.open("rb") as fh:
                message.attach(
                    f"{communication.template.code}-{communication.pk}.pdf",
                    fh.read(),
                    "application/pdf",
                )
        # Anymail sends these to the ESP; its tracking webhooks bring them back.
        message.metadata = {  # type: ignore[attr-defined]
            "delivery_id": str(delivery.pk),
            "communication_id": str(communication.pk),
        }
        message.tags = [communication.template.code]  # type: ignore[attr-defined]
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

"""SMS: a provider backend interface like Django's email backends, and the SMS channel on it.

`CCM_SMS_BACKEND` names the class that talks to the provider, the way EMAIL_BACKEND does for
mail: `ConsoleSmsBackend` writes to stdout (the default, used by `make run`), `LocmemSmsBackend`
keeps an in-memory `outbox` (for tests, like `django.core.mail.outbox`) and `TwilioSmsBackend`
sends through Twilio's Messages API. `SmsBackend`, registered as `CCM_CHANNEL_BACKENDS["sms"]`,
turns a delivery into one text message: the communication's `rendered["sms"]["text"]` to the
delivery's E.164 number, with its GSM-7/UCS-2 segment count and encoding kept in `delivery.meta`
(what the message costs). Composition already refuses a text longer than `SMS_MAX_SEGMENTS`; the
limit is checked again here because a delivery may be re-sent long after it was composed.

Did the provider get it? A send that timed out may have reached Twilio. Twilio keeps no metadata
on a message, so `lookup` lists the latest messages to the number and takes one with exactly
this body, created after the delivery was, whose sid no other delivery has recorded. That is
reliable unless message bodies are redacted at Twilio or altered on the way (smart encoding):
then nothing matches and the message is sent again, the same risk the email backends without a
search API take. Backends that cannot be asked at all say so in the log.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import IO

import requests
from django.conf import settings
from django.urls import reverse
from django.utils.module_loading import import_string
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from documents.composition import SMS_MAX_SEGMENTS, LruCache, sms_segments
from notifications.channels.base import PermanentSendError, SendError, TransientSendError
from notifications.channels.sms_feedback import sms_number_suppress
from notifications.models import Channel, Delivery

logger = logging.getLogger(__name__)

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Clocks differ a little between us and the provider; a message created a bit "before" its
# delivery can still be ours.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class SmsMessage:
    to: str  # E.164
    body: str
    reference: str = ""  # our dedupe key: the delivery's Message-ID
    delivery_id: int | None = None  # rides on the status callback URL
    sid: str = ""  # the provider's id, once sent (as kept in the locmem outbox)


class RecipientOptedOut(PermanentSendError):
    """The provider refuses the number because its owner texted STOP to us."""


class BaseSmsBackend:
    """What every SMS provider backend does (subclass it, name it in CCM_SMS_BACKEND)."""

    name = "sms"

    def send(self, message: SmsMessage) -> str:
        """Hand the message to the provider; return its id. Raise TransientSendError or
        PermanentSendError (RecipientOptedOut when the number said STOP)."""
        raise NotImplementedError

    def find(self, message: SmsMessage, *, since: datetime) -> list[str] | None:
        """Ids of messages like this one the provider accepted since `since`, oldest first;
        None when the provider cannot be asked."""
        return None


def sms_backend() -> BaseSmsBackend:
    return import_string(settings.CCM_SMS_BACKEND)()


class ConsoleSmsBackend(BaseSmsBackend):
    name = "console"

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def send(self, message: SmsMessage) -> str:
        sid = f"console-{uuid.uuid4().hex}"
        self.stream.write(f"SMS to {message.to} [{sid}]\n{message.body}\n{'-' * 79}\n")
        self.stream.flush()
        return sid


# What LocmemSmsBackend sent, like django.core.mail.outbox (tests empty it).
outbox: list[SmsMessage] = []


class LocmemSmsBackend(BaseSmsBackend):
    name = "locmem"

    def send(self, message: SmsMessage) -> str:
        sid = f"SM{uuid.uuid4().hex}"
        outbox.append(replace(message, sid=sid))
        return sid

    def find(self, message: SmsMessage, *, since: datetime) -> list[str] | None:
        return [m.sid for m in outbox if m.reference and m.reference == message.reference]


# --- Twilio ---------------------------------------------------------------------------------

# Twilio error codes that say the recipient asked not to get messages from us (STOP).
TWILIO_OPTED_OUT = {21610}
# How many of the latest messages to the number `find` looks through.
TWILIO_LOOKUP_LIMIT = 50

_twilio_clients: LruCache[tuple[str, str, str, float], Client] = LruCache(4)


def _twilio_client(account_sid: str, auth_token: str, base_url: str, timeout: float) -> Client:
    def build() -> Client:
        client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout))
        # The SDK has no option for the API's address; its domain object keeps it as a plain
        # attribute, so the tests' loopback server (or a regional proxy) goes here.
        client.api.base_url = base_url.rstrip("/")
        return client

    return _twilio_clients.get((account_sid, auth_token, base_url, timeout), build)


def twilio_status_callback(message: SmsMessage) -> str:
    """Our public status-callback URL; the delivery id rides along (Twilio signs the whole URL)
    so that a report racing ahead of our own record of the sid still finds its delivery."""
    url = settings.CCM_PUBLIC_BASE_URL.rstrip("/") + reverse("hooks-sms-twilio-status")
    return f"{url}?delivery={message.delivery_id}" if message.delivery_id else url


def _twilio_error(exc: TwilioException) -> SendError:
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    text = str(getattr(exc, "msg", "") or getattr(exc, "detail", "") or getattr(exc, "title", ""))
    text = text.removeprefix("Unable to create record: ")
    if status is None or status == 429 or status >= 500:
        return TransientSendError(f"Twilio error {status or 'without status'} ({code}): {text}")
    if status == 401:
        # Rotated or wrong credentials: the messages are fine, so they wait (with backoff, up
        # to CCM_DISPATCH_MAX_ATTEMPTS) for someone to fix the setting instead of failing over.
        return TransientSendError(f"Twilio refused our credentials ({code}): {text}")
    if code in TWILIO_OPTED_OUT:
        return RecipientOptedOut(f"Twilio refused the message ({code}): {text}")
    return PermanentSendError(f"Twilio refused the message ({code}): {text}")


class TwilioSmsBackend(BaseSmsBackend):
    """Twilio's Messages API through the twilio SDK, from a messaging service or one number."""

    name = "twilio"

    def __init__(self) -> None:
        self.client = _twilio_client(
            settings.TWILIO_ACCOUNT_SID,
            settings.TWILIO_AUTH_TOKEN,
            settings.TWILIO_API_BASE_URL,
            settings.TWILIO_TIMEOUT_S,
        )

    def _sender(self) -> dict[str, str]:
        if settings.TWILIO_MESSAGING_SERVICE_SID:
            return {"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
        if settings.TWILIO_FROM_NUMBER:
            return {"from_": settings.TWILIO_FROM_NUMBER}
        raise PermanentSendError(
            "Twilio needs TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER to send from"
        )

    def send(self, message: SmsMessage) -> str:
        try:
            sent = self.client.messages.create(
                to=message.to,
                body=message.body,
                status_callback=twilio_status_callback(message),
                **self._sender(),
            )
        except TwilioException as exc:
            raise _twilio_error(exc) from exc
        except requests.ConnectTimeout as exc:
            raise TransientSendError(f"could not connect to Twilio: {exc}") from exc
        except requests.RequestException as exc:
            # The request may have reached Twilio: the dispatcher looks before sending again.
            raise TransientSendError(f"no answer from Twilio: {exc}", maybe_sent=True) from exc
        return str(sent.sid)

    def find(self, message: SmsMessage, *, since: datetime) -> list[str] | None:
        try:
            recent = self.client.messages.list(to=message.to, limit=TWILIO_LOOKUP_LIMIT)
        except (TwilioException, requests.RequestException) as exc:
            raise TransientSendError(f"could not ask Twilio about the message: {exc}") from exc
        matches = [
            m
            for m in recent
            if m.body == message.body
            and str(m.direction or "").startswith("outbound")
            and m.date_created is not None
            and m.date_created >= since
        ]
        return [str(m.sid) for m in sorted(matches, key=lambda m: m.date_created)]


# --- the channel ----------------------------------------------------------------------------


class SmsBackend:
    """The SMS channel: one delivery → one text message through CCM_SMS_BACKEND."""

    def __init__(self) -> None:
        self.provider = sms_backend()

    def message(self, delivery: Delivery) -> SmsMessage:
        text = (delivery.communication.rendered.get("sms") or {}).get("text", "")
        if not text:
            raise PermanentSendError("the communication has no SMS text (no sms.txt rendition)")
        if not E164.match(delivery.address):
            raise PermanentSendError(f"{delivery.address!r} is not a phone number in E.164 form")
        return SmsMessage(
            to=delivery.address, body=text, reference=delivery.message_id, delivery_id=delivery.pk
        )

    def send(self, delivery: Delivery) -> str:
        message = self.message(delivery)
        encoding, segments = sms_segments(message.body)
        meta = {
            **delivery.meta,
            "segments": segments,
            "encoding": encoding,
            "sms_backend": self.provider.name,
        }
        Delivery.objects.filter(pk=delivery.pk).update(meta=meta)
        delivery.meta = meta
        if segments > SMS_MAX_SEGMENTS:
            raise PermanentSendError(
                f"the SMS needs {segments} {encoding} segments, more than the {SMS_MAX_SEGMENTS} "
                "allowed: shorten the template's sms.txt"
            )
        try:
            return self.provider.send(message)
        except RecipientOptedOut as exc:
            # The carrier-level STOP reached the provider before (or instead of) our inbound
            # hook: record it, so that nothing else is tried on this number.
            sms_number_suppress(phone=delivery.address, detail=str(exc))
            raise

    def lookup(self, delivery: Delivery) -> str | None:
        found = self.provider.find(self.message(delivery), since=delivery.created_at - CLOCK_SKEW)
        if found is None:
            logger.warning(
                "cannot ask the %s SMS backend whether delivery %s was accepted; sending again",
                self.provider.name,
                delivery.pk,
            )
            return None
        # A sid another delivery recorded is that delivery's message, even with the same text.
        taken = set(
            Delivery.objects.filter(channel=Channel.SMS, provider_message_id__in=found)
            .exclude(pk=delivery.pk)
            .values_list("provider_message_id", flat=True)
        )
        return next((sid for sid in found if sid not in taken), None)

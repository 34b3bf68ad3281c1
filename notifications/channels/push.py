"""Mobile and web push: FCM HTTP v1 for Android and iOS apps, Web Push (VAPID) for browsers.

`PushBackend` is the push channel's backend (settings.CCM_CHANNEL_BACKENDS). It finds the device
the delivery's address names (`device:<id>`), builds the message — the title and body rendered
for push, and a deep link to the portal document — and hands it to the transport named by
settings.CCM_PUSH_BACKEND: `ConsolePushBackend` (make run), `LocmemPushBackend` (tests) or
`FcmWebPushBackend`, which sends by the device's platform.

When the provider says the device is gone (FCM UNREGISTERED or a token it calls invalid, Web
Push 404/410) the device is deactivated and the delivery fails permanently, so the fallback
moves on to the next channel and later messages do not choose the device again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import google.auth.exceptions
import googleapiclient
import httplib2
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp  # type: ignore[import-untyped]
from googleapiclient.discovery import build_from_document  # type: ignore[import-untyped]
from googleapiclient.errors import HttpError  # type: ignore[import-untyped]
from py_vapid import Vapid  # type: ignore[import-untyped]
from pywebpush import WebPushException, webpush  # type: ignore[import-untyped]

from notifications.channels.base import PermanentSendError, SendError, TransientSendError
from notifications.channels.portal import portal_url
from notifications.customers.devices import device_deactivate
from notifications.models import Delivery, Device, Platform

logger = logging.getLogger(__name__)

FCM_SCOPES = ("https://www.googleapis.com/auth/firebase.messaging",)
# The FCM v1 discovery document shipped with google-api-python-client: building the client
# fetches nothing.
FCM_DISCOVERY = (
    Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "fcm.v1.json"
)
# How long a push service keeps a message for a device that is offline (FCM's own default).
WEBPUSH_TTL_S = 28 * 24 * 3600
SEND_TIMEOUT_S = 15.0


class DeviceGone(PermanentSendError):
    """The provider says this registration no longer reaches a device."""


@dataclass(frozen=True)
class PushMessage:
    device: Device
    title: str
    body: str
    data: dict[str, str]  # link, communication_id, delivery_id


class PushTransport(Protocol):
    def send(self, message: PushMessage) -> str:
        """Hand the message to the provider; return its message id."""
        ...


class PushBackend:
    """The push channel: device lookup, message, transport, and what a dead device means."""

    def __init__(self, transport: PushTransport | None = None) -> None:
        self._transport = transport

    def send(self, delivery: Delivery) -> str:
        device = _device_of(delivery)
        message = push_message(delivery, device)
        try:
            transport = self._transport or import_string(settings.CCM_PUSH_BACKEND)()
            return transport.send(message)
        except DeviceGone as exc:
            device_deactivate(device=device, reason=str(exc))
            raise
        except ImproperlyConfigured as exc:
            raise PermanentSendError(f"push is not configured: {exc}") from exc

    def lookup(self, delivery: Delivery) -> str | None:
        """Neither FCM nor Web Push can be asked about a message, so a send whose outcome is
        unknown is repeated: a possible duplicate notification is the lesser harm."""
        logger.warning("cannot ask the push provider about delivery %s; sending again", delivery.pk)
        return None


def _device_of(delivery: Delivery) -> Device:
    pk = Device.pk_from_address(delivery.address)
    device = Device.objects.filter(pk=pk).first() if pk is not None else None
    if device is None or device.customer_id != delivery.communication.customer_id:
        raise PermanentSendError(f"{delivery.address!r} names no device of this customer")
    if not device.active:
        raise PermanentSendError(f"the device was deactivated: {device.deactivated_reason}")
    return device


def push_message(delivery: Delivery, device: Device) -> PushMessage:
    """What the device gets: the push rendition and the deep link. The device and any link
    made here are recorded on the delivery's meta."""
    communication = delivery.communication
    rendered = communication.rendered.get("push") or {}
    if not rendered.get("body"):
        raise PermanentSendError("the communication has no push rendition")
    data = {"communication_id": str(communication.pk), "delivery_id": str(delivery.pk)}
    meta = {**delivery.meta, "device": device.pk, "platform": device.platform, "app": device.app}
    link = communication.data.get("portal_url") or meta.get("link")
    if not link and communication.document_id is not None:
        link = portal_url(communication)
        # Kept, so that a retry carries the same link instead of minting one per attempt.
        meta["link"] = link
    if link:
        data["link"] = str(link)
    if meta != delivery.meta:
        Delivery.objects.filter(pk=delivery.pk).update(meta=meta)
        delivery.meta = meta
    return PushMessage(
        device=device, title=rendered.get("title", ""), body=rendered["body"], data=data
    )


# --- transports for development and tests ---------------------------------------------------


class ConsolePushBackend:
    """Writes each push to stdout (`make run`), the way Django's console email backend does."""

    def send(self, message: PushMessage) -> str:
        device = message.device
        sys.stdout.write(
            f"push to {device.platform} device {device.pk} ({device.app}): "
            f"{message.title!r} {message.body!r} {json.dumps(message.data, sort_keys=True)}\n"
        )
        sys.stdout.flush()
        return f"console-{uuid.uuid4().hex}"


# What LocmemPushBackend "sent", like django.core.mail.outbox; tests clear it.
outbox: list[PushMessage] = []


class LocmemPushBackend:
    def send(self, message: PushMessage) -> str:
        outbox.append(message)
        return f"locmem-{len(outbox)}"


# --- FCM HTTP v1 and Web Push ---------------------------------------------------------------


class FcmWebPushBackend:
    """The real transport: FCM HTTP v1 for app installations, Web Push for browsers."""

    def send(self, message: PushMessage) -> str:
        if message.device.platform == Platform.WEB:
            return web_push_send(message)
        return fcm_client().send(message)


_local = threading.local()


def fcm_client() -> FcmClient:
    """One client per thread (httplib2 connections are not thread-safe), so the OAuth token
    is fetched once an hour, not once a message."""
    config = (settings.CCM_FCM_CREDENTIALS_FILE, settings.CCM_FCM_PROJECT_ID)
    cached = getattr(_local, "fcm", None)
    if cached is None or cached[0] != config:
        cached = _local.fcm = (config, FcmClient())
    return cached[1]


@functools.cache
def _fcm_document() -> str:
    return FCM_DISCOVERY.read_text(encoding="utf-8")


class FcmClient:
    def __init__(
        self,
        *,
        credentials_file: str | None = None,
        project_id: str | None = None,
        http: Any = None,
        timeout: float = SEND_TIMEOUT_S,
    ) -> None:
        """A client for projects.messages.send. With a service account key
        (`credentials_file`, else CCM_FCM_CREDENTIALS_FILE) its credentials authorise `http`
        or a fresh connection; the project is `project_id`, else CCM_FCM_PROJECT_ID, else the
        key's own. Without a key, `http` is used as it is (already authorised, or a test mock).
        """
        key_file = credentials_file or settings.CCM_FCM_CREDENTIALS_FILE
        project = project_id or settings.CCM_FCM_PROJECT_ID
        if key_file:
            try:
                credentials = service_account.Credentials.from_service_account_file(
                    key_file, scopes=list(FCM_SCOPES)
                )
            except (OSError, ValueError) as exc:
                raise ImproperlyConfigured(
                    f"CCM_FCM_CREDENTIALS_FILE {key_file!r} is not a service account key: {exc}"
                ) from exc
            project = project or credentials.project_id
            # httplib2 waits forever by default; a hung send would hold its worker for good.
            http = AuthorizedHttp(credentials, http=http or httplib2.Http(timeout=timeout))
        elif http is None:
            raise ImproperlyConfigured("CCM_FCM_CREDENTIALS_FILE is not set")
        if not project:
            raise ImproperlyConfigured(
                "no FCM project: set CCM_FCM_PROJECT_ID or use a key that names its project_id"
            )
        self.project_id = project
        self.service = build_from_document(_fcm_document(), http=http)

    def send(self, message: PushMessage) -> str:
        notification = {"body": message.body}
        if message.title:
            notification["title"] = message.title
        body = {
            "message": {
                "token": message.device.token,
                "notification": notification,
                "data": message.data,
            }
        }
        request = (
            self.service.projects().messages().send(parent=f"projects/{self.project_id}", body=body)
        )
        try:
            response = request.execute()
        except HttpError as exc:
            raise fcm_error(exc) from exc
        except google.auth.exceptions.TransportError as exc:
            # The token could not be fetched: nothing was sent.
            raise TransientSendError(f"FCM auth: {exc}") from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            raise PermanentSendError(f"FCM refused the service account: {exc}") from exc
        except (OSError, httplib2.HttpLib2Error) as exc:
            raise TransientSendError(f"FCM did not answer: {exc!r}", maybe_sent=True) from exc
        return str(response.get("name", ""))


def fcm_error(exc: HttpError) -> SendError:
    """FCM's answer → what the dispatcher does (firebase.google.com/docs/reference/fcm/rest/v1/
    ErrorCode)."""
    status = int(exc.resp.status)
    try:
        error = json.loads(exc.content)["error"]
    except (ValueError, TypeError, KeyError):
        error = {}
    details = error.get("details") or []
    code = next(
        (d["errorCode"] for d in details if isinstance(d, dict) and d.get("errorCode")),
        error.get("status") or str(status),
    )
    text = f"FCM {status} {code}: {error.get('message') or exc.resp.reason or ''}".strip()
    if code == "UNREGISTERED":
        return DeviceGone(text)
    if code == "INVALID_ARGUMENT" and _about_the_token(error):
        return DeviceGone(text)
    if status == 429 or status >= 500:
        return TransientSendError(text, maybe_sent=status >= 500)
    if status in (401, 403):
        # Never the device's fault (SENDER_ID_MISMATCH included: a wrong project or key would
        # otherwise deactivate every device), so nothing is deactivated.
        return PermanentSendError(f"{text} (check CCM_FCM_CREDENTIALS_FILE and the project)")
    return PermanentSendError(text)


def _about_the_token(error: dict) -> bool:
    for detail in error.get("details") or []:
        for violation in (detail or {}).get("fieldViolations") or []:
            if violation.get("field") == "message.token":
                return True
    return "registration token" in str(error.get("message", "")).lower()


def web_push_send(message: PushMessage, *, timeout: float = SEND_TIMEOUT_S) -> str:
    """Encrypt the message for the browser's subscription (RFC 8291) and post it to the push
    service with a VAPID signature (RFC 8292)."""
    subject = settings.CCM_VAPID_SUBJECT
    if not subject:
        raise ImproperlyConfigured("CCM_VAPID_SUBJECT (mailto: or https:) is not set")
    device = message.device
    payload = {"title": message.title, "body": message.body, "data": message.data}
    try:
        response = webpush(
            subscription_info={
                "endpoint": device.token,
                "keys": {"p256dh": device.p256dh, "auth": device.auth},
            },
            data=json.dumps(payload, separators=(",", ":")),
            vapid_private_key=vapid_key(),
            vapid_claims={"sub": subject},  # a fresh dict: webpush adds aud and exp to it
            ttl=WEBPUSH_TTL_S,
            timeout=timeout,
        )
    except WebPushException as exc:
        raise _webpush_error(exc) from exc
    except requests.Timeout as exc:
        raise TransientSendError(f"push service timed out: {exc}", maybe_sent=True) from exc
    except requests.RequestException as exc:
        raise TransientSendError(f"could not reach the push service: {exc}") from exc
    except ValueError as exc:
        # The subscription's keys cannot be used to encrypt: nothing can ever reach it.
        raise DeviceGone(f"the Web Push subscription is not usable: {exc}") from exc
    return response.headers.get("Location") or f"webpush-{response.status_code}"


def _webpush_error(exc: WebPushException) -> SendError:
    response = exc.response
    status = getattr(response, "status_code", None)
    reason = (getattr(response, "text", "") or "")[:300]
    text = f"Web Push {status}: {reason}".strip(": ")
    if status in (404, 410):
        return DeviceGone(f"{text} (the subscription has expired or was withdrawn)")
    if status is None or status == 429 or status >= 500:
        return TransientSendError(text)
    if status in (401, 403):
        return PermanentSendError(f"{text} (check CCM_VAPID_PRIVATE_KEY and CCM_VAPID_SUBJECT)")
    return PermanentSendError(text)


def vapid_key() -> Vapid:
    value = settings.CCM_VAPID_PRIVATE_KEY
    if not value:
        raise ImproperlyConfigured("CCM_VAPID_PRIVATE_KEY is not set")
    return _vapid_from(value)


@functools.lru_cache(maxsize=4)
def _vapid_from(value: str) -> Vapid:
    """The VAPID key from a PEM, a PEM file's path, or the base64url raw/DER form that
    `vapid --gen` and most Web Push guides print."""
    text = value
    if "-----BEGIN" not in value and os.path.isfile(value):
        text = Path(value).read_text(encoding="ascii")
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
            vapid = Vapid(private_key=key)
        else:
            vapid = Vapid.from_string(text.strip())
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"CCM_VAPID_PRIVATE_KEY is not a usable key: {exc}") from exc
    key = vapid.private_key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ImproperlyConfigured("CCM_VAPID_PRIVATE_KEY must be a P-256 (prime256v1) EC key")
    return vapid

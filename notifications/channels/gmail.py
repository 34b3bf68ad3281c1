"""Gmail API gateway: send internal mail and read the shared mailbox (bounces, replies).

Customer mail goes through the ESP; mail whose sender must be a real Google Workspace mailbox
(internal alerts, approvals, reports) goes through the Gmail API with a service account using
domain-wide delegation. `sender_for` says which channel a kind of mail uses.

A `GmailGateway` wraps one httplib2 connection, which is not thread-safe: build one per thread
or task, never share one across threads.
"""

from __future__ import annotations

import base64
import copy
import email
import email.policy
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from typing import Any, Literal, Protocol, TypedDict

import google.auth.exceptions
import httplib2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage as DjangoEmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.utils.html import strip_tags
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp  # type: ignore[import-untyped]
from googleapiclient.discovery import build  # type: ignore[import-untyped]
from googleapiclient.errors import HttpError  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

# gmail.modify covers send, read, search and label changes; the Workspace admin must authorise
# exactly this scope for the service account's client id (domain-wide delegation).
GMAIL_SCOPES = ("https://www.googleapis.com/auth/gmail.modify",)
PROCESSED_LABEL = "ccm-processed"
DEFAULT_INBOX_QUERY = f"in:inbox -label:{PROCESSED_LABEL}"
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# The Gmail API refuses maxResults above 500 on messages.list.
_MAX_PAGE_SIZE = 500

Channel = Literal["gmail", "esp"]
DEFAULT_SENDER_PROFILE: dict[str, Channel] = {
    "internal_alert": "gmail",
    "approval": "gmail",
    "report": "gmail",
}


def sender_for(kind: str) -> Channel:
    """Which channel sends mail of this kind: "gmail" or "esp" (the default for unlisted kinds).

    `settings.CCM_SENDER_PROFILE` replaces the default profile as a whole, so a deploy can move
    a kind back to the ESP without listing every other one.
    """
    profile: dict[str, str] = getattr(settings, "CCM_SENDER_PROFILE", DEFAULT_SENDER_PROFILE)
    channel = profile.get(kind, "esp")
    if channel == "gmail":
        return "gmail"
    if channel == "esp":
        return "esp"
    raise ImproperlyConfigured(
        f"CCM_SENDER_PROFILE[{kind!r}] is {channel!r}; expected 'gmail' or 'esp'."
    )


class GmailError(Exception):
    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason if status is None else f"HTTP {status}: {reason}")
        self.reason = reason
        self.status = status


class GmailPermanentError(GmailError):
    """Gmail refused the request; sending it again cannot succeed."""


class GmailTransientError(GmailError):
    """Retries ran out on errors that might have cleared later."""

    def __init__(self, reason: str, *, status: int | None = None, maybe_sent: bool = False) -> None:
        super().__init__(reason, status=status)
        # True when the last send may have gone through unseen: resend only with the same
        # Message-ID and check_existing=True, never under a fresh id.
        self.maybe_sent = maybe_sent


class DeliveryStatus(TypedDict):
    """The failed (or first) recipient of a delivery-status notification (RFC 3464)."""

    original_recipient: str | None
    action: str | None
    status: str | None
    diagnostic_code: str | None
    original_message_id: str | None


@dataclass(frozen=True)
class InboxMessage:
    id: str
    thread_id: str
    from_address: str
    to: list[str]
    subject: str
    date: datetime | None
    message_id_header: str | None
    in_reply_to: str | None
    text: str
    dsn: DeliveryStatus | None = None
    # Lower-cased names; a repeated header (Received) keeps its first value.
    headers: dict[str, str] = field(default_factory=dict)
    # As written (unfolded), in order, for notifications.channels.mailauth: every From header,
    # and every Authentication-Results header, topmost (the receiving server's) first.
    from_values: tuple[str, ...] = ()
    authentication_results: tuple[str, ...] = ()


class _DjangoLikeMessage(Protocol):
    def message(self) -> Message: ...


@dataclass(frozen=True)
class _Failure:
    reason: str
    status: int | None
    retryable: bool
    # The request may have reached Gmail and taken effect before the error.
    outcome_unknown: bool
    retry_after: float | None = None


# Transport failures surface as OSError (socket.timeout, ConnectionError, ssl.SSLError) or
# httplib2's own errors; google-auth wraps failures while fetching a token.
_CAUGHT = (HttpError, OSError, httplib2.HttpLib2Error, google.auth.exceptions.GoogleAuthError)


class GmailGateway:
    def __init__(
        self,
        *,
        service: Any = None,
        credentials_file: str | None = None,
        delegated_user: str | None = None,
        http: Any = None,
        max_attempts: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 32.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """Build the Gmail v1 client from the discovery document shipped with the library.

        `service` is used as given. Otherwise, when a service account key is known
        (`credentials_file`, else settings.GMAIL_SERVICE_ACCOUNT_FILE), its credentials are
        delegated to `delegated_user` (else settings.GMAIL_DELEGATED_USER) and authorise `http`,
        or a fresh connection that times out after `timeout` seconds. Without a key, `http` is
        used as is: already authorised, or a test mock.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._jitter = jitter
        self._label_ids: dict[str, str] = {}
        self.delegated_user = delegated_user or getattr(settings, "GMAIL_DELEGATED_USER", None)
        self.credentials: service_account.Credentials | None = None
        if service is not None:
            self.service = service
            return
        key_file = credentials_file or getattr(settings, "GMAIL_SERVICE_ACCOUNT_FILE", None)
        if key_file:
            self.credentials = self._delegated_credentials(str(key_file))
            # httplib2 waits forever by default; a hung send would hold its worker for good.
            http = AuthorizedHttp(self.credentials, http=http or httplib2.Http(timeout=timeout))
        elif http is None:
            raise ImproperlyConfigured("GMAIL_SERVICE_ACCOUNT_FILE is not set.")
        self.service = build("gmail", "v1", http=http, static_discovery=True, cache_discovery=False)

    def _delegated_credentials(self, key_file: str) -> service_account.Credentials:
        if not self.delegated_user:
            # Without a subject the service account acts as itself, which has no mailbox.
            raise ImproperlyConfigured("GMAIL_DELEGATED_USER is not set.")
        credentials = service_account.Credentials.from_service_account_file(
            key_file, scopes=list(GMAIL_SCOPES)
        )
        return credentials.with_subject(self.delegated_user)

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        message: Message | _DjangoLikeMessage,
        *,
        message_id: str,
        check_existing: bool = False,
    ) -> str:
        """Send `message` under `message_id` and return the Gmail id of the sent message.

        After a timeout, connection error or 5xx the send may have gone through, so every
        later attempt first searches the mailbox for the Message-ID and returns the message
        it finds instead of sending a second copy. `check_existing=True` starts with that
        search, which makes a task that re-sends with the same Message-ID safe to run twice.
        """
        header_id = f"<{_bare_message_id(message_id)}>"
        raw = base64.urlsafe_b64encode(_mime_bytes(message, message_id=header_id)).decode("ascii")
        outcome_unknown = check_existing
        attempt = 0
        while True:
            attempt += 1
            try:
                if outcome_unknown:
                    existing = self.find_by_message_id(header_id)
                    if existing is not None:
                        logger.info("gmail: %s already in the mailbox as %s", header_id, existing)
                        return existing
                response = self._messages().send(userId="me", body={"raw": raw}).execute()
                return str(response["id"])
            except _CAUGHT as exc:
                failure = _classify(exc)
                outcome_unknown = outcome_unknown or failure.outcome_unknown
                self._give_up_or_wait(
                    failure, attempt=attempt, action=f"send {header_id}", maybe_sent=outcome_unknown
                )

    def find_by_message_id(self, message_id: str) -> str | None:
        """The Gmail id of a message in the mailbox (Sent, Spam and Trash included), or None.

        One request, no retries: `send` owns the retry loop around it.
        """
        response = (
            self._messages()
            .list(
                userId="me",
                q=f"rfc822msgid:{_bare_message_id(message_id)}",
                includeSpamTrash=True,
            )
            .execute()
        )
        messages = response.get("messages") or []
        return str(messages[0]["id"]) if messages else None

    # -- reading ---------------------------------------------------------------------------

    def list_inbox(self, *, query: str = DEFAULT_INBOX_QUERY, max_results: int = 100) -> list[str]:
        """Ids of up to `max_results` messages matching `query`, newest first."""
        ids: list[str] = []
        page_token: str | None = None
        while len(ids) < max_results:
            page = self._execute(
                self._messages().list,
                userId="me",
                q=query,
                maxResults=min(_MAX_PAGE_SIZE, max_results - len(ids)),
                pageToken=page_token,
            )
            ids.extend(str(item["id"]) for item in page.get("messages") or [])
            page_token = page.get("nextPageToken")
            if not page_token:
                break
        return ids[:max_results]

    def read(self, message_id: str) -> InboxMessage:
        data = self._execute(self._messages().get, userId="me", id=message_id, format="raw")
        return inbox_message_from_api(data)

    def mark_processed(self, message_id: str) -> None:
        """Label the message ccm-processed and mark it read; doing it twice changes nothing."""
        label_id = self._label_id(PROCESSED_LABEL)
        self._execute(
            self._messages().modify,
            userId="me",
            id=message_id,
            body={"addLabelIds": [label_id], "removeLabelIds": ["UNREAD"]},
        )

    def _label_id(self, name: str) -> str:
        if name not in self._label_ids:
            label_id = self._find_label(name)
            if label_id is None:
                try:
                    created = self._execute(
                        self.service.users().labels().create,
                        userId="me",
                        body={
                            "name": name,
                            "labelListVisibility": "labelShow",
                            "messageListVisibility": "show",
                        },
                    )
                    label_id = str(created["id"])
                except GmailPermanentError as exc:
                    # 409: another worker created it between our list and create.
                    label_id = self._find_label(name) if exc.status == 409 else None
                    if label_id is None:
                        raise
            self._label_ids[name] = label_id
        return self._label_ids[name]

    def _find_label(self, name: str) -> str | None:
        response = self._execute(self.service.users().labels().list, userId="me")
        for label in response.get("labels") or []:
            if label.get("name") == name:
                return str(label["id"])
        return None

    # -- plumbing --------------------------------------------------------------------------

    def _messages(self) -> Any:
        return self.service.users().messages()

    def _execute(self, method: Callable[..., Any], **params: Any) -> dict[str, Any]:
        """Run an idempotent call, retrying rate limits, 5xx and transport errors."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response: dict[str, Any] = method(**params).execute()
                return response
            except _CAUGHT as exc:
                failure = _classify(exc)
                self._give_up_or_wait(
                    failure, attempt=attempt, action=getattr(method, "__name__", "call")
                )

    def _give_up_or_wait(
        self, failure: _Failure, *, attempt: int, action: str, maybe_sent: bool = False
    ) -> None:
        if not failure.retryable:
            raise GmailPermanentError(failure.reason, status=failure.status)
        if attempt >= self.max_attempts:
            raise GmailTransientError(
                f"{failure.reason} (gave up after {attempt} attempts)",
                status=failure.status,
                maybe_sent=maybe_sent,
            )
        delay = self._backoff(attempt, retry_after=failure.retry_after)
        logger.warning(
            "gmail: %s failed (%s, attempt %d of %d); retrying in %.1fs",
            action,
            failure.reason,
            attempt,
            self.max_attempts,
            delay,
        )
        self._sleep(delay)

    def _backoff(self, attempt: int, *, retry_after: float | None) -> float:
        # Half fixed, half random: the wait still grows each attempt, while workers that hit
        # the same per-user limit together spread out instead of retrying in step.
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        delay = ceiling / 2 + self._jitter() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return delay


def _classify(exc: BaseException) -> _Failure:
    if isinstance(exc, HttpError):
        status = int(exc.resp.status)
        reason, message = _error_reason(exc)
        text = f"{reason}: {message}" if message else reason
        if status == 429 or (status == 403 and reason in RATE_LIMIT_REASONS):
            return _Failure(
                text, status, retryable=True, outcome_unknown=False, retry_after=_retry_after(exc)
            )
        if status >= 500:
            return _Failure(text, status, retryable=True, outcome_unknown=True)
        return _Failure(text, status, retryable=False, outcome_unknown=False)
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        # Token trouble happens before the API request is made, so nothing was sent. A
        # refused delegation (unauthorized_client) is permanent; a network blip is not.
        retryable = isinstance(exc, google.auth.exceptions.TransportError) or bool(
            getattr(exc, "retryable", False)
        )
        return _Failure(f"auth: {exc}", None, retryable=retryable, outcome_unknown=False)
    return _Failure(f"transport: {exc!r}", None, retryable=True, outcome_unknown=True)


def _error_reason(exc: HttpError) -> tuple[str, str]:
    """(reason, message) from a Google error body; the HTTP reason phrase when unparseable."""
    try:
        error = json.loads(exc.content)["error"]
        details = error.get("errors") or [{}]
        reason = details[0].get("reason") or error.get("status") or ""
        return str(reason or exc.resp.reason or exc.resp.status), str(error.get("message", ""))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return str(exc.resp.reason or exc.resp.status), ""


def _retry_after(exc: HttpError) -> float | None:
    value = exc.resp.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the exponential backoff is close enough


def _bare_message_id(message_id: str) -> str:
    bare = message_id.strip().removeprefix("<").removesuffix(">")
    if not bare or any(char.isspace() for char in bare) or "<" in bare or ">" in bare:
        raise ValueError(f"not a Message-ID: {message_id!r}")
    return bare


def _mime_bytes(message: Message | _DjangoLikeMessage, *, message_id: str) -> bytes:
    if isinstance(message, Message):
        mime = copy.deepcopy(message)  # the caller's message keeps its own headers
    else:
        mime = message.message()
        bcc = getattr(message, "bcc", None)
        if bcc and "Bcc" not in mime:
            # Django leaves Bcc out of the MIME because SMTP gets it in the envelope; Gmail
            # takes the recipients from the headers and strips Bcc from delivered copies.
            mime["Bcc"] = ", ".join(bcc)
    del mime["Message-ID"]
    mime["Message-ID"] = message_id
    return mime.as_bytes()


# -- parsing received mail -------------------------------------------------------------------


def inbox_message_from_api(data: dict[str, Any]) -> InboxMessage:
    """An InboxMessage from a users.messages.get(format="raw") response."""
    raw = str(data["raw"])
    mime = email.message_from_bytes(
        base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), policy=email.policy.default
    )
    headers: dict[str, str] = {}
    for name, value in mime.items():
        headers.setdefault(name.lower(), str(value))
    raw_headers = [(name.lower(), " ".join(str(value).split())) for name, value in mime.raw_items()]
    return InboxMessage(
        id=str(data["id"]),
        thread_id=str(data.get("threadId", "")),
        from_address=email.utils.parseaddr(headers.get("from", ""))[1],
        to=[
            address
            for _, address in email.utils.getaddresses([str(v) for v in mime.get_all("To", [])])
            if address
        ],
        subject=headers.get("subject", ""),
        date=_message_date(headers.get("date"), internal_date=data.get("internalDate")),
        message_id_header=headers.get("message-id"),
        in_reply_to=headers.get("in-reply-to"),
        text=_text_body(mime),
        dsn=_delivery_status(mime),
        headers=headers,
        from_values=tuple(value for name, value in raw_headers if name == "from"),
        authentication_results=tuple(
            value for name, value in raw_headers if name == "authentication-results"
        ),
    )


def _message_date(value: str | None, *, internal_date: str | None) -> datetime | None:
    if value:
        try:
            return email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            pass
    if internal_date:
        # When Gmail received it, in epoch milliseconds: better than no date at all.
        return datetime.fromtimestamp(int(internal_date) / 1000, tz=UTC)
    return None


def _body_parts(part: Message) -> Iterator[Message]:
    # An attached message (the original mail inside a bounce) or a delivery-status block is
    # not the text of this message, and neither is an attachment.
    if part.get_content_maintype() == "message":
        return
    if part.is_multipart():
        for sub in _subparts(part):
            yield from _body_parts(sub)
    elif part.get_content_disposition() != "attachment":
        yield part


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def _text_body(mime: Message) -> str:
    html: str | None = None
    for part in _body_parts(mime):
        content_type = part.get_content_type()
        if content_type == "text/plain":
            return _decoded_text(part).strip()
        if content_type == "text/html" and html is None:
            html = _decoded_text(part)
    return strip_tags(html).strip() if html else ""


def _delivery_status(mime: Message) -> DeliveryStatus | None:
    report = next(
        (part for part in mime.walk() if part.get_content_type() == "multipart/report"), None
    )
    if report is None:
        return None
    blocks: list[Message] = []
    original_message_id: str | None = None
    for part in _subparts(report):
        content_type = part.get_content_type()
        if content_type in ("message/delivery-status", "message/global-delivery-status"):
            blocks = _status_blocks(part)
        elif content_type in ("message/rfc822", "message/global"):
            inner = _subparts(part)
            if inner:
                original_message_id = _header(inner[0], "Message-ID")
        elif content_type == "text/rfc822-headers":
            original_message_id = _header(
                HeaderParser().parsestr(_decoded_text(part)), "Message-ID"
            )
    if not blocks:
        return None
    per_message, recipients = blocks[0], blocks[1:] or blocks[:1]
    recipient = next(
        (block for block in recipients if (_header(block, "Action") or "").lower() == "failed"),
        recipients[0],
    )
    return DeliveryStatus(
        original_recipient=_typed_value(
            _header(recipient, "Original-Recipient") or _header(recipient, "Final-Recipient")
        ),
        action=_header(recipient, "Action"),
        status=_header(recipient, "Status"),
        diagnostic_code=_typed_value(_header(recipient, "Diagnostic-Code")),
        # Gmail's own bounces also name the original in the per-message block.
        original_message_id=original_message_id or _header(per_message, "X-Original-Message-ID"),
    )


def _subparts(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [sub for sub in payload if isinstance(sub, Message)] if isinstance(payload, list) else []


def _status_blocks(part: Message) -> list[Message]:
    if isinstance(part.get_payload(), list):
        return _subparts(part)
    # message/global-delivery-status is not split into blocks by the parser.
    text = _decoded_text(part).replace("\r\n", "\n")
    return [HeaderParser().parsestr(chunk) for chunk in text.split("\n\n") if chunk.strip()]


def _header(message: Message, name: str) -> str | None:
    value = message.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _typed_value(value: str | None) -> str | None:
    """Drop the type prefix of a DSN field: "rfc822; a@b.example" -> "a@b.example"."""
    if value is None:
        return None
    kind, separator, rest = value.partition(";")
    return rest.strip() if separator and " " not in kind.strip() else value


# -- Django email backend --------------------------------------------------------------------


class GmailEmailBackend(BaseEmailBackend):
    """Send Django EmailMessages through the Gmail API.

    `get_connection("notifications.channels.gmail.GmailEmailBackend")` builds the gateway from
    settings on first use; tests pass `gateway=`.
    """

    def __init__(
        self, fail_silently: bool = False, *, gateway: GmailGateway | None = None, **kwargs: Any
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.gateway = gateway

    def send_messages(self, email_messages: Sequence[DjangoEmailMessage]) -> int:
        if not email_messages:
            return 0
        if self.gateway is None:
            try:
                self.gateway = GmailGateway()
            except (OSError, ValueError, ImproperlyConfigured):
                if self.fail_silently:
                    return 0
                raise
        sent = 0
        for message in email_messages:
            if not message.recipients():
                continue
            try:
                self.gateway.send(message, message_id=_message_id_for(message))
            except GmailError:
                if not self.fail_silently:
                    raise
            else:
                sent += 1
        return sent


def _message_id_for(message: DjangoEmailMessage) -> str:
    for name, value in message.extra_headers.items():
        if name.lower() == "message-id":
            return str(value)
    domain = email.utils.parseaddr(str(message.from_email))[1].rpartition("@")[2]
    message_id = email.utils.make_msgid(domain=domain or None)
    # Kept on the message so that sending the same object again reuses the id, which is
    # what lets the gateway recognise a copy that already went out.
    message.extra_headers["Message-ID"] = message_id
    return message_id

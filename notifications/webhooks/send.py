"""Sending webhook events: signed POSTs, retried with backoff for a bounded time, every attempt
logged. Tasks take ids, claim their row with a guarded update and are safe to run twice.

Each request carries

    CCM-Webhook-Id: <event id, a UUID; the same on every attempt and replay: dedupe by it>
    CCM-Webhook-Timestamp: <unix seconds when this attempt was signed>
    CCM-Webhook-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

A 2xx answer delivers the event. Anything else — another status (redirects are not followed),
a refused connection, no answer within CCM_WEBHOOK_TIMEOUT_S — is retried with exponential
backoff and full jitter until CCM_WEBHOOK_MAX_ATTEMPTS attempts or CCM_WEBHOOK_RETRY_HOURS
have passed, and then the event is failed (an operator or the integrator can replay it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import SplitResult, urlsplit

import urllib3
from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from ccm.backoff import backoff_seconds
from ccm.tasks import Sweep, enqueue, register_sweep
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookDeliveryState
from notifications.webhooks.services import SEND_TASK, WebhookUrlRefused, webhook_addresses

logger = logging.getLogger(__name__)

HEADER_ID = "CCM-Webhook-Id"
HEADER_TIMESTAMP = "CCM-Webhook-Timestamp"
HEADER_SIGNATURE = "CCM-Webhook-Signature"
USER_AGENT = "CCM-Webhooks/1"
EXCERPT_BYTES = 1000
# Backoff between attempts: full jitter over 1 min, 2 min, 4 min, … capped at 6 hours.
BACKOFF_BASE_S = 60.0
BACKOFF_CAP_S = 6 * 3600.0
UNSTICK_TASK = "notifications.webhooks.send.webhook_delivery_unstick"
# A new event whose enqueue was lost (a crash right after commit) is picked up after this.
LOST_ENQUEUE_AFTER = timedelta(minutes=2)


def body_of(delivery: WebhookDelivery) -> bytes:
    """The bytes POSTed: the stored payload, serialised the same way on every attempt."""
    return json.dumps(
        delivery.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer at all
    excerpt: str = ""
    error: str = ""
    connected: bool = True

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST once to an address the URL's host was checked to resolve to (the next one only
    when a connection to the previous cannot be made); no redirects, no retries here,
    CCM_WEBHOOK_TIMEOUT_S for each exchange."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = webhook_addresses(parts.hostname or "", port)
    except WebhookUrlRefused as exc:
        return Answer(None, error=str(exc))
    answer = Answer(None, error="the host has no address", connected=False)
    for address in addresses:
        answer = _post_to(address, port, parts, body, headers)
        if answer.connected:
            break
    return answer


def _post_to(address: str, port: int, parts: SplitResult, body: bytes, headers) -> Answer:
    timeout = urllib3.Timeout(total=settings.CCM_WEBHOOK_TIMEOUT_S)
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        # Connect to the checked address, but speak TLS to (and verify) the host by name.
        pool = urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            server_hostname=parts.hostname,
            assert_hostname=parts.hostname,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        response = pool.urlopen(
            "POST",
            target,
            body=body,
            headers={**headers, "Host": parts.netloc},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            excerpt = response.read(EXCERPT_BYTES)
        finally:
            response.release_conn()
        # NUL is the one character a PostgreSQL text column refuses.
        text = excerpt.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        return Answer(response.status, text)
    except urllib3.exceptions.NewConnectionError as exc:
        # Caught first: urllib3 makes it a kind of (connect) timeout for backward compatibility.
        return Answer(None, error=f"could not connect: {exc}", connected=False)
    except urllib3.exceptions.ConnectTimeoutError:
        limit = settings.CCM_WEBHOOK_TIMEOUT_S
        return Answer(None, error=f"no connection within {limit:g} s", connected=False)
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        return Answer(None, error=f"no answer within {settings.CCM_WEBHOOK_TIMEOUT_S:g} s")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Answer(None, error=f"could not deliver: {exc}")
    finally:
        pool.close()


def webhook_delivery_send(webhook_delivery_id: int) -> str:
    """The task: claim a due event (pending → sending), POST it, record the attempt and move
    it to delivered, back to pending with the next attempt scheduled, or to failed."""
    now = timezone.now()
    claimed = (
        WebhookDelivery.objects.filter(pk=webhook_delivery_id, state=WebhookDeliveryState.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(state=WebhookDeliveryState.SENDING, updated_at=now)
    )
    if claimed != 1:
        return "skipped"  # not due, done, or another worker has it
    delivery = WebhookDelivery.objects.select_related("subscription__api_key").get(
        pk=webhook_delivery_id
    )
    subscription = delivery.subscription
    if not subscription.is_live:
        WebhookDelivery.objects.filter(pk=delivery.pk, state=WebhookDeliveryState.SENDING).update(
            state=WebhookDeliveryState.FAILED,
            last_error="not sent: the subscription is inactive, deleted or its API key revoked",
            next_attempt_at=None,
            updated_at=timezone.now(),
        )
        return WebhookDeliveryState.FAILED
    body = body_of(delivery)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_ID: str(delivery.event_id),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signature(subscription.secret, timestamp, body),
    }
    started_at = timezone.now()
    started = time.monotonic()
    answer = post(subscription.url, body, headers)
    duration_ms = round((time.monotonic() - started) * 1000)
    return _record(delivery, answer, started_at=started_at, duration_ms=duration_ms)


def _next_number(delivery: WebhookDelivery) -> int:
    last = WebhookAttempt.objects.filter(delivery=delivery).aggregate(n=Max("number"))["n"]
    return (last or 0) + 1


def _record(delivery: WebhookDelivery, answer: Answer, *, started_at, duration_ms: int) -> str:
    now = timezone.now()
    error = answer.error or ("" if answer.ok else f"the receiver answered {answer.status}")
    attempts = delivery.attempts + 1
    fields: dict = {
        "attempts": F("attempts") + 1,
        "last_status_code": answer.status,
        "last_error": error[:2000],
        "response_excerpt": answer.excerpt,
        "updated_at": now,
    }
    if answer.ok:
        state = WebhookDeliveryState.DELIVERED
        fields.update(delivered_at=now, next_attempt_at=None)
    else:
        deadline = (delivery.replayed_at or delivery.created_at) + timedelta(
            hours=settings.CCM_WEBHOOK_RETRY_HOURS
        )
        if attempts >= settings.CCM_WEBHOOK_MAX_ATTEMPTS or now >= deadline:
            state = WebhookDeliveryState.FAILED
            fields.update(
                next_attempt_at=None, last_error=f"gave up after {attempts} attempts: {error}"
            )
        else:
            state = WebhookDeliveryState.PENDING
            delay = max(1.0, backoff_seconds(attempts, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S))
            fields["next_attempt_at"] = min(now + timedelta(seconds=delay), deadline)
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=_next_number(delivery),
            attempted_at=started_at,
            status_code=answer.status,
            error=error[:2000],
            duration_ms=duration_ms,
        )
        # Guarded: if the sweep took the row back meanwhile (this attempt outlived the stale
        # limit), its outcome is logged above and the newer attempt decides the state.
        WebhookDelivery.objects.filter(pk=delivery.pk, state=WebhookDeliveryState.SENDING).update(
            state=state, **fields
        )
    if state == WebhookDeliveryState.FAILED:
        logger.warning(
            "webhook %s to %s failed: %s", delivery.event_id, delivery.subscription_id, error
        )
    return state


def webhook_deliveries_send(ids: list[int]) -> None:
    """The bulk path's task: one queue row for a chunk of events, each then sent on its own
    (a slow receiver must not hold up the others behind one worker's timeout)."""
    for pk in ids:
        enqueue(SEND_TASK, pk)


def webhook_delivery_unstick(webhook_delivery_id: int) -> str:
    """An event left in `sending` by a worker that died: log the lost attempt and send again
    (the receiver may have got it; it dedupes by the event id)."""
    stale = timezone.now() - timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S)
    delivery = WebhookDelivery.objects.filter(
        pk=webhook_delivery_id, state=WebhookDeliveryState.SENDING, updated_at__lt=stale
    ).first()
    if delivery is None:
        return "skipped"
    now = timezone.now()
    with transaction.atomic():
        reset = WebhookDelivery.objects.filter(
            pk=delivery.pk, state=WebhookDeliveryState.SENDING, updated_at=delivery.updated_at
        ).update(
            state=WebhookDeliveryState.PENDING,
            attempts=F("attempts") + 1,
            next_attempt_at=now,
            last_error="the worker was lost while sending; the outcome is unknown",
            updated_at=now,
        )
        if reset:
            WebhookAttempt.objects.create(
                delivery=delivery,
                number=_next_number(delivery),
                attempted_at=delivery.updated_at,
                error="the worker was lost while sending; the outcome is unknown",
            )
    if not reset:
        return "skipped"
    return webhook_delivery_send(delivery.pk)


def register_sweeps() -> None:
    register_sweep(
        Sweep(
            name="notifications.webhooks_due",
            # Retries that are due, and new events whose enqueue was lost.
            queryset=lambda: WebhookDelivery.objects.filter(
                state=WebhookDeliveryState.PENDING
            ).filter(
                Q(attempts__gt=0, next_attempt_at__lte=timezone.now())
                | Q(attempts=0, next_attempt_at__lte=timezone.now() - LOST_ENQUEUE_AFTER)
            ),
            task=SEND_TASK,
            older_than=timedelta(seconds=0),
        )
    )
    register_sweep(
        Sweep(
            name="notifications.webhooks_sending_stale",
            queryset=lambda: WebhookDelivery.objects.filter(state=WebhookDeliveryState.SENDING),
            task=UNSTICK_TASK,
            older_than=timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S),
        )
    )

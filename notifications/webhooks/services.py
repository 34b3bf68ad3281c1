"""Status webhooks to integrators: subscriptions, and the outbox of the events they receive.

An event is a `WebhookDelivery` row per matching subscription, written in the same transaction
as the state change it reports (so a rolled-back change reports nothing, and a committed one is
never lost), and sent after commit by `webhook_send.webhook_delivery_send`.

Where events come from:

- every FSM transition of a communication into composed, sent, delivered, viewed, actioned,
  undeliverable or compose_failed (django-fsm's `post_transition`, connected in
  `NotificationsConfig.ready()`, so a transition added later reports itself too);
- a delivery that failed for good (`services._fail`, `tracking._delivery_fail`), as "failed";
- the bulk path, which moves whole chunks with set-based SQL, through `webhook_events_emit`
  with one insert per chunk.

Who hears what: a subscription's `client` is compared with `Communication.client`, so an
integrator receives events only about the communications it created; a subscription made in the
admin with no client receives every communication's events.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ccm import audit
from ccm.tasks import enqueue
from notifications.models import (
    CommState,
    Communication,
    Delivery,
    DeliveryState,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEvent,
    WebhookSubscription,
)

SEND_TASK = "notifications.webhooks.send.webhook_delivery_send"
SEND_MANY_TASK = "notifications.webhooks.send.webhook_deliveries_send"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a marker, not a secret
# More rows than this (the bulk path) travel to the queue as one task carrying their ids.
ENQUEUE_ONE_BY_ONE_UP_TO = 10

# The communication state a transition ends in → the event it reports. compose_failed is a
# "failed" event too: the communication failed for good (data.status says which way).
EVENT_OF_STATE: dict[str, WebhookEvent] = {
    CommState.COMPOSED: WebhookEvent.COMPOSED,
    CommState.SENT: WebhookEvent.SENT,
    CommState.DELIVERED: WebhookEvent.DELIVERED,
    CommState.VIEWED: WebhookEvent.VIEWED,
    CommState.ACTIONED: WebhookEvent.ACTIONED,
    CommState.UNDELIVERABLE: WebhookEvent.UNDELIVERABLE,
    CommState.COMPOSE_FAILED: WebhookEvent.FAILED,
}


class WebhookError(ValueError):
    """A request about webhooks that cannot be done; the message says what to do instead."""


class WebhookUrlRefused(WebhookError):
    pass


# --- where webhooks may go ------------------------------------------------------------------


# IPv6 forms that carry an IPv4 destination: a translator or relay delivers to that address,
# so it is the one that must be public (RFC 6052 NAT64 and the RFC 8215 local-use prefix).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address that `ip` wraps (mapped, compatible, NAT64, 6to4, Teredo)."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # the relay server and the client behind it
    return []


def _is_public(address: str) -> bool:
    """Whether `address` is globally reachable, judged by the IPv4 address it wraps if any."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False  # a site's own translator: never a public destination
        wrapped = _embedded_ipv4(ip)
        if wrapped:
            return all(v4.is_global and not v4.is_multicast for v4 in wrapped)
    return ip.is_global and not ip.is_multicast


def webhook_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, all of them public unless CCM_WEBHOOK_ALLOW_PRIVATE.

    Checked when a URL is given and again before every send, and the send connects to the
    address checked here: a name that later resolves to an internal address (DNS rebinding)
    reaches nothing inside."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookUrlRefused(f"The host {host!r} does not resolve ({exc}).") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.CCM_WEBHOOK_ALLOW_PRIVATE:
        private = [a for a in addresses if not _is_public(a)]
        if private:
            raise WebhookUrlRefused(
                f"The host {host!r} resolves to {private[0]}, a private, loopback or reserved "
                "address; webhooks go to public addresses only."
            )
    return addresses


def webhook_url_check(url: str) -> str:
    """The URL, stripped, if webhooks may be sent to it; else WebhookUrlRefused saying why."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # "http://[": an unclosed or invalid IPv6 literal
        raise WebhookUrlRefused(f"The URL is malformed ({exc}).") from exc
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlRefused("Give an http:// or https:// URL.")
    if settings.CCM_WEBHOOK_REQUIRE_HTTPS and parts.scheme != "https":
        raise WebhookUrlRefused("Give an https:// URL: webhooks carry customer data.")
    if not hostname:
        raise WebhookUrlRefused("The URL names no host.")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused(
            "Put no credentials in the URL; check the CCM-Webhook-Signature header instead."
        )
    if parts.fragment:
        raise WebhookUrlRefused("Leave out the #fragment: it is never sent.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlRefused(f"The URL's port is invalid ({exc}).") from exc
    webhook_addresses(hostname, port)
    return url


# --- subscriptions --------------------------------------------------------------------------


def _events(events: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(events))
    unknown = sorted(set(chosen) - set(WebhookEvent.values))
    if unknown:
        raise WebhookError(
            f"Unknown event(s): {', '.join(unknown)}. "
            f"Choose from: {', '.join(WebhookEvent.values)}."
        )
    if not chosen:
        raise WebhookError("Choose at least one event.")
    return [e for e in WebhookEvent.values if e in chosen]


@transaction.atomic
def webhook_subscription_create(
    *,
    url: str,
    client: str,
    by,
    events: Iterable[str] | None = None,
    api_key=None,
    description: str = "",
    active: bool = True,
) -> WebhookSubscription:
    """Subscribe `url` to `events` (all of them when None) of `client`'s communications (every
    client's when empty). The secret is generated here; show `subscription.secret` once."""
    subscription = WebhookSubscription.objects.create(
        client=client,
        api_key=api_key,
        url=webhook_url_check(url),
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        events=_events(WebhookEvent.values if events is None else events),
        description=description,
        active=active,
        created_by=by if by is not None and getattr(by, "pk", None) else None,
    )
    audit.record(
        actor=by,
        action="webhook_subscription.created",
        subject=subscription,
        after={"url": subscription.url, "events": subscription.events, "client": client},
    )
    return subscription


@transaction.atomic
def webhook_subscription_update(
    *,
    subscription: WebhookSubscription,
    by,
    url: str | None = None,
    events: Iterable[str] | None = None,
    description: str | None = None,
    active: bool | None = None,
) -> WebhookSubscription:
    locked = WebhookSubscription.objects.select_for_update().get(pk=subscription.pk)
    before = {"url": locked.url, "events": locked.events, "active": locked.active}
    if url is not None:
        locked.url = webhook_url_check(url)
    if events is not None:
        locked.events = _events(events)
    if description is not None:
        locked.description = description
    if active is not None:
        locked.active = active
    locked.save()
    audit.record(
        actor=by,
        action="webhook_subscription.updated",
        subject=locked,
        before=before,
        after={"url": locked.url, "events": locked.events, "active": locked.active},
    )
    return locked


@transaction.atomic
def webhook_subscription_delete(*, subscription: WebhookSubscription, by) -> None:
    """Stop the subscription for good. Its row and delivery log stay: they are the record of
    what was sent where; events not yet sent are failed by the sender."""
    updated = WebhookSubscription.objects.filter(
        pk=subscription.pk, deleted_at__isnull=True
    ).update(active=False, deleted_at=timezone.now(), updated_at=timezone.now())
    if updated:
        audit.record(actor=by, action="webhook_subscription.deleted", subject=subscription)


@transaction.atomic
def webhook_delivery_replay(*, delivery: WebhookDelivery, by) -> WebhookDelivery:
    """Send an event again, with the same event id and body (receivers dedupe by id), as new
    attempts with a fresh retry budget."""
    locked = (
        WebhookDelivery.objects.select_for_update(of=("self",))
        .select_related("subscription__api_key")
        .get(pk=delivery.pk)
    )
    if locked.state == WebhookDeliveryState.SENDING:
        raise WebhookError("This event is being sent right now; replay it once that attempt ends.")
    if not locked.subscription.is_live:
        raise WebhookError("The subscription is inactive; activate it before replaying events.")
    now = timezone.now()
    before = locked.state
    locked.state = WebhookDeliveryState.PENDING
    locked.attempts = 0
    locked.next_attempt_at = now
    locked.delivered_at = None
    locked.replayed_at = now
    locked.replay_count += 1
    locked.save()
    audit.record(
        actor=by,
        action="webhook_delivery.replayed",
        subject=locked,
        before={"state": before},
        after={"event_id": str(locked.event_id), "replay": locked.replay_count},
    )
    enqueue(SEND_TASK, locked.pk)
    return locked


# --- emission (the outbox) ------------------------------------------------------------------


@dataclass(frozen=True)
class Occurrence:
    """One event of one communication: what the payload's `data` says about it. The
    communication must have its customer and template at hand (or load them lazily)."""

    event: str
    communication: Communication
    status: str
    channel: str = ""
    reason: str = ""
    delivery_id: int | None = None


def live_subscriptions() -> list[WebhookSubscription]:
    """Subscriptions that receive events now (one query; which events each wants is checked
    in Python because SQLite has no JSON containment lookup)."""
    return list(
        WebhookSubscription.objects.filter(active=True, deleted_at__isnull=True)
        .filter(Q(api_key__isnull=True) | Q(api_key__revoked_at__isnull=True))
        .only("pk", "client", "events")
    )


def _wanted(subscriptions: list[WebhookSubscription], event: str) -> bool:
    return any(event in s.events for s in subscriptions)


def _hears(subscription: WebhookSubscription, occurrence: Occurrence) -> bool:
    """Wants this event, about a communication of its client (or of any: no client)."""
    return occurrence.event in subscription.events and subscription.client in (
        "",
        occurrence.communication.client,
    )


def _payload(delivery: WebhookDelivery, occurrence: Occurrence) -> dict[str, Any]:
    communication = occurrence.communication
    customer = communication.customer
    return {
        "id": str(delivery.event_id),
        "type": str(delivery.event_type),
        "created_at": delivery.created_at.isoformat(),
        "data": {
            # The id the API knows it by (GET /api/v1/communications/<id>).
            "communication_id": str(communication.public_id),
            "status": str(occurrence.status),
            "template_code": communication.template.code,
            "customer_ref": customer.external_ref,
            "customer_source_system": customer.source_system,
            "correlation_id": communication.correlation_id,
            "channel": occurrence.channel or None,
            "reason": occurrence.reason or None,
            "delivery_id": occurrence.delivery_id,
        },
    }


def webhook_events_emit(
    occurrences: Sequence[Occurrence], *, subscriptions: list[WebhookSubscription] | None = None
) -> list[int]:
    """Write the outbox rows of `occurrences` for every subscription that wants them, in the
    caller's transaction and with one INSERT, and enqueue their sending after commit. Returns
    the new rows' ids."""
    if not occurrences:
        return []
    if subscriptions is None:
        subscriptions = live_subscriptions()
    now = timezone.now()
    rows: list[WebhookDelivery] = []
    for occurrence in occurrences:
        for subscription in subscriptions:
            if not _hears(subscription, occurrence):
                continue
            row = WebhookDelivery(
                subscription_id=subscription.pk,
                event_type=occurrence.event,
                communication_id=occurrence.communication.pk,
                next_attempt_at=now,
                created_at=now,
            )
            row.payload = _payload(row, occurrence)
            rows.append(row)
    if not rows:
        return []
    WebhookDelivery.objects.bulk_create(rows)
    ids = [row.pk for row in rows]
    if len(ids) <= ENQUEUE_ONE_BY_ONE_UP_TO:
        for pk in ids:
            enqueue(SEND_TASK, pk)
    else:
        size = max(1, settings.CCM_BULK_CHUNK)
        for start in range(0, len(ids), size):
            enqueue(SEND_MANY_TASK, ids[start : start + size])
    return ids


def _channel_reached(communication: Communication, states: Sequence[str]) -> str:
    return (
        Delivery.objects.filter(communication_id=communication.pk, state__in=states)
        .order_by("-updated_at", "-id")
        .values_list("channel", flat=True)
        .first()
        or ""
    )


_FAILURE_STATES = {CommState.UNDELIVERABLE, CommState.COMPOSE_FAILED}


def communication_transitioned(sender, instance: Communication, target: str, **kwargs) -> None:
    """django-fsm's post_transition on Communication: report the state it moved to.

    It fires inside the transition's caller, before `save()`, in the transaction every
    pipeline step holds: the rows roll back with the transition if that transaction does."""
    event = EVENT_OF_STATE.get(target)
    if event is None:
        return
    subscriptions = live_subscriptions()
    if not _wanted(subscriptions, event):
        return
    channel = ""
    if event == WebhookEvent.SENT:
        channel = _channel_reached(instance, [DeliveryState.SENT, DeliveryState.DELIVERED])
    elif event == WebhookEvent.DELIVERED:
        channel = _channel_reached(instance, [DeliveryState.DELIVERED])
    reason = instance.failure_reason if target in _FAILURE_STATES else ""
    webhook_events_emit(
        [Occurrence(event, instance, status=target, channel=channel, reason=reason)],
        subscriptions=subscriptions,
    )


def delivery_failed_occurrence(delivery: Delivery) -> Occurrence:
    """A delivery that failed for good, with its `last_error` as the reason."""
    return Occurrence(
        WebhookEvent.FAILED,
        delivery.communication,
        status=delivery.communication.state,
        channel=delivery.channel,
        reason=delivery.last_error,
        delivery_id=delivery.pk,
    )


def delivery_failed_emit(delivery: Delivery) -> None:
    """Report a delivery that failed for good, in the caller's transaction."""
    subscriptions = live_subscriptions()
    if _wanted(subscriptions, WebhookEvent.FAILED):
        webhook_events_emit([delivery_failed_occurrence(delivery)], subscriptions=subscriptions)

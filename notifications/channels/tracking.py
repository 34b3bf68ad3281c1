"""Email delivery tracking: Anymail's tracking webhooks → stored events → applied to deliveries.

Two steps, so that a webhook is answered fast and a re-posted event or a re-run task changes
nothing twice:

1. `tracking_received`, the receiver of `anymail.signals.tracking`, only normalises the ESP's
   report into a `DeliveryEvent` (once per provider and event id) and enqueues
2. `delivery_event_process`, which applies it: deliveries and communications move forward only,
   a hard bounce invalidates the contact point, and hard bounces, complaints and unsubscribes
   suppress the address.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from anymail.signals import AnymailTrackingEvent, RejectReason
from anymail.signals import EventType as AnymailEventType
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.datastructures import MultiValueDict
from django_fsm import can_proceed

from ccm import audit
from ccm.tasks import Sweep, enqueue
from notifications.channels import unsubscribe
from notifications.channels.pipeline_calls import pipeline_calls
from notifications.customers.services import postal_address_text
from notifications.models import (
    Channel,
    Communication,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    EventType,
    Suppression,
    SuppressionReason,
)

logger = logging.getLogger(__name__)

PROCESS_TASK = "notifications.channels.tracking.delivery_event_process"
# Connect `tracking_received` with this, so that connecting it twice stays one receiver.
DISPATCH_UID = "notifications.channels.tracking.tracking_received"

CONTACT_KIND_OF_CHANNEL = {Channel.EMAIL: ContactKind.EMAIL, Channel.SMS: ContactKind.PHONE}
# Providers whose events are about another channel than email (events matched to no delivery).
PROVIDER_CHANNELS = {"twilio": Channel.SMS, "locmem_sms": Channel.SMS, "print": Channel.PRINT}

# Anymail's normalised event type → ours. "rejected" (the ESP refused to send: suppressed,
# invalid or blocked address) and "failed" (the ESP could not send) both end the delivery.
EVENT_TYPES: dict[str, EventType] = {
    AnymailEventType.QUEUED: EventType.QUEUED,
    AnymailEventType.SENT: EventType.SENT,
    AnymailEventType.DELIVERED: EventType.DELIVERED,
    AnymailEventType.DEFERRED: EventType.DEFERRED,
    AnymailEventType.BOUNCED: EventType.BOUNCED,
    AnymailEventType.REJECTED: EventType.FAILED,
    AnymailEventType.FAILED: EventType.FAILED,
    AnymailEventType.OPENED: EventType.OPENED,
    AnymailEventType.CLICKED: EventType.CLICKED,
    AnymailEventType.COMPLAINED: EventType.COMPLAINED,
    AnymailEventType.UNSUBSCRIBED: EventType.UNSUBSCRIBED,
}
# Not stored: "autoresponded" (an out-of-office reply says nothing about delivery),
# "subscribed" (a resubscribe does not lift a suppression on its own; people do that),
# "unknown" (nothing we could apply; logged as a warning so it gets looked at) and the
# inbound types, which never reach a tracking webhook.


def _postmark_hard(raw: dict) -> bool:
    # Anymail reports Postmark's "SoftBounce" as bounced too; only "HardBounce" is permanent
    # (a Bounce webhook's Type, or a SubscriptionChange webhook's SuppressionReason).
    return "HardBounce" in (raw.get("Type"), raw.get("SuppressionReason"))


def _mailgun_hard(raw: dict) -> bool:
    # JSON webhooks say severity permanent (temporary ones arrive as deferred); in the legacy
    # form-encoded webhooks, "bounced" was only ever sent for permanent failures.
    event_data = raw.get("event-data") or {}
    return event_data.get("severity") == "permanent" or raw.get("event") == "bounced"


def _sendgrid_hard(raw: dict) -> bool:
    # SendGrid's bounce event has type "bounce" (permanent) or "blocked" (temporary, e.g. IP
    # reputation); a missing type is the older payload, where bounces were permanent.
    return raw.get("type", "bounce") == "bounce"


# How each ESP says a bounce is permanent, read from its payload.
HARD_BOUNCE: dict[str, Callable[[dict], bool]] = {
    "postmark": _postmark_hard,
    "mailgun": _mailgun_hard,
    "sendgrid": _sendgrid_hard,
}


def _is_hard(provider: str, event: AnymailTrackingEvent, raw: dict) -> bool:
    if event.event_type != AnymailEventType.BOUNCED:
        return False
    if provider in HARD_BOUNCE:
        return HARD_BOUNCE[provider](raw)
    # Other ESPs report temporary failures as deferred: what is left with reason "bounced" is
    # permanent.
    return event.reject_reason == RejectReason.BOUNCED


def _message_id_header(provider: str, event: AnymailTrackingEvent, raw: dict) -> str:
    """Our Message-ID header, for the ESPs whose payload carries it (Postmark's does not)."""
    if provider == "mailgun":
        return event.message_id or ""  # Mailgun's id is the Message-ID header
    if provider == "sendgrid":
        return str(raw.get("smtp-id") or "")
    return ""


def _json_safe(esp_event: Any) -> dict:
    if isinstance(esp_event, MultiValueDict):  # form-encoded posts (Mailgun legacy, Mandrill)
        esp_event = {k: v[0] if len(v) == 1 else v for k, v in esp_event.lists()}
    value = json.loads(json.dumps(esp_event, default=str))
    return value if isinstance(value, dict) else {"payload": value}


def _event_id(event: AnymailTrackingEvent, raw: dict) -> str:
    if event.event_id:
        event_id = str(event.event_id)
        if len(event_id) <= 200:
            return event_id
    # No id (e.g. Postmark's Delivery and Open webhooks): the same payload posted again is the
    # same event. Sorted keys, so a re-post that orders keys differently still matches.
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _delivery_for(event: AnymailTrackingEvent, message_id_header: str) -> Delivery | None:
    """The delivery by the metadata we send with every email, else by the ESP's message id,
    else by our Message-ID header."""
    emails = Delivery.objects.filter(channel=Channel.EMAIL)
    delivery_id = (event.metadata or {}).get("delivery_id")
    try:
        pk = int(delivery_id) if delivery_id is not None else None
    except (TypeError, ValueError):
        pk = None
    if pk is not None and (delivery := emails.filter(pk=pk).first()):
        return delivery
    if event.message_id and (
        delivery := emails.filter(provider_message_id=event.message_id).first()
    ):
        return delivery
    if message_id_header:
        return emails.filter(message_id=message_id_header).first()
    return None


def _occurred_at(timestamp: datetime | None) -> datetime:
    if timestamp is None:
        return timezone.now()
    if timezone.is_naive(timestamp):
        return timezone.make_aware(timestamp, UTC)
    return timestamp


def tracking_received(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    """Store one ESP report as a DeliveryEvent (once) and enqueue its processing.

    Raising here answers the ESP with a 500, which makes it retry later: right for a database
    outage. Events we do not keep are answered with a 200 so that they are not retried forever.
    """
    event_type = EVENT_TYPES.get(event.event_type)
    if event_type is None:
        level = logging.WARNING if event.event_type == AnymailEventType.UNKNOWN else logging.INFO
        logger.log(
            level,
            "%s tracking event %r (%s) not stored",
            esp_name,
            event.event_type,
            event.event_id,
        )
        return
    provider = esp_name.lower()
    raw = _json_safe(event.esp_event)
    description = "\n".join(part for part in (event.description, event.mta_response) if part)

    message_id_header = _message_id_header(provider, event, raw)[:200]
    with transaction.atomic():
        stored, created = DeliveryEvent.objects.get_or_create(
            provider=provider,
            event_id=_event_id(event, raw),
            defaults={
                "delivery": _delivery_for(event, message_id_header),
                "event_type": event_type,
                "hard": _is_hard(provider, event, raw),
                "message_id": message_id_header,
                "recipient": (event.recipient or "")[:254],
                "description": description,
                "occurred_at": _occurred_at(event.timestamp),
                "raw": raw,
            },
        )
        if created:
            enqueue(PROCESS_TASK, stored.pk)


# Catches events whose enqueue was lost (a crash between commit and enqueue); the lead registers
# it in NotificationsConfig.ready().
DELIVERY_EVENT_SWEEP = Sweep(
    name="notifications.delivery_events",
    queryset=lambda: DeliveryEvent.objects.filter(processed_at__isnull=True),
    task=PROCESS_TASK,
    older_than=timedelta(minutes=5),
    timestamp_field="received_at",
)


def delivery_event_process(event_id: int) -> None:
    """Apply a stored event to its delivery, communication, contact point and suppressions.

    The claim and the work commit together: a second run finds the event claimed and returns,
    and a run that fails leaves it unclaimed for a retry or the sweep.
    """
    with transaction.atomic():
        claimed = DeliveryEvent.objects.filter(pk=event_id, processed_at__isnull=True).update(
            processed_at=timezone.now()
        )
        if claimed != 1:
            return  # done already, or another worker has it
        event = DeliveryEvent.objects.get(pk=event_id)
        _apply(event)


def _apply(event: DeliveryEvent) -> None:
    delivery = None
    if event.delivery_id is not None:
        # Delivery before communication: the order the dispatcher locks them in (its guarded
        # update of the delivery, then the communication), so the two cannot deadlock.
        delivery = Delivery.objects.select_for_update().get(pk=event.delivery_id)
        delivery.communication = Communication.objects.select_for_update().get(
            pk=delivery.communication_id
        )
    address = _address(event, delivery)
    channel = delivery.channel if delivery else _channel_of_provider(event.provider)

    match event.event_type:
        case EventType.SENT if delivery:
            _delivery_move(delivery, DeliveryState.SENT, event, sent_at=event.occurred_at)
            _communication_advance(delivery, event)
        case EventType.DELIVERED if delivery:
            _delivery_move(
                delivery,
                DeliveryState.DELIVERED,
                event,
                delivered_at=event.occurred_at,
                sent_at=delivery.sent_at or event.occurred_at,
            )
            _communication_advance(delivery, event)
        case EventType.BOUNCED if event.hard:
            if delivery:
                _delivery_fail(delivery, DeliveryState.BOUNCED, event)
                _contact_invalidate(delivery, address, event)
            _suppress(address, SuppressionReason.HARD_BOUNCE, event, channel=channel)
        case EventType.FAILED if delivery:
            _delivery_fail(delivery, DeliveryState.FAILED, event)
        case EventType.COMPLAINED:
            _suppress(address, SuppressionReason.COMPLAINT, event, channel=channel)
        case EventType.UNSUBSCRIBED if delivery and channel == Channel.EMAIL:
            # The ESP's own unsubscribe (its link or its List-Unsubscribe handling) is a
            # marketing opt-out, not a suppression: regulatory mail must still reach them.
            unsubscribe.unsubscribe_apply(
                delivery=delivery, evidence={"provider": event.provider, "event": event.pk}
            )
        case EventType.UNSUBSCRIBED:
            _suppress(address, SuppressionReason.UNSUBSCRIBE, event, channel=channel)
        # queued, deferred, soft bounces, opens and clicks are kept as events and change nothing.


def _channel_of_provider(provider: str) -> str:
    """Events that match no delivery still say which channel they are about."""
    return PROVIDER_CHANNELS.get(provider, Channel.EMAIL)


def _address(event: DeliveryEvent, delivery: Delivery | None) -> str:
    """The address the event is about, spelled as we sent to it when it is the same one."""
    if delivery and delivery.address and event.recipient.lower() in ("", delivery.address.lower()):
        return delivery.address
    return event.recipient


def _delivery_move(
    delivery: Delivery, state: DeliveryState, event: DeliveryEvent, **fields: Any
) -> bool:
    """Move the delivery to `state` if that is forward; a late event never moves it back. The
    transition service records the step (and for a failure the webhook event, the signal and
    the fallback)."""
    moved = pipeline_calls().delivery_move(
        delivery=delivery,
        target=state,
        values=fields,
        action=f"delivery.{event.event_type}",
        detail={"event": event.pk, "provider": event.provider, "event_id": event.event_id},
    )
    return moved


def _delivery_fail(delivery: Delivery, state: DeliveryState, event: DeliveryEvent) -> None:
    reason = event.description or f"{event.provider}: {event.event_type}"
    _delivery_move(delivery, state, event, last_error=reason)


def _communication_advance(delivery: Delivery, event: DeliveryEvent) -> None:
    """Sent and delivered move the communication on, when this delivery really got there."""
    comm = delivery.communication
    before = comm.state
    if delivery.state in (DeliveryState.SENT, DeliveryState.DELIVERED) and can_proceed(
        comm.mark_sent
    ):
        comm.mark_sent(when=delivery.sent_at or event.occurred_at)
    if delivery.state == DeliveryState.DELIVERED and can_proceed(comm.mark_delivered):
        comm.mark_delivered()
    if comm.state == before:
        return
    comm.save()
    audit.record(
        actor=None,
        action=f"communication.{comm.state}",
        subject=comm,
        before={"state": before},
        after={"state": comm.state, "delivery": delivery.pk, "event": event.pk},
    )


def _contact_invalidate(delivery: Delivery, address: str, event: DeliveryEvent) -> None:
    """A hard bounce (or returned letter) says the address does not work: stop using it."""
    if not address:
        return
    reason = f"Hard bounce ({event.provider}): {event.description}".strip(": ")[:300]
    customer_id = delivery.communication.customer_id
    if delivery.channel == Channel.PRINT:
        customer = Customer.objects.select_for_update().get(pk=customer_id)
        # A letter to an address the customer has since replaced says nothing about the new one.
        if postal_address_text(customer.postal_address) != address:
            return
        updated = Customer.objects.filter(pk=customer_id, postal_address_valid=True).update(
            postal_address_valid=False
        )
        if updated:
            audit.record(
                actor=None,
                action="customer.postal_address_invalidated",
                subject=delivery.communication.customer,
                after={"postal_address_valid": False, "reason": reason, "event": event.pk},
            )
        return
    kind = CONTACT_KIND_OF_CHANNEL.get(Channel(delivery.channel))
    if kind is None:
        return
    contacts = ContactPoint.objects.select_for_update().filter(
        customer_id=customer_id, kind=kind, value__iexact=address, valid=True
    )
    for contact in contacts:
        contact.valid = False
        contact.invalid_reason = reason
        contact.save(update_fields=["valid", "invalid_reason"])
        audit.record(
            actor=None,
            action="contact_point.invalidated",
            subject=contact,
            after={"valid": False, "invalid_reason": reason, "event": event.pk},
        )


def _suppress(
    address: str, reason: SuppressionReason, event: DeliveryEvent, *, channel: str = Channel.EMAIL
) -> None:
    """Suppress the address unless it already is (for whatever reason)."""
    if not address or channel not in (Channel.EMAIL, Channel.SMS):
        return
    active = Suppression.objects.filter(
        channel=channel, address__iexact=address, lifted_at__isnull=True
    )
    if active.exists():
        return
    detail = f"{event.provider} event {event.event_id}: {event.description}".strip(": ")[:500]
    try:
        with transaction.atomic():
            suppression = Suppression.objects.create(
                channel=channel, address=address, reason=reason, detail=detail
            )
    except IntegrityError:
        return  # suppressed concurrently
    audit.record(
        actor=None,
        action="suppression.created",
        subject=suppression,
        after={"channel": channel, "reason": reason, "event": event.pk},
    )

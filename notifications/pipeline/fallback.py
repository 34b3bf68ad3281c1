"""Fallback chains: when a delivery fails for good, try the next channel of the chain.

A template declares its chain in `template.json` (`"fallback": ["email", "sms", "print"]`);
without one, the category's chain from `settings.CCM_FALLBACK_CHAINS` applies. A hard bounce, a
permanent provider error, a returned letter or a deactivated device all end in one place,
`delivery_fall_back`, called inside the transaction that records the failure: the failure and
the next attempt commit together or not at all.

The next channel is the first one after the failed channel in the chain that this
communication has not tried yet and that selection allows *now* (the bounce may just have
invalidated the address, the customer may have opted out since). Every step is written to the
decision trace. When the chain is exhausted and no other delivery of the communication is
still under way, the communication is `undeliverable` and `communication_undeliverable` fires.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django_fsm import can_proceed

from ccm import audit
from ccm.tasks import enqueue
from documents import services as documents
from notifications import signals
from notifications.models import Communication, Delivery, DeliveryState
from notifications.pipeline import selection

LIVE_DELIVERY_STATES = (
    DeliveryState.PENDING,
    DeliveryState.SENDING,
    DeliveryState.SENT,
    DeliveryState.DELIVERED,
)


def chain_for(communication: Communication) -> list[str]:
    version = communication.template_version
    declared = version.meta.get("fallback") if version is not None else None
    if declared is not None:
        return list(declared)
    return list(settings.CCM_FALLBACK_CHAINS.get(communication.category, []))


def delivery_fall_back(*, delivery: Delivery, reason: str) -> Delivery | None:
    """Start the next channel of the chain after `delivery` failed; returns the new delivery,
    or None when the chain has nothing left (the communication may then be undeliverable).

    Call inside the transaction that records the failure, after the delivery row is locked."""
    from notifications.pipeline import (
        services,  # services imports this module for its failure paths
    )

    communication = (
        Communication.objects.select_for_update(of=("self",))
        .select_related("customer", "template_version")
        .get(pk=delivery.communication_id)
    )
    tried = list(communication.deliveries.values_list("pk", "channel", "state"))
    tried_channels = {channel for _, channel, _ in tried}
    chain = chain_for(communication)
    start = chain.index(delivery.channel) + 1 if delivery.channel in chain else 0
    trace = list(communication.decision_trace)
    trace.append(
        {
            "decision": "delivery failed",
            "channel": delivery.channel,
            "delivery": delivery.pk,
            "reason": reason[:300],
        }
    )
    version = communication.template_version
    facts = services.facts_for(communication, version) if version is not None else None
    chosen: selection.Target | None = None
    for channel in chain[start:]:
        if channel in tried_channels:
            trace.append({"channel": channel, "decision": "skipped", "reason": "already tried"})
            continue
        if facts is None:
            break
        target, why = selection.check_channel(facts, channel)
        if target is None:
            trace.append({"channel": channel, "decision": "skipped", "reason": why})
            continue
        chosen = target
        break

    if chosen is None:
        communication.decision_trace = trace
        still_live = any(
            state in LIVE_DELIVERY_STATES for pk, _, state in tried if pk != delivery.pk
        )
        if still_live:
            trace.append(
                {"decision": "chain exhausted", "reason": "another delivery is still under way"}
            )
            communication.save(update_fields=["decision_trace", "updated_at"])
            return None
        trace.append({"decision": "chain exhausted", "reason": "no channel left to try"})
        _undeliverable(communication, reason=f"every channel failed; last: {reason}"[:2000])
        return None

    _ensure_rendition(communication, chosen.channel)
    new = Delivery.objects.create(
        communication=communication,
        channel=chosen.channel,
        address=chosen.address,
        message_id=services.delivery_message_id(communication, len(tried), chosen.channel),
    )
    trace.append(
        {
            "decision": "fallback",
            "from": delivery.channel,
            "channel": chosen.channel,
            "address": chosen.address,
            "delivery": new.pk,
        }
    )
    communication.decision_trace = trace
    communication.save(update_fields=["decision_trace", "rendered", "document", "updated_at"])
    audit.record(
        actor=None,
        action="communication.fallback",
        subject=communication,
        after={
            "failed_delivery": delivery.pk,
            "failed_channel": delivery.channel,
            "reason": reason[:300],
            "delivery": new.pk,
            "channel": chosen.channel,
        },
    )
    enqueue("notifications.pipeline.tasks.delivery_dispatch", new.pk)
    return new


def _ensure_rendition(communication: Communication, channel: str) -> None:
    """The fallback channel may not have been rendered at composition: render it now from the
    same pinned version and data (print needs the archived PDF)."""
    from notifications.pipeline import services

    version = communication.template_version
    assert version is not None  # composed communications have their version pinned
    if channel == selection.PRINT:
        if communication.document is None:
            communication.document = documents.document_compose(
                version=version,
                data=services.composition_context(communication, version),
                language=communication.customer.language,
                by=communication.created_by,
            )
        return
    if channel not in communication.rendered:
        communication.rendered = {
            **communication.rendered,
            **services.render_outputs(communication, version, [channel]),
        }


def _undeliverable(communication: Communication, *, reason: str) -> None:
    before = communication.state
    if can_proceed(communication.undeliverable):
        communication.undeliverable(reason=reason)
    communication.save()
    audit.record(
        actor=None,
        action="communication.undeliverable",
        subject=communication,
        before={"state": before},
        after={"state": communication.state, "reason": reason},
    )
    transaction.on_commit(
        lambda: signals.communication_undeliverable.send(
            sender=Communication, communication=communication, reason=reason
        )
    )

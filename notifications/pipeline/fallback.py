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
from notifications.models import CommState, Communication, Delivery, DeliveryState
from notifications.pipeline import selection
from notifications.pipeline.content import composition_context, render_outputs
from notifications.pipeline.facts import facts_for
from notifications.pipeline.message_ids import delivery_message_id

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
    facts = facts_for(communication, version) if version is not None else None
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

    new = _delivery_add(
        communication,
        chosen,
        index=len(tried),
        trace=trace,
        decision={"decision": "fallback", "from": delivery.channel},
    )
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
    return new


def _delivery_add(
    communication: Communication,
    target: selection.Target,
    *,
    index: int,
    trace: list[dict],
    decision: dict,
) -> Delivery:
    """Inside the caller's transaction, the communication locked: one more delivery (rendered
    for its channel first), written to the decision trace, dispatched after commit."""
    _ensure_rendition(communication, target.channel)
    new = Delivery.objects.create(
        communication=communication,
        channel=target.channel,
        address=target.address,
        message_id=delivery_message_id(communication, index, target.channel),
    )
    trace.append(
        {**decision, "channel": target.channel, "address": target.address, "delivery": new.pk}
    )
    communication.decision_trace = trace
    communication.save(update_fields=["decision_trace", "rendered", "document", "updated_at"])
    enqueue("notifications.pipeline.tasks.delivery_dispatch", new.pk)
    return new


# Past the release gate: the fast channels started (an urgent message's durable copy goes even
# when they failed; a cancelled or rejected one, or one still waiting for release, gets none).
DURABLE_STATES = (
    CommState.DISPATCHING,
    CommState.SENT,
    CommState.DELIVERED,
    CommState.VIEWED,
    CommState.ACTIONED,
    CommState.UNDELIVERABLE,
)


def durable_copies_send(communication_ids: list[int]) -> int:
    """The durable copy of urgent communications whose fast channels went first
    (`selection.durable_later`): the PDF archived, then a delivery for each deferred durable
    target. Safe to run twice: the trace's marker is replaced in the transaction that does the
    work. Returns how many communications it completed."""
    done = 0
    for pk in communication_ids:
        with transaction.atomic():
            communication = (
                Communication.objects.select_for_update(of=("self",))
                .select_related("customer", "template_version", "created_by", "document")
                .filter(pk=pk)
                .first()
            )
            if (
                communication is None
                or communication.state not in DURABLE_STATES
                or not selection.durable_pending(communication.decision_trace)
            ):
                continue
            _durable_copy(communication)
            done += 1
    return done


def _durable_copy(communication: Communication) -> None:
    version = communication.template_version
    assert version is not None  # composed communications have their version pinned
    if communication.document is None:
        communication.document = documents.document_compose(
            version=version,
            data=composition_context(communication, version),
            language=communication.customer.language,
            by=communication.created_by,
        )
    tried = list(communication.deliveries.values_list("channel", flat=True))
    trace = [
        {**entry, "decision": "durable composed", "document": communication.document.pk}
        if entry.get("decision") == selection.DURABLE_LATER
        else entry
        for entry in communication.decision_trace
    ]
    deferred = [e for e in trace if e.get("decision") == "deferred"]
    for entry in deferred:
        entry["decision"] = "deferred, sent"
    communication.decision_trace = trace
    communication.save(update_fields=["decision_trace", "document", "updated_at"])
    for entry in deferred:
        if entry["channel"] in tried:
            continue  # a fallback took that channel meanwhile
        target = selection.Target(entry["channel"], entry["address"])
        _delivery_add(
            communication, target, index=len(tried), trace=trace, decision={"decision": "chosen"}
        )
        tried.append(entry["channel"])


def _ensure_rendition(communication: Communication, channel: str) -> None:
    """The fallback channel may not have been rendered at composition: render it now from the
    same pinned version and data (print needs the archived PDF)."""
    version = communication.template_version
    assert version is not None  # composed communications have their version pinned
    if channel == selection.PRINT:
        if communication.document is None:
            communication.document = documents.document_compose(
                version=version,
                data=composition_context(communication, version),
                language=communication.customer.language,
                by=communication.created_by,
            )
        return
    if channel not in communication.rendered:
        communication.rendered = {
            **communication.rendered,
            **render_outputs(communication, version, [channel]),
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

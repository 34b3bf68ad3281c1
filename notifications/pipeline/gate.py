"""The release gate of a composed chunk: a communication whose template or category needs a
reviewer's release waits in `awaiting_approval` (four-eyes through ccm.approvals); every other
one, and one whose addressee no longer matches, moves on to `dispatch.dispatch_start` or is
held with the reason."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from django.db import transaction

from ccm import approvals
from notifications.models import (
    CommState,
    Communication,
)
from notifications.pipeline import history
from notifications.pipeline.content import addressee_mismatches, release_required
from notifications.pipeline.dispatch import dispatch_start
from notifications.webhooks import services as webhooks

# The purpose of the approval a held communication waits for (ccm.approvals).
RELEASE_PURPOSE = "communication.release"


def gate_chunk(ids: Sequence[int]) -> dict[str, int]:
    """composed → awaiting_approval (the release gate) or dispatching; safe to run twice."""
    with transaction.atomic():
        events: list[webhooks.Occurrence] = []
        counts = gate(list(ids), events)
        webhooks.webhook_events_emit(events)
        return counts


def gate(
    ids: list[int],
    events: list[webhooks.Occurrence],
    *,
    locked: Sequence[Communication] | None = None,
    reasons: Mapping[int, str] | None = None,
    dispatching: Collection[int] = (),
) -> dict[str, int]:
    """Inside the caller's transaction: the composed communications `ids` wait for a reviewer's
    release where their template or amount needs one; the rest start dispatching. `locked`:
    the caller holds them already, composed, with their data, version and decision trace (and
    has decided `reasons`, and written `dispatching` as such: see `dispatch_start`)."""
    if locked is None:
        locked = _gate_load(ids)
    if reasons is None:
        reasons = {c.pk: why for c in locked if (why := hold_reason(c))}
    held = [
        (c, reasons[c.pk])
        for c in Communication.objects.select_related(
            "template_version__template", "created_by", "customer"
        ).filter(pk__any=reasons)
    ]
    for c, why in held:
        c.await_approval()
        c.decision_trace = [*c.decision_trace, {"decision": "release", "reason": why}]
        c.save()
        approvals.approval_request(
            subject=c,
            requested_by=c.created_by,
            purpose=RELEASE_PURPOSE,
            summary=f"Release {c.template_version.template.name} to {c.customer}: {why}",
        )
    history.steps_record(
        [history.Step(c.pk, "communication.awaiting_approval", {"reason": why}) for c, why in held]
    )
    waiting = {c.pk for c, _ in held}
    counts = dispatch_start(
        [c for c in locked if c.pk not in waiting], events=events, dispatching=dispatching
    )
    return {"awaiting_approval": len(held), **counts}


def _gate_load(ids: list[int]) -> list[Communication]:
    """The composed communications `ids`, locked, with what the gate and the deliveries need,
    not the rendered outputs (decoding those again would cost more than the rest of the gate)."""
    return list(
        Communication.objects.select_for_update(of=("self",))
        .select_related("template_version", "customer")
        .only(
            "id",
            "state",
            "data",
            "decision_trace",
            "created_by_id",
            "template_version",
            "channel_override",
            "address_override",
            "customer__name",
            "customer__salutation",
            "customer__postal_address",
            "customer__external_ref",
            "customer__language",
        )
        .filter(pk__any=ids, state=CommState.COMPOSED)
        .order_by("pk")
    )


def hold_reason(c: Communication) -> str | None:
    """Why a composed communication waits for a reviewer's release: data naming someone other
    than the customer on record (the record changed since intake), or its template or amount
    needs one. Only communications somebody asked for are held; a system-made one has nobody
    to request the release (the addressee check fails it at composition instead)."""
    version = c.template_version
    if c.created_by_id is None or version is None:
        return None
    mismatches = addressee_mismatches(c, version)
    if mismatches:
        return "; ".join(e.message for e in mismatches)
    return release_required(version, c.data)

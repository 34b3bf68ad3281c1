"""Exception cases: what operations must fix when the pipeline below could not do its job.

A composition failure, an undeliverable communication, a returned (or unprintable) letter and a
regenerated document whose bytes differ from the archive each open one case for the operations
team — or update the open one for the same failure, never a second (`dedupe_key` per
communication or document and kind, unique among open cases). The case carries the customer,
the template, the error with its fields, the next action, and an alert mail to the team.

Opening is called from signal receivers that run inside the sender's transaction on some paths
and after its commit on others: it runs in its own savepoint, so a failure here never undoes the
sender's work, and `exceptions_reconcile` (periodic) opens whatever a crash left without a case.

From the case, operations regenerate (corrected data) or resend (another channel or address)
through notifications/pipeline/recovery.py; the case resolves itself when the communication is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from cases import alerts, services
from cases.models import (
    OPEN_STATES,
    Case,
    CaseType,
    ExceptionKind,
    LinkRole,
    Priority,
    RecoveryAction,
    Team,
)
from ccm import audit
from documents.models import Category, Document
from notifications.models import (
    Channel,
    CommState,
    Communication,
    Customer,
    Delivery,
    DeliveryState,
    Source,
)
from notifications.pipeline import recovery

logger = logging.getLogger(__name__)

# Communication states that settle a recovery: it reached the customer, or it failed again.
SENT_STATES = {CommState.SENT, CommState.DELIVERED, CommState.VIEWED, CommState.ACTIONED}
FAILED_STATES = {
    CommState.COMPOSE_FAILED,
    CommState.UNDELIVERABLE,
    CommState.CANCELLED,
    CommState.REJECTED,
}
# Which recovery fits which failure.
RECOVERIES: dict[str, set[str]] = {
    RecoveryAction.REGENERATE: {ExceptionKind.COMPOSE_FAILED},
    RecoveryAction.RESEND: {ExceptionKind.UNDELIVERABLE, ExceptionKind.RETURNED_MAIL},
}
# How far back the reconciler looks for failures left without a case, and how long it leaves
# the signal path to open one first.
RECONCILE_WINDOW = timedelta(days=7)
RECONCILE_GRACE = timedelta(minutes=2)


def dedupe_key(kind: str, *, communication=None, document=None) -> str:
    subject = (
        f"communication:{communication.pk}"
        if communication is not None
        else f"document:{document.pk}"
    )
    return f"{subject}:{kind}"


def _next_action(kind: str, occurrence: Mapping, template: str) -> str:
    if kind == ExceptionKind.COMPOSE_FAILED:
        fields = [e["field"] for e in occurrence.get("errors", []) if e.get("field")]
        if fields:
            return (
                f"Correct {', '.join(fields)} in the data, then regenerate the {template} "
                "communication from this case."
            )
        return (
            f"Find why {template} could not be composed ({occurrence.get('reason')}); if the "
            "template is at fault, have its author publish a corrected version. Then regenerate "
            "from this case."
        )
    if kind == ExceptionKind.UNDELIVERABLE:
        return (
            "No channel could reach the customer. Confirm their contact details, then resend on "
            "a working channel and address from this case."
        )
    if kind == ExceptionKind.RETURNED_MAIL:
        return (
            "The letter came back or could not be printed, and the postal address is marked "
            "invalid. Confirm the customer's address, then resend by post to the corrected "
            "address (or by email) from this case."
        )
    if kind == ExceptionKind.BILL_MISMATCH:
        return (
            "Computing the statement's bill again from its stored readings and tariff gave "
            "other figures than the archived bill. Find what changed (the billing engine, or "
            "the stored bill) before anyone reprints it; the archived file stays the record."
        )
    return (
        "Re-rendering the archived document gave different bytes. Check the render engine and "
        "font versions before reprinting it; the archived file stays the record."
    )


def _stage(kind: str, occurrence: Mapping) -> str:
    if kind == ExceptionKind.COMPOSE_FAILED:
        return "validation" if occurrence.get("errors") else "render"
    if kind in (ExceptionKind.REGENERATION_MISMATCH, ExceptionKind.BILL_MISMATCH):
        return "render"
    return "delivery"


def exception_open(
    *,
    kind: str,
    reason: str,
    communication: Communication | None = None,
    delivery: Delivery | None = None,
    document: Document | None = None,
) -> Case:
    """Open the exception case for this failure, or record it again on the open one."""
    if communication is None and document is None:
        raise ValueError("an exception is about a communication or a document")
    key = dedupe_key(kind, communication=communication, document=document)
    occurrence = {
        "reason": reason,
        "errors": list(communication.failure_errors)
        if communication is not None and kind == ExceptionKind.COMPOSE_FAILED
        else [],
        "delivery": delivery.pk if delivery else None,
        "channel": delivery.channel if delivery else None,
        "address": delivery.address if delivery else None,
    }
    occurrence["stage"] = _stage(kind, occurrence)
    with transaction.atomic():
        case = _open_case(key)
        if case is None:
            try:
                with transaction.atomic():
                    return _create(kind, key, occurrence, communication, document)
            except IntegrityError:
                case = _open_case(key)  # opened concurrently: record it there
                if case is None:
                    raise
        return _recur(case, occurrence)


def _open_case(key: str) -> Case | None:
    return (
        Case.objects.select_for_update(of=("self",))
        .filter(dedupe_key=key, state__in=OPEN_STATES)
        .first()
    )


def _create(
    kind: str,
    key: str,
    occurrence: dict,
    communication: Communication | None,
    document: Document | None,
) -> Case:
    customer: Customer | None
    if communication is not None:
        template = communication.template.code
        customer = communication.customer
        regulatory = communication.category == Category.REGULATORY
        details = {"template": template, "communication": communication.pk}
    else:
        assert document is not None
        template = document.template_version.template.code
        sent = Communication.objects.filter(document=document).select_related("customer").first()
        customer = sent.customer if sent else None
        regulatory = document.template_version.template.category == Category.REGULATORY
        details = {"template": template, "document": document.pk}
    label = ExceptionKind(kind).label
    case = services.case_open(
        case_type=CaseType.EXCEPTION,
        subject=f"{label}: {template} for {customer.external_ref if customer else 'no customer'}",
        description=occurrence["reason"],
        by=None,
        customer=customer,
        # A regulated notice that did not go out is the most urgent thing in the queue.
        priority=Priority.URGENT if regulatory else None,
        team=Team.OPERATIONS,
        details=details,
        parent=_parent_case(communication),
        exception={
            "exception_kind": kind,
            "dedupe_key": key,
            "occurrences": 1,
            "last_occurred_at": timezone.now(),
            "error_details": occurrence,
            "next_action": _next_action(kind, occurrence, template),
        },
    )
    if communication is not None:
        services.case_link_communication(
            case=case, communication=communication, by=None, role=LinkRole.FAILED
        )
    if document is not None:
        services.case_link_document(case=case, document=document, by=None)
    alerts.exception_alert_queue(case)
    return case


def _parent_case(communication: Communication | None) -> Case | None:
    """The case whose milestone requested the communication (its correlation id)."""
    if communication is None or communication.source != Source.CASE:
        return None
    return Case.objects.filter(reference=communication.correlation_id).first()


def _recur(case: Case, occurrence: dict) -> Case:
    """The same failure again (a recovery that failed the same way, or a repeated report): one
    case, updated, with any recovery under way settled as failed."""
    template = case.details.get("template", "")
    changes = {
        "last_occurred_at": timezone.now(),
        "error_details": occurrence,
        "next_action": _next_action(case.exception_kind, occurrence, template),
        "recovery_action": "",
        "recovery_communication": None,
        "recovery_delivery": None,
    }
    Case.objects.filter(pk=case.pk).update(occurrences=F("occurrences") + 1, **changes)
    case.refresh_from_db()
    audit.record(
        actor=None,
        action="case.exception_recurred",
        subject=case,
        after={"occurrences": case.occurrences, "reason": occurrence["reason"]},
    )
    return case


# --- recovery --------------------------------------------------------------------------------


def _for_recovery(case: Case, action: str) -> tuple[Case, Communication]:
    locked = Case.objects.select_for_update(of=("self",)).get(pk=case.pk)
    if locked.case_type != CaseType.EXCEPTION or locked.exception_kind not in RECOVERIES[action]:
        kinds = ", ".join(sorted(RECOVERIES[action]))
        raise services.TransitionRefused(
            f"Case {locked.reference} is not an exception that can {action} (only {kinds})."
        )
    if not locked.is_open:
        raise services.TransitionRefused(f"Case {locked.reference} is {locked.state}.")
    if locked.recovery_action:
        raise services.TransitionRefused(
            f"A {locked.recovery_action} of case {locked.reference} is under way; wait for its "
            "outcome."
        )
    communication = Communication.objects.filter(pk=locked.details.get("communication")).first()
    if communication is None:
        raise services.TransitionRefused(f"Case {locked.reference} has no communication.")
    return locked, communication


def _recovery_started(
    case: Case, *, action: str, by, communication: Communication, delivery=None, after: dict
) -> Case:
    case = services.case_take_up(case=case, by=by)
    Case.objects.filter(pk=case.pk).update(
        recovery_action=action,
        recovery_communication=communication,
        recovery_delivery=delivery,
    )
    case.refresh_from_db()
    audit.record(
        actor=by,
        action=f"case.{action}_requested",
        subject=case,
        after={"communication": communication.pk, **after},
    )
    return case


@transaction.atomic
def exception_regenerate(*, case: Case, data: Mapping, by) -> Case:
    """Compose the failed communication again with corrected `data` (DataInvalid lists what is
    still wrong; RecoveryError says why it cannot be done)."""
    locked, communication = _for_recovery(case, RecoveryAction.REGENERATE)
    recovery.communication_recompose_with(communication=communication, data=data, by=by)
    return _recovery_started(
        locked, action=RecoveryAction.REGENERATE, by=by, communication=communication, after={}
    )


@transaction.atomic
def exception_resend(*, case: Case, channel: str, address: str | Sequence[str], by) -> Case:
    """Send the communication again on `channel` to `address` as a new delivery."""
    locked, communication = _for_recovery(case, RecoveryAction.RESEND)
    delivery = recovery.communication_resend(
        communication=communication, channel=channel, address=address, by=by
    )
    return _recovery_started(
        locked,
        action=RecoveryAction.RESEND,
        by=by,
        communication=communication,
        delivery=delivery,
        after={"delivery": delivery.pk, "channel": channel, "address": delivery.address},
    )


def _outcome(case: Case) -> str:
    if case.recovery_action == RecoveryAction.RESEND and case.recovery_delivery is not None:
        state = case.recovery_delivery.state
        if state in (DeliveryState.SENT, DeliveryState.DELIVERED):
            return "sent"
        return "failed" if state in (DeliveryState.FAILED, DeliveryState.BOUNCED) else "pending"
    communication = case.recovery_communication
    if communication is None:
        return "failed"
    if communication.state in SENT_STATES:
        return "sent"
    return "failed" if communication.state in FAILED_STATES else "pending"


def exception_settle(*, case_id: int) -> str:
    """Record how a recovery ended: sent resolves the case; a failure leaves it open for the
    next try. Safe to run any number of times."""
    with transaction.atomic():
        case = (
            Case.objects.select_for_update(of=("self",))
            .select_related("recovery_communication", "recovery_delivery")
            .filter(pk=case_id)
            .exclude(recovery_action="")
            .first()
        )
        if case is None:
            return "skipped"
        outcome = _outcome(case)
        if outcome == "pending":
            return outcome
        action, communication = case.recovery_action, case.recovery_communication
        delivery = case.recovery_delivery
        Case.objects.filter(pk=case.pk).update(
            recovery_action="", recovery_communication=None, recovery_delivery=None
        )
        audit.record(
            actor=None,
            action=f"case.{action}_{'succeeded' if outcome == 'sent' else 'failed'}",
            subject=case,
            after={
                "communication": communication.pk if communication else None,
                "delivery": delivery.pk if delivery else None,
            },
        )
        if outcome == "sent" and case.is_open:
            case = services.case_take_up(case=case, by=None)
            if delivery is not None:
                how = f"sent again by {delivery.channel} to {delivery.address}"
            else:
                how = "composed again with corrected data and sent"
            services.case_resolve(
                case=case, by=None, resolution=f"Communication {communication.pk} {how}."
            )
    return outcome


def exceptions_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic safety net: open the cases a lost signal or a crash left unopened, and
    settle recoveries whose outcome no transition reported (a resend of a letter that had been
    sent before it came back)."""
    now = now or timezone.now()
    window = {"updated_at__gte": now - RECONCILE_WINDOW, "updated_at__lt": now - RECONCILE_GRACE}
    candidates: list[tuple[str, Communication, Delivery | None, str]] = []
    kind: str
    for state, kind in (
        (CommState.COMPOSE_FAILED, ExceptionKind.COMPOSE_FAILED),
        (CommState.UNDELIVERABLE, ExceptionKind.UNDELIVERABLE),
    ):
        for comm in Communication.objects.filter(state=state, **window).select_related(
            "template", "customer"
        )[:500]:
            candidates.append((kind, comm, None, comm.failure_reason or ExceptionKind(kind).label))
    for returned in Delivery.objects.filter(
        channel=Channel.PRINT, state__in=[DeliveryState.FAILED, DeliveryState.BOUNCED], **window
    ).select_related("communication__template", "communication__customer")[:500]:
        reason = returned.last_error or "the letter was returned"
        candidates.append((ExceptionKind.RETURNED_MAIL, returned.communication, returned, reason))
    keys = {dedupe_key(kind, communication=comm) for kind, comm, _, _ in candidates} | {
        dedupe_key(ExceptionKind.RETURNED_MAIL, communication=candidate[1])
        for candidate in candidates
    }
    known = set(Case.objects.filter(dedupe_key__in=keys).values_list("dedupe_key", flat=True))
    opened = 0
    for kind, comm, delivery, reason in candidates:
        key = dedupe_key(kind, communication=comm)
        return_key = dedupe_key(ExceptionKind.RETURNED_MAIL, communication=comm)
        # An undeliverable letter whose return has a case is that case (see receivers).
        if key in known or (kind == ExceptionKind.UNDELIVERABLE and return_key in known):
            continue
        known.add(key)
        exception_open(kind=kind, communication=comm, delivery=delivery, reason=reason)
        opened += 1
    settled = 0
    awaiting = Case.objects.filter(state__in=OPEN_STATES).exclude(recovery_action="")
    for pk in awaiting.values_list("pk", flat=True)[:500]:
        settled += exception_settle(case_id=pk) in ("sent", "failed")
    if opened:
        logger.warning("opened %d exception cases that no signal had opened", opened)
    return {"opened": opened, "settled": settled}

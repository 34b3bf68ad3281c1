"""What the cases app does when a lower layer reports a failure (connected in CasesConfig.ready).

The receivers never let a problem of ours undo or interrupt the sender's work: opening runs in a
savepoint, an error is logged, and `exceptions_reconcile` opens the case on its next run.
"""

from __future__ import annotations

import logging

from django_fsm.signals import post_transition

from cases import exception_cases
from cases.models import OPEN_STATES, Case, ExceptionKind
from ccm.tasks import enqueue
from documents import signals as document_signals
from documents.models import Category
from notifications import signals
from notifications.models import Channel, Communication

logger = logging.getLogger(__name__)

SETTLE_TASK = "cases.tasks.exception_settle"


def _open(**kwargs) -> None:
    try:
        exception_cases.exception_open(**kwargs)
    except Exception:
        logger.exception("could not open an exception case for %s; the reconciler will", kwargs)


def on_compose_failed(sender, communication: Communication, reason: str, **kwargs) -> None:
    _open(kind=ExceptionKind.COMPOSE_FAILED, communication=communication, reason=reason)


def on_undeliverable(sender, communication: Communication, reason: str, **kwargs) -> None:
    # A marketing message nobody may receive (no opt-in, opted out, no channel left) is
    # withheld, not a problem for a person to work: it is reported where it was asked for (the
    # campaign's outcome, the communication's history), and no one chases a customer to sell.
    if communication.category == Category.MARKETING:
        return
    # A returned letter that left no channel to fall back to is one problem, not two: the
    # returned-mail case (opened first, by delivery_failed) already says what to do.
    returned = exception_cases.dedupe_key(ExceptionKind.RETURNED_MAIL, communication=communication)
    if Case.objects.filter(dedupe_key=returned, state__in=OPEN_STATES).exists():
        return
    _open(kind=ExceptionKind.UNDELIVERABLE, communication=communication, reason=reason)


def on_delivery_failed(sender, delivery, reason: str, **kwargs) -> None:
    # Email, SMS and push failures move on along the fallback chain; when it runs out,
    # communication_undeliverable opens the case. A letter has no next channel to fall to
    # quietly: a returned letter is always somebody's job.
    if delivery.channel != Channel.PRINT:
        return
    _open(
        kind=ExceptionKind.RETURNED_MAIL,
        communication=delivery.communication,
        delivery=delivery,
        reason=reason,
    )


def on_regeneration_mismatch(sender, document, check, **kwargs) -> None:
    _open(
        kind=ExceptionKind.REGENERATION_MISMATCH,
        document=document,
        reason=f"Regenerating document {document.pk} gave other bytes than the archived file.",
    )


def on_statement_bill_mismatch(sender, statement, document, reason: str, **kwargs) -> None:
    if document is not None:  # a statement never archived has nothing to copy or to chase
        _open(kind=ExceptionKind.BILL_MISMATCH, document=document, reason=reason)


def on_communication_transition(sender, instance, name, source, target, **kwargs) -> None:
    """A communication under recovery reached the customer or failed: settle its case (after
    the transition commits; the task reads the outcome from the database)."""
    if target not in exception_cases.SENT_STATES | exception_cases.FAILED_STATES:
        return
    awaiting = Case.objects.filter(recovery_communication_id=instance.pk).exclude(
        recovery_action=""
    )
    for pk in awaiting.values_list("pk", flat=True):
        enqueue(SETTLE_TASK, pk)


def on_delivery_outcome_unknown(sender, delivery, reason: str, **kwargs) -> None:
    # Nobody can tell whether the customer got it: a person must find out before it is resent.
    _open(
        kind=ExceptionKind.UNDELIVERABLE,
        communication=delivery.communication,
        delivery=delivery,
        reason=reason,
    )


def on_communications_transitioned(sender, ids: list[int], target: str, **kwargs) -> None:
    """The same for a chunk the pipeline moved with one UPDATE."""
    if target not in exception_cases.SENT_STATES | exception_cases.FAILED_STATES:
        return
    awaiting = Case.objects.filter(recovery_communication_id__any=ids).exclude(recovery_action="")
    for pk in awaiting.values_list("pk", flat=True):
        enqueue(SETTLE_TASK, pk)


def connect() -> None:
    signals.delivery_outcome_unknown.connect(
        on_delivery_outcome_unknown, dispatch_uid="cases.on_delivery_outcome_unknown"
    )
    signals.communications_transitioned.connect(
        on_communications_transitioned, dispatch_uid="cases.on_communications_transitioned"
    )
    signals.communication_compose_failed.connect(
        on_compose_failed, dispatch_uid="cases.on_compose_failed"
    )
    signals.communication_undeliverable.connect(
        on_undeliverable, dispatch_uid="cases.on_undeliverable"
    )
    signals.delivery_failed.connect(on_delivery_failed, dispatch_uid="cases.on_delivery_failed")
    document_signals.regeneration_mismatch.connect(
        on_regeneration_mismatch, dispatch_uid="cases.on_regeneration_mismatch"
    )
    signals.statement_bill_mismatch.connect(
        on_statement_bill_mismatch, dispatch_uid="cases.on_statement_bill_mismatch"
    )
    post_transition.connect(
        on_communication_transition,
        sender=Communication,
        dispatch_uid="cases.on_communication_transition",
    )

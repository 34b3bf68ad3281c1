"""The pipeline's public entry points for one communication: its request (a batch of one
through `intake`), its cancellation, a reviewer's release decision, and the dispatch and
reconciliation of one delivery (a chunk of one through `dispatch`). The stages below share
their content rules through `content`, `message_ids` and `facts`, never through this module
(the "pipeline in order" contract in pyproject.toml). Customer, contact point and consent
writes live in `notifications.customers.services`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.urls import reverse
from django_fsm import can_proceed

from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from notifications.errors import IntakeError
from notifications.models import Communication, Customer, Delivery
from notifications.pipeline import dispatch, history, intake
from notifications.pipeline.gate import RELEASE_PURPOSE
from notifications.pipeline.review import communication_proof


def communication_request(
    *,
    template_code: str,
    customer: Customer,
    data: Mapping,
    client: str,
    by,
    idempotency_key: str | None = None,
    category: str | None = None,
    urgency: str = "normal",
    source: str = "api",
    channel_override: str = "",
    correlation_id: str = "",
    parent: Communication | None = None,
    document=None,
    address_override: str | Sequence[str] = "",
) -> tuple[Communication, bool]:
    """One communication: a batch of one through `intake.communications_intake`, the intake of
    every entry point. Raises IntakeError or DataInvalid (with the fields) when refused.

    With `document` (an archived document) nothing is composed: the communication carries that
    file; a document of this template (a reprint's duplicate) pins the version that rendered it.
    With `address_override` it goes to that address on `channel_override` instead of the
    customer's own.
    """
    [result] = intake.communications_intake(
        items=[
            {
                "template": template_code,
                "customer": customer,
                "data": data,
                "idempotency_key": idempotency_key,
                "category": category,
                "urgency": urgency,
                "source": source,
                "channel": channel_override,
                "address": address_override,
                "correlation_id": correlation_id,
                "parent": parent,
                "document": document,
            }
        ],
        client=client,
        by=by,
        source=source,
    )
    if result.error is not None:
        raise result.error
    if result.communication is not None:
        return result.communication, result.created
    return Communication.objects.get(pk=result.communication_id), result.created


@transaction.atomic
def communication_cancel(*, communication: Communication, by, reason: str) -> Communication:
    locked = Communication.objects.select_for_update().get(pk=communication.pk)
    if not can_proceed(locked.cancel):
        raise IntakeError(f"A communication that is {locked.state} can no longer be cancelled.")
    locked.cancel(reason=reason)
    locked.save()
    pending = approvals.pending_for(locked, purpose=RELEASE_PURPOSE)
    if pending is not None:
        Approval.objects.filter(pk=pending.pk).update(state=ApprovalState.WITHDRAWN)
    audit.record(
        actor=by, action="communication.cancelled", subject=locked, after={"reason": reason}
    )
    return locked


def _on_release_decision(communication: Communication, approval: Approval) -> None:
    locked = Communication.objects.select_for_update().get(pk=communication.pk)
    if approval.state == ApprovalState.APPROVED:
        locked.release()
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.released", subject=locked)
        history.step_record(
            communication=locked, action="communication.released", actor=approval.decided_by
        )
        dispatch.dispatch_start([locked])
    elif approval.state in {ApprovalState.REJECTED, ApprovalState.CHANGES_REQUESTED}:
        locked.reject(reason=approval.comment or "rejected by the reviewer")
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.rejected", subject=locked)
    elif approval.state == ApprovalState.WITHDRAWN and can_proceed(locked.cancel):
        locked.cancel(reason="release withdrawn")
        locked.save()


def register_approvable() -> None:
    approvals.register(
        Communication,
        author_of=lambda communication: None,
        on_decision=_on_release_decision,  # type: ignore[arg-type]
        review_url=lambda communication: reverse(
            "admin:notifications_communication_change", args=[communication.pk]
        ),
        label="Communication release",
        proof=communication_proof,  # type: ignore[arg-type]
        release=True,
    )


# --- dispatch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchOutcome:
    state: str
    detail: str = ""


def _outcome(delivery_id: int) -> DispatchOutcome:
    state, error = Delivery.objects.values_list("state", "last_error").get(pk=delivery_id)
    return DispatchOutcome(state, error)


def delivery_dispatch_run(delivery_id: int) -> DispatchOutcome:
    """Dispatch one delivery: a chunk of one (see `dispatch.dispatch_chunk`)."""
    if not dispatch.dispatch_chunk([delivery_id]).get("claimed"):
        return DispatchOutcome("skipped")
    return _outcome(delivery_id)


def delivery_reconcile_run(delivery_id: int) -> DispatchOutcome:
    """Settle one delivery stuck in `sending` (see `dispatch.deliveries_reconcile`)."""
    if not dispatch.deliveries_reconcile([delivery_id]).get("checked"):
        return DispatchOutcome("skipped")
    return _outcome(delivery_id)

"""Correcting a customer's postal address, from the customer page or from an exception about a
letter that could not reach them, and releasing the letters the old address held.

The rule for a second person (four-eyes through ccm/approvals.py): a correction waits for a
compliance reviewer when a held *regulated* letter would follow it (a regulatory letter whose
exception case is open: sending it to a wrong address discloses it to a stranger and misses a
legal deadline), or when CASES_ADDRESS_CORRECTION_FOUR_EYES says every correction does. Any
other correction applies at once. Either way it is audited with what the address was.

"Held letters" are the letters of open returned-mail or undeliverable exceptions of the
customer that can be printed; applying the correction resends each by post to the new address
(cases/exception_cases.py), and the case resolves itself when it is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cases import exception_cases, services
from cases.customer_models import AddressCorrection, CorrectionState
from cases.models import OPEN_STATES, Case, CaseType, RecoveryAction
from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from documents.models import Category
from notifications.customers import services as customer_services
from notifications.errors import IntakeError
from notifications.models import Channel, Communication, Customer
from notifications.pipeline.recovery import RecoveryError

PURPOSE = "customer.address_correction"


@dataclass(frozen=True)
class HeldLetter:
    case: Case
    communication: Communication


def held_letters(customer: Customer) -> list[HeldLetter]:
    """The customer's letters waiting on their address: open returned-mail or undeliverable
    exceptions, no recovery under way, whose communication can be printed again."""
    cases = Case.objects.filter(
        customer=customer,
        case_type=CaseType.EXCEPTION,
        exception_kind__in=exception_cases.RECOVERIES[RecoveryAction.RESEND],
        state__in=OPEN_STATES,
        recovery_action="",
    ).order_by("received_at", "id")
    by_id = {
        c.pk: c
        for c in Communication.objects.filter(
            pk__in=[case.details.get("communication") for case in cases],
            document__isnull=False,
        ).select_related("template", "template_version")
    }
    out = []
    for case in cases:
        communication = by_id.get(case.details.get("communication"))
        version = communication.template_version if communication else None
        if version is not None and Channel.PRINT in version.meta.get("channels", []):
            out.append(HeldLetter(case, communication))  # type: ignore[arg-type]
    return out


def four_eyes_reason(customer: Customer) -> str:
    """Why a correction of this customer's address needs a second person ("" when it does not)."""
    if settings.CASES_ADDRESS_CORRECTION_FOUR_EYES:
        return "every postal address correction is confirmed by a second person here"
    regulated = [
        h for h in held_letters(customer) if h.communication.category == Category.REGULATORY
    ]
    if regulated:
        letter = regulated[0].communication
        return (
            f"a held regulated letter ({letter.template.name}, communication {letter.pk}) will "
            "be sent to the new address"
        )
    return ""


def pending_correction(customer: Customer) -> AddressCorrection | None:
    return customer.address_corrections.filter(state=CorrectionState.AWAITING_APPROVAL).first()


@transaction.atomic
def address_correction_request(
    *,
    customer: Customer,
    postal_address: Sequence[str],
    reason: str,
    by,
    case: Case | None = None,
) -> AddressCorrection:
    """Correct the customer's postal address, at once or — where the rule above says so —
    once a second person approves. CaseError names the field to fix."""
    try:
        _, meta = customer_services.address_normalise("print", list(postal_address))
    except IntakeError as exc:
        raise services.CaseError(str(exc), field="postal_address") from exc
    lines = meta["postal_address"]
    if not reason.strip():
        raise services.CaseError("Say why the address changes.", field="reason")
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    if lines == list(customer.postal_address) and customer.postal_address_valid:
        raise services.CaseError(
            "This is the address on file already; change a line.", field="postal_address"
        )
    waiting = pending_correction(customer)
    if waiting is not None:
        raise services.CaseError(
            f"Correction {waiting.pk} to {waiting.address_text} waits for a second person; "
            "it must be decided first."
        )
    correction = AddressCorrection.objects.create(
        customer=customer,
        case=case,
        previous_address=list(customer.postal_address),
        previous_valid=customer.postal_address_valid,
        postal_address=lines,
        reason=reason.strip(),
        requested_by=by if by is not None and by.pk else None,
    )
    audit.record(
        actor=by,
        action="customer.address_correction_requested",
        subject=correction,
        before={"postal_address": correction.previous_address},
        after={"postal_address": lines, "reason": correction.reason},
    )
    why = four_eyes_reason(customer)
    if why:
        correction.hold(reason=why)
        correction.save()
        audit.record(
            actor=by,
            action="customer.address_correction_held",
            subject=correction,
            after={"reason": why},
        )
        approvals.approval_request(
            subject=correction,
            requested_by=by,
            purpose=PURPOSE,
            summary=f"{customer.name}: new address {correction.address_text}",
        )
        return correction
    return _apply(correction, by=by, releaser=by)


def _apply(correction: AddressCorrection, *, by, releaser) -> AddressCorrection:
    """Write the address (audited by notifications), then release the held letters to it,
    each in its own savepoint so one that cannot go does not undo the correction."""
    customer_services.customer_address_correct(
        customer=correction.customer,
        postal_address=correction.postal_address,
        by=by,
        reason=correction.reason,
    )
    released = []
    for held in held_letters(correction.customer):
        try:
            with transaction.atomic():
                exception_cases.exception_resend(
                    case=held.case,
                    channel=Channel.PRINT,
                    address=correction.postal_address,
                    by=releaser,
                )
            outcome = "resent"
        except (services.CaseError, RecoveryError) as exc:
            outcome = f"not resent: {exc}"
        released.append(
            {
                "case": held.case.reference,
                "communication": held.communication.pk,
                "outcome": outcome,
            }
        )
    correction.apply(when=timezone.now())
    correction.released = released
    correction.save()
    audit.record(
        actor=by,
        action="customer.address_correction_applied",
        subject=correction,
        after={"postal_address": correction.postal_address, "released": released},
    )
    return correction


def _on_decision(correction: AddressCorrection, approval: Approval) -> None:
    locked = AddressCorrection.objects.select_for_update().get(pk=correction.pk)
    if locked.state != CorrectionState.AWAITING_APPROVAL:
        return
    if approval.state == ApprovalState.APPROVED:
        # The reviewer's decision writes the address; the letters go out as the requester's
        # resend (a reviewer does not work exception cases).
        _apply(locked, by=approval.decided_by, releaser=locked.requested_by)
        return
    when = timezone.now()
    if approval.state == ApprovalState.WITHDRAWN:
        locked.withdraw(when=when)
    else:
        locked.reject(when=when)
    locked.save()
    audit.record(
        actor=approval.decided_by or approval.requested_by,
        action=f"customer.address_correction_{locked.state}",
        subject=locked,
        after={"comment": approval.comment},
    )


def register_approvable(*, proof) -> None:
    """`proof` is the customer page's rendering of the correction
    (cases.web.customers.address_correction_proof, handed over by CasesConfig.ready(): the
    customer screens call this module)."""
    from django.urls import reverse

    approvals.register(
        AddressCorrection,
        author_of=lambda c: c.requested_by,  # type: ignore[attr-defined]
        on_decision=_on_decision,  # type: ignore[arg-type]
        review_url=lambda c: reverse("customer-detail", args=[c.customer_id]),  # type: ignore[attr-defined]
        label="Address correction",
        proof=proof,
    )

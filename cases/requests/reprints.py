"""Reprints: a customer asks for a copy of a document they were sent.

The request names the archived original, why, the channel and address, and how the caller's
identity was checked. A copy to an address that is not one of the customer's known valid ones,
of a document whose template is marked sensitive, or asked for by someone not yet identified,
waits for a compliance reviewer's release (four-eyes, through `ccm.approvals`); anything else
is released at once. Fulfilment regenerates the original from its archived version and data,
proves the bytes identical to the archive, stamps the proven bytes DUPLICATE (a file of its own)
and sends that file as a communication with source "reprint". Every request has a reprint case;
every step is audited.

    requested → awaiting_release → released → fulfilled
          ↘ released (no release needed)   ↘ failed (regeneration mismatch, send refused)
                    awaiting_release → rejected
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from cases import services
from cases.models import Case, CaseType
from cases.requests import approval_mail
from cases.requests.models import (
    STATED_IDENTITY_CHECKS,
    IdentityCheck,
    ReprintRequest,
    ReprintState,
    RequestSource,
)
from cases.requests.selectors import ISSUED_STATES, known_addresses, reprint_channels
from cases.services import CaseError
from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from ccm.tasks import Sweep, enqueue
from documents import services as documents
from documents.models import Document, DocumentKind
from notifications.customers import services as customer_services
from notifications.errors import IntakeError
from notifications.models import Communication, Customer, Source, Suppression
from notifications.pipeline import services as pipeline
from notifications.statements import services as statements

logger = logging.getLogger(__name__)

RELEASE_PURPOSE = "reprint.release"
FULFIL_TASK = "cases.requests.tasks.reprint_fulfil"
CLIENT = "cases.reprints"
# A worker that took up fulfilment and has not finished after this long is presumed dead.
FULFIL_STALE_AFTER = timedelta(minutes=10)

UNFULFILLED_SWEEP = Sweep(
    name="cases.reprints_unfulfilled",
    queryset=lambda: ReprintRequest.objects.filter(state=ReprintState.RELEASED),
    task=FULFIL_TASK,
    older_than=FULFIL_STALE_AFTER,
)


def is_sensitive(document: Document) -> bool:
    return bool(document.template_version.meta.get("sensitive"))


def _issued_with(customer: Customer, document: Document) -> Communication | None:
    return (
        Communication.objects.filter(customer=customer, document=document, state__in=ISSUED_STATES)
        .order_by("-created_at")
        .first()
    )


def _release_reasons(*, document: Document, address_is_new: bool, identity: str) -> list[str]:
    reasons = []
    if address_is_new:
        reasons.append("the address is not one of the customer's known addresses")
    if is_sensitive(document):
        reasons.append(f"template {document.template_version.template.code} is marked sensitive")
    if identity == IdentityCheck.NOT_VERIFIED:
        reasons.append("the requester's identity is not verified")
    return reasons


def _check_identity(identity: str, note: str, *, stated: bool) -> None:
    allowed = STATED_IDENTITY_CHECKS if stated else IdentityCheck.values
    if identity not in allowed:
        raise CaseError(
            f"Say how the caller's identity was verified: one of {', '.join(allowed)}.",
            field="identity_verification",
        )
    if identity == IdentityCheck.OTHER and not note.strip():
        raise CaseError("Describe how the identity was verified.", field="identity_note")


def _target(
    customer: Customer, document: Document, channel: str, address: str | Sequence[str]
) -> tuple[str, bool]:
    """The normalised address and whether it is new to the customer."""
    channels = reprint_channels()
    if channel not in channels:
        raise CaseError(
            f"A reprint goes out on one of: {', '.join(channels)}; not {channel!r}.",
            field="channel",
        )
    if channel not in document.template_version.meta.get("channels", []):
        raise CaseError(
            f"Template {document.template_version.template.code} has no {channel} version.",
            field="channel",
        )
    known = known_addresses(customer, channel)
    if not address or (isinstance(address, str) and not address.strip()):
        if not known:
            raise CaseError(
                f"The customer has no valid {channel} address on file: type one.", field="address"
            )
        return known[0], False
    try:
        value, _ = customer_services.address_normalise(channel, address)
    except IntakeError as exc:
        raise CaseError(str(exc), field=exc.field or "address") from exc
    suppressed = Suppression.objects.filter(
        channel=channel, address__iexact=value, lifted_at__isnull=True
    ).first()
    if suppressed is not None:
        raise CaseError(
            f"{value} is suppressed on {channel} ({suppressed.reason}); choose another address.",
            field="address",
        )
    return value, value.lower() not in {k.lower() for k in known}


@transaction.atomic
def reprint_request_create(
    *,
    customer: Customer,
    document: Document,
    reason: str,
    channel: str,
    identity_verification: str,
    by,
    address: str | Sequence[str] = "",
    identity_note: str = "",
    source: str = RequestSource.FORM,
) -> ReprintRequest:
    """File a reprint of one of the customer's documents; CaseError names the field at fault.

    It is released at once, or waits for a reviewer (see the module), or — from the email
    intake, identity not verified — waits for an agent to confirm who asked."""
    if not reason.strip():
        raise CaseError("Say why the customer needs a copy.", field="reason")
    _check_identity(identity_verification, identity_note, stated=source != RequestSource.EMAIL)
    if document.kind != DocumentKind.ORIGINAL:
        document = document.original or document
    original = _issued_with(customer, document)
    if original is None:
        raise CaseError(
            f"Document {document.pk} was not sent to customer {customer.external_ref}.",
            field="document",
        )
    value, is_new = _target(customer, document, channel, address)
    reasons = _release_reasons(
        document=document, address_is_new=is_new, identity=identity_verification
    )
    template = document.template_version.template
    requester = by if by is not None and by.pk else None
    case = services.case_open(
        case_type=CaseType.REPRINT,
        customer=customer,
        subject=f"Reprint of {template.name} ({document.created_at:%d %b %Y}) by {channel}",
        description=reason,
        by=by,
        assignee=requester
        if requester is not None and requester.has_perm("cases.change_case")
        else None,
    )
    services.case_link_document(case=case, document=document, by=by, note="The original")
    services.case_link_communication(case=case, communication=original, by=by)
    request = ReprintRequest.objects.create(
        case=case,
        customer=customer,
        document=document,
        original_communication=original,
        reason=reason,
        channel=channel,
        address=value,
        address_is_new=is_new,
        identity_verification=identity_verification,
        identity_note=identity_note,
        release_reasons=reasons,
        source=source,
        requested_by=requester,
    )
    audit.record(
        actor=by,
        action="reprint.requested",
        subject=request,
        after={
            "case": case.reference,
            "customer": customer.external_ref,
            "document": document.pk,
            "document_sha256": document.sha256,
            "channel": channel,
            "address": value,
            "address_is_new": is_new,
            "identity_verification": identity_verification,
            "identity_note": identity_note,
            "release_reasons": reasons,
            "source": source,
        },
    )
    return _route(request, by=by)


def _route(request: ReprintRequest, *, by) -> ReprintRequest:
    if not request.release_reasons:
        request.release(by=None, when=timezone.now())
        request.save()
        audit.record(
            actor=by,
            action="reprint.released",
            subject=request,
            after={"four_eyes": False, "why": "known address, template not sensitive"},
        )
        enqueue(FULFIL_TASK, request.pk)
        return request
    if request.requested_by is None:
        # Nobody in the building asked: an agent confirms who did before anyone may release it.
        services.case_note_add(
            case=request.case,
            body="Verify the requester's identity, then submit the reprint for release: "
            + "; ".join(request.release_reasons)
            + ".",
            by=None,
        )
        return request
    request.await_release()
    request.save()
    approval = approvals.approval_request(
        subject=request,
        requested_by=request.requested_by,
        purpose=RELEASE_PURPOSE,
        summary=f"Reprint {request.case.reference}: "
        f"{request.document.template_version.template.name} for {request.customer} "
        f"by {request.channel} to {request.address}",
    )
    approval_mail.approval_mails_queue(
        approval=approval,
        lines=[
            f"Customer:  {request.customer}",
            f"Document:  {request.document.template_version.template.name}, "
            f"{request.document.created_at:%d %b %Y} (SHA-256 {request.document.sha256[:16]}…)",
            f"Send by:   {request.channel} to {request.address}",
            f"Why:       {request.reason}",
            f"Identity:  {request.get_identity_verification_display()} {request.identity_note}",
            f"Needs release because {'; '.join(request.release_reasons)}.",
        ],
    )
    return request


@transaction.atomic
def reprint_request_submit(
    *, request: ReprintRequest, by, identity_verification: str, identity_note: str = ""
) -> ReprintRequest:
    """An agent confirms who asked for a reprint that came in by email, and sends it on."""
    _check_identity(identity_verification, identity_note, stated=True)
    locked = ReprintRequest.objects.select_for_update().get(pk=request.pk)
    if locked.state != ReprintState.REQUESTED or locked.requested_by_id is not None:
        raise services.TransitionRefused(
            f"Reprint {locked.pk} is {locked.state}; only an unconfirmed emailed request can be "
            "submitted."
        )
    locked.requested_by = by
    locked.identity_verification = identity_verification
    locked.identity_note = identity_note
    locked.release_reasons = _release_reasons(
        document=locked.document,
        address_is_new=locked.address_is_new,
        identity=identity_verification,
    )
    locked.save()
    audit.record(
        actor=by,
        action="reprint.identity_verified",
        subject=locked,
        after={"identity_verification": identity_verification, "identity_note": identity_note},
    )
    return _route(locked, by=by)


def _on_decision(request: ReprintRequest, approval: Approval) -> None:
    """Called by the kernel inside the deciding transaction."""
    locked = ReprintRequest.objects.select_for_update().get(pk=request.pk)
    if locked.state != ReprintState.AWAITING_RELEASE:
        return
    if approval.state == ApprovalState.APPROVED:
        locked.release(by=approval.decided_by, when=timezone.now())
        locked.save()
        audit.record(
            actor=approval.decided_by,
            action="reprint.released",
            subject=locked,
            after={"four_eyes": True, "approval": approval.pk},
        )
        enqueue(FULFIL_TASK, locked.pk)
        return
    reason = approval.comment or f"release {approval.state.replace('_', ' ')}"
    locked.reject(reason=reason)
    locked.save()
    actor = approval.decided_by or approval.requested_by
    audit.record(
        actor=actor,
        action="reprint.rejected",
        subject=locked,
        after={"approval": approval.pk, "reason": reason},
    )
    _case_finish(locked.case, by=actor, resolution=f"Reprint not sent: {reason}")


def _case_finish(case: Case, *, by, resolution: str) -> None:
    case = services.case_take_up(case=case, by=by)
    services.case_resolve(case=case, by=by, resolution=resolution)


def register_approvable(*, proof) -> None:
    """`proof` is the agents' screen that renders the letter (cases.requests.views.reprint_proof,
    handed over by the caller: the views call this module)."""
    from django.urls import reverse

    approvals.register(
        ReprintRequest,
        author_of=lambda request: request.requested_by,  # type: ignore[attr-defined]
        on_decision=_on_decision,  # type: ignore[arg-type]
        review_url=lambda request: reverse("agent-reprint", args=[request.pk]),
        label="Reprint",
        proof=proof,
        release=True,
        decided_url=lambda request: reverse("agent-reprint", args=[request.pk]),
    )


# --- fulfilment --------------------------------------------------------------------------------


def _fail(request: ReprintRequest, reason: str) -> None:
    with transaction.atomic():
        locked = ReprintRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state not in (ReprintState.RELEASED, ReprintState.REQUESTED):
            return
        locked.fail(reason=reason)
        locked.save()
        audit.record(actor=None, action="reprint.failed", subject=locked, after={"reason": reason})
        services.case_note_add(case=locked.case, body=f"Reprint failed: {reason}", by=None)


def _letter_data(request: ReprintRequest) -> dict:
    """What the message around the duplicate is rendered from: the original's data, less a
    portal link (the reprint gets its own, to the duplicate)."""
    data = dict(request.document.data)
    if request.document.template_version.meta.get("delivery") == "portal_link":
        data.pop("portal_url", None)
    return data


def reprint_fulfil_run(request_id: int) -> str:
    """released → fulfilled: regenerate (hash proven), stamp DUPLICATE, send it. Safe to run
    twice: the claim keeps a second worker out, a duplicate made once is reused, and the
    communication's idempotency key makes one send per request."""
    now = timezone.now()
    claimed = (
        ReprintRequest.objects.filter(pk=request_id, state=ReprintState.RELEASED)
        .filter(
            Q(fulfilment_started_at__isnull=True)
            | Q(fulfilment_started_at__lt=now - FULFIL_STALE_AFTER)
        )
        .update(fulfilment_started_at=now, updated_at=now)
    )
    if claimed != 1:
        return "skipped"
    request = ReprintRequest.objects.select_related(
        "document__template_version__template", "customer", "case", "requested_by"
    ).get(pk=request_id)
    if request.duplicate is None:
        try:
            statements.document_bill_check(request.document)
        except statements.ReprintMismatch as exc:
            # A statement whose figures the billing engine no longer gives is not copied: the
            # duplicate would repeat a bill CCM cannot stand by (the check has raised the alarm:
            # an exception case for operations, as for bytes that no longer regenerate).
            _fail(request, f"the bill was not reproduced: {exc}")
            return ReprintState.FAILED
        try:
            check, duplicate = documents.document_regenerate(
                document=request.document, by=None, duplicate=True
            )
        except documents.RegenerationMismatch as exc:
            # The documents app has recorded the check, raised its signal (an exception case
            # for operations) and audited the alarm; this request cannot send a faithful copy.
            _fail(request, f"regeneration did not match the archive: {exc}")
            return ReprintState.FAILED
        assert duplicate is not None
        ReprintRequest.objects.filter(pk=request.pk, duplicate__isnull=True).update(
            duplicate=duplicate, regeneration_check=check
        )
        request.refresh_from_db()
    return _send(request)


def _send(request: ReprintRequest) -> str:
    with transaction.atomic():
        locked = (
            ReprintRequest.objects.select_for_update(of=("self",))
            .select_related("duplicate", "regeneration_check", "case")
            .get(pk=request.pk)
        )
        if locked.state != ReprintState.RELEASED or locked.duplicate is None:
            return "skipped"
        try:
            with transaction.atomic():
                communication, _ = pipeline.communication_request(
                    template_code=locked.document.template_version.template.code,
                    customer=locked.customer,
                    data=_letter_data(locked),
                    client=CLIENT,
                    by=locked.requested_by,
                    idempotency_key=f"reprint:{locked.pk}",
                    source=Source.REPRINT,
                    channel_override=locked.channel,
                    address_override=locked.address,
                    correlation_id=locked.case.reference,
                    document=locked.duplicate,
                )
        except (IntakeError, documents.CompositionError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            locked.fail(reason=f"the copy could not be sent: {reason}")
            locked.save()
            audit.record(
                actor=None, action="reprint.failed", subject=locked, after={"reason": reason}
            )
            return ReprintState.FAILED
        locked.fulfil(communication=communication, when=timezone.now())
        locked.save()
        check = locked.regeneration_check
        audit.record(
            actor=None,
            action="reprint.fulfilled",
            subject=locked,
            after={
                "communication": communication.pk,
                "duplicate": locked.duplicate.pk,
                "duplicate_sha256": locked.duplicate.sha256,
                "original_sha256": locked.document.sha256,
                "regeneration_matched": check.matched if check else None,
                "channel": locked.channel,
                "address": locked.address,
            },
        )
        case = locked.case
        services.case_link_document(case=case, document=locked.duplicate, by=None, note="Sent")
        services.case_link_communication(case=case, communication=communication, by=None)
        services.case_take_up(case=case, by=None)
        services.milestone_reach(case=case, code="dispatch", by=None)
    return ReprintState.FULFILLED

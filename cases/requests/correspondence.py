"""Ad hoc correspondence: an agent writes a letter from a published template's form.

The data is validated against the version's JSON Schema (the same check as the API's intake),
the letter is previewed, and on submission it is composed and archived: the reviewer releases
exactly that file (four-eyes, through `ccm.approvals`), and exactly that file is sent — a
communication with source "form", linked to a correspondence case.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import transaction
from django.utils import timezone

from cases import services
from cases.models import CaseType
from cases.requests import approval_mail
from cases.requests.models import CorrespondenceRequest, CorrespondenceState, RequestSource
from cases.requests.selectors import correspondence_version
from cases.services import CaseError
from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from documents import services as documents
from documents.addressee import with_addressee
from documents.models import TemplateVersion
from documents.rendering import RenderedPdf
from notifications.errors import IntakeError
from notifications.models import Customer, Source
from notifications.pipeline import services as pipeline
from notifications.pipeline.content import addressee_of, intake_data_validate
from notifications.pipeline.facts import enabled_channels

RELEASE_PURPOSE = "correspondence.release"
CLIENT = "cases.correspondence"


def version_for(template_code: str) -> TemplateVersion:
    version = correspondence_version(template_code)
    if version is None:
        raise CaseError(
            f"There is no published letter template {template_code!r} to write from.",
            field="template",
        )
    return version


def _check_channel(version: TemplateVersion, channel: str) -> None:
    if not channel:
        return
    usable = [c for c in version.meta.get("channels", []) if c in enabled_channels()]
    if channel not in usable:
        raise CaseError(
            f"Template {version.template.code} can go out on: {', '.join(usable) or 'nothing'};"
            f" not {channel!r}.",
            field="channel",
        )


def known_data(customer: Customer) -> dict:
    """What CCM knows that a letter's data commonly asks for, to prefill the agent's form (a
    field the template does not have is not shown)."""
    return {
        "document_date": timezone.localdate().isoformat(),
        "account_reference": customer.external_ref,
    }


def correspondence_preview(
    *, template_code: str, data: Mapping, customer: Customer | None = None
) -> RenderedPdf:
    """The letter as it will print (DataInvalid lists the fields at fault); nothing archived."""
    version = version_for(template_code)
    preview = documents.template_preview(
        version=version,
        data=data,
        language=customer.language if customer else None,
        channels=["print"],
        addressee=addressee_of(customer) if customer else None,
    )
    assert preview.pdf is not None  # correspondence versions have a print rendition
    return preview.pdf


@transaction.atomic
def correspondence_request_create(
    *,
    template_code: str,
    customer: Customer,
    data: Mapping,
    by,
    channel: str = "",
    source: str = RequestSource.FORM,
) -> CorrespondenceRequest:
    """Compose and archive the letter, open its case and ask a reviewer to release it.

    CaseError names a wrong template or channel; DataInvalid lists every field at fault."""
    version = version_for(template_code)
    _check_channel(version, channel)
    snapshot = documents.data_snapshot(data)
    addressee = addressee_of(customer)
    intake_data_validate(version, snapshot, addressee=addressee)
    # The letter is addressed from the customer record, as the pipeline would address it.
    document = documents.document_compose(
        version=version,
        data=with_addressee(snapshot, addressee),
        language=customer.language,
        by=by,
    )
    template = version.template
    case = services.case_open(
        case_type=CaseType.CORRESPONDENCE,
        customer=customer,
        subject=f"{template.name} to {customer.name}",
        by=by,
        assignee=by if by.has_perm("cases.change_case") else None,
    )
    services.case_link_document(case=case, document=document, by=by, note="The letter")
    request = CorrespondenceRequest.objects.create(
        case=case,
        customer=customer,
        template=template,
        template_version=version,
        data=snapshot,
        channel=channel,
        document=document,
        source=source,
        requested_by=by,
    )
    audit.record(
        actor=by,
        action="correspondence.requested",
        subject=request,
        after={
            "case": case.reference,
            "customer": customer.external_ref,
            "template": template.code,
            "version": version.number,
            "document": document.pk,
            "document_sha256": document.sha256,
            "channel": channel,
            "source": source,
        },
    )
    approval = approvals.approval_request(
        subject=request,
        requested_by=by,
        purpose=RELEASE_PURPOSE,
        summary=f"Letter {case.reference}: {template.name} to {customer}",
    )
    approval_mail.approval_mails_queue(
        approval=approval,
        lines=[
            f"Customer:  {customer}",
            f"Letter:    {template.name} (v{version.number}), {document.page_count} page(s)",
            f"Send by:   {channel or 'the usual channel'}",
            f"Written by {by.get_username()}",
        ],
    )
    return request


def _on_decision(request: CorrespondenceRequest, approval: Approval) -> None:
    """Called by the kernel inside the deciding transaction: a released letter is sent now."""
    locked = CorrespondenceRequest.objects.select_for_update().get(pk=request.pk)
    if locked.state != CorrespondenceState.AWAITING_RELEASE:
        return
    actor = approval.decided_by or approval.requested_by
    if approval.state != ApprovalState.APPROVED:
        reason = approval.comment or f"release {approval.state.replace('_', ' ')}"
        locked.reject(reason=reason)
        locked.save()
        audit.record(
            actor=actor,
            action="correspondence.rejected",
            subject=locked,
            after={"approval": approval.pk, "reason": reason},
        )
        case = services.case_take_up(case=locked.case, by=actor)
        services.case_resolve(case=case, by=actor, resolution=f"Letter not sent: {reason}")
        return
    locked.release(by=approval.decided_by, when=timezone.now())
    locked.save()
    audit.record(
        actor=actor,
        action="correspondence.released",
        subject=locked,
        after={"approval": approval.pk},
    )
    try:
        with transaction.atomic():
            communication, _ = pipeline.communication_request(
                template_code=locked.template.code,
                customer=locked.customer,
                data=locked.data,
                client=CLIENT,
                by=locked.requested_by,
                idempotency_key=f"correspondence:{locked.pk}",
                source=Source.FORM,
                channel_override=locked.channel,
                correlation_id=locked.case.reference,
                document=locked.document,
            )
    except (IntakeError, documents.CompositionError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        locked.fail(reason=f"the letter could not be sent: {reason}")
        locked.save()
        audit.record(
            actor=None, action="correspondence.failed", subject=locked, after={"reason": reason}
        )
        services.case_note_add(case=locked.case, body=f"Letter not sent: {reason}", by=None)
        return
    locked.mark_sent(communication=communication)
    locked.save()
    audit.record(
        actor=actor,
        action="correspondence.sent",
        subject=locked,
        after={"communication": communication.pk, "document_sha256": locked.document.sha256},
    )
    services.case_link_communication(case=locked.case, communication=communication, by=actor)
    services.case_take_up(case=locked.case, by=locked.requested_by)
    services.milestone_reach(case=locked.case, code="reply", by=actor)


def register_approvable(*, proof) -> None:
    """`proof` is the agents' screen that renders the letter
    (cases.requests.views.correspondence_proof, handed over by the caller: the views call this
    module)."""
    from django.urls import reverse

    approvals.register(
        CorrespondenceRequest,
        author_of=lambda request: request.requested_by,  # type: ignore[attr-defined]
        on_decision=_on_decision,  # type: ignore[arg-type]
        review_url=lambda request: reverse("agent-correspondence", args=[request.pk]),
        label="Correspondence",
        proof=proof,
        release=True,
        decided_url=lambda request: reverse("agent-correspondence", args=[request.pk]),
    )

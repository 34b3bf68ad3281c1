"""An agent opens a case for a customer (a phoned-in complaint, a dispute, a letter received):
the case with its milestones and SLA clock, the files the customer sent, and — when the agent
accepts the offer — the first milestone's letter (a complaint's acknowledgement), requested
through the one intake like every other letter. All of it or none of it: a letter that cannot
be written from what the agent typed leaves no case behind, and the form says what to add.

`case_letter_preview` shows that letter as it will print before anything is stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from cases import letters, services, sla
from cases.models import Case, CaseType, Milestone
from documents import selectors as document_selectors
from documents import services as documents
from documents.rendering import RenderedPdf
from notifications.models import Customer
from notifications.pipeline.content import addressee_of

# What an agent may open by hand; exceptions, reprints and incidents open themselves.
AGENT_CASE_TYPES = [CaseType.COMPLAINT, CaseType.DISPUTE, CaseType.CORRESPONDENCE]


@dataclass(frozen=True)
class Attachment:
    file: UploadedFile
    name: str
    content_type: str


@dataclass(frozen=True)
class CaseRequest:
    """What the agent's form says about the case."""

    case_type: str
    customer: Customer
    subject: str
    channel: str
    description: str = ""
    product: str = ""
    account_reference: str = ""


def first_letter(case_type: str) -> sla.MilestoneSpec | None:
    """The first milestone of the type when it sends a letter (the one the form offers)."""
    spec = sla.CASE_TYPES.get(case_type)
    if spec is None or not spec.milestones or not spec.milestones[0].template:
        return None
    return spec.milestones[0]


def _details(request: CaseRequest) -> dict:
    details = {"channel": request.channel}
    if request.case_type == CaseType.COMPLAINT:
        # The complaint's letters quote the summary ("You told us that …").
        details |= {"summary": request.description, "product": request.product}
    if request.account_reference:
        details["account_reference"] = request.account_reference
    return {k: v for k, v in details.items() if v}


def _open(request: CaseRequest, *, by) -> Case:
    if request.case_type not in AGENT_CASE_TYPES:
        raise services.CaseError(
            f"Choose one of: {', '.join(AGENT_CASE_TYPES)}.", field="case_type"
        )
    assignee = by if by is not None and by.has_perm("cases.change_case") else None
    return services.case_open(
        case_type=request.case_type,
        subject=request.subject,
        description=request.description,
        customer=request.customer,
        details=_details(request),
        assignee=assignee,
        by=by,
    )


@transaction.atomic
def case_open_for_customer(
    *,
    request: CaseRequest,
    by,
    attachments: Sequence[Attachment] = (),
    send_first_letter: bool = False,
    letter_data: dict | None = None,
) -> tuple[Case, Milestone | None]:
    """Open the case, store its files, and reach the first milestone with its letter when
    asked. Raises CaseError, DataInvalid (the case details or the letter's data, by field),
    CompositionError or IntakeError; nothing is stored then."""
    case = _open(request, by=by)
    for attachment in attachments:
        services.case_attachment_add(
            case=case,
            file=attachment.file,
            by=by,
            name=attachment.name,
            content_type=attachment.content_type,
        )
    spec = first_letter(case.case_type)
    if not send_first_letter or spec is None:
        return case, None
    milestone = services.milestone_reach(case=case, code=spec.code, by=by, data=letter_data or {})
    return Case.objects.get(pk=case.pk), milestone


def case_letter_preview(
    *, request: CaseRequest, by, letter_data: dict | None = None
) -> RenderedPdf:
    """The first letter as it will print for this case, from the published template; the case
    is opened only to build the letter's data and rolled back (nothing stored, no reference
    used). CaseError when the type sends no letter; DataInvalid names the fields at fault."""
    spec = first_letter(request.case_type)
    if spec is None:
        raise services.CaseError(
            f"A {request.case_type} case sends no letter when it opens.", field="case_type"
        )
    version = document_selectors.version_for_sending(code=spec.template)
    if version is None:
        raise services.CaseError(f"There is no published {spec.template} template to send.")
    with transaction.atomic():
        case = _open(request, by=by)
        milestone = case.milestones.get(code=spec.code)
        data = letters.milestone_letter_data(case, milestone, by=by, extra=letter_data or {})
        transaction.set_rollback(True)
    preview = documents.template_preview(
        version=version,
        data=data,
        language=request.customer.language,
        channels=["print"],
        addressee=addressee_of(request.customer),
    )
    if preview.pdf is None:
        raise services.CaseError(f"{spec.template} has no printed letter to preview.")
    return preview.pdf

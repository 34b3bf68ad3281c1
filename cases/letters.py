"""What a milestone's letter is filled with: the case supplies what it knows (reference, dates,
handler, the complaint as recorded) and the caller adds the rest (a final response's decision and
findings). Field names follow the library templates' schema.json. The addressee (name, address,
salutation) is not data: the pipeline fills `customer.*` from the customer record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils import timezone

from cases import sla
from cases.models import Case, CaseType, Milestone
from documents import selectors as document_selectors
from documents import services as documents
from notifications.pipeline.content import addressee_of


def _merged(base: Mapping, extra: Mapping) -> dict:
    """`extra` over `base`, objects merged key by key (lists and values replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _handler(case: Case, by) -> dict[str, str]:
    """Who signs: the case's assignee, else whoever reached the milestone."""
    person = case.assignee or by
    name = (person.get_full_name() or person.get_username()) if person is not None else ""
    return {"name": name or case.get_team_display(), "role": f"{case.get_team_display()} team"}


def _due_date(case: Case, code: str) -> str | None:
    milestone = case.milestones.filter(code=code).first()
    if milestone is None:
        return None
    calendar = sla.calendar_for(sla.spec_for(case.case_type))
    return calendar.local_date(milestone.due_at).isoformat()


def _complaint(case: Case, by) -> dict[str, Any]:
    calendar = sla.calendar_for(sla.spec_for(case.case_type))
    details = case.details
    assert case.customer is not None
    data: dict[str, Any] = {
        "reference": case.reference,
        "document_date": calendar.local_date(timezone.now()).isoformat(),
        "account_reference": details.get("account_reference") or case.customer.external_ref,
        "complaint": {
            "received_date": calendar.local_date(case.received_at).isoformat(),
            "channel": details.get("channel"),
            "summary": details.get("summary"),
            "product": details.get("product"),
        },
        "handler": _handler(case, by),
    }
    final_response_due = _due_date(case, "final_response")
    if final_response_due:
        data["final_response_due"] = final_response_due
    return data


def _generic(case: Case, by) -> dict[str, Any]:
    calendar = sla.calendar_for(sla.spec_for(case.case_type))
    return {
        "reference": case.reference,
        "document_date": calendar.local_date(timezone.now()).isoformat(),
        "handler": _handler(case, by),
    }


def milestone_letter_data(case: Case, milestone: Milestone, *, by, extra: Mapping) -> dict:
    build = _complaint if case.case_type == CaseType.COMPLAINT else _generic
    return _merged(build(case, by), extra)


def milestone_letter_version(milestone: Milestone):
    """The published version a milestone's letter is written from (None when there is none)."""
    if not milestone.template_code:
        return None
    return document_selectors.version_for_sending(code=milestone.template_code)


def milestone_letter_preview(case: Case, milestone: Milestone, *, by, extra: Mapping):
    """The milestone's letter as it will print (DataInvalid names the fields at fault);
    nothing is stored."""
    version = milestone_letter_version(milestone)
    if version is None or case.customer is None:
        return None
    preview = documents.template_preview(
        version=version,
        data=milestone_letter_data(case, milestone, by=by, extra=extra),
        language=case.customer.language,
        channels=["print"],
        addressee=addressee_of(case.customer),
    )
    return preview.pdf

"""Every write of the cases app: opening a case, moving it through its states, reaching its
milestones (with the letters they send), the SLA clock, notes, attachments and links. The SLA
sweep and its escalations are in cases/escalation.py; exception cases opened from lower-layer
failures in cases/exception_cases.py.

Each service locks the case row, checks the transition on the model, saves and audits it in one
transaction; views, the admin, tasks and the demo all call these functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django_fsm import can_proceed

from cases import letters, sla
from cases.models import (
    Case,
    CaseAttachment,
    CaseCommunication,
    CaseDocument,
    CaseNote,
    CaseState,
    LinkRole,
    Milestone,
    ReferenceCounter,
    SlaStatus,
)
from ccm import audit
from documents.composition import validate_data
from documents.models import Document
from notifications.models import Communication, Customer, Source
from notifications.pipeline import services as pipeline


class CaseError(ValueError):
    """The request cannot be done as asked; `field` names what to fix."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field


class TransitionRefused(CaseError):
    """The case's state (or a milestone's) does not allow this now."""


# The audit verb of each transition.
ACTIONS = {
    "assign": "assigned",
    "start": "started",
    "wait": "waiting",
    "resume": "resumed",
    "resolve": "resolved",
    "close": "closed",
    "reopen": "reopened",
}


def allowed_actions(case: Case) -> list[str]:
    """The transitions possible from the case's state now (for screens and error messages)."""
    return [t.name for t in case.get_available_state_transitions()]  # type: ignore[attr-defined]


def _locked(case: Case) -> Case:
    return Case.objects.select_for_update(of=("self",)).get(pk=case.pk)


def _transition(case: Case, action: str, *, by, after: dict | None = None, **kwargs: Any) -> Case:
    locked = _locked(case)
    method = getattr(locked, action)
    if not can_proceed(method):
        possible = ", ".join(allowed_actions(locked)) or "none, the case is closed"
        raise TransitionRefused(
            f"Case {locked.reference} is {locked.state}, so {action!r} is not possible; "
            f"possible now: {possible}."
        )
    before = locked.state
    method(**kwargs)
    locked.save()
    audit.record(
        actor=by,
        action=f"case.{ACTIONS[action]}",
        subject=locked,
        before={"state": before},
        after={"state": locked.state, **(after or {})},
    )
    return locked


# --- opening ---------------------------------------------------------------------------------


def _next_reference(prefix: str, year: int) -> str:
    """PREFIX-YYYY-NNNNNN, numbered per prefix and year. The counter row stays locked until the
    transaction ends, so two cases never get one number and a rollback gives it back."""
    # Exceptions are opened by receivers that run after an audit append, holding the chain
    # lock; every other opening takes it before the counter too, so the order is always the same.
    audit.chain_lock()
    for _ in range(2):
        bumped = ReferenceCounter.objects.filter(prefix=prefix, year=year).update(
            last=F("last") + 1
        )
        if bumped:
            last = ReferenceCounter.objects.values_list("last", flat=True).get(
                prefix=prefix, year=year
            )
            return f"{prefix}-{year}-{last:06d}"
        try:
            with transaction.atomic():
                ReferenceCounter.objects.create(prefix=prefix, year=year, last=1)
            return f"{prefix}-{year}-{1:06d}"
        except IntegrityError:
            continue  # the year's first case was opened concurrently: take the next number
    raise RuntimeError(f"could not number a {prefix} case")  # pragma: no cover


@transaction.atomic
def case_open(
    *,
    case_type: str,
    subject: str,
    by,
    customer: Customer | None = None,
    description: str = "",
    priority: str | None = None,
    team: str | None = None,
    details: Mapping | None = None,
    received_at: datetime | None = None,
    assignee=None,
    parent: Case | None = None,
    exception: Mapping | None = None,
) -> Case:
    """Open a case with its milestones due on the type's calendar from `received_at` (now by
    default). `details` is checked against the type's schema (DataInvalid lists the fields);
    `exception` holds the exception fields when cases/exception_cases.py opens one."""
    spec = sla.CASE_TYPES.get(case_type)
    if spec is None:
        raise CaseError(
            f"Unknown case type {case_type!r}; one of: {', '.join(sla.CASE_TYPES)}.", field="type"
        )
    if spec.needs_customer and customer is None:
        raise CaseError(f"A {case_type} case needs the customer it is about.", field="customer")
    now = timezone.now()
    received = received_at or now
    if received > now:
        raise CaseError("received_at is in the future.", field="received_at")
    details = dict(details or {})
    validate_data(spec.details_schema, details)
    case = Case.objects.create(
        reference=_next_reference(spec.prefix, received.year),
        case_type=case_type,
        customer=customer,
        subject=subject,
        description=description,
        priority=priority or spec.priority,
        team=team or spec.team,
        details=details,
        received_at=received,
        parent=parent,
        created_by=by if by is not None and by.pk else None,
        **(exception or {}),
    )
    for sequence, milestone in enumerate(spec.milestones):
        Milestone.objects.create(
            case=case,
            code=milestone.code,
            label=milestone.label,
            sequence=sequence,
            template_code=milestone.template,
            due_at=sla.due_at(spec, milestone, received_at=received),
        )
    case_sla_refresh(case, now=now)
    audit.record(
        actor=by,
        action="case.opened",
        subject=case,
        after={
            "type": case_type,
            "customer": customer.pk if customer else None,
            "team": case.team,
            "priority": case.priority,
            "received_at": received.isoformat(),
            "deadlines": {m.code: local_iso(case, m.due_at) for m in case.milestones.all()},
        },
    )
    if assignee is not None:
        case = case_assign(case=case, assignee=assignee, by=by)
    return case


@transaction.atomic
def case_update(
    *,
    case: Case,
    by,
    subject: str | None = None,
    description: str | None = None,
    priority: str | None = None,
    team: str | None = None,
) -> Case:
    """Change what a case is about, how urgent it is or which team's queue it sits in."""
    locked = _locked(case)
    wanted = {"subject": subject, "description": description, "priority": priority, "team": team}
    changes = {k: v for k, v in wanted.items() if v is not None and v != getattr(locked, k)}
    if not changes:
        return locked
    before = {k: getattr(locked, k) for k in changes}
    Case.objects.filter(pk=locked.pk).update(**changes, updated_at=timezone.now())
    locked.refresh_from_db()
    audit.record(actor=by, action="case.updated", subject=locked, before=before, after=changes)
    return locked


# --- transitions -----------------------------------------------------------------------------


def _can_work_cases(user) -> bool:
    return user is not None and user.is_active and user.has_perm("cases.change_case")


@transaction.atomic
def case_assign(*, case: Case, assignee, by) -> Case:
    if not _can_work_cases(assignee):
        raise CaseError(
            f"{assignee.get_username()} cannot work cases: give them the service agent or "
            "operations role first.",
            field="assignee",
        )
    return _transition(
        case, "assign", by=by, assignee=assignee, after={"assignee": assignee.get_username()}
    )


@transaction.atomic
def case_start(*, case: Case, by) -> Case:
    return _transition(case, "start", by=by)


@transaction.atomic
def case_take_up(*, case: Case, by) -> Case:
    """Bring an open case to in_progress the way taking it up does: a new case is assigned to
    `by` (when they may work cases), an assigned one is started."""
    locked = _locked(case)
    if locked.state == CaseState.NEW:
        assignee = by if _can_work_cases(by) else None
        locked = _transition(
            locked,
            "assign",
            by=by,
            assignee=assignee,
            after={"assignee": assignee.get_username() if assignee else None},
        )
    if locked.state == CaseState.ASSIGNED:
        locked = _transition(locked, "start", by=by)
    return locked


@transaction.atomic
def case_wait(*, case: Case, by, reason: str) -> Case:
    """Stop the SLA clock while the case waits on the customer."""
    if not reason.strip():
        raise CaseError("Say what the case is waiting for.", field="reason")
    locked = _transition(case, "wait", by=by, when=timezone.now(), after={"reason": reason})
    case_sla_refresh(locked)
    return locked


@transaction.atomic
def case_resume(*, case: Case, by) -> Case:
    """Restart the clock: every open deadline moves by the business days spent waiting."""
    locked = _locked(case)
    now = timezone.now()
    spec = sla.spec_for(locked.case_type)
    days = (
        sla.paused_business_days(spec, paused_at=locked.paused_at, resumed_at=now)
        if locked.paused_at is not None
        else 0
    )
    locked = _transition(locked, "resume", by=by, paused_days=days, after={"paused_days": days})
    moved = _deadlines_recompute(locked)
    if moved:
        audit.record(
            actor=by,
            action="case.deadlines_extended",
            subject=locked,
            after={"paused_business_days": locked.paused_business_days, "deadlines": moved},
        )
    case_sla_refresh(locked, now=now)
    return locked


@transaction.atomic
def case_resolve(*, case: Case, by, resolution: str) -> Case:
    if not resolution.strip():
        raise CaseError("Say how the case was resolved.", field="resolution")
    return _transition(
        case,
        "resolve",
        by=by,
        resolution=resolution,
        when=timezone.now(),
        after={"resolution": resolution},
    )


@transaction.atomic
def case_close(*, case: Case, by) -> Case:
    return _transition(case, "close", by=by, when=timezone.now())


@transaction.atomic
def case_reopen(*, case: Case, by, reason: str = "") -> Case:
    locked = _transition(case, "reopen", by=by, after={"reason": reason})
    case_sla_refresh(locked)
    return locked


# --- milestones and the SLA clock ------------------------------------------------------------


def _deadlines_recompute(case: Case) -> dict[str, str]:
    """Due dates of the unreached milestones from receipt plus the business days paused."""
    spec = sla.spec_for(case.case_type)
    moved = {}
    for milestone in case.milestones.filter(reached_at__isnull=True):
        milestone_spec = spec.milestone(milestone.code)
        if milestone_spec is None:  # the type no longer defines it: keep what was promised
            continue
        due = sla.due_at(
            spec,
            milestone_spec,
            received_at=case.received_at,
            paused_days=case.paused_business_days,
        )
        if due != milestone.due_at:
            Milestone.objects.filter(pk=milestone.pk).update(due_at=due)
            moved[milestone.code] = local_iso(case, due)
    return moved


def local_iso(case: Case, moment: datetime) -> str:
    """A deadline as the calendar's local time: what the audit and the people reading it see."""
    return moment.astimezone(sla.calendar_for(sla.spec_for(case.case_type)).tz).isoformat()


def _next_milestone(case: Case) -> Milestone | None:
    return case.milestones.filter(reached_at__isnull=True).order_by("due_at", "sequence").first()


def case_sla_refresh(case: Case, *, now: datetime | None = None) -> Milestone | None:
    """Store the next deadline and where the case stands against it (the list's SLA column).
    A waiting case's clock is stopped, and a finished case has none: both are on track."""
    milestone = _next_milestone(case) if case.is_open else None
    status = SlaStatus.ON_TRACK
    if milestone is not None and case.state != CaseState.WAITING:
        status = SlaStatus(
            sla.sla_status(
                sla.spec_for(case.case_type), due=milestone.due_at, now=now or timezone.now()
            )
        )
    case.next_due_at = milestone.due_at if milestone else None
    case.sla_status = status
    Case.objects.filter(pk=case.pk).update(next_due_at=case.next_due_at, sla_status=status)
    return milestone


@transaction.atomic
def milestone_reach(*, case: Case, code: str, by, data: Mapping | None = None) -> Milestone:
    """Record a milestone as reached. One that produces a letter requests it from the library
    template (source "case", correlation id and idempotency key from the case reference) and
    links it to the case; a milestone that `resolves` the type resolves the case.

    `data` adds to (and overrides) what the case supplies for the letter, e.g. the findings of
    a final response. Bad data raises the intake's errors and nothing is recorded."""
    locked = _locked(case)
    if locked.state == CaseState.CLOSED:
        raise TransitionRefused(f"Case {locked.reference} is closed.")
    milestone = locked.milestones.filter(code=code).first()
    if milestone is None:
        codes = ", ".join(locked.milestones.values_list("code", flat=True))
        raise CaseError(
            f"Case {locked.reference} has no milestone {code!r}; its milestones: {codes}.",
            field="code",
        )
    if milestone.reached_at is not None:
        raise TransitionRefused(
            f"Milestone {code!r} of case {locked.reference} was reached on "
            f"{milestone.reached_at:%Y-%m-%d %H:%M}."
        )
    now = timezone.now()
    if milestone.template_code:
        milestone.communication = _milestone_letter(locked, milestone, by=by, data=data or {})
        _link(locked, milestone.communication, role=LinkRole.MILESTONE, by=by)
    milestone.reached_at = now
    milestone.reached_by = by if by is not None and by.pk else None
    milestone.save(update_fields=["reached_at", "reached_by", "communication"])
    audit.record(
        actor=by,
        action="case.milestone_reached",
        subject=locked,
        after={
            "milestone": code,
            "due_at": local_iso(locked, milestone.due_at),
            "on_time": now <= milestone.due_at,
            "communication": milestone.communication_id,
        },
    )
    milestone_spec = sla.spec_for(locked.case_type).milestone(code)
    if milestone_spec is not None and milestone_spec.resolves and can_proceed(locked.resolve):
        locked = _transition(
            locked,
            "resolve",
            by=by,
            resolution=f"{milestone.label} sent.",
            when=now,
            after={"milestone": code},
        )
    case_sla_refresh(locked, now=now)
    return milestone


def _milestone_letter(case: Case, milestone: Milestone, *, by, data: Mapping) -> Communication:
    if case.customer is None:
        raise CaseError("A letter needs the customer the case is about.", field="customer")
    communication, _ = pipeline.communication_request(
        template_code=milestone.template_code,
        customer=case.customer,
        data=letters.milestone_letter_data(case, milestone, by=by, extra=data),
        client="cases",
        by=by,
        idempotency_key=f"{case.reference}:{milestone.code}",
        source=Source.CASE,
        correlation_id=case.reference,
    )
    return communication


# --- notes, attachments, links ---------------------------------------------------------------


@transaction.atomic
def case_note_add(*, case: Case, body: str, by) -> CaseNote:
    if not body.strip():
        raise CaseError("A note needs some text.", field="body")
    note = CaseNote.objects.create(case=case, body=body, author=by if by and by.pk else None)
    audit.record(actor=by, action="case.note_added", subject=case, after={"note": note.pk})
    return note


@transaction.atomic
def case_attachment_add(
    *, case: Case, file: File, by, name: str = "", content_type: str = ""
) -> CaseAttachment:
    """Store a file with the case, with its size and SHA-256 (what was received, provably)."""
    digest, size = hashlib.sha256(), 0
    for chunk in file.chunks():
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    name = name or (file.name or "attachment").rsplit("/", 1)[-1]
    attachment = CaseAttachment(
        case=case,
        name=name,
        content_type=content_type or getattr(file, "content_type", "") or "",
        size=size,
        sha256=digest.hexdigest(),
        uploaded_by=by if by and by.pk else None,
    )
    attachment.file.save(name, file, save=False)
    attachment.save()
    audit.record(
        actor=by,
        action="case.attachment_added",
        subject=case,
        after={"attachment": attachment.pk, "name": name, "sha256": attachment.sha256},
    )
    return attachment


def _link(case: Case, communication: Communication, *, role: str, by) -> CaseCommunication:
    link, created = CaseCommunication.objects.get_or_create(
        case=case, communication=communication, defaults={"role": role}
    )
    if created:
        audit.record(
            actor=by,
            action="case.communication_linked",
            subject=case,
            after={"communication": communication.pk, "role": role},
        )
    return link


@transaction.atomic
def case_link_communication(
    *, case: Case, communication: Communication, by, role: str = LinkRole.RELATED
) -> CaseCommunication:
    return _link(case, communication, role=role, by=by)


@transaction.atomic
def case_link_document(*, case: Case, document: Document, by, note: str = "") -> CaseDocument:
    link, created = CaseDocument.objects.get_or_create(
        case=case,
        document=document,
        defaults={"note": note, "linked_by": by if by and by.pk else None},
    )
    if created:
        audit.record(
            actor=by, action="case.document_linked", subject=case, after={"document": document.pk}
        )
    return link

"""Reads for the case screens and endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils import timezone

from cases.models import OPEN_STATES, Case, CaseState, SlaStatus
from ccm import audit
from ccm.models import AuditEvent
from ccm.search import as_uuid, contains, matching_pks
from notifications.models import (
    Communication,
    CommunicationStep,
    Delivery,
    DeliveryEvent,
    EventType,
)
from notifications.selectors import customer_search

# Audit actions the timeline shows through richer entries of their own.
_SHOWN_ELSEWHERE = ("case.note_added", "case.milestone_reached")
# Provider events that change no state (so no audit row says they happened).
_EVENT_ONLY = [
    EventType.OPENED,
    EventType.CLICKED,
    EventType.DEFERRED,
    EventType.COMPLAINED,
    EventType.UNSUBSCRIBED,
]


def case_search(term: str) -> QuerySet:
    """The ids of the cases whose reference or subject contains `term`, or whose customer's
    name, reference, email or phone does (each through its index, see ccm/search.py)."""
    parts = [
        Case.objects.filter(contains("reference", term)).values("pk"),
        Case.objects.filter(contains("subject", term)).values("pk"),
        Case.objects.filter(customer_id__in=customer_search(term)).values("pk"),
    ]
    if (public_id := as_uuid(term)) is not None:
        parts.append(Case.objects.filter(public_id=public_id).values("pk"))
    return matching_pks(parts)


def case_list(
    *,
    within: QuerySet[Case] | None = None,
    case_type: str | None = None,
    state: str | None = None,
    team: str | None = None,
    assignee: str | None = None,
    customer: str | None = None,
    flagged: bool | None = None,
    overdue: bool | None = None,
) -> QuerySet[Case]:
    """Cases for a queue. `flagged`: approaching or past a deadline when the SLA sweep last
    looked; `overdue`: past its next deadline now (a waiting case's clock is stopped).
    `within`: the cases the caller may see (all when not given)."""
    cases = (Case.objects.all() if within is None else within).select_related(
        "customer", "assignee"
    )
    if case_type:
        cases = cases.filter(case_type=case_type)
    if state:
        cases = cases.filter(state=state)
    if team:
        cases = cases.filter(team=team)
    if assignee:
        cases = cases.filter(assignee__username=assignee)
    if customer:
        cases = cases.filter(customer__external_ref=customer)
    if flagged is not None:
        is_flagged = Q(sla_status__in=[SlaStatus.APPROACHING, SlaStatus.OVERDUE])
        cases = cases.filter(is_flagged if flagged else ~is_flagged)
    if overdue is not None:
        late = Q(
            state__in=[s for s in OPEN_STATES if s != CaseState.WAITING],
            next_due_at__lt=timezone.now(),
        )
        cases = cases.filter(late if overdue else ~late)
    return cases


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # case | note | milestone | communication | delivery_event
    action: str
    actor: str
    detail: dict = field(default_factory=dict)


def case_timeline(case: Case) -> list[TimelineEntry]:
    """Everything that happened to the case and its communications, oldest first: the case's
    audit trail, its notes, its milestones as they were reached, and the audit trail and
    provider events of every communication linked to it."""
    entries = [
        TimelineEntry(e.created_at, "case", e.action, e.actor_label, e.after or {})
        for e in audit.history(case).exclude(action__in=_SHOWN_ELSEWHERE)
    ]
    entries += [
        TimelineEntry(
            note.created_at,
            "note",
            "note",
            note.author.get_username() if note.author else "system",
            {"id": note.pk, "body": note.body},
        )
        for note in case.notes.select_related("author")
    ]
    entries += [
        TimelineEntry(
            m.reached_at,
            "milestone",
            f"milestone.{m.code}",
            m.reached_by.get_username() if m.reached_by else "system",
            {
                "label": m.label,
                "due_at": m.due_at.isoformat(),
                "on_time": m.reached_at <= m.due_at,
                "communication": m.communication_id,
            },
        )
        for m in case.milestones.filter(reached_at__isnull=False).select_related("reached_by")
        if m.reached_at is not None
    ]
    communication_ids = list(case.communication_links.values_list("communication_id", flat=True))
    deliveries = dict(
        Delivery.objects.filter(communication_id__in=communication_ids).values_list(
            "pk", "communication_id"
        )
    )
    trail = AuditEvent.objects.filter(
        Q(
            subject_type=Communication._meta.label_lower,
            subject_id__in=[str(pk) for pk in communication_ids],
        )
        | Q(subject_type=Delivery._meta.label_lower, subject_id__in=[str(pk) for pk in deliveries])
    ).order_by("id")
    for event in trail:
        subject_id = int(event.subject_id)
        is_delivery = event.subject_type == Delivery._meta.label_lower
        about = {
            "communication": deliveries[subject_id] if is_delivery else subject_id,
            **({"delivery": subject_id} if is_delivery else {}),
        }
        entries.append(
            TimelineEntry(
                event.created_at,
                "communication",
                event.action,
                event.actor_label,
                {**about, **(event.after or {})},
            )
        )
    entries += [
        TimelineEntry(
            step.at,
            "communication",
            step.action,
            step.actor_label,
            {
                "communication": step.communication_id,
                **({"delivery": step.delivery_id} if step.delivery_id else {}),
                **step.detail,
            },
        )
        for step in CommunicationStep.objects.filter(communication_id__in=communication_ids)
    ]
    for provider_event in DeliveryEvent.objects.filter(
        delivery_id__in=list(deliveries), event_type__in=_EVENT_ONLY
    ):
        assert provider_event.delivery_id is not None  # filtered on it
        entries.append(
            TimelineEntry(
                provider_event.occurred_at,
                "delivery_event",
                f"delivery.{provider_event.event_type}",
                provider_event.provider,
                {
                    "communication": deliveries[provider_event.delivery_id],
                    "delivery": provider_event.delivery_id,
                    "description": provider_event.description,
                },
            )
        )
    entries.sort(key=lambda entry: entry.at)  # stable: ties keep the order built above
    return entries

"""The SLA sweep: where each running case stands against its next deadline, and the escalation
the first time it is approaching and the first time it is overdue (audited, priority raised, the
team alerted). Run periodically by cases.tasks.case_sla_sweep; safe to run any number of times."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from cases import alerts, services
from cases.models import OPEN_STATES, PRIORITY_ORDER, Case, CaseState, Milestone, SlaStatus
from ccm import audit

SWEEP_LIMIT = 5000


def _raised(priority: str) -> str:
    index = PRIORITY_ORDER.index(priority) if priority in PRIORITY_ORDER else 1
    return PRIORITY_ORDER[min(index + 1, len(PRIORITY_ORDER) - 1)]


def case_sla_check(*, case_id: int, now: datetime | None = None) -> str | None:
    """Where one case stands against its next deadline; the first time it is approaching and
    the first time it is overdue it is escalated: audited, priority raised, the team alerted.
    The milestone's stamp is the claim, so a second run escalates nothing twice."""
    now = now or timezone.now()
    with transaction.atomic():
        case = (
            Case.objects.select_for_update(of=("self",))
            .filter(pk=case_id, state__in=OPEN_STATES)
            .first()
        )
        if case is None:
            return None
        milestone = services.case_sla_refresh(case, now=now)
        status = case.sla_status
        if milestone is None or case.state == CaseState.WAITING or status == SlaStatus.ON_TRACK:
            return status
        stamp = "warned_at" if status == SlaStatus.APPROACHING else "breached_at"
        # An overdue case that was never warned is not warned late as well.
        stamps = {stamp: now} | ({} if milestone.warned_at else {"warned_at": now})
        claimed = (
            Milestone.objects.filter(pk=milestone.pk, **{f"{stamp}__isnull": True}).update(**stamps)
            == 1
        )
        if claimed:
            _escalate(case, milestone, status)
        return status


def _escalate(case: Case, milestone: Milestone, status: str) -> None:
    before = case.priority
    case.priority = _raised(before)
    Case.objects.filter(pk=case.pk).update(priority=case.priority)
    audit.record(
        actor=None,
        action="case.escalated",
        subject=case,
        before={"priority": before},
        after={
            "priority": case.priority,
            "milestone": milestone.code,
            "sla_status": status,
            "due_at": services.local_iso(case, milestone.due_at),
        },
    )
    alerts.escalation_alert_queue(case=case, milestone=milestone, status=status)


def cases_sla_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic task: check every running case whose next deadline is near or that is
    flagged already (a resumed clock may put it back on track)."""
    now = now or timezone.now()
    # Generous in calendar days (weekends, Christmas); the exact test is per case.
    horizon = now + timedelta(days=14 + 2 * settings.CASES_SLA_WARN_BUSINESS_DAYS)
    ids = (
        Case.objects.filter(state__in=[CaseState.NEW, CaseState.ASSIGNED, CaseState.IN_PROGRESS])
        .filter(Q(next_due_at__lte=horizon) | ~Q(sla_status=SlaStatus.ON_TRACK))
        .order_by("next_due_at")
        .values_list("pk", flat=True)
    )
    counts: Counter[str] = Counter()
    # Each case in its own transaction; a run that cannot finish them all leaves the rest to
    # the next one (the farthest deadlines last).
    for pk in list(ids[:SWEEP_LIMIT]):
        counts[case_sla_check(case_id=pk, now=now) or "skipped"] += 1
    return dict(counts)

"""Reads for the agent and operations screens (cases/web/views.py): the case queue by team, "my
cases" and unassigned; the exception queue; where each case stands against its next deadline;
the counts on the home page. Kept apart from cases/selectors.py (the API's reads) because they
answer one screen each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import F, Prefetch, QuerySet
from django.utils import timezone

from cases import sla
from cases.models import (
    OPEN_STATES,
    Case,
    CaseState,
    CaseType,
    Milestone,
    SlaStatus,
    Team,
    open_exceptions,
    priority_rank,
)
from ccm import notices
from ccm.lists import capped_count, capped_counts

MY_CASES, UNASSIGNED = "mine", "unassigned"
QUEUES = [MY_CASES, UNASSIGNED, *Team.values]
OPEN, ALL = "open", "all"
STATES = [OPEN, *CaseState.values, ALL]
# A tab's count stops here (see queue_counts).
TAB_COUNT_CAP = notices.WORK_COUNT_CAP
SORTS = {"deadline": "Next deadline first", "priority": "Most urgent first"}


def _ordered(cases: QuerySet[Case], sort: str) -> QuerySet[Case]:
    deadline = F("next_due_at").asc(nulls_last=True)
    if sort == "priority":
        return cases.annotate(rank=priority_rank()).order_by("rank", deadline, "id")
    return cases.order_by(deadline, "id")


def _with_next_milestone(cases: QuerySet[Case]) -> QuerySet[Case]:
    # The queue names the milestone the deadline belongs to, without a query per row.
    return cases.select_related("customer", "assignee").prefetch_related(
        Prefetch(
            "milestones",
            queryset=Milestone.objects.filter(reached_at__isnull=True).order_by(
                "due_at", "sequence"
            ),
            to_attr="open_milestones",
        )
    )


def _in_queue(cases: QuerySet[Case], queue: str, user) -> QuerySet[Case]:
    if queue == MY_CASES:
        return cases.filter(assignee=user)
    if queue == UNASSIGNED:
        return cases.filter(assignee__isnull=True)
    return cases.filter(team=queue)


def _in_state(cases: QuerySet[Case], state: str) -> QuerySet[Case]:
    if state == OPEN:
        return cases.filter(state__in=OPEN_STATES)
    return cases if state == ALL else cases.filter(state=state)


def case_queue(*, queue: str, user, state: str = OPEN, sort: str = "deadline") -> QuerySet[Case]:
    """One tab of the agent's queue: `queue` is "mine", "unassigned" or a team."""
    return _ordered(
        _with_next_milestone(_in_state(_in_queue(Case.objects.all(), queue, user), state)), sort
    )


def queue_counts(*, user, state: str = OPEN) -> dict[str, int]:
    """How many cases each tab holds in `state`, counted up to TAB_COUNT_CAP + 1 in one
    statement: a tab over the cap reads "99+" as the navigation's counts do (an exact count
    of a team's tens of thousands of cases cost a third of a second and told nobody more)."""
    base = _in_state(Case.objects.all(), state)
    return capped_counts({queue: _in_queue(base, queue, user) for queue in QUEUES}, TAB_COUNT_CAP)


def count_words(n: int, cap: int = notices.WORK_COUNT_CAP) -> str:
    """A capped count as a tab shows it: "42", or "99+" past the cap."""
    return f"{cap}+" if n > cap else str(n)


def exception_queue(*, kind: str = "") -> QuerySet[Case]:
    """Open exception cases, most urgent first, then by deadline."""
    cases = Case.objects.filter(open_exceptions())
    if kind:
        cases = cases.filter(exception_kind=kind)
    return _ordered(_with_next_milestone(cases), "priority").select_related(
        "recovery_communication"
    )


def my_open_cases(user) -> QuerySet[Case]:
    return Case.objects.filter(assignee=user, state__in=OPEN_STATES)


def my_open_cases_count(user) -> int:
    return capped_count(my_open_cases(user), notices.WORK_COUNT_CAP)


def open_exception_cases(user) -> QuerySet[Case]:
    return Case.objects.filter(case_type=CaseType.EXCEPTION, state__in=OPEN_STATES)


def open_exceptions_count(user) -> int:
    return capped_count(open_exception_cases(user), notices.WORK_COUNT_CAP)


# Age buckets of the dashboard's exception panel: (label, from days, to days).
EXCEPTION_AGES = (
    ("under a day", 0, 1),
    ("1 to 3 days", 1, 3),
    ("3 to 7 days", 3, 7),
    ("over a week", 7, None),
)


def exceptions_by_age_panel() -> dict:
    """Open exception cases by age, for the operations dashboard (registered as its panel);
    each figure links to the back-office list of those cases."""
    from urllib.parse import urlencode

    from django.db.models import Count, Q
    from django.urls import reverse

    now = timezone.now()
    windows = []
    for label, newer, older in EXCEPTION_AGES:
        window: dict[str, datetime] = {"created_at__lte": now - timedelta(days=newer)}
        if older is not None:
            window["created_at__gt"] = now - timedelta(days=older)
        windows.append((label, window))
    # One query for every bucket.
    counts = Case.objects.filter(case_type=CaseType.EXCEPTION, state__in=OPEN_STATES).aggregate(
        **{f"bucket{n}": Count("id", filter=Q(**window)) for n, (_, window) in enumerate(windows)}
    )
    changelist = reverse("admin:cases_case_changelist")
    rows = []
    for n, (label, window) in enumerate(windows):
        query = {
            "case_type__exact": CaseType.EXCEPTION,
            "state__in": ",".join(OPEN_STATES),
            **{k: v.isoformat() for k, v in window.items()},
        }
        url = f"{changelist}?{urlencode(query)}"
        rows.append({"label": label, "count": counts[f"bucket{n}"], "url": url})
    return {"title": "Open exception cases by age", "rows": rows}


@dataclass(frozen=True)
class SlaIndicator:
    """Where a case stands against its next deadline, in words for the screen (never colour
    alone): `status` is on_track | approaching | overdue | stopped | none."""

    status: str
    text: str
    milestone: str = ""
    due: date | None = None
    business_days_left: int | None = None
    paused_since: date | None = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def sla_indicator(case: Case, *, now: datetime | None = None) -> SlaIndicator:
    """Computed now from the case's stored next deadline on its type's calendar (the stored
    `sla_status` is what the sweep last saw; a screen must be right at the moment it is read)."""
    now = now or timezone.now()
    spec = sla.spec_for(case.case_type)
    calendar = sla.calendar_for(spec)
    milestones = getattr(case, "open_milestones", None)
    if milestones is None:
        milestones = list(
            case.milestones.filter(reached_at__isnull=True).order_by("due_at", "sequence")
        )
    label = milestones[0].label if milestones else ""
    if not case.is_open or case.next_due_at is None:
        return SlaIndicator("none", "No deadline running")
    due = calendar.local_date(case.next_due_at)
    if case.state == CaseState.WAITING:
        since = calendar.local_date(case.paused_at) if case.paused_at else None
        return SlaIndicator(
            "stopped",
            "Clock stopped: waiting on the customer",
            milestone=label,
            due=due,
            paused_since=since,
        )
    today = calendar.local_date(now)
    status = sla.sla_status(spec, due=case.next_due_at, now=now)
    if status == SlaStatus.OVERDUE:
        late = calendar.business_days_between(due, today)
        text = f"Overdue by {_plural(late, 'business day')}" if late else "Overdue"
        return SlaIndicator(status, text, milestone=label, due=due, business_days_left=-late)
    left = calendar.business_days_between(today, due)
    text = "Due today" if left == 0 else f"{_plural(left, 'business day')} left"
    if status == SlaStatus.APPROACHING:
        text = f"Approaching: {text[0].lower()}{text[1:]}"
    return SlaIndicator(status, text, milestone=label, due=due, business_days_left=left)

"""Case types, their milestones and SLA clocks: the one place where deadlines are defined.

A deadline counts on a business-day calendar per jurisdiction (weekends and the public holidays
of the `holidays` library, e.g. England's bank holidays for "GB-ENG"). A milestone is due either
a number of business days after the case was received, or a number of calendar weeks after it
(UK FCA DISP 1.6: the final response to a complaint within eight weeks). The clock stops while a
case waits on the customer: the business days spent waiting are added to every open deadline.

Everything here is pure arithmetic on dates; the services store what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays
from django.conf import settings

from cases.models import CaseType, Priority, SlaStatus, Team


@dataclass(frozen=True)
class Due:
    """How long after receipt a milestone is due: business days, or calendar weeks."""

    business_days: int = 0
    weeks: int = 0

    def __post_init__(self) -> None:
        if bool(self.business_days) == bool(self.weeks):
            raise ValueError("give exactly one of business_days or weeks")

    def __str__(self) -> str:
        if self.business_days:
            return f"{self.business_days} business day{'s' * (self.business_days != 1)}"
        return f"{self.weeks} week{'s' * (self.weeks != 1)}"


@dataclass(frozen=True)
class MilestoneSpec:
    code: str
    label: str
    due: Due
    # The library template of the letter reaching this milestone sends, if any.
    template: str = ""
    # Reaching it resolves the case (the final response is the resolution of a complaint).
    resolves: bool = False


@dataclass(frozen=True)
class CaseTypeSpec:
    code: str
    team: str
    milestones: tuple[MilestoneSpec, ...]
    priority: str = Priority.NORMAL
    # Reference prefix: complaint letters carry CMP-YYYY-NNNNNN, everything else CASE-….
    prefix: str = "CASE"
    # A jurisdiction code "CC" or "CC-SUBDIV"; empty means settings.CASES_CALENDAR.
    calendar: str = ""
    # Exceptions and incidents may be about no one customer in particular.
    needs_customer: bool = True
    # JSON Schema of `Case.details` for this type, checked when a case is opened.
    details_schema: dict = field(default_factory=lambda: {"type": "object"})

    def milestone(self, code: str) -> MilestoneSpec | None:
        return next((m for m in self.milestones if m.code == code), None)


# The complaint details the letters need; the enums mirror the complaint templates' schema.
COMPLAINT_DETAILS = {
    "type": "object",
    "required": ["summary", "channel", "product"],
    "properties": {
        "summary": {"type": "string", "minLength": 1},
        "channel": {"enum": ["phone", "email", "letter", "web_chat", "social_media", "in_person"]},
        "product": {"enum": ["energy", "home_insurance"]},
        "account_reference": {"type": "string", "minLength": 1},
    },
}

CASE_TYPES: dict[str, CaseTypeSpec] = {
    CaseType.COMPLAINT: CaseTypeSpec(
        code=CaseType.COMPLAINT,
        team=Team.CUSTOMER_RELATIONS,
        prefix="CMP",
        details_schema=COMPLAINT_DETAILS,
        milestones=(
            MilestoneSpec(
                "acknowledgement",
                "Acknowledgement",
                Due(business_days=2),
                template="complaint_acknowledgement",
            ),
            MilestoneSpec(
                "interim_update",
                "Progress update",
                Due(weeks=4),
                template="complaint_interim_update",
            ),
            MilestoneSpec(
                "final_response",
                "Final response",
                Due(weeks=8),
                template="complaint_final_response",
                resolves=True,
            ),
        ),
    ),
    CaseType.DISPUTE: CaseTypeSpec(
        code=CaseType.DISPUTE,
        team=Team.DISPUTES,
        milestones=(
            MilestoneSpec("acknowledgement", "Acknowledgement", Due(business_days=2)),
            # Payment services: an answer within 15 business days (PSRs 2017, reg. 101).
            MilestoneSpec("resolution", "Resolution", Due(business_days=15), resolves=True),
        ),
    ),
    CaseType.EXCEPTION: CaseTypeSpec(
        code=CaseType.EXCEPTION,
        team=Team.OPERATIONS,
        priority=Priority.HIGH,
        needs_customer=False,
        milestones=(MilestoneSpec("resolution", "Resolution", Due(business_days=1)),),
    ),
    CaseType.REPRINT: CaseTypeSpec(
        code=CaseType.REPRINT,
        team=Team.OPERATIONS,
        milestones=(
            MilestoneSpec("dispatch", "Reprint sent", Due(business_days=2), resolves=True),
        ),
    ),
    CaseType.CORRESPONDENCE: CaseTypeSpec(
        code=CaseType.CORRESPONDENCE,
        team=Team.CUSTOMER_RELATIONS,
        needs_customer=False,  # mail from an unknown sender: the agent finds who wrote
        milestones=(MilestoneSpec("reply", "Reply sent", Due(business_days=5), resolves=True),),
    ),
    CaseType.INCIDENT: CaseTypeSpec(
        code=CaseType.INCIDENT,
        team=Team.OPERATIONS,
        priority=Priority.HIGH,
        needs_customer=False,
        milestones=(MilestoneSpec("resolution", "Resolution", Due(business_days=1)),),
    ),
}


def spec_for(case_type: str) -> CaseTypeSpec:
    return CASE_TYPES[case_type]


# --- business-day calendars --------------------------------------------------------------


@lru_cache(maxsize=32)
def _holidays(country: str, subdiv: str | None) -> holidays.HolidayBase:
    # Years are added on first lookup (expand=True), so one object serves every year.
    return holidays.country_holidays(country, subdiv=subdiv)


@dataclass(frozen=True)
class Calendar:
    code: str
    tz: ZoneInfo

    @property
    def _days_off(self) -> holidays.HolidayBase:
        country, _, subdiv = self.code.partition("-")
        return _holidays(country, subdiv or None)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self._days_off

    def add_business_days(self, day: date, n: int) -> date:
        """The n-th business day after `day` (`day` itself does not count)."""
        while n > 0:
            day += timedelta(days=1)
            if self.is_business_day(day):
                n -= 1
        return day

    def business_days_between(self, start: date, end: date) -> int:
        """Business days d with start < d <= end (0 when end is not after start)."""
        count, day = 0, start
        while day < end:
            day += timedelta(days=1)
            count += self.is_business_day(day)
        return count

    def local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.tz).date()

    def end_of_day(self, day: date) -> datetime:
        """The last moment of `day` in the calendar's time zone: what "due on day" means."""
        return datetime.combine(day, time.max, tzinfo=self.tz)


def calendar_for(spec: CaseTypeSpec) -> Calendar:
    return Calendar(
        code=spec.calendar or settings.CASES_CALENDAR, tz=ZoneInfo(settings.CASES_TIME_ZONE)
    )


def due_at(
    spec: CaseTypeSpec, milestone: MilestoneSpec, *, received_at: datetime, paused_days: int = 0
) -> datetime:
    """When `milestone` is due for a case received at `received_at` whose clock has been stopped
    for `paused_days` business days."""
    calendar = calendar_for(spec)
    day = calendar.local_date(received_at)
    if milestone.due.business_days:
        day = calendar.add_business_days(day, milestone.due.business_days)
    else:
        day += timedelta(weeks=milestone.due.weeks)
    return calendar.end_of_day(calendar.add_business_days(day, paused_days))


def paused_business_days(spec: CaseTypeSpec, *, paused_at: datetime, resumed_at: datetime) -> int:
    """Business days the clock stood still: those after the day it stopped, up to and including
    the day it restarted (a pause within one day costs nothing)."""
    calendar = calendar_for(spec)
    return calendar.business_days_between(
        calendar.local_date(paused_at), calendar.local_date(resumed_at)
    )


def sla_status(spec: CaseTypeSpec, *, due: datetime, now: datetime) -> str:
    """Overdue past the deadline; approaching when no more than CASES_SLA_WARN_BUSINESS_DAYS
    business days are left after today."""
    if now > due:
        return SlaStatus.OVERDUE
    calendar = calendar_for(spec)
    left = calendar.business_days_between(calendar.local_date(now), calendar.local_date(due))
    if left <= settings.CASES_SLA_WARN_BUSINESS_DAYS:
        return SlaStatus.APPROACHING
    return SlaStatus.ON_TRACK

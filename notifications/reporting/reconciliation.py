"""Reconciliation: every requested communication is accounted for at each stage.

    requested  = composed + compose failed + cancelled + in progress
    composed   = dispatched + held (composed, awaiting approval, approved) + rejected
    dispatched = delivered + bounced + failed + returned + in flight + (no delivery at all)

A difference (an item that is dispatched but has no delivery, a state no stage knows) and an item
that has sat in progress longer than `CCM_STUCK_AFTER_S` are shown red with the items behind it.

The scope is generic: a period, optionally narrowed to a source and a source reference (the
communications' correlation id: a batch job, a campaign, a statement run, an incident). A period
reads the rollups; a reference reads the live rows of that one job through the same aggregation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q, Sum
from django.utils import timezone

from notifications.models import CommState, Communication
from notifications.reporting.models import DailyStat, StatLevel
from notifications.reporting.rollups import RETURNED, communication_counts, day_bounds
from notifications.reporting.selectors import COUNT_CAP, StatFilter, capped_count, items_url

IN_PROGRESS = (CommState.RECEIVED, CommState.COMPOSING)
HELD = (CommState.COMPOSED, CommState.AWAITING_APPROVAL, CommState.APPROVED)
DISPATCHED = (
    CommState.DISPATCHING,
    CommState.SENT,
    CommState.DELIVERED,
    CommState.VIEWED,
    CommState.ACTIONED,
    CommState.UNDELIVERABLE,
)
COMPOSED = (*HELD, CommState.REJECTED, *DISPATCHED)
# Waiting here longer than the bound is stuck (awaiting approval waits for a person: not stuck).
STUCK_STATES = (*IN_PROGRESS, CommState.COMPOSED, CommState.APPROVED, CommState.DISPATCHING)
IN_FLIGHT = ("pending", "sending", "sent")
# Undeliverable without any delivery: selection found no channel that could reach the customer.
UNREACHED = "unreached"


@dataclass(frozen=True)
class Scope:
    start: date
    end: date
    source: str = ""
    reference: str = ""  # correlation id of a job, campaign, statement run or incident
    template: str = ""


def _rows(scope: Scope) -> list[dict]:
    if scope.reference:
        start, _ = day_bounds(scope.start)
        _, end = day_bounds(scope.end)
        return communication_counts(_live(scope).filter(created_at__gte=start, created_at__lt=end))
    stats = DailyStat.objects.filter(
        level=StatLevel.COMMUNICATION, day__gte=scope.start, day__lte=scope.end
    )
    if scope.source:
        stats = stats.filter(source=scope.source)
    if scope.template:
        stats = stats.filter(template__code=scope.template)
    return [
        dict(row)
        for row in stats.values("status", "outcome").annotate(count=Sum("count")).order_by()
    ]


def _live(scope: Scope):
    qs = Communication.objects.all()
    if scope.reference:
        qs = qs.filter(correlation_id=scope.reference)
    if scope.source:
        from notifications.reporting.rollups import SOURCE_NAMES

        raw = [k for k, v in SOURCE_NAMES.items() if v == scope.source]
        qs = qs.filter(source__in=[scope.source, *raw])
    if scope.template:
        qs = qs.filter(template__code=scope.template)
    return qs


def reconcile(scope: Scope) -> dict:
    by_status: dict[str, int] = defaultdict(int)
    outcome_of_dispatched: dict[str, int] = defaultdict(int)
    for row in _rows(scope):
        by_status[row["status"]] += row["count"]
        if row["status"] in DISPATCHED:
            outcome = row["outcome"]
            if not outcome and row["status"] == CommState.UNDELIVERABLE:
                # Selection found no channel at composition: an outcome, not a missing delivery.
                outcome = UNREACHED
            outcome_of_dispatched[outcome] += row["count"]
    flt = StatFilter(start=scope.start, end=scope.end, source=scope.source, template=scope.template)
    extra = {"reference": scope.reference} if scope.reference else {}

    def figure(label: str, states: tuple[str, ...] | str, n: int) -> dict:
        status = states if isinstance(states, str) else ",".join(states)
        return {
            "label": label,
            "count": n,
            "url": items_url("communication", flt, states=status, **extra),
        }

    def total(states) -> int:
        return sum(by_status[s] for s in states)

    requested = sum(by_status.values())
    composed = total(COMPOSED)
    dispatched = total(DISPATCHED)
    delivered = outcome_of_dispatched["delivered"]
    in_flight = sum(outcome_of_dispatched[s] for s in IN_FLIGHT)
    no_delivery = outcome_of_dispatched[""]
    known = set(IN_PROGRESS) | {CommState.COMPOSE_FAILED, CommState.CANCELLED} | set(COMPOSED)
    unknown = {s: n for s, n in by_status.items() if s not in known}
    lines: list[dict[str, Any]] = [
        {
            "total": figure("Requested", "", requested),
            "parts": [
                figure("Composed", COMPOSED, composed),
                figure("Compose failed", CommState.COMPOSE_FAILED, by_status["compose_failed"]),
                figure("Cancelled", CommState.CANCELLED, by_status["cancelled"]),
                figure("In progress", IN_PROGRESS, total(IN_PROGRESS)),
            ],
        },
        {
            "total": figure("Composed", COMPOSED, composed),
            "parts": [
                figure("Dispatched", DISPATCHED, dispatched),
                figure("Held (awaiting release)", HELD, total(HELD)),
                figure("Rejected", CommState.REJECTED, by_status["rejected"]),
            ],
        },
        {
            "total": figure("Dispatched", DISPATCHED, dispatched),
            "parts": [
                _outcome(figure, "Delivered", "delivered", delivered),
                _outcome(figure, "Bounced", "bounced", outcome_of_dispatched["bounced"]),
                _outcome(figure, "Failed", "failed", outcome_of_dispatched["failed"]),
                _outcome(figure, "Returned", RETURNED, outcome_of_dispatched[RETURNED]),
                _outcome(figure, "In flight", ",".join(IN_FLIGHT), in_flight),
                {
                    **figure(
                        "Undeliverable (no channel)",
                        CommState.UNDELIVERABLE,
                        outcome_of_dispatched[UNREACHED],
                    ),
                    "url": items_url(
                        "communication",
                        flt,
                        states=CommState.UNDELIVERABLE,
                        no_delivery="1",
                        **extra,
                    ),
                },
            ],
        },
    ]
    for line in lines:
        line["difference"] = line["total"]["count"] - sum(p["count"] for p in line["parts"])
    if no_delivery:
        lines[2]["no_delivery"] = {
            "label": "Dispatched without any delivery",
            "count": no_delivery,
            "url": items_url(
                "communication", flt, states=",".join(DISPATCHED), no_delivery="1", **extra
            ),
        }
    if unknown:
        lines[0]["unknown"] = unknown
    stuck = stuck_count(scope)
    return {
        "scope": scope,
        "lines": lines,
        "stuck": {
            "count": stuck,
            "capped": stuck > COUNT_CAP,
            "after_s": settings.CCM_STUCK_AFTER_S,
            "url": items_url(
                "communication", flt, states=",".join(STUCK_STATES), stuck="1", **extra
            ),
        },
        "balanced": all(line["difference"] == 0 for line in lines) and not stuck,
    }


def _outcome(figure, label: str, outcome: str, n: int) -> dict:
    result = figure(label, DISPATCHED, n)
    result["url"] += "&" + "outcome=" + outcome
    return result


def stuck_count(scope: Scope) -> int:
    """Items of the scope in progress for longer than the bound (live, on state + updated_at;
    counted up to COUNT_CAP + 1)."""
    start, _ = day_bounds(scope.start)
    _, end = day_bounds(scope.end)
    cutoff = timezone.now() - timedelta(seconds=settings.CCM_STUCK_AFTER_S)
    return capped_count(
        _live(scope).filter(
            Q(state__in=STUCK_STATES),
            updated_at__lt=cutoff,
            created_at__gte=start,
            created_at__lt=end,
        )
    )

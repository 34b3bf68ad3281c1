"""Reads for the dashboard, the compliance page, reconciliation, reports and /api/v1/stats.

Periods read the rollups; only "today" and the queues read live tables, through indexed columns
(created_at, state + updated_at).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, Min, OuterRef, Q, QuerySet, Subquery, Sum
from django.urls import reverse
from django.utils import timezone

from notifications.models import (
    CommState,
    Communication,
    Delivery,
    DeliveryState,
    PrintBatch,
)
from notifications.reporting.models import (
    DailyStat,
    FailureStat,
    ProcessingStat,
    ReportRun,
    StatLevel,
)
from notifications.reporting.rollups import (
    RETURNED,
    SOURCE_NAMES,
    day_bounds,
    delivery_counts,
    local_today,
)

# Delivery states a provider has taken (the denominator of bounce and delivery rates).
ACCEPTED = ("sent", "delivered", "bounced", RETURNED)
FINISHED = ("delivered", "bounced", "failed", RETURNED)


@dataclass(frozen=True)
class StatFilter:
    """One slice of the rollups: a day range (inclusive) and optional dimensions."""

    start: date
    end: date
    channel: str = ""
    status: str = ""
    source: str = ""
    category: str = ""
    template: str = ""  # template code
    reason: str = ""  # failure reason (first line), for drill-downs
    extra: dict = field(default_factory=dict)

    def query(self, **more: str) -> str:
        values = {
            **self.extra,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "channel": self.channel,
            "status": self.status,
            "source": self.source,
            "category": self.category,
            "template": self.template,
            "reason": self.reason,
            **more,
        }
        return urlencode({k: v for k, v in values.items() if v})


def stats_filter(
    stats: QuerySet[DailyStat], flt: StatFilter, *, level: str | None = None
) -> QuerySet[DailyStat]:
    stats = stats.filter(day__gte=flt.start, day__lte=flt.end)
    if level:
        stats = stats.filter(level=level)
    for name in ("channel", "status", "source", "category"):
        if getattr(flt, name):
            stats = stats.filter(**{name: getattr(flt, name)})
    if flt.template:
        stats = stats.filter(template__code=flt.template)
    return stats


def items_url(level: str, flt: StatFilter, **more: str) -> str:
    """The screen listing the communications or deliveries behind a figure."""
    return _items_path() + "?" + flt.query(level=level, **more)


@functools.cache
def _items_path() -> str:
    # A page has hundreds of figures; the URL conf does not change while the process runs.
    return reverse("reporting-items")


def rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def percent(value: float | None) -> str:
    return "\u2013" if value is None else f"{100 * value:.2f} %"


def _with_rates(row: dict) -> dict:
    """Percent strings and over-the-limit flags for the rates of a channel row."""
    for key in ("delivery_rate", "bounce_rate", "complaint_rate"):
        if key in row:
            row[f"{key}_pct"] = percent(row[key])
    row["bounce_over"] = (row.get("bounce_rate") or 0) > settings.CCM_BOUNCE_RATE_LIMIT
    row["complaint_over"] = (row.get("complaint_rate") or 0) > settings.CCM_COMPLAINT_RATE_LIMIT
    return row


# --- the last 30 days, from the rollups ------------------------------------------------------


def channel_summary(flt: StatFilter) -> list[dict]:
    """Per channel: deliveries, delivered, bounced, failed, returned, complained, and rates."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rows = (
        stats_filter(DailyStat.objects.all(), flt)
        .filter(level__in=[StatLevel.DELIVERY, StatLevel.EVENT])
        .values_list("level", "channel", "status")
        .annotate(n=Sum("count"))
    )
    for level, channel, status, n in rows:
        key = f"event_{status}" if level == StatLevel.EVENT else status
        counts[channel][key] += n
    result = []
    for channel in sorted(counts):
        c = counts[channel]
        total = sum(v for k, v in c.items() if not k.startswith("event_"))
        accepted = sum(c[s] for s in ACCEPTED)
        finished = sum(c[s] for s in FINISHED)
        result.append(
            _with_rates(
                {
                    "channel": channel,
                    "total": total,
                    "delivered": c["delivered"],
                    "bounced": c["bounced"],
                    "returned": c[RETURNED],
                    "failed": c["failed"],
                    "in_flight": c["pending"] + c["sending"] + c["sent"],
                    "complained": c["event_complained"],
                    "delivery_rate": rate(c["delivered"], finished),
                    "bounce_rate": rate(c["bounced"] + c[RETURNED], accepted),
                    "complaint_rate": rate(c["event_complained"], c["delivered"] + c["bounced"]),
                    "url": items_url("delivery", StatFilter(**{**_base(flt), "channel": channel})),
                    "failed_url": items_url(
                        "delivery",
                        StatFilter(**{**_base(flt), "channel": channel, "status": "failed"}),
                    ),
                    "bounced_url": items_url(
                        "delivery",
                        StatFilter(**{**_base(flt), "channel": channel, "status": "bounced"}),
                    ),
                }
            )
        )
    return result


def _base(flt: StatFilter) -> dict:
    return {
        "start": flt.start,
        "end": flt.end,
        "source": flt.source,
        "category": flt.category,
        "template": flt.template,
    }


def daily_series(flt: StatFilter) -> dict:
    """Per day: deliveries per channel, and email bounce and complaint rates."""
    days = [flt.start + timedelta(days=n) for n in range((flt.end - flt.start).days + 1)]
    volume: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    email: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rows = (
        stats_filter(DailyStat.objects.all(), flt)
        .filter(level__in=[StatLevel.DELIVERY, StatLevel.EVENT])
        .values_list("day", "level", "channel", "status")
        .annotate(n=Sum("count"))
    )
    for day, level, channel, status, n in rows:
        if level == StatLevel.DELIVERY:
            volume[channel][day] += n
        if channel == "email":
            email[day][f"event_{status}" if level == StatLevel.EVENT else status] += n
    bounce, complaint = [], []
    for day in days:
        e = email[day]
        accepted = sum(e[s] for s in ACCEPTED)
        b = rate(e["bounced"], accepted)
        c = rate(e["event_complained"], e["delivered"] + e["bounced"])
        bounce.append(None if b is None else round(100 * b, 3))
        complaint.append(None if c is None else round(100 * c, 3))
    return {
        "days": days,
        "volume": {channel: [per_day[d] for d in days] for channel, per_day in volume.items()},
        "bounce_pct": bounce,
        "complaint_pct": complaint,
    }


def failure_reasons(flt: StatFilter, *, limit: int = 10) -> list[dict]:
    rows = (
        FailureStat.objects.filter(day__gte=flt.start, day__lte=flt.end)
        .values("stage", "channel", "reason")
        .annotate(n=Sum("count"))
        .order_by("-n", "reason")[:limit]
    )
    result = []
    for row in rows:
        level = "communication" if row["stage"] == "compose" else "delivery"
        drill = StatFilter(
            start=flt.start,
            end=flt.end,
            channel=row["channel"],
            status="compose_failed" if row["stage"] == "compose" else "",
            reason=row["reason"],
        )
        result.append({**row, "url": items_url(level, drill, failed="1")})
    return result


def processing_series(flt: StatFilter) -> dict:
    """Per day (whole-day rows): p50/p95 to dispatch, and the shares within the targets."""
    rows = {
        row.day: row
        for row in ProcessingStat.objects.filter(
            day__gte=flt.start, day__lte=flt.end, template__isnull=True
        )
    }
    days = [flt.start + timedelta(days=n) for n in range((flt.end - flt.start).days + 1)]
    totals = ProcessingStat.objects.filter(
        day__gte=flt.start, day__lte=flt.end, template__isnull=True
    ).aggregate(
        requested=Sum("requested"),
        composed=Sum("composed"),
        composed_10=Sum("composed_within_10s"),
        dispatched=Sum("dispatched"),
        dispatched_60=Sum("dispatched_within_60s"),
    )
    return {
        "days": days,
        "p50": [rows[d].dispatch_p50_s if d in rows else None for d in days],
        "p95": [rows[d].dispatch_p95_s if d in rows else None for d in days],
        "composed_share": rate(totals["composed_10"] or 0, totals["composed"] or 0),
        "dispatched_share": rate(totals["dispatched_60"] or 0, totals["dispatched"] or 0),
        "requested": totals["requested"] or 0,
    }


# --- today and the queues, live ----------------------------------------------------------------


def todays_deliveries(start, end) -> QuerySet[Delivery]:
    """Deliveries of the communications requested in [start, end) (today): they were created,
    so last updated, since `start` — the indexed `updated_at` narrows the scan to today's rows
    instead of the whole table; the join keeps the answer exact."""
    return Delivery.objects.filter(
        updated_at__gte=start,
        communication__created_at__gte=start,
        communication__created_at__lt=end,
    )


def today_summary(today: date | None = None) -> dict:
    today = today or local_today()
    start, end = day_bounds(today)
    comms = Communication.objects.filter(created_at__gte=start, created_at__lt=end)
    by_state = dict(comms.order_by().values_list("state").annotate(n=Count("id")))
    flt = StatFilter(start=today, end=today)
    by_channel: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in delivery_counts(todays_deliveries(start, end)):
        by_channel[row["channel"]][row["status"]] += row["count"]
    channels = []
    for channel in sorted(by_channel):
        c = by_channel[channel]
        finished = sum(c[s] for s in FINISHED)
        channels.append(
            _with_rates(
                {
                    "channel": channel,
                    "total": sum(c.values()),
                    "delivered": c["delivered"],
                    "failed": c["failed"] + c["bounced"] + c[RETURNED],
                    "delivery_rate": rate(c["delivered"], finished),
                    "url": items_url(
                        "delivery", StatFilter(start=today, end=today, channel=channel)
                    ),
                    "failed_url": items_url(
                        "delivery", StatFilter(start=today, end=today, channel=channel), failed="1"
                    ),
                }
            )
        )
    return {
        "day": today,
        "requested": sum(by_state.values()),
        "requested_url": items_url("communication", flt),
        "by_state": [
            {
                "state": state,
                "count": n,
                "url": items_url("communication", StatFilter(start=today, end=today, status=state)),
            }
            for state, n in sorted(by_state.items())
        ],
        "channels": channels,
    }


# Stages an item waits in, oldest first: what operations watch for a backlog.
COMMUNICATION_STAGES = (
    CommState.RECEIVED,
    CommState.COMPOSING,
    CommState.COMPOSED,
    CommState.AWAITING_APPROVAL,
    CommState.APPROVED,
    CommState.DISPATCHING,
)
DELIVERY_STAGES = (DeliveryState.PENDING, DeliveryState.SENDING)


# Counting a backlog stops here: past it the number is shown as "1000+", so the dashboard
# stays fast exactly when something is piling up.
COUNT_CAP = 1_000


def capped_count(qs: QuerySet) -> int:
    """Rows of `qs`, counted up to COUNT_CAP + 1 (COUNT over a LIMITed subquery)."""
    return qs.order_by()[: COUNT_CAP + 1].count()


def queue_depths(now=None) -> list[dict]:
    """Per waiting stage: how many (capped) and the age of the oldest, each read from the
    (state, updated_at) index."""
    now = now or timezone.now()
    rows = []
    for model, level, stages in (
        (Communication, "communication", COMMUNICATION_STAGES),
        (Delivery, "delivery", DELIVERY_STAGES),
    ):
        for stage in stages:
            waiting = model.objects.filter(state=stage)
            oldest = waiting.order_by("updated_at").values_list("updated_at", flat=True).first()
            count = capped_count(waiting) if oldest is not None else 0
            rows.append(
                {
                    "level": level,
                    "stage": stage,
                    "count": count,
                    "capped": count > COUNT_CAP,
                    "oldest_age_s": (now - oldest).total_seconds() if oldest else None,
                    "url": reverse("reporting-items")
                    + "?"
                    + urlencode({"level": level, "states": stage, "live": "1"}),
                }
            )
    return rows


def task_queue() -> dict:
    from django_q.models import OrmQ

    now = timezone.now()
    figures = OrmQ.objects.aggregate(
        due=Count("id", filter=Q(lock__lte=now)),
        in_progress=Count("id", filter=Q(lock__gt=now)),
        oldest=Min("lock", filter=Q(lock__lte=now)),
    )
    oldest = figures["oldest"]
    return {
        "due": figures["due"],
        "in_progress": figures["in_progress"],
        "oldest_due_age_s": (now - oldest).total_seconds() if oldest else None,
    }


def print_batches() -> list[dict]:
    counts = dict(PrintBatch.objects.order_by().values_list("state").annotate(n=Count("id")))
    url = reverse("admin:notifications_printbatch_changelist")
    return [
        {"state": state, "count": counts.get(state, 0), "url": f"{url}?state__exact={state}"}
        for state in ("open", "closed", "handed_over", "mailed")
    ]


# --- panels from higher layers (cases) ---------------------------------------------------------

_panels: dict[str, Callable[[], dict]] = {}


def register_dashboard_panel(name: str, panel: Callable[[], dict]) -> None:
    """A higher layer adds a dashboard panel: `panel()` returns {"title", "rows": [{"label",
    "count", "url"}]}. Cases adds its open exceptions by age this way (notifications may not
    import cases)."""
    _panels[name] = panel


def dashboard_panels() -> list[dict]:
    return [panel() for panel in _panels.values()]


# --- drill-down: the items behind a figure -----------------------------------------------------


def items_for(*, level: str, flt: StatFilter) -> QuerySet:
    """The communications or deliveries a figure counts, with the same dimensions as the rollup
    (a communication's channel and outcome are its latest delivery's). `flt.extra` narrows:
    live (no day range: a queue), states, outcome, failed, stuck, no_delivery, reference."""
    extra = flt.extra
    if level == "delivery":
        qs: QuerySet = Delivery.objects.select_related("communication__template")
        prefix = "communication__"
    else:
        qs = Communication.objects.select_related("template", "customer")
        prefix = ""
    if not extra.get("live"):
        start, _ = day_bounds(flt.start)
        _, end = day_bounds(flt.end)
        qs = qs.filter(**{f"{prefix}created_at__gte": start, f"{prefix}created_at__lt": end})
    if flt.template:
        qs = qs.filter(**{f"{prefix}template__code": flt.template})
    if flt.category:
        qs = qs.filter(**{f"{prefix}category": flt.category})
    if flt.source:
        raw = [k for k, v in SOURCE_NAMES.items() if v == flt.source]
        qs = qs.filter(**{f"{prefix}source__in": [*raw, flt.source]})
    if extra.get("reference"):
        qs = qs.filter(**{f"{prefix}correlation_id": extra["reference"]})
    states = [s for s in (flt.status or extra.get("states", "")).split(",") if s]
    reason = flt.reason.removeprefix("(no reason given)")
    if level == "delivery":
        if flt.channel:
            qs = qs.filter(channel=flt.channel)
        if RETURNED in states:
            states.remove(RETURNED)
            qs = qs.filter(Q(state__in=states) | Q(channel="print", state=DeliveryState.BOUNCED))
        elif states:
            qs = qs.filter(state__in=states)
        if extra.get("failed"):
            qs = qs.filter(state__in=[DeliveryState.FAILED, DeliveryState.BOUNCED])
        if flt.reason:
            qs = qs.filter(last_error__startswith=reason)
        return qs.order_by("-id")
    if states:
        qs = qs.filter(state__in=states)
    if flt.channel or extra.get("outcome"):
        latest = Delivery.objects.filter(communication=OuterRef("pk")).order_by("-id")
        qs = qs.annotate(
            r_channel=Subquery(latest.values("channel")[:1]),
            r_state=Subquery(latest.values("state")[:1]),
        )
        if flt.channel:
            qs = qs.filter(r_channel=flt.channel)
        outcomes = [o for o in extra.get("outcome", "").split(",") if o]
        if outcomes:
            match = Q(pk__in=[])
            for outcome in outcomes:
                if outcome == RETURNED:
                    match |= Q(r_channel="print", r_state=DeliveryState.BOUNCED)
                elif outcome == DeliveryState.BOUNCED:
                    match |= Q(r_state=outcome) & ~Q(r_channel="print")
                else:
                    match |= Q(r_state=outcome)
            qs = qs.filter(match)
    if extra.get("failed"):
        qs = qs.filter(state__in=[CommState.COMPOSE_FAILED, CommState.UNDELIVERABLE])
    if flt.reason:
        qs = qs.filter(failure_reason__startswith=reason)
    if extra.get("stuck"):
        cutoff = timezone.now() - timedelta(seconds=settings.CCM_STUCK_AFTER_S)
        qs = qs.filter(updated_at__lt=cutoff)
    if extra.get("no_delivery"):
        qs = qs.filter(deliveries__isnull=True)
    return qs.order_by("-id")


ITEM_EXTRAS = ("live", "states", "outcome", "failed", "stuck", "no_delivery", "reference")


def stat_filter_parse(params, *, default_days: int = 30) -> StatFilter:
    """A StatFilter from query parameters (start, end as YYYY-MM-DD, and the dimensions);
    raises ValueError naming the parameter at fault."""
    today = local_today()
    try:
        start = date.fromisoformat(params.get("start") or "") if params.get("start") else None
    except ValueError:
        raise ValueError("start must be a date as YYYY-MM-DD") from None
    try:
        end = date.fromisoformat(params.get("end") or "") if params.get("end") else None
    except ValueError:
        raise ValueError("end must be a date as YYYY-MM-DD") from None
    end = end or today
    start = start or end - timedelta(days=default_days - 1)
    if start > end:
        raise ValueError("start must not be after end")
    if (end - start).days > 366 * 3:
        raise ValueError("a range may cover at most three years")
    return StatFilter(
        start=start,
        end=end,
        **{
            name: (params.get(name) or "")[:200]
            for name in ("channel", "status", "source", "category", "template", "reason")
        },
        extra={k: params.get(k) for k in ITEM_EXTRAS if params.get(k)},
    )


# --- report runs -----------------------------------------------------------------------------


def report_runs(definition_id: int | None = None) -> QuerySet[ReportRun]:
    runs = ReportRun.objects.select_related("definition", "requested_by").prefetch_related(
        "attempt_log"
    )
    if definition_id:
        runs = runs.filter(definition_id=definition_id)
    return runs.order_by("-id")

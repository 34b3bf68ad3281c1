"""Daily rollups: communications and deliveries per day, template version, channel, category,
status and source; processing times; failures by reason.

A day is the local calendar day (settings.TIME_ZONE) on which the communication was requested;
its deliveries count on that day too, so one day's figures reconcile with each other. Statuses
settle late (a bounce days later, a letter returned after two weeks): the nightly run recomputes
the trailing days, each day deleted and rebuilt in one transaction, so a rerun gives the same rows.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, F, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce, Left
from django.utils import timezone

from notifications.models import (
    CommState,
    Communication,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    EventType,
)
from notifications.reporting.models import DailyStat, FailureStat, ProcessingStat, StatLevel

# How many days back statuses may still change, per channel: providers report bounces within
# days, the mail house returns letters within two weeks.
TRAILING_DAYS = {"email": 7, "sms": 7, "push": 7, "portal": 7, "print": 14}
# A returned letter is a bounced print delivery; reports name it as the mail house does.
RETURNED = "returned"
# Communication.source values as reports name them; a source not listed passes through.
SOURCE_NAMES = {"event": "incident"}
# Provider events counted per delivery (complaint rate is what mailbox providers police).
COUNTED_EVENTS = (EventType.COMPLAINED, EventType.OPENED, EventType.CLICKED)
COMPOSED_WITHIN_S = 10
DISPATCHED_WITHIN_S = 60


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The start and end (exclusive) of a local calendar day, as aware datetimes."""
    tz = timezone.get_default_timezone()
    start = datetime.combine(day, time.min, tzinfo=tz)
    return start, datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz)


def local_today() -> date:
    return timezone.localdate()


def _source_expr(field: str = "source"):
    whens = [When(**{field: raw}, then=Value(name)) for raw, name in SOURCE_NAMES.items()]
    # output_field: states are FSMFields, which Django does not take for plain text.
    return Case(*whens, default=F(field), output_field=CharField()) if whens else F(field)


def _delivery_status_expr(state: str, channel: str):
    return Case(
        When(**{state: DeliveryState.BOUNCED, channel: "print"}, then=Value(RETURNED)),
        default=F(state),
        output_field=CharField(),
    )


def communication_counts(communications: QuerySet[Communication]) -> list[dict]:
    """Communications grouped by template version, channel and state of their latest delivery,
    category, source and state. One SQL statement; used for the rollup and for live slices."""
    latest = Delivery.objects.filter(communication=OuterRef("pk")).order_by("-id")
    rows = (
        communications.annotate(
            r_channel=Coalesce(Subquery(latest.values("channel")[:1]), Value("")),
            r_last_state=Coalesce(
                Subquery(latest.values("state")[:1]), Value(""), output_field=CharField()
            ),
        )
        .annotate(
            r_outcome=_delivery_status_expr("r_last_state", "r_channel"),
            r_source=_source_expr(),
        )
        .values(
            "template_id",
            "template_version_id",
            "category",
            "r_channel",
            "r_source",
            "state",
            "r_outcome",
        )
        .annotate(r_count=Count("id"))
        .order_by()
    )
    return [
        {
            "template_id": row["template_id"],
            "template_version_id": row["template_version_id"],
            "category": row["category"],
            "channel": row["r_channel"],
            "source": row["r_source"],
            "status": row["state"],
            "outcome": row["r_outcome"],
            "count": row["r_count"],
        }
        for row in rows
    ]


def delivery_counts(deliveries: QuerySet[Delivery]) -> list[dict]:
    """Deliveries (every attempt) grouped like `communication_counts`, by their own state."""
    rows = (
        deliveries.annotate(
            r_status=_delivery_status_expr("state", "channel"),
            r_source=_source_expr("communication__source"),
        )
        .values(
            "channel",
            "communication__template_id",
            "communication__template_version_id",
            "communication__category",
            "r_source",
            "r_status",
        )
        .annotate(r_count=Count("id"))
        .order_by()
    )
    return [
        {
            "template_id": row["communication__template_id"],
            "template_version_id": row["communication__template_version_id"],
            "category": row["communication__category"],
            "channel": row["channel"],
            "source": row["r_source"],
            "status": row["r_status"],
            "count": row["r_count"],
        }
        for row in rows
    ]


def event_counts(start: datetime, end: datetime) -> list[dict]:
    """Deliveries of communications requested in [start, end) that got a provider event of a
    counted kind (a complaint, an open, a click), each delivery once per kind."""
    deliveries = Delivery.objects.filter(
        communication__created_at__gte=start, communication__created_at__lt=end
    )
    rows = (
        DeliveryEvent.objects.filter(delivery__in=deliveries, event_type__in=COUNTED_EVENTS)
        .annotate(r_source=_source_expr("delivery__communication__source"))
        .values(
            "event_type",
            "delivery__channel",
            "delivery__communication__template_id",
            "delivery__communication__template_version_id",
            "delivery__communication__category",
            "r_source",
        )
        .annotate(r_count=Count("delivery_id", distinct=True))
        .order_by()
    )
    return [
        {
            "template_id": row["delivery__communication__template_id"],
            "template_version_id": row["delivery__communication__template_version_id"],
            "category": row["delivery__communication__category"],
            "channel": row["delivery__channel"],
            "source": row["r_source"],
            "status": row["event_type"],
            "count": row["r_count"],
        }
        for row in rows
    ]


def _first_line(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "(no reason given)"
    return line[:200]


def failure_counts(start: datetime, end: datetime) -> list[dict]:
    """Compose failures and failed or bounced deliveries of communications requested in
    [start, end), by the first line of their reason."""
    merged: Counter[tuple[str, str, str]] = Counter()
    composed = (
        Communication.objects.filter(
            created_at__gte=start, created_at__lt=end, state=CommState.COMPOSE_FAILED
        )
        .values(reason=Left("failure_reason", 200))
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in composed:
        merged["compose", "", _first_line(row["reason"])] += row["n"]
    delivered = (
        Delivery.objects.filter(
            communication__created_at__gte=start,
            communication__created_at__lt=end,
            state__in=[DeliveryState.FAILED, DeliveryState.BOUNCED],
        )
        .values("channel", reason=Left("last_error", 200))
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in delivered:
        merged["delivery", row["channel"], _first_line(row["reason"])] += row["n"]
    return [
        {"stage": stage, "channel": channel, "reason": reason, "count": n}
        for (stage, channel, reason), n in merged.items()
    ]


_PROCESSING_SQL = """
WITH c AS (
    SELECT c.template_id, c.template_version_id, c.category,
           CASE {source_case} ELSE c.source END AS source,
           COALESCE(first_delivery.channel, '') AS channel,
           c.created_at,
           COALESCE(doc.created_at, first_delivery.created_at) AS composed_at,
           sent.first_sent_at AS dispatched_at
    FROM notifications_communication c
    LEFT JOIN documents_document doc ON doc.id = c.document_id
    LEFT JOIN LATERAL (
        SELECT d.channel, d.created_at FROM notifications_delivery d
        WHERE d.communication_id = c.id ORDER BY d.id LIMIT 1
    ) first_delivery ON TRUE
    LEFT JOIN LATERAL (
        SELECT MIN(d.sent_at) AS first_sent_at FROM notifications_delivery d
        WHERE d.communication_id = c.id
    ) sent ON TRUE
    WHERE c.created_at >= %(start)s AND c.created_at < %(end)s
)
SELECT template_id, template_version_id, channel, category, source,
       COUNT(*),
       COUNT(composed_at),
       COUNT(*) FILTER (WHERE composed_at - created_at <= %(composed_s)s * interval '1 second'),
       COUNT(dispatched_at),
       COUNT(*) FILTER (WHERE dispatched_at - created_at <= %(dispatched_s)s * interval '1 second'),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM composed_at - created_at)),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM composed_at - created_at)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM dispatched_at - created_at)),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM dispatched_at - created_at))
FROM c
GROUP BY GROUPING SETS ((template_id, template_version_id, channel, category, source), ())
"""

_PROCESSING_FIELDS = (
    "template_id",
    "template_version_id",
    "channel",
    "category",
    "source",
    "requested",
    "composed",
    "composed_within_10s",
    "dispatched",
    "dispatched_within_60s",
    "compose_p50_s",
    "compose_p95_s",
    "dispatch_p50_s",
    "dispatch_p95_s",
)


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: what PostgreSQL's percentile_cont gives."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]


def processing_counts(start: datetime, end: datetime) -> list[dict]:
    """Request → composed and request → first handed to a provider, per slice: shares within
    the targets and p50/p95 in seconds. Composed is when the PDF was archived or, without a
    PDF, when the first delivery was created (dispatch starts right after composing)."""
    if connection.vendor == "postgresql":
        source_case = " ".join(
            f"WHEN c.source = '{raw}' THEN '{name}'" for raw, name in SOURCE_NAMES.items()
        )
        with connection.cursor() as cursor:
            cursor.execute(
                _PROCESSING_SQL.format(source_case=source_case or "WHEN FALSE THEN ''"),
                {
                    "start": start,
                    "end": end,
                    "composed_s": COMPOSED_WITHIN_S,
                    "dispatched_s": DISPATCHED_WITHIN_S,
                },
            )
            return [dict(zip(_PROCESSING_FIELDS, row, strict=True)) for row in cursor.fetchall()]
    return _processing_counts_python(start, end)


def _processing_counts_python(start: datetime, end: datetime) -> list[dict]:
    # SQLite has no percentile_cont: the same figures, computed here from one row per item.
    first = Delivery.objects.filter(communication=OuterRef("pk")).order_by("id")
    rows = (
        Communication.objects.filter(created_at__gte=start, created_at__lt=end)
        .annotate(
            r_channel=Coalesce(Subquery(first.values("channel")[:1]), Value("")),
            r_first_created=Subquery(first.values("created_at")[:1]),
            r_first_sent=Subquery(
                Delivery.objects.filter(communication=OuterRef("pk"), sent_at__isnull=False)
                .order_by("sent_at")
                .values("sent_at")[:1]
            ),
            r_source=_source_expr(),
        )
        .values(
            "template_id",
            "template_version_id",
            "category",
            "created_at",
            "r_channel",
            "r_source",
            "r_first_created",
            "r_first_sent",
            "document__created_at",
        )
    )
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = (
            row["template_id"],
            row["template_version_id"],
            row["r_channel"],
            row["category"],
            row["r_source"],
        )
        groups[key].append(row)
        groups[None, None, None, None, None].append(row)
    result = []
    for key, items in groups.items():
        compose_s, dispatch_s = [], []
        for item in items:
            composed_at = item["document__created_at"] or item["r_first_created"]
            if composed_at is not None:
                compose_s.append((composed_at - item["created_at"]).total_seconds())
            if item["r_first_sent"] is not None:
                dispatch_s.append((item["r_first_sent"] - item["created_at"]).total_seconds())
        result.append(
            dict(
                zip(_PROCESSING_FIELDS[:5], key, strict=True),
                requested=len(items),
                composed=len(compose_s),
                composed_within_10s=sum(1 for s in compose_s if s <= COMPOSED_WITHIN_S),
                dispatched=len(dispatch_s),
                dispatched_within_60s=sum(1 for s in dispatch_s if s <= DISPATCHED_WITHIN_S),
                compose_p50_s=percentile(compose_s, 0.5),
                compose_p95_s=percentile(compose_s, 0.95),
                dispatch_p50_s=percentile(dispatch_s, 0.5),
                dispatch_p95_s=percentile(dispatch_s, 0.95),
            )
        )
    return result


def rollup_day(*, day: date) -> int:
    """Rebuild one day's rollup rows from the live tables; returns the rows written."""
    start, end = day_bounds(day)
    now = timezone.now()
    communications = Communication.objects.filter(created_at__gte=start, created_at__lt=end)
    deliveries = Delivery.objects.filter(
        communication__created_at__gte=start, communication__created_at__lt=end
    )
    # Read first, then swap the day's rows in one short transaction: a reader sees the old day
    # or the new one, never half of it.
    daily = [
        DailyStat(day=day, level=StatLevel.COMMUNICATION, computed_at=now, **row)
        for row in communication_counts(communications)
    ] + [
        DailyStat(day=day, level=StatLevel.DELIVERY, outcome="", computed_at=now, **row)
        for row in delivery_counts(deliveries)
    ]
    processing = [
        ProcessingStat(
            day=day,
            computed_at=now,
            **{**row, **{k: row[k] or "" for k in ("channel", "category", "source")}},
        )
        for row in processing_counts(start, end)
    ]
    events = [
        DailyStat(day=day, level=StatLevel.EVENT, outcome="", computed_at=now, **row)
        for row in event_counts(start, end)
    ]
    failures = [FailureStat(day=day, computed_at=now, **row) for row in failure_counts(start, end)]
    daily += events
    with transaction.atomic():
        for model in (DailyStat, ProcessingStat, FailureStat):
            model.objects.filter(day=day).delete()
        DailyStat.objects.bulk_create(daily, batch_size=1000)
        ProcessingStat.objects.bulk_create(processing, batch_size=1000)
        FailureStat.objects.bulk_create(failures, batch_size=1000)
    return len(daily) + len(processing) + len(failures)


def days_to_refresh(*, today: date, days: int | None = None) -> list[date]:
    """The days the nightly run rebuilds: the last 7 (email, SMS, push, portal settle within a
    week), and days up to 14 back that carried letters (returned mail comes later)."""
    if days is not None:
        return [today - timedelta(days=age) for age in range(days)]
    short = max(n for channel, n in TRAILING_DAYS.items() if channel != "print")
    result = [today - timedelta(days=age) for age in range(short)]
    for age in range(short, TRAILING_DAYS["print"]):
        day = today - timedelta(days=age)
        start, end = day_bounds(day)
        if Delivery.objects.filter(
            channel="print",
            communication__created_at__gte=start,
            communication__created_at__lt=end,
        ).exists():
            result.append(day)
    return result


def rollups_refresh(*, days: int | None = None, today: date | None = None) -> dict[str, int]:
    """Recompute the trailing days (or the last `days` days); returns rows written per day."""
    today = today or local_today()
    return {day.isoformat(): rollup_day(day=day) for day in days_to_refresh(today=today, days=days)}

"""Scheduled production reports: a definition says what and when; a run produces the PDF (with
charts) and the CSV, archives them with their SHA-256, emails them through the report sender
profile (Gmail in production, the console in `make run`) and records what happened.

    queued → running → succeeded | failed | skipped (nothing in the period, skip-if-empty)
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import zoneinfo
from datetime import date, datetime, timedelta

from croniter import croniter
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from ccm import audit
from ccm.tasks import enqueue
from notifications.channels.internal import internal_mail_send
from notifications.channels.printstream import csv_cell
from notifications.reporting import selectors
from notifications.reporting.charts import svg_chart
from notifications.reporting.models import (
    DailyStat,
    ReportDefinition,
    ReportKind,
    ReportPeriod,
    ReportRun,
    ReportRunAttempt,
    ReportRunState,
    StatLevel,
)
from notifications.reporting.outcomes import campaign_outcome_csv, campaign_outcome_data
from notifications.reporting.reconciliation import Scope, reconcile
from notifications.reporting.rollups import local_today, rollup_day

logger = logging.getLogger(__name__)

# Delivered green, in flight blue, bounced amber, failed red: the colours people expect.
OUTCOME_COLORS = ("#1f7a3f", "#0b5cad", "#e07b00", "#b3261e")
FILTER_KEYS = ("channel", "source", "category", "template")
CAMPAIGN_FILTER_KEYS = ("campaign",)
# Communication states counted as delivered, and as failed, per template.
DELIVERED_STATES = ("delivered", "viewed", "actioned")
FAILED_STATES = ("compose_failed", "undeliverable")
# What each kind of report shows, in this order (the PDF template draws these sections).
REPORT_SECTIONS = {
    ReportKind.PRODUCTION: ("volume", "channels", "templates", "failures", "reconciliation"),
    ReportKind.DELIVERY: ("channels", "volume", "failures", "reconciliation"),
    ReportKind.TEMPLATE_USAGE: ("template_chart", "templates", "volume"),
    ReportKind.EXCEPTION_SUMMARY: ("failures", "reconciliation", "channels"),
}
CSV_COLUMNS = (
    "day",
    "level",
    "template",
    "template_version",
    "channel",
    "category",
    "source",
    "status",
    "outcome",
    "count",
)


# --- definitions -----------------------------------------------------------------------------


def report_definition_validate(definition: ReportDefinition) -> None:
    """Raise ValidationError naming the field at fault."""
    errors: dict[str, str] = {}
    if not croniter.is_valid(definition.schedule):
        errors["schedule"] = f"{definition.schedule!r} is not a cron expression (m h dom mon dow)"
    try:
        zoneinfo.ZoneInfo(definition.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        errors["time_zone"] = f"{definition.time_zone!r} is not a known time zone"
    if not isinstance(definition.recipients, list) or not all(
        isinstance(r, str) and "@" in r for r in definition.recipients
    ):
        errors["recipients"] = "recipients must be a list of email addresses"
    campaigns = definition.kind == ReportKind.CAMPAIGN_OUTCOME
    allowed = CAMPAIGN_FILTER_KEYS if campaigns else FILTER_KEYS
    filters = definition.filters if isinstance(definition.filters, dict) else {}
    unknown = set(filters) - set(allowed)
    if not isinstance(definition.filters, dict):
        errors["filters"] = 'filters must be an object, e.g. {"channel": "email"}'
    elif unknown:
        errors["filters"] = (
            f"unknown filters {sorted(unknown)} for a {ReportKind(definition.kind).label.lower()}"
            f" report; use {list(allowed)}"
        )
    elif not str(filters.get("campaign", "0")).isdigit():
        errors["filters"] = "campaign must be a campaign's id (a number)"
    if not (definition.pdf or definition.csv):
        errors["pdf"] = "choose at least one format (PDF or CSV)"
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def report_definition_save(*, definition: ReportDefinition, by=None) -> ReportDefinition:
    report_definition_validate(definition)
    created = definition.pk is None
    if created:
        definition.created_by = by
    definition.next_run_at = next_slot(definition, after=timezone.now())
    definition.save()
    audit.record(
        actor=by,
        action="report_definition.created" if created else "report_definition.changed",
        subject=definition,
        after={"kind": definition.kind, "schedule": definition.schedule},
    )
    return definition


def next_slot(definition: ReportDefinition, *, after: datetime) -> datetime:
    """The next time the definition's cron expression names, in its own time zone."""
    tz = zoneinfo.ZoneInfo(definition.time_zone)
    return croniter(definition.schedule, after.astimezone(tz)).get_next(datetime)


def period_for(definition: ReportDefinition, *, at: datetime) -> tuple[date, date]:
    """The days (inclusive) a run at `at` covers, counted in the definition's time zone."""
    today = at.astimezone(zoneinfo.ZoneInfo(definition.time_zone)).date()
    yesterday = today - timedelta(days=1)
    if definition.period == ReportPeriod.TODAY:
        return today, today
    if definition.period == ReportPeriod.YESTERDAY:
        return yesterday, yesterday
    if definition.period == ReportPeriod.LAST_7_DAYS:
        return yesterday - timedelta(days=6), yesterday
    if definition.period == ReportPeriod.PREVIOUS_MONTH:
        last = today.replace(day=1) - timedelta(days=1)
        return last.replace(day=1), last
    return yesterday - timedelta(days=29), yesterday


# --- runs ------------------------------------------------------------------------------------


@transaction.atomic
def report_run_request(
    *,
    definition: ReportDefinition,
    by=None,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
) -> ReportRun:
    """Queue a run (now, or for a schedule slot: one run per slot however often it is asked)."""
    start, end = period_for(definition, at=scheduled_for or timezone.now())
    try:
        with transaction.atomic():
            run = ReportRun.objects.create(
                definition=definition,
                trigger=trigger,
                requested_by=by,
                scheduled_for=scheduled_for,
                period_start=start,
                period_end=end,
                recipients=list(definition.recipients),
                next_attempt_at=timezone.now(),
            )
    except IntegrityError:
        return ReportRun.objects.get(definition=definition, scheduled_for=scheduled_for)
    audit.record(actor=by, action="report_run.queued", subject=run, after={"trigger": trigger})
    enqueue("notifications.reporting.tasks.report_run_execute", run.pk)
    return run


def reports_due(*, now: datetime | None = None) -> int:
    """Queue a run for every enabled definition whose next slot has come; returns how many.
    Runs a dead worker left running are recovered first."""
    now = now or timezone.now()
    report_runs_recover(now=now)
    queued = 0
    for definition in ReportDefinition.objects.filter(enabled=True, next_run_at__lte=now):
        with transaction.atomic():
            locked = ReportDefinition.objects.select_for_update(skip_locked=True).filter(
                pk=definition.pk, next_run_at__lte=now
            )
            row = locked.first()
            if row is None or row.next_run_at is None:
                continue
            report_run_request(definition=row, trigger="schedule", scheduled_for=row.next_run_at)
            row.next_run_at = next_slot(row, after=now)
            row.save(update_fields=["next_run_at"])
            queued += 1
    # Definitions without a next slot (created before their schedule was set) get one.
    for definition in ReportDefinition.objects.filter(enabled=True, next_run_at__isnull=True):
        ReportDefinition.objects.filter(pk=definition.pk).update(
            next_run_at=next_slot(definition, after=now)
        )
    return queued


def retry_delay_s(attempt: int) -> float:
    """How long after failed attempt `attempt` the next one may start: the base, doubling,
    capped. No jitter: runs are few, and the history shows when the next attempt is due."""
    base = float(settings.CCM_REPORT_RETRY_BASE_S)
    return min(base * 2 ** max(0, attempt - 1), float(settings.CCM_REPORT_RETRY_MAX_S))


def report_run_execute(run_id: int) -> str:
    """Make one attempt at a run: produce, archive and email it. Safe to run twice (only a
    queued run whose attempt is due is taken). A failed attempt is recorded with its reason and
    queued again after `retry_delay_s` until CCM_REPORT_RUN_ATTEMPTS attempts have failed; the
    sweep `reporting.report_runs_due` enqueues it when its time comes."""
    with transaction.atomic():
        run = (
            ReportRun.objects.select_for_update(skip_locked=True)
            .select_related("definition")
            .filter(
                Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()),
                pk=run_id,
                state=ReportRunState.QUEUED,
            )
            .first()
        )
        if run is None:
            return "not queued"
        run.start(when=timezone.now())
        run.save()
        attempt = ReportRunAttempt.objects.create(
            run=run, number=run.attempts, started_at=run.started_at
        )
    try:
        outcome = _produce(run)
    except Exception as exc:
        logger.exception("report run %s attempt %s failed", run.pk, attempt.number)
        return _attempt_failed(run, attempt, f"{type(exc).__name__}: {exc}"[:2000])
    ReportRunAttempt.objects.filter(pk=attempt.pk).update(
        outcome=outcome, finished_at=timezone.now()
    )
    return outcome


def _attempt_failed(run: ReportRun, attempt: ReportRunAttempt, error: str) -> str:
    now = timezone.now()
    with transaction.atomic():
        run = ReportRun.objects.select_for_update().get(pk=run.pk)
        ReportRunAttempt.objects.filter(pk=attempt.pk).update(
            outcome=ReportRunState.FAILED, finished_at=now, error=error
        )
        if run.state != ReportRunState.RUNNING:
            return "failed"
        if run.attempts < settings.CCM_REPORT_RUN_ATTEMPTS:
            at = now + timedelta(seconds=retry_delay_s(run.attempts))
            run.retry_later(when=now, error=error, at=at)
            run.save()
            audit.record(
                actor=None,
                action="report_run.retry_scheduled",
                subject=run,
                after={"attempt": attempt.number, "error": error, "next_attempt_at": at},
            )
            return "retry scheduled"
        run.fail(when=now, error=error)
        run.save()
        audit.record(
            actor=None,
            action="report_run.failed",
            subject=run,
            after={"attempts": run.attempts, "error": error},
        )
    return "failed"


def report_runs_recover(*, now: datetime | None = None) -> int:
    """Runs left `running` by a worker that died mid-attempt (longer than a task may run): the
    attempt counts as failed, with that reason, and the run is retried or failed as any other."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.Q_CLUSTER["timeout"] + 60)
    recovered = 0
    for run in ReportRun.objects.filter(state=ReportRunState.RUNNING, started_at__lt=cutoff):
        attempt = run.attempt_log.filter(outcome="").order_by("-number").first()
        if attempt is None:
            attempt = ReportRunAttempt.objects.create(
                run=run, number=run.attempts or 1, started_at=run.started_at or now
            )
        _attempt_failed(run, attempt, "the worker stopped during the attempt (no outcome)")
        recovered += 1
    return recovered


def report_runs_due() -> QuerySet[ReportRun]:
    """Queued runs whose attempt is due (the sweep's rows: a first attempt whose task was lost,
    or a retry whose delay has passed)."""
    return ReportRun.objects.filter(state=ReportRunState.QUEUED, next_attempt_at__isnull=False)


def _produce(run: ReportRun) -> str:
    definition = run.definition
    today = local_today()
    if run.period_end >= today:
        # Today's rollup is rebuilt nightly only; a report that covers today brings it up to now.
        rollup_day(day=today)
    data = report_data(definition, start=run.period_start, end=run.period_end)
    if definition.skip_if_empty and data["empty"]:
        with transaction.atomic():
            run.skip(when=timezone.now(), reason="Nothing was requested in the period.")
            run.save()
            audit.record(actor=None, action="report_run.skipped", subject=run)
        return "skipped"
    stem = f"{definition.kind}-{run.period_start:%Y%m%d}-{run.period_end:%Y%m%d}-run{run.pk}"
    attachments = []
    if definition.pdf:
        pdf = report_pdf(definition, run=run, data=data)
        run.pdf_sha256 = hashlib.sha256(pdf).hexdigest()
        run.pdf_file.save(f"{stem}.pdf", ContentFile(pdf), save=False)
        attachments.append((f"{stem}.pdf", pdf, "application/pdf"))
    if definition.csv:
        if definition.kind == ReportKind.CAMPAIGN_OUTCOME:
            content = campaign_outcome_csv(data)
        else:
            content = report_csv(definition, start=run.period_start, end=run.period_end)
        run.csv_sha256 = hashlib.sha256(content).hexdigest()
        run.csv_file.save(f"{stem}.csv", ContentFile(content), save=False)
        attachments.append((f"{stem}.csv", content, "text/csv"))
    run.save()
    if run.recipients:
        internal_mail_send(
            kind="report",
            to=run.recipients,
            subject=f"{definition.name}: {_period_label(run.period_start, run.period_end)}",
            text=render_to_string("reporting/report_mail.txt", {"run": run, "data": data}),
            message_id=f"<report-run-{run.pk}@{settings.CCM_MESSAGE_ID_DOMAIN}>",
            attachments=attachments,
        )
    with transaction.atomic():
        run = ReportRun.objects.select_for_update().get(pk=run.pk)
        run.emailed_at = timezone.now() if run.recipients else None
        run.succeed(when=timezone.now(), summary=data["summary"])
        run.save()
        audit.record(
            actor=None,
            action="report_run.succeeded",
            subject=run,
            after={"pdf_sha256": run.pdf_sha256, "csv_sha256": run.csv_sha256},
        )
    return "succeeded"


def _period_label(start: date, end: date) -> str:
    if start == end:
        return f"{start:%d %b %Y}"
    return f"{start:%d %b} to {end:%d %b %Y}"


# --- content ---------------------------------------------------------------------------------


def _stats(definition: ReportDefinition, start: date, end: date):
    stats = DailyStat.objects.filter(day__gte=start, day__lte=end)
    filters = definition.filters or {}
    for key in ("channel", "source", "category"):
        if filters.get(key):
            stats = stats.filter(**{key: filters[key]})
    if filters.get("template"):
        stats = stats.filter(template__code=filters["template"])
    return stats


def report_data(definition: ReportDefinition, *, start: date, end: date) -> dict:
    """The figures of a report, read from the rollups of the period (a campaign-outcome
    report reads each campaign's live rows through its reference)."""
    filters = definition.filters or {}
    if definition.kind == ReportKind.CAMPAIGN_OUTCOME:
        return campaign_outcome_data(start=start, end=end, filters=filters)
    flt = selectors.StatFilter(start=start, end=end, **{k: filters.get(k, "") for k in FILTER_KEYS})
    stats = _stats(definition, start, end)
    comms = stats.filter(level=StatLevel.COMMUNICATION)
    requested = comms.aggregate(n=Sum("count"))["n"] or 0
    by_status = dict(comms.values_list("status").annotate(n=Sum("count")).order_by())
    channels = selectors.channel_summary(flt)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    per_day = dict(comms.values_list("day").annotate(n=Sum("count")).order_by())
    templates = list(
        comms.values("template__code", "template_version__number")
        .annotate(
            n=Sum("count"),
            delivered=Sum("count", filter=Q(status__in=DELIVERED_STATES)),
            failed=Sum("count", filter=Q(status__in=FAILED_STATES)),
        )
        .order_by("-n", "template__code")
    )
    exceptions = definition.kind == ReportKind.EXCEPTION_SUMMARY
    failures = selectors.failure_reasons(flt, limit=40 if exceptions else 15)
    recon = reconcile(
        Scope(
            start=start,
            end=end,
            source=filters.get("source", ""),
            template=filters.get("template", ""),
        )
    )
    processing = selectors.processing_series(flt)
    delivered = sum(c["delivered"] for c in channels)
    deliveries = sum(c["total"] for c in channels)
    summary = {
        "requested": requested,
        "deliveries": deliveries,
        "delivered": delivered,
        "failed": sum(c["failed"] for c in channels) + by_status.get("compose_failed", 0),
        "bounced": sum(c["bounced"] + c["returned"] for c in channels),
        "dispatched_within_60s": processing["dispatched_share"],
        "balanced": recon["balanced"],
    }
    if len(days) == 1:
        top = templates[:10]
        volume = svg_chart(
            "bar",
            [t["template__code"] for t in top] or ["\u2013"],
            {"Requested": [t["n"] for t in top] or [0]},
            title="Communications requested by template",
            width=640,
            height=220,
            chart_id="report-volume",
            counts=True,
        )
    else:
        volume = svg_chart(
            "bar",
            [d.strftime("%d %b") for d in days],
            {"Requested": [per_day.get(d, 0) for d in days]},
            title="Communications requested per day",
            width=640,
            height=220,
            chart_id="report-volume",
            counts=True,
        )
    top = templates[:12]
    charts = {
        "templates": svg_chart(
            "bar",
            [f"{t['template__code']} v{t['template_version__number'] or '-'}" for t in top]
            or ["\u2013"],
            {"Requested": [t["n"] for t in top] or [0]},
            title="Communications requested by template version",
            width=640,
            height=240,
            chart_id="report-templates",
            counts=True,
        ),
        "volume": volume,
        "channels": svg_chart(
            "stacked",
            [c["channel"] for c in channels] or ["\u2013"],
            {
                "Delivered": [c["delivered"] for c in channels] or [0],
                "In flight": [c["in_flight"] for c in channels] or [0],
                "Bounced / returned": [c["bounced"] + c["returned"] for c in channels] or [0],
                "Failed": [c["failed"] for c in channels] or [0],
            },
            title="Deliveries by channel and outcome",
            width=640,
            height=240,
            chart_id="report-channels",
            colors=OUTCOME_COLORS,
            counts=True,
        ),
    }
    return {
        "kind": definition.kind,
        "sections": REPORT_SECTIONS[ReportKind(definition.kind)],
        "start": start,
        "end": end,
        "empty": requested == 0,
        "summary": summary,
        "by_status": sorted(by_status.items(), key=lambda kv: -kv[1]),
        "channels": channels,
        "templates": templates,
        "failures": failures,
        "reconciliation": recon,
        "processing": processing,
        "dispatched_share_pct": selectors.percent(processing["dispatched_share"]),
        "charts": charts,
    }


def report_pdf(definition: ReportDefinition, *, run: ReportRun, data: dict) -> bytes:
    import weasyprint

    from documents.rendering import SafeURLFetcher

    html = render_to_string(
        "reporting/report_campaigns_pdf.html"
        if definition.kind == ReportKind.CAMPAIGN_OUTCOME
        else "reporting/report_pdf.html",
        {
            "definition": definition,
            "run": run,
            "data": data,
            "kind_label": ReportKind(definition.kind).label,
            "period_label": _period_label(run.period_start, run.period_end),
            "company": settings.CCM_COMPANY_NAME,
            "generated_at": timezone.localtime(),
            "limits": {
                "bounce": selectors.percent(settings.CCM_BOUNCE_RATE_LIMIT),
                "complaint": selectors.percent(settings.CCM_COMPLAINT_RATE_LIMIT),
            },
        },
    )
    return weasyprint.HTML(string=html, url_fetcher=SafeURLFetcher()).write_pdf()


def report_csv(definition: ReportDefinition, *, start: date, end: date) -> bytes:
    """The rollup rows behind the report, one line per day and slice."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    rows = (
        _stats(definition, start, end)
        .filter(level__in=[StatLevel.COMMUNICATION, StatLevel.DELIVERY])
        .values_list(
            "day",
            "level",
            "template__code",
            "template_version__number",
            "channel",
            "category",
            "source",
            "status",
            "outcome",
            "count",
        )
        .order_by("day", "level", "template__code", "channel", "status")
    )
    for row in rows:
        writer.writerow([csv_cell(v) if isinstance(v, str) else v for v in row])
    return out.getvalue().encode("utf-8")

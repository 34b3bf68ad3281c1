"""Rollups of communications and deliveries per day, and scheduled production reports.

Rollup rows are derived data: a day's rows are deleted and rebuilt from the live tables in one
transaction (`notifications.reporting.services.rollups_compute`), so rerunning a day gives the
same rows. Screens and the API read the rollups, never scans of the raw tables.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from documents.models import Template, TemplateVersion


class StatLevel(models.TextChoices):
    # One row counts communications (status = the communication's state, outcome = the state of
    # its latest delivery) or deliveries (status = the delivery's state; every attempt counts).
    COMMUNICATION = "communication"
    DELIVERY = "delivery"
    # Deliveries that got a provider event of type `status` (complained, opened, clicked…).
    EVENT = "event"


class DailyStat(models.Model):
    """How many communications (or deliveries) requested on `day` are in `status` now."""

    day = models.DateField()
    level = models.CharField(max_length=20, choices=StatLevel.choices)
    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="+")
    template_version = models.ForeignKey(
        TemplateVersion, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    # "" when a communication has no delivery yet.
    channel = models.CharField(max_length=10, blank=True)
    category = models.CharField(max_length=20)
    source = models.CharField(max_length=30)
    status = models.CharField(max_length=20)
    # Communication rows: the latest delivery's state ("returned" for a letter sent back).
    outcome = models.CharField(max_length=20, blank=True)
    count = models.PositiveIntegerField()
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["day", "id"]
        indexes = [models.Index(fields=["day", "level"])]

    def __str__(self) -> str:
        return f"{self.day} {self.level} {self.channel} {self.status}: {self.count}"


class ProcessingStat(models.Model):
    """Time from request to composed and to handed to a provider, per day and slice; the row
    without a template is the whole day (percentiles do not add up across slices)."""

    day = models.DateField()
    template = models.ForeignKey(
        Template, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    template_version = models.ForeignKey(
        TemplateVersion, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    channel = models.CharField(max_length=10, blank=True)
    category = models.CharField(max_length=20)
    source = models.CharField(max_length=30)
    requested = models.PositiveIntegerField()
    composed = models.PositiveIntegerField()
    composed_within_10s = models.PositiveIntegerField()
    dispatched = models.PositiveIntegerField()
    dispatched_within_60s = models.PositiveIntegerField()
    compose_p50_s = models.FloatField(null=True, blank=True)
    compose_p95_s = models.FloatField(null=True, blank=True)
    dispatch_p50_s = models.FloatField(null=True, blank=True)
    dispatch_p95_s = models.FloatField(null=True, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["day", "id"]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.channel}: {self.requested} requested"


class FailureStat(models.Model):
    """Failures of one day by stage and reason (the first line of the recorded error)."""

    day = models.DateField()
    stage = models.CharField(max_length=20, help_text="compose or delivery")
    channel = models.CharField(max_length=10, blank=True)
    reason = models.CharField(max_length=200)
    count = models.PositiveIntegerField()
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["day", "-count", "id"]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.stage} {self.reason}: {self.count}"


class WorkProgress(models.Model):
    """How far a long piece of work that runs inside one transaction has got (a print batch
    being closed): written through a connection of its own, so other processes see it before
    the work's transaction commits. See `notifications.progress.progress_publisher`."""

    key = models.CharField(max_length=100, unique=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "work progress"

    def __str__(self) -> str:
        return f"{self.key}: {self.done}/{self.total}"


class ReportKind(models.TextChoices):
    PRODUCTION = "production", "Production report"
    DELIVERY = "delivery", "Delivery report"
    TEMPLATE_USAGE = "template_usage", "Template usage"
    EXCEPTION_SUMMARY = "exception_summary", "Exception summary"
    CAMPAIGN_OUTCOME = "campaign_outcome", "Campaign outcome"


class ReportPeriod(models.TextChoices):
    # Today so far: an end-of-day report; its figures may still move (statuses settle late).
    TODAY = "today", "Today so far"
    YESTERDAY = "yesterday", "Yesterday"
    LAST_7_DAYS = "last_7_days", "Last 7 days"
    LAST_30_DAYS = "last_30_days", "Last 30 days"
    PREVIOUS_MONTH = "previous_month", "Previous calendar month"


class ReportDefinition(models.Model):
    """What a scheduled report covers, for whom, and when it runs."""

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=30, choices=ReportKind.choices)
    period = models.CharField(max_length=20, choices=ReportPeriod.choices)
    # Optional slices: {"channel": "email", "source": "api", "template": "<code>", "category": …};
    # a campaign-outcome report: {"campaign": "<id>"} (every campaign of the period without it).
    filters = models.JSONField(default=dict, blank=True)
    pdf = models.BooleanField(default=True, help_text="Attach a PDF with charts")
    csv = models.BooleanField(default=True, help_text="Attach the figures as CSV")
    recipients = models.JSONField(default=list, help_text="Email addresses")
    schedule = models.CharField(
        max_length=100, default="0 7 * * *", help_text="Cron expression: minute hour day month dow"
    )
    time_zone = models.CharField(max_length=64, default="Europe/London")
    skip_if_empty = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ReportRunState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class ReportRun(ConcurrentTransitionMixin, models.Model):
    """One production of a report: queued → running → succeeded | failed | skipped."""

    definition = models.ForeignKey(ReportDefinition, on_delete=models.PROTECT, related_name="runs")
    state = FSMField(default=ReportRunState.QUEUED, choices=ReportRunState.choices, protected=True)
    trigger = models.CharField(max_length=20, help_text="schedule or manual")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The run's slot (for a schedule): one run per definition and slot, however often it is due.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    period_start = models.DateField()
    period_end = models.DateField(help_text="Inclusive")
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    recipients = models.JSONField(default=list, blank=True)
    # Attempts made so far; a failed attempt is retried after a growing delay until
    # settings.CCM_REPORT_RUN_ATTEMPTS have failed (each one is a ReportRunAttempt row).
    attempts = models.PositiveSmallIntegerField(default=0)
    # When a queued run may be taken: now for a new run, later for a retry.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    pdf_file = models.FileField(upload_to="reports/%Y/%m/", blank=True)
    pdf_sha256 = models.CharField(max_length=64, blank=True)
    csv_file = models.FileField(upload_to="reports/%Y/%m/", blank=True)
    csv_sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["definition", "scheduled_for"],
                condition=models.Q(scheduled_for__isnull=False),
                name="one_report_run_per_slot",
            )
        ]

    def __str__(self) -> str:
        return f"{self.definition} #{self.pk} ({self.state})"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @transition(field=state, source=ReportRunState.QUEUED, target=ReportRunState.RUNNING)
    def start(self, *, when) -> None:
        self.started_at = when
        self.finished_at = None
        self.next_attempt_at = None
        self.attempts += 1

    @transition(field=state, source=ReportRunState.RUNNING, target=ReportRunState.QUEUED)
    def retry_later(self, *, when, error: str, at) -> None:
        """This attempt failed and another is allowed: queued again, taken from `at` on."""
        self.finished_at = when
        self.error = error
        self.next_attempt_at = at

    @transition(field=state, source=ReportRunState.RUNNING, target=ReportRunState.SUCCEEDED)
    def succeed(self, *, when, summary: dict) -> None:
        self.finished_at = when
        self.summary = summary
        self.error = ""

    @transition(field=state, source=ReportRunState.RUNNING, target=ReportRunState.SKIPPED)
    def skip(self, *, when, reason: str) -> None:
        self.finished_at = when
        self.error = reason

    # The last allowed attempt failed (or the run could not start): failed for good.
    @transition(
        field=state,
        source=[ReportRunState.QUEUED, ReportRunState.RUNNING],
        target=ReportRunState.FAILED,
    )
    def fail(self, *, when, error: str) -> None:
        self.finished_at = when
        self.error = error


class ReportRunAttempt(models.Model):
    """One attempt at producing a run: when, how it ended, and why it failed."""

    run = models.ForeignKey(ReportRun, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # succeeded, skipped, failed; "" while it runs.
    outcome = models.CharField(max_length=20, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="one_report_attempt_per_number")
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} attempt {self.number}: {self.outcome or 'running'}"

"""Send jobs: many communications asked for at once — one API batch call, a CSV file uploaded
in the back-office, or `manage.py send_job` — followed as one thing (progress, cancel)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from documents.models import Template
from notifications.models import Communication


class JobSource(models.TextChoices):
    API_BATCH = "api_batch", "API batch"
    CSV = "csv", "CSV upload"
    COMMAND = "command", "send_job command"


class JobState(models.TextChoices):
    VALIDATING = "validating"
    READY = "ready"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class SendJob(ConcurrentTransitionMixin, models.Model):
    """validating (rows checked, nothing created) → ready (every good row waits to be sent) →
    [scheduled (until send_at)] → sending (communications made, in the pipeline) → completed
    (every communication reached an end state); cancelled from any state before completed.

    An API batch is validated and sent in the request that made it: it is `sending` on return.
    """

    source = models.CharField(max_length=20, choices=JobSource.choices)
    # One template for a CSV job; an API batch may mix templates (NULL).
    template = models.ForeignKey(
        Template, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    client = models.CharField(max_length=100, help_text="Who asked: api key or user")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    state = FSMField(default=JobState.VALIDATING, choices=JobState.choices, protected=True)
    file_name = models.CharField(max_length=255, blank=True)
    total = models.PositiveIntegerField(default=0, help_text="Items or rows given")
    refused = models.PositiveIntegerField(default=0, help_text="Items or rows refused")
    send_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "send_at"])]

    def __str__(self) -> str:
        return f"Send job {self.pk} ({self.source}, {self.state})"

    @property
    def accepted(self) -> int:
        return self.total - self.refused

    @transition(field=state, source=JobState.VALIDATING, target=JobState.READY)
    def validated(self) -> None:
        pass

    @transition(field=state, source=JobState.READY, target=JobState.SCHEDULED)
    def schedule(self, *, at) -> None:
        self.send_at = at

    @transition(field=state, source=[JobState.READY, JobState.SCHEDULED], target=JobState.SENDING)
    def start(self, *, at) -> None:
        self.started_at = at

    @transition(field=state, source=JobState.SENDING, target=JobState.COMPLETED)
    def complete(self, *, at) -> None:
        self.finished_at = at

    @transition(
        field=state,
        source=[JobState.VALIDATING, JobState.READY, JobState.SCHEDULED, JobState.SENDING],
        target=JobState.CANCELLED,
    )
    def cancel(self, *, reason: str, at) -> None:
        self.cancel_reason = reason
        self.finished_at = at


class SendJobItem(models.Model):
    """One item of an API batch or one row of a file: refused with its errors, or accepted
    (with its data until it is handed to the pipeline, then with its communication)."""

    job = models.ForeignKey(SendJob, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField(help_text="Position in the batch; the row number in a file")
    customer_ref = models.CharField(max_length=100, blank=True)
    source_system = models.CharField(max_length=100, default="default")
    template_code = models.CharField(max_length=100, blank=True)
    data = models.JSONField(default=dict, blank=True)
    # NULL, not "", when absent (as on Communication).
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    errors = models.JSONField(default=list, blank=True, help_text="[{field, message}] if refused")
    communication = models.ForeignKey(
        Communication, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="send_job_item_index_unique")
        ]

    def __str__(self) -> str:
        return f"Item {self.index} of job {self.job_id}"

    @property
    def refused(self) -> bool:
        return bool(self.errors)

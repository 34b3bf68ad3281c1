"""Cases (complaints, disputes, exceptions, reprints, correspondence, incidents), their
milestones and SLA clocks, notes, attachments, links, and the internal alerts they send."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import RETURN_VALUE, ConcurrentTransitionMixin, FSMField, transition

from documents.models import Document
from notifications.models import Communication, Customer, Delivery


class CaseType(models.TextChoices):
    COMPLAINT = "complaint"
    DISPUTE = "dispute"
    EXCEPTION = "exception"
    REPRINT = "reprint"
    CORRESPONDENCE = "correspondence"
    INCIDENT = "incident"


class Team(models.TextChoices):
    CUSTOMER_RELATIONS = "customer_relations", "Customer relations"
    DISPUTES = "disputes", "Disputes"
    OPERATIONS = "operations", "Operations"


class Priority(models.TextChoices):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


# Escalation raises the priority one step along this order.
PRIORITY_ORDER: list[str] = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT]


class CaseState(models.TextChoices):
    NEW = "new"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    WAITING = "waiting"
    RESOLVED = "resolved"
    CLOSED = "closed"


OPEN_STATES = [CaseState.NEW, CaseState.ASSIGNED, CaseState.IN_PROGRESS, CaseState.WAITING]


def priority_rank() -> models.Case:
    """0 for urgent … 3 for low: what "most urgent first" sorts on (the exception queue's
    index is built on this very expression, so the queue reads it in order)."""
    return models.Case(
        *[
            models.When(priority=p, then=models.Value(rank))
            for rank, p in enumerate(reversed(PRIORITY_ORDER))
        ],
        default=models.Value(len(PRIORITY_ORDER)),
        output_field=models.IntegerField(),
    )


def open_exceptions() -> Q:
    return Q(case_type=CaseType.EXCEPTION, state__in=OPEN_STATES)


class SlaStatus(models.TextChoices):
    ON_TRACK = "on_track"
    APPROACHING = "approaching"
    OVERDUE = "overdue"


class ExceptionKind(models.TextChoices):
    COMPOSE_FAILED = "compose_failed", "Composition failed"
    UNDELIVERABLE = "undeliverable", "Undeliverable"
    RETURNED_MAIL = "returned_mail", "Returned letter"
    REGENERATION_MISMATCH = "regeneration_mismatch", "Regeneration mismatch"
    # A statement's bill, computed again from its stored readings, is not the archived one.
    BILL_MISMATCH = "bill_mismatch", "Bill mismatch"


class RecoveryAction(models.TextChoices):
    REGENERATE = "regenerate"
    RESEND = "resend"


class Case(ConcurrentTransitionMixin, models.Model):
    """A piece of work for a team, with an SLA clock. Exception cases carry what failed, what
    to do next and the recovery under way; `dedupe_key` keeps one open case per failure."""

    reference = models.CharField(max_length=20, unique=True)
    # What the API and integrators' URLs show instead of the counter `id`, which would tell one
    # integrator how many others' rows exist and let it walk them.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    case_type = models.CharField("type", max_length=20, choices=CaseType.choices)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="cases"
    )
    subject = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    team = models.CharField(max_length=30, choices=Team.choices)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="assigned_cases",
    )
    state = FSMField(default=CaseState.NEW, choices=CaseState.choices, protected=True)
    details = models.JSONField(default=dict, blank=True, help_text="What the case type needs")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    # The SLA clock: deadlines count from `received_at`; waiting stops it.
    received_at = models.DateTimeField()
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_business_days = models.PositiveIntegerField(default=0)
    next_due_at = models.DateTimeField(null=True, blank=True, db_index=True)
    sla_status = models.CharField(
        max_length=12, choices=SlaStatus.choices, default=SlaStatus.ON_TRACK
    )
    flagged_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Exceptions opened from lower-layer failures.
    exception_kind = models.CharField(max_length=30, choices=ExceptionKind.choices, blank=True)
    # NULL, not "", when absent: the unique constraint must ignore cases without a key.
    dedupe_key = models.CharField(max_length=120, null=True, blank=True)  # noqa: DJ001
    occurrences = models.PositiveIntegerField(default=0)
    last_occurred_at = models.DateTimeField(null=True, blank=True)
    error_details = models.JSONField(default=dict, blank=True)
    next_action = models.TextField(blank=True)
    recovery_action = models.CharField(max_length=20, choices=RecoveryAction.choices, blank=True)
    recovery_communication = models.ForeignKey(
        Communication, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    recovery_delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dedupe_key"],
                condition=Q(dedupe_key__isnull=False)
                & Q(state__in=["new", "assigned", "in_progress", "waiting"]),
                name="one_open_case_per_dedupe_key",
            )
        ]
        indexes = [
            models.Index(fields=["state", "next_due_at"]),
            models.Index(fields=["team", "state"]),
            # The exception queue: open exceptions, most urgent first, then by deadline.
            models.Index(
                priority_rank(),
                # Ascending puts NULLs last on PostgreSQL, as the queue sorts.
                models.F("next_due_at"),
                models.F("id"),
                condition=open_exceptions(),
                name="case_exception_queue",
            ),
            # The case queues: a team's or the unassigned (assignee NULL) cases, by deadline or
            # most urgent first (ascending puts NULLs last on PostgreSQL, as the queues sort).
            models.Index("team", "next_due_at", "id", name="case_team_deadline"),
            models.Index("team", priority_rank(), "next_due_at", "id", name="case_team_urgency"),
            models.Index("assignee", "next_due_at", "id", name="case_assignee_deadline"),
            models.Index(
                "assignee", priority_rank(), "next_due_at", "id", name="case_assignee_urgency"
            ),
        ]
        permissions = [
            ("handle_exception", "Can regenerate or resend a communication from an exception")
        ]

    def __str__(self) -> str:
        return f"{self.reference}: {self.subject}"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @transition(
        field=state,
        source=[CaseState.NEW, CaseState.ASSIGNED, CaseState.IN_PROGRESS, CaseState.WAITING],
        target=RETURN_VALUE(  # type: ignore[arg-type]
            CaseState.ASSIGNED, CaseState.IN_PROGRESS, CaseState.WAITING
        ),
    )
    def assign(self, *, assignee) -> str:
        """Assign a new case, or hand an open one to someone else (its state stays)."""
        self.assignee = assignee
        return CaseState.ASSIGNED if self.state == CaseState.NEW else self.state

    @transition(field=state, source=CaseState.ASSIGNED, target=CaseState.IN_PROGRESS)
    def start(self) -> None:
        pass

    @transition(field=state, source=CaseState.IN_PROGRESS, target=CaseState.WAITING)
    def wait(self, *, when) -> None:
        self.paused_at = when

    @transition(field=state, source=CaseState.WAITING, target=CaseState.IN_PROGRESS)
    def resume(self, *, paused_days: int) -> None:
        self.paused_business_days += paused_days
        self.paused_at = None

    @transition(
        field=state,
        source=[CaseState.IN_PROGRESS, CaseState.WAITING],
        target=CaseState.RESOLVED,
    )
    def resolve(self, *, resolution: str, when) -> None:
        self.resolution = resolution
        self.resolved_at = when
        self.paused_at = None

    @transition(field=state, source=CaseState.RESOLVED, target=CaseState.CLOSED)
    def close(self, *, when) -> None:
        self.closed_at = when

    @transition(field=state, source=CaseState.RESOLVED, target=CaseState.IN_PROGRESS)
    def reopen(self) -> None:
        self.resolved_at = None


class Milestone(models.Model):
    """A step the case type promises by a deadline, often with the letter it sends."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="milestones")
    code = models.CharField(max_length=40)
    label = models.CharField(max_length=100)
    sequence = models.PositiveSmallIntegerField()
    template_code = models.CharField(max_length=100, blank=True)
    due_at = models.DateTimeField()
    reached_at = models.DateTimeField(null=True, blank=True)
    reached_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    communication = models.ForeignKey(
        Communication, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # When the SLA sweep escalated it as approaching and as overdue (each happens once).
    warned_at = models.DateTimeField(null=True, blank=True)
    breached_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["case", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["case", "code"], name="milestone_once_per_case")
        ]

    def __str__(self) -> str:
        return f"{self.label} due {self.due_at:%Y-%m-%d}"


class CaseNote(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.body[:60]


class CaseAttachment(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to="cases/%Y/%m/")
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, blank=True)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name


class LinkRole(models.TextChoices):
    MILESTONE = "milestone"  # the letter a milestone sent
    FAILED = "failed"  # the communication an exception is about
    RELATED = "related"


class CaseCommunication(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="communication_links")
    communication = models.ForeignKey(Communication, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=20, choices=LinkRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["case", "communication"], name="communication_linked_once_per_case"
            )
        ]

    def __str__(self) -> str:
        return f"{self.case_id} → communication {self.communication_id} ({self.role})"


class CaseDocument(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="document_links")
    document = models.ForeignKey(Document, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(max_length=300, blank=True)
    linked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["case", "document"], name="document_linked_once")
        ]

    def __str__(self) -> str:
        return f"{self.case_id} → document {self.document_id}"


class CaseAlert(models.Model):
    """An internal mail about a case, written in the transaction that decided to send it and
    sent after commit (an outbox): nothing is lost in a crash, and `key` sends it once."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="alerts")
    key = models.CharField(max_length=120, unique=True)
    recipients = models.JSONField(default=list)
    subject = models.CharField(max_length=300)
    text = models.TextField()
    html = models.TextField(blank=True)
    message_id = models.CharField(max_length=200, unique=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.subject


class ReferenceCounter(models.Model):
    """The last number given out per prefix and year (CMP-2026-000042)."""

    prefix = models.CharField(max_length=10)
    year = models.PositiveSmallIntegerField()
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prefix", "year"], name="reference_counter_unique")
        ]

    def __str__(self) -> str:
        return f"{self.prefix}-{self.year}: {self.last}"


from cases.customer_models import *  # noqa: E402, F403
from cases.incidents.models import (  # noqa: E402, F401
    Event,
    Incident,
    IncidentAlert,
    IncidentNotice,
    IncidentUpdate,
)
from cases.requests.models import *  # noqa: E402, F403
from cases.retention_models import *  # noqa: E402, F403

"""Legal holds and the record of what the retention purge removed (cases/retention.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import FSMField, transition

from documents.models import Document
from notifications.models import Customer


class LegalHold(models.Model):
    """Stops the retention purge for everything of one customer, or of one case, until it is
    released (litigation, a regulator's inquiry, a complaint before an ombudsman)."""

    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="legal_holds"
    )
    case = models.ForeignKey(
        "cases.Case", null=True, blank=True, on_delete=models.PROTECT, related_name="legal_holds"
    )
    reason = models.CharField(max_length=300)
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    placed_at = models.DateTimeField(auto_now_add=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-placed_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(customer__isnull=False, case__isnull=True)
                | Q(customer__isnull=True, case__isnull=False),
                name="legal_hold_on_a_customer_or_a_case",
            )
        ]

    def __str__(self) -> str:
        target = f"customer {self.customer_id}" if self.customer_id else f"case {self.case_id}"
        state = "released" if self.released_at else "active"
        return f"Legal hold on {target} ({state})"


class DocumentPurge(models.Model):
    """A document whose retention ran out: its file and data snapshot are gone, this row (with
    the hash it had) says when and under which rule."""

    document = models.OneToOneField(Document, on_delete=models.PROTECT, related_name="purge")
    category = models.CharField(max_length=20)
    retention_days = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    file_name = models.CharField(max_length=300)
    purged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-purged_at"]

    def __str__(self) -> str:
        return f"Document {self.document_id} purged ({self.category}, {self.retention_days} d)"


class ErasureState(models.TextChoices):
    REQUESTED = "requested"
    DEFERRED = "deferred"  # regulated records must be kept until `due_at`; erased then
    REFUSED = "refused"  # a legal hold; ask again once it is released
    DONE = "done"


class ErasureRequest(models.Model):
    """A customer's right to erasure: what was asked, and what happened to it and why.

    Erasure empties or pseudonymises every personal datum CCM holds on the customer (record,
    contact points, devices, request data, rendered outputs, documents and attachments in
    storage, cases) and keeps the facts that prove what was done: ids, states, times, hashes."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="erasures")
    state = FSMField(default=ErasureState.REQUESTED, choices=ErasureState.choices, protected=True)
    grounds = models.CharField(max_length=300, help_text="The request: who asked, how, when")
    reason = models.TextField(blank=True, help_text="Why it was deferred or refused")
    due_at = models.DateTimeField(null=True, blank=True, help_text="Deferred until")
    erased = models.JSONField(default=dict, blank=True, help_text="What was erased, by kind")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"Erasure of customer {self.customer_id} ({self.state})"

    @transition(
        field=state,
        source=[ErasureState.REQUESTED, ErasureState.DEFERRED],
        target=ErasureState.DEFERRED,
    )
    def defer(self, *, reason: str, until) -> None:
        self.reason, self.due_at = reason, until

    @transition(
        field=state,
        source=[ErasureState.REQUESTED, ErasureState.DEFERRED],
        target=ErasureState.REFUSED,
    )
    def refuse(self, *, reason: str) -> None:
        self.reason = reason

    @transition(
        field=state,
        source=[ErasureState.REQUESTED, ErasureState.DEFERRED],
        target=ErasureState.DONE,
    )
    def complete(self, *, erased: dict, when) -> None:
        self.erased, self.done_at, self.reason = erased, when, ""

"""Legal holds and the record of what the retention purge removed (cases/retention.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

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

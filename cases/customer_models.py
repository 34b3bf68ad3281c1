"""Address corrections an agent or operations make from the customer page or an exception,
kept as requests so that a correction the rules send to a second person waits for them (an
approvable subject of ccm/approvals.py). Imported at the bottom of cases/models.py."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from notifications.models import Customer


class CorrectionState(models.TextChoices):
    REQUESTED = "requested", "Requested"
    AWAITING_APPROVAL = "awaiting_approval", "Waiting for a second person"
    APPLIED = "applied", "Applied"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


class AddressCorrection(ConcurrentTransitionMixin, models.Model):
    """A new postal address for a customer: what it was, what it becomes, why, who asked, who
    confirmed (the approval) and which held letters it released."""

    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="address_corrections"
    )
    # The exception it was made from, if any (its letter is released to the new address).
    case = models.ForeignKey(
        "cases.Case",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="address_corrections",
    )
    previous_address = models.JSONField(default=list, blank=True)
    previous_valid = models.BooleanField(default=True)
    postal_address = models.JSONField(help_text="The new address lines")
    reason = models.CharField(max_length=500)
    # Why a second person must confirm it (empty: the requester's word was enough).
    four_eyes_reason = models.CharField(max_length=500, blank=True)
    state = FSMField(
        default=CorrectionState.REQUESTED, choices=CorrectionState.choices, protected=True
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    # What the correction released: [{"case", "communication", "outcome"}].
    released = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One correction waits per customer: a second would race the first.
            models.UniqueConstraint(
                fields=["customer"],
                condition=models.Q(state="awaiting_approval"),
                name="one_pending_address_correction",
            )
        ]

    def __str__(self) -> str:
        return f"Address correction {self.pk} for {self.customer}"

    @property
    def address_text(self) -> str:
        return " / ".join(self.postal_address)

    @property
    def previous_text(self) -> str:
        return " / ".join(self.previous_address)

    @transition(state, source=CorrectionState.REQUESTED, target=CorrectionState.AWAITING_APPROVAL)
    def hold(self, *, reason: str) -> None:
        self.four_eyes_reason = reason[:500]

    @transition(
        state,
        source=[CorrectionState.REQUESTED, CorrectionState.AWAITING_APPROVAL],
        target=CorrectionState.APPLIED,
    )
    def apply(self, *, when) -> None:
        self.decided_at = when

    @transition(state, source=CorrectionState.AWAITING_APPROVAL, target=CorrectionState.REJECTED)
    def reject(self, *, when) -> None:
        self.decided_at = when

    @transition(state, source=CorrectionState.AWAITING_APPROVAL, target=CorrectionState.WITHDRAWN)
    def withdraw(self, *, when) -> None:
        self.decided_at = when

"""Segments, campaigns and the frozen audience of a campaign (its recipients)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from documents.models import Category, TemplateVersion
from notifications.models import Communication, Customer


class Segment(models.Model):
    """A named, versioned definition of a set of customers.

    Editing a segment makes a new version (a new row with the same name); a campaign binds the
    version it was built on, so what the reviewer signed is never changed under them. The
    definition is JSON (see `notifications.campaigns.selectors.SEGMENT_KEYS`)."""

    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=1)
    description = models.TextField(blank=True)
    definition = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="segment_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class CampaignState(models.TextChoices):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    CHANGES_REQUESTED = "changes_requested"
    APPROVED = "approved"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class WindowZone(models.TextChoices):
    BUSINESS = "business", "The business's time zone"
    CUSTOMER = "customer", "Each customer's time zone"


class DataSource(models.TextChoices):
    ATTRIBUTES = "attributes", "Customer attributes"
    CSV = "csv", "CSV keyed by customer reference"


BEFORE_COMPLETED = [
    CampaignState.DRAFT,
    CampaignState.IN_REVIEW,
    CampaignState.CHANGES_REQUESTED,
    CampaignState.APPROVED,
    CampaignState.SCHEDULED,
    CampaignState.SENDING,
    CampaignState.PAUSED,
]


class Campaign(ConcurrentTransitionMixin, models.Model):
    """One notice to one segment, signed off on its exact audience.

    From submission on, `audience_hash`, `audience_count`, `segment_snapshot` and `channel_plan`
    are frozen: they are what the reviewer signs and what the send task delivers."""

    name = models.CharField(max_length=200)
    template_version = models.ForeignKey(
        TemplateVersion, on_delete=models.PROTECT, related_name="+"
    )
    segment = models.ForeignKey(Segment, on_delete=models.PROTECT, related_name="campaigns")
    category = models.CharField(max_length=20, choices=Category.choices)
    data_source = models.CharField(
        max_length=20, choices=DataSource.choices, default=DataSource.ATTRIBUTES
    )
    data_csv = models.TextField(blank=True, help_text="With data_source=csv: the uploaded CSV")
    schedule_at = models.DateTimeField(null=True, blank=True, help_text="Empty: as scheduled")
    # Hours of the day in which chunks are handed: [start, end), read in the business's time
    # zone (TIME_ZONE) or in each customer's (their `time_zone`, the business's when blank).
    window_start_hour = models.PositiveSmallIntegerField(null=True, blank=True)
    window_end_hour = models.PositiveSmallIntegerField(null=True, blank=True)
    window_zone = models.CharField(
        max_length=10, choices=WindowZone.choices, default=WindowZone.BUSINESS
    )
    # Messages per minute per channel, on top of the provider throttle every sender shares.
    throttle = models.JSONField(default=dict, blank=True)
    state = FSMField(default=CampaignState.DRAFT, choices=CampaignState.choices, protected=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    approval = models.ForeignKey(
        "ccm.Approval", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    audience_hash = models.CharField(max_length=64, blank=True)
    audience_count = models.PositiveIntegerField(default=0)
    segment_snapshot = models.JSONField(default=dict, blank=True)
    channel_plan = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Why it is paused or cancelled, or what stopped it (a changed template version).
    note = models.CharField(max_length=500, blank=True)
    last_chunk_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def reference(self) -> str:
        """The correlation id of the campaign's communications (reconciliation by reference)."""
        return f"campaign:{self.pk}"

    @transition(
        field=state,
        source=[CampaignState.DRAFT, CampaignState.CHANGES_REQUESTED],
        target=CampaignState.IN_REVIEW,
    )
    def submit(self) -> None:
        pass

    @transition(field=state, source=CampaignState.IN_REVIEW, target=CampaignState.APPROVED)
    def approve(self) -> None:
        pass

    @transition(field=state, source=CampaignState.IN_REVIEW, target=CampaignState.CHANGES_REQUESTED)
    def request_changes(self) -> None:
        pass

    @transition(
        field=state,
        source=[CampaignState.CHANGES_REQUESTED, CampaignState.IN_REVIEW],
        target=CampaignState.DRAFT,
    )
    def reopen(self) -> None:
        pass

    @transition(field=state, source=CampaignState.APPROVED, target=CampaignState.SCHEDULED)
    def schedule(self) -> None:
        pass

    @transition(field=state, source=CampaignState.SCHEDULED, target=CampaignState.SENDING)
    def start(self) -> None:
        pass

    @transition(field=state, source=CampaignState.SENDING, target=CampaignState.PAUSED)
    def pause(self, *, reason: str) -> None:
        self.note = reason[:500]

    @transition(field=state, source=CampaignState.PAUSED, target=CampaignState.SENDING)
    def resume(self) -> None:
        self.note = ""

    @transition(field=state, source=CampaignState.SENDING, target=CampaignState.COMPLETED)
    def complete(self, *, when) -> None:
        self.completed_at = when

    @transition(field=state, source=BEFORE_COMPLETED, target=CampaignState.CANCELLED)
    def cancel(self, *, reason: str) -> None:
        self.note = reason[:500]


class RecipientState(models.TextChoices):
    PENDING = "pending"  # frozen in the audience, not handed to the pipeline yet
    HANDED = "handed"  # its communication exists
    SKIPPED = "skipped"  # not sent, with the reason (opted out, unreachable, cancelled)


class CampaignRecipient(models.Model):
    """One customer of a campaign's frozen audience, with the data row the reviewer signed."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="recipients")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    data = models.JSONField(default=dict)
    channels = models.JSONField(default=list, blank=True, help_text="Planned at submission")
    state = models.CharField(
        max_length=10, choices=RecipientState.choices, default=RecipientState.PENDING
    )
    reason = models.CharField(max_length=500, blank=True)
    communication = models.ForeignKey(
        Communication, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    handed_at = models.DateTimeField(null=True, blank=True)
    # The customer's time zone when the audience was frozen (the business's when they had
    # none): what a send window in customers' time zones is read in.
    time_zone = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["campaign", "customer"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "customer"], name="campaign_recipient_once")
        ]
        indexes = [models.Index(fields=["campaign", "state", "customer"])]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.customer_id} ({self.state})"

"""Status webhooks to integrators: who subscribed to what, and every event sent to them."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from ccm.models import ApiKey

__all__ = [
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryState",
    "WebhookEvent",
    "WebhookSubscription",
]


class WebhookEvent(models.TextChoices):
    COMPOSED = "composed"
    SENT = "sent"
    DELIVERED = "delivered"
    VIEWED = "viewed"
    ACTIONED = "actioned"
    FAILED = "failed"
    UNDELIVERABLE = "undeliverable"


class WebhookSubscription(models.Model):
    """An integrator's endpoint and the events it wants.

    `client` is matched against `Communication.client`: an API client only hears about the
    communications it created. A subscription made by staff in the admin may leave it empty to
    hear about every communication (an internal system: a data warehouse, a monitoring feed).
    """

    client = models.CharField(
        max_length=100,
        blank=True,
        db_index=True,
        help_text="Whose communications (key:<id> or user:<id>, as on Communication.client); "
        "empty: every client's",
    )
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The key that owns it: nothing is sent once the key is revoked",
    )
    url = models.URLField(max_length=500)
    # HMAC is symmetric: signing needs the secret itself, so it is stored (and never shown
    # again after the create response).
    secret = models.CharField(max_length=100, editable=False)
    events = models.JSONField(default=list, help_text="The WebhookEvent values to send")
    description = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)
    # Deleting keeps the row: the delivery log must still say what went where.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Webhook {self.pk} → {self.url}"

    @property
    def is_live(self) -> bool:
        return (
            self.active
            and self.deleted_at is None
            and (self.api_key is None or self.api_key.revoked_at is None)
        )


class WebhookDeliveryState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One event for one subscription: the outbox row, written in the transaction of the state
    change it reports, then sent (and retried) until the receiver answers 2xx or we give up."""

    subscription = models.ForeignKey(
        WebhookSubscription, on_delete=models.PROTECT, related_name="deliveries"
    )
    event_type = models.CharField(max_length=20, choices=WebhookEvent.choices)
    communication = models.ForeignKey(
        "notifications.Communication", on_delete=models.PROTECT, related_name="webhook_deliveries"
    )
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    payload = models.JSONField(help_text="The body sent, the same on every attempt")
    state = models.CharField(
        max_length=10, choices=WebhookDeliveryState.choices, default=WebhookDeliveryState.PENDING
    )
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Attempts since it was created or last replayed"
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)
    # Not auto_now_add: the emitter sets it, so that it equals the payload's `created_at`.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_count = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        verbose_name_plural = "webhook deliveries"
        permissions = [("replay_webhookdelivery", "Can replay webhook deliveries")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.state})"


class WebhookAttempt(models.Model):
    """One POST of a webhook delivery, as it went: the log behind `attempts`."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.PROTECT, related_name="attempt_log"
    )
    number = models.PositiveIntegerField(help_text="1, 2, … over the delivery's whole life")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.status_code or self.error}"

"""Customers' devices: where mobile and web push go."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from notifications.models import Customer

# A push delivery's address names the device row, not its token: a token can be registered
# again (to another customer, after a reinstall), a row id is never reused.
DEVICE_ADDRESS_PREFIX = "device:"


def device_address(pk: int) -> str:
    return f"{DEVICE_ADDRESS_PREFIX}{pk}"


class Platform(models.TextChoices):
    ANDROID = "android", "Android"
    IOS = "ios", "iOS"
    WEB = "web", "Web"


class Device(models.Model):
    """One app installation (FCM registration token) or browser (Web Push subscription) that
    can receive push for a customer. Whether the customer wants push is the consent ledger's
    business, not the device's."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="devices")
    platform = models.CharField(max_length=10, choices=Platform.choices)
    token = models.CharField(
        max_length=2048, help_text="FCM registration token; for web, the subscription endpoint"
    )
    # The Web Push subscription's keys (RFC 8291): the browser's ECDH public key and auth secret.
    p256dh = models.CharField(max_length=200, blank=True)
    auth = models.CharField(max_length=100, blank=True)
    app = models.CharField(max_length=200, help_text="App id: package, bundle id or web origin")
    active = models.BooleanField(default=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivated_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["app", "token"],
                condition=Q(active=True),
                name="one_active_device_per_app_token",
            ),
            models.CheckConstraint(
                condition=~Q(platform="web") | (~Q(p256dh="") & ~Q(auth="")),
                name="web_device_has_subscription_keys",
            ),
        ]
        indexes = [models.Index(fields=["customer", "active"])]

    def __str__(self) -> str:
        return f"{self.platform} device {self.pk} of {self.customer_id}"

    @property
    def address(self) -> str:
        return device_address(self.pk)

    @staticmethod
    def pk_from_address(address: str) -> int | None:
        """The device id a push delivery's address names, or None when it names none."""
        if not address.startswith(DEVICE_ADDRESS_PREFIX):
            return None
        value = address.removeprefix(DEVICE_ADDRESS_PREFIX)
        return int(value) if value.isdigit() else None

"""The provider throttle: messages per second per provider, shared by every process.

A token bucket per provider kept in a `ProviderBucket` row: a take locks the row, refills it
for the time gone by (at most one second's worth, the burst), and grants what is there. Every
dispatch chunk takes before it sends, so all the clusters together never send a provider more
than its rate (CCM_PROVIDER_RATES). Bulk traffic may not take the bucket below its reserve
(CCM_THROTTLE_RESERVE), which is kept for transactional and regulatory messages.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import ProviderBucket

PRIORITY_CATEGORIES = ("transactional", "regulatory")


def provider_of(channel: str) -> str:
    """The name a channel's configured provider is throttled under."""
    if channel == "email":
        module = settings.EMAIL_BACKEND.rsplit(".", 1)[0]
        return module.rsplit(".", 1)[-1]  # anymail.backends.postmark → postmark
    if channel == "sms":
        name = settings.CCM_SMS_BACKEND.rsplit(".", 1)[-1].lower()
        return name.removesuffix("smsbackend") or "sms"
    return channel


def is_priority(*, category: str, urgency: str) -> bool:
    return category in PRIORITY_CATEGORIES or urgency == "high"


def throttle_take(*, provider: str, want: int, priority: bool) -> int:
    """Take up to `want` tokens now; return how many were granted (`want` when the provider
    has no rate)."""
    rate = settings.CCM_PROVIDER_RATES.get(provider)
    if not rate or want <= 0:
        return max(want, 0)
    burst = max(1.0, rate)
    floor = 0.0 if priority else burst * settings.CCM_THROTTLE_RESERVE
    with transaction.atomic():
        bucket = ProviderBucket.objects.select_for_update().filter(provider=provider).first()
        now = timezone.now()
        if bucket is None:
            try:
                with transaction.atomic():
                    bucket = ProviderBucket.objects.create(
                        provider=provider, tokens=burst, updated_at=now
                    )
            except IntegrityError:
                bucket = ProviderBucket.objects.select_for_update().get(provider=provider)
        elapsed = max(0.0, (now - bucket.updated_at).total_seconds())
        tokens = min(burst, bucket.tokens + elapsed * rate)
        granted = int(min(want, max(0.0, tokens - floor)))
        ProviderBucket.objects.filter(provider=provider).update(
            tokens=tokens - granted, updated_at=now
        )
    return granted


def throttle_wait(*, provider: str, want: int, priority: bool, deadline: float) -> int:
    """Take at least one token (up to `want`), waiting for the bucket to refill; 0 when the
    monotonic `deadline` passes first."""
    rate = settings.CCM_PROVIDER_RATES.get(provider) or 0
    while True:
        granted = throttle_take(provider=provider, want=want, priority=priority)
        if granted or not rate:
            return granted
        if time.monotonic() >= deadline:
            return 0
        time.sleep(min(1.0, max(0.01, 1.0 / rate)))

"""The provider throttle's shared state: one token bucket row per provider."""

from __future__ import annotations

from django.db import models


class ProviderBucket(models.Model):
    """Tokens left for one provider (messages it may still take now), refilled at its rate.

    A row, not a cache entry: every web process and every cluster on every machine shares the
    database, and a row lock makes each take exact."""

    provider = models.CharField(max_length=50, primary_key=True)
    tokens = models.FloatField(default=0)
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.provider}: {self.tokens:.1f} tokens"

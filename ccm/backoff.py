"""The one backoff rule for every retry CCM schedules: provider sends, webhook deliveries."""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's 'full jitter'): attempt n
    waits a uniform time below min(cap, base * 2^(n-1)), so retries of many messages spread out."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))

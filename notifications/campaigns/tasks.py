"""Campaign tasks: ids in, safe to run twice (the campaign's row lock and the per-customer
idempotency key make a second run hand nothing twice)."""

from __future__ import annotations

from django_q.tasks import async_task

from notifications.campaigns import services


def campaign_send(campaign_id: int) -> int:
    return services.campaign_send(campaign_id)


def campaigns_sweep() -> int:
    """Every minute: start due campaigns, restart sending ones whose task died."""
    due = services.campaigns_due()
    for pk in due:
        async_task(services.SEND_TASK, pk)
    return len(due)

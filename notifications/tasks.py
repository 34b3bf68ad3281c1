"""Pipeline tasks: ids in, re-fetch, claim with a guarded update, safe to run twice."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ccm.tasks import Sweep, register_schedule, register_sweep
from notifications import followups, services
from notifications.models import CommState, Communication, Delivery, DeliveryState


def communication_compose(comm_id: int) -> None:
    services.communication_compose_run(comm_id)


def communication_gate(comm_id: int) -> None:
    services.communication_gate_run(comm_id)


def communication_recompose(comm_id: int) -> None:
    """A communication stuck in `composing` lost its worker: start its composition again."""
    stale = timezone.now() - timedelta(seconds=settings.CCM_SWEEP_AFTER_SECONDS)
    reset = Communication.objects.filter(
        pk=comm_id, state=CommState.COMPOSING, updated_at__lt=stale
    ).update(state=CommState.RECEIVED, updated_at=timezone.now())
    if reset:
        services.communication_compose_run(comm_id)


def delivery_dispatch(delivery_id: int) -> None:
    services.delivery_dispatch_run(delivery_id)


def delivery_reconcile(delivery_id: int) -> None:
    services.delivery_reconcile_run(delivery_id)


def follow_ups_apply() -> None:
    followups.follow_ups_apply()


def register_sweeps() -> None:
    register_schedule("notifications.follow_ups", "notifications.tasks.follow_ups_apply", 15)
    after = timedelta(seconds=settings.CCM_SWEEP_AFTER_SECONDS)
    register_sweep(
        Sweep(
            name="notifications.received",
            queryset=lambda: Communication.objects.filter(state=CommState.RECEIVED),
            task="notifications.tasks.communication_compose",
            older_than=timedelta(minutes=2),
        )
    )
    register_sweep(
        Sweep(
            name="notifications.composing",
            queryset=lambda: Communication.objects.filter(state=CommState.COMPOSING),
            task="notifications.tasks.communication_recompose",
            older_than=after,
        )
    )
    register_sweep(
        Sweep(
            name="notifications.composed",
            queryset=lambda: Communication.objects.filter(state=CommState.COMPOSED),
            task="notifications.tasks.communication_gate",
            older_than=timedelta(minutes=2),
        )
    )
    register_sweep(
        Sweep(
            name="notifications.deliveries_due",
            # Due retries, and first attempts whose enqueue was lost.
            queryset=lambda: Delivery.objects.filter(state=DeliveryState.PENDING).filter(
                Q(next_attempt_at__lte=timezone.now())
                | Q(
                    next_attempt_at__isnull=True,
                    updated_at__lt=timezone.now() - timedelta(minutes=2),
                )
            ),
            task="notifications.tasks.delivery_dispatch",
            older_than=timedelta(seconds=0),
        )
    )
    register_sweep(
        Sweep(
            name="notifications.sending_stale",
            queryset=lambda: Delivery.objects.filter(state=DeliveryState.SENDING),
            task="notifications.tasks.delivery_reconcile",
            older_than=timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S),
        )
    )

"""Pipeline tasks: ids in, re-fetch, claim with a guarded update, safe to run twice."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ccm.tasks import Queue, Sweep, register_schedule, register_sweep, register_task
from notifications.models import CommState, Communication, Delivery, DeliveryState
from notifications.pipeline import (
    chunks,
    compose,
    dispatch,
    fallback,
    followups,
    gate,
    history,
    selection,
)

# The per-message task paths stay importable: django-q2 keeps dotted paths in queued rows.
# Each is the chunk operation for a chunk of one.


def communication_compose(comm_id: int) -> None:
    compose.compose_chunk([comm_id])


def communication_gate(comm_id: int) -> None:
    gate.gate_chunk([comm_id])


def communication_recompose(comm_id: int) -> None:
    """A communication stuck in `composing` lost its worker: start its composition again."""
    stale = timezone.now() - timedelta(seconds=settings.CCM_SWEEP_AFTER_SECONDS)
    reset = Communication.objects.filter(
        pk=comm_id, state=CommState.COMPOSING, updated_at__lt=stale
    ).update(state=CommState.RECEIVED, updated_at=timezone.now())
    if reset:
        compose.compose_chunk([comm_id])


def delivery_dispatch(delivery_id: int) -> None:
    dispatch.dispatch_chunk([delivery_id])


def delivery_reconcile(delivery_id: int) -> None:
    dispatch.deliveries_reconcile([delivery_id])


def steps_seal() -> None:
    history.steps_seal_all()


def follow_ups_apply() -> None:
    followups.follow_ups_apply()


def register_tasks() -> None:
    """Each pipeline task's queue and the ids its log lines carry. Composition goes to the
    render queue unless the intake knows the chunk archives no PDF (`intake._create` sends
    text-only chunks to the dispatch queue), so an urgent SMS never waits behind statements."""
    render, dispatch, hooks = Queue.RENDER, Queue.DISPATCH, Queue.WEBHOOKS
    for task, queue, log_id in (
        ("notifications.pipeline.compose.compose_chunk", render, "communication_ids"),
        # The drain for the rest of a request's communications; its text-only twin is sent to
        # the dispatch queue by `compose.compose_drain_request`.
        ("notifications.pipeline.compose.compose_drain", render, ""),
        ("notifications.pipeline.tasks.communication_compose", render, "communication_id"),
        ("notifications.pipeline.tasks.communication_recompose", render, "communication_id"),
        # An urgent communication's PDF and durable targets, after its fast channels.
        ("notifications.pipeline.fallback.durable_copies_send", render, "communication_ids"),
        ("notifications.pipeline.gate.gate_chunk", dispatch, "communication_ids"),
        ("notifications.pipeline.tasks.communication_gate", dispatch, "communication_id"),
        ("notifications.pipeline.dispatch.dispatch_chunk", dispatch, "delivery_ids"),
        ("notifications.pipeline.tasks.delivery_dispatch", dispatch, "delivery_id"),
        ("notifications.pipeline.dispatch.deliveries_reconcile", dispatch, "delivery_ids"),
        ("notifications.pipeline.tasks.delivery_reconcile", dispatch, "delivery_id"),
        ("notifications.webhooks.send.webhook_delivery_send", hooks, "webhook_delivery_id"),
        (
            "notifications.webhooks.send.webhook_deliveries_send",
            Queue.WEBHOOKS,
            "webhook_delivery_ids",
        ),
        (
            "notifications.webhooks.send.webhook_delivery_unstick",
            Queue.WEBHOOKS,
            "webhook_delivery_id",
        ),
    ):
        register_task(task, queue=queue, log_id=log_id)


def register_sweeps() -> None:
    register_schedule(
        "notifications.follow_ups", "notifications.pipeline.tasks.follow_ups_apply", 15
    )
    register_schedule("notifications.steps_seal", "notifications.pipeline.tasks.steps_seal", 1)
    after = timedelta(seconds=settings.CCM_SWEEP_AFTER_SECONDS)
    compose = (
        "notifications.pipeline.tasks.communication_compose",
        "notifications.pipeline.compose.compose_chunk",
    )
    dispatch = (
        "notifications.pipeline.tasks.delivery_dispatch",
        "notifications.pipeline.dispatch.dispatch_chunk",
    )
    reconcile = (
        "notifications.pipeline.tasks.delivery_reconcile",
        "notifications.pipeline.dispatch.deliveries_reconcile",
    )
    chunk = chunks.chunk_size()
    # The sweeps whose tasks may archive PDFs hand them over in render-sized chunks.
    render_chunk = chunks.chunk_size(renders_pdf=True)
    # A row is stuck when no queued or running task carries it (ccm.tasks.Sweep), not when it
    # is old: a backlog waits its turn. The short ages only keep a sweep from racing a commit
    # whose enqueue is just being written.
    register_sweep(
        Sweep(
            name="notifications.received",
            queryset=lambda: Communication.objects.filter(state=CommState.RECEIVED),
            task="notifications.pipeline.compose.compose_chunk",
            older_than=timedelta(minutes=2),
            covered_by=compose,
            chunk=render_chunk,
        )
    )
    register_sweep(
        Sweep(
            name="notifications.durable_later",
            # Text search, not a JSON containment lookup: the same query on SQLite.
            queryset=lambda: Communication.objects.filter(
                state__in=fallback.DURABLE_STATES,
                decision_trace__icontains=f'"{selection.DURABLE_LATER}"',
            ),
            task="notifications.pipeline.fallback.durable_copies_send",
            older_than=timedelta(minutes=5),
            chunk=render_chunk,
        )
    )
    register_sweep(
        Sweep(
            name="notifications.composing",
            queryset=lambda: Communication.objects.filter(state=CommState.COMPOSING),
            task="notifications.pipeline.tasks.communication_recompose",
            older_than=after,
            covered_by=compose,
        )
    )
    register_sweep(
        Sweep(
            name="notifications.composed",
            queryset=lambda: Communication.objects.filter(state=CommState.COMPOSED),
            task="notifications.pipeline.gate.gate_chunk",
            older_than=timedelta(minutes=2),
            covered_by=(*compose, "notifications.pipeline.tasks.communication_gate"),
            chunk=chunk,
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
            task="notifications.pipeline.dispatch.dispatch_chunk",
            older_than=timedelta(seconds=0),
            covered_by=dispatch,
            chunk=chunk,
        )
    )
    register_sweep(
        Sweep(
            name="notifications.sending_stale",
            queryset=lambda: Delivery.objects.filter(state=DeliveryState.SENDING),
            task="notifications.pipeline.dispatch.deliveries_reconcile",
            older_than=timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S),
            # A delivery a live dispatch still holds is not asked about behind its back.
            covered_by=(*reconcile, *dispatch),
            chunk=chunk,
        )
    )

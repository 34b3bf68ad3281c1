"""Reads for the operations screens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Q, QuerySet
from django.urls import reverse

from cases.incidents.models import Incident, IncidentNotice, IncidentUpdate
from notifications.customers.assets import selectors as asset_selectors
from notifications.models import DeliveryState
from notifications.progress import PER_KIND, Work


def incident_list() -> QuerySet[Incident]:
    return (
        Incident.objects.select_related("asset")
        .annotate(event_count=Count("events"))
        .order_by("-first_event_at", "-id")
    )


def updates_with_delivery(*, incident: Incident) -> list[dict]:
    """Each update with its notices and what became of their deliveries."""
    rows = []
    for update in IncidentUpdate.objects.filter(incident=incident).order_by("sequence"):
        notices = IncidentNotice.objects.filter(update=update)
        deliveries = (
            notices.filter(communication__isnull=False)
            .values("communication__deliveries__channel", "communication__deliveries__state")
            .annotate(n=Count("id"))
        )
        by_channel: dict[str, dict[str, int]] = {}
        for row in deliveries:
            channel = row["communication__deliveries__channel"]
            if channel is None:
                continue
            by_channel.setdefault(channel, {})[row["communication__deliveries__state"]] = row["n"]
        rows.append(
            {
                "update": update,
                "notices": notices.count(),
                "refused": notices.exclude(error="").count(),
                "delivered": notices.filter(
                    Q(communication__deliveries__state=DeliveryState.DELIVERED)
                )
                .distinct()
                .count(),
                "channels": sorted(by_channel.items()),
            }
        )
    return rows


def affected_by_region(*, incident: Incident) -> list[tuple[str, int]]:
    customer_ids = asset_selectors.customer_ids_under(asset=incident.asset)
    return asset_selectors.customers_by_region(customer_ids=customer_ids)


def incident_updates_progress(*, since: datetime) -> Iterator[Work]:
    """The dashboard's progress source: updates whose notices are being handed over (counted
    live from the notice rows each chunk commits), and those completed since `since`."""
    updates = list(
        IncidentUpdate.objects.select_related("incident")
        .filter(Q(completed_at__isnull=True) | Q(completed_at__gte=since))
        .order_by("-id")[:PER_KIND]
    )
    handled = dict(
        IncidentNotice.objects.filter(
            update__in=[u for u in updates if u.completed_at is None],
        )
        .filter(Q(communication__isnull=False) | ~Q(error=""))
        .order_by()
        .values_list("update_id")
        .annotate(n=Count("id"))
    )
    for update in updates:
        finished = update.completed_at is not None
        yield Work(
            kind="incident_update",
            key=f"incident_update:{update.pk}",
            label=f"Incident {update.incident.reference} {update.kind} #{update.sequence}",
            state="completed" if finished else "notifying",
            done=(
                update.notices_sent + update.notices_refused
                if finished
                else handled.get(update.pk, 0)
            ),
            total=update.customers_total,
            finished=finished,
            url=reverse("incident-detail", args=[update.incident.reference]),
            permissions=("cases.change_case", "cases.handle_exception"),
            reference=update.incident.reference,
            started_at=update.created_at,
        )

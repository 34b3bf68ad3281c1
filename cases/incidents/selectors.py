"""Reads for the operations screens."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from cases.incidents.models import Incident, IncidentNotice, IncidentUpdate
from notifications.assets import selectors as asset_selectors
from notifications.models import DeliveryState


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

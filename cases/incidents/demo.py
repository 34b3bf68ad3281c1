"""Demo: a small network (one region, two feeders, transformers, a meter per demo customer) and
`simulate_outage`, which sends an outage's events and then its clears through the events intake."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from cases.incidents import services
from cases.incidents.models import Incident
from cases.incidents.rules import rule_for
from notifications.customers.assets import services as assets
from notifications.demo import CUSTOMERS

DEMO_SOURCE = "demo-scada"
FEEDER = "demo-feeder-1"
TREE = [
    {"code": "demo-region-north", "kind": "region", "name": "North Leeds"},
    {"code": FEEDER, "kind": "feeder", "parent": "demo-region-north", "name": "Headingley 11kV"},
    {"code": "demo-feeder-2", "kind": "feeder", "parent": "demo-region-north", "name": "Burley"},
    {"code": "demo-tx-1", "kind": "transformer", "parent": FEEDER, "name": "Larkspur Close"},
    {"code": "demo-tx-2", "kind": "transformer", "parent": "demo-feeder-2", "name": "Quay St"},
]


def _meter(index: int) -> str:
    return f"demo-meter-{index + 1}"


def seed_network() -> None:
    """The tree and a service point per demo customer (the first three under feeder 1)."""
    meters = [
        {"code": _meter(i), "kind": "meter", "parent": "demo-tx-1" if i < 3 else "demo-tx-2"}
        for i in range(len(CUSTOMERS))
    ]
    assets.assets_upsert(items=[*TREE, *meters])
    assets.service_points_upsert(
        items=[
            {
                "code": f"demo-sp-{spec['external_ref']}",
                "customer": spec["external_ref"],
                "asset": _meter(i),
                "address": ", ".join(spec["postal_address"][:-1]),
                "postcode": spec["postal_address"][-1],
            }
            for i, spec in enumerate(CUSTOMERS)
        ]
    )


def simulate_outage(*, resolve: bool = True, run: str = "") -> list[services.EventResult]:
    """The demo feeder's meters trip (and, with `resolve`, clear). The trips are dated
    `group_wait` ago, so the first notice goes out now instead of after the wait."""
    run = run or timezone.now().strftime("%Y%m%d%H%M%S")
    rule = rule_for("power_outage")
    assert rule is not None
    start = timezone.now() - timedelta(seconds=rule.group_wait + 120)
    events = [
        {
            "source": DEMO_SOURCE,
            "event_id": f"{run}-{_meter(i)}-{action}",
            "event_type": "power_outage",
            "severity": "major",
            "asset": _meter(i),
            "occurred_at": (start + timedelta(minutes=offset, seconds=i)).isoformat(),
            "action": action,
            "payload": {"voltage": 0 if action == "trigger" else 230},
        }
        for action, offset in [("trigger", 0), *([("resolve", 1)] if resolve else [])]
        for i in range(3)
    ]
    tripped = services.events_ingest(items=events[:3])
    for reference in {r.incident for r in tripped if r.incident}:
        incident = Incident.objects.get(reference=reference)
        services.incident_evaluate(incident_id=incident.pk)
    return tripped + (services.events_ingest(items=events[3:]) if resolve else [])

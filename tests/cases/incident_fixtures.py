"""An asset tree with customers under it, the outage templates published, and an events key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_q.conf import Conf
from django_q.models import Task
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.customers.assets import services as assets
from notifications.models import ContactKind, ContactPoint, Customer
from tests.notifications.conftest import publish

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
OUTAGE_TEMPLATES = ("outage_notice", "outage_update", "outage_restored")


@pytest.fixture
def run_tasks(monkeypatch, django_capture_on_commit_callbacks):
    """Run enqueued tasks at once, in this process, as their transactions commit."""
    monkeypatch.setattr(Conf, "SYNC", True)

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            result = fn(*args, **kwargs)
        failed = list(Task.objects.filter(success=False).values_list("func", "result"))
        assert failed == [], failed
        return result

    return run


@pytest.fixture
def outage_templates(author, reviewer):
    for code in OUTAGE_TEMPLATES:
        publish(read_folder(LIBRARY / code), author=author, reviewer=reviewer)


@pytest.fixture
def events_api(db):
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Api-Key {api_key_create(name='iot', scopes=['events:write']).key}"
    )
    return client


def grid(*, devices: int, customers: int, feeder: str = "feeder-1") -> list[str]:
    """region-north → feeder → 2 transformers → `devices` meters, customers spread over the
    meters (each with a mobile number). Returns the meter codes."""
    meters = [f"{feeder}-m{i:03d}" for i in range(devices)]
    assets.assets_upsert(
        items=[
            {"code": "region-north", "kind": "region", "name": "North"},
            {"code": feeder, "kind": "feeder", "parent": "region-north", "name": "Headingley 1"},
            *[
                {"code": f"{feeder}-tx{t}", "kind": "transformer", "parent": feeder}
                for t in range(2)
            ],
            *[
                {"code": m, "kind": "meter", "parent": f"{feeder}-tx{i % 2}"}
                for i, m in enumerate(meters)
            ],
        ]
    )
    made = Customer.objects.bulk_create(
        [
            Customer(
                external_ref=f"{feeder}-C{i:05d}",
                name=f"Customer {i}",
                postal_address=[f"{i} Larkspur Close", "Leeds LS6 3QT"],
            )
            for i in range(customers)
        ]
    )
    ContactPoint.objects.bulk_create(
        [
            ContactPoint(
                customer=c, kind=ContactKind.PHONE, value=f"+4477009{i:05d}", is_primary=True
            )
            for i, c in enumerate(made)
        ]
    )
    assets.service_points_upsert(
        items=[
            {
                "code": f"SP-{c.external_ref}",
                "customer": c.external_ref,
                "asset": meters[i % devices],
                "address": f"{i} Larkspur Close, Leeds",
                "postcode": "LS6 3QT",
            }
            for i, c in enumerate(made)
        ]
    )
    return meters


def event(meter: str, n: int, *, action: str = "trigger", at: datetime | None = None) -> dict:
    return {
        "source": "scada",
        "event_id": f"{meter}-{n}",
        "event_type": "power_outage",
        "severity": "major",
        "asset": meter,
        "occurred_at": (at or T0 + timedelta(seconds=n)).isoformat(),
        "action": action,
        "payload": {"voltage": 0},
    }

"""Events about one customer's device: field-service appointments (one notice per change,
idempotent on replays, out-of-order events change nothing) and usage advisories that become a
maintenance-plan offer (marketing: only with consent)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cases.incidents.models import Appointment, Incident
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.channels import sms
from notifications.customers import services as customer_services
from notifications.models import CommState, Communication, Customer
from tests.cases.incident_fixtures import T0, grid
from tests.notifications.conftest import publish


@pytest.fixture(autouse=True)
def _setup(settings, author, reviewer):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    for code in ("technician_appointment", "maintenance_plan_offer"):
        publish(read_folder(LIBRARY / code), author=author, reviewer=reviewer)
    sms.outbox.clear()


def visit(meter: str, n: int, *, status="booked", start_h=9, technician="", at=None) -> dict:
    payload = {
        "appointment": "APT-1",
        "status": status,
        "window_start": (T0 + timedelta(days=2, hours=start_h - 6)).isoformat(),
        "window_end": (T0 + timedelta(days=2, hours=start_h - 2)).isoformat(),
        "purpose": "to replace your smart meter",
    }
    if technician:
        payload["technician"] = technician
    return {
        "source": "fsm",
        "event_id": f"visit-{n}",
        "event_type": "field_service",
        "severity": "info",
        "asset": meter,
        "occurred_at": (at or T0 + timedelta(minutes=n)).isoformat(),
        "payload": payload,
    }


def post(api, run_tasks, *events):
    response = run_tasks(api.post, "/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200, response.json()
    return response


def test_an_appointment_sends_one_notice_per_change_and_nothing_on_replays(events_api, run_tasks):
    [meter] = grid(devices=1, customers=1)
    # when the visit is booked
    post(events_api, run_tasks, visit(meter, 1))
    assert [m.body for m in sms.outbox] == [
        "Northwind: technician visit 03/05/2026 09:00-13:00. Ref APT-1"
    ]
    # when the same event is replayed, and a later event says nothing new
    post(events_api, run_tasks, visit(meter, 1), visit(meter, 2))
    assert len(sms.outbox) == 1
    # when the window moves
    post(events_api, run_tasks, visit(meter, 3, start_h=13))
    assert len(sms.outbox) == 2
    assert "new time" in sms.outbox[-1].body
    assert "13:00-17:00" in sms.outbox[-1].body
    # when an older event (the first window) arrives late, nothing changes
    post(events_api, run_tasks, visit(meter, 0, start_h=9, at=T0 + timedelta(seconds=30)))
    assert len(sms.outbox) == 2
    # when the technician sets off
    post(events_api, run_tasks, visit(meter, 4, status="on_the_way", start_h=13, technician="Sam"))
    assert len(sms.outbox) == 3
    assert "on the way" in sms.outbox[-1].body
    appointment = Appointment.objects.get()
    assert (appointment.revision, appointment.status) == (3, "on_the_way")
    assert Communication.objects.filter(correlation_id="APT-1").count() == 3
    assert not Incident.objects.exists()


def test_a_field_service_event_with_a_bad_window_is_a_422_naming_the_field(events_api):
    [meter] = grid(devices=1, customers=1)
    bad = visit(meter, 1)
    bad["payload"]["window_end"] = bad["payload"]["window_start"]
    response = events_api.post("/api/v1/events", bad, format="json")
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["payload.window_end"]
    assert not Appointment.objects.exists()


def wear(meter: str, n: int, value: float) -> dict:
    return {
        "source": "telemetry",
        "event_id": f"wear-{n}",
        "event_type": "device_wear",
        "severity": "info",
        "asset": meter,
        "occurred_at": (T0 + timedelta(hours=n)).isoformat(),
        "payload": {"wear": value},
    }


def test_high_wear_becomes_an_offer_only_where_marketing_consent_allows(
    events_api, run_tasks, admin_user
):
    # given two customers on one meter; only the first opted in to marketing by SMS
    [meter] = grid(devices=1, customers=2)
    first, second = Customer.objects.order_by("pk")
    customer_services.consent_record(
        customer=first,
        channel="sms",
        category="marketing",
        granted=True,
        legal_basis="consent",
        source="test",
        by=admin_user,
    )
    # when the meter reports wear below the rule's threshold, nothing is offered
    post(events_api, run_tasks, wear(meter, 1, 0.5))
    assert not Communication.objects.exists()
    # when it reports high wear (twice)
    post(events_api, run_tasks, wear(meter, 2, 0.9), wear(meter, 3, 0.95))
    # then one offer each; it reaches only the customer who consented
    offers = {c.customer_id: c for c in Communication.objects.filter(category="marketing")}
    assert set(offers) == {first.pk, second.pk}
    [message] = sms.outbox
    assert "HomeCare maintenance plan" in message.body
    assert offers[first.pk].state == CommState.SENT
    assert offers[second.pk].state == CommState.UNDELIVERABLE
    reasons = [e.get("reason", "") for e in offers[second.pk].decision_trace]
    assert "marketing needs an opt-in on this channel; none is recorded" in reasons

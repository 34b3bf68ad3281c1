"""Planned maintenance: scheduled through the API (or the operations screen), the customers under
its assets told once at each step: the notice, the reminder, the start and the completion."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases.incidents import services
from cases.incidents.models import Incident, IncidentKind, IncidentState, UpdateKind
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.channels import sms
from tests.cases.incident_fixtures import grid
from tests.notifications.conftest import publish

pytestmark = pytest.mark.usefixtures("outage_templates")


@pytest.fixture(autouse=True)
def _setup(settings, author, reviewer):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    publish(read_folder(LIBRARY / "planned_maintenance"), author=author, reviewer=reviewer)
    sms.outbox.clear()


def test_planned_maintenance_notice_reminder_start_and_completion_once_each(events_api, run_tasks):
    # given three customers under transformer 0 and one under transformer 1 of feeder-1
    grid(devices=4, customers=4)
    now = timezone.now()
    start, end = now + timedelta(hours=48), now + timedelta(hours=52)
    # when operations schedule work on both transformers, with a reminder 24 hours before
    response = run_tasks(
        events_api.post,
        "/api/v1/maintenance",
        {
            "title": "Transformer upgrade",
            "service": "electricity",
            "assets": ["feeder-1-tx0", "feeder-1-tx1"],
            "start": start.isoformat(),
            "end": end.isoformat(),
            "work": "we are upgrading the transformers that supply your street",
            "reminder_hours": 24,
        },
        format="json",
    )
    # then every customer under either asset is told now
    assert response.status_code == 201, response.json()
    incident = Incident.objects.get(reference=response.json()["reference"])
    assert incident.kind == IncidentKind.PLANNED
    assert len(sms.outbox) == 4
    assert all("planned electricity work" in m.body for m in sms.outbox)

    def tick(at):
        return run_tasks(services.incident_evaluate, incident_id=incident.pk, now=at)

    # when the tick runs before the reminder is due, nothing is sent
    tick(now + timedelta(hours=1))
    assert len(sms.outbox) == 4
    # when the reminder is due (twice: the tick runs every minute)
    tick(start - timedelta(hours=23))
    tick(start - timedelta(hours=22))
    assert len(sms.outbox) == 8
    assert all("reminder" in m.body for m in sms.outbox[4:])
    # when the window opens
    tick(start + timedelta(minutes=1))
    tick(start + timedelta(minutes=2))
    assert len(sms.outbox) == 12
    assert "planned electricity cut" in sms.outbox[-1].body
    # when it closes
    assert tick(end + timedelta(minutes=1)) == IncidentState.RESOLVED
    tick(end + timedelta(minutes=2))
    assert len(sms.outbox) == 16
    assert "restored" in sms.outbox[-1].body
    kinds = list(incident.updates.order_by("sequence").values_list("kind", flat=True))
    assert kinds == [
        UpdateKind.NOTICE,
        UpdateKind.REMINDER,
        UpdateKind.START,
        UpdateKind.RESOLUTION,
    ]
    assert all(u.notices_sent == 4 for u in incident.updates.all())


def test_maintenance_with_a_bad_window_or_asset_is_a_422_naming_the_field(events_api):
    grid(devices=1, customers=1)
    now = timezone.now()
    response = events_api.post(
        "/api/v1/maintenance",
        {
            "title": "Work",
            "service": "electricity",
            "assets": ["no-such-asset"],
            "start": now.isoformat(),
            "end": (now - timedelta(hours=1)).isoformat(),
            "work": "repairs",
        },
        format="json",
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"assets", "end"}
    assert not Incident.objects.exists()


def test_operations_schedule_maintenance_from_the_incidents_screen(client, ops, run_tasks):
    grid(devices=1, customers=2)
    client.force_login(ops)
    start = (timezone.localtime() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    end = (timezone.localtime() + timedelta(days=2, hours=3)).strftime("%Y-%m-%dT%H:%M")
    response = run_tasks(
        client.post,
        "/incidents/maintenance",
        {
            "title": "Cable jointing",
            "service": "electricity",
            "assets": "feeder-1",
            "start": start,
            "end": end,
            "work": "we are jointing a new cable",
            "reminder_hours": "12",
        },
    )
    incident = Incident.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/incidents/{incident.reference}/"
    assert incident.reminder_hours == 12
    assert len(sms.outbox) == 2
    assert "Schedule planned maintenance" in client.get("/incidents/").content.decode()

"""An incident update's notices on the operations dashboard: a bar that moves chunk by chunk
while the notices are handed over, and the incident reconciled by its reference."""

from __future__ import annotations

import pytest
from django.utils import timezone

from cases.incidents import services
from cases.incidents.models import Incident
from notifications.channels import sms
from notifications.progress import work_in_progress
from notifications.reporting.reconciliation import Scope, reconcile
from tests.cases.incident_fixtures import event, grid

pytestmark = pytest.mark.usefixtures("outage_templates")


@pytest.fixture(autouse=True)
def _no_wait(settings):
    settings.CCM_INCIDENT_RULES = {"power_outage": {"group_wait": 0}}
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    sms.outbox.clear()


def test_an_incident_notice_moves_its_bar_chunk_by_chunk_and_reconciles(
    events_api, run_tasks, monkeypatch, client, ops
):
    # given six customers under a feeder, notices handed over two at a time
    monkeypatch.setattr(services, "NOTICE_CHUNK", 2)
    meters = grid(devices=3, customers=6)
    bars: list[tuple[str, int, int]] = []
    real_chunk = services._send_chunk

    def chunk_then_look(update, customer_ids):
        real_chunk(update, customer_ids)
        bars.extend(
            (w["state"], w["done"], w["total"])
            for w in work_in_progress()
            if w["kind"] == "incident_update"
        )

    monkeypatch.setattr(services, "_send_chunk", chunk_then_look)
    # when the outage comes in
    response = run_tasks(
        events_api.post, "/api/v1/events", {"events": [event(m, 0) for m in meters]}, format="json"
    )
    assert response.status_code == 200, response.json()
    # then the notice's bar moved 2, 4, 6 of 6 while it was sent
    assert bars == [("notifying", 2, 6), ("notifying", 4, 6), ("notifying", 6, 6)]
    # and, sent, it stays on the dashboard as completed with a link to reconcile the incident
    incident = Incident.objects.get()
    [done] = [w for w in work_in_progress() if w["kind"] == "incident_update"]
    assert (done["state"], done["percent"], done["finished"]) == ("completed", 100.0, True)
    assert done["label"] == f"Incident {incident.reference} notice #1"
    assert f"reference={incident.reference}" in done["reconcile_url"]
    # and reconciling the incident by its reference accounts for all six notices
    today = timezone.localdate()
    result = reconcile(Scope(start=today, end=today, reference=incident.reference))
    assert result["lines"][0]["total"]["count"] == 6
    assert [line["difference"] for line in result["lines"]] == [0, 0, 0]
    # and the incident's page links operations to that reconciliation
    client.force_login(ops)
    page = client.get(f"/incidents/{incident.reference}/").content.decode()
    assert f"/ops/reconciliation/?reference={incident.reference}&amp;start=" in page

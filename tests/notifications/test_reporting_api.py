from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from freezegun import freeze_time
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.tasks import cluster_heartbeat
from notifications.reporting.rollups import rollups_refresh
from tests.notifications.reporting_fixtures import comm_make

DAY = date(2026, 3, 10)


def at(hour: int) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, tzinfo=UTC)


@pytest.fixture
def rolled_up(db):
    comm_make(at=at(8), state="delivered", deliveries=(("email", "delivered"),))
    comm_make(at=at(9), state="delivered", deliveries=(("email", "delivered"),), source="case")
    comm_make(at=at(9), state="sent", deliveries=(("sms", "failed"), ("print", "sent")))
    with freeze_time("2026-03-11 02:00:00"):
        rollups_refresh(days=2)


def key_client(*scopes: str) -> APIClient:
    issued = api_key_create(name="bi-tool-" + "-".join(scopes), scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@freeze_time("2026-03-11 09:00:00")
def test_stats_sums_the_rollups_over_the_chosen_dimensions(rolled_up):
    api = key_client("stats:read")

    response = api.get(
        "/api/v1/stats",
        {
            "start": "2026-03-10",
            "end": "2026-03-10",
            "level": "delivery",
            "group_by": "channel,status",
        },
    )

    assert response.status_code == 200
    assert response.json() == {
        "start": "2026-03-10",
        "end": "2026-03-10",
        "group_by": ["channel", "status"],
        "results": [
            {"channel": "email", "status": "delivered", "count": 2},
            {"channel": "print", "status": "sent", "count": 1},
            {"channel": "sms", "status": "failed", "count": 1},
        ],
    }
    by_source = api.get(
        "/api/v1/stats",
        {"start": "2026-03-10", "level": "communication", "source": "case", "group_by": "source"},
    ).json()["results"]
    assert by_source == [{"source": "case", "count": 1}]


def test_stats_needs_its_scope_and_names_bad_parameters(rolled_up):
    assert key_client("communications:read").get("/api/v1/stats").status_code == 403
    api = key_client("stats:read")
    bad = api.get("/api/v1/stats", {"group_by": "day,colour"})
    assert bad.status_code == 400
    assert "group_by: unknown colour" in bad.json()["detail"]
    assert api.get("/api/v1/stats", {"start": "2026-13-01"}).status_code == 400


def test_report_runs_are_listed_with_their_files(db, ops):
    from notifications.reporting.models import ReportDefinition, ReportRun

    definition = ReportDefinition.objects.create(
        name="Daily production report", kind="production", period="yesterday", recipients=[]
    )
    ReportRun.objects.create(
        definition=definition,
        trigger="manual",
        period_start=DAY,
        period_end=DAY,
        state="succeeded",
        pdf_sha256="a" * 64,
    )
    body = key_client("reports:read").get("/api/v1/reports/runs").json()
    [run] = body["results"]
    assert (run["report"], run["state"], run["pdf_sha256"]) == (
        "Daily production report",
        "succeeded",
        "a" * 64,
    )
    assert run["pdf_url"].endswith(f"/ops/reports/runs/{run['id']}/pdf/")
    assert run["csv_url"] is None


def test_metrics_need_the_token_or_an_operations_login(db, client, settings, ops, agent):
    settings.CCM_METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    client.force_login(agent)
    assert client.get("/metrics").status_code == 401
    client.force_login(ops)
    assert client.get("/metrics").status_code == 200


@freeze_time("2026-03-11 09:00:00")
def test_metrics_show_requests_queue_sends_and_heartbeats(rolled_up, client, settings):
    settings.CCM_METRICS_TOKEN = "scrape-secret"
    cluster_heartbeat()
    comm_make(
        at=datetime(2026, 3, 11, 8, tzinfo=UTC), state="sent", deliveries=(("email", "sent"),)
    )
    client.get("/healthz")

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'ccm_deliveries{channel="email",result="delivered"} 2.0' in text
    assert 'ccm_deliveries{channel="email",result="sent"} 1.0' in text  # today, live
    assert 'ccm_deliveries{channel="sms",result="failed"} 1.0' in text
    assert 'ccm_task_queue_depth{state="due"}' in text
    assert 'ccm_cluster_heartbeat_age_seconds{cluster="ccm"' in text
    assert re.search(r'ccm_host_stale\{cluster="ccm",host="[^"]+"\} 0\.0', text)
    assert 'ccm_http_requests_total{method="GET",status="200"}' in text
    assert 'ccm_items_waiting{stage="delivery_pending"} 0.0' in text

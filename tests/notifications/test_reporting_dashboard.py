from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time

from notifications.reporting.reconciliation import Scope, reconcile
from notifications.reporting.rollups import rollups_refresh
from tests.notifications.reporting_fixtures import comm_make

NOW = "2026-03-11 09:00:00"
DAY = date(2026, 3, 10)


def at(hour: int, *, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def traffic(db):
    comm_make(at=at(8), state="delivered", deliveries=(("email", "delivered"),), sent_after_s=3)
    comm_make(
        at=at(9),
        state="undeliverable",
        deliveries=(("email", "failed"),),
        sent_after_s=3,
        last_error="Postmark 406: inactive recipient",
    )
    comm_make(
        at=at(10),
        state="sent",
        deliveries=(("sms", "failed"),),
        sent_after_s=3,
        last_error="Twilio 21211: invalid number",
    )
    comm_make(at=at(11), state="compose_failed", failure_reason="balance is required")
    with freeze_time(NOW):
        rollups_refresh(days=3)


def test_reconciliation_finds_an_item_left_stuck(db, settings):
    settings.CCM_STUCK_AFTER_S = 3600
    # given a balanced day, and one communication left in `dispatching` with no delivery
    comm_make(at=at(8), state="delivered", deliveries=(("email", "delivered"),))
    comm_make(at=at(9), state="delivered", deliveries=(("print", "delivered"),))
    comm_make(at=at(10), state="dispatching")
    with freeze_time(NOW):
        rollups_refresh(days=3)
        # when
        result = reconcile(Scope(start=DAY, end=DAY))
    # then the dispatched line is one short, and the item is counted stuck
    requested, composed, dispatched = result["lines"]
    assert requested["total"]["count"] == 3
    assert requested["difference"] == 0
    assert composed["difference"] == 0
    assert dispatched["total"]["count"] == 3
    assert dispatched["difference"] == 1
    assert dispatched["no_delivery"]["count"] == 1
    assert result["stuck"]["count"] == 1
    assert result["balanced"] is False


def test_reconciliation_links_to_the_stuck_item(db, client, ops, settings):
    settings.CCM_STUCK_AFTER_S = 3600
    comm_make(at=at(8), state="delivered", deliveries=(("email", "delivered"),))
    stuck = comm_make(at=at(10), state="dispatching")
    client.force_login(ops)
    with freeze_time(NOW):
        rollups_refresh(days=3)
        page = client.get("/ops/reconciliation/", {"start": "2026-03-10", "end": "2026-03-10"})
        assert page.status_code == 200
        html = page.content.decode()
        links = re.findall(r'<a class="red" href="([^"]+)">', html)
        assert len(links) == 2  # dispatched without delivery, and stuck
        for link in links:
            items = client.get(link.replace("&amp;", "&"))
            assert items.status_code == 200
            listed = re.findall(
                r"/admin/notifications/communication/(\d+)/change/", items.content.decode()
            )
            assert listed == [str(stuck.pk)]


def test_a_job_is_reconciled_by_its_reference_from_live_rows(db):
    comm_make(
        at=at(8), state="delivered", deliveries=(("email", "delivered"),), correlation_id="job-7"
    )
    comm_make(at=at(8), state="received", correlation_id="job-7")
    comm_make(at=at(8), state="dispatching", correlation_id="other-job")
    with freeze_time(NOW):
        result = reconcile(Scope(start=DAY, end=DAY, reference="job-7"))
    requested = result["lines"][0]
    assert requested["total"]["count"] == 2
    assert [p["count"] for p in requested["parts"]] == [1, 0, 0, 1]
    assert result["lines"][2]["difference"] == 0


@freeze_time(NOW)
def test_dashboard_shows_the_figures_and_links_each_failure_to_its_items(traffic, client, ops):
    client.force_login(ops)

    response = client.get("/ops/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Operations dashboard" in html
    assert "<svg" in html
    # the charts carry no script: the only one is the progress bars', served from static files
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/static/ccm/ops_progress.js" defer>'
    ]
    assert "Postmark 406: inactive recipient" in html
    # the failure figure of the email reason lists exactly that delivery
    link = re.search(
        r"Postmark 406: inactive recipient</td>"
        r"<td><a class=\"failure-figure\" href=\"([^\"]+)\">1<",
        html,
    )
    assert link, html
    items = client.get(link.group(1).replace("&amp;", "&"))
    assert items.status_code == 200
    body = items.content.decode()
    assert "1 deliveries" in body
    assert "Postmark 406: inactive recipient" in body
    assert "Twilio" not in body


@freeze_time(NOW)
def test_dashboard_is_for_operations_and_compliance_only(traffic, client, agent, reviewer):
    client.force_login(agent)
    assert client.get("/ops/").status_code == 403
    client.force_login(reviewer)
    assert client.get("/ops/compliance/").status_code == 200


def test_dashboard_asks_signed_out_people_to_sign_in(db, client):
    response = client.get("/ops/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@freeze_time(NOW)
def test_operations_home_links_the_dashboard_first(db, client, ops):
    client.force_login(ops)
    html = client.get("/").content.decode()
    operations = html[html.index('id="role-operations"') :]
    first_link = re.search(r'<li><a href="([^"]+)">', operations).group(1)
    assert first_link == "/ops/"


@freeze_time(NOW)
def test_dashboard_shows_today_live_and_the_queues(db, client, ops):
    comm_make(at=timezone.now() - timedelta(minutes=5), state="received")
    client.force_login(ops)
    html = client.get("/ops/").content.decode()
    assert "<strong>1</strong> requested" in html
    assert "communication: received" in html


def test_bad_drill_down_parameters_are_a_400_with_the_reason(db, client, ops):
    client.force_login(ops)
    response = client.get("/ops/items/", {"start": "yesterday"})
    assert response.status_code == 400
    assert "start must be a date as YYYY-MM-DD" in response.content.decode()

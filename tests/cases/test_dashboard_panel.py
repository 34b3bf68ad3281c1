"""The operations dashboard shows open exception cases by age (a panel cases registers, since
notifications may not import cases), each figure a link to those cases."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import timezone
from freezegun import freeze_time

from cases.exception_cases import exception_open
from cases.models import Case
from tests.notifications.reporting_fixtures import comm_make


def test_dashboard_counts_open_exception_cases_by_age(db, client, ops):
    with freeze_time(datetime(2026, 3, 1, 9, tzinfo=UTC)):
        old = comm_make(at=timezone.now(), state="compose_failed", failure_reason="bad data")
        exception_open(kind="compose_failed", reason="bad data", communication=old)
    with freeze_time(datetime(2026, 3, 10, 9, tzinfo=UTC)):
        new = comm_make(at=timezone.now(), state="compose_failed", failure_reason="bad data")
        exception_open(kind="compose_failed", reason="bad data", communication=new)
    assert Case.objects.count() == 2

    client.force_login(ops)
    with freeze_time(datetime(2026, 3, 10, 12, tzinfo=UTC)):
        html = client.get("/ops/").content.decode()
        assert "Open exception cases by age" in html
        assert "under a day: 1</a>" in html
        assert "over a week: 1</a>" in html
        link = html.split("over a week: 1</a>")[0].rsplit('href="', 1)[1].split('"')[0]
        listed = client.get(link.replace("&amp;", "&"))
    assert listed.status_code == 200
    oldest = Case.objects.order_by("created_at").first()
    body = listed.content.decode()
    assert f"/admin/cases/case/{oldest.pk}/change/" in body
    assert "1 case" in body

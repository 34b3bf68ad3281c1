from __future__ import annotations

import csv
import hashlib
import io
import re
from datetime import UTC, date, datetime

import pypdf
import pytest
from django.core.exceptions import ValidationError
from django.core.mail.backends.base import BaseEmailBackend
from freezegun import freeze_time

from notifications.reporting.models import ReportDefinition, ReportRun
from notifications.reporting.reports import (
    period_for,
    report_definition_save,
    report_run_execute,
    reports_due,
)
from notifications.reporting.rollups import rollups_refresh
from tests.notifications.reporting_fixtures import comm_make

DAY = date(2026, 3, 10)
gmail_sent: list = []


class RecordingGmailBackend(BaseEmailBackend):
    """Stands in for the Gmail API gateway: keeps what it was asked to send."""

    def send_messages(self, email_messages):
        gmail_sent.extend(email_messages)
        return len(email_messages)


@pytest.fixture(autouse=True)
def _gmail(settings):
    settings.CCM_GMAIL_EMAIL_BACKEND = f"{__name__}.RecordingGmailBackend"
    # Reports go through the Gmail sender profile (configured, as in production).
    settings.CCM_SENDER_PROFILE = {**settings.CCM_SENDER_PROFILE, "report": "gmail"}
    gmail_sent.clear()


def at(hour: int) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, tzinfo=UTC)


@pytest.fixture
def yesterday_traffic(db):
    for hour in (8, 9, 10):
        comm_make(
            at=at(hour),
            state="delivered",
            template_code="annual_statement",
            deliveries=(("email", "delivered"),),
            sent_after_s=4,
        )
    comm_make(
        at=at(11),
        state="undeliverable",
        template_code="annual_statement",
        deliveries=(("print", "bounced"),),
        sent_after_s=4,
        last_error="Addressee gone away",
    )
    with freeze_time("2026-03-11 02:00:00"):
        rollups_refresh(days=2)


@pytest.fixture
def daily_production(db, ops):
    with freeze_time("2026-03-10 12:00:00"):
        return report_definition_save(
            definition=ReportDefinition(
                name="Daily production report",
                kind="production",
                period="yesterday",
                recipients=["ops-lead@northwind.example"],
                schedule="0 7 * * *",
                time_zone="Europe/London",
            ),
            by=ops,
        )


def test_a_scheduled_run_is_produced_archived_and_emailed_through_gmail(
    yesterday_traffic, daily_production, sync_tasks
):
    assert daily_production.next_run_at == datetime(2026, 3, 11, 7, tzinfo=UTC)
    # when the schedule comes (twice: the second sweep must not run it again)
    with freeze_time("2026-03-11 07:00:30"):
        assert sync_tasks(reports_due) == 1
        assert sync_tasks(reports_due) == 0
    # then one run covers yesterday and succeeded
    run = ReportRun.objects.get()
    assert (run.state, run.trigger) == ("succeeded", "schedule")
    assert (run.period_start, run.period_end) == (DAY, DAY)
    assert run.duration_s is not None
    # and its archived files are what their SHA-256 says
    pdf = run.pdf_file.read()
    assert hashlib.sha256(pdf).hexdigest() == run.pdf_sha256
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert "Production report: 10 Mar 2026" in text
    assert re.search(r"4\s+communications\s+requested", text)
    assert "annual_statement" in text
    assert "Addressee gone away" in text
    rows = list(csv.DictReader(io.StringIO(run.csv_file.read().decode())))
    assert hashlib.sha256(run.csv_file.open("rb").read()).hexdigest() == run.csv_sha256
    delivered = [r for r in rows if r["level"] == "communication" and r["status"] == "delivered"]
    assert [(r["day"], r["template"], r["count"]) for r in delivered] == [
        ("2026-03-10", "annual_statement", "3")
    ]
    # and it went out through the Gmail sender with both files attached
    [mail] = gmail_sent
    assert mail.to == ["ops-lead@northwind.example"]
    assert mail.subject == "Daily production report: 10 Mar 2026"
    assert [a[0] for a in mail.attachments] == [
        f"production-20260310-20260310-run{run.pk}.pdf",
        f"production-20260310-20260310-run{run.pk}.csv",
    ]
    assert mail.attachments[0][1] == pdf
    assert "Requested: 4" in mail.body
    assert run.emailed_at is not None
    # and the next slot is tomorrow
    daily_production.refresh_from_db()
    assert daily_production.next_run_at == datetime(2026, 3, 12, 7, tzinfo=UTC)


def test_an_empty_period_is_skipped_when_asked(daily_production, sync_tasks):
    with freeze_time("2026-03-11 07:00:30"):
        sync_tasks(reports_due)
    run = ReportRun.objects.get()
    assert run.state == "skipped"
    assert run.error == "Nothing was requested in the period."
    assert not run.pdf_sha256
    assert gmail_sent == []


def test_a_run_is_executed_once(yesterday_traffic, daily_production, sync_tasks):
    with freeze_time("2026-03-11 07:00:30"):
        sync_tasks(reports_due)
    run = ReportRun.objects.get()
    assert report_run_execute(run.pk) == "not queued"
    assert len(gmail_sent) == 1


def test_run_now_from_the_screen_and_download_from_the_history(
    yesterday_traffic, daily_production, client, ops, sync_tasks
):
    client.force_login(ops)
    with freeze_time("2026-03-11 09:00:00"):
        response = sync_tasks(client.post, f"/ops/reports/{daily_production.pk}/")
        assert response.status_code == 302
        page = client.get(f"/ops/reports/{daily_production.pk}/").content.decode()
    run = ReportRun.objects.get()
    assert run.trigger == "manual"
    assert run.requested_by == ops
    assert "Succeeded" in page
    pdf_link = re.search(r'href="(/ops/reports/runs/\d+/pdf/)"', page).group(1)
    download = client.get(pdf_link)
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert body.startswith(b"%PDF")
    assert download["X-Content-SHA256"] == hashlib.sha256(body).hexdigest()


def test_people_without_the_operations_role_cannot_run_reports(daily_production, client, reviewer):
    client.force_login(reviewer)
    assert client.get(f"/ops/reports/{daily_production.pk}/").status_code == 200
    assert client.post(f"/ops/reports/{daily_production.pk}/").status_code == 403
    assert not ReportRun.objects.exists()


def test_a_definition_with_a_bad_schedule_or_zone_names_the_field(db):
    with pytest.raises(ValidationError) as caught:
        report_definition_save(
            definition=ReportDefinition(
                name="Broken",
                kind="delivery",
                period="yesterday",
                recipients=["not-an-address"],
                schedule="every day",
                time_zone="Mars/Olympus",
            )
        )
    assert set(caught.value.message_dict) == {"schedule", "time_zone", "recipients"}


def test_periods_are_counted_in_the_definitions_time_zone():
    definition = ReportDefinition(period="previous_month", time_zone="Australia/Sydney")
    # 22:00 UTC on 31 March is already 1 April in Sydney
    start, end = period_for(definition, at=datetime(2026, 3, 31, 22, tzinfo=UTC))
    assert (start, end) == (date(2026, 3, 1), date(2026, 3, 31))


def test_the_demo_defines_a_daily_production_report_and_emails_a_run(db, sync_tasks, settings):
    from ccm.demo import seed_all

    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    sync_tasks(seed_all)
    sync_tasks(seed_all)  # seeding twice defines and runs it once

    definition = ReportDefinition.objects.get(name="Daily production report")
    assert (definition.kind, definition.schedule) == ("production", "0 18 * * *")
    run = ReportRun.objects.get()
    assert run.state == "succeeded", run.error
    [mail] = gmail_sent
    assert mail.to == ["operations@northwind.example", "head-of-ops@northwind.example"]
    assert mail.attachments[0][1].startswith(b"%PDF")


class FlakyGmailBackend(BaseEmailBackend):
    """The Gmail gateway failing its first `failures` sends, then sending."""

    failures = 0

    def send_messages(self, email_messages):
        if FlakyGmailBackend.failures > 0:
            FlakyGmailBackend.failures -= 1
            raise ConnectionError("Gmail API 503: backend error")
        gmail_sent.extend(email_messages)
        return len(email_messages)


def _due_sweep(sync_tasks) -> int:
    from ccm.tasks import registered_sweeps, sweep_run

    [sweep] = [s for s in registered_sweeps() if s.name == "reporting.report_runs_due"]
    return sync_tasks(sweep_run, sweep)


def test_a_failed_run_is_retried_with_backoff_and_each_attempt_is_recorded(
    yesterday_traffic, daily_production, sync_tasks, settings, client, ops
):
    settings.CCM_GMAIL_EMAIL_BACKEND = f"{__name__}.FlakyGmailBackend"
    settings.CCM_REPORT_RUN_ATTEMPTS = 3
    settings.CCM_REPORT_RETRY_BASE_S = 120
    FlakyGmailBackend.failures = 2
    # given the scheduled run whose mail fails: it is queued again two minutes later
    with freeze_time("2026-03-11 07:00:30"):
        sync_tasks(reports_due)
    run = ReportRun.objects.get()
    assert (run.state, run.attempts) == ("queued", 1)
    assert run.next_attempt_at == datetime(2026, 3, 11, 7, 2, 30, tzinfo=UTC)
    assert run.error == "ConnectionError: Gmail API 503: backend error"
    # when the sweep comes before the delay is over, nothing is tried
    with freeze_time("2026-03-11 07:02:00"):
        assert _due_sweep(sync_tasks) == 0
        assert report_run_execute(run.pk) == "not queued"
    # and after it, the second attempt fails too and waits twice as long
    with freeze_time("2026-03-11 07:02:31"):
        assert _due_sweep(sync_tasks) == 1
    run.refresh_from_db()
    assert (run.state, run.attempts) == ("queued", 2)
    assert run.next_attempt_at == datetime(2026, 3, 11, 7, 6, 31, tzinfo=UTC)
    # and the third succeeds
    with freeze_time("2026-03-11 07:06:40"):
        assert _due_sweep(sync_tasks) == 1
    run.refresh_from_db()
    assert (run.state, run.attempts, run.error) == ("succeeded", 3, "")
    assert len(gmail_sent) == 1
    # then each attempt is in the history with its reason, on the screen and in the API
    attempts = list(run.attempt_log.values_list("number", "outcome", "error"))
    assert attempts == [
        (1, "failed", "ConnectionError: Gmail API 503: backend error"),
        (2, "failed", "ConnectionError: Gmail API 503: backend error"),
        (3, "succeeded", ""),
    ]
    client.force_login(ops)
    page = client.get(f"/ops/reports/{daily_production.pk}/").content.decode()
    assert "3 of 3" in page
    assert page.count("failed: ConnectionError: Gmail API 503: backend error") == 2
    api = client.get("/api/v1/reports/runs").json()["results"][0]
    assert api["attempts"] == 3
    assert [a["outcome"] for a in api["attempt_log"]] == ["failed", "failed", "succeeded"]


def test_a_run_fails_for_good_after_its_last_attempt(
    yesterday_traffic, daily_production, sync_tasks, settings
):
    from ccm.models import AuditEvent

    settings.CCM_GMAIL_EMAIL_BACKEND = f"{__name__}.FlakyGmailBackend"
    settings.CCM_REPORT_RUN_ATTEMPTS = 2
    FlakyGmailBackend.failures = 5
    with freeze_time("2026-03-11 07:00:30"):
        sync_tasks(reports_due)
    with freeze_time("2026-03-11 08:00:00"):
        assert _due_sweep(sync_tasks) == 1
        # a failed run is not swept again
        assert _due_sweep(sync_tasks) == 0
    run = ReportRun.objects.get()
    assert (run.state, run.attempts, run.next_attempt_at) == ("failed", 2, None)
    assert run.attempt_log.filter(outcome="failed").count() == 2
    actions = list(
        AuditEvent.objects.filter(action__startswith="report_run.").values_list("action", flat=True)
    )
    assert actions.count("report_run.retry_scheduled") == 1
    assert actions[-1] == "report_run.failed"
    assert gmail_sent == []


@pytest.mark.parametrize(
    ("kind", "shown", "left_out"),
    [
        ("delivery", ["Delivery by channel", "Failed output by reason"], ["Template usage"]),
        ("template_usage", ["Template usage", "requested by template version"], ["Delivery by"]),
        ("exception_summary", ["Failed output by reason", "Reconciliation"], ["Template usage"]),
    ],
)
def test_each_kind_of_report_shows_its_own_sections(
    yesterday_traffic, sync_tasks, ops, kind, shown, left_out
):
    from notifications.reporting.reports import report_run_request

    with freeze_time("2026-03-11 09:00:00"):
        definition = report_definition_save(
            definition=ReportDefinition(
                name=f"{kind} report", kind=kind, period="yesterday", recipients=[]
            ),
            by=ops,
        )
        sync_tasks(report_run_request, definition=definition, by=ops)
    run = ReportRun.objects.get()
    assert run.state == "succeeded", run.error
    reader = pypdf.PdfReader(io.BytesIO(run.pdf_file.read()))
    text = "\n".join(page.extract_text() for page in reader.pages)
    for heading in shown:
        assert heading in text
    for heading in left_out:
        assert heading not in text
    if kind == "template_usage":
        # annual_statement: 4 requested, 3 delivered, 1 undeliverable (the returned letter)
        assert re.search(r"annual_statement\s+\S?\s*4\s+3\s+1", text), text


def test_a_run_left_running_by_a_dead_worker_is_retried(
    yesterday_traffic, daily_production, sync_tasks, settings
):
    from notifications.reporting.models import ReportRunAttempt
    from notifications.reporting.reports import report_run_request

    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 120}
    ReportDefinition.objects.filter(pk=daily_production.pk).update(enabled=False)  # run now only
    # given a run whose worker died mid-attempt (running, its attempt without an outcome)
    with freeze_time("2026-03-11 07:00:00"):
        run = report_run_request(definition=daily_production, trigger="manual")
        ReportRun.objects.filter(pk=run.pk).update(
            state="running", attempts=1, started_at="2026-03-11T07:00:00Z", next_attempt_at=None
        )
        ReportRunAttempt.objects.create(run=run, number=1, started_at=run.queued_at)
    # when the minutely task comes after longer than a task may run
    with freeze_time("2026-03-11 07:04:00"):
        reports_due()
    # then the attempt failed with the reason and the run waits for its retry
    run.refresh_from_db()
    assert (run.state, run.attempts) == ("queued", 1)
    assert list(run.attempt_log.values_list("outcome", "error")) == [
        ("failed", "the worker stopped during the attempt (no outcome)")
    ]
    with freeze_time("2026-03-11 07:06:30"):
        assert _due_sweep(sync_tasks) == 1
    run.refresh_from_db()
    assert (run.state, run.attempts) == ("succeeded", 2)

"""The operations dashboard in a real browser: from the home page to the dashboard, then from a
failure figure to exactly the items behind it."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import Page, expect

from notifications.reporting.rollups import rollups_refresh
from tests.notifications.reporting_fixtures import comm_make


def test_operations_click_a_failure_figure_and_land_on_those_items(page: Page, login, ops):
    # given two days ago: two emails delivered, one refused by the provider, one SMS failed
    two_days_ago = timezone.now() - timedelta(days=2)
    for _ in range(2):
        comm_make(at=two_days_ago, state="delivered", deliveries=(("email", "delivered"),))
    refused = comm_make(
        at=two_days_ago,
        state="undeliverable",
        deliveries=(("email", "failed"),),
        last_error="Postmark 406: inactive recipient",
    )
    comm_make(
        at=two_days_ago,
        state="sent",
        deliveries=(("sms", "failed"),),
        last_error="Twilio 21211: invalid number",
    )
    rollups_refresh(days=5)

    # when operations open the dashboard from their home page
    login(ops)
    page.get_by_role("link", name="Operations dashboard").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Operations dashboard")
    failures = page.locator("section", has=page.get_by_role("heading", name="Failures by reason"))
    row = failures.get_by_role("row", name="Postmark 406: inactive recipient")
    expect(row).to_contain_text("email")

    # and click the failure figure
    row.get_by_role("link", name="1").click()

    # then they see that delivery, and only it
    expect(page.get_by_role("heading", level=1)).to_have_text("1 deliveries")
    items = page.locator("table.items tbody tr")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("Postmark 406: inactive recipient")
    expect(page.get_by_text("Twilio 21211")).to_have_count(0)
    # and from there the communication in the back-office
    items.first.locator(f'a[href$="/communication/{refused.pk}/change/"]').click()
    expect(page).to_have_url(f"/admin/notifications/communication/{refused.pk}/change/")


def test_a_send_jobs_bar_moves_on_the_dashboard_without_reloading(page: Page, login, ops):
    from notifications.models import Communication, JobSource, JobState, SendJob, SendJobItem

    # given a send job of four communications, one of them sent
    now = timezone.now()
    job = SendJob.objects.create(
        source=JobSource.CSV,
        client="ops",
        file_name="rate-letters.csv",
        total=4,
        started_at=now,
    )
    SendJob.objects.filter(pk=job.pk).update(state=JobState.SENDING)
    comms = [
        comm_make(at=now, state="sent" if i == 0 else "composing", deliveries=()) for i in range(4)
    ]
    for index, communication in enumerate(comms):
        SendJobItem.objects.create(job=job, index=index, communication=communication)

    # when operations open the dashboard
    login(ops)
    page.goto("/ops/")
    row = page.locator("#work tr", has_text="Send job")
    bar = row.get_by_role("progressbar", name=f"Send job {job.pk} (rate-letters.csv)")
    expect(bar).to_have_js_property("value", 25)
    expect(row).to_contain_text("1 of 4 (25 %)")
    page.evaluate("window.__loadedOnce = true")

    # and two more communications are sent while they watch
    Communication.objects.filter(pk__in=[comms[1].pk, comms[2].pk]).update(state="sent")

    # then the bar moves to 75 % by itself, on the same page (nothing reloaded)
    expect(bar).to_have_js_property("value", 75)
    expect(row).to_contain_text("3 of 4 (75 %)")
    assert page.evaluate("window.__loadedOnce") is True

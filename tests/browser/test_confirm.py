"""An irreversible action asks first (templates/confirm.html): cancelling a scheduled send job
in Chromium shows what will happen; "No, go back" leaves the job as it was, "Yes" cancels it."""

from __future__ import annotations

from datetime import timedelta

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Page, expect

from notifications.customers import services as customer_services
from notifications.models import JobState, SendJob
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

ROWS = "customer_ref,customer.name,balance,as_of\nC-0,Ada,12.50,2026-05-01\n"


def scheduled_job(ops, author, reviewer, admin_user) -> SendJob:
    """A job of one row, due in an hour."""
    version = publish(letter_bundle(), author=author, reviewer=reviewer)
    customer_services.customer_upsert(
        external_ref="C-0", name="Customer 0", emails=["c0@example.org"], by=admin_user
    )
    client = Client()
    client.force_login(ops)
    client.post(
        "/jobs/new/",
        {"template": version.template_id, "file": SimpleUploadedFile("rows.csv", ROWS.encode())},
    )
    job = SendJob.objects.get()
    at = (timezone.localtime() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    client.post(f"/jobs/{job.pk}/send/", {"when": "at", "at": at})
    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED
    return job


def test_cancel_asks_no_leaves_the_job_yes_cancels_it(
    page: Page, login, ops, author, reviewer, admin_user
):
    # given a scheduled job on its page
    job = scheduled_job(ops, author, reviewer, admin_user)
    login(ops)
    page.goto(f"/jobs/{job.pk}/")
    # when operations ask to cancel it, giving the reason
    page.get_by_label("Why cancel").fill("Wrong tariff in the file")
    page.get_by_role("button", name="Cancel the job").click()
    # then they are asked first, told what will happen, and nothing is cancelled yet
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Cancel job {job.pk}?")
    expect(page.get_by_text("Why: Wrong tariff in the file")).to_be_visible()
    expect(page.get_by_text("This cannot be undone.")).to_be_visible()
    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED
    # when they answer no
    page.get_by_role("link", name="No, go back").click()
    # then the job is still scheduled, on its page
    expect(page.locator("#job-state")).to_contain_text("Scheduled")
    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED
    # when they ask again and answer yes
    page.get_by_label("Why cancel").fill("Wrong tariff in the file")
    page.get_by_role("button", name="Cancel the job").click()
    page.get_by_role("button", name=f"Yes, cancel job {job.pk}").click()
    # then the job is cancelled, and the page says so
    expect(page.get_by_role("status")).to_contain_text(f"Job {job.pk} is cancelled")
    expect(page.locator("#job-state")).to_contain_text("Cancelled")
    job.refresh_from_db()
    assert (job.state, job.cancel_reason) == (JobState.CANCELLED, "Wrong tariff in the file")

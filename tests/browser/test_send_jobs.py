"""Sending a CSV file from the back-office in a real browser: upload, the bad row shown before
anything is sent, send now, and the progress bar moving to 100 % without a reload."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from notifications.customers import services as customer_services
from notifications.jobs import services as job_services
from notifications.models import Communication, SendJob
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish


def test_operations_send_a_file_and_watch_it_go(
    page: Page, login, ops, author, reviewer, admin_user, tmp_path, sync_tasks, monkeypatch
):
    # given a published template, two customers and a file with one bad row
    publish(letter_bundle(), author=author, reviewer=reviewer)
    for i in range(2):
        customer_services.customer_upsert(
            external_ref=f"C-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=admin_user
        )
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "customer_ref,customer.name,balance,as_of\n"
        "C-0,Ada,12.50,2026-05-01\nC-1,Bob,3,2026-05-01\nC-9,Eve,1,2026-05-01\n"
    )
    login(ops)
    # when operations follow the home page's link, choose the template and upload the file
    page.get_by_role("link", name="Send a file").click()
    page.get_by_label("Template").select_option(label="Balance letter (letter)")
    page.get_by_label("CSV file").set_input_files(str(rows))
    page.get_by_role("button", name="Check the file").click()
    # then the bad row is shown with its reason, and the good ones as they will read
    expect(page.get_by_role("heading", name="1 row will not be sent")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="C-9")).to_contain_text(
        "There is no customer 'C-9'."
    )
    expect(page.get_by_text("Subject: Your balance, Ada")).to_be_visible()
    assert not Communication.objects.exists()
    # when they send now (the cluster has not picked the task up yet)
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    page.get_by_role("radio", name="Now").check()
    page.get_by_role("button", name="Send").click()
    bar = page.locator("#job-progress")
    expect(bar).to_have_attribute("value", "0")
    # and the job goes out while the page stays open
    monkeypatch.setattr(Conf, "SYNC", True)
    sync_tasks(job_services.send_job_run, SendJob.objects.get().pk)
    # then the bar moves to the end without a reload
    expect(bar).to_have_attribute("value", "100")
    expect(page.locator("#job-progress-text")).to_contain_text("2 of 2 done (100 %)")
    expect(page.locator("#job-state")).to_have_text("Completed")

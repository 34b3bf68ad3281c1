"""A reprint in a real browser: an agent files a copy to a new address through the form, a
reviewer releases it in the sign-off queue, and the DUPLICATE-stamped PDF can be downloaded."""

from __future__ import annotations

import io

import pypdf
import pytest
from playwright.sync_api import Page, expect

from cases.models import ReprintRequest
from ccm.roles import Role
from notifications.customers import services as customer_services
from notifications.pipeline import services, tasks
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 42, "as_of": "2026-03-31"}


@pytest.fixture
def agent_with_mail(make_user):
    return make_user("agnes", Role.SERVICE_AGENT, email="agnes@northwind.example")


@pytest.fixture
def sent_letter(author, reviewer, admin_user, make_user, sync_tasks, settings):
    settings.CCM_GMAIL_EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    publish(letter_bundle(), author=author, reviewer=reviewer)
    customer, _ = customer_services.customer_upsert(
        external_ref="C-1",
        name="Ada Lovelace",
        postal_address=["1 Analytical Row", "London N1 1AA"],
        emails=["ada@example.org"],
        by=admin_user,
    )
    communication, _ = services.communication_request(
        template_code="letter",
        customer=customer,
        data=DATA,
        client="test",
        by=make_user("core-banking", Role.INTEGRATOR),
    )
    sync_tasks(tasks.communication_compose, communication.pk)
    communication.refresh_from_db()
    assert communication.state == "sent"
    return communication


def test_agent_files_a_reprint_to_a_new_address_and_a_reviewer_releases_it(
    page: Page, login, agent_with_mail, reviewer, sent_letter, sync_tasks
):
    # given the agent signs in and follows the home page's link
    login(agent_with_mail)
    page.get_by_role("link", name="Request a reprint").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Request a reprint")
    # when they find the customer by reference
    page.get_by_label("Customer reference or name").fill("C-1")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Ada Lovelace (C-1)").click()
    # and fill the form: the letter, why, email to an address not on file, how they checked
    page.get_by_label("Document").select_option(index=1)
    page.get_by_label("Reason").fill("Moved house; the letter went to the old address.")
    page.get_by_role("radio", name="Email (on file: ada@example.org)").check()
    page.get_by_label("Address", exact=True).fill("ada@new-home.example")
    page.get_by_role("radio", name="One-time passcode").check()
    page.get_by_role("button", name="Request the reprint").click()
    # then it is filed and waits for a reviewer
    expect(page.get_by_role("status")).to_contain_text("waits for a reviewer's release")
    reprint = ReprintRequest.objects.get()
    assert reprint.state == "awaiting_release"
    expect(page.get_by_text("Awaiting release", exact=True)).to_be_visible()
    page.get_by_role("button", name="Sign out agnes").click()

    # when a reviewer opens it from the sign-off queue and approves it
    login(reviewer)
    page.goto("/review/")
    row = page.get_by_role("row").filter(has_text=reprint.case.reference)
    expect(row).to_contain_text("Reprint")
    row.get_by_role("link").first.click()
    expect(page.get_by_text("ada@new-home.example", exact=True)).to_be_visible()
    original = page.request.get(
        page.get_by_role("link", name="Open the original PDF").get_attribute("href") or ""
    )
    assert (original.status, original.headers["content-type"]) == (200, "application/pdf")
    page.get_by_role("radio", name="Approve").check()
    page.get_by_role("button", name="Record decision").click()
    expect(page.get_by_role("status")).to_contain_text("Approved")

    # then the reprint was sent, and its duplicate PDF downloads stamped DUPLICATE
    reprint.refresh_from_db()
    assert reprint.state == "fulfilled"
    page.goto(f"/agent/reprints/{reprint.pk}/")
    # (a fulfilled reprint shows what became of its letter: sent)
    expect(page.get_by_text("Sent", exact=True)).to_be_visible()
    link = page.get_by_role("link", name="Download the duplicate PDF")
    download = page.request.get(link.get_attribute("href") or "")
    assert download.status == 200
    assert download.headers["content-type"] == "application/pdf"
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(download.body())).pages)
    assert "DUPLICATE" in text
    assert "Dear Ada Lovelace" in text

"""The customer journeys in a real browser: an agent finds a customer, opens a complaint from
the customer page and its acknowledgement letter goes out; operations correct an address from
the exception queue and the letter that came back is sent again to the new address."""

from __future__ import annotations

import io
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect
from pypdf import PdfReader

from cases.models import Case
from notifications.channels import tracking
from notifications.customers import services as customer_services
from notifications.models import Communication, DeliveryEvent
from notifications.pipeline import services
from tests.cases import conftest as cases_fixtures
from tests.cases.conftest import DATA
from tests.notifications import conftest as notifications_fixtures

customer = notifications_fixtures.customer
integrator = notifications_fixtures.integrator
letter = notifications_fixtures.letter
library = cases_fixtures.library
_alerts_captured = cases_fixtures._alerts_captured  # internal alerts land in mail.outbox


def test_an_agent_opens_a_complaint_from_the_customer_page_and_the_acknowledgement_goes_out(
    page: Page, login, agent, customer, library, sync_tasks
):
    # given the agent finds the customer from the home page
    login(agent)
    page.get_by_role("link", name="Customers").first.click()
    page.get_by_label("Find a customer").fill("C-1")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Ada Lovelace").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Ada Lovelace")
    expect(page.locator("section", has_text="Contact points")).to_contain_text("ada@example.org")
    # when they open a complaint from there, as the customer told it on the phone
    page.get_by_role("link", name="Open a case").click()
    page.get_by_label("Complaint", exact=True).check()
    page.get_by_label("Subject").fill("Claim settled late")
    page.get_by_label("Received by").select_option("phone")
    page.get_by_label("Product").select_option("home_insurance")
    page.get_by_label("What the customer told us").fill("your claim took too long to settle")
    page.get_by_label("Files the customer sent").set_input_files(
        files=[{"name": "note.txt", "mimeType": "text/plain", "buffer": b"Call notes"}]
    )
    expect(page.get_by_label("Send the acknowledgement letter now")).to_be_checked()
    page.get_by_role("button", name="Open the case").click()
    # then the case page says the letter was requested, and it went out
    case = Case.objects.get(case_type="complaint")
    expect(page.get_by_role("heading", level=1)).to_contain_text(case.reference)
    letter = Communication.objects.get(template__code="complaint_acknowledgement")
    expect(page.get_by_role("status").first).to_contain_text(
        f"Acknowledgement letter requested (communication {letter.pk})"
    )
    expect(page.get_by_role("link", name="note.txt")).to_be_visible()
    letter.refresh_from_db()
    assert (letter.customer, letter.correlation_id, letter.state) == (
        customer,
        case.reference,
        "sent",
    )
    pdf = page.request.get(
        page.get_by_role("link", name="PDF of the letter").get_attribute("href") or ""
    )
    assert pdf.status == 200
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.body())).pages)
    assert "Ada Lovelace" in text
    assert case.reference in text
    # and the customer page lists the case and the letter
    page.get_by_role("link", name="Ada Lovelace").click()
    expect(page.locator("section", has_text="Open cases")).to_contain_text(case.reference)
    row = page.get_by_role("row").filter(has_text=f"communication {letter.pk}")
    expect(row).to_contain_text("Sent")
    expect(row.get_by_role("link", name="PDF")).to_be_visible()


@pytest.fixture
def returned_letter(settings, letter, integrator, admin_user, sync_tasks) -> Communication:
    """A letter that went to print and came back: the address is marked invalid and an
    exception case waits for operations."""
    settings.CCM_ENABLED_CHANNELS = ["email", "print"]
    babbage, _ = customer_services.customer_upsert(
        external_ref="C-2",
        name="Charles Babbage",
        postal_address=["5 Difference Lane", "London W1 1AA"],
        by=admin_user,
    )
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=babbage,
        data=DATA,
        client="t",
        by=integrator,
    )
    delivery = communication.deliveries.get()
    event = DeliveryEvent.objects.create(
        delivery=delivery,
        provider="print",
        event_id="return-1",
        event_type="bounced",
        hard=True,
        description="Addressee gone away",
        occurred_at=timezone.now(),
    )
    sync_tasks(tracking.delivery_event_process, event.pk)
    return communication


def test_operations_correct_an_address_from_an_exception_and_the_letter_goes_to_it(
    page: Page, login, ops, returned_letter, sync_tasks
):
    case = Case.objects.get(exception_kind="returned_mail")
    # given operations open the exception queue from the home page
    login(ops)
    page.get_by_role("link", name="Exceptions").first.click()
    row = page.get_by_role("row").filter(has_text=case.reference)
    expect(row).to_contain_text("Returned letter")
    # when they correct the customer's address from the returned letter's row
    row.get_by_role("link", name=re.compile("Correct the address")).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Charles Babbage")
    expect(page.locator("dl.facts")).to_contain_text(f"communication {returned_letter.pk}")
    address = page.get_by_label("New postal address")
    expect(address).to_have_value("5 Difference Lane\nLondon W1 1AA")
    address.fill("12 New Street\nLondon N2 2BB")
    page.get_by_label("Why it changes").fill("Moved; confirmed by phone")
    page.get_by_role("button", name="Correct the address").click()
    # then the customer page shows the new address, valid, and the letter sent to it again
    expect(page.get_by_role("status").first).to_contain_text(
        "Address corrected to 12 New Street / London N2 2BB. 1 held letter sent again"
    )
    expect(page.locator("address")).to_contain_text("12 New Street")
    expect(page.locator("section", has_text="Details")).to_contain_text("valid")
    resend = returned_letter.deliveries.order_by("-id").first()
    assert (resend.channel, resend.state, resend.address) == (
        "print",
        "sent",
        "12 New Street / London N2 2BB",
    )
    case.refresh_from_db()
    assert case.state == "resolved"
    # and the exception has left the queue
    page.get_by_role("link", name="Exceptions").first.click()
    expect(page.get_by_text("No open exceptions.")).to_be_visible()

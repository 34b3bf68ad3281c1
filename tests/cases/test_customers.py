"""The customer screens and what is done from them: the customer page by role, the search,
opening a case with its acknowledgement letter, and address corrections (at once, or four-eyes
when a held regulated letter would follow them)."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from cases import address_corrections
from cases.models import Case, CaseAttachment
from cases.services import CaseError
from ccm import approvals
from ccm.models import Approval, AuditEvent
from notifications.channels import tracking
from notifications.customers import services as customer_services
from notifications.models import Communication, DeliveryEvent
from notifications.pipeline import services
from tests.cases.conftest import DATA
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish


@pytest.fixture
def known_customer(customer, admin_user):
    customer_services.consent_record(
        customer=customer,
        channel="email",
        category="marketing",
        granted=True,
        legal_basis="consent",
        source="web_form",
        by=admin_user,
    )
    customer_services.suppression_add(
        channel="sms", address="+447911123456", reason="complaint", detail="STOP by text"
    )
    return customer


def test_the_customer_page_shows_contacts_with_their_state_and_the_consent_ledger(
    client, agent, known_customer
):
    client.force_login(agent)
    page = client.get(reverse("customer-detail", args=[known_customer.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "ada@example.org" in html
    assert "+447911123456" in html
    assert "Suppressed</strong>: Complaint since" in html
    assert "STOP by text" in html
    assert "Opted in</strong> to marketing by email" in html
    assert "1 Analytical Row" in html
    # and the actions an agent may take, each pointing at this customer
    for name in ("cases-new", "agent-reprint-new", "agent-correspondence-new"):
        assert f'{reverse(name)}?customer={known_customer.pk}"' in html
    assert reverse("customer-address", args=[known_customer.pk]) in html


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("service_agent", 200),
        ("operations", 200),
        ("compliance_reviewer", 200),
        ("template_author", 403),
        ("integrator", 403),
    ],
)
def test_who_may_see_the_customer_page(client, make_user, customer, role, status):
    client.force_login(make_user("someone", role))
    assert client.get(reverse("customer-detail", args=[customer.pk])).status_code == status
    assert client.get(reverse("customer-list")).status_code == status


def test_a_reviewer_sees_the_page_but_not_the_actions(client, reviewer, customer):
    client.force_login(reviewer)
    html = client.get(reverse("customer-detail", args=[customer.pk])).content.decode()
    assert "ada@example.org" in html
    assert reverse("customer-address", args=[customer.pk]) not in html
    assert reverse("cases-new") not in html


def test_customers_are_found_by_email_reference_and_name(client, agent, customer):
    client.force_login(agent)
    for query in ("ada@example.org", "07911 123456", "C-1", "lovel"):
        page = client.get(reverse("customer-list"), {"q": query})
        assert reverse("customer-detail", args=[customer.pk]) in page.content.decode(), query
    page = client.get(reverse("customer-list"), {"q": "nobody"})
    assert "No customer matches" in page.content.decode()


# --- opening a case ----------------------------------------------------------------------------

COMPLAINT_FORM = {
    "case_type": "complaint",
    "subject": "Claim settled late",
    "channel": "phone",
    "product": "home_insurance",
    "account_reference": "Policy NHI-4471093",
    "description": "your claim took too long to settle",
    "send_first_letter": "on",
    "action": "open",
}


def test_an_agent_opens_a_complaint_and_its_acknowledgement_goes_through_the_intake(
    client, agent, customer, library, sync_tasks
):
    client.force_login(agent)
    url = reverse("cases-new") + f"?customer={customer.pk}"
    scan = SimpleUploadedFile("letter.pdf", b"%PDF-1.4 the customer's letter", "application/pdf")
    response = sync_tasks(client.post, url, {**COMPLAINT_FORM, "attachments": [scan]})
    case = Case.objects.get(case_type="complaint")
    assert response.status_code == 302
    assert response["Location"] == reverse("cases-detail", args=[case.reference])
    assert (case.customer, case.assignee, case.details["channel"]) == (customer, agent, "phone")
    assert CaseAttachment.objects.get(case=case).name == "letter.pdf"
    letter = Communication.objects.get(template__code="complaint_acknowledgement")
    assert (letter.source, letter.correlation_id, letter.state) == ("case", case.reference, "sent")
    assert case.milestones.get(code="acknowledgement").communication == letter
    text = "".join(p.extract_text() for p in PdfReader(letter.document.file.open("rb")).pages)
    assert "Ada Lovelace" in text
    assert case.reference in text


def test_a_complaint_without_its_product_or_with_a_renamed_file_opens_nothing(
    client, agent, customer, library
):
    client.force_login(agent)
    url = reverse("cases-new") + f"?customer={customer.pk}"
    fake = SimpleUploadedFile("photo.png", b"MZ\x90\x00 an executable", "image/png")
    response = client.post(url, {**COMPLAINT_FORM, "product": "", "attachments": [fake]})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert errors["product"] == ["Choose the product the complaint is about."]
    assert "photo.png is named .png but its content is not PNG" in errors["attachments"][0]
    assert not Case.objects.exists()
    assert not Communication.objects.exists()


def test_the_acknowledgement_is_previewed_as_a_pdf_and_nothing_is_stored(
    client, agent, customer, library
):
    client.force_login(agent)
    url = reverse("cases-new") + f"?customer={customer.pk}"
    response = client.post(url, {**COMPLAINT_FORM, "action": "preview"})
    assert (response.status_code, response["Content-Type"]) == (200, "application/pdf")
    text = PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
    assert "Ada Lovelace" in text
    assert not Case.objects.exists()
    assert not Communication.objects.exists()
    assert not AuditEvent.objects.filter(action="case.opened").exists()


# --- address corrections -----------------------------------------------------------------------


@pytest.fixture
def print_only(settings, db, admin_user):
    settings.CCM_ENABLED_CHANNELS = ["email", "print"]
    customer, _ = customer_services.customer_upsert(
        external_ref="C-2",
        name="Charles Babbage",
        postal_address=["5 Difference Lane", "London W1 1AA"],
        by=admin_user,
    )
    return customer


def _returned(customer, integrator, template, sync_tasks) -> Communication:
    """A letter that went to print and came back: the address is invalid, an exception opens."""
    communication, _ = sync_tasks(
        services.communication_request,
        template_code=template,
        customer=customer,
        data=DATA,
        client="t",
        by=integrator,
    )
    delivery = communication.deliveries.get()
    event = DeliveryEvent.objects.create(
        delivery=delivery,
        provider="print",
        event_id=f"return-{delivery.pk}",
        event_type="bounced",
        hard=True,
        description="Addressee gone away",
        occurred_at=timezone.now(),
    )
    sync_tasks(tracking.delivery_event_process, event.pk)
    return communication


def test_an_address_correction_from_an_exception_releases_the_letter_to_the_new_address(
    client, letter, print_only, integrator, ops, sync_tasks
):
    communication = _returned(print_only, integrator, "letter", sync_tasks)
    case = Case.objects.get(exception_kind="returned_mail")
    client.force_login(ops)
    url = reverse("customer-address", args=[print_only.pk]) + f"?case={case.reference}"
    form = {
        "postal_address": "12 New Street\nLondon N2 2BB",
        "reason": "Moved; confirmed by phone",
        "case": case.reference,
    }
    response = sync_tasks(client.post, url, form)
    assert response.status_code == 302
    print_only.refresh_from_db()
    assert print_only.postal_address == ["12 New Street", "London N2 2BB"]
    assert print_only.postal_address_valid is True
    resend = communication.deliveries.order_by("-id").first()
    assert (resend.channel, resend.state) == ("print", "sent")
    assert resend.meta["postal_address"] == ["12 New Street", "London N2 2BB"]
    case.refresh_from_db()
    assert case.state == "resolved"
    corrected = AuditEvent.objects.get(action="customer.address_corrected")
    assert corrected.before["postal_address"] == ["5 Difference Lane", "London W1 1AA"]
    assert corrected.actor == ops


def test_a_held_regulated_letter_makes_the_correction_wait_for_a_second_person(
    client, letter, author, reviewer, print_only, integrator, ops, sync_tasks
):
    publish(letter_bundle("notice", category="regulatory"), author=author, reviewer=reviewer)
    communication = _returned(print_only, integrator, "notice", sync_tasks)
    # when operations correct the address
    correction = sync_tasks(
        address_corrections.address_correction_request,
        customer=print_only,
        postal_address=["12 New Street", "London N2 2BB"],
        reason="Moved",
        by=ops,
    )
    # then nothing changes until a reviewer approves
    assert correction.state == "awaiting_approval"
    assert "held regulated letter" in correction.four_eyes_reason
    print_only.refresh_from_db()
    assert print_only.postal_address == ["5 Difference Lane", "London W1 1AA"]
    approval = Approval.objects.get(purpose=address_corrections.PURPOSE)
    with pytest.raises(CaseError):  # and a second one cannot race it
        address_corrections.address_correction_request(
            customer=print_only, postal_address=["1 Other Road", "Leeds"], reason="x", by=ops
        )
    # and the reviewer's proof shows where the letter would go
    client.force_login(reviewer)
    proof = client.get(reverse("review-approval", args=[approval.pk])).content.decode()
    assert "12 New Street / London N2 2BB" in proof
    assert f"communication {communication.pk}, regulatory" in proof
    sync_tasks(approvals.approval_decide, approval=approval, by=reviewer, decision="approve")
    correction.refresh_from_db()
    print_only.refresh_from_db()
    assert correction.state == "applied"
    assert print_only.postal_address == ["12 New Street", "London N2 2BB"]
    assert communication.deliveries.order_by("-id").first().address == (
        "12 New Street / London N2 2BB"
    )


def test_every_correction_waits_when_the_setting_says_so_and_a_rejection_changes_nothing(
    settings, customer, agent, reviewer, sync_tasks
):
    settings.CASES_ADDRESS_CORRECTION_FOUR_EYES = True
    correction = address_corrections.address_correction_request(
        customer=customer, postal_address=["2 Elm Road", "Oxford OX1 1AA"], reason="x", by=agent
    )
    assert correction.state == "awaiting_approval"
    approval = Approval.objects.get(purpose=address_corrections.PURPOSE)
    approvals.approval_decide(approval=approval, by=reviewer, decision="reject")
    correction.refresh_from_db()
    customer.refresh_from_db()
    assert correction.state == "rejected"
    assert customer.postal_address == ["1 Analytical Row", "London N1 1AA"]


def test_a_correction_with_one_line_is_refused_at_the_field(client, agent, customer):
    client.force_login(agent)
    response = client.post(
        reverse("customer-address", args=[customer.pk]),
        {"postal_address": "Somewhere", "reason": "moved"},
    )
    assert response.status_code == 400
    assert response.context["form"].errors["postal_address"] == [
        "A postal address needs at least two lines (street and postcode)."
    ]

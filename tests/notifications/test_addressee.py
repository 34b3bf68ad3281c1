"""Mis-addressing cannot happen: the addressee of every letter, email, SMS and push comes from the
customer record (the reserved `customer.*` variables), request data made for somebody else is
refused (or held for a reviewer), a print batch only closes when every cover sheet wraps its own
letter, and the demo sends each customer their own documents."""

from __future__ import annotations

import dataclasses
import io
from email.utils import parseaddr

import pypdf
import pytest
from django.core import mail
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.demo import seed_all
from ccm.models import Approval
from documents.bundle import BundleInvalid, read_folder, validate
from documents.demo import LIBRARY
from notifications.channels import printing, push, sms
from notifications.channels.printing import PrintError
from notifications.customers import services as customer_services
from notifications.demo import CUSTOMERS
from notifications.models import Communication, Customer, PrintBatch, PrintItem
from notifications.pipeline import intake, services, tasks
from notifications.pipeline.gate import RELEASE_PURPOSE
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

PROBLEM = "application/problem+json"
SOMEONE_ELSE = {"name": "Mr Daniel Okafor", "address": ["31 Quay Street", "Bristol", "BS1 4DJ"]}


def pdf_text(field) -> list[str]:
    with field.open("rb") as fh:
        return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(fh.read())).pages]


@pytest.fixture
def api(db):
    issued = api_key_create(name="billing", scopes=["communications:read", "communications:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.fixture
def account_letter(author, reviewer):
    """A letter whose data names the customer twice: an account number that must be the
    customer's reference, and the account holder's name."""
    bundle = letter_bundle("account_letter")
    schema = {
        **bundle.schema,
        "required": ["balance", "as_of", "account_number"],
        "properties": {
            **bundle.schema["properties"],
            "account_number": {"type": "string", "x-ccm-identity": "reference"},
            "holder": {"type": "string", "x-ccm-identity": "name"},
        },
    }
    sample = {**bundle.samples["default"], "account_number": "S-1", "holder": "Ada Lovelace"}
    sample["customer"] = {"name": "Ada Lovelace", "reference": "S-1"}
    bundle = dataclasses.replace(bundle, schema=schema, samples={"default": sample})
    return publish(bundle, author=author, reviewer=reviewer)


# --- 1. the addressee comes from the customer record ---------------------------------------


def test_the_letter_and_email_address_the_customer_on_record_not_the_data(
    api, letter, customer, sync_tasks
):
    # given a request whose data carries somebody else's name and address
    data = {"customer": SOMEONE_ELSE, "balance": 12.5, "as_of": "2026-05-01"}
    # when it is requested for Ada Lovelace and sent
    response = sync_tasks(
        api.post,
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": data},
        format="json",
    )
    assert response.status_code == 202
    communication = Communication.objects.get(public_id=response.json()["id"])
    # then the archived letter, the email and its subject greet Ada, never Okafor
    letter_text = "\n".join(pdf_text(communication.document.file))
    assert "Dear Ada Lovelace" in letter_text
    assert "Okafor" not in letter_text
    sent = mail.outbox[0]
    assert sent.subject == "Your balance, Ada Lovelace"
    assert "Hello Ada Lovelace" in sent.body
    assert "Okafor" not in sent.body + sent.subject
    # and the archive records whom the letter was addressed to, from the record
    assert communication.document.data["customer"] == {
        "name": "Ada Lovelace",
        "salutation": "Ada Lovelace",
        "address": ["1 Analytical Row", "London N1 1AA"],
        "reference": "C-1",
        "language": "en",
    }


def test_the_bulk_path_addresses_from_the_record_too(author, reviewer, integrator, sync_tasks):
    # given customers reachable by email and a notice with email and SMS renditions
    publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)
    people = [
        customer_services.customer_upsert(
            external_ref=f"B-{i}",
            name=f"Customer {i}",
            salutation=f"Dear friend {i}",
            emails=[f"c{i}@example.org"],
            by=integrator,
        )[0]
        for i in range(3)
    ]
    data = {
        "customer": {"name": "Mr Daniel Okafor", "salutation": "Mr Okafor"},
        "reference": "DOC-1",
        "document_title": "Your annual statement",
        "document_date": "2026-04-12",
        "portal_url": "https://portal.example/documents/DOC-1",
    }
    # when they are requested in bulk, each with the same (wrong) customer block
    ids = sync_tasks(
        intake.communications_request_bulk,
        template_code="document_ready",
        items=[{"customer": c, "data": data} for c in people],
        client="campaign",
        by=integrator,
    )
    # then each email greets its own customer as the record says
    assert len(mail.outbox) == 3
    for pk, person in zip(ids, people, strict=True):
        rendered = Communication.objects.get(pk=pk).rendered["email"]
        assert person.salutation in rendered["text"]
        assert "Okafor" not in rendered["text"] + rendered["html"] + rendered["subject"]


# --- 3. data made for someone else is refused, or held --------------------------------------


def test_api_refuses_an_account_number_that_is_not_the_customers(
    api, account_letter, customer, sync_tasks
):
    data = {"balance": 12.5, "as_of": "2026-05-01", "account_number": "NW-3310-0457"}
    response = api.post(
        "/api/v1/communications",
        {"template": "account_letter", "customer": "C-1", "data": data},
        format="json",
    )
    assert response.status_code == 422
    assert response["Content-Type"] == PROBLEM
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["data.account_number"]
    assert "data.account_number does not belong to customer C-1" in errors[0]["message"]
    assert not Communication.objects.exists()
    # while the customer's own account number is accepted and sent
    response = sync_tasks(
        api.post,
        "/api/v1/communications",
        {
            "template": "account_letter",
            "customer": "C-1",
            "data": {**data, "account_number": "C-1"},
        },
        format="json",
    )
    assert response.status_code == 202
    assert Communication.objects.get().state == "sent"


def test_bulk_intake_refuses_the_item_made_for_someone_else(account_letter, integrator):
    people = [
        customer_services.customer_upsert(external_ref=f"A-{i}", name=f"Holder {i}", by=integrator)[
            0
        ]
        for i in range(3)
    ]
    items = [
        {"customer": c, "data": {"balance": 1, "as_of": "2026-05-01", "account_number": f"A-{i}"}}
        for i, c in enumerate(people)
    ]
    items[1]["data"] = {**items[1]["data"], "account_number": "A-2", "holder": "Holder 2"}
    with pytest.raises(intake.BulkIntakeError) as excinfo:
        intake.communications_request_bulk(
            template_code="account_letter", items=items, client="c", by=integrator
        )
    assert [
        (p["index"], sorted(e["field"] for e in p["errors"])) for p in excinfo.value.errors
    ] == [(1, ["account_number", "holder"])]
    assert "does not belong to customer A-1" in excinfo.value.errors[0]["errors"][0]["message"]
    assert not Communication.objects.exists()


def test_a_customer_renamed_after_intake_holds_the_letter_for_review(
    account_letter, customer, integrator
):
    # given a request accepted for Ada Lovelace, held by name
    data = {"balance": 1, "as_of": "2026-05-01", "account_number": "C-1", "holder": "Ada Lovelace"}
    communication, _ = services.communication_request(
        template_code="account_letter", customer=customer, data=data, client="t", by=integrator
    )
    # when the customer record changes before composition runs
    Customer.objects.filter(pk=customer.pk).update(name="Ada King")
    tasks.communication_compose(communication.pk)
    tasks.communication_gate(communication.pk)
    # then nothing goes out: it waits for a reviewer, saying why
    communication.refresh_from_db()
    assert communication.state == "awaiting_approval"
    reason = communication.decision_trace[-1]["reason"]
    assert "data.holder does not belong to customer C-1" in reason
    release = Approval.objects.get(purpose=RELEASE_PURPOSE)
    assert "data.holder does not belong" in release.summary
    assert not mail.outbox


# --- 5. a print stream's cover sheets wrap their own letters --------------------------------


def assert_cover_sheets_wrap_their_letters(batch: PrintBatch) -> int:
    """Walk the closed stream page by page: every cover sheet's recipient is the customer on
    record, and the letter that follows is addressed (name and every address line) to the same
    person and names no other customer of the batch. Returns the letters checked."""
    pages = pdf_text(batch.stream)
    items = list(batch.items.select_related("customer").order_by("sequence"))
    names = {item.customer.name for item in items}
    at = 0
    for item in items:
        cover, letter = pages[at], pages[at + 1 : at + 1 + item.pages]
        at += 1 + item.pages
        customer = item.customer
        assert item.recipient_name == customer.name
        assert item.postal_address == customer.postal_address
        assert customer.name in cover, (item.sequence, cover)
        for line in customer.postal_address:
            assert line in cover, (item.sequence, line)
            assert line in letter[0], (item.sequence, line)
        assert customer.name in letter[0], (item.sequence, letter[0])
        for other in names - {customer.name}:
            assert other not in "\n".join(letter), (item.sequence, other)
    assert at == len(pages)
    return len(items)


def test_each_cover_sheet_in_the_stream_wraps_its_own_letter(
    author, reviewer, ops, integrator, sync_tasks
):
    # given final demands and statements for three customers with only a postal address
    demand = publish(read_folder(LIBRARY / "final_demand"), author=author, reviewer=reviewer)
    statement = publish(
        read_folder(LIBRARY / "monthly_statement"), author=author, reviewer=reviewer
    )
    people = [
        ("NW-1000-0001", "Ms Ann Archer", ["1 Abbey Road", "Leeds", "LS1 1AA"]),
        ("NW-1000-0002", "Mr Ben Brook", ["Flat 2", "2 Bridge Street", "York", "YO1 2BB"]),
        ("NW-1000-0003", "Dr Cara Croft", ["3 Castle Hill", "Bath", "BA1 3CC"]),
    ]
    for ref, name, address in people:
        customer, _ = customer_services.customer_upsert(
            external_ref=ref, name=name, postal_address=address, by=integrator
        )
        for version in (demand, statement):
            # the sample (addressed to its sample customer) on this customer's own account
            sample = {**version.content["samples"]["default"], "account_number": ref}
            sync_tasks(
                services.communication_request,
                template_code=version.template.code,
                customer=customer,
                data=sample,
                client="t",
                by=integrator,
            )
    # when operations close the batch
    batch = printing.print_batch_close(batch=PrintBatch.objects.get(state="open"), by=ops)
    # then every cover sheet wraps the letter addressed to the same customer
    assert assert_cover_sheets_wrap_their_letters(batch) == 6


def test_closing_refuses_a_cover_sheet_for_someone_other_than_its_letter(
    letter, integrator, ops, sync_tasks
):
    # given two letters in the open batch
    for ref, name, address in (
        ("P-1", "Ada Lovelace", ["1 Analytical Row", "London N1 1AA"]),
        ("P-2", "Charles Babbage", ["5 Difference Street", "London W1 2BB"]),
    ):
        customer, _ = customer_services.customer_upsert(
            external_ref=ref, name=name, postal_address=address, by=integrator
        )
        sync_tasks(
            services.communication_request,
            template_code="letter",
            customer=customer,
            data={"customer": {"name": name}, "balance": 1, "as_of": "2026-05-01"},
            client="t",
            by=integrator,
        )
    batch = PrintBatch.objects.get(state="open")
    # when the second cover sheet came to name somebody else (a bad join, a bad edit)
    PrintItem.objects.filter(batch=batch, sequence=2).update(recipient_name="Ada Lovelace")
    # then the close is refused, naming the letter, and the batch stays open
    with pytest.raises(PrintError, match=rf"batch-{batch.pk}/2 .*addressed to 'Charles Babbage'"):
        printing.print_batch_close(batch=batch, by=ops)
    batch.refresh_from_db()
    assert batch.state == "open"
    assert not batch.stream


def test_closing_refuses_a_letter_whose_customer_moved_after_it_was_composed(
    letter, integrator, ops, sync_tasks
):
    customer, _ = customer_services.customer_upsert(
        external_ref="P-1",
        name="Ada Lovelace",
        postal_address=["1 Old Road", "Bath"],
        by=integrator,
    )
    # a letter composed for the old address, queued for print as the customer moves
    communication, _ = services.communication_request(
        template_code="letter",
        customer=customer,
        data={"customer": {"name": "Ada Lovelace"}, "balance": 1, "as_of": "2026-05-01"},
        client="t",
        by=integrator,
    )
    tasks.communication_compose(communication.pk)
    customer_services.customer_upsert(
        external_ref="P-1",
        name="Ada Lovelace",
        postal_address=["9 New Road", "Bath"],
        by=integrator,
    )
    # (composition already released it: the letter is handed to print after the move)
    for delivery in communication.deliveries.all():
        sync_tasks(tasks.delivery_dispatch, delivery.pk)
    with pytest.raises(PrintError, match=r"1 Old Road / Bath.*9 New Road / Bath"):
        printing.print_batch_close(batch=PrintBatch.objects.get(state="open"), by=ops)


# --- 4. the demo sends each customer their own documents ------------------------------------


def test_the_demo_sends_every_customer_only_their_own_documents(settings, sync_tasks, admin_user):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    # when the demo is seeded and its tasks run
    sync_tasks(seed_all)
    # then whatever was composed for a customer names them and no other demo customer
    demo = {spec["external_ref"]: spec["name"].split()[-1] for spec in CUSTOMERS}
    communications = Communication.objects.select_related("customer", "document")
    assert communications.count() >= len(demo)
    texts_checked = 0
    for communication in communications:
        ref = communication.customer.external_ref
        others = [
            token for other, surname in demo.items() if other != ref for token in (other, surname)
        ]
        rendered = communication.rendered
        texts: list[str] = []
        if communication.document is not None:
            texts.append("\n".join(pdf_text(communication.document.file)))
        if "email" in rendered:
            texts.append(rendered["email"]["subject"] + rendered["email"]["text"])
            texts.append(rendered["email"]["html"])
        for text in texts:
            assert demo[ref] in text, (communication.pk, communication.template.code)
        for channel in ("sms", "push"):
            if channel in rendered:
                texts.append(" ".join(str(v) for v in rendered[channel].values()))
        for text in texts:
            texts_checked += 1
            for token in others:
                assert token not in text, (communication.pk, communication.template.code, token)
    assert texts_checked >= 10
    # and what went out on the wire is what was composed for them
    to_customers = 0
    for message in mail.outbox:
        owner = Customer.objects.filter(contacts__value=parseaddr(message.to[0])[1]).first()
        if owner is None:
            continue  # staff mail (approvals, alerts)
        to_customers += 1
        assert demo[owner.external_ref] in message.subject + message.body
    assert to_customers >= 3
    assert sms.outbox
    assert push.outbox
    # and the print batch's cover sheets wrap their own letters (Raman's her own final demand)
    batch = printing.print_batch_close(batch=PrintBatch.objects.get(state="open"), by=admin_user)
    assert assert_cover_sheets_wrap_their_letters(batch) >= 1
    assert "Mrs Priya Raman" in {i.recipient_name for i in batch.items.all()}


def test_a_system_made_letter_for_a_renamed_customer_fails_with_the_reason(
    account_letter, customer
):
    # given a request nobody can be asked about (made by the system, e.g. a follow-up)
    data = {"balance": 1, "as_of": "2026-05-01", "account_number": "C-1", "holder": "Ada Lovelace"}
    communication, _ = services.communication_request(
        template_code="account_letter", customer=customer, data=data, client="t", by=None
    )
    Customer.objects.filter(pk=customer.pk).update(name="Ada King")
    # when it is composed
    tasks.communication_compose(communication.pk)
    # then it is not sent: composition failed, naming the field (an exception case for operations)
    communication.refresh_from_db()
    assert communication.state == "compose_failed"
    assert [e["field"] for e in communication.failure_errors] == ["holder"]
    assert "data.holder does not belong to customer C-1" in communication.failure_reason


def test_a_template_whose_sample_names_another_customer_is_not_imported():
    bundle = letter_bundle("account_letter")
    schema = {
        **bundle.schema,
        "properties": {
            **bundle.schema["properties"],
            "account_number": {"type": "string", "x-ccm-identity": "reference"},
            "holder": {"type": "string", "x-ccm-identity": "passport"},
        },
    }
    sample = {**bundle.samples["default"], "account_number": "NW-1"}
    sample["customer"] = {"name": "Ada Lovelace", "reference": "NW-2"}
    bad = dataclasses.replace(bundle, schema=schema, samples={"default": sample})
    with pytest.raises(BundleInvalid) as excinfo:
        validate(bad)
    message = str(excinfo.value)
    assert "schema.json holder: x-ccm-identity must be one of name, address, reference" in message
    assert "samples/default.json account_number: data.account_number does not belong" in message

"""The right to erasure: after a customer's erasure, none of their personal data can be found in
any column of any table, nor in any file in storage (PDFs read with pypdf); a legal hold
refuses it, records kept by law defer it until their retention ends, and every outcome is
audited."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from freezegun import freeze_time
from pypdf import PdfReader

from cases import erasure, retention, services
from cases.models import ErasureState
from ccm.models import AuditEvent
from notifications.customers import services as customer_services
from notifications.models import (
    Communication,
    Customer,
    Delivery,
    WebhookDelivery,
    WebhookSubscription,
)
from notifications.pipeline import services as notifications
from tests.cases.conftest import COMPLAINT_DETAILS
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

NAME = "Zebulon Quuxington"
# Every personal datum of the customer, as it may appear anywhere.
NEEDLES = [
    "Quuxington",
    "Zebulon",
    "zebulon.quux",
    "7911223456",
    "Frobisher",
    "QX9 9QZ",
    "ZQ-99017",
]
DATA = {"customer": {"name": NAME}, "balance": 12.5, "as_of": "2026-05-01"}


def found_in_database() -> list[str]:
    """table.column for every text or JSON column holding one of the needles."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN "
            "('text', 'character varying', 'json', 'jsonb')"
        )
        columns = cursor.fetchall()
        hits = []
        patterns = [f"%{needle}%" for needle in NEEDLES]
        for table, column in columns:
            cursor.execute(
                f'SELECT count(*) FROM "{table}" WHERE "{column}"::text ILIKE ANY(%s)',  # noqa: S608
                [patterns],
            )
            if cursor.fetchone()[0]:
                hits.append(f"{table}.{column}")
    return hits


def found_in_storage() -> list[str]:
    hits = []
    for path in Path(settings.MEDIA_ROOT).rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        text = raw.decode("latin-1")
        if raw.startswith(b"%PDF"):
            text += "".join(page.extract_text() for page in PdfReader(io.BytesIO(raw)).pages)
        if any(needle.lower() in text.lower() for needle in NEEDLES):
            hits.append(str(path.relative_to(settings.MEDIA_ROOT)))
    return hits


@pytest.fixture
def service_letter(author, reviewer):
    return publish(letter_bundle(category="service"), author=author, reviewer=reviewer)


@pytest.fixture
def zebulon(db, admin_user):
    customer, _ = customer_services.customer_upsert(
        external_ref="ZQ-99017",
        name=NAME,
        salutation="Mr Quuxington",
        postal_address=["17 Frobisher Lane", "Dunwich QX9 9QZ"],
        emails=["zebulon.quux@example.org"],
        phones=["07911 223456"],
        by=admin_user,
    )
    Customer.objects.filter(pk=customer.pk).update(attributes={"postcode": "QX9 9QZ"})
    customer.refresh_from_db()
    return customer


@pytest.fixture
def zebulon_everywhere(zebulon, service_letter, agent, sync_tasks, admin_user):
    """The customer's data as the pipeline and the case desk spread it: a sent letter (PDF in
    storage, email with their name, status webhooks naming their reference), a suppressed
    address, a case with a note and an attachment."""
    WebhookSubscription.objects.create(
        client="t", url="https://hooks.example.org/ccm", secret="s", events=["composed", "sent"]
    )
    communication, _ = sync_tasks(
        notifications.communication_request,
        template_code="letter",
        customer=zebulon,
        data=DATA,
        client="t",
        by=admin_user,
    )
    communication.refresh_from_db()
    assert communication.state == "sent", communication.failure_reason
    assert communication.document.file
    customer_services.suppression_add(
        channel="sms", address="+447911223456", reason="manual", detail="Zebulon asked"
    )
    case = services.case_open(
        case_type="complaint",
        subject=f"Complaint from {NAME}",
        description="Mr Quuxington says the letter was late.",
        customer=zebulon,
        details=COMPLAINT_DETAILS,
        by=agent,
    )
    services.case_note_add(case=case, body="Called Zebulon on 07911 223456.", by=agent)
    services.case_attachment_add(
        case=case, file=ContentFile(b"Letter from Zebulon Quuxington", name="z.txt"), by=agent
    )
    return zebulon


def test_after_erasure_no_personal_datum_of_the_customer_is_left(
    zebulon_everywhere, ops, django_capture_on_commit_callbacks
):
    customer = zebulon_everywhere
    # given the customer's data is spread over tables and storage
    assert WebhookDelivery.objects.filter(communication__customer=customer).count() == 2
    assert found_in_database()
    assert found_in_storage()
    # when their erasure is requested
    with django_capture_on_commit_callbacks(execute=True):
        request = erasure.customer_erase(
            customer=customer, by=ops, grounds="Email of 2 May 2026 from the customer"
        )
    # then it is done, and nothing of theirs can be found in the database or in storage
    assert request.state == ErasureState.DONE
    assert found_in_database() == []
    assert found_in_storage() == []
    # and what proves what was sent stays: the rows, their states, the document's hash
    communication = Communication.objects.get(customer=customer)
    assert communication.state == "sent"
    assert communication.document.sha256
    assert Delivery.objects.filter(communication=communication, state="sent").exists()
    # and the erasure is audited with what it erased
    event = AuditEvent.objects.get(action="erasure.done")
    assert event.after["erased"]["documents"] == 1
    assert event.after["erased"]["contact_points"] == 2


def test_a_legal_hold_refuses_erasure_with_its_reason(zebulon, ops, admin_user):
    retention.legal_hold_place(customer=zebulon, reason="Ombudsman case 44", by=admin_user)
    request = erasure.customer_erase(customer=zebulon, by=ops, grounds="Letter of 3 May")
    assert request.state == ErasureState.REFUSED
    assert "Ombudsman case 44" in request.reason
    zebulon.refresh_from_db()
    assert zebulon.name == NAME
    assert AuditEvent.objects.filter(action="erasure.refused").count() == 1


def test_records_kept_by_law_defer_erasure_until_their_retention_ends(
    zebulon, letter, sync_tasks, ops, admin_user, django_capture_on_commit_callbacks
):
    # given a transactional letter sent today (kept seven years)
    sync_tasks(
        notifications.communication_request,
        template_code="letter",
        customer=zebulon,
        data=DATA,
        client="t",
        by=admin_user,
    )
    # when erasure is requested
    request = erasure.customer_erase(customer=zebulon, by=ops, grounds="Letter of 3 May")
    # then it is deferred to the day the letter's retention ends, with the reason
    assert request.state == ErasureState.DEFERRED
    sent = Communication.objects.get(customer=zebulon).created_at
    assert request.due_at == sent + timedelta(days=settings.CCM_RETENTION_DAYS["transactional"])
    assert "within their retention" in request.reason
    zebulon.refresh_from_db()
    assert zebulon.name == NAME
    # and the daily task carries it out when that day has come, not before
    assert erasure.erasures_due_run() == []
    with (
        freeze_time(request.due_at + timedelta(hours=1)),
        django_capture_on_commit_callbacks(execute=True),
    ):
        [done] = erasure.erasures_due_run()
    assert done.state == ErasureState.DONE
    zebulon.refresh_from_db()
    assert zebulon.name == erasure.ERASED_NAME
    assert found_in_storage() == []


def test_the_api_erases_defers_or_refuses_with_the_reason(zebulon, admin_user):
    from rest_framework.test import APIClient

    from ccm.api.auth import api_key_create

    issued = api_key_create(name="crm", scopes=["customers:write"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    url = "/api/v1/customers/ZQ-99017/erasure"
    # a request without grounds says what to give
    missing = api.post(url, {}, format="json")
    assert missing.status_code == 400
    assert "grounds" in missing.json()["errors"][0]["field"]
    # a legal hold refuses it: 409 with the hold's reason
    hold = retention.legal_hold_place(customer=zebulon, reason="Ombudsman case 44", by=admin_user)
    refused = api.post(url, {"grounds": "Call of 4 May"}, format="json")
    assert refused.status_code == 409
    assert "Ombudsman case 44" in refused.json()["detail"]
    # once released, it is done: 200 with what was erased
    retention.legal_hold_release(hold=hold, by=admin_user)
    done = api.post(url, {"grounds": "Call of 4 May"}, format="json")
    assert done.status_code == 200, done.json()
    assert done.json()["state"] == "done"
    assert done.json()["erased"]["contact_points"] == 2
    # and the customer's reference is gone with the rest
    assert api.post(url, {"grounds": "again"}, format="json").status_code == 404


def test_the_command_erases_a_customer(zebulon, capsys):
    from django.core.management import call_command

    call_command("erase_customer", "ZQ-99017", "--grounds", "Letter of 5 May")
    assert "erased (" in capsys.readouterr().out
    zebulon.refresh_from_db()
    assert (zebulon.name, zebulon.external_ref) == (erasure.ERASED_NAME, f"erased-{zebulon.pk}")

"""The print channel end to end: letters join the open batch, the batch is closed into one print
stream (cover sheet + archived document per letter) with a manifest, handed over, mailed, and
letters come back."""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import tempfile
import threading
from collections.abc import Iterator

import pypdf
import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection, connections, transaction
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.models import AuditEvent
from documents import services as documents
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications import signals
from notifications.channels import PermanentSendError, TransientSendError, printing, printstream
from notifications.channels.print import PrintBackend
from notifications.channels.printing import PrintError
from notifications.channels.printstream import PdfStreamWriter
from notifications.customers import services as customer_services
from notifications.models import (
    Communication,
    CommunicationStep,
    Customer,
    Delivery,
    DeliveryEvent,
    PrintBatch,
    PrintItem,
)
from notifications.pipeline import services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)"
)

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
ADDRESSES = {
    "P-1": ("Ada Lovelace", ["1 Analytical Row", "London N1 1AA"]),
    "P-2": ("Charles Babbage", ["Flat 2", "5 Difference Street", "Marylebone", "London W1 2BB"]),
}


def postal_customer(ref: str, by) -> Customer:
    name, lines = ADDRESSES[ref]
    customer, _ = customer_services.customer_upsert(
        external_ref=ref, name=name, postal_address=lines, by=by
    )
    return customer


@pytest.fixture
def postal_customers(admin_user):
    """Customers with a postal address and nothing else: print is their only channel."""
    return [postal_customer(ref, admin_user) for ref in ADDRESSES]


def send_letter(sync_tasks, customer, by, *, template="letter", data=None) -> Communication:
    communication, _ = sync_tasks(
        services.communication_request,
        template_code=template,
        customer=customer,
        data=data or {**DATA, "customer": {"name": customer.name}},
        client="test",
        by=by,
    )
    communication.refresh_from_db()
    return communication


@pytest.fixture
def letters(letter, postal_customers, integrator, sync_tasks):
    return [send_letter(sync_tasks, c, integrator) for c in postal_customers]


@pytest.fixture
def delivery_failed():
    received: list[tuple[int, str]] = []

    def receiver(sender, delivery, reason, **kwargs):
        received.append((delivery.pk, reason))

    signals.delivery_failed.connect(receiver)
    yield received
    signals.delivery_failed.disconnect(receiver)


def open_batch() -> PrintBatch:
    return PrintBatch.objects.get(state="open")


def stored_bytes(field) -> bytes:
    with field.open("rb") as fh:
        return fh.read()


def stream_of(batch: PrintBatch) -> pypdf.PdfReader:
    # strict: a wrong cross-reference offset or a broken object fails the test
    return pypdf.PdfReader(io.BytesIO(stored_bytes(batch.stream)), strict=True)


def manifest_of(batch: PrintBatch) -> list[dict]:
    return list(csv.DictReader(io.StringIO(stored_bytes(batch.manifest).decode("utf-8"))))


# --- letters join the open batch -------------------------------------------------------------


def test_postal_only_customers_go_into_the_open_batch(letters):
    # then each communication was sent on print into the one open batch, in order
    batch = open_batch()
    items = list(batch.items.order_by("sequence"))
    assert [i.sequence for i in items] == [1, 2]
    for communication, item in zip(letters, items, strict=True):
        delivery = communication.deliveries.get()
        assert communication.state == "sent"
        assert (delivery.channel, delivery.state, delivery.provider) == ("print", "sent", "print")
        assert delivery.provider_message_id == f"batch-{batch.pk}/{item.sequence}"
        assert delivery.meta == {"print_batch": batch.pk, "print_sequence": item.sequence}
        assert item.delivery == delivery
        assert item.document == communication.document
        assert item.document_sha256 == communication.document.sha256
        assert item.pages == communication.document.page_count
        assert (item.recipient_name, item.postal_address) == ADDRESSES[item.customer.external_ref]
    assert batch.item_count == 2
    assert AuditEvent.objects.filter(action="print_item.added").count() == 2


def test_monthly_statement_goes_end_to_end_into_the_stream(
    author, reviewer, ops, postal_customers, integrator, sync_tasks
):
    # given the library's monthly statement, which has a print rendition
    version = publish(read_folder(LIBRARY / "monthly_statement"), author=author, reviewer=reviewer)
    sample = version.content["samples"]["default"]
    # (the statement's account number names its customer: Babbage's account here)
    customer, _ = customer_services.customer_upsert(
        external_ref=sample["account_number"],
        name="Charles Babbage",
        postal_address=ADDRESSES["P-2"][1],
        by=integrator,
    )
    # when
    communication = send_letter(
        sync_tasks, customer, integrator, template="monthly_statement", data=sample
    )
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    # then the stream is the cover sheet and the statement as archived
    stream = stream_of(batch)
    assert communication.state == "sent"
    assert len(stream.pages) == 1 + communication.document.page_count == batch.page_count
    cover = stream.pages[0].extract_text()
    assert "Charles Babbage" in cover
    assert "5 Difference Street" in cover
    letter = stream.pages[1].extract_text()
    assert sample["reference"] in letter
    # and the statement inside is addressed from the customer record, not the sample's data
    assert "Charles Babbage" in letter
    assert sample["customer"]["name"] not in letter


def test_the_backend_called_twice_for_one_delivery_makes_one_item(letters):
    # given a delivery already in the batch (e.g. re-sent after a crash)
    delivery = letters[0].deliveries.get()
    backend = PrintBackend()
    # when
    again = backend.send(delivery)
    # then
    assert again == delivery.provider_message_id
    assert PrintItem.objects.filter(delivery=delivery).count() == 1
    assert open_batch().item_count == 2
    assert backend.lookup(delivery) == delivery.provider_message_id


def test_a_crash_after_joining_is_reconciled_without_a_second_item(letters, settings):
    # given a worker that died after the letter joined the batch, before marking it sent
    settings.CCM_SENDING_STALE_AFTER_S = 0
    delivery = letters[0].deliveries.get()
    Delivery.objects.filter(pk=delivery.pk).update(state="sending", provider_message_id="")
    # when the sweeper's reconcile asks the print channel
    outcome = services.delivery_reconcile_run(delivery.pk)
    # then it finds the letter in the batch and records it as sent
    delivery.refresh_from_db()
    assert outcome.state == "sent"
    assert delivery.provider_message_id == f"batch-{open_batch().pk}/1"
    assert PrintItem.objects.count() == 2


def test_lookup_of_a_letter_not_in_any_batch_is_none(letters):
    delivery = letters[0].deliveries.get()
    other = Delivery.objects.create(
        communication=delivery.communication, channel="print", message_id="<other@test>"
    )
    assert PrintBackend().lookup(other) is None


def test_a_communication_without_a_document_fails_with_the_reason(letters, sync_tasks):
    # given a print delivery whose communication has no archived document
    communication = letters[0]
    Communication.objects.filter(pk=communication.pk).update(document=None)
    delivery = Delivery.objects.create(
        communication=communication, channel="print", message_id="<no-doc@test>"
    )
    # when
    outcome = sync_tasks(services.delivery_dispatch_run, delivery.pk)
    # then
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert "has no archived document to print" in delivery.last_error
    assert outcome.detail == delivery.last_error
    with pytest.raises(PermanentSendError, match="no archived document"):
        PrintBackend().send(delivery)


def test_an_invalid_postal_address_is_not_printed(letters):
    communication = letters[0]
    Customer.objects.filter(pk=communication.customer_id).update(postal_address_valid=False)
    delivery = Delivery.objects.create(
        communication=communication, channel="print", message_id="<bad-address@test>"
    )
    with pytest.raises(PermanentSendError, match="is marked invalid"):
        PrintBackend().send(delivery)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_letters_open_one_batch_with_distinct_sequences(author, reviewer, admin_user):
    # given six print deliveries and no open batch
    version = publish(letter_bundle(), author=author, reviewer=reviewer)
    document = documents.document_compose(version=version, data=DATA)
    customer = postal_customer("P-1", admin_user)
    deliveries = []
    for n in range(6):
        communication = Communication.objects.create(
            customer=customer,
            template=version.template,
            template_version=version,
            data=DATA,
            category="transactional",
            client="test",
            document=document,
        )
        deliveries.append(
            Delivery.objects.create(
                communication=communication, channel="print", message_id=f"<c{n}@test>"
            )
        )
    barrier = threading.Barrier(len(deliveries))
    errors: list[BaseException] = []

    def join(delivery):
        try:
            barrier.wait()
            printing.print_item_add(delivery=delivery)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=join, args=(d,)) for d in deliveries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then
    assert errors == []
    assert PrintBatch.objects.count() == 1
    batch = PrintBatch.objects.get()
    assert sorted(batch.items.values_list("sequence", flat=True)) == [1, 2, 3, 4, 5, 6]
    assert batch.item_count == 6


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_letter_waiting_for_a_closing_batch_is_retried_later(
    author, reviewer, admin_user, monkeypatch
):
    # given an open batch whose row a close is holding
    monkeypatch.setattr(printing, "JOIN_LOCK_TIMEOUT", "200ms")
    version = publish(letter_bundle(), author=author, reviewer=reviewer)
    communication = Communication.objects.create(
        customer=postal_customer("P-1", admin_user),
        template=version.template,
        template_version=version,
        data=DATA,
        category="transactional",
        client="test",
        document=documents.document_compose(version=version, data=DATA),
    )
    delivery = Delivery.objects.create(
        communication=communication, channel="print", message_id="<busy@test>"
    )
    batch = PrintBatch.objects.create()
    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                PrintBatch.objects.select_for_update().get(pk=batch.pk)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(10)
    # when the letter tries to join
    try:
        with pytest.raises(TransientSendError, match="being closed"):
            PrintBackend().send(delivery)
    finally:
        release.set()
        holder.join()
    # then nothing joined, and once the close is done it joins
    assert not PrintItem.objects.exists()
    assert PrintBackend().send(delivery) == f"batch-{batch.pk}/1"


# --- closing: the print stream and the manifest ------------------------------------------------


def test_closing_produces_one_stream_of_cover_sheets_and_documents(letters, ops):
    # when
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    # then the stream holds, per letter in sequence, a cover sheet then the archived document
    batch.refresh_from_db()
    stream = stream_of(batch)
    pages = [c.document.page_count for c in letters]
    assert len(stream.pages) == sum(1 + p for p in pages) == batch.page_count
    assert batch.state == "closed"
    assert (batch.closed_by, batch.closed_at is not None) == (ops, True)
    first_cover = stream.pages[0].extract_text()
    second_cover = stream.pages[1 + pages[0]].extract_text()
    for text, ref in ((first_cover, "P-1"), (second_cover, "P-2")):
        name, lines = ADDRESSES[ref]
        assert name in text
        for line in lines:
            assert line in text
    assert f"batch-{batch.pk} / 1" in first_cover
    assert f"batch-{batch.pk} / 2" in second_cover
    # the document pages are the archived document's pages
    archived = pypdf.PdfReader(io.BytesIO(stored_bytes(letters[0].document.file)))
    assert stream.pages[1].extract_text() == archived.pages[0].extract_text()
    assert "Dear Ada Lovelace" in stream.pages[1].extract_text()
    assert hashlib.sha256(stored_bytes(batch.stream)).hexdigest() == batch.stream_sha256
    closed = AuditEvent.objects.get(action="print_batch.closed")
    assert (closed.actor, closed.after["stream_sha256"]) == (ops, batch.stream_sha256)


def test_the_cover_sheet_shows_the_address_in_the_envelope_window(letters, ops):
    # when
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    cover = stream_of(batch).pages[0]
    # then name and address sit in the DL/C5 window: 20-108 mm from the left, 45-83 mm down
    placed: dict[str, tuple[float, float]] = {}

    def visit(text, cm, tm, font, size):
        x_pt, y_pt = tm[4] * cm[0] + cm[4], tm[5] * cm[3] + cm[5]
        height = float(cover.mediabox.height)
        placed[text.strip()] = (round(x_pt / 72 * 25.4, 1), round((height - y_pt) / 72 * 25.4, 1))

    cover.extract_text(visitor_text=visit)
    name, lines = ADDRESSES["P-1"]
    for text in (name, *lines):
        left, down = placed[text]
        assert 20 <= left <= 108, (text, left)
        assert 45 <= down <= 83, (text, down)
    assert placed[f"batch-{batch.pk} / 1"][1] > 83  # the run details stay out of the window


def test_the_manifest_lists_every_letter(letters, ops):
    # when
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    # then
    rows = manifest_of(batch)
    assert hashlib.sha256(stored_bytes(batch.manifest)).hexdigest() == batch.manifest_sha256
    assert [r["sequence"] for r in rows] == ["1", "2"]
    first_page = 1
    for row, communication in zip(rows, letters, strict=True):
        name, lines = ADDRESSES[row["customer_reference"]]
        document = communication.document
        assert row["customer_name"] == name
        assert [row[f"address_line_{n}"] for n in range(1, 5)] == lines + [""] * (4 - len(lines))
        assert row["pages"] == str(document.page_count)
        assert row["document_sha256"] == document.sha256
        assert row["document_sha256"] == hashlib.sha256(stored_bytes(document.file)).hexdigest()
        assert row["stream_first_page"] == str(first_page)
        first_page += 1 + document.page_count


def test_a_tampered_archived_document_refuses_the_close(letters, ops):
    # given the second letter's archived file changed after archiving
    document = letters[1].document
    path = document.file.path
    with open(path, "r+b") as fh:
        fh.seek(-20, io.SEEK_END)
        fh.write(b"% tampered          ")
    batch = open_batch()
    # when
    with pytest.raises(PrintError) as refused:
        printing.print_batch_close(batch=batch, by=ops)
    # then the error names the item, and the batch stays open without a stream
    assert refused.value.code == "document_mismatch"
    assert f"batch-{batch.pk}/2 (Charles Babbage, document {document.pk})" in str(refused.value)
    assert "does not match its recorded SHA-256" in str(refused.value)
    batch.refresh_from_db()
    assert (batch.state, batch.stream.name, batch.stream_sha256) == ("open", "", "")
    alarm = AuditEvent.objects.get(action="print_batch.close_refused")
    assert "does not match" in alarm.after["reason"]


def test_an_empty_batch_is_not_closed(db, ops):
    batch = PrintBatch.objects.create()
    with pytest.raises(PrintError, match="has no letters; there is nothing to print"):
        printing.print_batch_close(batch=batch, by=ops)
    batch.refresh_from_db()
    assert batch.state == "open"


def test_letters_sent_after_the_close_open_the_next_batch(letters, ops, integrator, sync_tasks):
    closed = printing.print_batch_close(batch=open_batch(), by=ops)
    later = send_letter(sync_tasks, letters[0].customer, integrator)
    nxt = open_batch()
    assert nxt.pk != closed.pk
    assert later.deliveries.get().provider_message_id == f"batch-{nxt.pk}/1"


def test_only_operations_close_and_hand_over(letters, agent, integrator, ops):
    batch = open_batch()
    for user in (agent, integrator):
        with pytest.raises(PermissionDenied, match="close_printbatch"):
            printing.print_batch_close(batch=batch, by=user)
    printing.print_batch_close(batch=batch, by=ops)
    with pytest.raises(PermissionDenied, match="hand_over_printbatch"):
        printing.print_batch_hand_over(batch=batch, by=integrator)


def test_steps_out_of_order_are_refused(letters, ops):
    batch = open_batch()
    with pytest.raises(PrintError, match="is open; only a batch that is closed can be handed"):
        printing.print_batch_hand_over(batch=batch, by=ops)
    with pytest.raises(PrintError, match="only a batch that is handed over can be marked mailed"):
        printing.print_batch_mark_mailed(batch=batch, by=ops)
    printing.print_batch_close(batch=batch, by=ops)
    with pytest.raises(PrintError, match="is closed; only a batch that is open can be closed"):
        printing.print_batch_close(batch=batch, by=ops)


# --- handed over, mailed, returned ----------------------------------------------------------


@pytest.fixture
def handed_over(letters, ops):
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    return printing.print_batch_hand_over(batch=batch, by=ops)


def test_mailed_batch_delivers_its_letters(handed_over, letters, ops, sync_tasks):
    # when
    batch = sync_tasks(printing.print_batch_mark_mailed, batch=handed_over, by=ops)
    # then every delivery and communication is delivered, through one event per letter
    batch.refresh_from_db()
    assert (batch.state, batch.handed_over_by, batch.mailed_by) == ("mailed", ops, ops)
    for communication in letters:
        communication.refresh_from_db()
        delivery = communication.deliveries.get()
        assert communication.state == "delivered"
        assert delivery.state == "delivered"
        assert delivery.delivered_at == batch.mailed_at
        event = delivery.events.get()
        assert (event.provider, event.event_type) == ("print", "delivered")
        assert event.event_id == f"{delivery.provider_message_id}/mailed"
        assert event.processed_at is not None
    assert CommunicationStep.objects.filter(action="delivery.delivered").count() == 2


def test_returned_mail_bounces_and_invalidates_the_address(
    handed_over, letters, ops, sync_tasks, delivery_failed
):
    # given the batch mailed, then the first letter comes back
    sync_tasks(printing.print_batch_mark_mailed, batch=handed_over, by=ops)
    item = PrintItem.objects.get(batch=handed_over, sequence=1)
    # when
    sync_tasks(printing.print_item_return, item=item, reason="addressee gone away", by=ops)
    # then
    item.refresh_from_db()
    delivery = item.delivery
    delivery.refresh_from_db()
    assert (item.return_reason, item.returned_by) == ("addressee gone away", ops)
    assert item.returned_at is not None
    assert delivery.state == "bounced"
    assert "addressee gone away" in delivery.last_error
    assert Customer.objects.get(pk=item.customer_id).postal_address_valid is False
    assert delivery_failed == [(delivery.pk, "returned mail: addressee gone away")]
    event = delivery.events.get(event_type="bounced")
    assert (event.provider, event.hard) == ("print", True)
    assert AuditEvent.objects.filter(action="customer.postal_address_invalidated").exists()
    # the other letter is untouched
    other = PrintItem.objects.get(batch=handed_over, sequence=2).delivery
    assert other.state == "delivered"


def test_mail_returned_before_the_batch_is_marked_mailed_stays_bounced(
    handed_over, ops, sync_tasks
):
    item = PrintItem.objects.get(batch=handed_over, sequence=2)
    sync_tasks(printing.print_item_return, item=item, reason="refused", by=ops)
    sync_tasks(printing.print_batch_mark_mailed, batch=handed_over, by=ops)
    item.delivery.refresh_from_db()
    assert item.delivery.state == "bounced"
    assert not item.delivery.events.filter(event_type="delivered").exists()


def test_a_return_is_recorded_once_and_only_after_hand_over(letters, ops, sync_tasks):
    item = PrintItem.objects.get(sequence=1)
    with pytest.raises(PrintError, match="only letters handed over to the mail house"):
        printing.print_item_return(item=item, reason="gone away", by=ops)
    batch = printing.print_batch_close(batch=item.batch, by=ops)
    printing.print_batch_hand_over(batch=batch, by=ops)
    with pytest.raises(PrintError, match="Say why the letter came back"):
        printing.print_item_return(item=item, reason="  ", by=ops)
    sync_tasks(printing.print_item_return, item=item, reason="gone away", by=ops)
    with pytest.raises(PrintError, match="already recorded as returned"):
        printing.print_item_return(item=item, reason="again", by=ops)
    assert DeliveryEvent.objects.filter(event_type="bounced").count() == 1


def test_a_return_after_the_customer_moved_keeps_the_new_address(
    handed_over, ops, sync_tasks, admin_user
):
    # given the customer gave a new address after the letter went out
    item = PrintItem.objects.get(batch=handed_over, sequence=1)
    customer_services.customer_upsert(
        external_ref="P-1",
        name="Ada Lovelace",
        postal_address=["9 New Road", "Bath"],
        by=admin_user,
    )
    # when the letter to the old address comes back
    sync_tasks(printing.print_item_return, item=item, reason="gone away", by=ops)
    # then the delivery bounced, but the new address is still good
    item.delivery.refresh_from_db()
    assert item.delivery.state == "bounced"
    assert Customer.objects.get(pk=item.customer_id).postal_address_valid is True


# --- the stream writer ----------------------------------------------------------------------


def _is_pdf_object(candidate) -> bool:
    try:
        return isinstance(candidate, pypdf.generic.PdfObject)
    except ReferenceError:  # a weak proxy whose object is gone: not held, then
        return False


def test_the_stream_writer_keeps_no_document_once_written(letter):
    # given an archived letter, appended many times as a batch of thousands would be
    data = stored_bytes(documents.document_compose(version=letter, data=DATA).file)
    archived = pypdf.PdfReader(io.BytesIO(data))
    copies = 150
    gc.collect()
    # Other tests' objects may still be alive; count only what this test adds.
    before = sum(_is_pdf_object(o) for o in gc.get_objects())
    with tempfile.TemporaryFile() as out:
        # when
        writer = PdfStreamWriter(out)
        for _ in range(copies):
            writer.source(pypdf.PdfReader(io.BytesIO(data))).add_pages()
        # then nothing of the documents written is still held (pypdf's own PdfWriter would hold
        # every page until the end); what stays alive is the table of object offsets
        gc.collect()
        held = sum(_is_pdf_object(o) for o in gc.get_objects()) - before
        writer.finish(title="test", seed=b"test")
        out.seek(0)
        merged = pypdf.PdfReader(out, strict=True)
        assert len(merged.pages) == copies * len(archived.pages)
        assert merged.pages[-1].extract_text() == archived.pages[-1].extract_text()
        assert out.seek(0, io.SEEK_END) >= copies * len(data) * 0.9
    assert held < 200, held


def test_the_manifest_never_carries_a_spreadsheet_formula(
    letter, postal_customers, integrator, sync_tasks, ops
):
    # given a customer whose name and address were typed to run as formulas in Excel
    customer, _ = customer_services.customer_upsert(
        external_ref=postal_customers[0].external_ref,
        name='=HYPERLINK("http://evil.example","click")',
        postal_address=["+44 1 Main Street", "@SUM(A1:A9)", "London N1 1AA"],
        by=integrator,
    )
    send_letter(sync_tasks, customer, integrator)
    # when
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    # then every such cell is text
    row = manifest_of(batch)[0]
    assert row["customer_name"] == '\'=HYPERLINK("http://evil.example","click")'
    assert row["address_line_1"] == "'+44 1 Main Street"
    assert row["address_line_2"] == "'@SUM(A1:A9)"
    assert row["address_line_3"] == "London N1 1AA"


# --- the API -------------------------------------------------------------------------------

PROBLEM = "application/problem+json"


def api_client(*scopes: str) -> APIClient:
    name = "-".join(scope.replace(":", "-") for scope in scopes)
    issued = api_key_create(name=f"key-{name}", scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.fixture
def mail_house(db):
    return api_client("print")


@pytest.fixture
def ops_api(ops):
    client = APIClient()
    client.force_authenticate(ops)
    return client


def test_api_needs_the_print_scope(letters, mail_house):
    without = api_client("communications:read")
    refused = without.get("/api/v1/print-batches")
    assert refused.status_code == 403
    assert refused["Content-Type"] == PROBLEM
    assert "print" in refused.json()["detail"]
    listed = mail_house.get("/api/v1/print-batches?state=open")
    assert listed.status_code == 200
    [batch] = listed.json()["results"]
    assert (batch["reference"], batch["state"], batch["item_count"]) == (
        f"batch-{open_batch().pk}",
        "open",
        2,
    )
    assert batch["stream_url"] is None


def test_api_close_is_for_operations_and_downloads_the_files(letters, mail_house, ops_api):
    batch = open_batch()
    # an API key is not operations
    refused = mail_house.post(f"/api/v1/print-batches/{batch.pk}/close")
    assert refused.status_code == 403
    assert "close_printbatch" in refused.json()["detail"]
    not_yet = mail_house.get(f"/api/v1/print-batches/{batch.pk}/stream")
    assert not_yet.status_code == 404
    assert "produced when it is closed" in not_yet.json()["detail"]
    # operations close it
    closed = ops_api.post(f"/api/v1/print-batches/{batch.pk}/close")
    assert closed.status_code == 200
    assert (closed.json()["state"], closed.json()["closed_by"]) == ("closed", "otto")
    # the mail house downloads both files
    batch.refresh_from_db()
    stream = mail_house.get(closed.json()["stream_url"])
    assert stream.status_code == 200
    assert stream["Content-Type"] == "application/pdf"
    body = b"".join(stream.streaming_content)
    assert hashlib.sha256(body).hexdigest() == stream["X-Content-SHA256"] == batch.stream_sha256
    assert len(pypdf.PdfReader(io.BytesIO(body)).pages) == batch.page_count
    manifest = mail_house.get(f"/api/v1/print-batches/{batch.pk}/manifest")
    assert manifest["Content-Type"] == "text/csv; charset=utf-8"
    assert f'filename="batch-{batch.pk}-manifest.csv"' in manifest["Content-Disposition"]
    text = b"".join(manifest.streaming_content).decode()
    assert text.startswith("sequence,customer_reference,customer_name,address_line_1")
    assert api_client("me:read").get(f"/api/v1/print-batches/{batch.pk}/stream").status_code == 403


def test_api_mailed_and_returned_by_the_mail_house(letters, mail_house, ops_api, sync_tasks):
    batch = open_batch()
    ops_api.post(f"/api/v1/print-batches/{batch.pk}/close")
    early = mail_house.post(f"/api/v1/print-batches/{batch.pk}/mailed")
    assert early.status_code == 409
    assert "only a batch that is handed over" in early.json()["detail"]
    assert ops_api.post(f"/api/v1/print-batches/{batch.pk}/hand-over").status_code == 200
    # when the mail house reports the batch mailed, then a letter returned
    mailed = sync_tasks(mail_house.post, f"/api/v1/print-batches/{batch.pk}/mailed")
    found = mail_house.get(f"/api/v1/print-batches/{batch.pk}/items?sequence=2").json()
    [item] = found["results"]
    no_reason = mail_house.post(f"/api/v1/print-items/{item['id']}/return", {}, format="json")
    returned = sync_tasks(
        mail_house.post,
        f"/api/v1/print-items/{item['id']}/return",
        {"reason": "addressee unknown"},
        format="json",
    )
    again = mail_house.post(
        f"/api/v1/print-items/{item['id']}/return", {"reason": "again"}, format="json"
    )
    # then
    assert mailed.status_code == 200
    assert mailed.json()["mailed_by"].startswith("api:")
    assert no_reason.status_code == 400
    assert no_reason.json()["errors"][0]["field"] == "reason"
    assert returned.status_code == 200
    assert returned.json()["reference"] == f"batch-{batch.pk}/2"
    assert returned.json()["return_reason"] == "addressee unknown"
    assert Delivery.objects.get(pk=item["delivery"]).state == "bounced"
    assert again.status_code == 409
    assert Customer.objects.get(external_ref="P-2").postal_address_valid is False
    assert Communication.objects.get(pk=letters[0].pk).state == "delivered"


def test_api_close_refused_for_a_tampered_document_names_the_item(letters, ops_api):
    document = letters[0].document
    with open(document.file.path, "ab") as fh:
        fh.write(b"\n% appended\n")
    batch = open_batch()
    response = ops_api.post(f"/api/v1/print-batches/{batch.pk}/close")
    assert response.status_code == 422
    assert response["Content-Type"] == PROBLEM
    assert response.json()["type"].endswith("/document-mismatch")
    assert f"batch-{batch.pk}/1 (Ada Lovelace" in response.json()["detail"]


# --- the back-office ------------------------------------------------------------------------


def admin_action(client, action: str, batch: PrintBatch):
    return client.post(
        "/admin/notifications/printbatch/",
        {"action": action, "index": 0, "_selected_action": [batch.pk], "confirmed": "yes"},
        follow=True,
    )


def test_operations_run_a_batch_from_the_back_office(letters, ops, client, sync_tasks):
    # given
    client.force_login(ops)
    batch = open_batch()
    page = client.get(f"/admin/notifications/printbatch/{batch.pk}/change/").content.decode()
    assert "Charles Babbage" in page  # the letters inline
    # when ops close, hand over and mark the batch mailed
    closed = admin_action(client, "close", batch)
    assert f"Closed batch-{batch.pk}." in closed.content.decode()
    admin_action(client, "hand_over", batch)
    sync_tasks(admin_action, client, "mark_mailed", batch)
    # then
    batch.refresh_from_db()
    assert (batch.state, batch.mailed_by) == ("mailed", ops)
    assert {c.deliveries.get().state for c in letters} == {"delivered"}
    stream = client.get(f"/admin/notifications/printbatch/{batch.pk}/stream.pdf")
    assert stream["Content-Type"] == "application/pdf"
    assert hashlib.sha256(b"".join(stream.streaming_content)).hexdigest() == batch.stream_sha256
    manifest = client.get(f"/admin/notifications/printbatch/{batch.pk}/manifest.csv")
    assert manifest["Content-Type"] == "text/csv; charset=utf-8"
    assert b"Charles Babbage" in b"".join(manifest.streaming_content)


def test_marking_a_batch_mailed_asks_first(letters, ops, client):
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    printing.print_batch_hand_over(batch=batch, by=ops)
    client.force_login(ops)
    # a click on "Go" alone shows what would happen and changes nothing
    asked = client.post(
        "/admin/notifications/printbatch/",
        {"action": "mark_mailed", "index": 0, "_selected_action": [batch.pk]},
    )
    page = asked.content.decode()
    assert "recorded as posted to its customer" in page
    assert "This cannot be undone" in page
    batch.refresh_from_db()
    assert batch.state == "handed_over"


def test_back_office_action_errors_are_shown(letters, ops, agent, client):
    batch = open_batch()
    client.force_login(ops)
    refused = admin_action(client, "hand_over", batch)
    assert f"Could not hand over batch-{batch.pk}: batch-{batch.pk} is open" in (
        refused.content.decode()
    )
    # an agent cannot see the batches, let alone close one
    client.force_login(agent)
    assert client.get("/admin/notifications/printbatch/").status_code == 403
    assert client.get(f"/admin/notifications/printbatch/{batch.pk}/stream.pdf").status_code == 403
    batch.refresh_from_db()
    assert batch.state == "open"


def test_downloads_are_for_staff_only(letters, ops, client, django_user_model):
    batch = printing.print_batch_close(batch=open_batch(), by=ops)
    outsider = django_user_model.objects.create_user(username="eve", password="x")
    client.force_login(outsider)
    response = client.get(f"/admin/notifications/printbatch/{batch.pk}/stream.pdf")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_returned_mail_is_recorded_by_the_cover_sheet_reference(
    handed_over, ops, client, sync_tasks
):
    client.force_login(ops)
    listing = client.get("/admin/notifications/printbatch/").content.decode()
    assert "Record returned mail" in listing
    unknown = client.post(
        "/admin/notifications/printbatch/return/",
        {"reference": f"batch-{handed_over.pk}/99", "reason": "gone away"},
    )
    assert "check the cover sheet" in unknown.content.decode()
    response = sync_tasks(
        client.post,
        "/admin/notifications/printbatch/return/",
        {"reference": f"batch-{handed_over.pk}/2", "reason": "gone away"},
        follow=True,
    )
    assert f"Recorded batch-{handed_over.pk}/2 (Charles Babbage) as returned" in (
        response.content.decode()
    )
    item = PrintItem.objects.get(batch=handed_over, sequence=2)
    assert (item.return_reason, item.returned_by) == ("gone away", ops)
    item.delivery.refresh_from_db()
    assert item.delivery.state == "bounced"


# --- the close's progress, seen by others while it runs ----------------------------------------


def _published_elsewhere(key: str):
    """The close's progress row as another connection (another process) reads it."""
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT done, total FROM notifications_workprogress WHERE key = %s", [key]
            )
            return cursor.fetchone()
    finally:
        other.close()


@pytest.fixture
def progress_rows_cleaned():
    """Progress is committed through a connection of its own: the test's rollback misses it."""
    yield
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("DELETE FROM notifications_workprogress")
    finally:
        other.close()


@postgres_only
def test_closing_a_batch_shows_its_progress_to_others_while_it_runs(
    letters, ops, monkeypatch, progress_rows_cleaned
):
    from notifications.channels import printstream
    from notifications.progress import work_in_progress

    monkeypatch.setattr(printstream, "COVER_CHUNK", 1)
    batch = open_batch()
    key = f"print_batch_close:{batch.pk}"
    seen_elsewhere, bars = [], []
    real = printstream.stream_build

    def observed(**kwargs):
        publish = kwargs["on_progress"]

        def observe(done: int, total: int) -> None:
            publish(done, total)
            seen_elsewhere.append(_published_elsewhere(key))
            bars.extend(
                (w["state"], w["percent"])
                for w in work_in_progress()
                if w["key"] == key and not w["finished"]
            )

        return real(**{**kwargs, "on_progress": observe})

    monkeypatch.setattr(printstream, "stream_build", observed)
    # when the batch of two letters is closed
    printing.print_batch_close(batch=batch, by=ops)
    # then another connection saw each letter written while the close's transaction was open
    assert seen_elsewhere == [(1, 2), (2, 2)]
    assert bars == [("closing", 50.0), ("closing", 100.0)]
    # and the closed batch stays on the dashboard at 100 % for a while
    [done] = [w for w in work_in_progress() if w["key"] == key]
    assert (done["state"], done["percent"], done["finished"]) == ("closed", 100.0, True)


@postgres_only
def test_a_refused_close_leaves_no_progress_behind(letters, ops, progress_rows_cleaned):
    from notifications.progress import work_in_progress

    document = letters[1].document
    with open(document.file.path, "r+b") as fh:
        fh.seek(-20, io.SEEK_END)
        fh.write(b"% tampered          ")
    batch = open_batch()
    with pytest.raises(PrintError):
        printing.print_batch_close(batch=batch, by=ops)
    assert _published_elsewhere(f"print_batch_close:{batch.pk}") is None
    assert [w for w in work_in_progress() if w["kind"] == "print_batch_close"] == []


# --- the mail house's control mark on the cover sheet ------------------------------------------


PICTURE_DPI = 200


def page_pictures(stream: bytes, page_numbers: list[int]) -> Iterator:
    """These pages (1-based) as printed: greyscale pictures drawn by pdftoppm."""
    import subprocess

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        pdf = f"{folder}/stream.pdf"
        with open(pdf, "wb") as fh:
            fh.write(stream)
        for number in page_numbers:
            subprocess.run(
                ["pdftoppm", "-r", str(PICTURE_DPI), "-gray", "-png", "-singlefile", "-f",
                 str(number), "-l", str(number), pdf, f"{folder}/page"],
                check=True,
            )  # fmt: skip
            with Image.open(f"{folder}/page.png") as image:
                yield image


def read_marks(stream: bytes, page_numbers: list[int], kind: str = "QRCode") -> list[str]:
    """The 2D codes (QR, DataMatrix) on these pages, read from the printed picture of the page."""
    import zxingcpp

    wanted = getattr(zxingcpp.BarcodeFormat, kind)
    return [
        barcode.text
        for image in page_pictures(stream, page_numbers)
        for barcode in zxingcpp.read_barcodes(image, formats=wanted)
    ]


def read_omr(stream: bytes, page_numbers: list[int], *, left: float, top: float, length: float):
    """The OMR track on these pages, measured on the printed picture: at each position of the
    documented layout (a mark every 1/6 inch from `top`, `length` mm long at `left`), whether
    the strip there is dark; decoded to (sequence, sheets) after checking the start, stop and
    parity marks."""
    from PIL import ImageStat

    px = PICTURE_DPI / 25.4
    found = []
    for image in page_pictures(stream, page_numbers):
        dark = []
        for position in range(27):
            y = (top + position * 25.4 / 6 + 0.3) * px  # the middle of a 0.6 mm mark
            box = (
                round((left + 1) * px),
                round(y - 1),
                round((left + length - 1) * px),
                round(y + 2),
            )
            dark.append(ImageStat.Stat(image.convert("L").crop(box)).mean[0] < 100)
        assert dark[0], f"no start or stop mark: {dark}"
        assert dark[26], f"no start or stop mark: {dark}"
        assert sum(dark[:26]) % 2 == 0, f"parity fails: {dark}"
        sheets = int("".join("1" if d else "0" for d in dark[1:9]), 2)
        sequence = int("".join("1" if d else "0" for d in dark[9:25]), 2)
        found.append((sequence, sheets))
    return found


def test_the_cover_sheet_carries_the_return_address_and_a_mark_with_sequence_and_pages(
    letters, ops, settings
):
    # given the mail house's settings
    settings.CCM_PRINT_RETURN_ADDRESS = "Northwind, PO Box 4410, Leeds LS1 9ZZ"
    settings.CCM_PRINT_CONTROL_MARK_FORMAT = "{batch};{sequence:05d}/{items:05d};P{sheets:02d}"

    # when the batch is closed
    batch = printing.print_batch_close(batch=open_batch(), by=ops)

    # then each cover sheet's QR code, read from the printed page, names its envelope: the
    # sequence, and the pages in it (cover sheet included), as the inserter counts them
    data = stored_bytes(batch.stream)
    pages = [c.document.page_count for c in letters]
    covers = [1, 2 + pages[0]]
    assert read_marks(data, covers) == [
        f"batch-{batch.pk};00001/00002;P{pages[0] + 1:02d}",
        f"batch-{batch.pk};00002/00002;P{pages[1] + 1:02d}",
    ]
    stream = stream_of(batch)
    assert "Northwind, PO Box 4410, Leeds LS1 9ZZ" in stream.pages[0].extract_text()
    # and the manifest agrees with the mark
    assert [int(row["pages"]) + 1 for row in manifest_of(batch)] == [p + 1 for p in pages]


def test_a_datamatrix_mark_reads_back_with_sequence_and_pages(letters, ops, settings):
    # given a mail house whose inserter reads DataMatrix
    settings.CCM_PRINT_CONTROL_MARK = "datamatrix"
    settings.CCM_PRINT_CONTROL_MARK_AT = "175,14,16"

    # when the batch is closed
    batch = printing.print_batch_close(batch=open_batch(), by=ops)

    # then each cover sheet's DataMatrix, read from the printed page, names its envelope
    pages = [c.document.page_count for c in letters]
    covers = [1, 2 + pages[0]]
    data = stored_bytes(batch.stream)
    assert read_marks(data, covers, "DataMatrix") == [
        f"CCM1|batch-{batch.pk}|1|2|{pages[0] + 1}",
        f"CCM1|batch-{batch.pk}|2|2|{pages[1] + 1}",
    ]
    assert read_marks(data, covers, "QRCode") == []


def test_omr_marks_measure_back_to_sequence_and_sheets(letters, ops, settings):
    # given a mail house whose inserter reads OMR marks down the left edge
    settings.CCM_PRINT_CONTROL_MARK = "omr"
    settings.CCM_PRINT_CONTROL_MARK_AT = "6,100,12"

    # when the batch is closed
    batch = printing.print_batch_close(batch=open_batch(), by=ops)

    # then the dark marks measured at their positions on each printed cover sheet give the
    # sequence and the sheets in the envelope (cover included), with start, stop and parity
    pages = [c.document.page_count for c in letters]
    covers = [1, 2 + pages[0]]
    assert read_omr(stored_bytes(batch.stream), covers, left=6, top=100, length=12) == [
        (1, pages[0] + 1),
        (2, pages[1] + 1),
    ]
    # and the document pages carry no marks there
    with pytest.raises(AssertionError, match="no start or stop mark"):
        read_omr(stored_bytes(batch.stream), [2], left=6, top=100, length=12)


def test_omr_layout_of_one_envelope():
    # sequence 5 (0…0101), 3 sheets (00000011): start, the bits, parity, stop
    marks = printstream.omr_marks(sequence=5, sheets=3)
    bits = "".join("1" if m else "0" for m in marks)
    assert bits == "1" + "00000011" + "0000000000000101" + "1" + "1"
    with pytest.raises(PrintError, match="at most 255"):
        printstream.omr_marks(sequence=1, sheets=256)


def test_a_mail_house_without_marks_gets_none(letters, ops, settings):
    settings.CCM_PRINT_CONTROL_MARK = "none"

    batch = printing.print_batch_close(batch=open_batch(), by=ops)

    assert read_marks(stored_bytes(batch.stream), [1]) == []


def test_a_bad_mark_format_is_refused_with_what_it_may_name(letters, ops, settings):
    settings.CCM_PRINT_CONTROL_MARK_FORMAT = "{batch}|{envelope}"

    with pytest.raises(PrintError, match=r"may name \{batch\}, \{sequence\}"):
        printing.print_batch_close(batch=open_batch(), by=ops)
    assert open_batch().state == "open"

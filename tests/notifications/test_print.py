"""The print channel end to end: letters join the open batch, the batch is closed into one print
stream (cover sheet + archived document per letter) with a manifest, handed over, mailed, and
letters come back."""

from __future__ import annotations

import csv
import hashlib
import io
import threading

import pypdf
import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection, connections, transaction

from ccm.models import AuditEvent
from documents import services as documents
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications import printing, services, signals, tasks
from notifications.channels import PermanentSendError, TransientSendError
from notifications.channels.print import PrintBackend
from notifications.models import (
    Communication,
    Customer,
    Delivery,
    DeliveryEvent,
    PrintBatch,
    PrintItem,
)
from notifications.printing import PrintError
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
    customer, _ = services.customer_upsert(external_ref=ref, name=name, postal_address=lines, by=by)
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
    return pypdf.PdfReader(io.BytesIO(stored_bytes(batch.stream)))


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
    customer = postal_customers[1]
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
    assert sample["reference"] in stream.pages[1].extract_text()


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
    version = publish(
        __import__("tests.documents.factories", fromlist=["letter_bundle"]).letter_bundle(),
        author=author,
        reviewer=reviewer,
    )
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
    version = publish(
        __import__("tests.documents.factories", fromlist=["letter_bundle"]).letter_bundle(),
        author=author,
        reviewer=reviewer,
    )
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

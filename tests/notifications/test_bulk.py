from __future__ import annotations

import pytest
from django.core import mail

from ccm import rows
from ccm.models import AuditEvent
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.customers import services as customer_services
from notifications.errors import IntakeError
from notifications.models import Communication, Delivery
from notifications.pipeline import chunks, compose, dispatch, history, intake, services
from tests.notifications.conftest import publish


@pytest.fixture
def document_ready(author, reviewer):
    return publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)


@pytest.fixture
def customers(admin_user):
    return [
        customer_services.customer_upsert(
            external_ref=f"B-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=admin_user
        )[0]
        for i in range(5)
    ]


def enqueue_replace(monkeypatch, fake) -> None:
    """Every task the chunked stages enqueue goes to `fake` (compose's own, and the chunk tasks
    of `chunks.ids_enqueue`)."""
    for module in (compose, chunks):
        monkeypatch.setattr(module, "enqueue", fake)


def data(i: int, **extra) -> dict:
    return {
        "customer": {"name": f"Customer {i}"},
        "reference": f"DOC-{i:05d}",
        "document_title": "Your annual statement",
        "document_date": "2026-04-12",
        "portal_url": f"https://portal.example/documents/DOC-{i:05d}",
        **extra,
    }


def request(customers, integrator, **kwargs):
    return intake.communications_request_bulk(
        template_code="document_ready",
        items=[{"customer": c, "data": data(i)} for i, c in enumerate(customers)],
        client="campaign-7",
        by=integrator,
        **kwargs,
    )


def test_bad_items_are_listed_by_index_and_nothing_is_created(
    document_ready, customers, integrator
):
    items = [{"customer": c, "data": data(i)} for i, c in enumerate(customers)]
    items[1]["data"] = {**data(1), "document_date": "not a date"}
    del items[3]["data"]["reference"]
    with pytest.raises(intake.BulkIntakeError) as excinfo:
        intake.communications_request_bulk(
            template_code="document_ready", items=items, client="c", by=integrator
        )
    assert [(p["index"], [e["field"] for e in p["errors"]]) for p in excinfo.value.errors] == [
        (1, ["document_date"]),
        (3, ["reference"]),
    ]
    assert not Communication.objects.exists()
    assert not AuditEvent.objects.filter(action="communications.received_bulk").exists()


def test_unknown_template_is_refused(customers, integrator):
    with pytest.raises(IntakeError, match="no template"):
        intake.communications_request_bulk(
            template_code="nope", items=[], client="c", by=integrator
        )


def test_chunks_carry_at_most_the_configured_number_of_ids(
    document_ready, customers, integrator, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.CCM_BULK_CHUNK = 2
    enqueued = []
    enqueue_replace(monkeypatch, lambda task, *args, **_: enqueued.append((task, args)))
    with django_capture_on_commit_callbacks(execute=True):
        ids = request(customers, integrator)
    # A batch of at least a chunk is all chunk tasks, the last one short; no drain would take
    # the batch's rows from under them.
    assert [task for task, _ in enqueued] == ["notifications.pipeline.compose.compose_chunk"] * 3
    chunks = [args[0] for _, args in enqueued]
    assert chunks == [ids[:2], ids[2:4], ids[4:]]


def test_a_batch_smaller_than_a_chunk_is_left_to_the_drain(
    document_ready, customers, integrator, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.CCM_BULK_CHUNK = 6
    enqueued = []
    enqueue_replace(monkeypatch, lambda task, *args, **_: enqueued.append((task, args)))
    with django_capture_on_commit_callbacks(execute=True):
        request(customers, integrator)
    assert enqueued == [("notifications.pipeline.compose.compose_drain", ())]


def test_single_requests_share_one_waiting_drain_task(
    document_ready, customers, integrator, monkeypatch, django_capture_on_commit_callbacks
):
    """A stream of single requests must not become a task per request: while a drain waits in
    the queue no other is enqueued, and the drain composes every one of them."""
    enqueued = []
    enqueue_replace(monkeypatch, lambda task, *args, **_: enqueued.append((task, args)))
    ids = []
    for i, customer in enumerate(customers):
        with django_capture_on_commit_callbacks(execute=True):
            communication, _ = services.communication_request(
                template_code="document_ready",
                customer=customer,
                data=data(i),
                client="core-banking",
                by=integrator,
            )
        ids.append(communication.pk)
    assert enqueued == [("notifications.pipeline.compose.compose_drain", ())]
    # when the drain runs (document_ready renders no PDF: the dispatch queue's text-only drain)
    counts = compose.compose_drain(text_only=True)
    # then every request was composed, and the next request asks for a new drain
    assert counts["claimed"] == 5
    assert not Communication.objects.filter(pk__in=ids, state="received").exists()
    with django_capture_on_commit_callbacks(execute=True):
        services.communication_request(
            template_code="document_ready",
            customer=customers[0],
            data=data(9),
            client="core-banking",
            by=integrator,
        )
    assert [task for task, _ in enqueued].count("notifications.pipeline.compose.compose_drain") == 2


def test_bulk_request_to_sent_emails(document_ready, customers, integrator, sync_tasks):
    # when
    ids = sync_tasks(request, customers, integrator)
    # then every communication went out once, as its own message
    assert sorted(Communication.objects.values_list("state", flat=True)) == ["sent"] * 5
    deliveries = {d.pk: d for d in Delivery.objects.all()}
    assert {d.state for d in deliveries.values()} == {"sent"}
    assert len(mail.outbox) == 5
    message_ids = [m.extra_headers["Message-ID"] for m in mail.outbox]
    assert sorted(message_ids) == sorted(d.message_id for d in deliveries.values())
    for message in mail.outbox:
        delivery = deliveries[int(message.metadata["delivery_id"])]
        assert message.extra_headers["Message-ID"] == delivery.message_id
        assert message.metadata["communication_id"] == str(delivery.communication_id)
        assert message.to == [
            f"Customer {ids.index(delivery.communication_id)} <{delivery.address}>"
        ]
        assert message.subject == "Your annual statement is ready to view"
        assert "https://portal.example/documents/" in message.body
    assert all(d.provider_message_id for d in deliveries.values())
    # and every communication has its own history, sealed by a few chained audit events
    for communication in Communication.objects.all():
        actions = [step.action for step in communication.steps.all()]
        assert actions[0] == "communication.received"
        assert {"communication.composed", "delivery.sent", "communication.sent"} <= set(actions)
        assert history.communication_verify(communication.pk).ok
    assert AuditEvent.objects.filter(action="communication_steps.sealed").count() <= 4


def test_running_chunks_again_sends_nothing_more(document_ready, customers, integrator, sync_tasks):
    ids = sync_tasks(request, customers, integrator)
    delivery_ids = list(Delivery.objects.values_list("pk", flat=True))
    assert compose.compose_chunk(ids) == {"claimed": 0}
    assert dispatch.dispatch_chunk(delivery_ids) == {"claimed": 0}
    assert len(mail.outbox) == 5
    assert Delivery.objects.count() == 5


def test_same_idempotency_keys_return_the_first_communications(
    document_ready, customers, integrator, sync_tasks
):
    items = [
        {"customer": c, "data": data(i), "idempotency_key": f"k{i}"}
        for i, c in enumerate(customers)
    ]
    first = sync_tasks(
        intake.communications_request_bulk,
        template_code="document_ready",
        items=items,
        client="c",
        by=integrator,
    )
    again = sync_tasks(
        intake.communications_request_bulk,
        template_code="document_ready",
        items=[*items, {**items[0]}],
        client="c",
        by=integrator,
    )
    assert again == [*first, first[0]]
    assert len(mail.outbox) == 5


def test_a_template_that_needs_a_pdf_takes_the_per_message_path(
    letter, customers, integrator, sync_tasks
):
    ids = sync_tasks(
        intake.communications_request_bulk,
        template_code="letter",
        items=[
            {
                "customer": c,
                "data": {"customer": {"name": "Ada"}, "balance": 1, "as_of": "2026-05-01"},
            }
            for c in customers[:2]
        ],
        client="c",
        by=integrator,
    )
    communications = Communication.objects.filter(pk__in=ids)
    assert {c.state for c in communications} == {"sent"}
    assert all(c.document_id for c in communications)
    assert all(m.attachments for m in mail.outbox)
    assert not AuditEvent.objects.filter(action="communications.composed_bulk").exists()


def test_a_customer_nobody_can_reach_is_undeliverable(
    document_ready, integrator, sync_tasks, admin_user
):
    nobody, _ = customer_services.customer_upsert(
        external_ref="N-1", name="No Contact", by=admin_user
    )
    (pk,) = sync_tasks(request, [nobody], integrator)
    communication = Communication.objects.get(pk=pk)
    assert communication.state == "undeliverable"
    assert communication.failure_reason == "no channel can reach the customer"
    assert mail.outbox == []


def test_a_text_only_chunk_is_sent_by_the_task_that_composes_it(
    document_ready, customers, integrator, monkeypatch, django_capture_on_commit_callbacks
):
    """One task per chunk: no dispatch_chunk task waits behind every queued composition, and
    the task's three transactions are sealed into the chain once."""
    enqueued = []
    enqueue_replace(monkeypatch, lambda task, *args, **_: enqueued.append(task))
    ids = request(customers, integrator)
    sealed_before = AuditEvent.objects.filter(action="communication_steps.sealed").count()
    # when the chunk is composed as a text-only chunk task is
    with django_capture_on_commit_callbacks(execute=True):
        counts = compose.compose_chunk(ids, dispatch_now=True)
    # then it was sent in the same call, with no task enqueued for it
    assert counts["dispatching"] == 5
    assert "notifications.pipeline.dispatch.dispatch_chunk" not in enqueued
    assert set(Delivery.objects.values_list("state", flat=True)) == {"sent"}
    assert len(mail.outbox) == 5
    # and every step of it is sealed, by one chained event
    assert (
        AuditEvent.objects.filter(action="communication_steps.sealed").count() - sealed_before == 1
    )
    assert history.communication_verify(ids[0]).ok
    assert history.communication_verify(ids[0]).unsealed == 0


def test_the_portable_row_update_writes_a_protected_state(document_ready, customers, integrator):
    """`make run` (SQLite) composes through Django's bulk_update: the protected state field
    must take the state the pipeline decided there too (it refused it, and nothing composed)."""
    ids = request(customers, integrator)
    Communication.objects.filter(pk__in=ids).update(state="composing")
    rows._update_rows_portable(
        Communication,
        ["state", "failure_reason"],
        {pk: ("composed", "") for pk in ids[:3]},
        where_state="composing",
    )
    states = dict(Communication.objects.filter(pk__in=ids).values_list("pk", "state"))
    assert [states[pk] for pk in ids] == ["composed"] * 3 + ["composing"] * 2


def chunk_statements(ids) -> list[str]:
    """The SQL (before its parameters) of composing and sending the chunk `ids`, as a text-only
    chunk task does; savepoints left out (their names count up)."""
    from django.db import connection

    statements: list[str] = []

    def record(execute, sql, params, many, context):
        if not sql.startswith(("SAVEPOINT", "RELEASE SAVEPOINT")):
            statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        compose.compose_chunk(ids, dispatch_now=True)
    return statements


@pytest.mark.postgres
def test_a_chunk_costs_the_same_statements_whatever_its_size(
    document_ready, admin_user, integrator, monkeypatch
):
    """A chunk's statements are the same text for 2 communications as for 40 (lists of ids
    travel as one array), and few: the claims and moves lock and update in one statement, and
    a composed communication that goes straight on is written once, already `dispatching`."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the array form is PostgreSQL's")
    enqueue_replace(monkeypatch, lambda *args, **kwargs: None)
    people = [
        customer_services.customer_upsert(
            external_ref=f"S-{i}", name=f"Customer {i}", emails=[f"s{i}@example.org"], by=admin_user
        )[0]
        for i in range(42)
    ]
    # when a chunk of 2 and a chunk of 40 are composed and sent
    small = chunk_statements(request(people[:2], integrator))
    large = chunk_statements(request(people[2:], integrator))
    # then they ran the same statements, the inserts aside (their VALUES lists)
    assert [s for s in small if not s.startswith("INSERT")] == [
        s for s in large if not s.startswith("INSERT")
    ]
    assert set(Delivery.objects.values_list("state", flat=True)) == {"sent"}
    # and each communication was updated three times: claimed, composed (and on), sent
    updates = [s for s in large if s.startswith('UPDATE "notifications_communication"')]
    assert len(updates) == 3
    assert len(large) <= 34


@pytest.mark.postgres
def test_a_chunk_sent_by_its_composer_writes_each_delivery_once_per_move_and_reads_no_email_back(
    document_ready, admin_user, integrator, monkeypatch
):
    """Every write of a row pays for all its table's indexes, every read of an email its
    decoding: a delivery's `sent` carries its provider message id in the same UPDATE, and the
    task that composed the chunk sends what it rendered without reading it back."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the one-statement forms are PostgreSQL's")
    enqueue_replace(monkeypatch, lambda *args, **kwargs: None)
    people = [
        customer_services.customer_upsert(
            external_ref=f"W-{i}", name=f"Customer {i}", emails=[f"w{i}@example.org"], by=admin_user
        )[0]
        for i in range(3)
    ]
    statements = chunk_statements(request(people, integrator))
    sent = list(Delivery.objects.filter(state="sent").values_list("provider_message_id", flat=True))
    assert len(sent) == 3
    assert all(sent)
    # claimed, then sent with its provider message id: two UPDATEs of the deliveries
    updates = [s for s in statements if s.startswith('UPDATE "notifications_delivery"')]
    assert len(updates) == 2
    reads = [s for s in statements if s.startswith("SELECT")]
    assert not [s for s in reads if '"notifications_communication"."rendered"' in s]
    # and what was sent is what was recorded as rendered
    assert {m.subject for m in mail.outbox} == {
        c.rendered["email"]["subject"] for c in Communication.objects.all()
    }


def letters(customers, integrator):
    return intake.communications_request_bulk(
        template_code="letter",
        items=[
            {
                "customer": c,
                "data": {"customer": {"name": c.name}, "balance": i, "as_of": "2026-04-12"},
            }
            for i, c in enumerate(customers)
        ],
        client="bill-run",
        by=integrator,
    )


def test_a_batch_of_pdfs_is_shared_by_every_render_worker(
    letter, customers, integrator, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """A letter is a PDF (a quarter of a second each): a batch smaller than a chunk still
    becomes a task per render worker, not one task (or a drain) that one worker works alone."""
    settings.CCM_BULK_CHUNK = 250
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2, "ALT_CLUSTERS": {}}
    monkeypatch.setattr(chunks, "RENDER_PIECE_MIN", 2)
    enqueued = []
    enqueue_replace(monkeypatch, lambda task, *args, **kw: enqueued.append((task, args, kw)))
    with django_capture_on_commit_callbacks(execute=True):
        ids = letters(customers, integrator)
    assert [(task, kw.get("queue")) for task, _, kw in enqueued] == [
        ("notifications.pipeline.compose.compose_chunk", None)
    ] * 2
    assert [args[0] for _, args, _ in enqueued] == [ids[:3], ids[3:]]


@pytest.mark.parametrize(
    ("n", "size", "workers", "text_only", "expected"),
    [
        (1, 250, 2, False, []),  # a single request: the drain's
        (9, 250, 2, False, []),
        (38, 250, 2, False, [19, 19]),  # a small bill run's chunk, on both render workers
        (98, 250, 4, False, [25, 25, 24, 24]),
        (25, 250, 4, False, [13, 12]),  # no piece under ten
        (250, 250, 2, False, [125, 125]),
        (1000, 250, 2, False, [250] * 4),  # large batches keep full chunks
        (1001, 250, 2, False, [201, 200, 200, 200, 200]),
        (38, 250, 2, True, []),  # text: chunks of CCM_BULK_CHUNK, less to the drain
        (600, 250, 2, True, [250, 250, 100]),
        # Text chunks larger than PDF ones: a render task stays short (CCM_RENDER_CHUNK 250).
        (1200, 500, 2, True, [500, 500, 200]),
        (1000, 500, 2, False, [250] * 4),
        (1001, 500, 2, False, [201, 200, 200, 200, 200]),
    ],
)
def test_how_a_batch_is_cut_into_compose_tasks(settings, n, size, workers, text_only, expected):
    settings.CCM_BULK_CHUNK = size
    settings.CCM_RENDER_CHUNK = 250
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "ALT_CLUSTERS": {"render": {"workers": workers}}}
    ids = list(range(n))
    pieces = chunks.compose_pieces(ids, text_only=text_only)
    assert [len(p) for p in pieces] == expected
    assert [i for p in pieces for i in p] == (ids if expected else [])


def test_the_drain_composes_letters_in_render_sized_chunks(
    letter, customers, integrator, settings, monkeypatch
):
    """The drain of the render queue may archive a PDF per communication: it takes at most
    CCM_RENDER_CHUNK at a time, however large a text chunk is, so a task stays short."""
    settings.CCM_BULK_CHUNK = 4
    settings.CCM_RENDER_CHUNK = 2
    ids = letters(customers, integrator)
    taken = []
    real = compose.compose_chunk

    def recorded(chunk, **kw):
        taken.append(list(chunk))
        return real(chunk, **kw)

    monkeypatch.setattr(compose, "compose_chunk", recorded)
    enqueue_replace(monkeypatch, lambda *args, **kw: None)
    compose.compose_drain()
    assert taken == [ids[:2], ids[2:4], ids[4:]]
    assert not Communication.objects.filter(pk__in=ids, state="received").exists()


def test_a_drain_past_its_time_hands_over_to_a_new_one(
    letter, customers, integrator, settings, monkeypatch
):
    """A chunk of PDFs takes tens of seconds: a drain starts no new chunk after a quarter of
    the task timeout, and enqueues its successor instead of being killed mid-chunk."""
    settings.CCM_RENDER_CHUNK = 2
    ids = letters(customers, integrator)
    monkeypatch.setattr(compose, "_drain_budget_s", lambda: 0.0)
    enqueued = []
    enqueue_replace(monkeypatch, lambda task, *args, **kw: enqueued.append(task))
    counts = compose.compose_drain()
    assert counts["claimed"] == 2
    assert Communication.objects.filter(pk__in=ids, state="received").count() == 3
    assert enqueued.count("notifications.pipeline.compose.compose_drain") == 1

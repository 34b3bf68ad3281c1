"""The high-volume path: intake, composition and dispatch of many communications in chunks.

Same guarantees as the per-message pipeline in `services` (nothing lost, nothing sent twice,
every delivery's outcome recorded, an audit trail, every task safe to run twice), with the
per-message costs paid once per chunk instead:

- `communications_request_bulk` validates every item with one compiled schema validator,
  creates the communications with one `bulk_create`, records one audit event for the batch and
  enqueues `compose_chunk` tasks of at most `CCM_BULK_CHUNK` ids after commit;
- `compose_chunk` claims `received → composing` with one guarded UPDATE, gathers the facts
  for channel selection with a handful of queries, renders with the cached composer, and in one
  transaction creates the deliveries, moves the communications to `dispatching` and enqueues
  `dispatch_chunk`. Communications that need a PDF or a reviewer's release are handed to the
  per-message `communication_compose` untouched;
- `dispatch_chunk` claims `pending → sending` with one guarded UPDATE, sends over one open
  email connection (Postmark: its batch endpoint, with the payloads Anymail builds), asks the
  provider before re-sending anything whose outcome is unknown, and records every outcome with
  bulk updates and one audit event.

A crashed chunk leaves rows that the existing sweeps already cover: `received` (re-composed one
by one), `composing` (reset after CCM_SWEEP_AFTER_SECONDS), `pending` (dispatched one by one)
and `sending` (reconciled with the provider by `services.delivery_reconcile_run`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import requests
from django.conf import settings
from django.core.cache import cache
from django.core.mail import EmailMessage, get_connection
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from ccm import approvals, context
from ccm.backoff import backoff_seconds
from ccm.context import each_bound
from ccm.tasks import Queue, enqueue
from documents import selectors as document_selectors
from documents import services as documents
from documents.composition import (
    CompositionError,
    DataInvalid,
    data_errors,
)
from documents.models import Template, TemplateVersion, VersionState
from notifications import selectors, signals
from notifications.channels import (
    EmailBackend,
    PermanentSendError,
    TransientSendError,
    backend_for,
)
from notifications.channels.postmark_batch import PostmarkPayloads, direct_payloads_allowed
from notifications.customers.services import address_normalise
from notifications.models import (
    CommState,
    Communication,
    CommunicationStep,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryState,
    Preference,
    Suppression,
)
from notifications.pipeline import history, selection, throttle
from notifications.pipeline.services import (
    RELEASE_PURPOSE,
    IntakeError,
    addressee_mismatches,
    addressee_of,
    composition_context,
    delivery_message_id,
    enabled_channels,
    intake_data_validate,
    intake_validator,
    portal_linked,
    release_required,
)
from notifications.pipeline.transitions import deliveries_move
from notifications.webhooks import services as webhooks

logger = logging.getLogger(__name__)

POSTMARK_BATCH_MAX = 500  # Postmark's limit for one /email/batch call
# Below this many rows one INSERT … RETURNING is cheaper than drawing ids and a COPY.
COPY_FROM = 50


def chunk_size() -> int:
    return max(1, settings.CCM_BULK_CHUNK)


def _chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """[[first, last], …] of consecutive runs: an exact, short list of ids for the audit log."""
    ranges: list[list[int]] = []
    for pk in sorted(ids):
        if ranges and pk == ranges[-1][1] + 1:
            ranges[-1][1] = pk
        else:
            ranges.append([pk, pk])
    return ranges


# --- set-based writes -----------------------------------------------------------------------


def _db_value(field, value: Any) -> Any:
    if value is None:
        return None
    if field.get_internal_type() == "JSONField":
        return json.dumps(value)
    return value


def _update_rows_portable(
    model, fields: list[str], rows: Mapping[int, tuple], *, where_state: str | None = None
) -> None:
    """`update_rows` through Django's `bulk_update` (SQLite, the `make run` default). Values go
    straight into each instance's fields: a protected state field refuses `setattr`, and this
    is a write of states the caller has already decided, as the PostgreSQL statement is."""
    objs = []
    for pk, values in rows.items():
        obj = model(pk=pk)
        for name, value in zip(fields, values, strict=True):
            obj.__dict__[model._meta.get_field(name).attname] = value
        objs.append(obj)
    queryset = model.objects.all()
    if where_state is not None:
        queryset = queryset.filter(state=where_state)
    queryset.bulk_update(objs, fields)


def update_rows(
    model, fields: list[str], rows: Mapping[int, tuple], *, where_state: str | None = None
) -> None:
    """Set per-row values of `fields` on many rows in one statement (only on rows still in
    `where_state`, when given).

    PostgreSQL: one UPDATE … FROM unnest(arrays), a few milliseconds for a chunk. Elsewhere
    Django's `bulk_update` (a CASE per field), which is correct but costs ~1 ms a row."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        _update_rows_portable(model, fields, rows, where_state=where_state)
        return
    opts = model._meta
    columns = [opts.get_field(name) for name in fields]
    is_json = [f.get_internal_type() == "JSONField" for f in columns]
    # The rows travel as ONE JSON document read back with jsonb_to_recordset: no per-element
    # array quoting (psycopg escapes every text[] element with a regex — half a millisecond a
    # row for rendered emails), and JSON columns are nested as they are, not as strings.
    records = [
        {
            "id": pk,
            **{
                f"c{i}": value if is_json[i] or value is None else str(value)
                for i, value in enumerate(values)
            },
        }
        for pk, values in rows.items()
    ]
    sets = ", ".join(
        f"{qn(f.column)} = v.c{i}"
        if is_json[i]
        else f"{qn(f.column)} = v.c{i}::{f.db_type(connection)}"
        for i, f in enumerate(columns)
    )
    names = ", ".join(
        ["id bigint"] + [f"c{i} {'jsonb' if is_json[i] else 'text'}" for i in range(len(columns))]
    )
    # Identifiers come from the model's metadata, every value is a parameter.
    sql = (
        f"UPDATE {qn(opts.db_table)} AS t SET {sets} "  # noqa: S608
        f"FROM jsonb_to_recordset(%s::jsonb) AS v({names}) WHERE t.{qn(opts.pk.column)} = v.id"
    )
    params: list[Any] = [json.dumps(records, cls=DjangoJSONEncoder)]
    if where_state is not None:
        sql += " AND t.state = %s"
        params.append(where_state)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def update_returning(
    locked: QuerySet, values: Mapping[str, Any], returning: Sequence[str]
) -> list[tuple]:
    """Set `values` on the rows of `locked` (a `select_for_update` queryset: the guard of a
    move) and return their `returning` fields (the primary key first), in key order.

    PostgreSQL: ONE statement, `UPDATE … WHERE id IN (SELECT … FOR UPDATE [SKIP LOCKED])
    RETURNING …`, instead of a locking read and an update by the ids it gave: a round trip and
    a second pass over the chunk's index entries less, for every claim and move of a chunk.
    Elsewhere the read, then the update."""
    model = locked.model
    if connection.vendor != "postgresql":
        rows = list(locked.order_by("pk").values_list(*returning))
        model.objects.filter(pk__in=[row[0] for row in rows]).update(**values)
        return rows
    query = model.objects.filter(pk__in=locked.values("pk")).query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(connection=connection).as_sql()
    opts = model._meta
    columns = ", ".join(
        qn((opts.pk if name == "pk" else opts.get_field(name)).column) for name in returning
    )
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {columns}", params)
        return sorted(cursor.fetchall())


def insert_rows(model, objs: list) -> None:
    """Insert many new rows and set their primary keys.

    PostgreSQL: ids drawn from the table's sequence, then COPY (several times faster than
    `bulk_create`'s INSERT … RETURNING for thousands of rows). Elsewhere `bulk_create`."""
    if not objs:
        return
    if connection.vendor != "postgresql" or len(objs) < COPY_FROM:
        model.objects.bulk_create(objs, batch_size=1000)
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    now = timezone.now()
    for obj in objs:
        for f in fields:
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                setattr(obj, f.attname, now)
    ids = _copy_rows(model, fields, ([getattr(obj, f.attname) for f in fields] for obj in objs))
    for obj, pk in zip(objs, ids, strict=True):
        obj.pk = pk
        obj._state.adding = False


def insert_like(model, template, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert one row per mapping of field values, every other field as on `template` (an
    unsaved instance made once: its defaults), and return the new ids in order. For the rows
    a chunk makes by the hundred (its deliveries), a model instance per row would cost more
    than writing them."""
    if not rows:
        return []
    if connection.vendor != "postgresql" or len(rows) < COPY_FROM:
        objs = [model(**{**_field_values(template), **row}) for row in rows]
        model.objects.bulk_create(objs, batch_size=1000)
        return [obj.pk for obj in objs]
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    now = timezone.now()
    base = {f.attname: getattr(template, f.attname) for f in fields}
    base.update(
        {
            f.attname: now
            for f in fields
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        }
    )
    return _copy_rows(
        model, fields, ([row.get(f.attname, base[f.attname]) for f in fields] for row in rows)
    )


def _field_values(obj) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def _copy_rows(model, fields: list, rows: Iterable[list[Any]]) -> list[int]:
    """COPY `rows` (values of `fields`, in order, the primary key left out) with ids drawn
    from the table's sequence first; the ids in order. PostgreSQL only."""
    rows = list(rows)
    opts = model._meta
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [opts.db_table, opts.pk.column, len(rows)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        columns = ", ".join(qn(f.column) for f in (opts.pk, *fields))
        with cursor.cursor.copy(f"COPY {qn(opts.db_table)} ({columns}) FROM STDIN") as copy:
            for pk, values in zip(ids, rows, strict=True):
                copy.write_row(
                    [pk, *(_db_value(f, v) for f, v in zip(fields, values, strict=True))]
                )
    return ids


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


# --- intake ---------------------------------------------------------------------------------


class BulkIntakeError(IntakeError):
    """Some items cannot become communications; nothing was created. `errors` lists, per item
    index, what to fix: [{"index": 3, "errors": [{"field": …, "message": …}]}]."""

    def __init__(self, message: str, *, errors: list[dict]):
        super().__init__(message, field="items")
        self.errors = errors


@dataclass
class IntakeResult:
    """What became of one item: its communication (new, or the one its idempotency key made the
    first time), or the reason it was refused (`error`, with `errors` per field)."""

    index: int
    communication_id: int | None = None
    communication: Communication | None = None  # the new one, as created
    created: bool = False
    error: Exception | None = None
    errors: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.error is None


def _refuse(result: IntakeResult, exc: Exception) -> None:
    result.error = exc
    if isinstance(exc, CompositionError) and exc.errors:
        result.errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    else:
        result.errors = [{"field": getattr(exc, "field", ""), "message": str(exc)}]


def communications_intake(
    *,
    items: Sequence[Mapping[str, Any]],
    client: str,
    by,
    source: str = "api",
    all_or_nothing: bool = False,
) -> list[IntakeResult]:
    """Accept communications: the one intake of every entry point (one API call is a batch of
    one). Returns one result per item, in order; a bad item does not refuse the good ones
    (unless `all_or_nothing`, which raises BulkIntakeError naming every bad item).

    An item: {"template": code, "customer": Customer or id, "data": {…}} and optionally
    "idempotency_key", "category", "urgency", "source", "channel" (an override), "address"
    (with "channel": send there instead), "document" (an archived Document to carry instead
    of composing), "parent" (a Communication this one follows up), "correlation_id",
    "data_validated_for" (the TemplateVersion the data already passed the schema against, held
    unchanged since: see `intake_data_validate`).

    The data is validated now against the version that will render it (pinned on the
    communication); the same idempotency key from the same client returns the communication it
    made the first time. Composition is enqueued in chunks after commit.
    """
    results = [IntakeResult(index) for index in range(len(items))]
    prepared: dict[int, Communication] = {}
    codes = {str(item.get("template") or "") for item in items}
    published = document_selectors.versions_for_sending(codes=codes)
    templates = {code: version.template for code, version in published.items()}
    if codes - set(templates):
        # Unknown, or not published yet: the refusal says which.
        templates.update(
            {t.code: t for t in Template.objects.filter(code__in=codes - set(templates))}
        )
    customer_ids = {
        c
        for c in (item.get("customer") for item in items)
        if c is not None and not isinstance(c, Customer)
    }
    # The customers' records: intake checks the data's identity fields against them.
    known = Customer.objects.in_bulk(customer_ids) if customer_ids else {}
    created_by = by if by is not None and getattr(by, "pk", None) else None
    for item, result in zip(items, results, strict=True):
        try:
            prepared[result.index] = _prepare(
                item,
                templates=templates,
                published=published,
                known=known,
                client=client,
                created_by=created_by,
                source=source,
            )
        except (IntakeError, DataInvalid) as exc:
            _refuse(result, exc)
    refused = [r for r in results if not r.accepted]
    if refused and all_or_nothing:
        raise BulkIntakeError(
            f"{len(refused)} of {len(items)} items are invalid; nothing was created.",
            errors=[{"index": r.index, "errors": r.errors} for r in refused],
        )
    if len(prepared) == 1 and connection.vendor == "postgresql":
        [(index, communication)] = prepared.items()
        _create_one(communication, results[index], by=by, published=published)
        return results
    try:
        _create(prepared, results, client=client, by=by, published=published)
    except IntegrityError:
        # Another request used one of the idempotency keys meanwhile: once more, now that its
        # communications are visible, they are returned instead of created.
        _create(prepared, results, client=client, by=by, published=published)
    return results


def _prepare(
    item: Mapping[str, Any], *, templates, published, known, client, created_by, source
) -> Communication:
    code = str(item.get("template") or "")
    template = templates.get(code)
    if template is None:
        raise IntakeError(f"There is no template {code!r}.", field="template")
    document = item.get("document")
    # A copy of one of the template's own documents (a reprint) is pinned to the version that
    # rendered it; anything else speaks with the template's published version.
    pinned = document is not None and document.template_version.template_id == template.pk
    version = document.template_version if pinned else published.get(code)  # type: ignore[union-attr]
    if version is None:
        raise IntakeError(f"Template {code!r} has no published version yet.", field="template")
    customer = item.get("customer")
    if not isinstance(customer, Customer):
        customer = known.get(customer)
        if customer is None:
            raise IntakeError("unknown customer", field="customer")
    customer_id = customer.pk
    channel = str(item.get("channel") or "")
    address = ""
    if item.get("address"):
        if not channel:
            raise IntakeError("An address needs the channel it is for.", field="channel")
        address, _ = address_normalise(channel, item["address"])
    snapshot = documents.data_snapshot(item.get("data") or {})
    printed_to = address.split(" / ") if address and channel == "print" else None
    intake_data_validate(
        version,
        snapshot,
        addressee=addressee_of(customer, address=printed_to),
        validated_for=item.get("data_validated_for"),
    )
    parent = item.get("parent")
    key = str(item.get("idempotency_key") or "") or None
    return Communication(
        customer_id=customer_id,
        template=template,
        # Composition renders the version published then (and checks the data against it
        # again); only a reprint of the template's own document keeps that document's version.
        template_version=version if pinned else None,
        data=snapshot,
        category=item.get("category") or template.category,
        urgency=item.get("urgency") or "normal",
        source=item.get("source") or source,
        channel_override=channel,
        address_override=address,
        correlation_id=str(item.get("correlation_id") or ""),
        client=client,
        idempotency_key=key,
        created_by=created_by,
        parent_id=parent.pk if parent is not None else None,
        document_id=document.pk if document is not None else None,
    )


@transaction.atomic
def _create(
    prepared: dict[int, Communication],
    results: list[IntakeResult],
    *,
    client: str,
    by,
    published: Mapping[str, TemplateVersion | None],
) -> None:
    keys = {c.idempotency_key for c in prepared.values() if c.idempotency_key}
    existing: dict[str, int] = {}
    if keys:
        existing = dict(
            Communication.objects.filter(client=client, idempotency_key__in=keys).values_list(
                "idempotency_key", "pk"
            )
        )
    new: list[Communication] = []
    new_by_key: dict[str, Communication] = {}  # a key repeated within the batch makes one
    slots: dict[int, Communication] = {}
    for index, communication in prepared.items():
        key = communication.idempotency_key
        result = results[index]
        if key and key in existing:
            result.communication_id, result.created = existing[key], False
            continue
        if key and key in new_by_key:
            slots[index] = new_by_key[key]
            continue
        communication.pk = None
        communication._state.adding = True
        if key:
            new_by_key[key] = communication
        new.append(communication)
        slots[index] = communication
    insert_rows(Communication, new)
    first = {id(c) for c in new}
    for index, communication in slots.items():
        results[index].communication_id = communication.pk
        results[index].communication = communication
        results[index].created = id(communication) in first
        first.discard(id(communication))
    history.steps_record(
        [
            history.Step(
                c.pk,
                "communication.received",
                {"template": c.template.code, "source": c.source},
            )
            for c in new
        ],
        actor=by,
        seal_soon=False,  # sealed by the chunk that composes them: no chain lock per request
    )
    # Communications that archive no PDF are composed on the dispatch queue: no render backlog
    # stands between an urgent SMS and its provider.
    for text_only in (True, False):
        _compose_enqueue(
            [c.pk for c in new if _text_only(c, published) is text_only],
            queue=Queue.DISPATCH if text_only else None,
        )


def _create_one(
    communication: Communication,
    result: IntakeResult,
    *,
    by,
    published: Mapping[str, TemplateVersion | None],
) -> None:
    """What `_create` does for one communication (one API call), in two statements and no
    transaction of its own: its id from the sequence (the first step's hash covers it), then
    ONE statement that inserts the communication and, if it was new, its `received` step. An
    idempotency key already used by this client inserts nothing and answers the first one."""
    opts = Communication._meta
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s))", [opts.db_table, opts.pk.column]
        )
        (pk,) = cursor.fetchone()
    communication.pk = pk
    values = [
        f.get_db_prep_save(f.pre_save(communication, True), connection)
        for f in opts.concrete_fields
    ]
    [step] = history.step_rows(
        [
            history.Step(
                pk,
                "communication.received",
                {"template": communication.template.code, "source": communication.source},
            )
        ],
        actor=by,
        at=timezone.now(),
    )
    step_values = [*step[1:6], json.dumps(step[6]), *step[7:]]
    with connection.cursor() as cursor:
        cursor.execute(_insert_one_sql(), [*values, *step_values])
        created = cursor.fetchone() is not None
    if not created:
        # The key was used before (or by a request that committed meanwhile): its communication.
        communication.pk = None
        result.communication_id = (
            Communication.objects.filter(
                client=communication.client, idempotency_key=communication.idempotency_key
            )
            .values_list("pk", flat=True)
            .first()
        )
        return
    communication._state.adding = False
    result.communication_id, result.communication, result.created = pk, communication, True
    _compose_enqueue([pk], queue=Queue.DISPATCH if _text_only(communication, published) else None)


@functools.cache
def _insert_one_sql() -> str:
    """The statement of `_create_one` (the communication's concrete fields in `fields` order,
    then its step's STEP_COLUMNS but the first): built once, not per request."""
    opts = Communication._meta
    by_column = {f.column: f for f in CommunicationStep._meta.concrete_fields}
    step_fields = [by_column[name.strip()] for name in history.STEP_COLUMNS.split(",")][1:]
    casts = ", ".join(f"%s::{f.db_type(connection)}" for f in step_fields)
    fields = opts.concrete_fields
    # Names come from the models' metadata; every value is a parameter.
    return (
        f"WITH c AS (INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT (client, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
        f"RETURNING id), "
        f"s AS (INSERT INTO {qn(CommunicationStep._meta.db_table)} ({history.STEP_COLUMNS}) "
        f"SELECT c.id, {casts} FROM c) "
        f"SELECT id FROM c"
    )


def _text_only(c: Communication, published: Mapping[str, TemplateVersion | None]) -> bool:
    """Whether composing `c` renders no PDF (it carries its document, it is urgent — its PDF
    follows its fast channels — or its template's published version has no print rendition)."""
    version = published.get(c.template.code)
    return (
        c.document_id is not None
        or c.urgency == "high"  # its PDF, if any, follows (selection.durable_later)
        or (version is not None and not needs_pdf(version))
    )


def communications_request_bulk(
    *,
    template_code: str,
    items: Sequence[Mapping[str, Any]],
    client: str,
    by,
    source: str = "campaign",
    category: str | None = None,
    urgency: str = "normal",
    correlation_id: str = "",
) -> list[int]:
    """Many communications of one template, all or nothing (BulkIntakeError lists every bad
    item by index); their ids in the order of `items`."""
    template = Template.objects.filter(code=template_code).first()
    if template is None:
        raise IntakeError(f"There is no template {template_code!r}.", field="template")
    results = communications_intake(
        items=[
            {
                "template": template_code,
                "category": category,
                "urgency": urgency,
                "correlation_id": correlation_id,
                **item,
            }
            for item in items
        ],
        client=client,
        by=by,
        source=source,
        all_or_nothing=True,
    )
    return [r.communication_id for r in results if r.communication_id is not None]


def _enqueue_ids(task: str, ids: list[int], queue: Queue | None = None) -> None:
    # One task carries one chunk of ids (a list argument; `enqueue` only types single ids).
    enqueue(task, ids, queue=queue)


# --- the compose drain ----------------------------------------------------------------------
# A single request is a batch of one, but a task per request would make the cluster pay a
# task's overhead (queue row, pickling, claim, commit, seal) for every message: under a stream
# of single POSTs the queue then grows faster than it drains. Full chunks get their own task;
# what is left (one API call's communication) is composed by a drain task that takes every
# `received` communication in chunks. At most one drain waits in the queue: a flag in the
# shared cache says one is pending, and the drain clears it before it reads, so a request that
# commits after the read enqueues the next one.

COMPOSE_DRAIN = "notifications.pipeline.bulk.compose_drain"
DRAIN_FLAG = "ccm:notifications:compose-drain-pending"
# A lost drain (its process died between the flag and the queue row) delays the next one by at
# most this long; the `notifications.received` sweep covers anything older as well.
DRAIN_FLAG_TTL_S = 30
# One drain composes at most this many chunks, then hands over to a new task (others queued
# meanwhile get their turn, and a task stays well inside Q_CLUSTER's timeout).
DRAIN_MAX_CHUNKS = 20


def _compose_enqueue(ids: list[int], queue: Queue | None = None) -> None:
    """Composition for new communications, after commit: full chunks as their own tasks, the
    rest by the drain of that queue."""
    size = chunk_size()
    text_only = queue == Queue.DISPATCH
    for chunk in _chunks(ids, size):
        if len(chunk) == size:
            # A text-only chunk is sent by the task that composes it (`dispatch_now`).
            enqueue(
                "notifications.pipeline.bulk.compose_chunk",
                chunk,
                queue=queue,
                dispatch_now=text_only,
            )
        else:
            # The drain's log lines name the request that asked for it (on commit, the
            # request may be over).
            transaction.on_commit(
                partial(
                    compose_drain_request,
                    request_id=context.request_id(),
                    text_only=text_only,
                ),
                robust=False,
            )


def _drain_flag(text_only: bool) -> str:
    return f"{DRAIN_FLAG}:{'text' if text_only else 'all'}"


def compose_drain_request(request_id: str | None = None, *, text_only: bool = False) -> None:
    """Enqueue a drain unless one is already waiting (the shared cache's flag, one per drain).
    If the cache cannot be asked, enqueue anyway: a spare drain costs one task, a missing one a
    delay. The text-only drain runs on the dispatch queue and composes only communications
    that render no PDF; the other, on the rendering queue, composes any."""
    flag = _drain_flag(text_only)
    try:
        # Under a stream of requests the flag is mostly there: one read, no write.
        first = cache.get(flag) is None and cache.add(flag, 1, timeout=DRAIN_FLAG_TTL_S)
    except Exception:
        logger.warning("the compose drain flag could not be set; enqueueing", exc_info=True)
        first = True
    if first:
        token = context.set_request_id(request_id) if request_id else None
        try:
            if text_only:
                enqueue(COMPOSE_DRAIN, text_only=True, queue=Queue.DISPATCH)
            else:
                enqueue(COMPOSE_DRAIN)
        finally:
            if token is not None:
                context.reset_request_id(token)


def _text_only_filter() -> Q:
    """Communications that compose without rendering a PDF: they carry their document, or
    their template's published version has no print rendition."""
    published = TemplateVersion.objects.filter(state=VersionState.PUBLISHED).values_list(
        "template__code", flat=True
    )
    templates = [
        version.template_id
        for version in document_selectors.versions_for_sending(codes=published).values()
        if not needs_pdf(version)
    ]
    return Q(document__isnull=False) | Q(urgency="high") | Q(template_id__in=templates)


def compose_drain(text_only: bool = False) -> dict[str, int]:
    """Compose every `received` communication (only those that render no PDF, for the
    text-only drain), a chunk at a time, oldest first (safe to run twice, and beside chunk
    tasks: each chunk is claimed with a guarded UPDATE)."""
    try:
        # Before reading: whatever commits later asks for a new drain.
        cache.delete(_drain_flag(text_only))
    except Exception:
        logger.warning("the compose drain flag could not be cleared", exc_info=True)
    counts: dict[str, int] = defaultdict(int)
    waiting = Communication.objects.filter(state=CommState.RECEIVED)
    if text_only:
        waiting = waiting.filter(_text_only_filter())
    for _ in range(DRAIN_MAX_CHUNKS):
        ids = list(waiting.order_by("pk").values_list("pk", flat=True)[: chunk_size()])
        if not ids:
            return dict(counts)
        # Rows another worker is claiming right now are skipped; the next read leaves them out.
        # The drain's log lines name the chunk it composes, as a chunk task's do.
        with (
            history.steps_named_by_request(
                CommunicationStep.objects.filter(communication_id__any=ids)
            ),
            context.bound(communication_ids=ids),
        ):
            done = compose_chunk(ids, dispatch_now=text_only)
        for name, value in done.items():
            counts[name] += value
    compose_drain_request(text_only=text_only)  # more than a task's worth: a fresh one goes on
    return dict(counts)


# --- compose --------------------------------------------------------------------------------


def _claim_communications(ids: Sequence[int], source: str, target: str) -> list[int]:
    """One guarded UPDATE for a whole chunk: the ids this call moved from `source`."""
    with transaction.atomic():
        claimed = update_returning(
            Communication.objects.select_for_update(skip_locked=True).filter(
                pk__any=ids, state=source
            ),
            {"state": target, "updated_at": timezone.now()},
            ["pk"],
        )
    return [pk for (pk,) in claimed]


def facts_for_chunk(
    communications: list[Communication], renditions: dict[int, list[str]]
) -> dict[int, selection.Facts]:
    """Selection facts for a chunk, from six queries instead of six per communication."""
    customer_ids = {c.customer_id for c in communications}
    categories = {c.category for c in communications}
    # Plain values, not model instances: building 250 ContactPoints costs more than the query.
    emails: dict[int, list[str]] = defaultdict(list)
    phones: dict[int, list[str]] = defaultdict(list)
    by_kind = {ContactKind.EMAIL.value: emails, ContactKind.PHONE.value: phones}
    for customer_id, kind, value in (
        ContactPoint.objects.filter(customer_id__any=customer_ids, valid=True)
        .order_by("-is_primary", "id")
        .values_list("customer_id", "kind", "value")
    ):
        by_kind[kind][customer_id].append(value)
    consents, preferences = _consents(customer_ids, categories)
    devices = selectors.device_addresses(customer_ids=customer_ids)
    addresses = {a for found in (*emails.values(), *phones.values()) for a in found}
    addresses.update(a for found in devices.values() for a in found)
    addresses.update(c.address_override for c in communications if c.address_override)
    suppressed = frozenset(
        Suppression.objects.filter(address__any=addresses, lifted_at__isnull=True).values_list(
            "channel", "address"
        )
    )
    facts: dict[int, selection.Facts] = {}
    for c in communications:
        customer = c.customer
        mine_emails = emails.get(c.customer_id, [])
        mine_phones = phones.get(c.customer_id, [])
        postal = customer.postal_address if customer.postal_address_valid else []
        target = c.address_override
        if target and c.channel_override == "email":
            mine_emails = [target]
        elif target and c.channel_override == "sms":
            mine_phones = [target]
        elif target and c.channel_override == "print":
            postal = target.split(" / ")
        mine = {*mine_emails, *mine_phones, *devices.get(c.customer_id, ())}
        facts[c.pk] = selection.Facts(
            category=c.category,
            urgency=c.urgency,
            renditions=renditions[c.pk],
            emails=mine_emails,
            phones=mine_phones,
            devices=devices.get(c.customer_id, []),
            postal_address=postal,
            preferences=preferences.get((c.customer_id, c.category), {}),
            consents=consents.get((c.customer_id, c.category), {}),
            suppressed=frozenset(s for s in suppressed if s[1] in mine),
            override=c.channel_override,
        )
    return facts


def _consents(customer_ids, categories):
    """The latest consent and the preference per (customer, category) → channel."""
    consents: dict[tuple[int, str], dict[str, bool]] = defaultdict(dict)
    for customer_id, cat, channel, granted in (
        ConsentRecord.objects.filter(customer_id__any=customer_ids, category__in=categories)
        .order_by("recorded_at", "id")
        .values_list("customer_id", "category", "channel", "granted")
    ):
        consents[(customer_id, cat)][channel] = granted
    preferences: dict[tuple[int, str], dict[str, bool]] = defaultdict(dict)
    for customer_id, cat, channel, allowed in Preference.objects.filter(
        customer_id__any=customer_ids, category__in=categories
    ).values_list("customer_id", "category", "channel", "allowed"):
        preferences[(customer_id, cat)][channel] = allowed
    return consents, preferences


def needs_pdf(version: TemplateVersion) -> bool:
    """A PDF is archived for a template that prints or attaches its letter to the email."""
    meta = version.meta
    return "print" in meta.get("channels", []) or meta.get("delivery", "attach") == "attach"


@dataclass
class _Composed:
    communication: Communication
    version: TemplateVersion
    selection: selection.Selection
    rendered: dict
    data: dict
    document_id: int | None


# Set by `compose_chunk(…, dispatch_now=True)`: the deliveries `dispatch_start` makes are
# collected here, for the same task to send after its commit, instead of each chunk of them
# becoming a `dispatch_chunk` task of its own.
_dispatch_here: ContextVar[list[int] | None] = ContextVar("ccm_dispatch_here", default=None)


def compose_chunk(ids: Sequence[int], dispatch_now: bool = False) -> dict[str, int]:
    """received → composing → composed → (gate) for a chunk; safe to run twice.

    Every communication, whatever brought it in: portal links made and kept in the data, a PDF
    archived where the template needs one, channels chosen, outputs rendered. Returns counts by
    outcome (for logs and tests).

    With `dispatch_now` (a text-only chunk, composed on the dispatch queue) the deliveries the
    gate starts are sent by this same task once they are committed: no second task, no second
    wait in the queue, no second read of the chunk from the queue table. A crash in between
    leaves them `pending`, which the `deliveries_due` sweep hands to a dispatch task."""
    if not dispatch_now:
        return _compose_chunk(ids)
    here: list[int] = []
    token = _dispatch_here.set(here)
    try:
        with history.steps_sealed_once():
            counts = _compose_chunk(ids)
            _dispatch_after_commit(here)
    finally:
        _dispatch_here.reset(token)
    return counts


def _dispatch_after_commit(delivery_ids: list[int]) -> None:
    for chunk in _chunks(delivery_ids, chunk_size()):
        with context.bound(delivery_ids=chunk):
            _dispatch_chunk(chunk)


def _compose_chunk(ids: Sequence[int]) -> dict[str, int]:
    claimed = _claim_communications(list(ids), CommState.RECEIVED, CommState.COMPOSING)
    counts = {"claimed": len(claimed)}
    if not claimed:
        return counts
    communications = list(
        Communication.objects.filter(pk__any=claimed)
        .select_related("customer", "template", "document", "created_by")
        .defer("rendered", "decision_trace", "failure_errors")
        .order_by("pk")
    )
    versions = {
        v.pk: v
        for v in TemplateVersion.objects.select_related("template").filter(
            pk__in={c.template_version_id for c in communications if c.template_version_id}
        )
    }
    published: dict[str, TemplateVersion | None] = {}

    def version_of(c: Communication) -> TemplateVersion | None:
        if c.template_version_id:
            return versions[c.template_version_id]  # a reprint of its own document
        code = c.template.code
        if code not in published:
            published[code] = document_selectors.version_for_sending(code=code)
        return published[code]

    enabled = set(enabled_channels())
    chosen_version = {c.pk: version_of(c) for c in communications}
    renditions = {
        pk: [ch for ch in (v.meta.get("channels", []) if v else []) if ch in enabled]
        for pk, v in chosen_version.items()
    }
    facts = facts_for_chunk(communications, renditions)
    composed: list[_Composed] = []
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]] = []
    # The text channels go to the render worker in one trip per template version and language.
    groups: dict[tuple[int, str], list[tuple[Communication, selection.Selection, dict]]] = {}
    documents_made: dict[int, int | None] = {}
    for c in each_bound(communications, communication_id=lambda c: c.pk):
        version = chosen_version[c.pk]
        try:
            if version is None:
                raise CompositionError("the template has no published version")
            if portal_linked(version) and "portal_url" not in c.data:
                # The link is part of the archived data, so the letter that prints it
                # regenerates byte for byte.
                from notifications.channels.portal import portal_url

                c.data = {**c.data, "portal_url": portal_url(c)}
            # The addressee comes from the customer record, never from the data.
            context = composition_context(c, version)
            mismatches = addressee_mismatches(c, version)
            if mismatches and c.created_by_id is None:
                # The record changed since intake and nobody asked for this one to hold it
                # for a release (the gate holds the others): it fails with the reason.
                raise DataInvalid("; ".join(e.message for e in mismatches), errors=mismatches)
            errors = data_errors(intake_validator(version), context)
            if errors:
                reason = "; ".join(f"{e.field or '(root)'}: {e.message}" for e in errors)
                raise DataInvalid(
                    f"data does not match the template's schema: {reason}", errors=errors
                )
            chosen = selection.select_channels(facts[c.pk])
            document_id = c.document_id
            later = selection.durable_later(chosen, urgency=c.urgency)
            if later is not None and document_id is None and needs_pdf(version):
                chosen = later  # the PDF follows on the render queue (dispatch_start)
            elif document_id is None and needs_pdf(version):
                # The archived snapshot records the addressee it was composed for (the print
                # close checks it against the envelope); the document belongs to whoever asked
                # for the communication (API ownership).
                document_id = documents.document_compose(
                    version=version, data=context, language=c.customer.language, by=c.created_by
                ).pk
        except CompositionError as exc:
            failed.append((c, version, exc))
            continue
        documents_made[c.pk] = document_id
        language = documents.language_for(version, c.customer.language)
        groups.setdefault((version.pk, language), []).append((c, chosen, context))
    for (_, language), members in groups.items():
        version = chosen_version[members[0][0].pk]
        assert version is not None  # grouped only once composed with one
        results = documents.text_channels_compose(
            version=version,
            language=language,
            items=[(context, chosen.channels) for _, chosen, context in members],
        )
        for (c, chosen, _), rendered in zip(members, results, strict=True):
            if isinstance(rendered, CompositionError):
                failed.append((c, version, rendered))
            else:
                composed.append(
                    _Composed(c, version, chosen, rendered, dict(c.data), documents_made[c.pk])
                )
    counts.update(_record_composed(composed, failed))
    return counts


def _signal(signal, comm_id: int) -> None:
    """Tell the higher layers, with the communication as it now is (receivers look at its
    state and reason)."""
    communication = Communication.objects.get(pk=comm_id)
    signal.send(
        sender=Communication, communication=communication, reason=communication.failure_reason
    )


def _record_composed(
    composed: list[_Composed],
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]],
) -> dict[str, int]:
    now = timezone.now()
    counts: dict[str, int] = {"composed": 0, "compose_failed": 0}
    with transaction.atomic():
        # Still ours? A sweep may have reset a chunk that took far too long.
        ours = set(
            Communication.objects.select_for_update()
            .filter(
                pk__any=[x.communication.pk for x in composed] + [f[0].pk for f in failed],
                state=CommState.COMPOSING,
            )
            .values_list("pk", flat=True)
        )
        composed = [x for x in composed if x.communication.pk in ours]
        failed = [f for f in failed if f[0].pk in ours]
        for x in composed:
            # As the gate would read them back (locked above): no second read of the chunk.
            x.communication.data = x.data
            x.communication.template_version = x.version
            x.communication.decision_trace = x.selection.trace
        # The gate's decisions are known now: the ones that go straight on are written as
        # `dispatching` with what composition made, and not updated a second time (each update
        # of a communication rewrites every one of its table's indexes).
        reasons = {
            x.communication.pk: why for x in composed if (why := _hold_reason(x.communication))
        }
        straight = {
            x.communication.pk
            for x in composed
            if x.communication.pk not in reasons and targets_of(x.communication)
        }
        # What composition made and its state, in one statement.
        update_rows(
            Communication,
            [
                *("data", "template_version", "document", "rendered", "decision_trace"),
                *("state", "updated_at"),
            ],
            {
                x.communication.pk: (
                    x.data,
                    x.version.pk,
                    x.document_id,
                    x.rendered,
                    x.selection.trace,
                    (
                        CommState.DISPATCHING
                        if x.communication.pk in straight
                        else CommState.COMPOSED
                    ).value,
                    now,
                )
                for x in composed
            },
            where_state=CommState.COMPOSING,
        )
        steps = [
            history.Step(
                x.communication.pk,
                "communication.composed",
                {"version": x.version.pk, "channels": x.selection.channels},
            )
            for x in composed
        ]
        events = [
            webhooks.Occurrence(webhooks.WebhookEvent.COMPOSED, x.communication, CommState.COMPOSED)
            for x in composed
        ]
        if failed:
            update_rows(
                Communication,
                ["template_version", "failure_reason", "failure_errors"],
                {
                    c.pk: (
                        v.pk if v else None,
                        exc.reason,
                        [{"field": e.field, "message": e.message} for e in exc.errors],
                    )
                    for c, v, exc in failed
                },
            )
            Communication.objects.filter(
                pk__any=[f[0].pk for f in failed], state=CommState.COMPOSING
            ).update(state=CommState.COMPOSE_FAILED, updated_at=now)
            _moved([f[0].pk for f in failed], CommState.COMPOSE_FAILED)
            steps += [
                history.Step(c.pk, "communication.compose_failed", {"reason": exc.reason})
                for c, _, exc in failed
            ]
            events += [
                webhooks.Occurrence(
                    webhooks.WebhookEvent.FAILED, c, CommState.COMPOSE_FAILED, reason=exc.reason
                )
                for c, _, exc in failed
            ]
        history.steps_record(steps, at=now)
        counts["composed"] = len(composed)
        counts["compose_failed"] = len(failed)
        counts.update(
            _gate(
                [x.communication.pk for x in composed],
                events,
                locked=sorted((x.communication for x in composed), key=lambda c: c.pk),
                reasons=reasons,
                dispatching=straight,
            )
        )
        # One outbox INSERT for the chunk's events.
        webhooks.webhook_events_emit(events)
    # After the transaction: receivers (an exception case) see the failure committed.
    for communication, _, _exc in failed:
        _signal(signals.communication_compose_failed, communication.pk)
    return counts


def gate_chunk(ids: Sequence[int]) -> dict[str, int]:
    """composed → awaiting_approval (the release gate) or dispatching; safe to run twice."""
    with transaction.atomic():
        events: list[webhooks.Occurrence] = []
        counts = _gate(list(ids), events)
        webhooks.webhook_events_emit(events)
        return counts


def _gate(
    ids: list[int],
    events: list[webhooks.Occurrence],
    *,
    locked: Sequence[Communication] | None = None,
    reasons: Mapping[int, str] | None = None,
    dispatching: Collection[int] = (),
) -> dict[str, int]:
    """Inside the caller's transaction: the composed communications `ids` wait for a reviewer's
    release where their template or amount needs one; the rest start dispatching. `locked`:
    the caller holds them already, composed, with their data, version and decision trace (and
    has decided `reasons`, and written `dispatching` as such: see `dispatch_start`)."""
    if locked is None:
        locked = _gate_load(ids)
    if reasons is None:
        reasons = {c.pk: why for c in locked if (why := _hold_reason(c))}
    held = [
        (c, reasons[c.pk])
        for c in Communication.objects.select_related(
            "template_version__template", "created_by", "customer"
        ).filter(pk__any=reasons)
    ]
    for c, why in held:
        c.await_approval()
        c.decision_trace = [*c.decision_trace, {"decision": "release", "reason": why}]
        c.save()
        approvals.approval_request(
            subject=c,
            requested_by=c.created_by,
            purpose=RELEASE_PURPOSE,
            summary=f"Release {c.template_version.template.name} to {c.customer}: {why}",
        )
    history.steps_record(
        [history.Step(c.pk, "communication.awaiting_approval", {"reason": why}) for c, why in held]
    )
    waiting = {c.pk for c, _ in held}
    counts = dispatch_start(
        [c for c in locked if c.pk not in waiting], events=events, dispatching=dispatching
    )
    return {"awaiting_approval": len(held), **counts}


def _gate_load(ids: list[int]) -> list[Communication]:
    """The composed communications `ids`, locked, with what the gate and the deliveries need,
    not the rendered outputs (decoding those again would cost more than the rest of the gate)."""
    return list(
        Communication.objects.select_for_update(of=("self",))
        .select_related("template_version", "customer")
        .only(
            "id",
            "state",
            "data",
            "decision_trace",
            "created_by_id",
            "template_version",
            "channel_override",
            "address_override",
            "customer__name",
            "customer__salutation",
            "customer__postal_address",
            "customer__external_ref",
            "customer__language",
        )
        .filter(pk__any=ids, state=CommState.COMPOSED)
        .order_by("pk")
    )


def _hold_reason(c: Communication) -> str | None:
    """Why a composed communication waits for a reviewer's release: data naming someone other
    than the customer on record (the record changed since intake), or its template or amount
    needs one. Only communications somebody asked for are held; a system-made one has nobody
    to request the release (the addressee check fails it at composition instead)."""
    version = c.template_version
    if c.created_by_id is None or version is None:
        return None
    mismatches = addressee_mismatches(c, version)
    if mismatches:
        return "; ".join(e.message for e in mismatches)
    return release_required(version, c.data)


def _moved(ids: list[int], target: str) -> None:
    if ids:
        signals.communications_transitioned.send(sender=Communication, ids=ids, target=target)


def targets_of(communication: Communication) -> list[dict]:
    """The channels and addresses chosen at composition (from its decision trace)."""
    return [t for t in communication.decision_trace if t.get("decision") == "chosen"]


def dispatch_start(
    communications: Sequence[Communication],
    *,
    events: list[webhooks.Occurrence] | None = None,
    dispatching: Collection[int] = (),
) -> dict[str, int]:
    """Inside the caller's transaction: composed or released communications get one delivery
    per chosen channel and go to `dispatching` (dispatch enqueued in chunks after commit); one
    that nothing can reach becomes `undeliverable`. `dispatching`: ids the caller has already
    written in that state (composition does, with what it made)."""
    now = timezone.now()
    reachable = [c for c in communications if targets_of(c)]
    unreachable = [c for c in communications if not targets_of(c)]
    ready = (CommState.COMPOSED, CommState.APPROVED)
    Communication.objects.filter(
        pk__any=[c.pk for c in reachable if c.pk not in dispatching], state__in=ready
    ).update(state=CommState.DISPATCHING, updated_at=now)
    reason = "no channel can reach the customer"
    Communication.objects.filter(pk__any=[c.pk for c in unreachable], state__in=ready).update(
        state=CommState.UNDELIVERABLE, failure_reason=reason, updated_at=now
    )
    _moved([c.pk for c in reachable], CommState.DISPATCHING)
    _moved([c.pk for c in unreachable], CommState.UNDELIVERABLE)
    deliveries = [
        {
            "communication_id": c.pk,
            "channel": target["channel"],
            "address": target["address"],
            "message_id": delivery_message_id(c, i, target["channel"]),
        }
        for c in reachable
        for i, target in enumerate(targets_of(c))
    ]
    delivery_ids = insert_like(Delivery, Delivery(), deliveries)
    by_comm: dict[int, list[int]] = defaultdict(list)
    for d, pk in zip(deliveries, delivery_ids, strict=True):
        by_comm[d["communication_id"]].append(pk)
    history.steps_record(
        [
            history.Step(c.pk, "communication.dispatching", {"deliveries": by_comm[c.pk]})
            for c in reachable
        ]
        + [
            history.Step(c.pk, "communication.undeliverable", {"reason": reason})
            for c in unreachable
        ],
        at=now,
    )
    undeliverable = [
        webhooks.Occurrence(
            webhooks.WebhookEvent.UNDELIVERABLE, c, CommState.UNDELIVERABLE, reason=reason
        )
        for c in unreachable
    ]
    if events is None:
        webhooks.webhook_events_emit(undeliverable)
    else:
        events += undeliverable  # the caller writes them with its own
    for c in unreachable:
        transaction.on_commit(partial(_signal, signals.communication_undeliverable, c.pk))
    here = _dispatch_here.get()
    if here is not None:
        # Sent by the composing task once its transaction is over (if it fails, nothing is).
        here.extend(delivery_ids)
    else:
        for chunk in _chunks(delivery_ids, chunk_size()):
            _enqueue_ids("notifications.pipeline.bulk.dispatch_chunk", chunk)
    # Urgent ones went out on their fast channels; their PDF and durable targets follow.
    later = [c.pk for c in reachable if selection.durable_pending(c.decision_trace)]
    for chunk in _chunks(later, chunk_size()):
        _enqueue_ids("notifications.pipeline.fallback.durable_copies_send", chunk)
    return {
        "dispatching": len(reachable),
        "undeliverable": len(unreachable),
        "deliveries": len(delivery_ids),
    }


# --- dispatch -------------------------------------------------------------------------------


@dataclass
class _Outcome:
    sent: dict[int, str] = field(default_factory=dict)  # delivery id → provider id
    transient: dict[int, TransientSendError] = field(default_factory=dict)
    permanent: dict[int, str] = field(default_factory=dict)
    unknown: dict[int, str] = field(default_factory=dict)  # maybe sent, provider not answering
    throttled: list[int] = field(default_factory=list)  # not sent: the provider's rate is used up


class _ConnectedEmailBackend(EmailBackend):
    """CCM's email backend (same message, same error classification) on one open connection."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def message(self, delivery: Delivery):
        message = super().message(delivery)
        message.connection = self.connection
        return message

    def send(self, delivery: Delivery) -> str:
        try:
            return super().send(delivery)
        except PermanentSendError as exc:
            # Anymail's "recipients refused" does not say why; the ESP's answer does.
            detail = _esp_detail(exc.__cause__)
            if detail and detail not in str(exc):
                raise PermanentSendError(f"{exc}: {detail}") from exc.__cause__
            raise


def _esp_detail(error: BaseException | None) -> str:
    response = getattr(error, "response", None)
    if response is None:
        return ""
    try:
        return str(response.json().get("Message", ""))[:500]
    except (ValueError, AttributeError):
        return str(getattr(response, "text", ""))[:500]


def _open_connection():
    connection = get_connection()
    connection.open()
    session = getattr(connection, "session", None)
    if isinstance(session, requests.Session) and session.trust_env:
        # requests re-reads proxy and CA settings from the environment on every call, which
        # costs more than building the message; read them once for the whole chunk instead.
        url = getattr(connection, "api_url", "")
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
    return connection


def _postmark_batch_size() -> int:
    """Messages per Postmark batch call (CCM_POSTMARK_BATCH; 1 sends each through Anymail)."""
    return max(1, min(POSTMARK_BATCH_MAX, settings.CCM_POSTMARK_BATCH))


def _is_postmark(connection) -> bool:
    from anymail.backends.postmark import EmailBackend as PostmarkBackend

    return (
        isinstance(connection, PostmarkBackend)
        and not connection.use_bulk_api
        and _postmark_batch_size() > 1
    )


def _send_each(backend, deliveries: list[Delivery], outcome: _Outcome) -> None:
    ids = {"delivery_id": lambda d: d.pk, "communication_id": lambda d: d.communication_id}
    for delivery in each_bound(deliveries, **ids):
        try:
            outcome.sent[delivery.pk] = backend.send(delivery)
        except TransientSendError as exc:
            outcome.transient[delivery.pk] = exc
        except PermanentSendError as exc:
            outcome.permanent[delivery.pk] = str(exc)


def _send_postmark_batch(
    connection, email: _ConnectedEmailBackend, deliveries: list[Delivery], outcome: _Outcome
) -> None:
    """Postmark's batch endpoint: one request for up to 500 messages, each exactly as Anymail's
    Postmark backend would post it alone (built directly when nothing can change that, see
    postmark_batch.py), each answered on its own."""
    from anymail.message import AnymailRecipientStatus, AnymailStatus

    direct = PostmarkPayloads(connection) if direct_payloads_allowed(connection) else None
    for part in _chunks_of(deliveries, _postmark_batch_size()):
        payloads: list[dict] = []
        payload = None
        members: list[tuple[Delivery, EmailMessage | None]] = []
        for delivery in part:
            if direct is not None:
                payloads.append(direct.payload(delivery))
                members.append((delivery, None))
                continue
            message = email.message(delivery)
            message.anymail_status = AnymailStatus()  # type: ignore[attr-defined]
            if not connection.run_pre_send(message):
                outcome.permanent[delivery.pk] = "cancelled by an Anymail pre_send receiver"
                continue
            payload = connection.build_message_payload(message, connection.send_defaults)
            payloads.append(payload.data)
            members.append((delivery, message))
        if not payloads:
            continue
        try:
            response = connection.session.post(
                f"{connection.api_url}email/batch",
                data=payload.serialize_json(payloads) if payload else json.dumps(payloads),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "X-Postmark-Server-Token": connection.server_token,
                },
                timeout=connection.timeout,
            )
        except requests.RequestException as exc:
            for delivery, _ in members:
                outcome.transient[delivery.pk] = TransientSendError(
                    f"network error: {exc}", maybe_sent=True
                )
            continue
        status = response.status_code
        if status == 429 or status >= 500:
            for delivery, _ in members:
                outcome.transient[delivery.pk] = TransientSendError(
                    f"ESP error {status}: {response.text[:300]}"
                )
            continue
        try:
            answers = response.json()
            if not isinstance(answers, list) or len(answers) != len(members):
                raise ValueError("not one answer per message")
        except ValueError as exc:
            # Something answered, but not in a way that says what happened to each message.
            for delivery, _ in members:
                outcome.transient[delivery.pk] = TransientSendError(
                    f"ESP answered {status} without per-message results: {exc}", maybe_sent=True
                )
            continue
        for (delivery, message), answer in zip(members, answers, strict=True):
            code = answer.get("ErrorCode", 0)
            text = str(answer.get("Message", ""))
            if status < 300 and code == 0 and answer.get("MessageID"):
                provider_id = str(answer["MessageID"])
                outcome.sent[delivery.pk] = provider_id
                if message is not None:
                    message.anymail_status.set_recipient_status(  # type: ignore[attr-defined]
                        {delivery.address: AnymailRecipientStatus(provider_id, "sent")}
                    )
                    connection.run_post_send(message)
            elif code in (300, 406) and ("'To'" in text or "inactive" in text.lower()):
                outcome.permanent[delivery.pk] = f"the ESP refused the recipient: {text}"
            else:
                outcome.permanent[delivery.pk] = (
                    f"ESP rejected the message ({status}, ErrorCode {code}): {text}"
                )


def _chunks_of(items: list[Delivery], size: int) -> Iterable[list[Delivery]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _claim_deliveries(ids: Sequence[int]) -> list[int]:
    """pending → sending for the due deliveries of `ids` no other worker holds."""
    now = timezone.now()
    return deliveries_move(
        ids=ids,
        source=DeliveryState.PENDING,
        target=DeliveryState.SENDING,
        where=~Q(next_attempt_at__gt=now),
        skip_locked=True,
        values={"attempts": F("attempts") + 1},
    )


def send_time_refusals(deliveries: Sequence[Delivery]) -> dict[int, str]:
    """Why a claimed delivery must not go out now, checked just before sending: the address was
    suppressed (a bounce, a complaint) or the customer withdrew consent since it was chosen."""
    suppressed = dict(
        ((channel, address), reason)
        for channel, address, reason in Suppression.objects.filter(
            address__any={d.address for d in deliveries}, lifted_at__isnull=True
        ).values_list("channel", "address", "reason")
    )
    comms = [d.communication for d in deliveries]
    consents, preferences = _consents({c.customer_id for c in comms}, {c.category for c in comms})
    refusals: dict[int, str] = {}
    for d in deliveries:
        c = d.communication
        reason = suppressed.get((d.channel, d.address))
        if reason is not None:
            refusals[d.pk] = f"the address is suppressed ({reason})"
            continue
        refusal = selection.consent_refusal(
            category=c.category,
            consent=consents.get((c.customer_id, c.category), {}).get(d.channel),
            preference=preferences.get((c.customer_id, c.category), {}).get(d.channel),
        )
        if refusal and d.channel != "print":
            refusals[d.pk] = f"refused at send time: {refusal}"
    return refusals


DISPATCH_FIELDS = (
    *("id", "communication_id", "channel", "address", "message_id", "attempts", "meta"),
    *("state", "last_error"),
    *(
        f"communication__{name}"
        for name in (
            *("id", "customer_id", "template_id", "template_version_id", "document_id"),
            *("category", "urgency", "rendered", "state", "client", "correlation_id"),
        )
    ),
    *(f"communication__customer__{name}" for name in ("id", "name", "external_ref", "language")),
)


def _load(ids: list[int]) -> list[Delivery]:
    """The deliveries with what a message needs, templates and versions fetched once."""
    deliveries = list(
        Delivery.objects.filter(pk__any=ids)
        .select_related("communication__customer")
        # Only what sending and recording read: a dozen timestamps and the data per row cost
        # more to decode than the rest of the row (anything else still loads, on access).
        .only(*DISPATCH_FIELDS)
        .order_by("pk")
    )
    comms = [d.communication for d in deliveries]
    templates = {t.pk: t for t in Template.objects.filter(pk__in={c.template_id for c in comms})}
    versions = {
        v.pk: v
        for v in TemplateVersion.objects.filter(pk__in={c.template_version_id for c in comms})
    }
    for c in comms:
        c.template = templates[c.template_id]
        c.template_version = versions.get(c.template_version_id)  # type: ignore[arg-type]
    return deliveries


def dispatch_chunk(ids: Sequence[int]) -> dict[str, int]:
    """pending → sending → sent / pending (retry later) / failed for a chunk of deliveries.

    Safe to run twice: only deliveries this call moved out of `pending` are sent. A crash
    leaves them in `sending`, and `services.delivery_reconcile_run` asks the provider about
    each before anything is sent again. A chunk may carry the communications of many requests
    (a drain composed them): each one's steps name its own request."""
    with history.steps_named_by_request(
        CommunicationStep.objects.filter(communication__deliveries__id__any=list(ids))
    ):
        return _dispatch_chunk(ids)


def _dispatch_chunk(ids: Sequence[int]) -> dict[str, int]:
    claimed = _claim_deliveries(list(ids))
    if not claimed:
        return {"claimed": 0}
    deliveries = _load(claimed)
    by_id = {d.pk: d for d in deliveries}
    outcome = _Outcome()
    outcome.permanent.update(send_time_refusals(deliveries))
    deliveries = [d for d in deliveries if d.pk not in outcome.permanent]
    connection = _open_connection() if any(d.channel == "email" for d in deliveries) else None
    deadline = time.monotonic() + settings.CCM_THROTTLE_MAX_WAIT_S
    try:
        email = _ConnectedEmailBackend(connection)
        outcome.throttled += _send(connection, email, deliveries, outcome, deadline)
        _retry_inline(connection, email, by_id, outcome, deadline)
    finally:
        if connection is not None:
            connection.close()
    return _record_dispatched(by_id, outcome)


def _send(
    connection, email: _ConnectedEmailBackend, deliveries: list[Delivery], outcome, deadline
) -> list[int]:
    """Send `deliveries` as fast as each provider's throttle allows (transactional and
    regulatory messages may use the reserve); return the ids the throttle did not let out
    before `deadline`."""
    groups: dict[tuple[str, bool], list[Delivery]] = defaultdict(list)
    for d in deliveries:
        c = d.communication
        groups[(d.channel, throttle.is_priority(category=c.category, urgency=c.urgency))].append(d)
    left: list[int] = []
    for (channel, priority), group in groups.items():
        provider = throttle.provider_of(channel)
        while group:
            granted = throttle.throttle_wait(
                provider=provider, want=len(group), priority=priority, deadline=deadline
            )
            if not granted:
                left += [d.pk for d in group]
                break
            part, group = group[:granted], group[granted:]
            if channel != "email":
                _send_each(backend_for(channel), part, outcome)
            elif _is_postmark(connection):
                _send_postmark_batch(connection, email, part, outcome)
            else:
                _send_each(email, part, outcome)
    return left


def _retry_inline(
    connection, email: _ConnectedEmailBackend, by_id, outcome: _Outcome, deadline: float
) -> None:
    """Transient failures get CCM_DISPATCH_INLINE_RETRIES more tries after the rest of the
    chunk went out; a send whose outcome is unknown is first looked up at the provider."""
    for attempt in range(1, settings.CCM_DISPATCH_INLINE_RETRIES + 1):
        if not outcome.transient:
            return
        time.sleep(backoff_seconds(attempt, base=0.1, cap=2.0))
        again: list[Delivery] = []
        for pk, exc in list(outcome.transient.items()):
            delivery = by_id[pk]
            if exc.maybe_sent:
                backend = email if delivery.channel == "email" else backend_for(delivery.channel)
                try:
                    found = backend.lookup(delivery)
                except TransientSendError as lookup_exc:
                    # Cannot tell: leave it in `sending` for reconciliation, never re-send blind.
                    del outcome.transient[pk]
                    outcome.unknown[pk] = str(lookup_exc)
                    continue
                if found:
                    del outcome.transient[pk]
                    outcome.sent[pk] = found
                    continue
            del outcome.transient[pk]
            again.append(delivery)
        outcome.throttled += _send(connection, email, again, outcome, deadline)
    # Unknown outcomes that are still unknown after the last try wait in `sending` too, for
    # reconciliation to ask the provider, never back to `pending` blind. A provider that cannot
    # be asked (push) gets the message again later: a possible duplicate is the lesser harm.
    for pk, exc in list(outcome.transient.items()):
        if exc.maybe_sent and provider_can_be_asked(by_id[pk].channel):
            del outcome.transient[pk]
            outcome.unknown[pk] = str(exc)


def provider_can_be_asked(channel: str) -> bool:
    """Whether the provider can say if it got a message: Postmark (outbound search by
    metadata) and Twilio (its message list); the others cannot."""
    if channel == "email":
        return settings.EMAIL_BACKEND.startswith("anymail.backends.postmark")
    if channel == "sms":
        return settings.CCM_SMS_BACKEND.endswith(".TwilioSmsBackend")
    return False


def _record_dispatched(by_id: dict[int, Delivery], outcome: _Outcome) -> dict[str, int]:
    """Every outcome of a chunk, each through the one transition service (history, webhook
    events, failure signal and fallback included)."""
    now = timezone.now()
    failed: dict[int, str] = dict(outcome.permanent)
    later: dict[int, TransientSendError] = {}
    for pk, exc in outcome.transient.items():
        attempts = by_id[pk].attempts  # loaded after the claim counted this attempt
        if attempts >= settings.CCM_DISPATCH_MAX_ATTEMPTS:
            failed[pk] = f"gave up after {attempts} attempts: {exc}"
        else:
            later[pk] = exc
    with transaction.atomic():
        sent_ids = deliveries_move(
            ids=list(outcome.sent),
            source=DeliveryState.SENDING,
            target=DeliveryState.SENT,
            values={"sent_at": now, "last_error": ""},
            per_row={
                pk: {
                    "provider": by_id[pk].channel,
                    "provider_message_id": provider_id or by_id[pk].message_id,
                }
                for pk, provider_id in outcome.sent.items()
            },
        )
        _communications_sent(sent_ids, by_id, now)
        deliveries_move(
            ids=list(later),
            source=DeliveryState.SENDING,
            target=DeliveryState.PENDING,
            action="delivery.retry_later",
            per_row={
                pk: {
                    "next_attempt_at": now
                    + timedelta(
                        seconds=max(backoff_seconds(by_id[pk].attempts, base=30, cap=3600), 1)
                    ),
                    "last_error": str(exc)[:2000],
                }
                for pk, exc in later.items()
            },
        )
        deliveries_move(
            ids=list(failed),
            source=DeliveryState.SENDING,
            target=DeliveryState.FAILED,
            per_row={pk: {"last_error": reason[:2000]} for pk, reason in failed.items()},
        )
        # Not sent for the provider's rate: back in line, this attempt not counted.
        throttled = deliveries_move(
            ids=outcome.throttled,
            source=DeliveryState.SENDING,
            target=DeliveryState.PENDING,
            action="delivery.throttled",
            values={"attempts": F("attempts") - 1, "next_attempt_at": None},
        )
        for chunk in _chunks(throttled, chunk_size()):
            _enqueue_ids("notifications.pipeline.bulk.dispatch_chunk", chunk)
        # Maybe sent, the provider not answering: it waits in `sending` for reconciliation,
        # which asks the provider before anything is sent again.
        history.steps_record(
            history.Step(
                by_id[pk].communication_id,
                "delivery.outcome_unknown",
                {"error": reason[:300]},
                delivery_id=pk,
            )
            for pk, reason in outcome.unknown.items()
        )
    return {
        "claimed": len(by_id),
        "sent": len(sent_ids),
        "retry_later": len(later),
        "failed": len(failed),
        "unknown": len(outcome.unknown),
        "throttled": len(outcome.throttled),
    }


def _communications_sent(sent_ids: list[int], by_id: dict[int, Delivery], now) -> None:
    """dispatching → sent for the communications of the deliveries just sent."""
    if not sent_ids:
        return
    # Locked and moved in one statement, so that the webhook events name exactly the ones
    # this moved.
    moved = {
        pk
        for (pk,) in update_returning(
            Communication.objects.select_for_update().filter(
                pk__any={by_id[pk].communication_id for pk in sent_ids},
                state=CommState.DISPATCHING,
            ),
            {"state": CommState.SENT, "sent_at": now, "updated_at": now},
            ["pk"],
        )
    }
    _moved(sorted(moved), CommState.SENT)
    events = []
    steps = []
    for pk in sent_ids:
        communication = by_id[pk].communication
        if communication.pk in moved:
            moved.discard(communication.pk)
            steps.append(history.Step(communication.pk, "communication.sent", {}))
            events.append(
                webhooks.Occurrence(
                    webhooks.WebhookEvent.SENT,
                    communication,
                    CommState.SENT,
                    channel=by_id[pk].channel,
                )
            )
    history.steps_record(steps, at=now)
    webhooks.webhook_events_emit(events)


# --- reconciliation -------------------------------------------------------------------------


def deliveries_reconcile(ids: Sequence[int]) -> dict[str, int]:
    """Deliveries stuck in `sending` (a worker died, or the provider did not answer in time):
    ask the provider about each before anything is sent again. Found → sent; not found → back
    to pending and dispatched; the provider cannot tell → asked again later, and after
    CCM_RECONCILE_MAX_CHECKS checks the delivery fails with "outcome unknown" (an exception
    case for operations, no automatic fallback: the first message may still have arrived)."""
    stale = timezone.now() - timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S)
    candidates = list(
        Delivery.objects.filter(
            pk__any=list(ids), state=DeliveryState.SENDING, updated_at__lt=stale
        ).values_list("pk", flat=True)
    )
    if not candidates:
        return {"checked": 0}
    deliveries = _load(candidates)
    by_id = {d.pk: d for d in deliveries}
    outcome = _Outcome()
    missing: list[int] = []
    for d in deliveries:
        try:
            found = backend_for(d.channel).lookup(d)
        except TransientSendError as exc:
            outcome.unknown[d.pk] = str(exc)
            continue
        if found:
            outcome.sent[d.pk] = found
        else:
            missing.append(d.pk)
    now = timezone.now()
    with transaction.atomic():
        counts = _record_dispatched(by_id, _Outcome(sent=outcome.sent))
        reset = deliveries_move(
            ids=missing,
            source=DeliveryState.SENDING,
            target=DeliveryState.PENDING,
            action="delivery.not_at_provider",
            values={"next_attempt_at": None},
        )
        for chunk in _chunks(reset, chunk_size()):
            _enqueue_ids("notifications.pipeline.bulk.dispatch_chunk", chunk)
        unknown = list(outcome.unknown)
        Delivery.objects.filter(pk__any=unknown, state=DeliveryState.SENDING).update(
            checks=F("checks") + 1, updated_at=now
        )
        limit = settings.CCM_RECONCILE_MAX_CHECKS
        given_up = list(
            Delivery.objects.filter(
                pk__any=unknown, state=DeliveryState.SENDING, checks__gte=limit
            ).values_list("pk", "checks")
        )
        deliveries_move(
            ids=[pk for pk, _ in given_up],
            source=DeliveryState.SENDING,
            target=DeliveryState.FAILED,
            per_row={
                pk: {
                    "last_error": f"outcome unknown after {checks} checks with the provider: "
                    f"{outcome.unknown[pk]}"[:2000]
                }
                for pk, checks in given_up
            },
            fall_back=False,
        )
        for delivery in Delivery.objects.filter(pk__any=[pk for pk, _ in given_up]).select_related(
            "communication"
        ):
            signals.delivery_outcome_unknown.send(
                sender=Delivery, delivery=delivery, reason=delivery.last_error
            )
        history.steps_record(
            history.Step(
                by_id[pk].communication_id,
                "delivery.outcome_unknown",
                {"error": outcome.unknown[pk][:300]},
                delivery_id=pk,
            )
            for pk in unknown
            if pk not in dict(given_up)
        )
    return {
        "checked": len(deliveries),
        "sent": counts.get("sent", 0),
        "resent": len(reset),
        "unknown": len(unknown) - len(given_up),
        "failed": len(given_up),
    }

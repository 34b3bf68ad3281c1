"""The intake of every entry point (the API's single and batch endpoints, forms, cases, reprints,
send jobs, campaigns, incidents, statements): validate each item with one compiled schema
validator, check idempotency, and create the communications in one transaction — one row at a
time for one request, many with one INSERT or COPY — with their history steps and one audit
event. Composition is enqueued after commit (`compose.compose_enqueue`). A bad item refuses only
itself unless the caller asks for all or nothing."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.utils import timezone

from ccm.rows import insert_rows, prepared_cursor, qn
from ccm.tasks import Queue
from documents import selectors as document_selectors
from documents import services as documents
from documents.composition import (
    CompositionError,
    DataInvalid,
)
from documents.models import Template, TemplateVersion
from notifications.customers.services import address_normalise
from notifications.errors import IntakeError
from notifications.models import (
    Communication,
    CommunicationStep,
    Customer,
)
from notifications.pipeline import history
from notifications.pipeline.chunks import needs_pdf
from notifications.pipeline.compose import compose_enqueue
from notifications.pipeline.content import addressee_of, intake_data_validate


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
    known = (
        {c.pk: c for c in Customer.objects.filter(pk__any=list(customer_ids))}
        if customer_ids
        else {}
    )
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
        [_received(c.pk, c.template.code, c.source) for c in new],
        actor=by,
        seal_soon=False,  # sealed by the chunk that composes them: no chain lock per request
    )
    # Communications that archive no PDF are composed on the dispatch queue: no render backlog
    # stands between an urgent SMS and its provider.
    for text_only in (True, False):
        compose_enqueue(
            [c.pk for c in new if _text_only(c, published) is text_only],
            queue=Queue.DISPATCH if text_only else None,
        )


def _received(pk: int, template_code: str, source: str) -> history.Step:
    return history.Step(pk, "communication.received", {"template": template_code, "source": source})


def communications_received(
    ids: list[int], *, template_code: str, source: str, by, text_only: bool
) -> None:
    """What `_create` does after its insert, for communications of one template that a caller
    inserted in SQL itself (a campaign's hand-off copies its frozen rows): their `received`
    steps, then composition after commit (on the dispatch queue when they render no PDF)."""
    history.steps_record(
        [_received(pk, template_code, source) for pk in ids], actor=by, seal_soon=False
    )
    compose_enqueue(ids, queue=Queue.DISPATCH if text_only else None)


def _create_one(
    communication: Communication,
    result: IntakeResult,
    *,
    by,
    published: Mapping[str, TemplateVersion | None],
) -> None:
    """What `_create` does for one communication (one API call), in ONE statement and no
    transaction of its own: it inserts the communication (its id drawn from the sequence
    there) and, if it was new, its `received` step, whose hash — it covers the id — is taken
    in the same statement. An idempotency key already used by this client inserts nothing and
    answers the first one."""
    opts = Communication._meta
    db = connections[DEFAULT_DB_ALIAS]  # not the proxy: a lookup for each of 27 fields
    values = [
        f.get_db_prep_save(f.pre_save(communication, True), db)
        for f in opts.concrete_fields
        if not f.primary_key
    ]
    # The step's row with the text its hash covers, the id left to fill in by the statement.
    [step] = history.step_rows(
        [_received(_ID_TO_COME, communication.template.code, communication.source)],
        actor=by,
        at=timezone.now(),
        hashed=False,
    )
    head, tail = step[7].split(f"{_ID_KEY}{_ID_TO_COME},")
    step_values = [*step[1:6], json.dumps(step[6]), head + _ID_KEY, f",{tail}", step[8]]
    with prepared_cursor() as cursor:
        cursor.execute(_insert_one_sql(), [*values, *step_values])
        row = cursor.fetchone()
    if row is None:
        # The key was used before (or by a request that committed meanwhile): its communication.
        result.communication_id = (
            Communication.objects.filter(
                client=communication.client, idempotency_key=communication.idempotency_key
            )
            .values_list("pk", flat=True)
            .first()
        )
        return
    communication.pk = row[0]
    communication._state.adding = False
    result.communication_id, result.communication, result.created = row[0], communication, True
    compose_enqueue(
        [row[0]], queue=Queue.DISPATCH if _text_only(communication, published) else None
    )


# The id in a step's hashed text is written by the statement that draws it: the text is made
# with this stand-in (no communication has it) and split around it.
_ID_TO_COME = -1
# Keys are sorted: "communication" is followed by "delivery". JSON escapes any quote inside a
# string, so the unescaped one here can only open the key itself.
_ID_KEY = '"communication":'


@functools.cache
def _insert_one_sql() -> str:
    """The statement of `_create_one`: the communication's concrete fields but its id, in
    `fields` order, then its step's STEP_COLUMNS but the first, the hash given as the hashed
    text before and after the id."""
    opts = Communication._meta
    by_column = {f.column: f for f in CommunicationStep._meta.concrete_fields}
    step_columns = [name.strip() for name in history.STEP_COLUMNS.split(",")][1:]
    hash_at = step_columns.index("hash")
    columns = [f"%s::{by_column[name].db_type(connection)}" for name in step_columns]
    # sha256 over the same ASCII text `audit.plain_leaf_hash` hashes, the id written in.
    columns[hash_at : hash_at + 1] = [
        "encode(sha256(convert_to(%s || c.id::text || %s, 'UTF8')), 'hex')"
    ]
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    # Names come from the models' metadata; every value is a parameter.
    return (
        f"WITH c AS (INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT (client, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
        f"RETURNING id), "
        f"s AS (INSERT INTO {qn(CommunicationStep._meta.db_table)} ({history.STEP_COLUMNS}) "
        f"SELECT c.id, {', '.join(columns)} FROM c) "
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

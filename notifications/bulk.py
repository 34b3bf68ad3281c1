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

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import jsonschema
import requests
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from ccm import audit
from ccm.tasks import enqueue
from documents import selectors as document_selectors
from documents import services as documents
from documents.addressee import identity_errors, with_addressee
from documents.composition import (
    CompositionError,
    DataInvalid,
    data_errors,
    schema_validator,
)
from documents.models import Template, TemplateVersion
from notifications import fallback, selection, selectors, signals, webhooks
from notifications.channels import (
    EmailBackend,
    PermanentSendError,
    TransientSendError,
    backend_for,
)
from notifications.models import (
    CommState,
    Communication,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryState,
    Preference,
    Suppression,
)
from notifications.postmark_batch import PostmarkPayloads, direct_payloads_allowed
from notifications.services import (
    IntakeError,
    addressee_mismatches,
    addressee_of,
    backoff_seconds,
    composition_context,
    delivery_message_id,
    enabled_channels,
    release_required,
)

logger = logging.getLogger(__name__)

POSTMARK_BATCH_MAX = 500  # Postmark's limit for one /email/batch call


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
        objs = []
        for pk, values in rows.items():
            obj = model(pk=pk)
            for name, value in zip(fields, values, strict=True):
                setattr(obj, model._meta.get_field(name).attname, value)
            objs.append(obj)
        queryset = model.objects.all()
        if where_state is not None:
            queryset = queryset.filter(state=where_state)
        queryset.bulk_update(objs, fields)
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


def insert_rows(model, objs: list) -> None:
    """Insert many new rows and set their primary keys.

    PostgreSQL: ids drawn from the table's sequence, then COPY (several times faster than
    `bulk_create`'s INSERT … RETURNING for thousands of rows). Elsewhere `bulk_create`."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create(objs, batch_size=1000)
        return
    opts = model._meta
    fields = list(opts.concrete_fields)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [opts.db_table, opts.pk.column, len(objs)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        columns = ", ".join(qn(f.column) for f in fields)
        with cursor.cursor.copy(f"COPY {qn(opts.db_table)} ({columns}) FROM STDIN") as copy:
            for obj, pk in zip(objs, ids, strict=True):
                obj.pk = pk
                row = []
                for f in fields:
                    if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                        setattr(obj, f.attname, now)
                    row.append(_db_value(f, getattr(obj, f.attname)))
                copy.write_row(row)
    for obj in objs:
        obj._state.adding = False


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


# --- intake ---------------------------------------------------------------------------------


class BulkIntakeError(IntakeError):
    """Some items cannot become communications; nothing was created. `errors` lists, per item
    index, what to fix: [{"index": 3, "errors": [{"field": …, "message": …}]}]."""

    def __init__(self, message: str, *, errors: list[dict]):
        super().__init__(message, field="items")
        self.errors = errors


_validators: dict[tuple[int, str], jsonschema.protocols.Validator] = {}


def _validator(version: TemplateVersion) -> jsonschema.protocols.Validator:
    """The compiled validator of a version's schema, built once per process."""
    key = (version.pk, version.content_hash)
    validator = _validators.get(key)
    if validator is None:
        validator = _validators[key] = schema_validator(version.content.get("schema", {}))
    return validator


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
    """Accept many communications of one template; return their ids in the order of `items`.

    Each item is {"customer": Customer or its id, "data": {…}, "idempotency_key": optional}.
    All or nothing: if any item's data does not match the published schema (or names an unknown
    customer), nothing is created and `BulkIntakeError` lists every bad item by index. An item
    whose idempotency key this client already used gets the communication made the first time.
    The version validated against is pinned on the communications, so composition renders the
    exact version the data was checked against.
    """
    template = Template.objects.filter(code=template_code).first()
    if template is None:
        raise IntakeError(f"There is no template {template_code!r}.", field="template")
    version = document_selectors.version_for_sending(code=template_code)
    if version is None:
        raise IntakeError(
            f"Template {template_code!r} has no published version yet.", field="template"
        )
    validator = _validator(version)
    schema = version.content.get("schema", {})
    problems: list[dict] = []
    snapshots: list[dict] = []
    customer_ids: list[int] = [
        item["customer"].pk if isinstance(item.get("customer"), Customer) else item["customer"]
        for item in items
    ]
    customers = Customer.objects.in_bulk({pk for pk in customer_ids if isinstance(pk, int)})
    for index, (item, customer_id) in enumerate(zip(items, customer_ids, strict=True)):
        customer = customers.get(customer_id)
        if customer is None:
            problems.append(
                {"index": index, "errors": [{"field": "customer", "message": "unknown customer"}]}
            )
        try:
            snapshot = documents.data_snapshot(item.get("data") or {})
        except DataInvalid as exc:
            problems.append({"index": index, "errors": [{"field": "", "message": exc.reason}]})
            snapshots.append({})
            continue
        snapshots.append(snapshot)
        context = snapshot
        errors = []
        if customer is not None:
            # The same checks as one request's intake: identity fields name this customer, and
            # the schema sees the customer's own variables.
            addressee = addressee_of(customer)
            errors = identity_errors(schema, snapshot, addressee)
            context = with_addressee(snapshot, addressee)
        errors += data_errors(validator, context)
        if errors:
            problems.append(
                {
                    "index": index,
                    "errors": [{"field": e.field, "message": e.message} for e in errors],
                }
            )
    if problems:
        problems.sort(key=lambda p: p["index"])
        raise BulkIntakeError(
            f"{len({p['index'] for p in problems})} of {len(items)} items are invalid; "
            "nothing was created.",
            errors=problems,
        )
    create = partial(
        _create,
        template=template,
        version=version,
        items=items,
        snapshots=snapshots,
        customer_ids=customer_ids,
        client=client,
        by=by,
        source=source,
        category=category or template.category,
        urgency=urgency,
        correlation_id=correlation_id,
    )
    try:
        return create()
    except IntegrityError:
        # Another request used one of the idempotency keys meanwhile: once more, now that its
        # communications are visible, they are returned instead of created.
        return create()


@transaction.atomic
def _create(
    *,
    template: Template,
    version: TemplateVersion,
    items: Sequence[Mapping[str, Any]],
    snapshots: list[dict],
    customer_ids: list[int],
    client: str,
    by,
    source: str,
    category: str,
    urgency: str,
    correlation_id: str,
) -> list[int]:
    keys = [str(item.get("idempotency_key") or "") or None for item in items]
    existing: dict[str, int] = {}
    wanted = {k for k in keys if k}
    if wanted:
        existing = dict(
            Communication.objects.filter(client=client, idempotency_key__in=wanted).values_list(
                "idempotency_key", "pk"
            )
        )
    new: list[Communication] = []
    new_index: dict[str, int] = {}  # a key repeated within the batch makes one communication
    slots: list[int | Communication] = []
    created_by = by if by is not None and getattr(by, "pk", None) else None
    for key, snapshot, customer_id in zip(keys, snapshots, customer_ids, strict=True):
        if key and key in existing:
            slots.append(existing[key])
            continue
        if key and key in new_index:
            slots.append(new[new_index[key]])
            continue
        communication = Communication(
            customer_id=customer_id,
            template=template,
            template_version=version,
            data=snapshot,
            category=category,
            urgency=urgency,
            source=source,
            correlation_id=correlation_id,
            client=client,
            idempotency_key=key,
            created_by=created_by,
        )
        if key:
            new_index[key] = len(new)
        new.append(communication)
        slots.append(communication)
    insert_rows(Communication, new)
    new_ids = [c.pk for c in new]
    if new_ids:
        audit.record(
            actor=by,
            action="communications.received_bulk",
            after={
                "template": template.code,
                "version": version.pk,
                "source": source,
                "count": len(new_ids),
                "ids": id_ranges(new_ids),
            },
        )
        for ids in _chunks(new_ids, chunk_size()):
            _enqueue_ids("notifications.bulk.compose_chunk", ids)
    return [slot if isinstance(slot, int) else slot.pk for slot in slots]


def _enqueue_ids(task: str, ids: list[int]) -> None:
    # One task carries one chunk of ids (a list argument; `enqueue` only types single ids).
    enqueue(task, ids)


# --- compose --------------------------------------------------------------------------------


def _claim_communications(ids: Sequence[int], source: str, target: str) -> list[int]:
    """One guarded UPDATE for a whole chunk: the ids this call moved from `source`."""
    now = timezone.now()
    with transaction.atomic():
        claimed = list(
            Communication.objects.select_for_update(skip_locked=True)
            .filter(pk__in=ids, state=source)
            .values_list("pk", flat=True)
        )
        if claimed:
            Communication.objects.filter(pk__in=claimed, state=source).update(
                state=target, updated_at=now
            )
    return claimed


def _facts(communications: list[Communication], renditions: dict[int, list[str]]):
    """Selection facts for a chunk, from six queries instead of six per communication."""
    customer_ids = {c.customer_id for c in communications}
    categories = {c.category for c in communications}
    # Plain values, not model instances: building 250 ContactPoints costs more than the query.
    emails: dict[int, list[str]] = defaultdict(list)
    phones: dict[int, list[str]] = defaultdict(list)
    by_kind = {ContactKind.EMAIL.value: emails, ContactKind.PHONE.value: phones}
    for customer_id, kind, value in (
        ContactPoint.objects.filter(customer_id__in=customer_ids, valid=True)
        .order_by("-is_primary", "id")
        .values_list("customer_id", "kind", "value")
    ):
        by_kind[kind][customer_id].append(value)
    consents: dict[tuple[int, str], dict[str, bool]] = defaultdict(dict)
    for customer_id, cat, channel, granted in (
        ConsentRecord.objects.filter(customer_id__in=customer_ids, category__in=categories)
        .order_by("recorded_at", "id")
        .values_list("customer_id", "category", "channel", "granted")
    ):
        consents[(customer_id, cat)][channel] = granted
    preferences: dict[tuple[int, str], dict[str, bool]] = defaultdict(dict)
    for customer_id, cat, channel, allowed in Preference.objects.filter(
        customer_id__in=customer_ids, category__in=categories
    ).values_list("customer_id", "category", "channel", "allowed"):
        preferences[(customer_id, cat)][channel] = allowed
    devices = selectors.device_addresses(customer_ids=customer_ids)
    addresses = {a for found in (*emails.values(), *phones.values()) for a in found}
    addresses.update(a for found in devices.values() for a in found)
    suppressed = frozenset(
        Suppression.objects.filter(address__in=addresses, lifted_at__isnull=True).values_list(
            "channel", "address"
        )
    )
    facts: dict[int, selection.Facts] = {}
    for c in communications:
        mine = {*emails.get(c.customer_id, ()), *phones.get(c.customer_id, ())}
        mine.update(devices.get(c.customer_id, ()))
        customer = c.customer
        facts[c.pk] = selection.Facts(
            category=c.category,
            urgency=c.urgency,
            renditions=renditions[c.pk],
            emails=emails.get(c.customer_id, []),
            phones=phones.get(c.customer_id, []),
            devices=devices.get(c.customer_id, []),
            postal_address=customer.postal_address if customer.postal_address_valid else [],
            preferences=preferences.get((c.customer_id, c.category), {}),
            consents=consents.get((c.customer_id, c.category), {}),
            suppressed=frozenset(s for s in suppressed if s[1] in mine),
            override=c.channel_override,
        )
    return facts


def _per_message(version: TemplateVersion | None, communication: Communication) -> bool:
    """A PDF to archive or a release to wait for: the per-message pipeline's work."""
    if version is None:
        return True
    meta = version.meta
    if communication.document_id is None and (
        "print" in meta.get("channels", []) or meta.get("delivery", "attach") == "attach"
    ):
        return True
    if addressee_mismatches(communication, version):
        # The customer record changed since intake: held or failed there, with the reason.
        return True
    return (
        communication.created_by_id is not None
        and release_required(version, communication.data) is not None
    )


@dataclass
class _Composed:
    communication: Communication
    version: TemplateVersion
    selection: selection.Selection
    rendered: dict


def compose_chunk(ids: Sequence[int]) -> dict[str, int]:
    """received → composing → dispatching (deliveries created) for a chunk; safe to run twice.

    Returns counts by outcome (for logs and tests)."""
    ids = list(ids)
    candidates = list(
        Communication.objects.filter(pk__in=ids, state=CommState.RECEIVED)
        .select_related("customer", "template")
        .defer("rendered", "decision_trace", "failure_errors")
    )
    # Bulk intake pins the version; anything else is the per-message pipeline's to compose.
    versions = {
        v.pk: v
        for v in TemplateVersion.objects.select_related("template").filter(
            pk__in={c.template_version_id for c in candidates if c.template_version_id}
        )
    }
    handed_over = {
        c.pk for c in candidates if _per_message(versions.get(c.template_version_id or 0), c)
    }
    for pk in sorted(handed_over):
        enqueue("notifications.tasks.communication_compose", pk)
    claimed = _claim_communications(
        [c.pk for c in candidates if c.pk not in handed_over],
        CommState.RECEIVED,
        CommState.COMPOSING,
    )
    counts = {"handed_over": len(handed_over), "claimed": len(claimed)}
    if not claimed:
        return counts
    # Loaded before the claim; what composition reads (data, customer) does not change.
    mine = set(claimed)
    communications = [c for c in candidates if c.pk in mine]
    enabled = set(enabled_channels())
    renditions: dict[int, list[str]] = {}
    for c in communications:
        version = versions[c.template_version_id]
        renditions[c.pk] = [ch for ch in version.meta.get("channels", []) if ch in enabled]
    facts = _facts(communications, renditions)
    composed: list[_Composed] = []
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]] = []
    # One trip to the render worker per template version and language in the chunk.
    groups: dict[tuple[int, str], list[tuple[Communication, selection.Selection]]] = {}
    for c in communications:
        version = versions[c.template_version_id]
        try:
            chosen = selection.select_channels(facts[c.pk])
        except CompositionError as exc:
            failed.append((c, version, exc))
            continue
        language = documents.language_for(version, c.customer.language)
        groups.setdefault((version.pk, language), []).append((c, chosen))
    for (version_pk, language), members in groups.items():
        version = versions[version_pk]
        results = documents.text_channels_compose(
            version=version,
            language=language,
            items=[(composition_context(c, version), chosen.channels) for c, chosen in members],
        )
        for (c, chosen), rendered in zip(members, results, strict=True):
            if isinstance(rendered, CompositionError):
                failed.append((c, version, rendered))
            else:
                composed.append(_Composed(c, version, chosen, rendered))
    counts.update(_record_composed(composed, failed))
    return counts


def _signal(signal, comm_id: int) -> None:
    """Tell the higher layers, with the communication as it now is (as the per-message path
    does: receivers look at its state and reason)."""
    communication = Communication.objects.get(pk=comm_id)
    signal.send(
        sender=Communication, communication=communication, reason=communication.failure_reason
    )


def _record_composed(
    composed: list[_Composed],
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]],
) -> dict[str, int]:
    now = timezone.now()
    with transaction.atomic():
        # Still ours? A sweep may have reset a chunk that took far too long.
        ours = set(
            Communication.objects.select_for_update()
            .filter(
                pk__in=[x.communication.pk for x in composed] + [f[0].pk for f in failed],
                state=CommState.COMPOSING,
            )
            .values_list("pk", flat=True)
        )
        composed = [x for x in composed if x.communication.pk in ours]
        failed = [f for f in failed if f[0].pk in ours]
        update_rows(
            Communication,
            ["rendered", "decision_trace"],
            {x.communication.pk: (x.rendered, x.selection.trace) for x in composed},
        )
        reachable = [x for x in composed if x.selection.targets]
        unreachable = [x for x in composed if not x.selection.targets]
        Communication.objects.filter(
            pk__in=[x.communication.pk for x in reachable], state=CommState.COMPOSING
        ).update(state=CommState.DISPATCHING, updated_at=now)
        Communication.objects.filter(
            pk__in=[x.communication.pk for x in unreachable], state=CommState.COMPOSING
        ).update(state=CommState.UNDELIVERABLE, failure_reason="no channel can reach the customer")
        deliveries = [
            Delivery(
                communication_id=x.communication.pk,
                channel=target.channel,
                address=target.address,
                message_id=delivery_message_id(x.communication, i, target.channel),
            )
            for x in reachable
            for i, target in enumerate(x.selection.targets)
        ]
        insert_rows(Delivery, deliveries)
        if failed:
            update_rows(
                Communication,
                ["failure_reason", "failure_errors"],
                {
                    c.pk: (
                        exc.reason,
                        [{"field": e.field, "message": e.message} for e in exc.errors],
                    )
                    for c, _, exc in failed
                },
            )
            Communication.objects.filter(
                pk__in=[f[0].pk for f in failed], state=CommState.COMPOSING
            ).update(state=CommState.COMPOSE_FAILED, updated_at=now)
        delivery_ids = [d.pk for d in deliveries]
        webhooks.webhook_events_emit(_composed_occurrences(composed, unreachable, failed))
        audit.record(
            actor=None,
            action="communications.composed_bulk",
            after={
                "dispatching": id_ranges(x.communication.pk for x in reachable),
                "undeliverable": id_ranges(x.communication.pk for x in unreachable),
                "compose_failed": {str(f[0].pk): f[2].reason for f in failed},
                "deliveries": id_ranges(delivery_ids),
            },
        )
        for ids in _chunks(delivery_ids, chunk_size()):
            _enqueue_ids("notifications.bulk.dispatch_chunk", ids)
        for x in unreachable:
            transaction.on_commit(
                partial(_signal, signals.communication_undeliverable, x.communication.pk)
            )
        for communication, _, _exc in failed:
            transaction.on_commit(
                partial(_signal, signals.communication_compose_failed, communication.pk)
            )
    return {
        "dispatching": len(reachable),
        "undeliverable": len(unreachable),
        "compose_failed": len(failed),
        "deliveries": len(delivery_ids),
    }


def _composed_occurrences(
    composed: list[_Composed],
    unreachable: list[_Composed],
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]],
) -> list[webhooks.Occurrence]:
    """The webhook events of a composed chunk: what the per-message path reports one by one
    (it passes through `composed` before it dispatches or finds nobody to send to)."""
    events = [
        webhooks.Occurrence(webhooks.WebhookEvent.COMPOSED, x.communication, CommState.COMPOSED)
        for x in composed
    ]
    events += [
        webhooks.Occurrence(
            webhooks.WebhookEvent.UNDELIVERABLE,
            x.communication,
            CommState.UNDELIVERABLE,
            reason="no channel can reach the customer",
        )
        for x in unreachable
    ]
    events += [
        webhooks.Occurrence(
            webhooks.WebhookEvent.FAILED, c, CommState.COMPOSE_FAILED, reason=exc.reason
        )
        for c, _, exc in failed
    ]
    return events


# --- dispatch -------------------------------------------------------------------------------


@dataclass
class _Outcome:
    sent: dict[int, str] = field(default_factory=dict)  # delivery id → provider id
    transient: dict[int, TransientSendError] = field(default_factory=dict)
    permanent: dict[int, str] = field(default_factory=dict)
    unknown: dict[int, str] = field(default_factory=dict)  # maybe sent, provider not answering


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
    for delivery in deliveries:
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
    now = timezone.now()
    with transaction.atomic():
        claimed = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(pk__in=ids, state=DeliveryState.PENDING)
            .exclude(next_attempt_at__gt=now)
            .values_list("pk", flat=True)
        )
        if claimed:
            Delivery.objects.filter(pk__in=claimed, state=DeliveryState.PENDING).update(
                state=DeliveryState.SENDING, attempts=F("attempts") + 1, updated_at=now
            )
    return claimed


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
        Delivery.objects.filter(pk__in=ids)
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
    each before anything is sent again."""
    claimed = _claim_deliveries(list(ids))
    if not claimed:
        return {"claimed": 0}
    deliveries = _load(claimed)
    by_id = {d.pk: d for d in deliveries}
    outcome = _Outcome()
    emails = [d for d in deliveries if d.channel == "email"]
    others = [d for d in deliveries if d.channel != "email"]
    connection = _open_connection() if emails else None
    try:
        email = _ConnectedEmailBackend(connection)
        if emails and _is_postmark(connection):
            _send_postmark_batch(connection, email, emails, outcome)
        else:
            _send_each(email, emails, outcome)
        for d in others:
            _send_each(backend_for(d.channel), [d], outcome)
        _retry_inline(connection, email, by_id, outcome)
    finally:
        if connection is not None:
            connection.close()
    return _record_dispatched(by_id, outcome)


def _retry_inline(connection, email: _ConnectedEmailBackend, by_id, outcome: _Outcome) -> None:
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
        emails = [d for d in again if d.channel == "email"]
        if emails and connection is not None and _is_postmark(connection):
            _send_postmark_batch(connection, email, emails, outcome)
        else:
            _send_each(email, emails, outcome)
        for d in again:
            if d.channel != "email":
                _send_each(backend_for(d.channel), [d], outcome)
    # Unknown outcomes that are still unknown after the last try wait in `sending` too.
    for pk, exc in list(outcome.transient.items()):
        if exc.maybe_sent:
            del outcome.transient[pk]
            outcome.unknown[pk] = str(exc)


def _record_dispatched(by_id: dict[int, Delivery], outcome: _Outcome) -> dict[str, int]:
    now = timezone.now()
    failed: dict[int, str] = dict(outcome.permanent)
    later: dict[int, TransientSendError] = {}
    for pk, exc in outcome.transient.items():
        attempts = by_id[pk].attempts  # loaded after the claim counted this attempt
        if attempts >= settings.CCM_DISPATCH_MAX_ATTEMPTS:
            failed[pk] = f"gave up after {attempts} attempts: {exc}"
        else:
            later[pk] = exc
    events: list[webhooks.Occurrence] = []
    with transaction.atomic():
        sending = Delivery.objects.filter(state=DeliveryState.SENDING)
        sent_ids = list(outcome.sent)
        if sent_ids:
            update_rows(
                Delivery,
                ["state", "provider", "provider_message_id", "sent_at", "last_error", "updated_at"],
                {
                    pk: (
                        DeliveryState.SENT.value,
                        by_id[pk].channel,
                        provider_id or by_id[pk].message_id,
                        now,
                        "",
                        now,
                    )
                    for pk, provider_id in outcome.sent.items()
                },
                where_state=DeliveryState.SENDING,
            )
            # Locked first so that the webhook events name exactly the ones this moved.
            moved = set(
                Communication.objects.select_for_update()
                .filter(
                    pk__in={by_id[pk].communication_id for pk in sent_ids},
                    state=CommState.DISPATCHING,
                )
                .values_list("pk", flat=True)
            )
            Communication.objects.filter(pk__in=moved, state=CommState.DISPATCHING).update(
                state=CommState.SENT, sent_at=now, updated_at=now
            )
            for pk in sent_ids:
                communication = by_id[pk].communication
                if communication.pk in moved:
                    moved.discard(communication.pk)
                    events.append(
                        webhooks.Occurrence(
                            webhooks.WebhookEvent.SENT,
                            communication,
                            CommState.SENT,
                            channel=by_id[pk].channel,
                        )
                    )
        if later:
            sending.filter(pk__in=list(later)).update(state=DeliveryState.PENDING, updated_at=now)
            update_rows(
                Delivery,
                ["next_attempt_at", "last_error"],
                {
                    pk: (
                        now
                        + timedelta(
                            seconds=max(backoff_seconds(by_id[pk].attempts, base=30, cap=3600), 1)
                        ),
                        str(exc)[:2000],
                    )
                    for pk, exc in later.items()
                },
            )
        failed_rows: list[Delivery] = []
        if failed:
            for pk, reason in failed.items():
                by_id[pk].last_error = reason[:2000]
                failed_rows.append(by_id[pk])
            sending.filter(pk__in=list(failed)).update(state=DeliveryState.FAILED, updated_at=now)
            update_rows(Delivery, ["last_error"], {d.pk: (d.last_error,) for d in failed_rows})
            events += [webhooks.delivery_failed_occurrence(d) for d in failed_rows]
        webhooks.webhook_events_emit(events)
        audit.record(
            actor=None,
            action="deliveries.dispatched_bulk",
            after={
                "sent": id_ranges(sent_ids),
                "retry_later": id_ranges(later),
                "failed": {str(pk): reason[:300] for pk, reason in failed.items()},
                "unknown": id_ranges(outcome.unknown),
            },
        )
        for delivery in failed_rows:
            delivery.state = DeliveryState.FAILED
            transaction.on_commit(
                partial(
                    signals.delivery_failed.send,
                    sender=Delivery,
                    delivery=delivery,
                    reason=delivery.last_error,
                )
            )
            fallback.delivery_fall_back(delivery=delivery, reason=delivery.last_error)
    return {
        "claimed": len(by_id),
        "sent": len(sent_ids),
        "retry_later": len(later),
        "failed": len(failed),
        "unknown": len(outcome.unknown),
    }

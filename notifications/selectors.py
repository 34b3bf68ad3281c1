"""Reads for the notifications screens and endpoints."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import QuerySet, Sum
from django.utils import timezone

from ccm.rows import prepared_cursor
from ccm.search import as_int, as_uuid, contains, matching_pks
from notifications.models import (
    Communication,
    ConsentRecord,
    ContactPoint,
    Customer,
    Device,
    PrintBatch,
    PrintItem,
    device_address,
)


def customer_by_reference(*, source_system: str, external_ref: str) -> Customer | None:
    """The customer an API request names, in one plain statement (prepared on the connection):
    every `POST /api/v1/communications` asks for one, and building the ORM's query (or a raw
    queryset's column mapping) cost more than running it."""
    sql, attnames, converters = _customer_read()
    with prepared_cursor() as cursor:
        cursor.execute(sql, [source_system, external_ref])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for i, convert in converters:  # the JSON fields' decoding
        values[i] = convert(values[i], None, connection)
    return Customer.from_db(connection.alias, attnames, values)


@functools.cache
def _customer_read() -> tuple[str, list[str], list[tuple[int, Any]]]:
    """`customer_by_reference`'s statement, the fields' names in its column order and the
    database converters of its columns (by position): made once per process."""
    fields = Customer._meta.concrete_fields
    qn = connection.ops.quote_name
    sql = (
        f"SELECT {', '.join(qn(str(f.column)) for f in fields)} "  # noqa: S608 - model's names
        f"FROM {qn(Customer._meta.db_table)} WHERE source_system = %s AND external_ref = %s"
    )
    converters = [
        (i, convert)
        for i, field in enumerate(fields)
        for convert in field.get_db_converters(connection)
    ]
    return sql, [f.attname for f in fields], converters


def consent_at(
    *, customer: Customer, channel: str, category: str, at: datetime
) -> ConsentRecord | None:
    """The ledger entry in force for (channel, category) at a moment: the latest one before it."""
    return (
        ConsentRecord.objects.filter(
            customer=customer, channel=channel, category=category, recorded_at__lte=at
        )
        .order_by("-recorded_at", "-id")
        .first()
    )


def consent_applied(communication: Communication) -> list[dict]:
    """What consent applied, per channel used, when the communication was sent."""
    at = communication.sent_at or timezone.now()
    channels = sorted({d.channel for d in communication.deliveries.all()})
    out = []
    for channel in channels:
        record = consent_at(
            customer=communication.customer,
            channel=channel,
            category=communication.category,
            at=at,
        )
        out.append(
            {
                "channel": channel,
                "category": communication.category,
                "at": at,
                "granted": None if record is None else record.granted,
                "legal_basis": None if record is None else record.legal_basis,
                "recorded_at": None if record is None else record.recorded_at,
                "source": None if record is None else record.source,
            }
        )
    return out


def device_addresses(*, customer_ids: Iterable[int]) -> dict[int, list[str]]:
    """Each customer's active devices as push addresses, the most recently seen first (the one
    selection picks)."""
    out: dict[int, list[str]] = defaultdict(list)
    for customer_id, pk in (
        Device.objects.filter(customer_id__any=list(customer_ids), active=True)
        .order_by("-last_seen_at", "-id")
        .values_list("customer_id", "pk")
    ):
        out[customer_id].append(device_address(pk))
    return out


def print_item_by_reference(reference: str) -> PrintItem | None:
    """The letter named "batch-<id>/<sequence>", as its cover sheet shows it."""
    batch, _, sequence = reference.strip().removeprefix("batch-").partition("/")
    if not (batch.isdigit() and sequence.isdigit()):
        return None
    return (
        PrintItem.objects.select_related("batch", "customer")
        .filter(batch_id=int(batch), sequence=int(sequence))
        .first()
    )


def print_batch_letter_pages(batch: PrintBatch) -> int:
    """The pages of the letters in `batch` (without the cover sheets the stream adds)."""
    return batch.items.aggregate(pages=Sum("pages"))["pages"] or 0


def customer_search(term: str) -> QuerySet:
    """The ids of the customers whose name, reference, email or phone number contains `term`
    (each through its trigram index, see ccm/search.py)."""
    return matching_pks(
        [
            Customer.objects.filter(contains("name", term)).values("pk"),
            Customer.objects.filter(contains("external_ref", term)).values("pk"),
            ContactPoint.objects.filter(contains("value", term)).values("customer_id"),
        ]
    )


def communication_search(term: str) -> QuerySet:
    """The ids of the communications `term` names: by their customer (name, reference, email,
    phone), their correlation id, their id or public id."""
    parts = [
        Communication.objects.filter(customer_id__in=customer_search(term)).values("pk"),
        Communication.objects.filter(correlation_id=term).values("pk"),
    ]
    if (number := as_int(term)) is not None:
        parts.append(Communication.objects.filter(pk=number).values("pk"))
    if (public_id := as_uuid(term)) is not None:
        parts.append(Communication.objects.filter(public_id=public_id).values("pk"))
    return matching_pks(parts)

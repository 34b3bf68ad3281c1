"""Reads for the customer screens (cases/web/customers.py): the search, and what the customer
page shows — contact points with their state, preferences, the consent ledger, communications
with their channels and documents, open cases and address corrections.

Every read is bounded and filtered on an indexed column (the customer's foreign key, the
reference's unique index, the (name, id) order of the list); a page runs a fixed number of
queries whatever the customer's history holds."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from cases.customer_models import AddressCorrection
from cases.models import OPEN_STATES, Case
from notifications.customers.services import normalise_phone
from notifications.models import (
    Channel,
    Communication,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    Preference,
    Suppression,
)

LIST_PAGE_SIZE = 25
COMMUNICATIONS_SHOWN = 50
LEDGER_SHOWN = 100
CONTACT_CHANNEL: dict[str, str] = {ContactKind.EMAIL: Channel.EMAIL, ContactKind.PHONE: Channel.SMS}


def customer_search(query: str, *, limit: int = LIST_PAGE_SIZE) -> list[Customer]:
    """Customers by reference (exact or prefix), by email address or phone number (exact), or
    whose name contains `query`; name order. Each arm is one indexed lookup."""
    query = query.strip()
    if not query:
        return []
    ids: set[int] = set()
    contact = _contact_value(query)
    if contact:
        ids = set(
            ContactPoint.objects.filter(value__iexact=contact).values_list(
                "customer_id", flat=True
            )[:limit]
        )
    named = Customer.objects.filter(
        Q(external_ref__iexact=query)
        | Q(external_ref__istartswith=query)
        | Q(name__icontains=query)
    ).order_by("name", "id")
    found = list(named[:limit])
    if ids - {c.pk for c in found}:
        found += list(Customer.objects.filter(pk__in=ids - {c.pk for c in found}))
        found.sort(key=lambda c: (c.name, c.pk))
    return found[:limit]


def _contact_value(query: str) -> str:
    """The query as contact points store it (an email address, an E.164 number), or ""."""
    if "@" in query:
        return query
    if not query.lstrip("+").replace(" ", "").isdigit():
        return ""
    try:
        return normalise_phone(query)
    except ValidationError:
        return ""


def customers_after(after: Customer | None, *, limit: int = LIST_PAGE_SIZE) -> list[Customer]:
    """One page of every customer in (name, id) order from after `after` (keyset: no count, no
    offset, so the thousandth page costs what the first does)."""
    qs = Customer.objects.order_by("name", "id")
    if after is not None:
        qs = qs.filter(Q(name__gt=after.name) | Q(name=after.name, pk__gt=after.pk))
    return list(qs[:limit])


@dataclass(frozen=True)
class ContactRow:
    kind: str
    value: str
    primary: bool
    state: str  # valid | invalid | suppressed
    why: str = ""


def contact_rows(customer: Customer) -> list[ContactRow]:
    """Each email address and phone number with its state: valid, invalid (bounced or marked
    so, with the reason) or suppressed (why and since when)."""
    points = list(customer.contacts.all())
    suppressed = {
        (s.channel, s.address.lower()): s
        for s in Suppression.objects.filter(
            lifted_at__isnull=True, address__in=[p.value for p in points]
        )
    }
    rows = []
    for point in points:
        hit = suppressed.get((CONTACT_CHANNEL[point.kind], point.value.lower()))
        if hit is not None:
            detail = f": {hit.detail}" if hit.detail else ""
            why = f"{hit.get_reason_display()} since {hit.created_at:%d %b %Y}{detail}"
            rows.append(ContactRow(point.kind, point.value, point.is_primary, "suppressed", why))
        elif not point.valid:
            why = point.invalid_reason or "marked invalid, no reason given"
            rows.append(ContactRow(point.kind, point.value, point.is_primary, "invalid", why))
        else:
            rows.append(ContactRow(point.kind, point.value, point.is_primary, "valid"))
    return rows


def preferences(customer: Customer) -> QuerySet[Preference]:
    return customer.preferences.order_by("category", "channel")


def consent_ledger(customer: Customer) -> QuerySet[ConsentRecord]:
    """The newest entries of the ledger, newest first (a timeline)."""
    return customer.consents.select_related("actor").order_by("-recorded_at", "-id")[:LEDGER_SHOWN]


@dataclass(frozen=True)
class CommunicationRow:
    communication: Communication
    channels: list[str]


def communication_rows(customer: Customer) -> list[CommunicationRow]:
    """The newest communications with the channels they went out on (their deliveries)."""
    shown = list(
        Communication.objects.filter(customer=customer)
        .select_related("template", "document")
        .order_by("-created_at", "-id")[:COMMUNICATIONS_SHOWN]
    )
    channels: dict[int, list[str]] = defaultdict(list)
    for communication_id, channel in (
        Delivery.objects.filter(communication__in=[c.pk for c in shown])
        .order_by("id")
        .values_list("communication_id", "channel")
    ):
        if channel not in channels[communication_id]:
            channels[communication_id].append(channel)
    return [CommunicationRow(c, channels.get(c.pk, [])) for c in shown]


def open_cases(customer: Customer) -> QuerySet[Case]:
    return (
        Case.objects.filter(customer=customer, state__in=OPEN_STATES)
        .select_related("assignee")
        .order_by("next_due_at", "id")
    )


def address_corrections(customer: Customer) -> QuerySet[AddressCorrection]:
    return customer.address_corrections.select_related("requested_by", "case")[:20]

"""The facts channel selection needs, read for a whole chunk of communications in a handful of
queries: contact points, suppressions, preferences and consents. The one reader of them for
composition (a chunk), a single communication's facts (`facts_for`) and the send-time
re-check (`dispatch.send_time_refusals`)."""

from __future__ import annotations

from collections import defaultdict

from django.conf import settings

from documents.models import TemplateVersion
from notifications import selectors
from notifications.models import (
    Communication,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Preference,
    Suppression,
)
from notifications.pipeline import selection


def enabled_channels() -> list[str]:
    return list(settings.CCM_ENABLED_CHANNELS)


def facts_for(communication: Communication, version: TemplateVersion) -> selection.Facts:
    """Selection facts for one communication (the chunk's function, for a chunk of one)."""
    enabled = set(enabled_channels())
    renditions = [c for c in version.meta.get("channels", []) if c in enabled]
    return facts_for_chunk([communication], {communication.pk: renditions})[communication.pk]


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
    consents, preferences = consents_for(customer_ids, categories)
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


def consents_for(customer_ids, categories):
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

"""Customers, their contact points, preferences, consent and suppressions: every write, each
audited. The channels' feedback handlers (replies, unsubscribe, devices) and the intake call
these; nothing here imports the pipeline."""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from ccm import audit
from notifications.errors import IntakeError
from notifications.models import (
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Preference,
    Suppression,
)


def normalise_phone(raw: str, *, region: str | None = None) -> str:
    try:
        number = phonenumbers.parse(raw, region or settings.CCM_DEFAULT_PHONE_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError(f"{raw!r} is not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(raw: str) -> str:
    value = raw.strip()
    validate_email(value)
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


def postal_address_text(lines: Sequence[str]) -> str:
    """A postal address as one line: the address a print delivery records."""
    return " / ".join(line.strip() for line in lines if line.strip())


def address_normalise(channel: str, address: str | Sequence[str]) -> tuple[str, dict]:
    """An address typed for `channel` as deliveries store it (email, E.164 phone, or postal
    lines joined by " / "), and what goes in Delivery.meta. IntakeError names what is wrong."""
    if channel == "print":
        lines = [address] if isinstance(address, str) else list(address)
        lines = [line.strip() for part in lines for line in str(part).split(" / ")]
        lines = [line for line in lines if line]
        if len(lines) < 2:
            raise IntakeError(
                "A postal address needs at least two lines (street and postcode).",
                field="address",
            )
        return postal_address_text(lines), {"postal_address": lines}
    if not isinstance(address, str):
        raise IntakeError(f"Give one {channel} address as a string.", field="address")
    normalise = {"email": normalise_email, "sms": normalise_phone}.get(channel)
    if normalise is None:
        raise IntakeError(f"A {channel} address cannot be given.", field="channel")
    try:
        return normalise(address), {}
    except ValidationError as exc:
        raise IntakeError(" ".join(exc.messages), field="address") from exc


@transaction.atomic
def customer_upsert(
    *,
    external_ref: str,
    name: str,
    by=None,
    source_system: str = "default",
    language: str | None = None,
    salutation: str | None = None,
    postal_address: list[str] | None = None,
    emails: Iterable[str] | None = None,
    phones: Iterable[str] | None = None,
    time_zone: str | None = None,
) -> tuple[Customer, bool]:
    """Create or update a customer by (source system, external reference). Contact points given
    are added (the first becomes primary); existing ones are kept."""
    defaults: dict[str, Any] = {"name": name}
    if language:
        defaults["language"] = language
    if time_zone is not None:
        defaults["time_zone"] = time_zone_checked(time_zone)
    if salutation is not None:
        defaults["salutation"] = salutation
    if postal_address is not None:
        defaults["postal_address"] = postal_address
        defaults["postal_address_valid"] = bool(postal_address)
    customer, created = Customer.objects.select_for_update().update_or_create(
        source_system=source_system, external_ref=external_ref, defaults=defaults
    )
    for kind, values, normalise in (
        (ContactKind.EMAIL, emails, normalise_email),
        (ContactKind.PHONE, phones, normalise_phone),
    ):
        for i, raw in enumerate(values or []):
            value = normalise(raw)
            point, _ = ContactPoint.objects.get_or_create(customer=customer, kind=kind, value=value)
            if i == 0 and not point.is_primary:
                customer.contacts.filter(kind=kind).exclude(pk=point.pk).update(is_primary=False)
                ContactPoint.objects.filter(pk=point.pk).update(is_primary=True)
    audit.record(
        actor=by,
        action="customer.created" if created else "customer.updated",
        subject=customer,
        # Which fields were written, not their values: the chain cannot be rewritten, so it
        # must hold nothing a customer's erasure would have to remove.
        after={
            "fields": sorted(
                {*defaults, *(["emails"] if emails else []), *(["phones"] if phones else [])}
            )
        },
    )
    return customer, created


# The names are read from the system's zone database once a process.
_time_zones = functools.cache(zoneinfo.available_timezones)


def time_zone_checked(name: str) -> str:
    """An IANA time zone name as given ("" for the business's); ValidationError otherwise."""
    name = name.strip()
    if name and name not in _time_zones():
        raise ValidationError(
            f"{name!r} is not a time zone; give an IANA name such as Europe/Berlin."
        )
    return name


@transaction.atomic
def customer_address_correct(
    *, customer: Customer, postal_address: Sequence[str], by, reason: str = ""
) -> Customer:
    """Replace the customer's postal address with a corrected one (valid again: a person
    confirmed it), audited with what it was. IntakeError says what is wrong with the lines."""
    _, meta = address_normalise("print", list(postal_address))
    lines = meta["postal_address"]
    locked = Customer.objects.select_for_update().get(pk=customer.pk)
    before = {"postal_address": locked.postal_address, "valid": locked.postal_address_valid}
    locked.postal_address = lines
    locked.postal_address_valid = True
    locked.save(update_fields=["postal_address", "postal_address_valid", "updated_at"])
    audit.record(
        actor=by,
        action="customer.address_corrected",
        subject=locked,
        before=before,
        after={"postal_address": lines, "valid": True, "reason": reason},
    )
    return locked


@transaction.atomic
def consent_record(
    *,
    customer: Customer,
    channel: str,
    category: str,
    granted: bool,
    legal_basis: str,
    source: str,
    by=None,
    evidence: dict | None = None,
    at: datetime | None = None,
) -> ConsentRecord:
    """Append to the consent ledger and bring the customer's preference in line with it."""
    record = ConsentRecord.objects.create(
        customer=customer,
        channel=channel,
        category=category,
        granted=granted,
        legal_basis=legal_basis,
        source=source,
        recorded_at=at or timezone.now(),
        actor=by if by is not None and by.pk else None,
        actor_label=by.get_username() if by is not None else source,
        evidence=evidence or {},
    )
    Preference.objects.update_or_create(
        customer=customer, category=category, channel=channel, defaults={"allowed": granted}
    )
    audit.record(
        actor=by,
        action="consent.granted" if granted else "consent.withdrawn",
        subject=customer,
        after={"channel": channel, "category": category, "source": source},
    )
    return record


def preference_set(*, customer: Customer, category: str, channel: str, allowed: bool) -> None:
    Preference.objects.update_or_create(
        customer=customer, category=category, channel=channel, defaults={"allowed": allowed}
    )


def suppression_add(*, channel: str, address: str, reason: str, detail: str = "") -> Suppression:
    """Suppress an address (idempotent: an active suppression is returned as it is)."""
    try:
        with transaction.atomic():
            return Suppression.objects.create(
                channel=channel, address=address, reason=reason, detail=detail[:500]
            )
    except IntegrityError:
        return Suppression.objects.get(channel=channel, address=address, lifted_at__isnull=True)

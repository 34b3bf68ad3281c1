"""Every write of the notifications app: customers and consent, intake, and the pipeline
compose → gate → dispatch that never loses or double-sends a communication."""

from __future__ import annotations

import functools
import hmac
import logging
import random
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jsonschema
import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django_fsm import can_proceed

from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from documents import services as documents
from documents.addressee import identity_errors, with_addressee
from documents.composition import (
    CompositionError,
    DataInvalid,
    FieldError,
    data_errors,
    schema_validator,
)
from documents.models import TemplateVersion
from notifications.models import (
    Communication,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    Preference,
    Suppression,
)
from notifications.pipeline import selection

logger = logging.getLogger(__name__)

RELEASE_PURPOSE = "communication.release"


class IntakeError(ValueError):
    """The request cannot become a communication; `field` names what to fix."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field


# --- customers, contact points, preferences, consent --------------------------------------


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
        return " / ".join(lines), {"postal_address": lines}
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


# --- intake ---------------------------------------------------------------------------------


# Stands in for the portal link at intake; the real one is made while composing.
PORTAL_URL_PLACEHOLDER = "https://portal.invalid/link-made-at-composition"


def portal_linked(version: TemplateVersion) -> bool:
    return version.meta.get("delivery") == "portal_link"


# The customer fields `addressee_of` reads: load them (`.only(*ADDRESSEE_FIELDS, …)`) where
# many customers are addressed at once, or each one costs a query per deferred field.
ADDRESSEE_FIELDS = ("name", "salutation", "postal_address", "external_ref", "language")


def addressee_of(customer: Customer, *, address: Sequence[str] | None = None) -> dict[str, Any]:
    """The system variables `customer.*` every template is composed with, from the customer
    record (`address`: the postal address a letter is explicitly sent to instead)."""
    return {
        "name": customer.name,
        "salutation": customer.salutation or customer.name,
        "address": list(address if address else customer.postal_address),
        "reference": customer.external_ref,
        "language": customer.language,
    }


def _addressee(communication: Communication) -> dict[str, Any]:
    override = communication.address_override
    printed_to = (
        override.split(" / ") if override and communication.channel_override == "print" else None
    )
    return addressee_of(communication.customer, address=printed_to)


def composition_context(communication: Communication, version: TemplateVersion) -> dict:
    """What a communication's templates render: its data, its portal link, and the addressee
    from the customer record in the reserved `customer` namespace (replacing whatever the data
    said there). The one place both pipelines (here and notifications.pipeline.bulk) build it."""
    data = dict(communication.data)
    if portal_linked(version) and "portal_url" not in data:
        from notifications.channels.portal import portal_url

        data["portal_url"] = portal_url(communication)
    return with_addressee(data, _addressee(communication))


def addressee_mismatches(communication: Communication, version: TemplateVersion) -> list:
    """The data's identity fields that name someone other than the communication's customer."""
    return identity_errors(
        version.content.get("schema", {}), communication.data, _addressee(communication)
    )


_validators: dict[tuple[int, str], jsonschema.protocols.Validator] = {}


def intake_validator(version: TemplateVersion) -> jsonschema.protocols.Validator:
    """The compiled validator of a version's schema, built (and its schema checked against the
    metaschema) once per process: a published version's content is frozen."""
    key = (version.pk, version.content_hash)
    validator = _validators.get(key)
    if validator is None:
        validator = _validators[key] = schema_validator(version.content.get("schema", {}))
    return validator


def intake_data_validate(
    version: TemplateVersion,
    data: dict,
    *,
    addressee: Mapping[str, Any] | None = None,
    validated_for: TemplateVersion | None = None,
) -> None:
    """The check a request's data passes before it is accepted (DataInvalid lists the fields):
    the identity fields, which must name this customer, and the schema, with the customer's own
    variables in place. A portal link is made at composition, so a placeholder stands in for it
    here.

    `validated_for`: the version this very data already passed this check against, when the
    caller holds it unchanged since (a campaign's frozen audience, whose hash is checked before
    sending). Then the schema is not checked again — the costly part, a third of a campaign's
    hand-off — but the identity fields still are, against the customer as they are now."""
    if portal_linked(version) and "portal_url" not in data:
        data = {**data, "portal_url": PORTAL_URL_PLACEHOLDER}
    errors: list[FieldError] = []
    if addressee is not None:
        errors = identity_errors(version.content.get("schema", {}), data, addressee)
        data = with_addressee(data, addressee)
    if validated_for is None or validated_for.pk != version.pk:
        errors += data_errors(intake_validator(version), data)
    if errors:
        reason = "; ".join(f"{e.field or '(root)'}: {e.message}" for e in errors)
        raise DataInvalid(f"data does not match the template's schema: {reason}", errors=errors)


def release_required(version: TemplateVersion, data: Mapping) -> str | None:
    """Why this communication needs a reviewer's release, or None."""
    release = version.meta.get("release") or {}
    if release.get("required"):
        return "the template requires a reviewer's release"
    threshold = release.get("threshold")
    if threshold:
        value: Any = data
        for part in str(threshold["field"]).split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int | float) and value > threshold["above"]:
            return (
                f"{threshold['field']} {value} is above the release threshold {threshold['above']}"
            )
    return None


def communication_request(
    *,
    template_code: str,
    customer: Customer,
    data: Mapping,
    client: str,
    by,
    idempotency_key: str | None = None,
    category: str | None = None,
    urgency: str = "normal",
    source: str = "api",
    channel_override: str = "",
    correlation_id: str = "",
    parent: Communication | None = None,
    document=None,
    address_override: str | Sequence[str] = "",
) -> tuple[Communication, bool]:
    """One communication: a batch of one through `bulk.communications_intake`, the intake of
    every entry point. Raises IntakeError or DataInvalid (with the fields) when refused.

    With `document` (an archived document) nothing is composed: the communication carries that
    file; a document of this template (a reprint's duplicate) pins the version that rendered it.
    With `address_override` it goes to that address on `channel_override` instead of the
    customer's own.
    """
    from notifications.pipeline import bulk

    [result] = bulk.communications_intake(
        items=[
            {
                "template": template_code,
                "customer": customer,
                "data": data,
                "idempotency_key": idempotency_key,
                "category": category,
                "urgency": urgency,
                "source": source,
                "channel": channel_override,
                "address": address_override,
                "correlation_id": correlation_id,
                "parent": parent,
                "document": document,
            }
        ],
        client=client,
        by=by,
        source=source,
    )
    if result.error is not None:
        raise result.error
    if result.communication is not None:
        return result.communication, result.created
    return Communication.objects.get(pk=result.communication_id), result.created


@transaction.atomic
def communication_cancel(*, communication: Communication, by, reason: str) -> Communication:
    locked = Communication.objects.select_for_update().get(pk=communication.pk)
    if not can_proceed(locked.cancel):
        raise IntakeError(f"A communication that is {locked.state} can no longer be cancelled.")
    locked.cancel(reason=reason)
    locked.save()
    pending = approvals.pending_for(locked, purpose=RELEASE_PURPOSE)
    if pending is not None:
        Approval.objects.filter(pk=pending.pk).update(state=ApprovalState.WITHDRAWN)
    audit.record(
        actor=by, action="communication.cancelled", subject=locked, after={"reason": reason}
    )
    return locked


# --- the pipeline ---------------------------------------------------------------------------


def enabled_channels() -> list[str]:
    return list(settings.CCM_ENABLED_CHANNELS)


def facts_for(communication: Communication, version: TemplateVersion) -> selection.Facts:
    """Selection facts for one communication (the chunk's function, for a chunk of one)."""
    from notifications.pipeline.bulk import facts_for_chunk

    enabled = set(enabled_channels())
    renditions = [c for c in version.meta.get("channels", []) if c in enabled]
    return facts_for_chunk([communication], {communication.pk: renditions})[communication.pk]


def render_outputs(
    communication: Communication,
    version: TemplateVersion,
    channels: list[str],
    context: Mapping | None = None,
) -> dict:
    """What email, SMS and push will carry, as stored on the communication: composed from its
    composition context (unless given) in the render worker, under its limits."""
    if context is None:
        context = composition_context(communication, version)
    language = documents.language_for(version, communication.customer.language)
    (rendered,) = documents.text_channels_compose(
        version=version, language=language, items=[(context, channels)]
    )
    if isinstance(rendered, CompositionError):
        raise rendered
    return rendered


def delivery_message_id(communication: Communication, index: int | str, channel: str) -> str:
    """The stable dedupe key of the communication's `index`-th delivery (0-based; a resend
    passes "r<n>"), which is also the Message-ID of its mail.

    The delivery is named by (communication, index, channel) and sealed with an HMAC of that
    name: a bounce report can only name a delivery whose Message-ID it has seen, never one
    guessed from the counter (`message_id_issued`)."""
    name = f"ccm.{communication.pk}.{index}.{channel}"
    return f"<{name}.{_message_id_seal(name)}@{settings.CCM_MESSAGE_ID_DOMAIN}>"


def message_id_issued(message_id: str) -> bool:
    """Whether CCM issued this Message-ID for a delivery (its seal verifies)."""
    local = message_id.strip().removeprefix("<").removesuffix(">").rpartition("@")[0]
    name, _, seal = local.rpartition(".")
    return name.startswith("ccm.") and hmac.compare_digest(seal, _message_id_seal(name))


def _message_id_seal(name: str) -> str:
    # 96 bits: the Message-ID stays short enough for every MTA, and cannot be guessed.
    key = settings.CCM_MESSAGE_ID_KEY or settings.SECRET_KEY
    return salted_hmac("ccm.message-id", name, secret=key, algorithm="sha256").hexdigest()[:24]


def _on_release_decision(communication: Communication, approval: Approval) -> None:
    locked = Communication.objects.select_for_update().get(pk=communication.pk)
    if approval.state == ApprovalState.APPROVED:
        from notifications.pipeline import bulk, history

        locked.release()
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.released", subject=locked)
        history.step_record(
            communication=locked, action="communication.released", actor=approval.decided_by
        )
        bulk.dispatch_start([locked])
    elif approval.state in {ApprovalState.REJECTED, ApprovalState.CHANGES_REQUESTED}:
        locked.reject(reason=approval.comment or "rejected by the reviewer")
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.rejected", subject=locked)
    elif approval.state == ApprovalState.WITHDRAWN and can_proceed(locked.cancel):
        locked.cancel(reason="release withdrawn")
        locked.save()


def register_approvable() -> None:
    from django.urls import reverse

    from notifications.pipeline.review import communication_proof

    approvals.register(
        Communication,
        author_of=lambda communication: None,
        on_decision=_on_release_decision,  # type: ignore[arg-type]
        review_url=lambda communication: reverse(
            "admin:notifications_communication_change", args=[communication.pk]
        ),
        label="Communication release",
        proof=communication_proof,  # type: ignore[arg-type]
        release=True,
    )


# --- dispatch -------------------------------------------------------------------------------


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's 'full jitter')."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class DispatchOutcome:
    state: str
    detail: str = ""


def _outcome(delivery_id: int) -> DispatchOutcome:
    state, error = Delivery.objects.values_list("state", "last_error").get(pk=delivery_id)
    return DispatchOutcome(state, error)


def delivery_dispatch_run(delivery_id: int) -> DispatchOutcome:
    """Dispatch one delivery: a chunk of one (see `bulk.dispatch_chunk`)."""
    from notifications.pipeline import bulk

    if not bulk.dispatch_chunk([delivery_id]).get("claimed"):
        return DispatchOutcome("skipped")
    return _outcome(delivery_id)


def delivery_reconcile_run(delivery_id: int) -> DispatchOutcome:
    """Settle one delivery stuck in `sending` (see `bulk.deliveries_reconcile`)."""
    from notifications.pipeline import bulk

    if not bulk.deliveries_reconcile([delivery_id]).get("checked"):
        return DispatchOutcome("skipped")
    return _outcome(delivery_id)

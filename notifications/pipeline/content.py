"""The content rules every stage shares: what a communication's templates are composed with
(its data, its portal link, the addressee from the customer record), the check a request's data
passes at intake, whether it needs a reviewer's release, and what email, SMS and push carry.
They sit below the stages (`intake` → `compose` → `gate` → `dispatch`) so that each stage reads
them without reaching back up to the entry points in `services`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema

from documents import services as documents
from documents.addressee import identity_errors, identity_fields, with_addressee
from documents.composition import (
    CompositionError,
    DataInvalid,
    FieldError,
    data_errors,
    schema_validator,
)
from documents.models import TemplateVersion
from notifications.channels.portal import portal_url
from notifications.models import Communication, Customer

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
    said there). The one place both pipelines (a single communication and the chunked stages)
    build it."""
    data = dict(communication.data)
    if portal_linked(version) and "portal_url" not in data:
        data["portal_url"] = portal_url(communication)
    return with_addressee(data, _addressee(communication))


def addressee_mismatches(communication: Communication, version: TemplateVersion) -> list:
    """The data's identity fields that name someone other than the communication's customer."""
    return identity_errors(
        None, communication.data, _addressee(communication), fields=_identity_fields(version)
    )


_identities: dict[tuple[int, str], list[tuple[str, str]]] = {}


def _identity_fields(version: TemplateVersion) -> list[tuple[str, str]]:
    """The identity fields of a version's schema, found once per process (a published
    version's content is frozen), not by walking the schema for every communication."""
    key = (version.pk, version.content_hash)
    fields = _identities.get(key)
    if fields is None:
        fields = _identities[key] = list(identity_fields(version.content.get("schema", {})))
    return fields


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
        errors = identity_errors(None, data, addressee, fields=_identity_fields(version))
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

"""Intake and the pipeline's single-communication writes: validate, idempotency, release gate,
message ids, dispatch and reconciliation of one delivery (a batch of one through the chunked
stages). Customer, contact point and consent writes live in `notifications.customers.services`."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from django.conf import settings
from django.db import transaction
from django.utils.crypto import salted_hmac
from django_fsm import can_proceed

from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
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
from notifications.errors import IntakeError
from notifications.models import (
    Communication,
    Customer,
    Delivery,
)
from notifications.pipeline import selection
from notifications.pipeline.facts import facts_for_chunk

logger = logging.getLogger(__name__)

RELEASE_PURPOSE = "communication.release"


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
    said there). The one place both pipelines (here and the chunked stages) build it."""
    data = dict(communication.data)
    if portal_linked(version) and "portal_url" not in data:
        from notifications.channels.portal import portal_url

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
    """One communication: a batch of one through `intake.communications_intake`, the intake of
    every entry point. Raises IntakeError or DataInvalid (with the fields) when refused.

    With `document` (an archived document) nothing is composed: the communication carries that
    file; a document of this template (a reprint's duplicate) pins the version that rendered it.
    With `address_override` it goes to that address on `channel_override` instead of the
    customer's own.
    """
    from notifications.pipeline import intake

    [result] = intake.communications_intake(
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
        from notifications.pipeline import dispatch, history

        locked.release()
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.released", subject=locked)
        history.step_record(
            communication=locked, action="communication.released", actor=approval.decided_by
        )
        dispatch.dispatch_start([locked])
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


@dataclass(frozen=True)
class DispatchOutcome:
    state: str
    detail: str = ""


def _outcome(delivery_id: int) -> DispatchOutcome:
    state, error = Delivery.objects.values_list("state", "last_error").get(pk=delivery_id)
    return DispatchOutcome(state, error)


def delivery_dispatch_run(delivery_id: int) -> DispatchOutcome:
    """Dispatch one delivery: a chunk of one (see `dispatch.dispatch_chunk`)."""
    from notifications.pipeline import dispatch

    if not dispatch.dispatch_chunk([delivery_id]).get("claimed"):
        return DispatchOutcome("skipped")
    return _outcome(delivery_id)


def delivery_reconcile_run(delivery_id: int) -> DispatchOutcome:
    """Settle one delivery stuck in `sending` (see `dispatch.deliveries_reconcile`)."""
    from notifications.pipeline import dispatch

    if not dispatch.deliveries_reconcile([delivery_id]).get("checked"):
        return DispatchOutcome("skipped")
    return _outcome(delivery_id)

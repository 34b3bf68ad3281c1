"""Every write of the notifications app: customers and consent, intake, and the pipeline
compose → gate → dispatch that never loses or double-sends a communication."""

from __future__ import annotations

import hmac
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django_fsm import can_proceed

from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from ccm.tasks import enqueue
from documents import selectors as document_selectors
from documents import services as documents
from documents.addressee import identity_errors, with_addressee
from documents.composition import (
    CompositionError,
    DataInvalid,
    FieldError,
    validate_data,
)
from documents.models import Template, TemplateVersion
from notifications import fallback, selection, selectors, signals, webhooks
from notifications.channels import PermanentSendError, TransientSendError, backend_for
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
) -> tuple[Customer, bool]:
    """Create or update a customer by (source system, external reference). Contact points given
    are added (the first becomes primary); existing ones are kept."""
    defaults: dict[str, Any] = {"name": name}
    if language:
        defaults["language"] = language
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
        after={"name": name, "external_ref": external_ref},
    )
    return customer, created


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


def _portal_linked(version: TemplateVersion) -> bool:
    return version.meta.get("delivery") == "portal_link"


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
    said there). The one place both pipelines (here and notifications.bulk) build it."""
    data = dict(communication.data)
    if _portal_linked(version) and "portal_url" not in data:
        from notifications.portal import portal_url

        data["portal_url"] = portal_url(communication)
    return with_addressee(data, _addressee(communication))


def addressee_mismatches(communication: Communication, version: TemplateVersion) -> list:
    """The data's identity fields that name someone other than the communication's customer."""
    return identity_errors(
        version.content.get("schema", {}), communication.data, _addressee(communication)
    )


def intake_data_validate(
    version: TemplateVersion, data: dict, *, addressee: Mapping[str, Any] | None = None
) -> None:
    """The check a request's data passes before it is accepted (DataInvalid lists the fields):
    the schema, with the customer's own variables in place, and the identity fields, which must
    name this customer. A portal link is made at composition, so a placeholder stands in for it
    here."""
    if _portal_linked(version) and "portal_url" not in data:
        data = {**data, "portal_url": PORTAL_URL_PLACEHOLDER}
    schema = version.content.get("schema", {})
    if addressee is not None:
        errors: list[FieldError] = identity_errors(schema, data, addressee)
        if errors:
            raise DataInvalid("; ".join(e.message for e in errors), errors=errors)
        data = with_addressee(data, addressee)
    validate_data(schema, data)


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


@transaction.atomic
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
    """Accept a request for a communication and enqueue its composition after commit.

    The data is checked against the published version's schema now, so a caller learns at once
    what to fix; the same key from the same client returns the communication made the first time.

    With `document` (an archived document) nothing is composed: the communication carries that
    file; a document of this template (a reprint's duplicate) pins the version that rendered it.
    With `address_override` it goes to that address on `channel_override` instead of the
    customer's own.
    """
    if idempotency_key:
        existing = Communication.objects.filter(
            client=client, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            return existing, False
    template = Template.objects.filter(code=template_code).first()
    if template is None:
        raise IntakeError(f"There is no template {template_code!r}.", field="template")
    # A copy of one of the template's own documents (a reprint) is pinned to the version that
    # rendered it; a message carrying another template's document (a portal link renewal)
    # speaks with the template's published version.
    pinned = document is not None and document.template_version.template_id == template.pk
    if pinned:
        version = document.template_version
    else:
        version = document_selectors.version_for_sending(code=template_code)
    if version is None:
        raise IntakeError(
            f"Template {template_code!r} has no published version yet.", field="template"
        )
    address = ""
    if address_override:
        if not channel_override:
            raise IntakeError("An address needs the channel it is for.", field="channel")
        address, _ = address_normalise(channel_override, address_override)
    snapshot = documents.data_snapshot(data)
    printed_to = address.split(" / ") if address and channel_override == "print" else None
    intake_data_validate(version, snapshot, addressee=addressee_of(customer, address=printed_to))
    communication = Communication.objects.create(
        customer=customer,
        template=template,
        data=snapshot,
        category=category or template.category,
        urgency=urgency,
        source=source,
        channel_override=channel_override,
        address_override=address,
        template_version=version if pinned else None,
        correlation_id=correlation_id,
        client=client,
        idempotency_key=idempotency_key or None,
        created_by=by,
        parent=parent,
        document=document,
    )
    audit.record(
        actor=by,
        action="communication.received",
        subject=communication,
        after={"template": template_code, "customer": customer.external_ref, "source": source},
    )
    enqueue("notifications.tasks.communication_compose", communication.pk)
    return communication, True


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


def _claim(comm_id: int, source: str, target: str) -> bool:
    """Move a communication from `source` to `target` if nobody else has: the one guarded
    update that makes every pipeline task safe to run twice."""
    return (
        Communication.objects.filter(pk=comm_id, state=source).update(
            state=target, updated_at=timezone.now()
        )
        == 1
    )


def enabled_channels() -> list[str]:
    return list(settings.CCM_ENABLED_CHANNELS)


def facts_for(communication: Communication, version: TemplateVersion) -> selection.Facts:
    customer = communication.customer
    contacts = list(customer.contacts.filter(valid=True))
    emails = [c.value for c in contacts if c.kind == ContactKind.EMAIL]
    phones = [c.value for c in contacts if c.kind == ContactKind.PHONE]
    postal = customer.postal_address if customer.postal_address_valid else []
    target = communication.address_override
    if target and communication.channel_override == "email":
        emails = [target]
    elif target and communication.channel_override == "sms":
        phones = [target]
    elif target and communication.channel_override == "print":
        postal = target.split(" / ")
    enabled = set(enabled_channels())
    renditions = [c for c in version.meta.get("channels", []) if c in enabled]
    consents: dict[str, bool] = {}
    for record in ConsentRecord.objects.filter(
        customer=customer, category=communication.category
    ).order_by("recorded_at", "id"):
        consents[record.channel] = record.granted
    preferences = {
        p.channel: p.allowed for p in customer.preferences.filter(category=communication.category)
    }
    devices = selectors.device_addresses(customer_ids=[customer.pk]).get(customer.pk, [])
    addresses = [*emails, *phones, *devices]
    suppressed = frozenset(
        Suppression.objects.filter(address__in=addresses, lifted_at__isnull=True).values_list(
            "channel", "address"
        )
    )
    return selection.Facts(
        category=communication.category,
        urgency=communication.urgency,
        renditions=renditions,
        emails=emails,
        phones=phones,
        devices=devices,
        postal_address=postal,
        preferences=preferences,
        consents=consents,
        suppressed=suppressed,
        override=communication.channel_override,
    )


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


def communication_compose_run(comm_id: int) -> None:
    """received → composing → composed (document archived, channels chosen, outputs rendered),
    or compose_failed with the reason. Then the gate."""
    if not _claim(comm_id, CommState.RECEIVED, CommState.COMPOSING):
        return
    communication = Communication.objects.select_related("customer", "template").get(pk=comm_id)
    version = communication.template_version or document_selectors.version_for_sending(
        code=communication.template.code
    )
    try:
        if version is None:
            raise CompositionError("the template has no published version")
        context = composition_context(communication, version)
        if context.get("portal_url") != communication.data.get("portal_url"):
            # The link is part of the archived data, so the letter that prints it regenerates
            # byte for byte.
            communication.data = {**communication.data, "portal_url": context["portal_url"]}
            Communication.objects.filter(pk=comm_id).update(data=communication.data)
        mismatches = addressee_mismatches(communication, version)
        if mismatches and communication.created_by_id is None:
            # Nobody to ask for a release (the gate holds the others for a reviewer).
            raise DataInvalid("; ".join(e.message for e in mismatches), errors=mismatches)
        validate_data(version.content.get("schema", {}), context)
        chosen = selection.select_channels(facts_for(communication, version))
        document = communication.document
        needs_pdf = "print" in version.meta.get("channels", [])
        if needs_pdf and document is None:
            # The archived snapshot records the addressee it was composed for; the print
            # batch's close checks it against the envelope.
            document = documents.document_compose(
                version=version,
                data=context,
                language=communication.customer.language,
                # The document belongs to whoever asked for the communication (API ownership).
                by=communication.created_by,
            )
        rendered = render_outputs(communication, version, chosen.channels, context)
    except CompositionError as exc:
        _compose_failed(communication, version, exc)
        return
    with transaction.atomic():
        locked = Communication.objects.select_for_update().get(pk=comm_id)
        locked.template_version = version
        locked.data = communication.data
        locked.document = document
        locked.rendered = rendered
        locked.decision_trace = chosen.trace
        locked.composed()
        locked.save()
        audit.record(
            actor=None,
            action="communication.composed",
            subject=locked,
            after={"version": version.pk, "channels": chosen.channels},
        )
        enqueue("notifications.tasks.communication_gate", comm_id)


def _compose_failed(communication: Communication, version, exc: CompositionError) -> None:
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    with transaction.atomic():
        locked = Communication.objects.select_for_update().get(pk=communication.pk)
        locked.template_version = version
        locked.compose_failed(reason=exc.reason, errors=errors)
        locked.save()
        audit.record(
            actor=None,
            action="communication.compose_failed",
            subject=locked,
            after={"reason": exc.reason, "errors": errors},
        )
    signals.communication_compose_failed.send(
        sender=Communication, communication=locked, reason=exc.reason
    )


def communication_gate_run(comm_id: int) -> None:
    """composed → awaiting_approval (release gate) or → dispatching with its deliveries."""
    with transaction.atomic():
        locked = (
            Communication.objects.select_for_update(of=("self",))
            .select_related("template_version", "created_by")
            .filter(pk=comm_id, state=CommState.COMPOSED)
            .first()
        )
        if locked is None:
            return
        version = locked.template_version
        assert version is not None  # set when composed
        mismatches = addressee_mismatches(locked, version)
        why = "; ".join(e.message for e in mismatches) or release_required(version, locked.data)
        if why and locked.created_by is not None:
            locked.await_approval()
            locked.save()
            locked.decision_trace = [*locked.decision_trace, {"decision": "release", "reason": why}]
            locked.save(update_fields=["decision_trace"])
            approvals.approval_request(
                subject=locked,
                requested_by=locked.created_by,
                purpose=RELEASE_PURPOSE,
                summary=f"Release {version.template.code} to {locked.customer}: {why}",
            )
            return
        _start_dispatch(locked)


def _start_dispatch(locked: Communication) -> None:
    """Create one delivery per chosen channel and enqueue them (inside the caller's atomic)."""
    chosen = [t for t in locked.decision_trace if t.get("decision") == "chosen"]
    if not chosen:
        locked.dispatch()
        locked.undeliverable(reason="no channel can reach the customer")
        locked.save()
        audit.record(actor=None, action="communication.undeliverable", subject=locked)
        transaction.on_commit(
            lambda: signals.communication_undeliverable.send(
                sender=Communication, communication=locked, reason=locked.failure_reason
            )
        )
        return
    locked.dispatch()
    locked.save()
    deliveries = [
        Delivery.objects.create(
            communication=locked,
            channel=target["channel"],
            address=target["address"],
            message_id=delivery_message_id(locked, i, target["channel"]),
        )
        for i, target in enumerate(chosen)
    ]
    audit.record(
        actor=None,
        action="communication.dispatching",
        subject=locked,
        after={"deliveries": [d.pk for d in deliveries]},
    )
    for delivery in deliveries:
        enqueue("notifications.tasks.delivery_dispatch", delivery.pk)


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
        locked.release()
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.released", subject=locked)
        _start_dispatch(locked)
    elif approval.state in {ApprovalState.REJECTED, ApprovalState.CHANGES_REQUESTED}:
        locked.reject(reason=approval.comment or "rejected by the reviewer")
        locked.save()
        audit.record(actor=approval.decided_by, action="communication.rejected", subject=locked)
    elif approval.state == ApprovalState.WITHDRAWN and can_proceed(locked.cancel):
        locked.cancel(reason="release withdrawn")
        locked.save()


def register_approvable() -> None:
    from django.urls import reverse

    from notifications.review import communication_proof

    approvals.register(
        Communication,
        author_of=lambda communication: None,
        on_decision=_on_release_decision,  # type: ignore[arg-type]
        review_url=lambda communication: reverse(
            "admin:notifications_communication_change", args=[communication.pk]
        ),
        label="Communication release",
        proof=communication_proof,  # type: ignore[arg-type]
    )


# --- dispatch -------------------------------------------------------------------------------


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's 'full jitter')."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class DispatchOutcome:
    state: str
    detail: str = ""


def delivery_dispatch_run(delivery_id: int) -> DispatchOutcome:
    """pending → sending → sent (or failed, or back to pending for a later retry).

    The guarded claim means two workers never send the same delivery; a crash while sending
    leaves it in `sending`, which `delivery_reconcile_run` settles by asking the provider
    before anything is sent again."""
    now = timezone.now()
    claimed = (
        Delivery.objects.filter(pk=delivery_id, state=DeliveryState.PENDING)
        .exclude(next_attempt_at__gt=now)
        .update(state=DeliveryState.SENDING, attempts=F("attempts") + 1, updated_at=now)
    )
    if claimed != 1:
        return DispatchOutcome("skipped")
    delivery = Delivery.objects.select_related("communication__customer").get(pk=delivery_id)
    # Checked again now: a bounce or complaint may have arrived since the channel was chosen.
    suppression = Suppression.objects.filter(
        channel=delivery.channel, address=delivery.address, lifted_at__isnull=True
    ).first()
    if suppression is not None:
        return _fail(delivery, f"the address is suppressed ({suppression.reason})")
    backend = backend_for(delivery.channel)
    inline = settings.CCM_DISPATCH_INLINE_RETRIES
    for attempt in range(inline + 1):
        try:
            provider_id = backend.send(delivery)
        except TransientSendError as exc:
            if attempt < inline:
                if exc.maybe_sent:
                    found = backend.lookup(delivery)
                    if found:
                        return _mark_sent(delivery, found)
                import time

                time.sleep(backoff_seconds(attempt + 1, base=0.1, cap=2.0))
                continue
            return _retry_later(delivery, exc)
        except PermanentSendError as exc:
            return _fail(delivery, str(exc))
        else:
            return _mark_sent(delivery, provider_id)
    return DispatchOutcome("pending")  # pragma: no cover - the loop always returns


def _mark_sent(delivery: Delivery, provider_id: str) -> DispatchOutcome:
    now = timezone.now()
    with transaction.atomic():
        updated = Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.SENDING).update(
            state=DeliveryState.SENT,
            provider=delivery.channel,
            provider_message_id=provider_id or "",
            sent_at=now,
            last_error="",
            updated_at=now,
        )
        if not updated:
            # A provider's report overtook us (e.g. an SMS status callback while we were still
            # in `sending`): the state is already past sent, but keep the provider's id.
            Delivery.objects.filter(pk=delivery.pk, provider_message_id="").update(
                provider=delivery.channel, provider_message_id=provider_id or ""
            )
            return DispatchOutcome("skipped")
        communication = Communication.objects.select_for_update().get(pk=delivery.communication_id)
        if can_proceed(communication.mark_sent):
            communication.mark_sent(when=now)
            communication.save()
        audit.record(
            actor=None,
            action="delivery.sent",
            subject=delivery,
            after={"provider_message_id": provider_id, "message_id": delivery.message_id},
        )
    return DispatchOutcome(DeliveryState.SENT)


def _retry_later(delivery: Delivery, exc: TransientSendError) -> DispatchOutcome:
    attempts = Delivery.objects.values_list("attempts", flat=True).get(pk=delivery.pk)
    if attempts >= settings.CCM_DISPATCH_MAX_ATTEMPTS:
        return _fail(delivery, f"gave up after {attempts} attempts: {exc}")
    delay = backoff_seconds(attempts, base=30, cap=3600)
    Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.SENDING).update(
        state=DeliveryState.PENDING,
        next_attempt_at=timezone.now() + timedelta(seconds=max(delay, 1)),
        last_error=str(exc)[:2000],
        updated_at=timezone.now(),
    )
    return DispatchOutcome(DeliveryState.PENDING, str(exc))


def _fail(delivery: Delivery, reason: str) -> DispatchOutcome:
    with transaction.atomic():
        updated = Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.SENDING).update(
            state=DeliveryState.FAILED, last_error=reason[:2000], updated_at=timezone.now()
        )
        if not updated:
            return DispatchOutcome("skipped")
        audit.record(
            actor=None, action="delivery.failed", subject=delivery, after={"reason": reason}
        )
        delivery.refresh_from_db()
        webhooks.delivery_failed_emit(delivery)
        # Registered before the fallback runs, so receivers hear of this failure before they
        # hear that the communication as a whole became undeliverable.
        transaction.on_commit(
            lambda: signals.delivery_failed.send(sender=Delivery, delivery=delivery, reason=reason)
        )
        fallback.delivery_fall_back(delivery=delivery, reason=reason)
    return DispatchOutcome(DeliveryState.FAILED, reason)


def delivery_reconcile_run(delivery_id: int) -> DispatchOutcome:
    """A delivery stuck in `sending` (its worker died): ask the provider whether the message
    got there; if it did, record it as sent, otherwise hand it back to dispatch."""
    stale = timezone.now() - timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S)
    delivery = Delivery.objects.filter(
        pk=delivery_id, state=DeliveryState.SENDING, updated_at__lt=stale
    ).first()
    if delivery is None:
        return DispatchOutcome("skipped")
    found = backend_for(delivery.channel).lookup(delivery)
    if found:
        return _mark_sent(delivery, found)
    reset = Delivery.objects.filter(
        pk=delivery.pk, state=DeliveryState.SENDING, updated_at=delivery.updated_at
    ).update(state=DeliveryState.PENDING, next_attempt_at=None, updated_at=timezone.now())
    if reset:
        enqueue("notifications.tasks.delivery_dispatch", delivery.pk)
        return DispatchOutcome(DeliveryState.PENDING, "not found at the provider; re-sending")
    return DispatchOutcome("skipped")

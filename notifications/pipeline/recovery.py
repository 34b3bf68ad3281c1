"""Recovering a communication that failed, as operations do from an exception case.

- `communication_recompose_with`: a communication whose composition failed (missing or bad data)
  is composed again with corrected data, against the template version published now. The
  correction is validated first, so the operator learns at once what is still wrong.
- `communication_resend`: a communication that could not reach the customer (undeliverable, a
  failed or bounced delivery, a returned letter) goes out once more on a chosen channel and
  address, as a new delivery of the same communication: its archived document and history stay
  one record, and the dispatcher sends it like any other delivery (claims, retries, suppression
  checked again at send time).

Both are audited with who asked; the pipeline does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction
from django_fsm import can_proceed

from ccm import audit
from ccm.tasks import enqueue
from documents import selectors as document_selectors
from documents import services as documents
from documents.models import Category
from notifications.customers import services as customer_services
from notifications.errors import IntakeError
from notifications.models import (
    Channel,
    CommState,
    Communication,
    Delivery,
    DeliveryState,
    Preference,
    Suppression,
)
from notifications.pipeline.content import addressee_of, intake_data_validate, render_outputs
from notifications.pipeline.facts import enabled_channels
from notifications.pipeline.message_ids import delivery_message_id

# Channels a communication can be resent on: each has one address (push needs a device, and the
# portal is a link carried by another channel).
RESENDABLE_CHANNELS = (Channel.EMAIL, Channel.SMS, Channel.PRINT)
# States from which a resend makes sense: nothing reached the customer, or what did bounced.
RESENDABLE_STATES = (
    CommState.UNDELIVERABLE,
    CommState.DISPATCHING,
    CommState.SENT,
    CommState.DELIVERED,
)


class RecoveryError(ValueError):
    """The recovery cannot be done as asked; `field` names what to fix."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field


def _changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ: what the audit records of a data correction (the data
    itself stays on the communication)."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        paths: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            paths += _changed_paths(before.get(key), after.get(key), path)
        return paths
    return [] if before == after else [prefix or "(data)"]


@transaction.atomic
def communication_recompose_with(
    *, communication: Communication, data: Mapping, by
) -> Communication:
    """compose_failed → received with corrected data; composition is enqueued after commit.

    Raises DataInvalid (with every field at fault) when the corrected data still does not fit
    the published template, and RecoveryError when the communication did not fail to compose."""
    locked = (
        Communication.objects.select_for_update(of=("self",))
        .select_related("template")
        .get(pk=communication.pk)
    )
    if not can_proceed(locked.recompose):
        raise RecoveryError(
            f"Only a communication whose composition failed can be composed again; "
            f"communication {locked.pk} is {locked.state}."
        )
    version = document_selectors.version_for_sending(code=locked.template.code)
    if version is None:
        raise RecoveryError(
            f"Template {locked.template.code!r} has no published version; publish one first.",
            field="template",
        )
    snapshot = documents.data_snapshot(data)
    intake_data_validate(version, snapshot, addressee=addressee_of(locked.customer))
    before = {"failure_reason": locked.failure_reason, "failure_errors": locked.failure_errors}
    changed = _changed_paths(locked.data, snapshot)
    locked.recompose(data=snapshot)
    locked.save()
    audit.record(
        actor=by,
        action="communication.recompose_requested",
        subject=locked,
        before=before,
        after={"changed_fields": changed, "version": version.number},
    )
    enqueue("notifications.pipeline.tasks.communication_compose", locked.pk)
    return locked


def _address_for(channel: str, address: str | Sequence[str]) -> tuple[str, dict]:
    """The delivery address as the dispatcher stores it, and what goes in Delivery.meta."""
    try:
        return customer_services.address_normalise(channel, address)
    except IntakeError as exc:
        raise RecoveryError(str(exc), field=exc.field) from exc


@transaction.atomic
def communication_resend(
    *, communication: Communication, channel: str, address: str | Sequence[str], by
) -> Delivery:
    """Send the communication again as a new delivery on `channel` to `address` (email, E.164
    phone, or postal address lines); the dispatch is enqueued after commit."""
    if channel not in RESENDABLE_CHANNELS:
        raise RecoveryError(
            f"Resend on one of: {', '.join(RESENDABLE_CHANNELS)}; not {channel!r}.", field="channel"
        )
    if channel not in enabled_channels():
        raise RecoveryError(
            f"The {channel} channel is not enabled here (CCM_ENABLED_CHANNELS).", field="channel"
        )
    address_value, meta = _address_for(channel, address)
    locked = (
        Communication.objects.select_for_update(of=("self",))
        .select_related("template_version", "customer", "template")
        .get(pk=communication.pk)
    )
    if locked.state not in RESENDABLE_STATES:
        raise RecoveryError(
            f"Communication {locked.pk} is {locked.state}; only one that was dispatched and did "
            "not reach the customer can be sent again."
        )
    if locked.deliveries.filter(state__in=[DeliveryState.PENDING, DeliveryState.SENDING]).exists():
        # Never two attempts in flight: the first may still arrive.
        raise RecoveryError(
            f"A delivery of communication {locked.pk} is still under way; wait for its outcome."
        )
    version = locked.template_version
    if version is None or channel not in version.meta.get("channels", []):
        raise RecoveryError(
            f"Template {locked.template.code!r} has no {channel} version to send.", field="channel"
        )
    if channel == Channel.PRINT and locked.document is None:
        raise RecoveryError("There is no archived letter to print.", field="channel")
    suppression = Suppression.objects.filter(
        channel=channel, address__iexact=address_value, lifted_at__isnull=True
    ).first()
    if suppression is not None:
        raise RecoveryError(
            f"{address_value} is suppressed on {channel} ({suppression.reason}); "
            "choose another address.",
            field="address",
        )
    if (
        locked.category == Category.MARKETING
        and not Preference.objects.filter(
            customer=locked.customer, category=Category.MARKETING, channel=channel, allowed=True
        ).exists()
    ):
        raise RecoveryError(
            f"The customer has not opted in to marketing on {channel}.", field="channel"
        )
    if channel in (Channel.EMAIL, Channel.SMS) and channel not in locked.rendered:
        locked.rendered = {
            **locked.rendered,
            **render_outputs(locked, version, [channel]),
        }
    before = locked.state
    if can_proceed(locked.resend):
        locked.resend()
    locked.save()
    attempt = locked.deliveries.count()
    delivery = Delivery.objects.create(
        communication=locked,
        channel=channel,
        address=address_value,
        # The resend has its own dedupe key: providers must not take it for the first attempt.
        message_id=delivery_message_id(locked, f"r{attempt}", channel),
        meta={**meta, "resend": True},
    )
    audit.record(
        actor=by,
        action="communication.resend_requested",
        subject=locked,
        before={"state": before},
        after={"state": locked.state, "delivery": delivery.pk, "channel": channel},
    )
    enqueue("notifications.pipeline.tasks.delivery_dispatch", delivery.pk)
    return delivery

"""Every write of the print channel: letters join the open batch; a batch is closed (its print
stream and manifest produced), handed over to the mail house and mailed; letters come back.

What the mail house reports becomes `DeliveryEvent`s applied by
`notifications.channels.tracking.delivery_event_process`, like any provider's report: deliveries
move forward only, the communication advances, a returned letter bounces its delivery, marks the
customer's postal address invalid and fires `delivery_failed`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from datetime import datetime

from django.core.exceptions import PermissionDenied
from django.core.files import File
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django_fsm import can_proceed

from ccm import audit
from ccm.tasks import enqueue
from documents.addressee import RESERVED, normal_form
from notifications.channels import printstream
from notifications.channels.printstream import PrintError
from notifications.channels.tracking import PROCESS_TASK
from notifications.customers.services import postal_address_text
from notifications.models import (
    Channel,
    Communication,
    Delivery,
    DeliveryEvent,
    EventType,
    PrintBatch,
    PrintBatchState,
    PrintItem,
)
from notifications.progress import (
    PER_KIND,
    Work,
    progress_publisher,
    published_progress,
)

__all__ = [
    "PrintError",
    "print_batch_close",
    "print_batch_hand_over",
    "print_batch_mark_mailed",
    "print_item_add",
    "print_item_return",
]

logger = logging.getLogger(__name__)

PROVIDER = Channel.PRINT.value
CLOSE_PERMISSION = "notifications.close_printbatch"
HAND_OVER_PERMISSION = "notifications.hand_over_printbatch"
OUTCOME_PERMISSION = "notifications.record_print_outcome"
# A close holds the open batch's row while it produces the stream (a minute or more for
# thousands of letters). A letter joining waits this long, then its delivery is retried later
# by the dispatcher instead of holding a worker.
JOIN_LOCK_TIMEOUT = "5s"
_EVENT_CHUNK = 500


def _require(by, permission: str, doing: str) -> None:
    if by is None or not by.has_perm(permission):
        raise PermissionDenied(f"{doing} needs the {permission} permission (operations).")


def _refuse_transition(batch: PrintBatch, allowed_from: str, doing: str) -> PrintError:
    return PrintError(
        f"{batch.reference} is {batch.state}; only a batch that is {allowed_from} can be {doing}.",
        code="invalid_state",
    )


# --- letters join the open batch ------------------------------------------------------------


def _lock_timed_out(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "55P03"  # lock_not_available


def _open_batch_locked() -> PrintBatch:
    """The open batch, locked until the caller's transaction ends; opened when there is none."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{JOIN_LOCK_TIMEOUT}'")
    while True:
        batch = PrintBatch.objects.select_for_update().filter(state=PrintBatchState.OPEN).first()
        if batch is not None:
            break
        try:
            with transaction.atomic():
                batch = PrintBatch.objects.create()
        except IntegrityError:
            continue  # another worker opened one first (one open batch, by constraint): join it
        audit.record(actor=None, action="print_batch.opened", subject=batch)
        break
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout TO DEFAULT")
    return batch


def print_item_add(*, delivery: Delivery) -> PrintItem:
    """Put the communication's archived PDF into the open batch for `delivery` (idempotent: a
    delivery already in a batch gets its item back). The envelope carries the customer's name
    and postal address as they are now, or the corrected address a resend names."""
    existing = PrintItem.objects.filter(delivery_id=delivery.pk).first()
    if existing is not None:
        return existing
    communication = Communication.objects.select_related("customer", "document", "template").get(
        pk=delivery.communication_id
    )
    document = communication.document
    if document is None:
        raise PrintError(
            f"communication {communication.pk} has no archived document to print: template "
            f"{communication.template.code!r} has no print rendition",
            code="no_document",
        )
    customer = communication.customer
    # A resend to a corrected address (notifications.pipeline.recovery) carries that address
    # itself; a communication addressed explicitly (a reprint to a new address) names it.
    given = delivery.meta.get("postal_address")
    if not given and communication.address_override and communication.channel_override == "print":
        given = communication.address_override.split(" / ")
    source = given if given else customer.postal_address
    lines = [str(line).strip() for line in source if str(line).strip()]
    if not lines or (not given and not customer.postal_address_valid):
        why = "is marked invalid (mail came back)" if lines else "is empty"
        raise PrintError(
            f"the postal address of customer {customer.external_ref} {why}; "
            "correct it and send the communication again",
            code="no_postal_address",
        )
    address = postal_address_text(lines)
    try:
        with transaction.atomic():
            batch = _open_batch_locked()
            # Checked again under the batch lock, which every join takes: a second send of the
            # same delivery (a reconciled crash) finds the first one's item.
            existing = PrintItem.objects.filter(delivery_id=delivery.pk).first()
            if existing is not None:
                return existing
            sequence = batch.item_count + 1
            PrintBatch.objects.filter(pk=batch.pk).update(item_count=sequence)
            item = PrintItem.objects.create(
                batch=batch,
                delivery=delivery,
                sequence=sequence,
                customer=customer,
                recipient_name=customer.name,
                postal_address=lines,
                document=document,
                pages=document.page_count,
                document_sha256=document.sha256,
            )
            meta = {**delivery.meta, "print_batch": batch.pk, "print_sequence": sequence}
            Delivery.objects.filter(pk=delivery.pk).update(address=address, meta=meta)
            audit.record(
                actor=None,
                action="print_item.added",
                subject=item,
                after={
                    "batch": batch.pk,
                    "sequence": sequence,
                    "delivery": delivery.pk,
                    "document": document.pk,
                    "document_sha256": document.sha256,
                    "address": lines,
                },
            )
    except OperationalError as exc:
        if _lock_timed_out(exc):
            raise PrintError(
                "the open print batch is being closed; the letter joins the next batch on retry",
                code="batch_busy",
            ) from exc
        raise
    return item


# --- the batch's steps ------------------------------------------------------------------


def _addressee_mismatch(item: PrintItem) -> str | None:
    """Why the letter inside does not go with its cover sheet, or None.

    A letter's archived data records the `customer` variables it was addressed with; the cover
    sheet carries the customer and address the item was made for. The address is compared when
    both come from the customer record (a resend to a corrected address, or a reprint to a new
    one, deliberately puts an older letter under a new address)."""
    document = item.document
    recorded = document.data.get(RESERVED) if isinstance(document.data, dict) else None
    if not isinstance(recorded, dict):
        return None  # archived before addressees were recorded: there is nothing to compare
    label = f"{item.provider_id} (document {document.pk})"
    customer = item.customer
    if normal_form(recorded.get("reference", "")) != normal_form(customer.external_ref):
        return (
            f"{label}: the letter was composed for customer {recorded.get('reference')!r}, "
            f"its cover sheet is for customer {customer.external_ref!r}"
        )
    if normal_form(recorded.get("name", "")) != normal_form(item.recipient_name):
        return (
            f"{label}: the letter is addressed to {recorded.get('name')!r}, "
            f"its cover sheet to {item.recipient_name!r}"
        )
    communication = item.delivery.communication
    explicit = item.delivery.meta.get("postal_address") or communication.address_override
    if not explicit and normal_form(recorded.get("address", [])) != normal_form(
        item.postal_address
    ):
        return (
            f"{label}: the letter's address block ({' / '.join(recorded.get('address', []))}) "
            f"is not its cover sheet's ({' / '.join(item.postal_address)}); the customer moved "
            "after it was composed: compose it again"
        )
    return None


def _check_addressees(batch: PrintBatch) -> None:
    """Refuse the close, naming the letter, if any cover sheet and its letter disagree."""
    items = batch.items.select_related("document", "customer", "delivery__communication").order_by(
        "sequence"
    )
    for item in items.iterator(chunk_size=_EVENT_CHUNK):
        why = _addressee_mismatch(item)
        if why:
            raise PrintError(
                f"{batch.reference} not closed: {why}", code="document_addressee_mismatch"
            )


def _locked(batch: PrintBatch) -> PrintBatch:
    return PrintBatch.objects.select_for_update().get(pk=batch.pk)


CLOSE_PROGRESS = "print_batch_close:"


def close_progress_key(batch: PrintBatch) -> str:
    return f"{CLOSE_PROGRESS}{batch.pk}"


def print_batches_progress(*, since: datetime) -> Iterator[Work]:
    """The dashboard's progress source: batches being closed (the letters written into the
    stream so far, published from inside the close's transaction) and batches closed since
    `since`."""
    published = published_progress(prefix=CLOSE_PROGRESS, since=since)
    closing = {int(key.removeprefix(CLOSE_PROGRESS)): figures for key, figures in published.items()}
    batches = PrintBatch.objects.filter(
        Q(pk__in=closing, state=PrintBatchState.OPEN) | Q(closed_at__gte=since)
    ).order_by("-id")[:PER_KIND]
    for batch in batches:
        finished = batch.state != PrintBatchState.OPEN
        done, total = (batch.item_count, batch.item_count) if finished else closing[batch.pk]
        yield Work(
            kind="print_batch_close",
            key=close_progress_key(batch),
            label=f"Print batch {batch.reference}: stream and manifest",
            state=batch.state if finished else "closing",
            done=done,
            total=total,
            finished=finished,
            url=reverse("admin:notifications_printbatch_change", args=[batch.pk]),
            permissions=("notifications.view_printbatch",),
            started_at=batch.closed_at,
        )


def print_batch_close(*, batch: PrintBatch, by) -> PrintBatch:
    """open → closed: produce the print stream (cover sheet + archived document per letter, in
    sequence) and the manifest, store both with their SHA-256. Refused, naming the item, when
    an archived document no longer matches its recorded hash; refused for an empty batch."""
    _require(by, CLOSE_PERMISSION, "Closing a print batch")
    try:
        with transaction.atomic():
            # Letters wait to join while this runs (see JOIN_LOCK_TIMEOUT), so the stream
            # holds exactly the items the batch has when it closes.
            locked = _locked(batch)
            if not can_proceed(locked.close):
                raise _refuse_transition(locked, "open", "closed")
            if not locked.items.exists():
                raise PrintError(
                    f"{locked.reference} has no letters; there is nothing to print",
                    code="empty_batch",
                )
            _check_addressees(locked)
            with (
                tempfile.TemporaryFile() as stream,
                tempfile.TemporaryFile() as manifest,
                progress_publisher(close_progress_key(locked)) as publish,
            ):
                # The dashboard's bar moves while this transaction is still open.
                publish(0, locked.item_count)
                built = printstream.stream_build(
                    reference=locked.reference,
                    items=locked.items.all(),
                    stream=stream,
                    manifest=manifest,
                    on_progress=publish,
                )
                locked.stream.save(f"{locked.reference}.pdf", File(stream), save=False)
                locked.manifest.save(f"{locked.reference}-manifest.csv", File(manifest), save=False)
            locked.close(
                by=by,
                when=timezone.now(),
                page_count=built.page_count,
                stream_sha256=built.stream_sha256,
                manifest_sha256=built.manifest_sha256,
            )
            locked.save()
            audit.record(
                actor=by,
                action="print_batch.closed",
                subject=locked,
                after={
                    "items": locked.item_count,
                    "pages": locked.page_count,
                    "stream": locked.stream.name,
                    "stream_sha256": locked.stream_sha256,
                    "manifest_sha256": locked.manifest_sha256,
                },
            )
    except PrintError as exc:
        if exc.code.startswith("document_"):
            # An archive that does not match its record is an integrity alarm: kept in the
            # audit trail although the close itself rolled back.
            logger.error("print batch %s not closed: %s", batch.pk, exc)
            audit.record(
                actor=by,
                action="print_batch.close_refused",
                subject=batch,
                after={"reason": str(exc)},
            )
        raise
    return locked


@transaction.atomic
def print_batch_hand_over(*, batch: PrintBatch, by) -> PrintBatch:
    """closed → handed_over: the mail house has taken the stream and manifest."""
    _require(by, HAND_OVER_PERMISSION, "Handing a print batch over")
    locked = _locked(batch)
    if not can_proceed(locked.hand_over):
        raise _refuse_transition(locked, "closed", "handed over")
    locked.hand_over(by=by, when=timezone.now())
    locked.save()
    audit.record(
        actor=by,
        action="print_batch.handed_over",
        subject=locked,
        after={"stream_sha256": locked.stream_sha256, "items": locked.item_count},
    )
    return locked


@transaction.atomic
def print_batch_mark_mailed(*, batch: PrintBatch, by) -> PrintBatch:
    """handed_over → mailed: every letter not already returned is delivered, recorded as one
    `delivered` event per item and applied by the tracking task."""
    _require(by, OUTCOME_PERMISSION, "Recording a print batch as mailed")
    locked = _locked(batch)
    if not can_proceed(locked.mark_mailed):
        raise _refuse_transition(locked, "handed over", "marked mailed")
    now = timezone.now()
    locked.mark_mailed(by=by, when=now)
    locked.save()
    items = locked.items.filter(returned_at__isnull=True).values_list(
        "sequence", "delivery_id", "delivery__address"
    )
    events = 0
    chunk: list[DeliveryEvent] = []
    for sequence, delivery_id, address in items.iterator(chunk_size=_EVENT_CHUNK):
        chunk.append(
            DeliveryEvent(
                delivery_id=delivery_id,
                provider=PROVIDER,
                event_id=f"{locked.reference}/{sequence}/mailed",
                event_type=EventType.DELIVERED,
                recipient=address[:254],
                description=f"posted by the mail house in {locked.reference}",
                occurred_at=now,
                raw={"batch": locked.pk, "sequence": sequence, "mailed_by": by.get_username()},
            )
        )
        if len(chunk) == _EVENT_CHUNK:
            events += _store_events(chunk)
            chunk = []
    events += _store_events(chunk)
    audit.record(actor=by, action="print_batch.mailed", subject=locked, after={"delivered": events})
    return locked


def _store_events(events: list[DeliveryEvent]) -> int:
    for event in DeliveryEvent.objects.bulk_create(events):
        enqueue(PROCESS_TASK, event.pk)
    return len(events)


@transaction.atomic
def print_item_return(*, item: PrintItem, reason: str, by) -> PrintItem:
    """A letter came back: recorded once, with why, who and when, and applied as a hard bounce
    (the delivery bounces, the postal address is marked invalid, `delivery_failed` fires)."""
    _require(by, OUTCOME_PERMISSION, "Recording returned mail")
    reason = reason.strip()
    if not reason:
        raise PrintError(
            "Say why the letter came back (e.g. 'addressee gone away').", code="reason_required"
        )
    locked = PrintItem.objects.select_for_update().select_related("batch").get(pk=item.pk)
    if locked.batch.state not in (PrintBatchState.HANDED_OVER, PrintBatchState.MAILED):
        raise PrintError(
            f"{locked.provider_id} is in {locked.batch.reference}, which is "
            f"{locked.batch.state}; only letters handed over to the mail house can come back.",
            code="invalid_state",
        )
    if locked.returned_at is not None:
        raise PrintError(
            f"{locked.provider_id} was already recorded as returned on "
            f"{locked.returned_at:%Y-%m-%d} ({locked.return_reason}).",
            code="already_returned",
        )
    now = timezone.now()
    locked.returned_at = now
    locked.return_reason = reason[:300]
    locked.returned_by = by
    locked.save(update_fields=["returned_at", "return_reason", "returned_by"])
    event = DeliveryEvent.objects.create(
        delivery_id=locked.delivery_id,
        provider=PROVIDER,
        event_id=f"{locked.provider_id}/returned",
        event_type=EventType.BOUNCED,
        hard=True,
        recipient=Delivery.objects.values_list("address", flat=True).get(pk=locked.delivery_id),
        description=f"returned mail: {locked.return_reason}",
        occurred_at=now,
        raw={"batch": locked.batch_id, "sequence": locked.sequence, "reason": reason},
    )
    audit.record(
        actor=by,
        action="print_item.returned",
        subject=locked,
        after={"reason": locked.return_reason, "event": event.pk, "delivery": locked.delivery_id},
    )
    enqueue(PROCESS_TASK, event.pk)
    return locked

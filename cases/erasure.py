"""The right to erasure: a customer's personal data is emptied or pseudonymised everywhere CCM
holds it, unless a legal hold stops it (refused, with the hold's reason) or records CCM must
keep by law are still within their retention (deferred until the last one's period ends, then
done by the daily task).

What stays is what proves what was done, without saying to whom: rows, ids, states, times,
channels, document hashes, the audit chain. Every request, refusal, deferral and erasure is an
ErasureRequest row and an audit event.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from cases.models import (
    Case,
    CaseAttachment,
    CaseDocument,
    CaseNote,
    CorrespondenceRequest,
    ErasureRequest,
    ErasureState,
    LegalHold,
    ProcessedInboxMessage,
    ReprintRequest,
)
from cases.retention import retention_days
from ccm import audit
from documents.models import Document
from notifications.campaigns.models import CampaignRecipient
from notifications.models import (
    Communication,
    ConsentRecord,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    Device,
    Preference,
    PrintItem,
    SendJobItem,
    Suppression,
    WebhookDelivery,
)

logger = logging.getLogger(__name__)

ERASED_NAME = "Erased customer"


class ErasureError(ValueError):
    pass


def customer_erase(
    *, customer: Customer, by, grounds: str, now: datetime | None = None
) -> ErasureRequest:
    """Record a request to erase `customer` and carry it out now if nothing stops it."""
    if not grounds.strip():
        raise ErasureError("Say what the request is (who asked, how, when).")
    with transaction.atomic():
        request = ErasureRequest.objects.create(
            customer=customer, grounds=grounds, requested_by=by if by and by.pk else None
        )
        audit.record(
            actor=by,
            action="erasure.requested",
            subject=request,
            after={"customer": customer.pk, "grounds": grounds},
        )
    return erasure_run(request=request, by=by, now=now)


def erasure_run(*, request: ErasureRequest, by=None, now: datetime | None = None) -> ErasureRequest:
    """Refuse, defer or carry out `request` (a requested or deferred one), under the customer's
    row lock, so a hold placed meanwhile wins."""
    now = now or timezone.now()
    files: list = []
    with transaction.atomic():
        locked = ErasureRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state not in (ErasureState.REQUESTED, ErasureState.DEFERRED):
            return locked
        customer = Customer.objects.select_for_update().get(pk=locked.customer_id)
        if hold := holds_on(customer).first():
            target = f"case {hold.case.reference}" if hold.case_id else "the customer"
            locked.refuse(
                reason=f"A legal hold on {target} (placed {hold.placed_at:%Y-%m-%d}: "
                f"{hold.reason}) stops erasure; ask again once it is released."
            )
            action, after = "erasure.refused", {"reason": locked.reason, "hold": hold.pk}
        elif (kept := kept_until(customer, now=now)) is not None:
            until, count = kept
            locked.defer(
                reason=f"{count} communications of a category kept by law "
                f"({', '.join(settings.CCM_ERASURE_KEEPS)}) are within their retention "
                f"until {until:%Y-%m-%d}; erasure is deferred to then.",
                until=until,
            )
            action, after = "erasure.deferred", {"reason": locked.reason, "until": until}
        else:
            erased = _erase(customer, files)
            locked.complete(erased=erased, when=now)
            action, after = "erasure.done", {"erased": erased}
        locked.save()
        audit.record(actor=by, action=action, subject=locked, after=after)

        def delete_files() -> None:
            # After the rows say so: a crash in between leaves an orphan object, never a row
            # pointing at nothing.
            for field_file in files:
                field_file.storage.delete(field_file.name)

        transaction.on_commit(delete_files)
    logger.info("erasure %s of customer %s: %s", locked.pk, customer.pk, locked.state)
    return locked


def erasures_due_run(*, now: datetime | None = None) -> list[ErasureRequest]:
    """The daily task: carry out deferred erasures whose date has come."""
    now = now or timezone.now()
    due = ErasureRequest.objects.filter(state=ErasureState.DEFERRED, due_at__lte=now)
    return [erasure_run(request=r, now=now) for r in due.order_by("due_at")]


def holds_on(customer: Customer):
    """Active legal holds on the customer or on one of their cases."""
    return LegalHold.objects.filter(
        Q(customer=customer) | Q(case__customer=customer), released_at__isnull=True
    ).select_related("case")


def kept_until(customer: Customer, *, now: datetime) -> tuple[datetime, int] | None:
    """When the last of the customer's communications that must be kept by law
    (CCM_ERASURE_KEEPS categories) leaves its retention, and how many are still kept; None
    when nothing is."""
    days = retention_days()
    latest: datetime | None = None
    count = 0
    for category in settings.CCM_ERASURE_KEEPS:
        kept = Communication.objects.filter(
            customer=customer,
            category=category,
            created_at__gt=now - timedelta(days=days[category]),
        ).aggregate(newest=Max("created_at"), n=Count("pk"))
        if kept["newest"] is None:
            continue
        count += kept["n"]
        until = kept["newest"] + timedelta(days=days[category])
        latest = until if latest is None or until > latest else latest
    return (latest, count) if latest is not None else None


def _erase(customer: Customer, files: list) -> dict[str, int]:
    """Empty or pseudonymise every personal datum of `customer`; the files to delete from
    storage are appended to `files`. Returns counts by kind."""
    communications = Communication.objects.filter(customer=customer)
    deliveries = Delivery.objects.filter(communication__customer=customer)
    cases = Case.objects.filter(customer=customer)
    documents = Document.objects.filter(
        Q(pk__in=communications.exclude(document=None).values("document"))
        | Q(pk__in=CaseDocument.objects.filter(case__in=cases).values("document"))
    )
    attachments = CaseAttachment.objects.filter(case__in=cases)
    addresses = set(customer.contacts.values_list("value", flat=True)) | set(
        deliveries.exclude(address="").values_list("address", flat=True)
    )
    files += [d.file for d in documents.exclude(file="")]
    files += [a.file for a in attachments.exclude(file="")]
    old_ref, source_system = customer.external_ref, customer.source_system
    pseudonym = f"erased-{customer.pk}"
    erased = {
        "documents": documents.update(file="", data={}),
        "communications": communications.update(
            data={}, rendered={}, decision_trace=[], address_override="", failure_errors=[]
        ),
        "deliveries": deliveries.update(address="", last_error="", meta={}),
        "delivery_events": DeliveryEvent.objects.filter(
            delivery__communication__customer=customer
        ).update(recipient="", description="", raw={}),
        "contact_points": ContactPoint.objects.filter(customer=customer).delete()[0],
        "preferences": Preference.objects.filter(customer=customer).delete()[0],
        "devices": Device.objects.filter(customer=customer).delete()[0],
        "suppressions": Suppression.objects.filter(address__in=addresses).delete()[0],
        "cases": cases.update(
            subject="Erased",
            description="",
            details={},
            resolution="",
            error_details={},
            next_action="",
        ),
        "case_notes": CaseNote.objects.filter(case__in=cases).update(body="[erased]"),
        "case_attachments": attachments.update(file="", name="erased"),
        "reprint_requests": ReprintRequest.objects.filter(customer=customer).update(
            address="", reason="[erased]", identity_note=""
        ),
        "correspondence_requests": CorrespondenceRequest.objects.filter(customer=customer).update(
            data={}
        ),
        "print_items": PrintItem.objects.filter(customer=customer).update(
            recipient_name="", postal_address=[]
        ),
        "campaign_recipients": CampaignRecipient.objects.filter(customer=customer).update(data={}),
        "send_job_items": SendJobItem.objects.filter(
            customer_ref=old_ref, source_system=source_system
        ).update(customer_ref="", data={}),
        "inbox_messages": ProcessedInboxMessage.objects.filter(from_address__in=addresses).update(
            from_address="", subject=""
        ),
        # The consent ledger is append-only (it proves what applied when); its rows carry no
        # contact details once the customer is pseudonymised below.
        "consent_records_kept": ConsentRecord.objects.filter(customer=customer).count(),
    }
    # Webhook events not yet sent (or to be replayed) name the customer by their reference.
    hooks = list(WebhookDelivery.objects.filter(communication__customer=customer).only("payload"))
    for hook in hooks:
        data = {**hook.payload.get("data", {}), "customer_ref": pseudonym}
        hook.payload = {**hook.payload, "data": data}
    WebhookDelivery.objects.bulk_update(hooks, ["payload"], batch_size=500)
    erased["webhook_events"] = len(hooks)
    Customer.objects.filter(pk=customer.pk).update(
        name=ERASED_NAME,
        salutation="",
        postal_address=[],
        postal_address_valid=False,
        attributes={},
        external_ref=pseudonym,
        updated_at=timezone.now(),
    )
    return erased

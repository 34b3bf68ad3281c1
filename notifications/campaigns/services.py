"""Every write of segments and campaigns: create, submit (freeze the audience), decide, schedule,
send in chunks through the one pipeline, pause, resume, cancel."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
import zoneinfo
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone
from django_fsm import can_proceed

from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from ccm.rows import update_rows
from ccm.tasks import enqueue
from documents import selectors as document_selectors
from documents.addressee import identity_fields
from documents.composition import DataInvalid
from documents.models import Category, VersionState
from notifications.campaigns import selectors
from notifications.campaigns.models import (
    Campaign,
    CampaignRecipient,
    CampaignState,
    DataSource,
    RecipientState,
    Segment,
    WindowZone,
)
from notifications.jobs.csv_rows import CUSTOMER_COLUMN, cells_data
from notifications.models import CommState, Communication, Customer, Source
from notifications.pipeline.chunks import needs_pdf
from notifications.pipeline.content import ADDRESSEE_FIELDS, addressee_of, intake_data_validate
from notifications.pipeline.intake import communications_intake, communications_received
from notifications.pipeline.services import communication_cancel

logger = logging.getLogger(__name__)

APPROVAL_PURPOSE = "campaign"
CLIENT = "campaign"  # the client name of every campaign communication (idempotency scope)
SEND_TASK = "notifications.campaigns.tasks.campaign_send"
# A send task hands chunks for at most this long, then enqueues its successor: a worker is
# never held for a whole campaign and a pause is seen before the next chunk.
TASK_BUDGET_SECONDS = 50.0
# Communications in these states have not reached a provider: cancelling a campaign stops them.
NOT_HANDED_TO_PROVIDER = [
    CommState.RECEIVED,
    CommState.COMPOSED,
    CommState.COMPOSE_FAILED,
    CommState.AWAITING_APPROVAL,
    CommState.APPROVED,
]


class CampaignError(Exception):
    """A request the campaign cannot take now; `errors` lists every bad item (CSV rows)."""

    def __init__(self, message: str, *, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


# --- customers' attributes ------------------------------------------------------------------


@transaction.atomic
def customer_attributes_set(*, customer: Customer, attributes: dict, by) -> Customer:
    """Replace a customer's free-form attributes (what segments filter on)."""
    if not isinstance(attributes, dict):
        raise CampaignError("attributes must be a JSON object.")
    before = customer.attributes
    Customer.objects.filter(pk=customer.pk).update(attributes=attributes)
    customer.attributes = attributes
    audit.record(
        actor=by,
        action="customer.attributes_set",
        subject=customer,
        before={"attributes": before},
        after={"attributes": attributes},
    )
    return customer


# --- segments -------------------------------------------------------------------------------


@transaction.atomic
def segment_create(*, name: str, definition: dict, by, description: str = "") -> Segment:
    """A segment, or a new version of the segment of that name (earlier versions stay as
    campaigns bound them)."""
    errors = selectors.segment_definition_errors(definition)
    if errors:
        raise CampaignError("The segment definition is invalid.", errors=[{"errors": errors}])
    latest = Segment.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
    segment = Segment.objects.create(
        name=name,
        version=latest + 1,
        definition=definition,
        description=description,
        created_by=by,
    )
    try:
        selectors.segment_customers(definition).exists()
    except selectors.SegmentInvalid as exc:
        raise CampaignError(str(exc), errors=[{"errors": [str(exc)]}]) from exc
    audit.record(
        actor=by,
        action="segment.created",
        subject=segment,
        after={"name": name, "version": segment.version, "definition": definition},
    )
    return segment


# --- campaigns ------------------------------------------------------------------------------


def throttle_errors(throttle: Any) -> list[str]:
    if not isinstance(throttle, dict):
        return ["throttle must be an object {channel: messages per minute}."]
    return [
        f"throttle for {channel!r}: give a channel of {', '.join(selectors.CHANNELS)} and a "
        "whole number of messages per minute above 0."
        for channel, rate in throttle.items()
        if channel not in selectors.CHANNELS or not isinstance(rate, int) or rate <= 0
    ]


def _settings_errors(
    *,
    data_source: str,
    data_csv: str,
    throttle: dict,
    window: tuple[int, int] | None,
    window_zone: str,
) -> list[str]:
    """Everything wrong with a campaign's settings, in words (create and edit share it)."""
    errors = []
    if data_source not in DataSource.values:
        errors.append(f"Unknown data source {data_source!r}.")
    if data_source == DataSource.CSV and not data_csv.strip():
        errors.append("A campaign with CSV data needs the CSV.")
    errors += throttle_errors(throttle)
    if window is not None and (
        len(window) != 2 or not all(0 <= h <= 23 for h in window) or window[0] == window[1]
    ):
        errors.append("The send window is two different hours of the day, 0 to 23.")
    if window_zone not in WindowZone.values:
        errors.append(f"The send window's time zone is {' or '.join(WindowZone.values)}.")
    return errors


@transaction.atomic
def campaign_create(
    *,
    name: str,
    template_code: str,
    segment: Segment,
    by,
    category: str = "",
    data_source: str = DataSource.ATTRIBUTES,
    data_csv: str = "",
    schedule_at: datetime | None = None,
    throttle: dict | None = None,
    window: tuple[int, int] | None = None,
    window_zone: str = WindowZone.BUSINESS,
) -> Campaign:
    """A draft campaign bound to the template's published version."""
    version = document_selectors.version_for_sending(code=template_code)
    if version is None:
        raise CampaignError(f"Template {template_code!r} has no published version to send.")
    category = category or version.template.category
    if category not in Category.values:
        raise CampaignError(f"Unknown category {category!r}.")
    errors = _settings_errors(
        data_source=data_source,
        data_csv=data_csv,
        throttle=throttle or {},
        window=window,
        window_zone=window_zone,
    )
    if errors:
        raise CampaignError("The campaign's settings are invalid.", errors=[{"errors": errors}])
    campaign = Campaign.objects.create(
        name=name,
        template_version=version,
        segment=segment,
        category=category,
        data_source=data_source,
        data_csv=data_csv,
        schedule_at=schedule_at,
        throttle=throttle or {},
        window_start_hour=window[0] if window else None,
        window_end_hour=window[1] if window else None,
        window_zone=window_zone,
        created_by=by,
    )
    audit.record(
        actor=by,
        action="campaign.created",
        subject=campaign,
        after=_editable(campaign),
    )
    return campaign


def _editable(campaign: Campaign) -> dict:
    """A campaign's settings as the audit trail records them."""
    return {
        "name": campaign.name,
        "template_version": campaign.template_version_id,
        "segment": campaign.segment_id,
        "category": campaign.category,
        "data_source": campaign.data_source,
        "data_csv_sha256": hashlib.sha256(campaign.data_csv.encode()).hexdigest(),
        "schedule_at": campaign.schedule_at.isoformat() if campaign.schedule_at else None,
        "throttle": campaign.throttle,
        "window": [campaign.window_start_hour, campaign.window_end_hour],
        "window_zone": campaign.window_zone,
    }


EDITABLE_STATES = (CampaignState.DRAFT, CampaignState.CHANGES_REQUESTED)


@transaction.atomic
def campaign_update(*, campaign: Campaign, by, **changes: Any) -> Campaign:
    """Edit a draft (or a campaign sent back with changes requested): name, segment, category,
    data, schedule, throttle, send window. `template` rebinds the template's published
    version. Nothing is frozen yet, so the next submission freezes what is here now."""
    campaign = _locked(campaign)
    if campaign.state not in EDITABLE_STATES:
        raise CampaignError(
            f"A campaign that is {campaign.get_state_display().lower()} cannot be edited; "
            "only a draft or one with changes requested."
        )
    unknown = set(changes) - {
        "name",
        "template",
        "segment",
        "category",
        "data_source",
        "data_csv",
        "schedule_at",
        "throttle",
        "window",
        "window_zone",
    }
    if unknown:
        raise CampaignError(f"These cannot be edited: {', '.join(sorted(unknown))}.")
    before = _editable(campaign)
    if "template" in changes:
        version = document_selectors.version_for_sending(code=changes.pop("template"))
        if version is None:
            raise CampaignError("That template has no published version to send.")
        campaign.template_version = version
    if "window" in changes:
        window = changes.pop("window")
        campaign.window_start_hour, campaign.window_end_hour = window if window else (None, None)
    for field, value in changes.items():
        setattr(campaign, field, value if value is not None or field == "schedule_at" else "")
    campaign.category = campaign.category or campaign.template_version.template.category
    if campaign.category not in Category.values:
        raise CampaignError(f"Unknown category {campaign.category!r}.")
    window_now = (
        (campaign.window_start_hour, campaign.window_end_hour)
        if campaign.window_start_hour is not None
        else None
    )
    errors = _settings_errors(
        data_source=campaign.data_source,
        data_csv=campaign.data_csv,
        throttle=campaign.throttle or {},
        window=window_now,  # type: ignore[arg-type]
        window_zone=campaign.window_zone,
    )
    if errors:
        raise CampaignError("The campaign's settings are invalid.", errors=[{"errors": errors}])
    campaign.save()
    audit.record(
        actor=by,
        action="campaign.edited",
        subject=campaign,
        before=before,
        after=_editable(campaign),
    )
    return campaign


def attributes_data(customer: Customer) -> dict:
    """A customer's data row from their attributes, with their name and reference."""
    facts = dict(customer.attributes or {})
    own = facts.get("customer")
    if not isinstance(own, dict):
        own = {}
    return {**facts, "customer": {"name": customer.name, "reference": customer.external_ref, **own}}


def campaign_data_rows(
    campaign: Campaign, customers: Iterable[Customer]
) -> tuple[dict[int, dict], list[dict]]:
    """Each audience customer's data row, and every problem found (row number, reference,
    errors): all of them, so the author fixes the file once."""
    version = campaign.template_version
    rows: dict[int, dict] = {}
    errors: list[dict] = []
    audience = {c.external_ref: c for c in customers}
    if campaign.data_source == DataSource.ATTRIBUTES:
        for customer in audience.values():
            rows[customer.pk] = attributes_data(customer)
    else:
        schema = version.content.get("schema", {})
        reader = csv.DictReader(io.StringIO(campaign.data_csv))
        # The customer's reference is `customer_ref`, as in a send job's file: a template
        # field may itself be called `reference`.
        if CUSTOMER_COLUMN not in (reader.fieldnames or []):
            return {}, [
                {
                    "row": 1,
                    "reference": "",
                    "errors": [
                        f"The CSV needs a {CUSTOMER_COLUMN} column (the customer's reference)."
                    ],
                }
            ]
        seen: set[str] = set()
        for number, row in enumerate(reader, start=2):
            reference = (row.pop(CUSTOMER_COLUMN) or "").strip()
            found = audience.get(reference)
            if found is None:
                errors.append(
                    {"row": number, "reference": reference, "errors": ["not in the segment"]}
                )
                continue
            if reference in seen:
                errors.append({"row": number, "reference": reference, "errors": ["a second row"]})
                continue
            seen.add(reference)
            # Cells typed by the template's schema, as a send job's file is read.
            data, cell_errors = cells_data(
                ((k, v or "") for k, v in row.items() if k), schema=schema
            )
            if cell_errors:
                errors.append(
                    {
                        "row": number,
                        "reference": reference,
                        "errors": [f"{e['field']}: {e['message']}" for e in cell_errors],
                    }
                )
                continue
            rows[found.pk] = data
        for reference in sorted(set(audience) - seen):
            errors.append({"row": None, "reference": reference, "errors": ["no data row"]})
    by_pk = {c.pk: c for c in audience.values()}
    for customer_id, data in rows.items():
        try:
            # The intake's own check, addressee and all: sending relies on it (the frozen rows
            # are not checked against the schema again, see `campaign_chunk_send`).
            intake_data_validate(version, data, addressee=addressee_of(by_pk[customer_id]))
        except DataInvalid as exc:
            errors.append(
                {
                    "row": None,
                    "reference": by_pk[customer_id].external_ref,
                    "errors": [f"{e.field}: {e.message}" for e in exc.errors],
                }
            )
    return rows, errors


def audience_hash(rows: Iterable[tuple[int, dict]]) -> str:
    """SHA-256 over the frozen audience: customer ids in order, each with its data row as
    canonical JSON. What the reviewer signs; recomputed before sending."""
    digest = hashlib.sha256()
    for customer_id, data in rows:
        digest.update(f"{customer_id}\t{json.dumps(data, sort_keys=True)}\n".encode())
    return digest.hexdigest()


def recipients_hash(campaign: Campaign) -> str:
    return audience_hash(
        CampaignRecipient.objects.filter(campaign=campaign)
        .order_by("customer_id")
        .values_list("customer_id", "data")
        .iterator(chunk_size=5000)
    )


def _locked(campaign: Campaign) -> Campaign:
    return Campaign.objects.select_for_update().get(pk=campaign.pk)


def _refuse(campaign: Campaign, transition, what: str) -> None:
    if not can_proceed(transition):
        raise CampaignError(f"A campaign that is {campaign.state} cannot be {what}.")


@transaction.atomic
def campaign_submit(*, campaign: Campaign, by) -> Approval:
    """Freeze the audience and ask for sign-off on it.

    The segment is evaluated once; its customers and their data rows become the campaign's
    recipients, hashed. Every bad data row is listed (CampaignError) and nothing changes."""
    campaign = _locked(campaign)
    _refuse(campaign, campaign.submit, "submitted")
    if campaign.template_version.state != VersionState.PUBLISHED:
        raise CampaignError("The campaign's template version is no longer published.")
    customers = list(
        selectors.segment_customers(campaign.segment.definition)
        .order_by("pk")
        # What the data rows, their check against the addressee and the send window read.
        .only(*ADDRESSEE_FIELDS, "attributes", "time_zone")
    )
    if not customers:
        raise CampaignError("The segment selects no customer; there is nothing to send.")
    rows, errors = campaign_data_rows(campaign, customers)
    if errors:
        raise CampaignError(
            f"{len(errors)} data rows are invalid; nothing was frozen.", errors=errors
        )
    CampaignRecipient.objects.filter(campaign=campaign).delete()
    zones = {c.pk: c.time_zone or settings.TIME_ZONE for c in customers}
    CampaignRecipient.objects.bulk_create(
        (
            CampaignRecipient(campaign=campaign, customer_id=pk, data=rows[pk], time_zone=zones[pk])
            for pk in sorted(rows)
        ),
        batch_size=5000,
    )
    audience = Customer.objects.filter(
        pk__in=CampaignRecipient.objects.filter(campaign=campaign).values("customer_id")
    )
    plan = selectors.channel_breakdown(
        audience,
        category=campaign.category,
        renditions=selectors.renditions_of(campaign.template_version),
    )
    campaign.audience_hash = audience_hash((pk, rows[pk]) for pk in sorted(rows))
    campaign.audience_count = len(rows)
    campaign.segment_snapshot = {
        "id": campaign.segment.pk,
        "name": campaign.segment.name,
        "version": campaign.segment.version,
        "definition": campaign.segment.definition,
    }
    campaign.channel_plan = plan.as_dict()
    campaign.submitted_by = by
    campaign.submitted_at = timezone.now()
    campaign.note = ""
    campaign.submit()
    campaign.save()
    audit.record(actor=by, action="campaign.submitted", subject=campaign, after=signed(campaign))
    approval = approvals.approval_request(
        subject=campaign,
        requested_by=by,
        purpose=APPROVAL_PURPOSE,
        summary=(
            f"Campaign {campaign.name}: {campaign.audience_count} customers, "
            f"audience {campaign.audience_hash[:12]}"
        ),
    )
    Campaign.objects.filter(pk=campaign.pk).update(approval=approval)
    return approval


def signed(campaign: Campaign) -> dict:
    """What the reviewer signs: the audience (hash and count), the segment as it was, the
    template version and the channel plan."""
    return {
        "audience_hash": campaign.audience_hash,
        "audience_count": campaign.audience_count,
        "segment": campaign.segment_snapshot,
        "template_version": campaign.template_version_id,
        "template_content_hash": campaign.template_version.content_hash,
        "category": campaign.category,
        "channel_plan": campaign.channel_plan,
    }


def _on_decision(campaign: Campaign, approval: Approval) -> None:
    campaign = _locked(campaign)
    by = approval.decided_by
    if approval.state == ApprovalState.APPROVED:
        # The rows are what was signed: a changed row refuses the approval (and rolls it back).
        if recipients_hash(campaign) != campaign.audience_hash:
            # A conflict the sign-off screens and API already report (409), nothing decided.
            raise approvals.ApprovalConflict(
                "The frozen audience changed after submission; it must be submitted again."
            )
        campaign.approve()
        campaign.approved_at = timezone.now()
        action = "campaign.approved"
    elif approval.state == ApprovalState.CHANGES_REQUESTED:
        campaign.request_changes()
        action = "campaign.changes_requested"
    elif approval.state == ApprovalState.REJECTED:
        campaign.cancel(reason=f"Rejected by the reviewer: {approval.comment}")
        action = "campaign.rejected"
    else:  # withdrawn by the requester
        campaign.reopen()
        by = approval.requested_by
        action = "campaign.withdrawn"
    campaign.save()
    audit.record(actor=by, action=action, subject=campaign, after=signed(campaign))


def register_approvable() -> None:
    from notifications.campaigns.review import campaign_proof

    approvals.register(
        Campaign,
        author_of=lambda campaign: campaign.created_by,  # type: ignore[attr-defined]
        on_decision=_on_decision,  # type: ignore[arg-type]
        review_url=lambda campaign: reverse("campaign-detail", args=[campaign.pk]),
        label="Campaign",
        proof=campaign_proof,  # type: ignore[arg-type]
    )


@transaction.atomic
def campaign_reopen(*, campaign: Campaign, by) -> Campaign:
    """changes requested → draft: the author edits, then submits (and freezes) again."""
    campaign = _locked(campaign)
    _refuse(campaign, campaign.reopen, "reopened")
    if campaign.state == CampaignState.IN_REVIEW:
        raise CampaignError("Withdraw the approval request to reopen a campaign in review.")
    campaign.reopen()
    campaign.save()
    audit.record(actor=by, action="campaign.reopened", subject=campaign)
    return campaign


@transaction.atomic
def campaign_schedule(*, campaign: Campaign, by, at: datetime | None = None) -> Campaign:
    """approved → scheduled; it starts at `at` (or its own schedule_at; now when neither)."""
    campaign = _locked(campaign)
    _refuse(campaign, campaign.schedule, "scheduled")
    if at is not None:
        campaign.schedule_at = at
    campaign.schedule()
    campaign.save()
    audit.record(
        actor=by,
        action="campaign.scheduled",
        subject=campaign,
        after={"at": campaign.schedule_at.isoformat() if campaign.schedule_at else "now"},
    )
    if campaign.schedule_at is None or campaign.schedule_at <= timezone.now():
        enqueue(SEND_TASK, campaign.pk)
    return campaign


@transaction.atomic
def campaign_pause(*, campaign: Campaign, by, reason: str = "") -> Campaign:
    campaign = _locked(campaign)
    _refuse(campaign, campaign.pause, "paused")
    campaign.pause(reason=reason or "Paused by operations.")
    campaign.save()
    audit.record(actor=by, action="campaign.paused", subject=campaign, after={"reason": reason})
    return campaign


@transaction.atomic
def campaign_resume(*, campaign: Campaign, by) -> Campaign:
    campaign = _locked(campaign)
    _refuse(campaign, campaign.resume, "resumed")
    campaign.resume()
    campaign.save()
    audit.record(actor=by, action="campaign.resumed", subject=campaign)
    enqueue(SEND_TASK, campaign.pk)
    return campaign


@transaction.atomic
def campaign_cancel(*, campaign: Campaign, by, reason: str = "") -> Campaign:
    """Cancel before completion: nobody still waiting is sent to, and communications not yet
    handed to a provider are cancelled too."""
    campaign = _locked(campaign)
    _refuse(campaign, campaign.cancel, "cancelled")
    reason = reason or "Cancelled by operations."
    was = campaign.state
    campaign.cancel(reason=reason)
    campaign.save()
    skipped = CampaignRecipient.objects.filter(
        campaign=campaign, state=RecipientState.PENDING
    ).update(state=RecipientState.SKIPPED, reason=f"campaign cancelled: {reason}"[:500])
    stopped = 0
    for communication in Communication.objects.filter(
        pk__in=CampaignRecipient.objects.filter(campaign=campaign).values("communication_id"),
        state__in=NOT_HANDED_TO_PROVIDER,
    ):
        communication_cancel(
            communication=communication, by=by, reason=f"campaign cancelled: {reason}"
        )
        stopped += 1
    if was == CampaignState.IN_REVIEW and campaign.approval_id:
        Approval.objects.filter(pk=campaign.approval_id, state=ApprovalState.PENDING).update(
            state=ApprovalState.WITHDRAWN
        )
    audit.record(
        actor=by,
        action="campaign.cancelled",
        subject=campaign,
        after={"reason": reason, "skipped": skipped, "communications_cancelled": stopped},
    )
    return campaign


# --- sending --------------------------------------------------------------------------------


@dataclass
class ChunkOutcome:
    handed: int = 0
    skipped: int = 0
    per_channel: Counter | None = None
    more: bool = False


def in_send_window(campaign: Campaign, now: datetime, zone: str = "") -> bool:
    """Whether `now`, read in `zone` (the business's time zone when empty), is inside the
    campaign's hours of sending."""
    start, end = campaign.window_start_hour, campaign.window_end_hour
    if start is None or end is None:
        return True
    hour = timezone.localtime(now, zoneinfo.ZoneInfo(zone) if zone else None).hour
    return start <= hour < end if start < end else hour >= start or hour < end


def _pending_in_window(campaign: Campaign, now: datetime):
    """The recipients waiting to be handed whose send window is open now: all of them, none
    (the business's window is closed), or, with a window in customers' time zones, those whose
    frozen zone is inside it now."""
    pending = CampaignRecipient.objects.filter(campaign=campaign, state=RecipientState.PENDING)
    if campaign.window_start_hour is None or campaign.window_zone != WindowZone.CUSTOMER:
        return pending if in_send_window(campaign, now) else pending.none()
    zones = pending.order_by().values_list("time_zone", flat=True).distinct()
    return pending.filter(time_zone__in=[z for z in zones if in_send_window(campaign, now, z)])


def chunk_size(campaign: Campaign) -> int:
    """How many recipients one hand-off takes: CCM_CAMPAIGN_HANDOFF_CHUNKS of the pipeline's
    chunks (copied in a few statements, composed by that many chunk tasks); with a throttle, a
    tenth of a minute's allowance, so the rate is held smoothly rather than in bursts."""
    size = max(1, settings.CCM_BULK_CHUNK) * max(1, settings.CCM_CAMPAIGN_HANDOFF_CHUNKS)
    if campaign.throttle:
        size = min(
            size, max(1, settings.CCM_BULK_CHUNK), max(1, min(campaign.throttle.values()) // 6)
        )
    return size


def campaign_chunk_send(campaign_id: int) -> ChunkOutcome:
    """Hand the next chunk of a sending campaign's recipients to the pipeline (`_hand`: a few
    set-based statements over the frozen audience, no per-recipient intake in Python).

    One transaction holds the campaign's row lock: two tasks never hand the same chunk, and the
    recipients' rows commit with their communications. Were the commit lost, the per-customer
    idempotency key returns the same communication next time: never two per customer.

    Channels are chosen once, by the pipeline's composition (`select_channels` over
    `facts_for_chunk`), not here as well: a customer nobody can reach any more, or a marketing
    recipient who opted out since approval, gets a communication that the pipeline makes
    `undeliverable` with its decision trace, and `selectors.unreached` reads the reason from it."""
    with transaction.atomic():
        campaign = (
            Campaign.objects.select_for_update(of=("self",))
            .select_related("template_version__template", "submitted_by")
            .get(pk=campaign_id)
        )
        if campaign.state != CampaignState.SENDING:
            return ChunkOutcome()
        version = campaign.template_version
        published = document_selectors.version_for_sending(code=version.template.code)
        if published is None or published.pk != version.pk:
            # The intake renders the published version: sending now would not be what was signed.
            campaign.pause(reason="The approved template version is no longer the published one.")
            campaign.save()
            audit.record(
                actor=None,
                action="campaign.paused",
                subject=campaign,
                after={"reason": campaign.note},
            )
            return ChunkOutcome()
        now = timezone.now()
        # (id, customer id) of the next recipients: their rows are copied in SQL below.
        recipients = list(
            _pending_in_window(campaign, now)
            .order_by("customer_id")
            .values_list("pk", "customer_id")[: chunk_size(campaign)]
        )
        if (
            not recipients
            and CampaignRecipient.objects.filter(
                campaign=campaign, state=RecipientState.PENDING
            ).exists()
        ):
            # Outside the send window (everyone's, or every waiting customer's). Nothing is
            # lost: the sweep enqueues the campaign again once it has been quiet for
            # CCM_CAMPAIGN_STALL_SECONDS, and it goes on when a window opens.
            Campaign.objects.filter(pk=campaign.pk).update(last_chunk_at=now)
            return ChunkOutcome()
        if not recipients:
            campaign.complete(when=now)
            campaign.save()
            audit.record(
                actor=None,
                action="campaign.completed",
                subject=campaign,
                after={"audience_count": campaign.audience_count},
            )
            return ChunkOutcome()
        handed, refused = _hand(campaign, recipients, now=now)
        if refused:
            update_rows(
                CampaignRecipient,
                ["state", "reason", "communication", "handed_at"],
                {
                    pk: (
                        RecipientState.SKIPPED,
                        f"refused by the intake: {reason}"[:500],
                        None,
                        now,
                    )
                    for pk, reason in refused.items()
                },
            )
        Campaign.objects.filter(pk=campaign.pk).update(last_chunk_at=now)
        return ChunkOutcome(
            handed=handed,
            skipped=len(refused),
            per_channel=planned_per_channel(campaign, handed),
            more=True,
        )


def _hand(
    campaign: Campaign, recipients: list[tuple[int, int]], *, now: datetime
) -> tuple[int, dict[int, str]]:
    """Make the communications of `recipients` ((id, customer id), in customer order) from
    their frozen rows, in the campaign's open transaction: one INSERT … SELECT from the frozen
    audience (the same row an intake item makes: received, the customer's idempotency key),
    their `received` steps, one UPDATE marking the recipients handed, then composition.

    The rows were checked against this version when the audience froze and still hash to what
    was signed, so the schema is not checked again; the identity fields are (against the
    customer as they are now), as the intake does (`intake_data_validate`). A communication
    the key already made (a commit lost after the insert) is the one the recipient gets.
    Returns how many were handed and, by recipient id, the reason of those refused."""
    if connection.vendor != "postgresql":
        return _hand_through_intake(campaign, recipients, now=now)
    version = campaign.template_version
    refused = _identity_refusals(version, [pk for pk, _ in recipients])
    ids = [pk for pk, _ in recipients if pk not in refused]
    if not ids:
        return 0, refused
    fixed = {
        "template": version.template_id,
        "category": campaign.category,
        "source": Source.CAMPAIGN,
        "correlation_id": campaign.reference,
        "client": CLIENT,
        "created_by": campaign.submitted_by_id,
        "created_at": now,
        "updated_at": now,
    }
    columns, values, params = [], [], []
    for f in Communication._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(connection.ops.quote_name(f.column))
        if f.name == "public_id":
            values.append("gen_random_uuid()")
        elif f.name in ("customer", "data"):
            values.append(f"r.{f.column}")
        elif f.name == "idempotency_key":
            values.append("%s || r.customer_id")
            params.append(f"{campaign.reference}:")  # "campaign:<id>:<customer id>"
        else:
            value = fixed[f.name] if f.name in fixed else f.get_default()
            values.append(f"%s::{f.db_type(connection)}")
            params.append(f.get_db_prep_save(value, connection))
    table = connection.ops.quote_name(Communication._meta.db_table)
    recipient_table = connection.ops.quote_name(CampaignRecipient._meta.db_table)
    with connection.cursor() as cursor:
        # Names come from the models' metadata; every value is a parameter.
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
            f"SELECT {', '.join(values)} FROM {recipient_table} r WHERE r.id = ANY(%s) "
            "ORDER BY r.customer_id "
            "ON CONFLICT (client, idempotency_key) WHERE idempotency_key IS NOT NULL "
            "DO NOTHING RETURNING id",
            [*params, ids],
        )
        new = sorted(pk for (pk,) in cursor.fetchall())
        cursor.execute(
            f"UPDATE {recipient_table} r SET state = %s, reason = '', "  # noqa: S608
            f"communication_id = c.id, handed_at = %s FROM {table} c "
            "WHERE r.id = ANY(%s) AND c.client = %s AND c.idempotency_key = %s || r.customer_id",
            [RecipientState.HANDED, now, ids, CLIENT, f"{campaign.reference}:"],
        )
        handed = cursor.rowcount
    communications_received(
        new,
        template_code=version.template.code,
        source=Source.CAMPAIGN,
        by=campaign.submitted_by,
        text_only=not needs_pdf(version),
    )
    return handed, refused


def _hand_through_intake(
    campaign: Campaign, recipients: list[tuple[int, int]], *, now: datetime
) -> tuple[int, dict[int, str]]:
    """`_hand` where the INSERT … SELECT cannot run (SQLite: the embedded `make run`): the same
    communications, with the same idempotency keys, through the intake, an item per recipient
    (its identity check included). Marks the handed recipients; returns as `_hand` does."""
    version = campaign.template_version
    rows = list(
        CampaignRecipient.objects.filter(pk__in=[pk for pk, _ in recipients])
        .select_related("customer")
        .only("pk", "data", "customer", *(f"customer__{f}" for f in ADDRESSEE_FIELDS))
        .order_by("customer_id")
    )
    results = communications_intake(
        items=[
            {
                "template": version.template.code,
                "customer": row.customer,
                "data": row.data,
                "category": campaign.category,
                "idempotency_key": f"{campaign.reference}:{row.customer_id}",
                "correlation_id": campaign.reference,
                "data_validated_for": version,
            }
            for row in rows
        ],
        client=CLIENT,
        by=campaign.submitted_by,
        source=Source.CAMPAIGN,
    )
    handed: dict[int, tuple] = {}
    refused: dict[int, str] = {}
    for row, result in zip(rows, results, strict=True):
        if result.accepted:
            handed[row.pk] = (RecipientState.HANDED, "", result.communication_id, now)
        else:
            refused[row.pk] = str(result.error)
    update_rows(CampaignRecipient, ["state", "reason", "communication", "handed_at"], handed)
    return len(handed), refused


def _identity_refusals(version, recipient_ids: list[int]) -> dict[int, str]:
    """Recipients whose frozen row names somebody else than their customer as they are now
    (the template's identity fields): the intake's identity check, for the rows of a chunk."""
    schema = version.content.get("schema", {})
    if not any(identity_fields(schema)):
        return {}
    refused: dict[int, str] = {}
    for recipient in (
        CampaignRecipient.objects.filter(pk__in=recipient_ids)
        .select_related("customer")
        .only("pk", "data", "customer", *(f"customer__{f}" for f in ADDRESSEE_FIELDS))
    ):
        try:
            intake_data_validate(
                version,
                recipient.data,
                addressee=addressee_of(recipient.customer),
                validated_for=version,
            )
        except DataInvalid as exc:
            refused[recipient.pk] = str(exc)
    return refused


def planned_per_channel(campaign: Campaign, handed: int) -> Counter:
    """How many of `handed` recipients each channel is expected to carry, from the approved
    channel plan (rounded up: the throttle errs on the slow side). The channels are chosen
    later, at composition; the provider throttle every sender shares caps the real sends."""
    plan = campaign.channel_plan or {}
    total = plan.get("total") or 0
    if not total:
        return Counter()
    return Counter(
        {
            channel: -(-handed * count // total)
            for channel, count in (plan.get("channels") or {}).items()
        }
    )


def pause_after(campaign: Campaign, per_channel: Counter | None) -> float:
    """Seconds to wait after a chunk so no channel goes over its messages per minute."""
    if not campaign.throttle or not per_channel:
        return 0.0
    return max(
        (per_channel.get(channel, 0) * 60.0 / rate for channel, rate in campaign.throttle.items()),
        default=0.0,
    )


def campaign_start(campaign_id: int) -> bool:
    """scheduled → sending once its time has come, after checking the recipients still hash to
    what was signed. False when it is not due (or not scheduled)."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.state != CampaignState.SCHEDULED:
            return campaign.state == CampaignState.SENDING
        if campaign.schedule_at and campaign.schedule_at > timezone.now():
            return False
        if recipients_hash(campaign) != campaign.audience_hash:
            campaign.cancel(reason="The frozen audience no longer matches what was approved.")
            campaign.save()
            audit.record(
                actor=None,
                action="campaign.cancelled",
                subject=campaign,
                after={"reason": campaign.note},
            )
            return False
        campaign.start()
        campaign.started_at = timezone.now()
        campaign.save()
        audit.record(
            actor=None,
            action="campaign.started",
            subject=campaign,
            after={"audience_hash": campaign.audience_hash},
        )
        return True


def campaign_send(campaign_id: int, *, budget: float | None = None) -> int:
    """Start a due campaign and hand its recipients: unthrottled, two hand-offs (`_send_ahead`);
    throttled, chunk after chunk at the campaign's rate for up to `budget` seconds. Then the
    next task takes over. Returns how many recipients this run handed or skipped."""
    if not campaign_start(campaign_id):
        return 0
    if not Campaign.objects.filter(pk=campaign_id).values_list("throttle", flat=True).get():
        return _send_ahead(campaign_id)
    deadline = time.monotonic() + (TASK_BUDGET_SECONDS if budget is None else budget)
    done = 0
    while True:
        started = time.monotonic()
        outcome = campaign_chunk_send(campaign_id)
        done += outcome.handed + outcome.skipped
        if not outcome.more:
            return done
        campaign = Campaign.objects.get(pk=campaign_id)
        wait = pause_after(campaign, outcome.per_channel) - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        if time.monotonic() >= deadline:
            with transaction.atomic():
                enqueue(SEND_TASK, campaign_id)
            return done


def _send_ahead(campaign_id: int) -> int:
    """An unthrottled campaign's send task: two hand-offs, its successor queued between them.

    The task holds a worker for two hand-offs' statements, not for minutes: the workers compose
    and send what it handed. Its successor waits in the queue behind the first hand-off's
    composition and ahead of the second's, so the next hand-off is made while the workers
    still have the second to compose (the queue never runs dry) and the campaign is never more
    than about three hand-offs ahead of its sending: a pause or cancel holds back everything
    after those."""
    first = campaign_chunk_send(campaign_id)
    if not first.more:
        return 0
    with transaction.atomic():
        enqueue(SEND_TASK, campaign_id)
    second = campaign_chunk_send(campaign_id)
    return first.handed + first.skipped + second.handed + second.skipped


def campaigns_due() -> list[int]:
    """Scheduled campaigns whose time has come, and sending ones no chunk has touched for a
    while (their task died): the periodic sweep hands them to `campaign_send` again."""
    now = timezone.now()
    stale = now - settings.CCM_CAMPAIGN_STALL_AFTER
    due = Campaign.objects.filter(state=CampaignState.SCHEDULED, schedule_at__lte=now)
    stalled = Campaign.objects.filter(state=CampaignState.SENDING, last_chunk_at__lt=stale)
    never = Campaign.objects.filter(
        state=CampaignState.SENDING, last_chunk_at__isnull=True, started_at__lt=stale
    )
    return sorted(
        set(due.values_list("pk", flat=True))
        | set(stalled.values_list("pk", flat=True))
        | set(never.values_list("pk", flat=True))
    )

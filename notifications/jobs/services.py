"""Send jobs: intake of many items through the pipeline's batch intake, start, schedule, cancel.

Every entry point hands its items to `job_items_submit`, the one call into the pipeline's batch
intake (`notifications.pipeline.intake.communications_request_bulk`). That intake is all-or-nothing
per template; a job is not: the items it refuses are set aside with their errors and the others are
submitted again, so one bad row never holds back the good ones.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from ccm import audit, rows
from ccm.tasks import enqueue
from documents.models import Template
from notifications.errors import IntakeError
from notifications.models import (
    CommState,
    Communication,
    Customer,
    JobSource,
    JobState,
    SendJob,
    SendJobItem,
)
from notifications.pipeline import intake, services

logger = logging.getLogger(__name__)

# Items handed to the intake at once when a job is sent from its stored rows.
SUBMIT_CHUNK = 1000
# A communication in one of these states will not move because of the job any more.
SETTLED_STATES = frozenset(
    {
        CommState.SENT,
        CommState.DELIVERED,
        CommState.VIEWED,
        CommState.ACTIONED,
        CommState.UNDELIVERABLE,
        CommState.CANCELLED,
        CommState.COMPOSE_FAILED,
        CommState.REJECTED,
    }
)
# A job still `sending` with rows not handed over after this long lost its task: run it again.
RESUME_AFTER = timedelta(minutes=2)


class JobError(ValueError):
    """A job cannot do what was asked in its state (shown to the user as is)."""


@dataclass(frozen=True)
class JobItem:
    """One communication to ask for: an API batch item or a CSV row, customer resolved."""

    index: int
    customer_id: int
    template_code: str
    data: dict
    idempotency_key: str | None = None
    category: str | None = None
    urgency: str = "normal"
    channel: str = ""
    correlation_id: str = ""


@dataclass
class Submitted:
    """What the intake made of the items: index → communication id, or index → errors."""

    accepted: dict[int, int] = field(default_factory=dict)
    refused: dict[int, list[dict]] = field(default_factory=dict)


class _DryRun(Exception):
    pass


def job_items_submit(
    *, items: Sequence[JobItem], client: str, by, source: str, dry_run: bool = False
) -> Submitted:
    """Hand `items` to the pipeline's batch intake; return what it accepted and refused.

    Items are grouped by what the intake takes once per call (template, category, urgency,
    correlation id). With `dry_run` everything is checked exactly as for real and then rolled
    back: nothing is created or enqueued (the accepted ids are then 0).
    """
    submitted = Submitted()
    groups: dict[tuple, list[JobItem]] = defaultdict(list)
    for item in items:
        key = (item.template_code, item.category, item.urgency, item.correlation_id)
        groups[key].append(item)
    try:
        with transaction.atomic():
            for (template_code, category, urgency, correlation_id), group in groups.items():
                _submit_group(
                    submitted,
                    group,
                    template_code=template_code,
                    category=category,
                    urgency=urgency,
                    correlation_id=correlation_id,
                    client=client,
                    by=by,
                    source=source,
                )
            if dry_run:
                raise _DryRun
    except _DryRun:
        submitted.accepted = dict.fromkeys(submitted.accepted, 0)
    return submitted


def _submit_group(
    submitted: Submitted,
    group: list[JobItem],
    *,
    template_code: str,
    category: str | None,
    urgency: str,
    correlation_id: str,
    client: str,
    by,
    source: str,
) -> None:
    remaining = list(group)
    # The intake lists every bad item at once, so a second call normally succeeds; a third
    # covers a concurrent change (a template published meanwhile).
    for _ in range(3):
        if not remaining:
            return
        try:
            with transaction.atomic():
                ids = intake.communications_request_bulk(
                    template_code=template_code,
                    items=[
                        {
                            "customer": i.customer_id,
                            "data": i.data,
                            "idempotency_key": i.idempotency_key,
                        }
                        for i in remaining
                    ],
                    client=client,
                    by=by,
                    source=source,
                    category=category,
                    urgency=urgency,
                    correlation_id=correlation_id,
                )
                _channel_overrides_set(remaining, ids)
        except intake.BulkIntakeError as exc:
            bad = {p["index"]: p["errors"] for p in exc.errors}
            for position, errors in bad.items():
                submitted.refused[remaining[position].index] = [_item_error(e) for e in errors]
            remaining = [item for position, item in enumerate(remaining) if position not in bad]
            continue
        except IntakeError as exc:
            for item in remaining:
                submitted.refused[item.index] = [{"field": exc.field, "message": str(exc)}]
            return
        for item, pk in zip(remaining, ids, strict=True):
            submitted.accepted[item.index] = pk
        return
    for item in remaining:
        submitted.refused[item.index] = [{"field": "", "message": "could not be accepted; retry"}]


def _item_error(error: dict) -> dict:
    """The intake names data fields relative to the data; an item names them under `data`."""
    if error.get("field") == "customer" and error.get("message") == "unknown customer":
        return error
    name = str(error.get("field") or "")
    return {"field": f"data.{name}" if name else "data", "message": error["message"]}


def _channel_overrides_set(items: list[JobItem], ids: list[int]) -> None:
    """The batch intake takes no channel; set it on the communications it just made (same
    transaction, before their composition is enqueued at commit)."""
    by_channel: dict[str, list[int]] = defaultdict(list)
    for item, pk in zip(items, ids, strict=True):
        if item.channel:
            by_channel[item.channel].append(pk)
    for channel, pks in by_channel.items():
        Communication.objects.filter(
            pk__any=pks, state=CommState.RECEIVED, channel_override=""
        ).update(channel_override=channel)


def customers_resolve(refs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(source_system, external_ref) → customer id, for the ones that exist."""
    by_system: dict[str, set[str]] = defaultdict(set)
    for system, ref in refs:
        by_system[system].add(ref)
    found: dict[tuple[str, str], int] = {}
    for system, wanted in by_system.items():
        for pk, ref in Customer.objects.filter(
            source_system=system, external_ref__any=list(wanted)
        ).values_list("pk", "external_ref"):
            found[(system, ref)] = pk
    return found


def unknown_customer(ref: str) -> list[dict]:
    return [{"field": "customer", "message": f"There is no customer {ref!r}."}]


# --- an API batch: validated and sent in one request ----------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """A batch item as the API gives it (shape already checked)."""

    index: int
    customer_ref: str
    source_system: str
    template_code: str
    data: dict
    idempotency_key: str | None
    category: str | None
    urgency: str
    channel: str
    correlation_id: str


@transaction.atomic
def send_job_batch_submit(
    *, items: Sequence[BatchItem], refused: dict[int, list[dict]], client: str, by
) -> tuple[SendJob, Submitted]:
    """Accept the good items of an API batch as one job, `sending` on return; `refused` are the
    items whose shape was already refused (index → errors)."""
    now = timezone.now()
    job = SendJob.objects.create(
        source=JobSource.API_BATCH,
        client=client,
        created_by=by if getattr(by, "pk", None) else None,
        total=len(items) + len(refused),
    )
    customers = customers_resolve({(i.source_system, i.customer_ref) for i in items})
    submitted = Submitted(refused=dict(refused))
    to_submit = []
    for item in items:
        customer_id = customers.get((item.source_system, item.customer_ref))
        if customer_id is None:
            submitted.refused[item.index] = unknown_customer(item.customer_ref)
            continue
        to_submit.append(
            JobItem(
                index=item.index,
                customer_id=customer_id,
                template_code=item.template_code,
                data=item.data,
                idempotency_key=item.idempotency_key,
                category=item.category,
                urgency=item.urgency,
                channel=item.channel,
                correlation_id=item.correlation_id,
            )
        )
    result = job_items_submit(items=to_submit, client=client, by=by, source="api")
    submitted.accepted = result.accepted
    submitted.refused.update(result.refused)
    by_index = {i.index: i for i in items}
    # COPY, not bulk_create: a thousand rows in a few milliseconds (see rows.insert_rows).
    rows.insert_rows(
        SendJobItem,
        [
            SendJobItem(
                job=job,
                index=index,
                customer_ref=by_index[index].customer_ref if index in by_index else "",
                source_system=by_index[index].source_system if index in by_index else "default",
                template_code=by_index[index].template_code if index in by_index else "",
                idempotency_key=by_index[index].idempotency_key if index in by_index else None,
                communication_id=submitted.accepted.get(index),
                errors=submitted.refused.get(index, []),
            )
            for index in sorted({*submitted.accepted, *submitted.refused})
        ],
    )
    job.refused = len(submitted.refused)
    job.validated()
    job.start(at=now)
    if not submitted.accepted:
        job.complete(at=now)  # nothing to wait for
    job.save()
    audit.record(
        actor=by,
        action="send_job.submitted",
        subject=job,
        after={"source": job.source, "accepted": len(submitted.accepted), "refused": job.refused},
    )
    return job, submitted


# --- a job from rows (a CSV file, the send_job command): checked first, sent later ----------


@dataclass(frozen=True)
class Row:
    """A parsed row: its number in the file, the customer, its data, or what is wrong with it."""

    index: int
    customer_ref: str
    source_system: str = "default"
    data: dict = field(default_factory=dict)
    idempotency_key: str | None = None
    errors: tuple[dict, ...] = ()


def _row_key(job: SendJob, row: Row) -> str:
    # The same row sent twice (a task run again) makes one communication.
    return row.idempotency_key or f"send-job-{job.pk}-row-{row.index}"


@transaction.atomic
def send_job_prepare(
    *, template_code: str, rows: Sequence[Row], source: str, client: str, by, file_name: str = ""
) -> SendJob:
    """Check every row as the intake would, create nothing but the job: `ready` with each row
    accepted (data kept until sent) or refused with its errors."""
    template = Template.objects.filter(code=template_code).first()
    if template is None:
        raise JobError(f"There is no template {template_code!r}.")
    job = SendJob.objects.create(
        source=source,
        template=template,
        client=client,
        created_by=by if getattr(by, "pk", None) else None,
        file_name=file_name[:255],
        total=len(rows),
    )
    customers = customers_resolve({(r.source_system, r.customer_ref) for r in rows})
    refused: dict[int, list[dict]] = {r.index: list(r.errors) for r in rows if r.errors}
    to_check = []
    for row in rows:
        if row.errors:
            continue
        customer_id = customers.get((row.source_system, row.customer_ref))
        if customer_id is None:
            refused[row.index] = unknown_customer(row.customer_ref)
            continue
        to_check.append(
            JobItem(
                index=row.index,
                customer_id=customer_id,
                template_code=template_code,
                data=row.data,
                idempotency_key=_row_key(job, row),
            )
        )
    checked = job_items_submit(items=to_check, client=client, by=by, source="api", dry_run=True)
    refused.update(checked.refused)
    SendJobItem.objects.bulk_create(
        [
            SendJobItem(
                job=job,
                index=row.index,
                customer_ref=row.customer_ref,
                source_system=row.source_system,
                template_code=template_code,
                data=row.data if row.index not in refused else {},
                idempotency_key=_row_key(job, row),
                errors=refused.get(row.index, []),
            )
            for row in rows
        ],
        batch_size=1000,
    )
    job.refused = len(refused)
    job.validated()
    job.save()
    audit.record(
        actor=by,
        action="send_job.prepared",
        subject=job,
        after={"template": template_code, "rows": job.total, "refused": job.refused},
    )
    return job


@transaction.atomic
def send_job_start(*, job: SendJob, by, at: datetime | None = None) -> SendJob:
    """Send a ready job's accepted rows now, or at `at` (scheduled)."""
    locked = SendJob.objects.select_for_update().get(pk=job.pk)
    if locked.state != JobState.READY:
        raise JobError(f"A job that is {locked.state} cannot be sent.")
    if locked.accepted == 0:
        raise JobError("Every row was refused: there is nothing to send.")
    now = timezone.now()
    if at is not None and at > now:
        locked.schedule(at=at)
        action = "send_job.scheduled"
    else:
        locked.start(at=now)
        action = "send_job.started"
    locked.save()
    audit.record(
        actor=by,
        action=action,
        subject=locked,
        after={"send_at": locked.send_at.isoformat() if locked.send_at else None},
    )
    if locked.state == JobState.SENDING:
        enqueue("notifications.jobs.tasks.send_job_run", locked.pk)
    return locked


def send_job_run(job_id: int) -> int:
    """The task: start a due scheduled job, then hand its unsent rows to the intake in chunks.
    Safe to run twice (each row's idempotency key makes one communication); stops at a cancel.
    Returns how many rows it handed over."""
    handed = 0
    while True:
        with transaction.atomic():
            job = SendJob.objects.select_for_update().filter(pk=job_id).first()
            if job is None:
                return handed
            now = timezone.now()
            if job.state == JobState.SCHEDULED and job.send_at and job.send_at <= now:
                job.start(at=now)
                job.save()
                audit.record(actor=None, action="send_job.started", subject=job)
            if job.state != JobState.SENDING:
                return handed
            rows = list(
                SendJobItem.objects.filter(job=job, communication__isnull=True, errors=[])
                .select_related(None)
                .order_by("index")[:SUBMIT_CHUNK]
            )
            if not rows:
                break
            handed += _rows_submit(job, rows)
            SendJob.objects.filter(pk=job.pk).update(updated_at=now)
    send_job_settle(job_id=job_id)
    return handed


def _rows_submit(job: SendJob, rows: list[SendJobItem]) -> int:
    customers = customers_resolve({(r.source_system, r.customer_ref) for r in rows})
    items = []
    lost: list[SendJobItem] = []
    for row in rows:
        customer_id = customers.get((row.source_system, row.customer_ref))
        if customer_id is None:
            row.errors = unknown_customer(row.customer_ref)
            lost.append(row)
            continue
        items.append(
            JobItem(
                index=row.index,
                customer_id=customer_id,
                template_code=row.template_code,
                data=row.data,
                idempotency_key=row.idempotency_key,
            )
        )
    result = job_items_submit(items=items, client=job.client, by=job.created_by, source="api")
    for row in rows:
        if row.index in result.accepted:
            row.communication_id = result.accepted[row.index]
            row.data = {}  # the communication holds it now
        elif row.index in result.refused:
            # Valid when checked, refused now (the template changed meanwhile): say so.
            row.errors = result.refused[row.index]
            lost.append(row)
    SendJobItem.objects.bulk_update(rows, ["communication", "data", "errors"], batch_size=1000)
    if lost:
        SendJob.objects.filter(pk=job.pk).update(refused=job.refused + len(lost))
        job.refused += len(lost)
    return len(result.accepted)


@transaction.atomic
def send_job_cancel(*, job: SendJob, by, reason: str) -> SendJob:
    """Stop a job: rows not handed over are never sent, and its communications not yet being
    dispatched are cancelled. What a provider already has cannot be called back."""
    locked = SendJob.objects.select_for_update().get(pk=job.pk)
    if not can_proceed(locked.cancel):
        raise JobError(f"A job that is {locked.state} can no longer be cancelled.")
    locked.cancel(reason=reason, at=timezone.now())
    locked.save()
    cancelled = 0
    for communication in Communication.objects.filter(
        pk__in=SendJobItem.objects.filter(job=locked, communication__isnull=False).values(
            "communication_id"
        ),
        state__in=[CommState.RECEIVED, CommState.COMPOSED, CommState.AWAITING_APPROVAL],
    ).only("pk"):
        try:
            services.communication_cancel(
                communication=communication, by=by, reason=f"send job {locked.pk}: {reason}"
            )
            cancelled += 1
        except IntakeError:
            continue  # it moved on meanwhile (composing, dispatching): it will be sent
    audit.record(
        actor=by,
        action="send_job.cancelled",
        subject=locked,
        after={"reason": reason, "communications_cancelled": cancelled},
    )
    return locked


def send_job_settle(*, job_id: int) -> bool:
    """Complete a sending job whose rows are all handed over and whose communications all
    reached an end state. True if it completed now."""
    job = SendJob.objects.filter(pk=job_id, state=JobState.SENDING).first()
    if job is None:
        return False
    items = SendJobItem.objects.filter(job=job, errors=[])
    if items.filter(communication__isnull=True).exists():
        return False
    if items.exclude(communication__state__in=SETTLED_STATES).exists():
        return False
    with transaction.atomic():
        locked = SendJob.objects.select_for_update().get(pk=job_id)
        if locked.state != JobState.SENDING:
            return False
        locked.complete(at=timezone.now())
        locked.save()
        audit.record(actor=None, action="send_job.completed", subject=locked)
    return True


def send_jobs_due_run() -> dict[str, Any]:
    """The periodic task: start scheduled jobs that are due, resume sending jobs whose task
    died (rows left, untouched for RESUME_AFTER), and complete the finished ones."""
    now = timezone.now()
    due = list(
        SendJob.objects.filter(state=JobState.SCHEDULED, send_at__lte=now).values_list(
            "pk", flat=True
        )
    )
    stalled = list(
        SendJob.objects.filter(
            state=JobState.SENDING,
            updated_at__lt=now - RESUME_AFTER,
            items__communication__isnull=True,
            items__errors=[],
        )
        .distinct()
        .values_list("pk", flat=True)
    )
    for pk in [*due, *stalled]:
        enqueue("notifications.jobs.tasks.send_job_run", pk)
    completed = 0
    for pk in SendJob.objects.filter(state=JobState.SENDING).values_list("pk", flat=True):
        completed += send_job_settle(job_id=pk)
    return {"started": len(due), "resumed": len(stalled), "completed": completed}

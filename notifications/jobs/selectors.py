"""Reads for send jobs: progress for the API and the progress bar, lists for the screens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from notifications.jobs.services import SETTLED_STATES
from notifications.models import JobState, SendJob, SendJobItem
from notifications.progress import PER_KIND, Work


def send_job_list() -> QuerySet[SendJob]:
    return SendJob.objects.select_related("template", "created_by").order_by("-id")


def send_job_for_client(*, pk: int, client: str) -> SendJob | None:
    """A job is its client's: another client's id reads as absent."""
    return SendJob.objects.select_related("template").filter(pk=pk, client=client).first()


def send_job_items(job: SendJob) -> QuerySet[SendJobItem]:
    return SendJobItem.objects.filter(job=job).select_related("communication")


def send_job_refused_items(job: SendJob) -> QuerySet[SendJobItem]:
    return SendJobItem.objects.filter(job=job).exclude(errors=[]).order_by("index")


def send_job_progress(job: SendJob) -> dict:
    """Counts per communication state, rows still to hand over, rate and ETA.

    `done` counts communications that will not move because of the job any more (sent, failed,
    cancelled…); the rate is done per second since the job started; the ETA assumes it holds.
    """
    return send_jobs_progress([job])[job.pk]


def send_jobs_progress(jobs: list[SendJob]) -> dict[int, dict]:
    """`send_job_progress` of each job, in two queries however many jobs (a list's page)."""
    ids = [job.pk for job in jobs]
    counts: dict[int, dict[str, int]] = {pk: {} for pk in ids}
    for row in (
        SendJobItem.objects.filter(job_id__in=ids, communication__isnull=False)
        .values("job_id", "communication__state")
        .annotate(n=Count("id"))
        .order_by()
    ):
        counts[row["job_id"]][row["communication__state"]] = row["n"]
    waiting = dict(
        SendJobItem.objects.filter(job_id__in=ids, communication__isnull=True, errors=[])
        .values("job_id")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("job_id", "n")
    )
    return {job.pk: _progress(job, counts[job.pk], waiting.get(job.pk, 0)) for job in jobs}


def _progress(job: SendJob, counts: dict[str, int], waiting: int) -> dict:
    accepted = job.total - job.refused
    done = sum(n for state, n in counts.items() if state in SETTLED_STATES)
    if job.state == JobState.CANCELLED:
        # Rows never handed over and communications cancelled are all the job will do.
        done = accepted
    end = job.finished_at or timezone.now()
    elapsed = (end - job.started_at).total_seconds() if job.started_at else 0.0
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = max(0, accepted - done)
    eta = None
    if job.state == JobState.SENDING and rate > 0:
        eta = round(remaining / rate, 1)
    return {
        "total": job.total,
        "accepted": accepted,
        "refused": job.refused,
        "waiting": waiting,
        "by_state": dict(sorted(counts.items())),
        "done": done,
        "percent": 100 if accepted == 0 else min(100, round(100 * done / accepted)),
        "rate_per_s": round(rate, 1),
        "eta_s": eta,
    }


def send_jobs_at_work(*, since: datetime) -> Iterator[Work]:
    """The dashboard's progress source: jobs sending, and those finished since `since`."""
    finished = (JobState.COMPLETED, JobState.CANCELLED)
    jobs = SendJob.objects.filter(
        Q(state=JobState.SENDING) | Q(state__in=finished, finished_at__gte=since)
    ).order_by("-id")[:PER_KIND]
    for job in jobs:
        progress = send_job_progress(job)
        yield Work(
            kind="send_job",
            key=f"send_job:{job.pk}",
            label=f"Send job {job.pk}" + (f" ({job.file_name})" if job.file_name else ""),
            state=job.state,
            done=progress["done"],
            total=progress["accepted"],
            finished=job.state in finished,
            url=reverse("jobs-detail", args=[job.pk]),
            permissions=("notifications.view_sendjob",),
            started_at=job.started_at,
        )

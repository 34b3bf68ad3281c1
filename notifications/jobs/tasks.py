"""Send job tasks: ids in, safe to run twice."""

from __future__ import annotations

from ccm.tasks import register_schedule
from notifications.jobs import services


def send_job_run(job_id: int) -> int:
    return services.send_job_run(job_id)


def send_jobs_due() -> dict:
    return services.send_jobs_due_run()


def register_schedules() -> None:
    register_schedule("notifications.send_jobs_due", "notifications.jobs.tasks.send_jobs_due", 1)

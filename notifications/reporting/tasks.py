"""Reporting's background work: the nightly rollup and scheduled reports (thin, safe to rerun)."""

from __future__ import annotations

from datetime import timedelta

from ccm.tasks import Sweep, register_schedule, register_sweep


def rollups_nightly() -> dict[str, int]:
    from notifications.reporting.rollups import rollups_refresh

    return rollups_refresh()


def reports_due() -> int:
    from notifications.reporting.reports import reports_due as queue_due

    return queue_due()


def report_run_execute(run_id: int) -> str:
    from notifications.reporting.reports import report_run_execute as execute

    return execute(run_id)


def register_schedules() -> None:
    # Nightly, after midnight local time, when the day before is complete.
    register_schedule(
        "notifications.rollups_nightly",
        "notifications.reporting.tasks.rollups_nightly",
        "15 0 * * *",
    )
    register_schedule("notifications.reports_due", "notifications.reporting.tasks.reports_due", 1)
    # A queued run whose attempt is due and that no queued task carries: a retry whose delay
    # has passed, or a first attempt whose task was lost between commit and enqueue.
    register_sweep(
        Sweep(
            name="reporting.report_runs_due",
            queryset=_report_runs_due,
            task="notifications.reporting.tasks.report_run_execute",
            older_than=timedelta(0),
            timestamp_field="next_attempt_at",
            limit=50,
        )
    )


def _report_runs_due():
    from notifications.reporting.reports import report_runs_due

    return report_runs_due()

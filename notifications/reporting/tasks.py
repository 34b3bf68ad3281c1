"""Reporting's background work: the nightly rollup and scheduled reports (thin, safe to rerun)."""

from __future__ import annotations

from ccm.tasks import register_schedule


def rollups_nightly() -> dict[str, int]:
    from notifications.reporting.rollups import rollups_refresh

    return rollups_refresh()


def register_schedules() -> None:
    # Nightly, after midnight local time, when the day before is complete.
    register_schedule(
        "notifications.rollups_nightly",
        "notifications.reporting.tasks.rollups_nightly",
        "15 0 * * *",
    )

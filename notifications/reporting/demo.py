"""Demo data: a daily production report, emailed (to the console in `make run`) at 18:00, and a
weekly campaign-outcome report on Mondays."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from notifications.reporting.models import ReportDefinition, ReportRun
from notifications.reporting.reports import report_definition_save, report_run_request
from notifications.reporting.rollups import rollups_refresh

DEMO_REPORT = "Daily production report"
DEMO_CAMPAIGN_REPORT = "Weekly campaign outcomes"


def seed_reports() -> None:
    ops = get_user_model().objects.get(username="ops")
    # The seeded communications are today's; the dashboard's 30 days and today's report need
    # their rollups (the nightly task keeps them from now on).
    rollups_refresh(days=30)
    definition = ReportDefinition.objects.filter(name=DEMO_REPORT).first()
    if definition is None:
        definition = report_definition_save(
            definition=ReportDefinition(
                name=DEMO_REPORT,
                kind="production",
                period="today",
                recipients=["operations@northwind.example", "head-of-ops@northwind.example"],
                schedule="0 18 * * *",
                time_zone="Europe/London",
            ),
            by=ops,
        )
    if not ReportDefinition.objects.filter(name=DEMO_CAMPAIGN_REPORT).exists():
        report_definition_save(
            definition=ReportDefinition(
                name=DEMO_CAMPAIGN_REPORT,
                kind="campaign_outcome",
                period="last_7_days",
                recipients=["head-of-ops@northwind.example"],
                schedule="0 8 * * 1",
                time_zone="Europe/London",
            ),
            by=ops,
        )
    if not ReportRun.objects.filter(definition=definition).exists():
        # One run now, so the demo shows a produced, archived and emailed report once the task
        # cluster runs (`make run`).
        report_run_request(definition=definition, by=ops, trigger="manual")

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from notifications.reporting.rollups import rollups_refresh


class Command(BaseCommand):
    help = (
        "Recompute the daily rollups (dashboard, reports, /api/v1/stats): the trailing days that "
        "may still change, or the last N days with --days N (a backfill)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="Recompute the last N days")

    def handle(self, *args, days: int | None, **options):
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1")
        written = rollups_refresh(days=days)
        for day, rows in sorted(written.items()):
            self.stdout.write(f"{day}: {rows} rows")
        self.stdout.write(self.style.SUCCESS(f"Recomputed {len(written)} days."))

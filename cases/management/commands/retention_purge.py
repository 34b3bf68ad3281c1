from __future__ import annotations

from django.core.management.base import BaseCommand

from cases.retention import retention_purge_run


class Command(BaseCommand):
    help = (
        "Purge documents (file and data snapshot) past their category's retention "
        "(CCM_RETENTION_DAYS), except those under a legal hold; each is recorded in the audit log."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="List, delete nothing.")
        parser.add_argument("--limit", type=int, default=1000)

    def handle(self, *args, dry_run: bool, limit: int, **options):
        purged = retention_purge_run(dry_run=dry_run, limit=limit)
        verb = "would purge" if dry_run else "purged"
        for item in purged:
            self.stdout.write(
                f"{verb} document {item.document} ({item.category}, created {item.created_at}, "
                f"sha256 {item.sha256})"
            )
        self.stdout.write(f"{len(purged)} documents {'would be purged' if dry_run else 'purged'}.")

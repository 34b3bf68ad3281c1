from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ccm.audit import verify_chain


class Command(BaseCommand):
    help = "Walk the audit hash chain; exit 1 at the first broken row."

    def handle(self, *args, **options):
        report = verify_chain()
        if not report.ok:
            raise CommandError(
                f"audit chain broken at event {report.broken_id}: {report.reason} "
                f"({report.count} events verified before it)",
                returncode=1,
            )
        self.stdout.write(f"audit chain ok: {report.count} events")

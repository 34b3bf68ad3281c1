from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ccm.audit import verify_chain
from ccm.audit_checkpoints import anchor_from_file, verify_against_checkpoint


class Command(BaseCommand):
    help = (
        "Walk the audit hash chain and check it against the latest signed checkpoint (or one "
        "an auditor kept, with --against); exit 1 if a row was changed, removed or the chain "
        "lost events the checkpoint covers."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--against",
            type=Path,
            help="A file of exported checkpoints (JSON lines); its last line is checked",
        )

    def handle(self, *args, against: Path | None = None, **options):
        report = verify_chain()
        if not report.ok:
            raise CommandError(
                f"audit chain broken at event {report.broken_id}: {report.reason} "
                f"({report.count} events verified before it)",
                returncode=1,
            )
        anchor = None
        if against is not None:
            try:
                anchor = anchor_from_file(against)
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read the checkpoint: {exc}", returncode=2) from exc
        checked = verify_against_checkpoint(anchor)
        if not checked.ok:
            raise CommandError(
                f"audit chain {'; '.join(checked.problems)} ({report.count} events in the chain)",
                returncode=1,
            )
        self.stdout.write(f"audit chain ok: {report.count} events")
        if checked.anchor is None:
            self.stderr.write(
                "no signed checkpoint yet: lost events at the end of the chain would not show "
                "(run `manage.py audit_checkpoint`)"
            )
        else:
            self.stdout.write(
                f"matches {checked.anchor.label}: {checked.anchor.count} events up to event "
                f"{checked.anchor.head_id}, signed {checked.anchor.created_at}"
            )

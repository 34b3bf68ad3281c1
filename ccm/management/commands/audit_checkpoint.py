from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ccm.audit_checkpoints import audit_checkpoint_create, checkpoint_export, checkpoint_line
from ccm.models import AuditCheckpoint


class Command(BaseCommand):
    help = (
        "Sign a checkpoint of the audit chain's head now (the queue does it every "
        "AUDIT_CHECKPOINT_MINUTES) and print it; --export FILE also appends it to FILE as a "
        "JSON line for the auditor to keep."
    )

    def add_arguments(self, parser):
        parser.add_argument("--export", type=Path, help="Append the checkpoint to this file")

    def handle(self, *args, export: Path | None = None, **options):
        checkpoint = audit_checkpoint_create()
        if checkpoint is None:
            # The head has not moved: the latest checkpoint still describes it.
            checkpoint = AuditCheckpoint.objects.order_by("-id").first()
        if checkpoint is None:  # pragma: no cover - audit_checkpoint_create always writes one
            raise CommandError("no checkpoint could be written")
        if export is not None:
            try:
                checkpoint_export(checkpoint=checkpoint, path=export)
            except OSError as exc:
                raise CommandError(f"cannot write {export}: {exc}") from exc
        self.stdout.write(checkpoint_line(checkpoint))

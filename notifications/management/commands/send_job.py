"""`manage.py send_job FILE.csv --template CODE [--at ISO] [--dry-run] [--skip-bad]`.

The back-office's "send a file" for operators who script: every row is checked first; bad rows
are printed (`row N: field: message`) and, unless --skip-bad, nothing is sent and the command
exits with status 2. The CSV format is the back-office's (see notifications/jobs/csv_rows.py).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from documents import selectors as document_selectors
from notifications.jobs import csv_rows, selectors, services
from notifications.models import JobSource

EXIT_BAD_ROWS = 2


class _DryRun(Exception):
    pass


class Command(BaseCommand):
    help = "Send a published template to every customer of a CSV file, as one send job."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path, help="CSV: customer_ref, then data columns")
        parser.add_argument("--template", required=True, help="The template's code")
        parser.add_argument("--at", help="Send at this time (ISO 8601, with its offset)")
        parser.add_argument(
            "--dry-run", action="store_true", help="Check every row; create and send nothing"
        )
        parser.add_argument(
            "--skip-bad", action="store_true", help="Send the good rows even if some are bad"
        )
        parser.add_argument("--as", dest="username", help="The user the job is recorded for")

    def handle(self, *args, file: Path, template: str, at, dry_run, skip_bad, username, **_):
        when = self._when(at)
        by = None
        if username:
            by = get_user_model().objects.filter(username=username).first()
            if by is None:
                raise CommandError(f"There is no user {username!r}.")
        version = document_selectors.version_for_sending(code=template)
        if version is None:
            raise CommandError(f"Template {template!r} does not exist or has no published version.")
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}") from exc
        try:
            rows = csv_rows.rows_read(content, schema=version.content.get("schema", {}))
        except csv_rows.CsvInvalid as exc:
            raise CommandError(str(exc)) from exc
        client = f"user:{by.pk}" if by else "command"
        try:
            with transaction.atomic():
                job = services.send_job_prepare(
                    template_code=template,
                    rows=rows,
                    source=JobSource.COMMAND,
                    client=client,
                    by=by,
                    file_name=file.name,
                )
                bad = list(selectors.send_job_refused_items(job))
                for item in bad:
                    for error in item.errors:
                        where = f"{error['field']}: " if error["field"] else ""
                        self.stderr.write(f"row {item.index}: {where}{error['message']}")
                counts = f"{job.total} rows, {job.accepted} good, {job.refused} bad"
                if dry_run or (bad and not skip_bad):
                    self.stdout.write(f"checked {file.name}: {counts}")
                    raise _DryRun
                self.stdout.write(f"job {job.pk}: {counts}")
                if job.accepted:
                    job = services.send_job_start(job=job, by=by, at=when)
                    self.stdout.write(
                        f"job {job.pk} {job.state}"
                        + (f" for {job.send_at.isoformat()}" if job.send_at else "")
                    )
        except _DryRun:
            self.stdout.write("nothing was created or sent" + (" (dry run)" if dry_run else ""))
        except services.JobError as exc:
            raise CommandError(str(exc)) from exc
        if bad and not skip_bad:
            raise CommandError(
                f"{len(bad)} bad rows: fix them, or send the others with --skip-bad.",
                returncode=EXIT_BAD_ROWS,
            )

    @staticmethod
    def _when(at: str | None) -> datetime | None:
        if not at:
            return None
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise CommandError(f"--at {at!r} is not an ISO 8601 time.") from None
        if timezone.is_naive(when):
            raise CommandError("--at needs an offset (e.g. 2026-05-01T09:00+01:00).")
        return when

"""`manage.py campaign_evidence_verify PACK.zip`: is this evidence pack what CCM issued?

Checks every file against the manifest's SHA-256 (nothing changed, added or missing) and the
manifest's signature under the audit signing key (or a former one, AUDIT_SIGNING_KEYS_OLD).
Prints `ok` or each problem; exits 1 when the pack does not verify.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from notifications.campaigns.evidence import evidence_verify


class Command(BaseCommand):
    help = "Verify a campaign's evidence pack: file hashes and the manifest's signature."

    def add_arguments(self, parser) -> None:
        parser.add_argument("pack", type=Path, help="The evidence pack (ZIP) to check")

    def handle(self, *args, **options) -> None:
        path: Path = options["pack"]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        check = evidence_verify(path.read_bytes())
        for problem in check.problems:
            self.stdout.write(f"{path}: {problem}")
        if not check.ok:
            raise CommandError(f"{path}: does not verify ({len(check.problems)} problems)")
        self.stdout.write(f"{path}: ok")

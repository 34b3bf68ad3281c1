from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from documents.services import templates_export


class Command(BaseCommand):
    help = "Write templates in the folder format that templates_import reads."

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path)
        parser.add_argument("--code", action="append", dest="codes", help="Only this template")
        parser.add_argument(
            "--latest", action="store_true", help="The latest version, not the published one"
        )

    def handle(self, *args, folder: Path, codes, latest: bool, **options):
        written = templates_export(folder=folder, codes=codes, latest=latest)
        for code in written:
            self.stdout.write(f"{code}: written to {folder / code}")
        if not written:
            self.stderr.write("Nothing to export (no matching published versions).")

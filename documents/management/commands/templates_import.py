from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from documents.services import templates_import


class Command(BaseCommand):
    help = (
        "Import template folders kept in git: a new draft version for each template whose "
        "content changed, nothing for unchanged ones."
    )

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path, help="A folder holding one folder per template")
        parser.add_argument(
            "--as", dest="username", required=True, help="The template author importing"
        )

    def handle(self, *args, folder: Path, username: str, **options):
        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}")
        results = templates_import(folder=folder, by=user)
        for result in results:
            line = f"{result.code}: {result.outcome}"
            if result.version is not None:
                line += f" (v{result.version})"
            if result.reason:
                line += f" — {result.reason}"
            self.stdout.write(line)
        invalid = [r for r in results if r.outcome == "invalid"]
        if invalid:
            raise CommandError(f"{len(invalid)} template folder(s) could not be imported")

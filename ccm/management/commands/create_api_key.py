from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ccm.api.auth import SCOPES, UnknownScope, api_key_create
from ccm.models import ApiKey


class Command(BaseCommand):
    help = "Issue an API key for an integrator. The key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A unique name for the integration, e.g. core-banking")
        parser.add_argument(
            "--scopes",
            default="",
            help=f"Comma-separated scopes. Known: {', '.join(sorted(SCOPES))}",
        )
        parser.add_argument(
            "--source-systems",
            default="",
            help="Comma-separated customer source systems whose communications and cases the "
            "key may also see (by default it sees only what it created)",
        )

    def handle(self, *args, name: str, scopes: str, source_systems: str = "", **options):
        wanted = [s.strip() for s in scopes.split(",") if s.strip()]
        if not wanted:
            raise CommandError(f"Give --scopes, some of: {', '.join(sorted(SCOPES))}")
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"An API key named {name!r} exists already; pick another name.")
        try:
            issued = api_key_create(
                name=name,
                scopes=wanted,
                source_systems=[s.strip() for s in source_systems.split(",") if s.strip()],
            )
        except UnknownScope as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"API key {name!r} created with scopes {', '.join(issued.api_key.scopes)}. "
            "Store it now: it is not shown again."
        )
        self.stdout.write(issued.key)

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from ccm.demo import DEMO_PASSWORD, DEMO_USERS, seed_all


class Command(BaseCommand):
    help = "Load the demo users and data (idempotent). Refused when DEBUG is off."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("seed_demo loads demo logins; it never runs with DEBUG off.")
        with transaction.atomic():
            seed_all()
        self.stdout.write(f"Demo data loaded. Logins (password for all: {DEMO_PASSWORD}):")
        for username, _role, label in DEMO_USERS:
            self.stdout.write(f"  {username:<11} {label}")

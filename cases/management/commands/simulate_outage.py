"""Simulate an outage on the demo network: its meters trip, the incident notifies the customers
under the feeder, then (unless --no-resolve) the meters clear and the customers get the
restoration. Run `make run` (or a qcluster) to let the queued notices go out.

    manage.py simulate_outage [--no-resolve]
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cases.incidents import demo
from notifications.customers.assets.models import Asset


class Command(BaseCommand):
    help = "Send a demo outage (and its resolution) through the events intake."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--no-resolve", action="store_true")

    def handle(self, *args, **options) -> None:
        if not Asset.objects.filter(code=demo.FEEDER).exists():
            raise CommandError("No demo network: run `manage.py seed_demo` first.")
        results = demo.simulate_outage(resolve=not options["no_resolve"])
        references = sorted({r.incident for r in results if r.incident})
        self.stdout.write(
            f"{len(results)} events sent; incident(s): {', '.join(references) or 'none'}. "
            "See /incidents/."
        )

"""Load the asset tree and service points from CSV files (header row; all or nothing per file):

    manage.py import_assets --assets assets.csv --service-points service_points.csv

assets.csv: code,kind,parent,name — service_points.csv: code,customer,asset,address,postcode
(customer: the customer's external reference)."""

from __future__ import annotations

import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from notifications.customers.assets import services


class Command(BaseCommand):
    help = "Import assets and service points from CSV files."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--assets", type=Path)
        parser.add_argument("--service-points", type=Path)

    def handle(self, *args, **options) -> None:
        if not options["assets"] and not options["service_points"]:
            raise CommandError("Give --assets and/or --service-points.")
        for name, service in (
            ("assets", services.assets_upsert),
            ("service_points", services.service_points_upsert),
        ):
            path = options[name]
            if not path:
                continue
            with path.open(newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
            try:
                result = service(items=rows, by=None)
            except services.UpsertError as exc:
                lines = [f"row {e['index'] + 2}: {e['field']}: {e['message']}" for e in exc.errors]
                raise CommandError(f"{path}: {exc}\n" + "\n".join(lines[:50])) from exc
            self.stdout.write(f"{path}: {result['created']} created, {result['updated']} updated")

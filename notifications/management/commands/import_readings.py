"""Load meter readings from a Green Button (ESPI) XML file or a CSV file:

    manage.py import_readings usage.xml --meter E-0001        # Green Button: one usage point
    manage.py import_readings readings.csv                    # meter,start,value[,quality]

Readings go through the same intake as the API (idempotent per meter and interval, corrections
kept), in calls of 25,000; a bad row refuses its call with the row and field named."""

from __future__ import annotations

import itertools
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from notifications.statements import imports, readings


class Command(BaseCommand):
    help = "Import meter readings from Green Button XML or CSV."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--meter", help="Green Button: the serial of the file's meter")
        parser.add_argument("--format", choices=["greenbutton", "csv"])

    def handle(self, *args, **options) -> None:
        path: Path = options["path"]
        kind = options["format"] or ("greenbutton" if path.suffix.lower() == ".xml" else "csv")
        try:
            if kind == "greenbutton":
                if not options["meter"]:
                    raise CommandError("A Green Button file needs --meter SERIAL.")
                rows = imports.greenbutton_rows(path.read_bytes(), meter=options["meter"])
            else:
                rows = imports.csv_rows(path.read_text(encoding="utf-8-sig"))
            totals = readings.IngestResult()
            offset = 0
            while chunk := list(itertools.islice(rows, readings.MAX_READINGS)):
                try:
                    result = readings.readings_ingest(rows=chunk)
                except readings.ReadingsRefused as exc:
                    # CSV rows are numbered as a spreadsheet shows them (the header is row 1).
                    first = offset + (2 if kind == "csv" else 1)
                    lines = [
                        f"row {e['row'] + first}: {e['field']}: {e['message']}"
                        for e in exc.errors[:50]
                    ]
                    raise CommandError(f"{path}: {exc}\n" + "\n".join(lines)) from exc
                offset += len(chunk)
                for name in ("received", "inserted", "corrected", "unchanged"):
                    setattr(totals, name, getattr(totals, name) + getattr(result, name))
        except imports.ImportRefused as exc:
            raise CommandError(f"{path}: {exc}") from exc
        self.stdout.write(
            f"{path}: {totals.received} readings, {totals.inserted} new, "
            f"{totals.corrected} corrected, {totals.unchanged} unchanged"
        )

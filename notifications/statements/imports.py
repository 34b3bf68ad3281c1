"""Reading files: Green Button (ESPI) XML and a simple CSV, turned into the rows
`readings.readings_ingest` takes.

Green Button: an Atom feed whose entries hold a ReadingType (unit of measure, power-of-ten
multiplier) and IntervalBlocks of IntervalReadings (start in epoch seconds, duration, value,
ReadingQuality). One file is one usage point, so the meter is named by the caller. Values in Wh
are converted to kWh; ESPI quality codes map to CCM's (8, 9, 11, 12, 15: estimated; 7,
manually edited: customer-read; the rest: actual)."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

ESPI = "{http://naesb.org/espi}"
UOM_WH, UOM_M3 = "72", "42"
ESTIMATED_CODES = {"8", "9", "11", "12", "15"}
CUSTOMER_CODES = {"7"}


class ImportRefused(ValueError):
    pass


def _quality(code: str | None) -> str:
    if code in ESTIMATED_CODES:
        return "estimated"
    if code in CUSTOMER_CODES:
        return "customer"
    return "actual"


def greenbutton_rows(data: bytes, *, meter: str) -> Iterator[dict]:
    """The interval readings of a Green Button file, for `meter`."""
    head = data[:2048].lower()
    if b"<!doctype" in head or b"<!entity" in data.lower():
        raise ImportRefused("Green Button files have no DOCTYPE or entities; refused.")
    try:
        # DOCTYPEs and entities are refused above, so expat expands nothing.
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as exc:
        raise ImportRefused(f"not XML: {exc}") from exc
    reading_type = root.find(f".//{ESPI}ReadingType")
    power, scale = 0, Decimal(1)
    if reading_type is not None:
        power = int(reading_type.findtext(f"{ESPI}powerOfTenMultiplier") or 0)
        if (reading_type.findtext(f"{ESPI}uom") or UOM_WH) == UOM_WH:
            scale = Decimal("0.001")  # Wh → kWh
    multiplier = Decimal(10) ** power * scale
    blocks = root.findall(f".//{ESPI}IntervalBlock")
    if not blocks:
        raise ImportRefused("no IntervalBlock in the file")
    for block in blocks:
        for reading in block.findall(f"{ESPI}IntervalReading"):
            start = reading.findtext(f"{ESPI}timePeriod/{ESPI}start")
            raw = reading.findtext(f"{ESPI}value")
            if start is None or raw is None:
                raise ImportRefused("an IntervalReading without timePeriod/start or value")
            moment = datetime.fromtimestamp(int(start), tz=UTC)
            value = (Decimal(raw) * multiplier).quantize(Decimal("0.001"))
            yield {
                "meter": meter,
                "start": moment.isoformat(),
                "value": str(value),
                "quality": _quality(reading.findtext(f"{ESPI}ReadingQuality/{ESPI}quality")),
            }


def csv_rows(text: str) -> Iterator[dict]:
    """meter,start,value[,quality] with a header row."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"meter", "start", "value"} - set(reader.fieldnames or [])
    if missing:
        raise ImportRefused(f"the header row needs {', '.join(sorted(missing))}")
    for row in reader:
        yield {
            "meter": row["meter"],
            "start": row["start"],
            "value": row["value"],
            "quality": row.get("quality") or "actual",
        }

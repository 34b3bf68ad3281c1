"""Reading intake: one bulk, idempotent write used by the API and the file imports alike.

A reading is identified by its meter and the start of its interval. Sending the same reading
again changes nothing; sending another value for an interval replaces it and keeps the earlier
value as a `ReadingCorrection` (the later reading wins, the earlier is kept for audit). A call is
all or nothing: one bad row refuses the call with every row and field at fault.

On PostgreSQL the rows are COPied into a temporary table and merged with two statements, which
is what lets intake take tens of thousands of readings a second."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from notifications.statements.models import (
    Meter,
    MeterKind,
    Quality,
    Reading,
    ReadingCorrection,
)

# A call's body must stay under DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): ~75 bytes a reading.
MAX_READINGS = 25_000
NULL = "\\N"  # COPY's text format for a missing value
# The largest value a reading may hold (the column: 14 digits, 3 after the point).
VALUE_LIMIT = Decimal("99999999999.999")


@dataclass
class ReadingsRefused(Exception):
    """Some rows are invalid; nothing was stored. `errors`: [{"row", "field", "message"}]."""

    errors: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.errors)} reading(s) are invalid; nothing was stored."


@dataclass
class IngestResult:
    received: int = 0
    inserted: int = 0
    corrected: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "inserted": self.inserted,
            "corrected": self.corrected,
            "unchanged": self.unchanged,
        }


def parse_start(value: Any) -> datetime:
    """An ISO 8601 time with its offset ("2026-01-01T00:30:00Z"); a naive time is refused
    because half an hour either side of a clock change is a different interval."""
    if not isinstance(value, str):
        raise ValueError("an ISO 8601 time with an offset, e.g. 2026-01-01T00:30:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time; e.g. 2026-01-01T00:30:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset; add Z or +01:00")
    return moment


def parse_value(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError("a number, e.g. 0.235")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not number.is_finite() or abs(number) > VALUE_LIMIT:
        raise ValueError(f"{value!r} is out of range")
    if number.as_tuple().exponent < -3:  # type: ignore[operator]
        raise ValueError(f"{value!r} has more than 3 decimal places")
    return number


QUALITIES = frozenset(Quality.values)
INTERVAL = MeterKind.INTERVAL.value


def _parsed(row: Any, meters: Mapping[str, tuple[int, int, str]]):
    """The common case, a well-formed row, at a few microseconds; None sends the row to
    `_row_errors`, which says what is wrong (or finds nothing and parses it)."""
    try:
        meter_id, interval, kind = meters[row["meter"]]
        start = datetime.fromisoformat(row["start"])
        raw = row["value"]
        quality = row.get("quality") or "actual"
        value = Decimal(raw) if type(raw) is str else None
    except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
        return None
    if (
        value is None
        or start.tzinfo is None
        or quality not in QUALITIES
        or not value.is_finite()
        or value.as_tuple().exponent < -3  # type: ignore[operator]
        or abs(value) > VALUE_LIMIT
    ):
        return None
    if kind == INTERVAL:
        utc = start.astimezone(UTC)
        if utc.second or utc.microsecond or (utc.hour * 60 + utc.minute) % min(interval, 1440):
            return None
    return meter_id, start, value, quality


def _row_errors(
    index: int, row: Any, meters: Mapping[str, tuple[int, int, str]]
) -> tuple[list[dict], tuple[int, datetime, Decimal | None, str] | None]:
    if not isinstance(row, Mapping):
        return [{"row": index, "field": "", "message": "an object"}], None
    errors = []

    def fault(name: str, message: str) -> None:
        errors.append({"row": index, "field": name, "message": message})

    serial = str(row.get("meter") or "").strip()
    meter = meters.get(serial)
    if meter is None:
        fault("meter", f"no meter {serial!r}" if serial else "the meter's serial")
    start = value = None
    try:
        start = parse_start(row.get("start"))
    except ValueError as exc:
        fault("start", str(exc))
    quality = str(row.get("quality") or Quality.ACTUAL)
    if quality not in QUALITIES:
        fault("quality", f"one of {', '.join(Quality.values)}")
    try:
        value = parse_value(row.get("value"))
    except ValueError as exc:
        fault("value", str(exc))
    else:
        if value is None and quality != Quality.MISSING:
            fault("value", "a number (leave it empty only with quality 'missing')")
    if meter is not None and start is not None:
        _meter_id, interval, kind = meter
        utc = start.astimezone(UTC)
        minutes = utc.hour * 60 + utc.minute
        aligned = utc.second == 0 and utc.microsecond == 0 and minutes % min(interval, 1440) == 0
        if kind == MeterKind.INTERVAL and not aligned:
            fault("start", f"not the start of a {interval}-minute interval of meter {serial}")
    if errors or meter is None or start is None:
        return errors, None
    return [], (meter[0], start, value, quality)


def readings_ingest(*, rows: Sequence[Any]) -> IngestResult:
    """Store readings: [{"meter": serial, "start": ISO time, "value": number, "quality"}].
    Raises ReadingsRefused naming every bad row and field; stores nothing then."""
    if len(rows) > MAX_READINGS:
        raise ReadingsRefused(
            [{"row": None, "field": "readings", "message": f"at most {MAX_READINGS} a call"}]
        )
    serials = {str(r.get("meter") or "").strip() for r in rows if isinstance(r, Mapping)}
    meters = {
        serial: (pk, interval, kind)
        for serial, pk, interval, kind in Meter.objects.filter(serial__in=serials).values_list(
            "serial", "pk", "interval_minutes", "kind"
        )
    }
    errors: list[dict] = []
    # Within one call the last row for an interval wins.
    clean: dict[tuple[int, datetime], tuple[int, datetime, Decimal | None, str]] = {}
    for index, row in enumerate(rows):
        parsed = _parsed(row, meters)
        if parsed is None:
            row_errors, parsed = _row_errors(index, row, meters)
            if parsed is None:
                errors.extend(row_errors)
                continue
        clean[(parsed[0], parsed[1])] = parsed
    if errors:
        raise ReadingsRefused(errors)
    result = IngestResult(received=len(rows))
    if clean:
        _merge(list(clean.values()), result)
    return result


def _merge(rows: list[tuple[int, datetime, Decimal | None, str]], result: IngestResult) -> None:
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            corrected, written = _merge_postgresql(rows, now)
        else:
            corrected, written = _merge_orm(rows, now)
    result.corrected = corrected
    result.inserted = written - corrected
    result.unchanged = len(rows) - written


def _copy_text(rows: Iterable[tuple[int, datetime, Decimal | None, str]]) -> str:
    out = io.StringIO()
    for meter_id, start, value, quality in rows:
        shown = NULL if value is None else str(value)
        out.write(f"{meter_id}\t{start.isoformat()}\t{shown}\t{quality}\n")
    return out.getvalue()


def _merge_postgresql(rows, now: datetime) -> tuple[int, int]:
    reading, correction = Reading._meta.db_table, ReadingCorrection._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS readings_in "
            "(meter_id bigint, start timestamptz, value numeric(14,3), quality varchar(10)) "
            "ON COMMIT DELETE ROWS"
        )
        # Empty already after a commit; not when two intakes share one outer transaction.
        cursor.execute("TRUNCATE readings_in")
        raw = cursor.cursor  # psycopg 3: COPY from a text buffer
        with raw.copy("COPY readings_in (meter_id, start, value, quality) FROM STDIN") as copy:
            copy.write(_copy_text(rows))
        # The earlier value of each interval that changes is kept before it is replaced.
        cursor.execute(
            # Table names come from the models, never from input.
            f"INSERT INTO {correction} (reading_id, value, quality, received_at, replaced_at) "  # noqa: S608
            f"SELECT r.id, r.value, r.quality, r.received_at, %s FROM {reading} r "
            "JOIN readings_in i ON r.meter_id = i.meter_id AND r.start = i.start "
            "WHERE r.value IS DISTINCT FROM i.value OR r.quality <> i.quality",
            [now],
        )
        corrected = cursor.rowcount
        cursor.execute(
            f"INSERT INTO {reading} AS r (meter_id, start, value, quality, received_at) "  # noqa: S608
            "SELECT meter_id, start, value, quality, %s FROM readings_in "
            "ON CONFLICT (meter_id, start) DO UPDATE SET value = EXCLUDED.value, "
            "quality = EXCLUDED.quality, received_at = EXCLUDED.received_at "
            "WHERE r.value IS DISTINCT FROM EXCLUDED.value OR r.quality <> EXCLUDED.quality",
            [now],
        )
        written = cursor.rowcount
    return corrected, written


def _merge_orm(rows, now: datetime) -> tuple[int, int]:
    """The same merge for SQLite (the embedded setup), through the ORM."""
    wanted = {(m, s): (v, q) for m, s, v, q in rows}
    existing = {
        (r.meter_id, r.start): r
        for r in Reading.objects.filter(
            meter_id__in={m for m, _ in wanted}, start__in={s for _, s in wanted}
        )
    }
    new, changed, corrections = [], [], []
    for (meter_id, start), (value, quality) in wanted.items():
        current = existing.get((meter_id, start))
        if current is None:
            new.append(
                Reading(
                    meter_id=meter_id, start=start, value=value, quality=quality, received_at=now
                )
            )
        elif current.value != value or current.quality != quality:
            corrections.append(
                ReadingCorrection(
                    reading=current,
                    value=current.value,
                    quality=current.quality,
                    received_at=current.received_at,
                    replaced_at=now,
                )
            )
            current.value, current.quality, current.received_at = value, quality, now
            changed.append(current)
    Reading.objects.bulk_create(new, batch_size=2000)
    ReadingCorrection.objects.bulk_create(corrections, batch_size=2000)
    Reading.objects.bulk_update(changed, ["value", "quality", "received_at"], batch_size=2000)
    return len(changed), len(new) + len(changed)

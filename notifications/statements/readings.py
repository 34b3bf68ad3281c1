"""Reading intake: one bulk, idempotent write used by the API and the file imports alike.

A reading is identified by its meter and the start of its interval. Sending the same reading
again changes nothing; sending another value for an interval replaces it and keeps the earlier
value as a `ReadingCorrection` (the later reading wins, the earlier is kept for audit). A call is
all or nothing: one bad row refuses the call with every row and field at fault.

Three shapes of the same call: objects (`{"readings": [{"meter", "start", "value", "quality"}]}`),
arrays (`{"rows": [[meter, start, value, quality], …]}`) and CSV (a header row naming the
columns). On PostgreSQL every shape takes the same set-based path, with no Python work per row
beyond writing CSV: the rows are COPied as text into a temporary table, checked and typed by one
INSERT … SELECT (a pattern for the time and the number, the meter joined, the interval's
alignment computed), and merged by one statement that keeps corrections. Only when that check
does not pass every row does the call go through the per-row checks below, which name each row
and field at fault (or, for a form PostgreSQL's patterns do not take but Python does, store it):
a refused call costs more, a good one costs a COPY and two statements."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from notifications.statements import imports
from notifications.statements.models import (
    Meter,
    MeterKind,
    Quality,
    Reading,
    ReadingCorrection,
)

# Readings a call: a call's fixed cost (authentication, throttle, temporary tables) is spread
# over many rows; 100,000 rows are ~5 MB as CSV (JSON bodies stop earlier, at Django's request
# size limit).
MAX_READINGS = 100_000
COLUMNS = ("meter", "start", "value", "quality")
REQUIRED_COLUMNS = frozenset(COLUMNS[:3])
NULL = "\\N"  # COPY's text format for a missing value
# The largest value a reading may hold (the column: 14 digits, 3 after the point).
VALUE_LIMIT = Decimal("99999999999.999")


@dataclass
class ReadingsRefused(Exception):
    """Some rows are invalid; nothing was stored. `errors`: [{"row", "field", "message"}]."""

    errors: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.errors)} reading(s) are invalid; nothing was stored."


class TooManyReadings(Exception):
    def __str__(self) -> str:
        return f"At most {MAX_READINGS:,} readings a call; send them in smaller calls."


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
        raise TooManyReadings()
    if connection.vendor == "postgresql":
        try:
            table = [
                (r.get("meter"), r.get("start"), r.get("value"), r.get("quality")) for r in rows
            ]
        except AttributeError:  # a row that is not an object: the checks below say which
            pass
        else:
            done = _ingest_copy(lambda copy: copy.write(_csv(table)), COLUMNS, len(rows))
            if done is not None:
                return done
    return _ingest_checked(rows)


def readings_ingest_rows(*, rows: Sequence[Any]) -> IngestResult:
    """Store readings given as arrays: [[meter, start, value, quality?], …]."""
    if len(rows) > MAX_READINGS:
        raise TooManyReadings()
    if connection.vendor == "postgresql" and all(type(r) is list and len(r) == 4 for r in rows):
        done = _ingest_copy(lambda copy: copy.write(_csv(rows)), COLUMNS, len(rows))
        if done is not None:
            return done
    objects: list[Any] = []
    errors = []
    for index, row in enumerate(rows):
        if isinstance(row, list) and 3 <= len(row) <= 4:
            objects.append(dict(zip(COLUMNS, row, strict=False)))
        else:
            objects.append({})
            errors.append(
                {"row": index, "field": "", "message": "an array [meter, start, value, quality]"}
            )
    if errors:
        raise ReadingsRefused(errors)
    return _ingest_checked(objects)


def readings_ingest_csv(*, data: bytes) -> IngestResult:
    """Store readings given as CSV: a header row naming meter, start, value (and quality, in
    any order), one reading a row. Row numbers in errors count data rows from 0."""
    end = data.find(b"\n")
    first = data[: end if end >= 0 else len(data)].decode("utf-8", "replace").strip()
    try:
        header = next(csv.reader([first]), [])
    except csv.Error:
        header = []
    if (
        connection.vendor == "postgresql"
        and REQUIRED_COLUMNS <= set(header) <= set(COLUMNS)
        and len(set(header)) == len(header)
        and b"\\." not in data  # COPY's end-of-data marker: left to the checks below
    ):
        done = _ingest_copy(lambda copy: copy.write(data), tuple(header), None, csv_header=True)
        if done is not None:
            return done
    try:
        rows = list(imports.csv_rows(data.decode("utf-8-sig")))
    except UnicodeDecodeError:
        raise ReadingsRefused(
            [{"row": None, "field": "", "message": "the body is not UTF-8 text"}]
        ) from None
    except (imports.ImportRefused, csv.Error) as exc:
        raise ReadingsRefused([{"row": None, "field": "", "message": str(exc)}]) from None
    if len(rows) > MAX_READINGS:
        raise TooManyReadings()
    return _ingest_checked(rows)


def _csv(rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _ingest_checked(rows: Sequence[Any]) -> IngestResult:
    """The per-row path: every fault named, or the rows merged."""
    serials = {str(r.get("meter") or "").strip() for r in rows if isinstance(r, Mapping)}
    # A NUL cannot be in a serial, nor be sent to PostgreSQL: such a row has "no meter".
    serials = {serial for serial in serials if "\x00" not in serial}
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


# The set-based check trusts PostgreSQL's parsers only where they agree with Python's. A time
# must have exactly the shape YYYY-MM-DDTHH:MM:SS then Z or ±HH:MM (digits where the digits go:
# with the length and the fixed characters, the non-digits left must be exactly those), an hour
# below 24 and a second below 60 (the database would take "24:00" or a leap second, Python
# refuses them). A value must read as a number with at most 3 decimals within VALUE_LIMIT
# (which leaves out NaN and Infinity). A row outside these, or one whose text the database
# does not parse, sends the call to the per-row checks, which decide.
START_SHAPE = (
    "((length(r.start) = 20 AND translate(r.start, '0123456789', '') = '--T::Z') "
    " OR (length(r.start) = 25 AND translate(r.start, '0123456789', '') IN ('--T::+:', '--T::-:') "
    "     AND substr(r.start, 23, 1) = ':')) "
    "AND substr(r.start, 5, 1) = '-' AND substr(r.start, 8, 1) = '-' "
    "AND substr(r.start, 11, 1) = 'T' AND substr(r.start, 14, 1) = ':' "
    "AND substr(r.start, 17, 1) = ':' "
    "AND substr(r.start, 12, 2) < '24' AND substr(r.start, 18, 2) < '60'"
)
TEMP_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS readings_raw (n bigint GENERATED ALWAYS AS IDENTITY, "
    "meter text, start text, value text, quality text) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS readings_in (n bigint, meter_id bigint, "
    "start timestamptz, value numeric(14,3), quality varchar(10)) ON COMMIT DELETE ROWS",
    # Empty already after a commit; not when two intakes share one outer transaction.
    "TRUNCATE readings_raw, readings_in",
)


def _checked_sql() -> str:
    """The rows of `readings_raw` that pass every check, typed: (n, meter_id, start, value,
    quality)."""
    meter = Meter._meta.db_table
    qualities = ", ".join(f"'{q}'" for q in Quality.values)
    # Names and choices come from the models, never from input. Three levels, each a fence
    # (OFFSET 0): the join with the meters alone (so that its estimate, from the rows'
    # statistics, makes it a hash join), then each text cast once (a time only in its checked
    # shape), then the checks.
    return (
        "SELECT n, meter_id, ts AS start, v AS value, q AS quality FROM ("  # noqa: S608
        "  SELECT j.n, j.meter_id, j.kind, j.interval_minutes, j.no_value, "
        "  CASE WHEN j.shaped THEN j.start::timestamptz END AS ts, j.value::numeric AS v, "
        "  coalesce(nullif(j.quality, ''), 'actual') AS q FROM ("
        "    SELECT r.n, r.start, r.value, r.quality, r.value IS NULL AS no_value, "
        f"    m.id AS meter_id, m.kind, m.interval_minutes, {START_SHAPE} AS shaped "
        f"    FROM readings_raw r JOIN {meter} m ON m.serial = trim(r.meter) OFFSET 0) j "
        "  OFFSET 0) t "
        f"WHERE ts IS NOT NULL AND q IN ({qualities}) "
        "AND (v IS NOT NULL OR (no_value AND q = 'missing')) "
        f"AND (v IS NULL OR (abs(v) <= {VALUE_LIMIT} AND scale(v) <= 3)) "
        # whole seconds (the shape has no fraction), exact in a double
        f"AND (kind <> '{INTERVAL}' OR (mod(date_part('epoch', ts)::bigint, 60) = 0 AND "
        "  mod((mod(date_part('epoch', ts)::bigint, 86400) + 86400) / 60, "
        "      least(interval_minutes, 1440)) = 0))"
    )


def _ingest_copy(
    write: Callable[[Any], None],
    columns: Sequence[str],
    expected: int | None,
    *,
    csv_header: bool = False,
) -> IngestResult | None:
    """COPY the rows as CSV text, then check, type and merge them in one statement; if fewer
    rows passed the checks than came, roll it back. None: some row did not pass (or the text
    did not parse); nothing was stored."""
    now = timezone.now()
    header = ", HEADER true" if csv_header else ""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            for statement in TEMP_TABLES:
                cursor.execute(statement)
            raw = cursor.cursor  # psycopg 3; its errors made Django's DatabaseError
            with (
                connection.wrap_database_errors,
                raw.copy(
                    f"COPY readings_raw ({', '.join(columns)}) FROM STDIN (FORMAT csv{header})"
                ) as copy,
            ):
                write(copy)
            received = raw.rowcount
            if received > MAX_READINGS:
                raise TooManyReadings()
            if expected is not None and received != expected:
                raise _NotClean()
            # The planner needs the rows' statistics to join the meters by hash rather than
            # look each row's meter up.
            cursor.execute("ANALYZE readings_raw")
            checked, corrected, written, distinct = _merge_from(cursor, now, _checked_sql())
            if checked != received:
                raise _NotClean()
    except (_NotClean, DatabaseError):
        return None
    return IngestResult(
        received=received,
        inserted=written - corrected,
        corrected=corrected,
        unchanged=distinct - written,
    )


class _NotClean(Exception):
    """Some row needs the per-row checks: roll the set-based attempt back."""


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
    for n, (meter_id, start, value, quality) in enumerate(rows):
        shown = NULL if value is None else str(value)
        out.write(f"{n}\t{meter_id}\t{start.isoformat()}\t{shown}\t{quality}\n")
    return out.getvalue()


def _merge_postgresql(rows, now: datetime) -> tuple[int, int]:
    with connection.cursor() as cursor:
        for statement in TEMP_TABLES:
            cursor.execute(statement)
        raw = cursor.cursor  # psycopg 3: COPY from a text buffer
        with raw.copy("COPY readings_in (n, meter_id, start, value, quality) FROM STDIN") as copy:
            copy.write(_copy_text(rows))
        _checked, corrected, written, _distinct = _merge_from(cursor, now, "readings_in")
    return corrected, written


def _merge_from(cursor, now: datetime, source: str) -> tuple[int, int, int, int]:
    """Merge the rows of `source` (a table or a query of n, meter_id, start, value, quality)
    into the readings in one statement: within the call the last row for an interval wins; an
    interval whose value or quality changes keeps its earlier value as a correction (every part
    of the statement sees the readings as they were before it). Returns (rows of `source`,
    corrected, written, distinct intervals)."""
    reading, correction = Reading._meta.db_table, ReadingCorrection._meta.db_table
    relation = source if source == "readings_in" else f"({source})"
    cursor.execute(
        # Table names and the source come from this module, never from input.
        f"WITH given AS MATERIALIZED (SELECT * FROM {relation} s), "  # noqa: S608
        "incoming AS ("
        "  SELECT DISTINCT ON (meter_id, start) meter_id, start, value, quality "
        "  FROM given ORDER BY meter_id, start, n DESC), "
        "kept AS ("
        f"  INSERT INTO {correction} (reading_id, value, quality, received_at, replaced_at) "
        f"  SELECT r.id, r.value, r.quality, r.received_at, %(now)s FROM {reading} r "
        "  JOIN incoming i ON r.meter_id = i.meter_id AND r.start = i.start "
        "  WHERE r.value IS DISTINCT FROM i.value OR r.quality <> i.quality RETURNING 1), "
        "written AS ("
        f"  INSERT INTO {reading} AS r (meter_id, start, value, quality, received_at) "
        "  SELECT meter_id, start, value, quality, %(now)s FROM incoming "
        "  ON CONFLICT (meter_id, start) DO UPDATE SET value = EXCLUDED.value, "
        "  quality = EXCLUDED.quality, received_at = EXCLUDED.received_at "
        "  WHERE r.value IS DISTINCT FROM EXCLUDED.value OR r.quality <> EXCLUDED.quality "
        "  RETURNING 1) "
        "SELECT (SELECT count(*) FROM given), (SELECT count(*) FROM kept), "
        "(SELECT count(*) FROM written), (SELECT count(*) FROM incoming)",
        {"now": now},
    )
    checked, corrected, written, distinct = cursor.fetchone()
    return checked, corrected, written, distinct


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

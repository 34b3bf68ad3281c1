"""Reading a send job's CSV file: one row per communication.

Columns: `customer_ref` (the customer's external reference, required), optional
`source_system` and `idempotency_key`, and the template's data, one column per field, nested
fields with dotted names (`customer.name`). A cell is converted to the type the template's JSON
Schema gives that field (integer, number, boolean, or JSON for arrays and objects); an empty
cell leaves the field out, so a required field left empty is reported as missing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from notifications.jobs.services import Row

CUSTOMER_COLUMN = "customer_ref"
RESERVED_COLUMNS = (CUSTOMER_COLUMN, "source_system", "idempotency_key")
MAX_ROWS = 50_000
MAX_BYTES = 20 * 1024 * 1024
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


class CsvInvalid(ValueError):
    """The file as a whole cannot be read (the message says how to fix it)."""


def _field_schema(schema: Mapping, path: list[str]) -> Mapping:
    for part in path:
        properties = schema.get("properties") if isinstance(schema, Mapping) else None
        schema = properties.get(part, {}) if isinstance(properties, Mapping) else {}
    return schema if isinstance(schema, Mapping) else {}


def _types(schema: Mapping) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _convert(raw: str, schema: Mapping) -> Any:
    """The cell as the schema's type; ValueError says what was expected."""
    types = _types(schema)
    text = raw.strip()
    if "integer" in types and text.lstrip("-").isdigit():
        return int(text)
    if "number" in types:
        try:
            number = float(text)
        except ValueError:
            if "string" not in types:
                raise ValueError(f"{raw!r} is not a number") from None
        else:
            return int(number) if number.is_integer() and "." not in text else number
    if "integer" in types and "string" not in types:
        raise ValueError(f"{raw!r} is not a whole number")
    if "boolean" in types:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        if "string" not in types:
            raise ValueError(f"{raw!r} is not yes or no")
    if ("array" in types or "object" in types) and "string" not in types:
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError(f"{raw!r} is not JSON (write arrays and objects as JSON)") from None
    return raw


def _place(data: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def cells_data(cells: Iterable[tuple[str, str]], *, schema: Mapping) -> tuple[dict, list[dict]]:
    """Template data from (column, cell) pairs: dotted columns nest, each cell converted to the
    type the schema gives its field, an empty cell left out. Also the cells' errors
    ({field, message}). Send jobs and campaigns read their CSV files through it."""
    data: dict = {}
    errors: list[dict] = []
    for name, raw in cells:
        if raw.strip() == "":
            continue
        path = name.split(".")
        try:
            _place(data, path, _convert(raw, _field_schema(schema, path)))
        except ValueError as exc:
            errors.append({"field": f"data.{name}", "message": str(exc)})
        except (AttributeError, TypeError):
            errors.append({"field": f"data.{name}", "message": "clashes with another column"})
    return data, errors


def rows_read(content: bytes, *, schema: Mapping) -> list[Row]:
    """Every row of the file, each parsed or with its errors. CsvInvalid if the file itself
    cannot be used."""
    if len(content) > MAX_BYTES:
        raise CsvInvalid(f"The file is larger than {MAX_BYTES // (1024 * 1024)} MB; split it.")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CsvInvalid("The file is not UTF-8 text: save it as “CSV UTF-8”.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CsvInvalid("The file is empty.") from None
    except csv.Error as exc:
        raise CsvInvalid(f"The file is not CSV: {exc}") from None
    if CUSTOMER_COLUMN not in header:
        raise CsvInvalid(
            f"The first row must name the columns, one of them {CUSTOMER_COLUMN!r} "
            "(the customer's reference)."
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise CsvInvalid(f"These columns appear twice: {', '.join(duplicated)}.")
    if "" in header:
        raise CsvInvalid(f"Column {header.index('') + 1} has no name in the first row.")
    data_columns = [(i, name, name.split(".")) for i, name in enumerate(header)]
    data_columns = [c for c in data_columns if c[1] not in RESERVED_COLUMNS]
    at = {name: i for i, name in enumerate(header)}
    rows: list[Row] = []
    try:
        for line in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in line):
                continue  # a blank line (often the last) is no row
            if len(rows) >= MAX_ROWS:
                raise CsvInvalid(f"The file has more than {MAX_ROWS:,} rows; split it.")
            rows.append(_row(number, line, header, at, data_columns, schema))
    except csv.Error as exc:
        raise CsvInvalid(f"Line {reader.line_num} is not valid CSV: {exc}") from None
    if not rows:
        raise CsvInvalid("The file has a header but no rows.")
    return rows


def _row(number: int, line: list[str], header, at, data_columns, schema) -> Row:
    errors: list[dict] = []
    if len(line) != len(header):
        errors.append(
            {"field": "", "message": f"has {len(line)} cells; the header names {len(header)}"}
        )
        line = (line + [""] * len(header))[: len(header)]

    def cell(name: str) -> str:
        return line[at[name]].strip() if name in at else ""

    customer_ref = cell(CUSTOMER_COLUMN)
    if not customer_ref:
        errors.append({"field": CUSTOMER_COLUMN, "message": "is empty"})
    data, cell_errors = cells_data(
        ((name, line[index]) for index, name, _ in data_columns), schema=schema
    )
    errors += cell_errors
    return Row(
        index=number,
        customer_ref=customer_ref,
        source_system=cell("source_system") or "default",
        data=data,
        idempotency_key=cell("idempotency_key") or None,
        errors=tuple(errors),
    )

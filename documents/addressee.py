"""Who a document is addressed to: the reserved `customer` namespace and identity fields.

The addressee's name, salutation, postal address, reference and language reach a template as
the system variable `customer`, filled from the customer record by the pipeline, never from
request data: whatever `customer` block a request carries is replaced. A template's schema can
also mark fields of the request data as naming the customer (`"x-ccm-identity": "reference"` on
an account number, `"name"` on a holder's name, `"address"` on a mailing address); a value there
that is not the addressee's own is refused at intake, because it means the data was made for
somebody else (and its amounts and dates are somebody else's too).

Pure functions, no Django: previews (documents) and the pipeline (notifications) share them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from documents.composition import FieldError

RESERVED = "customer"
IDENTITY_KEYWORD = "x-ccm-identity"
IDENTITY_KINDS = ("name", "address", "reference")

# Previews and proofs of data without a `customer` block are addressed to this sample customer
# (a sample data set's own `customer` block is its sample customer).
SAMPLE_CUSTOMER: dict[str, Any] = {
    "name": "Ms Sample Customer",
    "salutation": "Ms Customer",
    "address": ["1 Sample Street", "Leeds", "LS1 1AA"],
    "reference": "SAMPLE-0001",
    "language": "en",
}

_SEPARATORS_RE = re.compile(r"[\s,]+")


def with_addressee(data: Mapping[str, Any], addressee: Mapping[str, Any]) -> dict[str, Any]:
    """The composition context: the request data with the reserved namespace set to
    `addressee`, whatever the data said there."""
    return {**data, RESERVED: dict(addressee)}


def sample_addressee(data: Mapping[str, Any]) -> dict[str, Any]:
    """A preview's addressee: the data's own `customer` block over the sample customer."""
    given = data.get(RESERVED)
    if not isinstance(given, Mapping):
        return dict(SAMPLE_CUSTOMER)
    name = given.get("name", SAMPLE_CUSTOMER["name"])
    return {**SAMPLE_CUSTOMER, "name": name, "salutation": name, **given}


def identity_fields(schema: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted field path, identity kind) of every property the schema marks with
    `x-ccm-identity`, through nested object properties (not through $ref or arrays)."""
    if not isinstance(schema, Mapping):
        return
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for name, sub in properties.items():
        if not isinstance(sub, Mapping) or (not path and name == RESERVED):
            continue
        kind = sub.get(IDENTITY_KEYWORD)
        if isinstance(kind, str):
            yield ".".join((*path, name)), kind
        yield from identity_fields(sub, (*path, name))


def schema_problems(schema: Any) -> list[str]:
    """What is wrong with a schema's identity marks (for the bundle check)."""
    return [
        f"schema.json {field}: {IDENTITY_KEYWORD} must be one of {', '.join(IDENTITY_KINDS)}, "
        f"not {kind!r}"
        for field, kind in identity_fields(schema)
        if kind not in IDENTITY_KINDS
    ]


def normal_form(value: Any) -> str:
    """A name, reference or address (a string or its lines) as compared: case, commas and line
    breaks aside."""
    if isinstance(value, list | tuple):
        value = " ".join(str(v) for v in value)
    return _SEPARATORS_RE.sub(" ", str(value)).strip().casefold()


def _belongs(kind: str, value: Any, addressee: Mapping[str, Any]) -> bool:
    if kind == "name":
        # A holder's name may be written as the greeting has it ("Ms Hartley").
        return normal_form(value) in {
            normal_form(addressee.get("name", "")),
            normal_form(addressee.get("salutation", "")),
        }
    if kind == "address":
        return normal_form(value) == normal_form(addressee.get("address", []))
    return normal_form(value) == normal_form(addressee.get("reference", ""))


def identity_errors(
    schema: Any,
    data: Mapping[str, Any],
    addressee: Mapping[str, Any],
    *,
    fields: Iterable[tuple[str, str]] | None = None,
) -> list[FieldError]:
    """Every identity field of `data` whose value is not the addressee's own. `fields`: the
    schema's `identity_fields`, when the caller keeps them (a frozen version's schema)."""
    errors: list[FieldError] = []
    for field, kind in identity_fields(schema) if fields is None else fields:
        value: Any = data
        for part in field.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None or _belongs(kind, value, addressee):
            continue
        who = addressee.get("reference") or addressee.get("name")
        errors.append(
            FieldError(
                field=field,
                message=(
                    f"data.{field} does not belong to customer {who} "
                    f"(it is not the customer's {kind}); the data was made for someone else"
                ),
            )
        )
    return errors

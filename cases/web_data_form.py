"""A communication's data as form fields built from its template's JSON Schema, for operations
correcting a failed composition (cases/web_exceptions.py): a field per scalar property (text,
date, number, choice), a fieldset per object, a JSON box for anything else; what was typed
comes back typed, and a service's `{field, message}` errors land on their fields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from documents.addressee import RESERVED

# Filled by the pipeline at composition time, never by a person (notifications' portal link).
# Filled by the pipeline, never typed: the portal link, and the addressee (`customer.*`, from
# the customer record).
_PIPELINE_FIELDS = {"portal_url", RESERVED}


@dataclass
class DataField:
    """One editable value of the data, at a dotted path."""

    path: str
    label: str
    widget: str  # text | date | number | integer | boolean | select | json
    required: bool
    value: str = ""
    choices: list[str] = field(default_factory=list)
    enum: list[Any] = field(default_factory=list)  # the choices as the schema has them
    help: str = ""
    errors: list[str] = field(default_factory=list)
    is_group: bool = False

    @property
    def name(self) -> str:
        return f"data.{self.path}"

    @property
    def html_id(self) -> str:
        return "data-" + self.path.replace(".", "-")


@dataclass
class DataGroup:
    """An object of the data: a fieldset of its properties."""

    path: str
    label: str
    required: bool
    items: list[DataField | DataGroup] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    is_group: bool = True

    @property
    def html_id(self) -> str:
        return "data-" + self.path.replace(".", "-")


_MISSING = object()


def _widget(schema: Mapping) -> str:
    if "enum" in schema:
        return "select"
    kind = schema.get("type")
    if kind == "string":
        return "date" if schema.get("format") == "date" else "text"
    if kind in ("number", "integer", "boolean"):
        return str(kind)
    return "json"  # arrays, unions, anything else: edited as JSON


def _shown(widget: str, value: Any) -> str:
    if value is _MISSING or (value is None and widget != "json"):
        return ""
    if widget == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if widget == "boolean":
        return "true" if value is True else "false" if value is False else str(value)
    return str(value)


def _resolved(schema: Mapping, root: Mapping, depth: int = 0) -> Mapping:
    """`schema` with a local `$ref` ("#/$defs/customer") replaced by what it points to."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/") or depth > 10:
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        target = target.get(part, {}) if isinstance(target, Mapping) else {}
    if not isinstance(target, Mapping):
        return schema
    merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return _resolved(merged, root, depth + 1)


def data_fields(
    schema: Mapping, data: Any, *, path: str = "", root: Mapping | None = None
) -> list[DataField | DataGroup]:
    """The form of `data` as the schema describes it: a field per scalar property (text, date,
    number, choice), a group per object, a JSON box for anything else."""
    root = schema if root is None else root
    schema = _resolved(schema, root)
    items: list[DataField | DataGroup] = []
    required = set(schema.get("required", []))
    values = data if isinstance(data, Mapping) else {}
    for name, sub in (schema.get("properties") or {}).items():
        if not path and name in _PIPELINE_FIELDS:
            continue
        here = f"{path}.{name}" if path else name
        value = values.get(name, _MISSING)
        if not isinstance(sub, Mapping):
            continue
        sub = _resolved(sub, root)
        if sub.get("type") == "object" and sub.get("properties"):
            group = DataGroup(here, name, name in required)
            group.items = data_fields(sub, value, path=here, root=root)
            items.append(group)
            continue
        widget = _widget(sub)
        items.append(
            DataField(
                path=here,
                label=name,
                widget=widget,
                required=name in required,
                value=_shown(widget, value),
                choices=[str(c) for c in sub.get("enum", [])],
                enum=list(sub.get("enum", [])),
                help=str(sub.get("description", "")),
            )
        )
    return items


def _flat(items: list[DataField | DataGroup]) -> list[DataField | DataGroup]:
    out: list[DataField | DataGroup] = []
    for item in items:
        out.append(item)
        if isinstance(item, DataGroup):
            out += _flat(item.items)
    return out


def _parsed(item: DataField, raw: str) -> Any:
    """The typed value of one field, _MISSING when left empty; ValueError says what to fix."""
    raw = raw.strip()
    if raw == "":
        return _MISSING
    if item.widget in ("number", "integer"):
        try:
            number = Decimal(raw.replace(",", ""))
        except InvalidOperation as exc:
            raise ValueError(f"Enter a number, e.g. 12.50, not {raw!r}.") from exc
        if not number.is_finite():  # Decimal reads "NaN" and "Infinity"; JSON has neither
            raise ValueError(f"Enter a number, e.g. 12.50, not {raw!r}.")
        if item.widget == "integer":
            if number != number.to_integral_value():
                raise ValueError(f"Enter a whole number, not {raw}.")
            return int(number)
        return int(number) if number == number.to_integral_value() else float(number)
    if item.widget == "boolean":
        if raw not in ("true", "false"):
            raise ValueError("Choose yes or no.")
        return raw == "true"
    if item.widget == "select":
        for choice in item.enum:
            if str(choice) == raw:
                return choice
        raise ValueError(f"Choose one of: {', '.join(item.choices)}.")
    if item.widget == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from exc
    return raw


def data_from_post(
    schema: Mapping, original: Any, post: Mapping[str, str]
) -> tuple[dict, list[DataField | DataGroup], bool]:
    """The corrected data from the submitted form: the original data with every shown field
    replaced by what was typed (an emptied field is left out, so the schema names it missing).
    Returns the data, the fields as typed (with their parse errors) and whether all parsed."""
    data = json.loads(json.dumps(original)) if isinstance(original, Mapping) else {}
    items = data_fields(schema, {})
    ok = True
    for item in _flat(items):
        if isinstance(item, DataGroup):
            continue
        raw = post.get(item.name, "")
        item.value = raw
        try:
            value = _parsed(item, raw)
        except ValueError as exc:
            item.errors.append(str(exc))
            ok = False
            continue
        *parents, last = item.path.split(".")
        target = data
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        if value is _MISSING:
            target.pop(last, None)
        else:
            target[last] = value
    return data, items, ok


def readable_error(message: str) -> str:
    """A JSON Schema message in words a person acts on."""
    if message.endswith("is a required property"):
        return "Required: fill this in."
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def data_errors_attach(items: list[DataField | DataGroup], errors: list[Any]) -> list[str]:
    """Put each `{field, message}` error (a service's, with dotted paths) on the deepest shown
    field at or above its path; returns the messages no field shows."""
    flat = _flat(items)
    unplaced = []
    for error in errors:
        path = error["field"] if isinstance(error, Mapping) else error.field
        message = error["message"] if isinstance(error, Mapping) else error.message
        owner = max(
            (i for i in flat if path == i.path or path.startswith(i.path + ".")),
            key=lambda i: len(i.path),
            default=None,
        )
        text = readable_error(message)
        if owner is None:
            unplaced.append(f"{path or 'The data'}: {text}")
        elif owner.path != path:
            owner.errors.append(f"{path[len(owner.path) + 1 :]}: {text}")
        else:
            owner.errors.append(text)
    return unplaced

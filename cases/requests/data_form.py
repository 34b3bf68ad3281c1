"""The one form for template data, generated from a template version's JSON Schema; every
screen that takes letter data uses it: ad hoc correspondence, a case milestone's letter, the
correction of a communication whose composition failed, the acknowledgement of a new case.

Strings, dates, emails, numbers, integers, booleans and enums become inputs; nested objects
become fieldsets; arrays of plain values are one value per line, arrays of objects a JSON list.
Labels come from the schema's titles (else the property name, in words), help from its
descriptions; a property the schema does not require says "(optional)" and may stay empty. The
data is checked with the same `validate_data` as the API's intake, and each error is shown at
its field in words ("Required: fill this in.", never "'x' is a required property").

`initial` prefills the form from what CCM knows (the customer, the case, the data a
communication failed with); `base` is data the form starts from and keeps where it shows no
field (what the schema does not describe) or where nothing was posted for a field. What the
pipeline fills — the addressee (`customer.*`) and the portal link — is never asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django import forms

from cases.requests.forms import AccessibleForm
from documents.addressee import RESERVED, sample_addressee, with_addressee
from documents.composition import DataInvalid, validate_data

# Filled by the pipeline at composition time, never typed: the addressee and the portal link.
PIPELINE_FIELDS = {RESERVED, "portal_url"}


def readable_error(message: str) -> str:
    """A JSON Schema message in words a person acts on."""
    if message.endswith("is a required property"):
        return "Required: fill this in."
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


@dataclass
class Group:
    """A nested object: a fieldset with a legend, holding fields and groups."""

    path: str
    legend: str
    description: str = ""
    items: list[Any] = field(default_factory=list)  # field names and Groups

    @property
    def is_group(self) -> bool:
        return True


def _humanise(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def _resolve(schema: Mapping, node: Mapping) -> Mapping:
    """Follow local "$ref": "#/$defs/name" references (what the library's schemas use)."""
    seen = 0
    while "$ref" in node and seen < 20:
        ref = str(node["$ref"])
        if not ref.startswith("#/"):
            break
        target: Any = schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node


def _type(node: Mapping) -> str:
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind is None and "enum" in node:
        return "enum"
    if kind is None and "properties" in node:
        return "object"
    return str(kind or "string")


def _form_field(node: Mapping, *, label: str) -> tuple[forms.Field, str]:
    """A Django field for one schema node, and how its value becomes JSON."""
    help_text = str(node.get("description", ""))
    common: dict[str, Any] = {"label": label, "required": False, "help_text": help_text}
    kind = _type(node)
    if "enum" in node:
        choices = [("", "—")] + [(str(v), str(v)) for v in node["enum"]]
        choice = forms.ChoiceField(choices=choices, **common)
        choice.enum_values = {str(v): v for v in node["enum"]}  # type: ignore[attr-defined]
        return choice, "enum"
    if kind == "string":
        fmt = node.get("format")
        if fmt == "date":
            return forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), **common), "date"
        if fmt == "email":
            return forms.EmailField(**common), "text"
        max_length = node.get("maxLength")
        widget = forms.Textarea(attrs={"rows": 3}) if (max_length or 0) > 200 else None
        return forms.CharField(max_length=max_length, widget=widget, strip=True, **common), "text"
    if kind == "integer":
        return forms.IntegerField(**common), "int"
    if kind == "number":
        return forms.DecimalField(**common), "number"
    if kind == "boolean":
        return forms.BooleanField(**common), "bool"
    if kind == "array":
        items = node.get("items") or {}
        item_type = _type(items) if isinstance(items, Mapping) else "object"
        if item_type in ("string", "integer", "number") and "enum" not in items:
            common["help_text"] = " ".join(filter(None, [help_text, "One per line."]))
            return forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), **common), (
                f"lines:{item_type}"
            )
    common["help_text"] = " ".join(filter(None, [help_text, "As JSON."]))
    widget = forms.Textarea(attrs={"rows": 4, "spellcheck": "false"})
    return forms.CharField(widget=widget, **common), "raw_json"


def _layout(
    schema: Mapping, node: Mapping, prefix: str, fields: dict, kinds: dict, optional: bool
) -> list[Any]:
    items: list[Any] = []
    properties = node.get("properties") or {}
    # Stored schemas lose their key order; the required list keeps the author's, so required
    # properties come first in that order, then the others.
    required = [name for name in node.get("required", []) if name in properties]
    ordered = required + [name for name in properties if name not in required]
    for name in ordered:
        if not prefix and name in PIPELINE_FIELDS:
            continue  # the addressee comes from the customer record, not from a person
        child = _resolve(schema, properties[name])
        path = f"{prefix}.{name}" if prefix else name
        label = str(child.get("title") or _humanise(name))
        # Optional when this property, or an object holding it, is not required.
        is_optional = optional or name not in required
        if _type(child) == "object" and "properties" in child:
            legend = f"{label} (optional)" if name not in required else label
            items.append(
                Group(
                    path=path,
                    legend=legend,
                    description=str(child.get("description", "")),
                    items=_layout(schema, child, path, fields, kinds, is_optional),
                )
            )
            continue
        if name not in required:
            label = f"{label} (optional)"
        fields[path], kinds[path] = _form_field(child, label=label)
        items.append(path)
    return items


def _put(target: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value


def _drop(target: dict, path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.get(part)  # type: ignore[assignment]
        if not isinstance(target, dict):
            return
    target.pop(last, None)


def schema_initial(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """Form values from a JSON document (a sample, what the case supplies, the data a
    communication failed with): one per dotted path, lists of plain values one per line."""
    initial: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            initial |= schema_initial(value, path)
        elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            initial[path] = "\n".join(str(v) for v in value)
        elif isinstance(value, list | dict):
            initial[path] = json.dumps(value, indent=2, ensure_ascii=False)
        elif isinstance(value, bool):
            initial[path] = "on" if value else ""
        elif value is not None:
            initial[path] = value
    return initial


class SchemaForm(AccessibleForm):
    """A form for the JSON Schema given; `cleaned_data["data"]` holds the JSON document: `base`
    with every shown field replaced by what was typed (an emptied field is left out)."""

    def __init__(self, *args, schema: Mapping, base: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.schema = schema
        self.base = json.loads(json.dumps(base)) if isinstance(base, Mapping) else {}
        self.kinds: dict[str, str] = {}
        generated: dict[str, forms.Field] = {}
        self.layout = _layout(schema, _resolve(schema, schema), "", generated, self.kinds, False)
        self.fields.update(generated)

    @classmethod
    def prefilled(cls, *, schema: Mapping, data: Mapping, prefix: str | None = None) -> SchemaForm:
        """The form bound to `data` (what CCM knows), so what the schema finds missing or wrong
        in it is marked at its field before anyone types."""
        bound = {
            (f"{prefix}-{k}" if prefix else k): v
            for k, v in schema_initial(data).items()
            if str(k).split(".")[0] not in PIPELINE_FIELDS
        }
        return cls(bound, schema=schema, base=data, prefix=prefix)

    def _value(self, name: str, value: Any) -> Any:
        kind = self.kinds[name]
        if kind == "enum":
            return self.fields[name].enum_values[value]  # type: ignore[attr-defined]
        if kind == "date":
            return value.isoformat()
        if kind == "number":
            number = Decimal(value)
            return int(number) if number == number.to_integral_value() else float(number)
        if kind.startswith("lines:"):
            lines = [line.strip() for line in str(value).splitlines() if line.strip()]
            cast = {"integer": int, "number": float}.get(kind[6:], str)
            try:
                return [cast(line) for line in lines]
            except ValueError as exc:
                raise forms.ValidationError(f"Each line must be a {kind[6:]}.") from exc
        if kind == "raw_json":
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise forms.ValidationError(
                    f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
                ) from exc
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        data: dict[str, Any] = json.loads(json.dumps(self.base))
        for name in self.kinds:
            if name in self.errors:
                continue
            if self.add_prefix(name) not in self.data and self.kinds[name] != "bool":
                continue  # not sent at all (a client that posts only what it changes): base stands
            value = cleaned.get(name)
            if (value in (None, "") and self.kinds[name] != "bool") or (
                self.kinds[name] == "bool" and not value
            ):
                # Left empty: not in the data (an unticked box says nothing; the schema's
                # default applies).
                _drop(data, name)
                continue
            try:
                _put(data, name, self._value(name, value))
            except forms.ValidationError as exc:
                self.add_error(name, exc)
        # Checked even when a field failed already, so every missing field is shown at once; a
        # field that has its own error is not told again that it is missing.
        rejected = set(self.errors)
        try:
            # A schema that still declares `customer` sees a stand-in; the request is checked
            # with the real customer's variables when it is made.
            validate_data(self.schema, with_addressee(data, sample_addressee(data)))
        except DataInvalid as exc:
            for error in exc.errors:
                self.error_at(error.field, error.message, skip=rejected)
        cleaned["data"] = data
        return cleaned

    def error_at(
        self, path: str, message: str, *, skip: set[str] | frozenset = frozenset()
    ) -> None:
        """Show a schema (or a service's) error at its field in words, else at the nearest
        field above or below it, else above the form."""
        message = readable_error(message)
        candidates = [path] if path else []
        parts = path.split(".") if path else []
        candidates += [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        for candidate in candidates:
            if candidate in skip:
                return
            if candidate in self.fields:
                self.add_error(candidate, message)  # type: ignore[arg-type]
                return
        below = next((name for name in self.fields if name.startswith(f"{path}.")), None)
        if path and below is not None:
            self.add_error(below, f"{path}: {message}")  # type: ignore[arg-type]
            return
        self.add_error(None, f"{path}: {message}" if path else message)

    def errors_attach(self, errors: list[Any]) -> None:
        """Put a service's `{field, message}` errors (FieldError or dict) at their fields."""
        for error in errors:
            path = error["field"] if isinstance(error, Mapping) else error.field
            message = error["message"] if isinstance(error, Mapping) else error.message
            self.error_at(path or "", message)
        self.refresh_aria()

    def layout_items(self) -> list[Any]:
        """The layout with bound fields, for the template."""

        def bind(items: list[Any]) -> list[Any]:
            out: list[Any] = []
            for item in items:
                if isinstance(item, Group):
                    out.append(
                        {
                            "is_group": True,
                            "legend": item.legend,
                            "description": item.description,
                            "path": item.path,
                            "items": bind(item.items),
                        }
                    )
                else:
                    out.append({"is_group": False, "field": self[item]})
            return out

        return bind(self.layout)

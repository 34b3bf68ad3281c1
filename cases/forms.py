"""The agents' reprint and correspondence forms.

`SchemaForm` is generated from a template version's JSON Schema: strings, dates, emails,
numbers, integers, booleans and enums become inputs; nested objects become fieldsets; arrays of
plain values are one value per line, arrays of objects a JSON list. Labels come from the
schema's titles (else the property name), help from its descriptions. The data is then checked
with the same `validate_data` as the API's intake, and each error is shown at its field.

Every form here links its help and its errors to the input with aria-describedby and marks an
input in error with aria-invalid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django import forms

from cases.request_models import STATED_IDENTITY_CHECKS
from documents.addressee import RESERVED, sample_addressee, with_addressee
from documents.composition import DataInvalid, validate_data


class AccessibleForm(forms.Form):
    """Help and errors announced with their input."""

    def full_clean(self) -> None:
        super().full_clean()
        self.refresh_aria()

    def refresh_aria(self) -> None:
        """Point each input at its help and errors (again after a service added errors)."""
        for name, bound in self._bound_items():
            ids = []
            if bound.help_text:
                ids.append(f"{bound.auto_id}_helptext")
            if name in self.errors:
                ids.append(f"{bound.auto_id}_error")
                bound.field.widget.attrs["aria-invalid"] = "true"
            if ids:
                bound.field.widget.attrs["aria-describedby"] = " ".join(ids)

    def _bound_items(self):
        return [(name, self[name]) for name in self.fields]


# --- the reprint form ------------------------------------------------------------------------


class CustomerSearchForm(forms.Form):
    q = forms.CharField(
        label="Customer reference or name",
        max_length=200,
        help_text="A reference such as NW-2048-7731, or part of the name.",
    )


class ReprintForm(AccessibleForm):
    document = forms.TypedChoiceField(
        label="Document", coerce=int, help_text="The customer's archived documents, newest first."
    )
    reason = forms.CharField(
        label="Reason",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text="Why the customer needs a copy (lost in the post, for a mortgage application…).",
    )
    channel = forms.ChoiceField(label="Send by", widget=forms.RadioSelect)
    address = forms.CharField(
        label="Address",
        required=False,
        max_length=500,
        help_text="Leave empty for the customer's address on file. Another address needs a "
        "reviewer's release. Postal address lines are separated by “ / ”.",
    )
    identity_verification = forms.ChoiceField(
        label="How the caller's identity was verified",
        widget=forms.RadioSelect,
        choices=[(c.value, c.label) for c in STATED_IDENTITY_CHECKS],
    )
    identity_note = forms.CharField(
        label="Identity check details",
        required=False,
        max_length=500,
        help_text="Needed with “Other”: say how.",
    )

    def __init__(
        self, *args, documents: list[tuple[int, str]], channels: list[tuple[str, str]], **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.fields["document"].choices = [("", "Choose a document"), *documents]  # type: ignore[attr-defined]
        self.fields["channel"].choices = channels  # type: ignore[attr-defined]


class IdentityForm(AccessibleForm):
    identity_verification = ReprintForm.base_fields["identity_verification"]
    identity_note = ReprintForm.base_fields["identity_note"]


class TemplateChoiceForm(forms.Form):
    template = forms.ChoiceField(label="Letter template")

    def __init__(self, *args, templates: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [("", "Choose a template"), *templates]  # type: ignore[attr-defined]


# --- forms generated from a JSON Schema ------------------------------------------------------


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
    return forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), **common), "raw_json"


def _layout(schema: Mapping, node: Mapping, prefix: str, fields: dict, kinds: dict) -> list[Any]:
    items: list[Any] = []
    properties = node.get("properties") or {}
    # Stored schemas lose their key order; the required list keeps the author's, so required
    # properties come first in that order, then the others.
    required = [name for name in node.get("required", []) if name in properties]
    ordered = required + [name for name in properties if name not in required]
    for name in ordered:
        if not prefix and name == RESERVED:
            continue  # the addressee comes from the customer record, not from the agent
        child = properties[name]
        child = _resolve(schema, child)
        path = f"{prefix}.{name}" if prefix else name
        label = str(child.get("title") or _humanise(name))
        if _type(child) == "object" and "properties" in child:
            items.append(
                Group(
                    path=path,
                    legend=label,
                    description=str(child.get("description", "")),
                    items=_layout(schema, child, path, fields, kinds),
                )
            )
            continue
        fields[path], kinds[path] = _form_field(child, label=label)
        items.append(path)
    return items


def _put(target: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


class SchemaForm(AccessibleForm):
    """A form for the JSON Schema given; `cleaned_data["data"]` holds the JSON document."""

    def __init__(self, *args, schema: Mapping, **kwargs):
        super().__init__(*args, **kwargs)
        self.schema = schema
        self.kinds: dict[str, str] = {}
        generated: dict[str, forms.Field] = {}
        self.layout = _layout(schema, _resolve(schema, schema), "", generated, self.kinds)
        self.fields.update(generated)

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
            except ValueError as exc:
                raise forms.ValidationError(f"This is not valid JSON: {exc}") from exc
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        data: dict[str, Any] = {}
        for name in self.kinds:
            if name in self.errors:
                continue
            value = cleaned.get(name)
            if value in (None, "") and self.kinds[name] != "bool":
                continue
            if self.kinds[name] == "bool" and not value:
                continue  # an unticked box says nothing; the schema's default applies
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
                self._error_at(error.field, error.message, skip=rejected)
        cleaned["data"] = data
        return cleaned

    def _error_at(
        self, path: str, message: str, *, skip: set[str] | frozenset = frozenset()
    ) -> None:
        """Show a schema error at its field, else at the nearest field above or below it."""
        if message.endswith("is a required property"):
            message = "Required."
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


def schema_initial(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """Form initial values from a JSON document (a sample, or the customer's details)."""
    initial: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            initial |= schema_initial(value, path)
        elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            initial[path] = "\n".join(str(v) for v in value)
        else:
            initial[path] = value
    return initial

"""Forms of the agent and operations case screens (cases/web.py).

They check the shape of what a person typed; the rules (which move a case's state allows, what a
letter needs, where a communication may be resent) stay in the services, whose errors the views
put back on these forms' fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import PurePath
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from cases.models import Team
from ccm.roles import Role
from notifications.recovery import RESENDABLE_CHANNELS

# Who may take a team's cases: the role that works them.
TEAM_ROLES: dict[str, str] = {
    Team.CUSTOMER_RELATIONS: Role.SERVICE_AGENT,
    Team.DISPUTES: Role.SERVICE_AGENT,
    Team.OPERATIONS: Role.OPERATIONS,
}


def team_members(team: str):
    """Active users holding the role that works `team`'s cases, by username."""
    return (
        get_user_model()
        .objects.filter(is_active=True, groups__name=TEAM_ROLES.get(team, Role.SERVICE_AGENT))
        .distinct()
        .order_by("username")
    )


class AccessibleForm(forms.Form):
    """A field with an error says so to assistive technology: `aria-invalid`, and
    `aria-describedby` naming the error (and help) the templates render with those ids
    (templates/cases/_field.html)."""

    def add_error(self, field, error) -> None:
        super().add_error(field, error)
        for name in self.errors:
            if name not in self.fields:
                continue
            bound = self[name]
            described = [f"{bound.auto_id}_error"]
            if bound.help_text:
                described.append(f"{bound.auto_id}_helptext")
            bound.field.widget.attrs.update(
                {"aria-invalid": "true", "aria-describedby": " ".join(described)}
            )


class TeamMemberField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        name = obj.get_full_name()
        return f"{name} ({obj.get_username()})" if name else obj.get_username()


class AssignForm(AccessibleForm):
    assignee = TeamMemberField(
        queryset=get_user_model().objects.none(),
        label="Assign to",
        empty_label="Choose a person",
        error_messages={
            "required": "Choose who takes the case.",
            "invalid_choice": "Choose someone from the list: they must work this team's cases.",
        },
    )

    def __init__(self, *args, team: str, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["assignee"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = team_members(team)


class WaitForm(AccessibleForm):
    reason = forms.CharField(
        label="Waiting for",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="What the customer must send or do. The SLA clock stops until you resume.",
        error_messages={"required": "Say what the case is waiting for."},
    )


class ResolveForm(AccessibleForm):
    resolution = forms.CharField(
        label="Resolution",
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="How the case was resolved: the audit log and the next reader rely on it.",
        error_messages={"required": "Say how the case was resolved."},
    )


class ReopenForm(AccessibleForm):
    reason = forms.CharField(
        label="Why reopen",
        max_length=1000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class NoteForm(AccessibleForm):
    body = forms.CharField(
        label="Note",
        max_length=10_000,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "A note needs some text."},
    )


def _json_object(raw: str, *, what: str) -> dict:
    """`raw` as a JSON object ({} when blank), or a ValidationError that says where it broke."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from exc
    if not isinstance(value, dict):
        raise forms.ValidationError(f'{what} must be a JSON object: {{"field": value, …}}.')
    return value


class MilestoneReachForm(AccessibleForm):
    letter_data = forms.CharField(
        label="Letter data (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text='What the letter needs beyond the case, e.g. a final response\'s "decision" '
        'and "findings". Leave empty when the case supplies everything.',
    )

    def clean_letter_data(self) -> dict:
        return _json_object(self.cleaned_data["letter_data"], what="The letter data")


# --- attachments -----------------------------------------------------------------------------


def _is_text(content: bytes) -> bool:
    if b"\x00" in content:
        return False
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class FileType:
    content_type: str
    extensions: tuple[str, ...]
    label: str

    def matches(self, content: bytes) -> bool:
        # The bytes decide, never the browser's Content-Type or the name alone: a renamed
        # executable is refused.
        magic = {
            "application/pdf": (b"%PDF-",),
            "image/png": (b"\x89PNG\r\n\x1a\n",),
            "image/jpeg": (b"\xff\xd8\xff",),
        }.get(self.content_type)
        if magic is not None:
            return content.startswith(magic)
        return _is_text(content)


ATTACHMENT_TYPES = (
    FileType("application/pdf", (".pdf",), "PDF"),
    FileType("image/png", (".png",), "PNG"),
    FileType("image/jpeg", (".jpg", ".jpeg"), "JPEG"),
    FileType("text/plain", (".txt",), "text"),
    FileType("text/csv", (".csv",), "CSV"),
    FileType("message/rfc822", (".eml",), "email (.eml)"),
)


def attachment_max_bytes() -> int:
    return settings.CASES_ATTACHMENT_MAX_MB * 1024 * 1024


def attachment_types_text() -> str:
    return ", ".join(t.label for t in ATTACHMENT_TYPES)


def too_large_message() -> str:
    return f"The file is larger than {settings.CASES_ATTACHMENT_MAX_MB} MB; attach a smaller one."


# Set on the request when CappedUploadHandler stopped reading a file.
UPLOAD_TOO_LARGE = "ccm_upload_too_large"


class CappedUploadHandler(FileUploadHandler):
    """Stops an upload as soon as it passes `limit` bytes; the rest of the request is read and
    dropped (not stored), so the person gets the page that says why."""

    def __init__(self, request, *, limit: int):
        super().__init__(request)
        self.limit = limit

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            setattr(self.request, UPLOAD_TOO_LARGE, True)
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the file


class AttachmentForm(AccessibleForm):
    file = forms.FileField(
        label="File",
        error_messages={
            "required": "Choose a file to attach.",
            "empty": "The file is empty.",
        },
    )

    def __init__(self, *args, too_large: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if too_large:  # the upload handler dropped it: say why it is missing
            self.fields["file"].error_messages["required"] = too_large_message()
        self.fields["file"].help_text = (
            f"Up to {settings.CASES_ATTACHMENT_MAX_MB} MB: {attachment_types_text()}. "
            "Only staff can download it."
        )

    def clean_file(self) -> UploadedFile:
        upload: UploadedFile = self.cleaned_data["file"]
        if upload.size is None or upload.size > attachment_max_bytes():
            raise forms.ValidationError(too_large_message())
        name = PurePath((upload.name or "").replace("\\", "/")).name
        suffix = PurePath(name.lower()).suffix
        kind = next((t for t in ATTACHMENT_TYPES if suffix in t.extensions), None)
        if kind is None:
            raise forms.ValidationError(
                f"{name or 'This file'} is not a type the case accepts; attach one of: "
                f"{attachment_types_text()}."
            )
        content = b"".join(upload.chunks())
        upload.seek(0)
        if not kind.matches(content):
            raise forms.ValidationError(
                f"{name} is named {suffix} but its content is not {kind.label}; attach the "
                "original file."
            )
        self.content_type = kind.content_type
        self.file_name = name
        return upload


# --- resend ----------------------------------------------------------------------------------


class ResendForm(AccessibleForm):
    channel = forms.ChoiceField(
        label="Channel",
        choices=[],
        error_messages={"required": "Choose a channel.", "invalid_choice": "Choose a channel."},
    )
    address = forms.CharField(
        label="Address",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="An email address, a phone number, or for a letter the postal address with "
        "one line per line.",
        error_messages={"required": "Give the address to send to."},
    )

    def __init__(self, *args, channels: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["channel"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(c, c) for c in RESENDABLE_CHANNELS if c in channels]

    def clean(self) -> dict:
        data = super().clean() or {}
        address = data.get("address") or ""
        if data.get("channel") == "print":
            data["address"] = [line.strip() for line in address.splitlines() if line.strip()]
        else:
            data["address"] = address.strip()
        return data


# --- the data of a communication, as fields from its template's JSON Schema -------------------

# Filled by the pipeline at composition time, never by a person (notifications' portal link).
_PIPELINE_FIELDS = {"portal_url"}


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


def _readable(message: str) -> str:
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
        text = _readable(message)
        if owner is None:
            unplaced.append(f"{path or 'The data'}: {text}")
        elif owner.path != path:
            owner.errors.append(f"{path[len(owner.path) + 1 :]}: {text}")
        else:
            owner.errors.append(text)
    return unplaced

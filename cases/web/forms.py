"""Forms of the agent and operations case screens (cases/web/views.py).

They check the shape of what a person typed; the rules (which move a case's state allows, what a
letter needs, where a communication may be resent) stay in the services, whose errors the views
put back on these forms' fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from cases.models import Team
from cases.requests.forms import AccessibleForm as HelpLinkedForm
from ccm.forms import AccessibleForm
from ccm.roles import Role
from notifications.pipeline.recovery import RESENDABLE_CHANNELS

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
        self.file_name, self.content_type = attachment_checked(upload)
        return upload


def attachment_checked(upload: UploadedFile) -> tuple[str, str]:
    """The file's name and content type when the case accepts it: not too large, of a type
    on the list, its bytes what its name says. A ValidationError says what to attach instead."""
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
    return name, kind.content_type


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


# --- opening a case --------------------------------------------------------------------------

CASE_TYPE_LABELS = {
    "complaint": "Complaint",
    "dispute": "Dispute (a payment or a charge the customer contests)",
    "correspondence": "Correspondence (a letter or message that needs a reply)",
}
# How the customer got in touch: the complaint templates' enum, in words.
RECEIVED_BY = [
    ("phone", "Phone"),
    ("email", "Email"),
    ("letter", "Letter"),
    ("web_chat", "Web chat"),
    ("social_media", "Social media"),
    ("in_person", "In person"),
]
PRODUCTS = [("energy", "Energy"), ("home_insurance", "Home insurance")]


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Any number of files (none is fine); each is checked as a single attachment is."""

    widget = MultipleFileInput

    def clean(self, data, initial=None):
        uploads = data if isinstance(data, list | tuple) else [data] if data else []
        single = super().clean
        return [single(upload, initial) for upload in uploads]


class CaseOpenForm(HelpLinkedForm):
    case_type = forms.ChoiceField(
        label="Type of case",
        widget=forms.RadioSelect,
        choices=list(CASE_TYPE_LABELS.items()),
        error_messages={"required": "Choose the type of case."},
    )
    subject = forms.CharField(
        label="Subject",
        max_length=200,
        help_text="A line that names the case in queues, e.g. “Claim settled late”.",
        error_messages={"required": "Give the case a subject."},
    )
    channel = forms.ChoiceField(
        label="Received by",
        choices=[("", "Choose how it came in"), *RECEIVED_BY],
        error_messages={"required": "Say how the customer got in touch."},
    )
    product = forms.ChoiceField(
        label="Product",
        required=False,
        choices=[("", "Choose the product"), *PRODUCTS],
        help_text="Needed for a complaint: the letters name it.",
    )
    account_reference = forms.CharField(
        label="Account or policy reference",
        required=False,
        max_length=100,
        help_text="Optional; the customer's reference is used when empty.",
    )
    description = forms.CharField(
        label="What the customer told us",
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="In the customer's terms: a complaint's acknowledgement quotes it "
        "(“You told us that …”).",
        error_messages={"required": "Say what the customer told us."},
    )
    attachments = MultipleFileField(label="Files the customer sent", required=False)
    send_first_letter = forms.BooleanField(
        label="Send the acknowledgement letter now",
        required=False,
        initial=True,
    )

    def __init__(self, *args, too_large: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.too_large = too_large
        self.fields["attachments"].help_text = (
            f"Optional. Up to {settings.CASES_ATTACHMENT_MAX_MB} MB each: "
            f"{attachment_types_text()}. Only staff can download them."
        )

    def clean_attachments(self) -> list[tuple[UploadedFile, str, str]]:
        if self.too_large:  # the upload handler dropped it: say why it is missing
            raise forms.ValidationError(too_large_message())
        checked = []
        for upload in self.cleaned_data.get("attachments") or []:
            name, content_type = attachment_checked(upload)
            checked.append((upload, name, content_type))
        return checked

    def clean(self) -> dict:
        data = super().clean() or {}
        if data.get("case_type") == "complaint" and not data.get("product"):
            self.add_error("product", "Choose the product the complaint is about.")
        return data


class AddressCorrectionForm(HelpLinkedForm):
    postal_address = forms.CharField(
        label="New postal address",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="One line per line, as on the envelope: at least the street and the postcode.",
        error_messages={"required": "Give the new address."},
    )
    reason = forms.CharField(
        label="Why it changes",
        max_length=500,
        help_text="e.g. “Customer moved; confirmed by phone after security questions”.",
        error_messages={"required": "Say why the address changes."},
    )

    def clean_postal_address(self) -> list[str]:
        raw = self.cleaned_data["postal_address"]
        return [line.strip() for line in raw.splitlines() if line.strip()]

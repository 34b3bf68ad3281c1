"""Templates, their versions (with the sign-off state machine) and the document archive."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import ConcurrentTransitionMixin, FSMField, transition


class Category(models.TextChoices):
    REGULATORY = "regulatory"
    TRANSACTIONAL = "transactional"
    SERVICE = "service"
    MARKETING = "marketing"


class Template(models.Model):
    """A communication type (e.g. the monthly statement); its content lives in versions."""

    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=20, choices=Category.choices)
    owner = models.CharField(max_length=200, blank=True, help_text="The accountable team.")
    description = models.TextField(blank=True)
    languages = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} — {self.name}"

    @property
    def published_version(self) -> TemplateVersion | None:
        return self.versions.filter(state=VersionState.PUBLISHED).first()


class VersionState(models.TextChoices):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    CHANGES_REQUESTED = "changes_requested"
    REJECTED = "rejected"
    APPROVED = "approved"
    PUBLISHED = "published"
    RETIRED = "retired"


FROZEN_STATES = {
    VersionState.IN_REVIEW,
    VersionState.APPROVED,
    VersionState.PUBLISHED,
    VersionState.RETIRED,
    VersionState.REJECTED,
    VersionState.CHANGES_REQUESTED,
}


class TemplateVersion(ConcurrentTransitionMixin, models.Model):
    """One numbered version of a template: every channel's rendition, the data schema, sample
    data and per-language variants, held as a bundle of files (`content`).

    From submission on, the content is frozen and `content_hash` proves it: editing means a new
    version. Transitions: draft → in_review → approved → published → retired;
    in_review → changes_requested → draft; in_review → rejected.
    """

    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = FSMField(default=VersionState.DRAFT, choices=VersionState.choices, protected=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    content = models.JSONField(help_text="meta, files, assets, schema and samples")
    content_hash = models.CharField(max_length=64)
    source = models.CharField(max_length=300, blank=True, help_text="ui, or the imported folder")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["template__code", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="version_number_unique"),
            models.UniqueConstraint(
                fields=["template"],
                condition=Q(state="published"),
                name="one_published_version_per_template",
            ),
        ]
        permissions = [("publish_templateversion", "Can publish an approved template version")]

    def __str__(self) -> str:
        return f"{self.template.code} v{self.number} ({self.state})"

    @property
    def is_frozen(self) -> bool:
        return self.state in FROZEN_STATES

    @property
    def meta(self) -> dict:
        return self.content.get("meta", {})

    @transition(field=state, source=VersionState.DRAFT, target=VersionState.IN_REVIEW)
    def submit(self, *, when) -> None:
        self.submitted_at = when

    @transition(field=state, source=VersionState.IN_REVIEW, target=VersionState.APPROVED)
    def approve(self) -> None:
        pass

    @transition(field=state, source=VersionState.IN_REVIEW, target=VersionState.REJECTED)
    def reject(self) -> None:
        pass

    @transition(field=state, source=VersionState.IN_REVIEW, target=VersionState.CHANGES_REQUESTED)
    def request_changes(self) -> None:
        pass

    @transition(
        field=state,
        source=[VersionState.CHANGES_REQUESTED, VersionState.IN_REVIEW],
        target=VersionState.DRAFT,
    )
    def reopen(self) -> None:
        """Back to draft: after changes were requested, or when the author withdraws."""
        self.submitted_at = None

    @transition(field=state, source=VersionState.APPROVED, target=VersionState.PUBLISHED)
    def publish(self, *, when) -> None:
        self.published_at = when

    @transition(field=state, source=VersionState.PUBLISHED, target=VersionState.RETIRED)
    def retire(self, *, when) -> None:
        self.retired_at = when


class DocumentKind(models.TextChoices):
    ORIGINAL = "original"
    DUPLICATE = "duplicate"


class Document(models.Model):
    """An archived rendered document: enough to prove and to regenerate it byte for byte."""

    # What the API and integrators' URLs show instead of the counter `id`, which would tell one
    # integrator how many others' rows exist and let it walk them.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    template_version = models.ForeignKey(
        TemplateVersion, on_delete=models.PROTECT, related_name="documents"
    )
    kind = models.CharField(max_length=20, choices=DocumentKind.choices, default="original")
    original = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="duplicates"
    )
    language = models.CharField(max_length=10)
    locale = models.CharField(max_length=20)
    data = models.JSONField(help_text="The data snapshot the document was rendered from.")
    file = models.FileField(upload_to="documents/%Y/%m/")
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveIntegerField()
    page_count = models.PositiveIntegerField()
    engine = models.JSONField(help_text="Engine and font versions used.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        # The documents list reads newest first.
        indexes = [models.Index(fields=["created_at", "id"], name="document_created_order")]

    def __str__(self) -> str:
        return f"Document {self.pk} ({self.template_version}, {self.kind})"


class RegenerationCheck(models.Model):
    """The record that a document was re-rendered from its archived inputs and compared."""

    document = models.ForeignKey(Document, on_delete=models.PROTECT, related_name="checks")
    checked_at = models.DateTimeField(auto_now_add=True)
    checked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    matched = models.BooleanField()
    expected_sha256 = models.CharField(max_length=64)
    actual_sha256 = models.CharField(max_length=64)
    engine = models.JSONField()

    class Meta:
        ordering = ["-checked_at"]

    def __str__(self) -> str:
        return f"{'match' if self.matched else 'MISMATCH'} for document {self.document_id}"

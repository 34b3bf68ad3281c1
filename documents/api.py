"""Templates (read, preview) and archived documents over the API."""

from __future__ import annotations

import base64

from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers
from rest_framework.response import Response

from ccm.api.auth import visible_to_caller
from ccm.api.errors import ApiProblem, Unprocessable
from ccm.api.schema import JSONObjectField
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from ccm.models import ApiKey
from documents import selectors, services
from documents.composition import CompositionError, DataInvalid
from documents.models import Document, Template, TemplateVersion, VersionState


class VersionSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    state = serializers.ChoiceField(choices=VersionState.choices)
    author = serializers.CharField(source="author.username")
    content_hash = serializers.CharField()
    created_at = serializers.DateTimeField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    published_at = serializers.DateTimeField(allow_null=True)
    channels = serializers.ListField(source="meta.channels", child=serializers.CharField())
    languages = serializers.ListField(
        source="meta.languages", child=serializers.CharField(), default=list
    )


class TemplateSerializer(serializers.ModelSerializer):
    published_version = serializers.IntegerField(
        source="published_number", allow_null=True, read_only=True
    )

    class Meta:
        model = Template
        fields = [
            "code",
            "name",
            "category",
            "owner",
            "description",
            "languages",
            "published_version",
        ]


class TemplateDetailSerializer(TemplateSerializer):
    versions = VersionSerializer(many=True, read_only=True)
    schema = serializers.SerializerMethodField()

    class Meta(TemplateSerializer.Meta):
        fields = [*TemplateSerializer.Meta.fields, "schema", "versions"]

    def get_schema(self, template) -> dict:
        version = template.published_version or template.versions.order_by("-number").first()
        return version.content.get("schema", {}) if version else {}


@extend_schema_view(get=extend_schema(summary="List templates, with their published version"))
class TemplateListView(CcmGenericAPIView, generics.ListAPIView):
    required_scopes = ("templates:read",)
    serializer_class = TemplateSerializer
    filterset_fields = ["category"]

    def get_queryset(self):
        return selectors.template_list()


@extend_schema_view(
    get=extend_schema(
        summary="A template: the JSON Schema its data must match, and its versions",
        description="`schema` is the published version's JSON Schema (the latest version's "
        "while none is published): the `data` of a communication must match it.",
    )
)
class TemplateDetailView(CcmGenericAPIView, generics.RetrieveAPIView):
    required_scopes = ("templates:read",)
    serializer_class = TemplateDetailSerializer
    lookup_field = "code"

    def get_queryset(self):
        return selectors.template_list().prefetch_related("versions__author")


class PreviewRequestSerializer(serializers.Serializer):
    data = JSONObjectField(  # type: ignore[assignment]
        required=False, help_text="A JSON object; default: the version's sample data"
    )
    sample = serializers.CharField(required=False, default="default")
    version = serializers.IntegerField(required=False, help_text="Default: the published one")
    language = serializers.CharField(required=False)
    channels = serializers.ListField(
        child=serializers.ChoiceField(choices=["print", "email", "sms", "push"]), required=False
    )
    format = serializers.ChoiceField(
        choices=["json", "pdf"],
        default="json",
        help_text="pdf: the response is the PDF itself; json: every channel, the PDF in base64",
    )


class PreviewPdfSerializer(serializers.Serializer):
    pages = serializers.IntegerField()
    base64 = serializers.CharField(help_text="The PDF, base64-encoded")


class PreviewEmailSerializer(serializers.Serializer):
    subject = serializers.CharField()
    html = serializers.CharField()
    text = serializers.CharField()


class PreviewSmsSerializer(serializers.Serializer):
    text = serializers.CharField()
    segments = serializers.IntegerField(help_text="SMS parts the text takes")
    encoding = serializers.CharField(help_text="GSM-7 or UCS-2")


class PreviewPushSerializer(serializers.Serializer):
    title = serializers.CharField()
    body = serializers.CharField()


class PreviewSerializer(serializers.Serializer):
    template = serializers.CharField()
    version = serializers.IntegerField()
    state = serializers.ChoiceField(choices=VersionState.choices)
    pdf = PreviewPdfSerializer(allow_null=True, help_text="null: no print channel asked for")
    email = PreviewEmailSerializer(allow_null=True)
    sms = PreviewSmsSerializer(allow_null=True)
    push = PreviewPushSerializer(allow_null=True)


def composition_problem(exc: CompositionError) -> ApiProblem:
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    if isinstance(exc, DataInvalid):
        return Unprocessable(exc.reason, code="data_invalid", errors=errors)
    return Unprocessable(exc.reason, code="composition_failed", errors=errors)


# Who may see a version before it is published: its authors and the reviewers who sign it off.
DRAFT_PREVIEW_PERMISSIONS = ("documents.add_templateversion", "ccm.decide_approval")


def check_preview_allowed(request, version: TemplateVersion) -> None:
    """Published versions are for every caller with templates:read; anything else is work in
    progress, shown only to a staff session of a template author or compliance reviewer."""
    if version.state == VersionState.PUBLISHED:
        return
    what = f"Version {version.number} is {version.state}, not published"
    if isinstance(request.auth, ApiKey):
        raise ApiProblem(
            status_code=403,
            title="Forbidden",
            detail=f"{what}: API keys preview published versions only. Previewing it needs a "
            "staff session of a template author or compliance reviewer.",
            code="unpublished_version",
        )
    user = request.user
    if not (user.is_staff and any(user.has_perm(p) for p in DRAFT_PREVIEW_PERMISSIONS)):
        raise ApiProblem(
            status_code=403,
            title="Forbidden",
            detail=f"{what}: only template authors and compliance reviewers preview it.",
            code="unpublished_version",
        )


class TemplatePreviewView(CcmAPIView):
    required_scopes = ("templates:read",)

    @extend_schema(
        request=PreviewRequestSerializer,
        responses={
            (200, "application/json"): OpenApiResponse(
                PreviewSerializer, description="format json: every channel asked for"
            ),
            (200, "application/pdf"): OpenApiResponse(
                OpenApiTypes.BINARY, description="format pdf: the PDF itself"
            ),
            403: OpenApiResponse(
                description="An unpublished version, asked for by an API key or a session "
                "without the template author or compliance reviewer role"
            ),
            422: OpenApiResponse(
                description="The data does not match the template's schema (each field at "
                "fault in `errors`, as a path under `data`), or the template cannot render it "
                "(including exceeding its time or memory limit)"
            ),
        },
        summary="Render a template's channels from data, archiving nothing",
        description="Renders the published version (or `version`) with your data, or with "
        "one of its sample data sets, so you can check your data before requesting a "
        "communication. A version that is not published is stamped PROOF.",
        examples=[
            OpenApiExample(
                "Email and SMS from your data",
                request_only=True,
                value={
                    "data": {
                        "account_number": "NW-3310-0457",
                        "reference": "PR-2026-04-0009931",
                        "document_date": "2026-04-01",
                        "amount_due": 288.59,
                        "original_due_date": "2026-03-25",
                        "statement_reference": "ST-2026-02-0051907",
                        "pay_by": "2026-04-11",
                    },
                    "channels": ["email", "sms"],
                },
            ),
            OpenApiExample(
                "The PDF from the default sample",
                request_only=True,
                value={"sample": "default", "format": "pdf"},
            ),
            OpenApiExample(
                "Rendered",
                response_only=True,
                media_type="application/json",
                value={
                    "template": "payment_reminder",
                    "version": 3,
                    "state": "published",
                    "pdf": None,
                    "email": {
                        "subject": "A reminder about your account NW-3310-0457",
                        "html": "<p>Dear Ms Lovelace, …</p>",
                        "text": "Dear Ms Lovelace, …",
                    },
                    "sms": {
                        "text": "Northwind: £288.59 is due on 11 Apr 2026.",
                        "segments": 1,
                        "encoding": "GSM-7",
                    },
                    "push": None,
                },
            ),
        ],
    )
    def post(self, request, code: str):
        body = PreviewRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        params = body.validated_data
        template = get_object_or_404(Template, code=code)
        version = selectors.version_for_preview(template=template, number=params.get("version"))
        if version is None:
            raise Unprocessable(
                "This template has no published version; name one with `version`.",
                code="no_published_version",
            )
        check_preview_allowed(request, version)
        channels = ["print"] if params["format"] == "pdf" else params.get("channels")
        try:
            preview = services.template_preview(
                version=version,
                data=params.get("data"),
                sample=params["sample"],
                language=params.get("language"),
                channels=channels,
            )
        except CompositionError as exc:
            raise composition_problem(exc) from exc
        if params["format"] == "pdf":
            if preview.pdf is None:
                raise Unprocessable("This template has no print rendition.", code="no_print")
            return HttpResponse(preview.pdf.data, content_type="application/pdf")
        return Response(
            {
                "template": template.code,
                "version": version.number,
                "state": version.state,
                "pdf": None
                if preview.pdf is None
                else {
                    "pages": preview.pdf.page_count,
                    "base64": base64.b64encode(preview.pdf.data).decode("ascii"),
                },
                "email": preview.email,
                "sms": preview.sms,
                "push": preview.push,
            }
        )


class DocumentSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    original = serializers.UUIDField(source="original.public_id", read_only=True, allow_null=True)
    template = serializers.CharField(source="template_version.template.code")
    version = serializers.IntegerField(source="template_version.number")
    pdf_url = serializers.SerializerMethodField()

    class Meta:
        model = Document
        fields = [
            "id",
            "template",
            "version",
            "kind",
            "original",
            "language",
            "sha256",
            "size",
            "page_count",
            "engine",
            "created_at",
            "pdf_url",
        ]

    def get_pdf_url(self, document) -> str:
        return self.context["request"].build_absolute_uri(
            f"/api/v1/documents/{document.public_id}/pdf"
        )


def _documents(request):
    """The documents the caller may see: an API key only those composed for its requests."""
    return visible_to_caller(Document.objects.all(), request)


@extend_schema_view(
    get=extend_schema(summary="An archived document: its template version, hash and size")
)
class DocumentDetailView(CcmGenericAPIView, generics.RetrieveAPIView):
    required_scopes = ("documents:read",)
    serializer_class = DocumentSerializer
    lookup_field = "public_id"

    def get_queryset(self):
        return _documents(self.request).select_related("template_version__template", "original")


class DocumentPdfView(CcmAPIView):
    required_scopes = ("documents:read",)

    @extend_schema(
        responses={(200, "application/pdf"): OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter("public_id", OpenApiTypes.UUID, OpenApiParameter.PATH),
            OpenApiParameter(
                "X-Content-SHA256",
                str,
                OpenApiParameter.HEADER,
                response=[200],
                description="The SHA-256 of the PDF's bytes, in hex, as archived",
            ),
        ],
        summary="The archived PDF, byte for byte",
    )
    def get(self, request, public_id):
        document = get_object_or_404(_documents(request), public_id=public_id)
        response = FileResponse(
            document.file.open("rb"),
            content_type="application/pdf",
            filename=f"document-{document.public_id}.pdf",
        )
        response["X-Content-SHA256"] = document.sha256
        return response

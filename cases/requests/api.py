"""Reprints and correspondence over the API (scopes cases:write to request, cases:read to read;
staff sessions need their role's permissions). Mounted at /api/v1/ in ccm/urls.py."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response

from cases.api import PERMISSIONS, SCOPES, problems
from cases.requests import correspondence, reprints
from cases.requests.models import (
    STATED_IDENTITY_CHECKS,
    CorrespondenceRequest,
    ReprintRequest,
    RequestSource,
)
from cases.requests.selectors import last_approval
from ccm.api.auth import visible_to_caller
from ccm.api.schema import JSONObjectField
from ccm.api.views import CcmAPIView
from ccm.models import ApprovalState
from documents.models import Document
from notifications.models import Communication, Customer


class RequestAPIView(CcmAPIView):
    permission_classes = PERMISSIONS
    required_scopes = SCOPES
    session_perms: dict[str, tuple[str, ...]] = {}


def _customer(ref: str, source_system: str) -> Customer:
    customer = Customer.objects.filter(external_ref=ref, source_system=source_system).first()
    if customer is None:
        raise serializers.ValidationError(
            {"customer": [f"There is no customer {ref!r} in source system {source_system!r}."]}
        )
    return customer


# The state of the last sign-off asked for (null: none was needed).
APPROVAL_STATE = serializers.ChoiceField(choices=ApprovalState.choices, allow_null=True)


def _approval_state(subject) -> str | None:
    approval = last_approval(subject)
    return approval.state if approval else None


# --- reprints ----------------------------------------------------------------------------------


class ReprintCreateSerializer(serializers.Serializer):
    customer = serializers.CharField(max_length=100, help_text="The customer's reference")
    source_system = serializers.CharField(max_length=100, default="default")
    document = serializers.UUIDField(required=False, help_text="The archived document's id")
    communication = serializers.UUIDField(
        required=False, help_text="Or the communication that sent it"
    )
    reason = serializers.CharField(max_length=2000)
    channel = serializers.ChoiceField(choices=["email", "print"])
    address = serializers.JSONField(
        required=False,
        default="",  # type: ignore[arg-type]  # a string or a list of lines
        help_text="Empty for the address on file; an email, or postal lines (a list). "
        "Another address waits for a reviewer's release.",
    )
    identity_verification = serializers.ChoiceField(
        choices=[(c.value, c.label) for c in STATED_IDENTITY_CHECKS]
    )
    identity_note = serializers.CharField(max_length=500, required=False, default="")

    def validate(self, attrs):
        if ("document" in attrs) == ("communication" in attrs):
            raise serializers.ValidationError(
                {"document": ["Give either the document or the communication that sent it."]}
            )
        address = attrs["address"]
        if not isinstance(address, str) and not (
            isinstance(address, list) and all(isinstance(line, str) for line in address)
        ):
            raise serializers.ValidationError(
                {"address": ["An address is a string, or a list of postal address lines."]}
            )
        return attrs


class ReprintSerializer(serializers.ModelSerializer):
    case = serializers.CharField(source="case.reference")
    customer = serializers.CharField(source="customer.external_ref")
    document = serializers.UUIDField(source="document.public_id")
    duplicate = serializers.UUIDField(source="duplicate.public_id", allow_null=True)
    duplicate_sha256 = serializers.CharField(source="duplicate.sha256", allow_null=True)
    regeneration_matched = serializers.BooleanField(
        source="regeneration_check.matched", allow_null=True
    )
    communication = serializers.UUIDField(source="communication.public_id", allow_null=True)
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True)
    released_by = serializers.CharField(source="released_by.username", allow_null=True)
    approval_state = serializers.SerializerMethodField()

    class Meta:
        model = ReprintRequest
        fields = [
            "id",
            "state",
            "case",
            "customer",
            "document",
            "reason",
            "channel",
            "address",
            "address_is_new",
            "identity_verification",
            "identity_note",
            "release_reasons",
            "approval_state",
            "source",
            "requested_by",
            "released_by",
            "released_at",
            "duplicate",
            "duplicate_sha256",
            "regeneration_matched",
            "communication",
            "failure_reason",
            "created_at",
            "fulfilled_at",
        ]

    @extend_schema_field(APPROVAL_STATE)
    def get_approval_state(self, reprint: ReprintRequest) -> str | None:
        return _approval_state(reprint)


def _requests(request, model):
    """The requests the caller may see: an API key only its own and its source systems'."""
    return visible_to_caller(
        model.objects.all(),
        request,
        creator="requested_by",
        source_system="customer__source_system",
    )


class ReprintListView(RequestAPIView):
    session_perms = {"POST": ("cases.add_reprintrequest",)}

    @extend_schema(
        request=ReprintCreateSerializer,
        responses={201: ReprintSerializer},
        summary="Request a reprint (awaiting_release when a reviewer must release it)",
    )
    def post(self, request):
        body = ReprintCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        params = body.validated_data
        customer = _customer(params["customer"], params["source_system"])
        if "communication" in params:
            # Only a communication (or document) the caller may see: another integrator's id
            # reads as unknown.
            sent = (
                visible_to_caller(
                    Communication.objects.all(), request, source_system="customer__source_system"
                )
                .filter(
                    public_id=params["communication"], customer=customer, document__isnull=False
                )
                .first()
            )
            if sent is None:
                raise serializers.ValidationError(
                    {"communication": ["No communication with a document to this customer."]}
                )
            document = sent.document
        else:
            document = (
                visible_to_caller(Document.objects.all(), request)
                .filter(public_id=params["document"])
                .first()
            )
            if document is None:
                raise serializers.ValidationError({"document": ["There is no such document."]})
        with problems():
            created = reprints.reprint_request_create(
                customer=customer,
                document=document,  # type: ignore[arg-type]
                reason=params["reason"],
                channel=params["channel"],
                address=params["address"],
                identity_verification=params["identity_verification"],
                identity_note=params["identity_note"],
                by=request.user,
                source=RequestSource.API,
            )
        return Response(ReprintSerializer(created).data, status=status.HTTP_201_CREATED)


class ReprintDetailView(RequestAPIView):
    session_perms = {"GET": ("cases.view_reprintrequest",)}

    @extend_schema(responses=ReprintSerializer, summary="A reprint request and what was sent")
    def get(self, request, pk: int):
        reprint = get_object_or_404(
            _requests(request, ReprintRequest).select_related(
                "case", "customer", "duplicate", "regeneration_check", "requested_by"
            ),
            pk=pk,
        )
        return Response(ReprintSerializer(reprint).data)


# --- correspondence ----------------------------------------------------------------------------


class CorrespondenceCreateSerializer(serializers.Serializer):
    template = serializers.SlugField(max_length=100, help_text="A published letter template")
    customer = serializers.CharField(max_length=100)
    source_system = serializers.CharField(max_length=100, default="default")
    data = JSONObjectField(  # type: ignore[assignment]
        help_text="A JSON object, checked against the template's JSON Schema"
    )
    channel = serializers.CharField(max_length=10, required=False, default="")


class CorrespondenceSerializer(serializers.ModelSerializer):
    case = serializers.CharField(source="case.reference")
    customer = serializers.CharField(source="customer.external_ref")
    template = serializers.CharField(source="template.code")
    version = serializers.IntegerField(source="template_version.number")
    document = serializers.UUIDField(source="document.public_id")
    document_sha256 = serializers.CharField(source="document.sha256")
    communication = serializers.UUIDField(source="communication.public_id", allow_null=True)
    requested_by = serializers.CharField(source="requested_by.username")
    released_by = serializers.CharField(source="released_by.username", allow_null=True)
    approval_state = serializers.SerializerMethodField()

    class Meta:
        model = CorrespondenceRequest
        fields = [
            "id",
            "state",
            "case",
            "customer",
            "template",
            "version",
            "data",
            "channel",
            "document",
            "document_sha256",
            "approval_state",
            "source",
            "requested_by",
            "released_by",
            "released_at",
            "communication",
            "failure_reason",
            "created_at",
        ]

    @extend_schema_field(APPROVAL_STATE)
    def get_approval_state(self, letter: CorrespondenceRequest) -> str | None:
        return _approval_state(letter)


class CorrespondenceListView(RequestAPIView):
    session_perms = {"POST": ("cases.add_correspondencerequest",)}

    @extend_schema(
        request=CorrespondenceCreateSerializer,
        responses={201: CorrespondenceSerializer},
        summary="Write a letter from a template; it waits for a reviewer's release",
    )
    def post(self, request):
        body = CorrespondenceCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        params = body.validated_data
        customer = _customer(params["customer"], params["source_system"])
        with problems():
            created = correspondence.correspondence_request_create(
                template_code=params["template"],
                customer=customer,
                data=params["data"],
                channel=params["channel"],
                by=request.user,
                source=RequestSource.API,
            )
        return Response(CorrespondenceSerializer(created).data, status=status.HTTP_201_CREATED)


class CorrespondenceDetailView(RequestAPIView):
    session_perms = {"GET": ("cases.view_correspondencerequest",)}

    @extend_schema(responses=CorrespondenceSerializer, summary="A letter request and its state")
    def get(self, request, pk: int):
        letter = get_object_or_404(
            _requests(request, CorrespondenceRequest).select_related(
                "case", "customer", "template", "template_version", "document"
            ),
            pk=pk,
        )
        return Response(CorrespondenceSerializer(letter).data)


urlpatterns = [
    path("reprints", ReprintListView.as_view(), name="api-reprints"),
    path("reprints/<int:pk>", ReprintDetailView.as_view(), name="api-reprint"),
    path("correspondence", CorrespondenceListView.as_view(), name="api-correspondence-list"),
    path("correspondence/<int:pk>", CorrespondenceDetailView.as_view(), name="api-correspondence"),
]

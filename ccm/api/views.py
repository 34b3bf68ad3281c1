"""Kernel API: the caller, API keys and approvals. Base classes every app's API builds on."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, permissions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from ccm import approvals
from ccm.api.auth import (
    SCOPES,
    CountedAheadMixin,
    HasScope,
    SessionOnly,
    UnknownScope,
    api_key_create,
    api_key_revoke,
    caller_scopes,
)
from ccm.api.errors import Conflict
from ccm.api.idempotency import IdempotentMixin
from ccm.models import ApiKey, Approval, ApprovalState, Decision


class CcmAPIView(CountedAheadMixin, IdempotentMixin, APIView):
    """Base for API views: authenticated, scope-checked, Idempotency-Key on POST, JSON bodies
    only (a view that takes a real upload names its own parsers)."""

    permission_classes = [permissions.IsAuthenticated, HasScope]
    parser_classes = [JSONParser]
    required_scopes: tuple[str, ...] | dict[str, tuple[str, ...]] = ()


class CcmGenericAPIView(CountedAheadMixin, IdempotentMixin, generics.GenericAPIView):
    permission_classes = [permissions.IsAuthenticated, HasScope]
    parser_classes = [JSONParser]
    required_scopes: tuple[str, ...] | dict[str, tuple[str, ...]] = ()


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    auth = serializers.ChoiceField(choices=["api_key", "session"])
    api_key = serializers.CharField(allow_null=True)
    roles = serializers.ListField(child=serializers.CharField())
    scopes = serializers.ListField(child=serializers.CharField())


class MeView(CcmAPIView):
    required_scopes = ("me:read",)

    @extend_schema(responses=MeSerializer, summary="Who is calling, with which roles and scopes")
    def get(self, request):
        roles = sorted(request.user.groups.values_list("name", flat=True))
        if isinstance(request.auth, ApiKey):
            data = {"auth": "api_key", "api_key": request.auth.name, "scopes": request.auth.scopes}
        else:
            data = {"auth": "session", "api_key": None, "scopes": sorted(caller_scopes(request))}
        data.update(username=request.user.get_username(), roles=roles)
        return Response(MeSerializer(data).data)


class IsKeyManager(SessionOnly):
    message = "Managing API keys needs the ccm.manage_api_keys permission (staff only)."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and request.user.has_perm(
            "ccm.manage_api_keys"
        )


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "source_systems",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=sorted(SCOPES)))
    source_systems = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        help_text="Customer source systems whose communications and cases the key may also see",
    )

    def validate_name(self, value: str) -> str:
        if ApiKey.objects.filter(name=value).exists():
            raise serializers.ValidationError("An API key with this name exists; pick another.")
        return value


class ApiKeyIssuedSerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="The secret. Shown only in this response.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


@extend_schema_view(get=extend_schema(summary="List API keys (never their secrets)"))
class ApiKeyListCreateView(CcmGenericAPIView, generics.ListAPIView):
    permission_classes = [permissions.IsAuthenticated, IsKeyManager]
    serializer_class = ApiKeySerializer
    queryset = ApiKey.objects.all()

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyIssuedSerializer},
        summary="Issue an API key for an integrator",
        description="The response carries the key; only its hash is kept, so it is never "
        "shown again.",
    )
    def post(self, request):
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            issued = api_key_create(**body.validated_data, created_by=request.user)
        except UnknownScope as exc:  # pragma: no cover - the serializer's choices catch it
            raise serializers.ValidationError({"scopes": [str(exc)]}) from exc
        data = ApiKeySerializer(issued.api_key).data | {"key": issued.key}
        return Response(data, status=status.HTTP_201_CREATED)


class ApiKeyRevokeView(CcmAPIView):
    permission_classes = [permissions.IsAuthenticated, IsKeyManager]

    @extend_schema(request=None, responses=ApiKeySerializer, summary="Revoke an API key")
    def post(self, request, pk: int):
        api_key = api_key_revoke(api_key=get_object_or_404(ApiKey, pk=pk), by=request.user)
        return Response(ApiKeySerializer(api_key).data)


class ApprovalSerializer(serializers.ModelSerializer):
    subject_type = serializers.CharField(source="subject_type.model")
    requested_by = serializers.CharField(source="requested_by.username")
    author = serializers.CharField(source="author.username", allow_null=True)
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True)

    class Meta:
        model = Approval
        fields = [
            "id",
            "purpose",
            "summary",
            "subject_type",
            "subject_id",
            "state",
            "requested_by",
            "author",
            "requested_at",
            "decided_by",
            "decided_at",
            "comment",
        ]


class ApprovalDecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=Decision.choices)
    comment = serializers.CharField(required=False, allow_blank=True, default="")

    def validate(self, attrs):
        if attrs["decision"] != Decision.APPROVE and not attrs["comment"].strip():
            raise serializers.ValidationError(
                {"comment": ["Say why when rejecting or requesting changes."]}
            )
        return attrs


class StaffOnly(SessionOnly):
    message = "Sign-off is done by staff in person, not with an API key."


@extend_schema_view(get=extend_schema(summary="Approvals waiting for a decision (or in `state`)"))
class ApprovalListView(CcmGenericAPIView, generics.ListAPIView):
    permission_classes = [permissions.IsAuthenticated, StaffOnly]
    serializer_class = ApprovalSerializer
    filterset_fields = ["state", "purpose"]

    def get_queryset(self):
        approvals_ = Approval.objects.select_related(
            "subject_type", "requested_by", "author", "decided_by"
        ).filter(state=self.request.query_params.get("state", ApprovalState.PENDING))
        # Summaries name customers: reviewers (who may decide) see them all, anyone else only
        # what they asked for.
        if getattr(self, "swagger_fake_view", False):
            return approvals_.none()  # the schema generator has no signed-in user
        if not self.request.user.has_perm("ccm.decide_approval"):
            approvals_ = approvals_.filter(requested_by=self.request.user)
        return approvals_


class ApprovalDecideView(CcmAPIView):
    permission_classes = [permissions.IsAuthenticated, StaffOnly]

    @extend_schema(
        request=ApprovalDecisionSerializer,
        responses=ApprovalSerializer,
        summary="Decide an approval (four-eyes: never the requester or the author)",
    )
    def post(self, request, pk: int):
        approval = get_object_or_404(Approval, pk=pk)
        body = ApprovalDecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            decided = approvals.approval_decide(
                approval=approval, by=request.user, **body.validated_data
            )
        except approvals.ApprovalConflict as exc:
            raise Conflict(str(exc), code="approval_already_decided") from exc
        return Response(ApprovalSerializer(decided).data)

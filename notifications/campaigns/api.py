"""Segments and campaigns over the API: CRUD, preview, submit, schedule, pause, resume, cancel,
progress and the evidence pack. Scopes campaigns:read / campaigns:write; people signed in need
the campaign permissions of their role."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.response import Response

from ccm.api.auth import caller_scopes
from ccm.api.errors import Conflict, Unprocessable
from ccm.api.schema import CcmAutoSchema
from ccm.api.views import CcmAPIView
from documents.models import Category
from notifications.campaigns import evidence, selectors, services
from notifications.campaigns.models import Campaign, DataSource, Segment, WindowZone

READ = ("campaigns:read",)
WRITE = ("campaigns:write",)


class CampaignPermission(permissions.BasePermission):
    """A signed-in person needs their role's campaign permission (an API key: its scope)."""

    message = "Your role may not do this with campaigns."

    def has_permission(self, request, view) -> bool:
        if caller_scopes(request) is not None:
            return True
        needed = getattr(view, "permission_for", {}).get(request.method, "view_campaign")
        return request.user.has_perm(f"notifications.{needed}")


class CampaignAPIView(CcmAPIView):
    permission_classes = [*CcmAPIView.permission_classes, CampaignPermission]


def _problem(exc: services.CampaignError, field: str = "") -> Unprocessable:
    """A 422 whose `errors` keep to the Problem schema: one {field, message} per fault, the
    data row or customer reference (if any) leading the message."""
    errors = []
    for item in exc.errors:
        where = ", ".join(f"{k} {item[k]}" for k in ("row", "reference") if item.get(k) is not None)
        for message in item.get("errors", []):
            errors.append({"field": field, "message": f"{where}: {message}" if where else message})
    return Unprocessable(str(exc), code="campaign_invalid", errors=errors or None)


class SegmentSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True)

    class Meta:
        model = Segment
        fields = ["id", "name", "version", "description", "definition", "created_by", "created_at"]


class SegmentWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    definition = serializers.JSONField()


class SegmentListCreateView(CampaignAPIView):
    required_scopes = {"GET": READ, "POST": WRITE}
    permission_for = {"GET": "view_segment", "POST": "add_segment"}

    @extend_schema(responses=SegmentSerializer(many=True), summary="Segments, every version")
    def get(self, request):
        return Response(SegmentSerializer(Segment.objects.all()[:500], many=True).data)

    @extend_schema(
        request=SegmentWriteSerializer,
        responses={201: SegmentSerializer},
        summary="Create a segment (or the next version of the segment of that name)",
    )
    def post(self, request):
        body = SegmentWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            segment = services.segment_create(**body.validated_data, by=request.user)
        except services.CampaignError as exc:
            raise _problem(exc, "definition") from exc
        return Response(SegmentSerializer(segment).data, status=status.HTTP_201_CREATED)


class SegmentDetailView(CampaignAPIView):
    required_scopes = READ
    permission_for = {"GET": "view_segment"}

    @extend_schema(
        responses=SegmentSerializer,
        summary="A segment version: its name, version and definition",
    )
    def get(self, request, pk: int):
        return Response(SegmentSerializer(get_object_or_404(Segment, pk=pk)).data)


class SegmentPreviewView(CampaignAPIView):
    required_scopes = READ
    permission_for = {"GET": "view_segment"}

    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        summary="Count, a sample and the channel breakdown selection would choose today",
    )
    def get(self, request, pk: int):
        segment = get_object_or_404(Segment, pk=pk)
        category = request.query_params.get("category", Category.REGULATORY)
        if category not in Category.values:
            raise Unprocessable(f"Unknown category {category!r}.", code="invalid_category")
        renditions = request.query_params.get("channels", "email,sms,push,print").split(",")
        try:
            preview = selectors.segment_preview(
                segment.definition, category=category, renditions=renditions
            )
        except selectors.SegmentInvalid as exc:
            raise Unprocessable(str(exc), code="segment_invalid") from exc
        return Response(
            {
                "count": preview.count,
                "sample": [
                    {
                        "external_ref": c.external_ref,
                        "source_system": c.source_system,
                        "name": c.name,
                    }
                    for c in preview.sample
                ],
                "breakdown": preview.breakdown.as_dict(),
            }
        )


class CampaignSerializer(serializers.ModelSerializer):
    template = serializers.CharField(source="template_version.template.code")
    template_version = serializers.IntegerField(source="template_version.number")
    created_by = serializers.CharField(source="created_by.username")
    submitted_by = serializers.CharField(source="submitted_by.username", allow_null=True)
    approved_by = serializers.SerializerMethodField()

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "state",
            "note",
            "template",
            "template_version",
            "segment",
            "category",
            "data_source",
            "schedule_at",
            "throttle",
            "window_start_hour",
            "window_end_hour",
            "window_zone",
            "created_by",
            "created_at",
            "submitted_by",
            "submitted_at",
            "approved_by",
            "approved_at",
            "audience_hash",
            "audience_count",
            "segment_snapshot",
            "channel_plan",
            "started_at",
            "completed_at",
        ]

    def get_approved_by(self, campaign: Campaign) -> str | None:
        approval = campaign.approval
        if approval is None or approval.decided_by is None or approval.state != "approved":
            return None
        return approval.decided_by.username


class CampaignWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    template = serializers.CharField(max_length=100)
    segment = serializers.PrimaryKeyRelatedField(queryset=Segment.objects.all())
    category = serializers.ChoiceField(choices=Category.choices, required=False)
    data_source = serializers.ChoiceField(choices=DataSource.choices, default=DataSource.ATTRIBUTES)
    data_csv = serializers.CharField(required=False, allow_blank=True, default="")
    schedule_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    throttle = serializers.DictField(child=serializers.IntegerField(min_value=1), required=False)
    window = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=23),
        min_length=2,
        max_length=2,
        required=False,
        help_text="[start hour, end hour) of sending, read in `window_zone`",
    )
    window_zone = serializers.ChoiceField(
        choices=WindowZone.choices,
        default=WindowZone.BUSINESS,
        help_text="business: the window is read in the business's time zone; customer: in each "
        "customer's `time_zone`",
    )


def _campaigns():
    return Campaign.objects.select_related(
        "template_version__template", "created_by", "submitted_by", "approval__decided_by"
    )


class CampaignListCreateView(CampaignAPIView):
    required_scopes = {"GET": READ, "POST": WRITE}
    permission_for = {"GET": "view_campaign", "POST": "add_campaign"}

    @extend_schema(responses=CampaignSerializer(many=True), summary="Campaigns, newest first")
    def get(self, request):
        campaigns = selectors.campaigns_list(
            state=request.query_params.get("state", ""), q=request.query_params.get("q", "")
        )
        campaigns = campaigns.select_related("created_by", "submitted_by", "approval__decided_by")
        return Response(CampaignSerializer(campaigns[:200], many=True).data)

    @extend_schema(
        request=CampaignWriteSerializer,
        responses={201: CampaignSerializer},
        summary="Create a draft campaign on the template's published version",
    )
    def post(self, request):
        body = CampaignWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        try:
            campaign = services.campaign_create(
                name=fields["name"],
                template_code=fields["template"],
                segment=fields["segment"],
                category=fields.get("category", ""),
                data_source=fields["data_source"],
                data_csv=fields["data_csv"],
                schedule_at=fields["schedule_at"],
                throttle=fields.get("throttle") or {},
                window=tuple(fields["window"]) if fields.get("window") else None,
                window_zone=fields["window_zone"],
                by=request.user,
            )
        except services.CampaignError as exc:
            raise _problem(exc) from exc
        return Response(
            CampaignSerializer(_campaigns().get(pk=campaign.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class CampaignDetailView(CampaignAPIView):
    required_scopes = {"GET": READ, "PATCH": WRITE}
    # Editing a draft is authoring it: the role that creates campaigns edits them.
    permission_for = {"GET": "view_campaign", "PATCH": "add_campaign"}

    @extend_schema(
        responses=CampaignSerializer,
        summary="A campaign: its state, template, audience and who submitted and approved it",
    )
    def get(self, request, pk: int):
        return Response(CampaignSerializer(get_object_or_404(_campaigns(), pk=pk)).data)

    @extend_schema(
        request=CampaignWriteSerializer(partial=True),
        responses=CampaignSerializer,
        summary="Edit a draft campaign (or one with changes requested)",
        description="Only the fields given change. A campaign in review or later is a 409: "
        "what was submitted is frozen; withdraw or have changes requested first.",
    )
    def patch(self, request, pk: int):
        campaign = get_object_or_404(Campaign, pk=pk)
        body = CampaignWriteSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        changes = {k: v for k, v in body.validated_data.items() if k in request.data}
        if "window" in changes:
            changes["window"] = tuple(changes["window"]) if changes["window"] else None
        try:
            services.campaign_update(campaign=campaign, by=request.user, **changes)
        except services.CampaignError as exc:
            if exc.errors:
                raise _problem(exc) from exc
            raise Conflict(str(exc), code="invalid_state") from exc
        return Response(CampaignSerializer(_campaigns().get(pk=pk)).data)


class ScheduleSerializer(serializers.Serializer):
    at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


ACTION_SUMMARIES = {
    "submit": "Submit a draft campaign for approval",
    "schedule": "Schedule an approved campaign (`at`, or now when it is null)",
    "pause": "Pause a sending campaign (with an optional `reason`)",
    "resume": "Resume a paused campaign",
    "cancel": "Cancel a campaign (with an optional `reason`); unsent messages are not sent",
}


class CampaignActionSchema(CcmAutoSchema):
    """One view serves five operations: each gets the summary of its own action."""

    def get_summary(self):
        view: CampaignActionView = self.view  # type: ignore[assignment]
        return ACTION_SUMMARIES[view.action]


class CampaignActionView(CampaignAPIView):
    """POST /campaigns/{id}/{action}: submit, schedule, pause, resume, cancel."""

    required_scopes = WRITE
    action = ""
    permission_for = {"POST": "change_campaign"}
    schema = CampaignActionSchema()

    @extend_schema(request=ScheduleSerializer, responses=CampaignSerializer)
    def post(self, request, pk: int):
        campaign = get_object_or_404(Campaign, pk=pk)
        body = ScheduleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reason = body.validated_data["reason"]
        actions = {
            "submit": lambda: services.campaign_submit(campaign=campaign, by=request.user),
            "schedule": lambda: services.campaign_schedule(
                campaign=campaign, by=request.user, at=body.validated_data["at"]
            ),
            "pause": lambda: services.campaign_pause(
                campaign=campaign, by=request.user, reason=reason
            ),
            "resume": lambda: services.campaign_resume(campaign=campaign, by=request.user),
            "cancel": lambda: services.campaign_cancel(
                campaign=campaign, by=request.user, reason=reason
            ),
        }
        try:
            actions[self.action]()
        except services.CampaignError as exc:
            if exc.errors:
                raise _problem(exc) from exc
            raise Conflict(str(exc), code="invalid_state") from exc
        return Response(CampaignSerializer(_campaigns().get(pk=pk)).data)


class CampaignProgressView(CampaignAPIView):
    required_scopes = READ

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Live progress: counts, rate, ETA")
    def get(self, request, pk: int):
        return Response(selectors.campaign_progress(get_object_or_404(Campaign, pk=pk)))


class CampaignEvidenceView(CampaignAPIView):
    required_scopes = READ

    @extend_schema(
        responses={(200, "application/zip"): OpenApiTypes.BINARY},
        summary="The campaign's evidence pack (a ZIP file)",
        description="What was sent to whom and when, with the approval and the frozen "
        "audience, as one ZIP file to keep as evidence.",
    )
    def get(self, request, pk: int):
        campaign = get_object_or_404(Campaign, pk=pk)
        return evidence_response(campaign)


def evidence_response(campaign: Campaign) -> HttpResponse:
    response = HttpResponse(evidence.evidence_pack(campaign), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-evidence.zip"'
    return response

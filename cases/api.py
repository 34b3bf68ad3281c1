"""Cases over the API: open, list, read, move through states, notes, milestones, the timeline,
and the exception actions (regenerate, resend).

API keys need the cases:read / cases:write scopes; staff sessions need the model permissions
of their role (agents work cases, operations handle exceptions)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.response import Response

from cases import erasure, exception_cases, selectors, services
from cases.models import Case, CaseState, CaseType, ErasureRequest, ErasureState, Priority, Team
from ccm.api.auth import HasScope, visible_to_caller
from ccm.api.errors import Conflict, Unprocessable
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from ccm.models import ApiKey
from documents.api import composition_problem
from documents.composition import CompositionError
from notifications.errors import IntakeError
from notifications.models import Customer
from notifications.pipeline.recovery import RESENDABLE_CHANNELS, RecoveryError


class CasePermission(permissions.BasePermission):
    """Staff sessions need their role's permission; API keys are held to their scopes."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey):
            return True
        needed = view.session_perms.get(request.method, view.session_perms.get("*", ()))
        missing = [perm for perm in needed if not request.user.has_perm(perm)]
        if missing:
            self.message = f"Your role lacks the permission(s): {', '.join(missing)}."
            return False
        return True


PERMISSIONS: list = [permissions.IsAuthenticated, HasScope, CasePermission]
SCOPES: dict[str, tuple[str, ...]] = {"GET": ("cases:read",), "POST": ("cases:write",)}


class CaseAPIView(CcmAPIView):
    permission_classes = PERMISSIONS
    required_scopes = SCOPES
    session_perms: dict[str, tuple[str, ...]] = {
        "GET": ("cases.view_case",),
        "POST": ("cases.change_case",),
    }


def _cases(request):
    """The cases the caller may see: an API key only those it opened, or of its customer source
    systems."""
    return visible_to_caller(Case.objects.all(), request, source_system="customer__source_system")


def _case(request, ref: str) -> Case:
    """By its public id (what the API returns as `id`) or its reference."""
    lookup: dict[str, object]
    try:
        lookup = {"public_id": uuid.UUID(ref)}
    except ValueError:
        lookup = {"reference": ref}
    return get_object_or_404(
        _cases(request).select_related("customer", "assignee", "parent"), **lookup
    )


@contextmanager
def problems(data_field: str = "data") -> Iterator[None]:
    """Service errors → problem details: a refused transition is 409, bad input 400 naming the
    field, data the template or case type does not accept 422 with `data_field.` paths."""
    try:
        yield
    except services.TransitionRefused as exc:
        raise Conflict(str(exc), code="transition_not_allowed") from exc
    except (services.CaseError, RecoveryError) as exc:
        if not exc.field:
            raise Conflict(str(exc), code="not_possible_now") from exc
        raise serializers.ValidationError({exc.field: [str(exc)]}) from exc
    except IntakeError as exc:
        raise Unprocessable(
            str(exc), code="letter_not_possible", errors=[{"field": exc.field, "message": str(exc)}]
        ) from exc
    except CompositionError as exc:
        problem = composition_problem(exc)
        problem.errors = [
            {**e, "field": f"{data_field}.{e['field']}".rstrip(".")} for e in problem.errors or []
        ]
        raise problem from exc


# --- serializers ---------------------------------------------------------------------------


class MilestoneSerializer(serializers.Serializer):
    code = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]
    template = serializers.CharField(source="template_code")
    due_at = serializers.DateTimeField()
    reached_at = serializers.DateTimeField(allow_null=True)
    reached_by = serializers.CharField(source="reached_by.username", allow_null=True)
    communication = serializers.UUIDField(source="communication.public_id", allow_null=True)


class NoteSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    body = serializers.CharField(max_length=10000)
    author = serializers.CharField(source="author.username", read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True)


class CaseSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    type = serializers.CharField(source="case_type")
    customer = serializers.CharField(source="customer.external_ref", allow_null=True)
    assignee = serializers.CharField(source="assignee.username", allow_null=True)
    flagged = serializers.SerializerMethodField()

    class Meta:
        model = Case
        fields = [
            "id",
            "reference",
            "type",
            "state",
            "subject",
            "customer",
            "priority",
            "team",
            "assignee",
            "received_at",
            "next_due_at",
            "sla_status",
            "flagged",
            "exception_kind",
            "created_at",
            "updated_at",
        ]

    def get_flagged(self, case: Case) -> bool:
        return case.sla_status != "on_track"


class CaseDetailSerializer(CaseSerializer):
    parent = serializers.CharField(  # type: ignore[assignment]
        source="parent.reference", allow_null=True
    )
    milestones = MilestoneSerializer(many=True)
    notes = NoteSerializer(many=True)
    communications = serializers.SerializerMethodField()
    documents = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()
    exception = serializers.SerializerMethodField()
    allowed_actions = serializers.SerializerMethodField()

    class Meta(CaseSerializer.Meta):
        fields = [
            *CaseSerializer.Meta.fields,
            "description",
            "details",
            "parent",
            "paused_at",
            "paused_business_days",
            "resolution",
            "resolved_at",
            "closed_at",
            "milestones",
            "notes",
            "communications",
            "documents",
            "attachments",
            "exception",
            "allowed_actions",
        ]

    def get_communications(self, case: Case) -> list[dict]:
        links = case.communication_links.select_related("communication__template")
        return [
            {
                "id": link.communication.public_id,
                "role": link.role,
                "template": link.communication.template.code,
                "status": link.communication.state,
                "url": f"/api/v1/communications/{link.communication.public_id}",
            }
            for link in links
        ]

    def get_documents(self, case: Case) -> list[dict]:
        return [
            {
                "id": link.document.public_id,
                "note": link.note,
                "url": f"/api/v1/documents/{link.document.public_id}",
            }
            for link in case.document_links.select_related("document")
        ]

    def get_attachments(self, case: Case) -> list[dict]:
        return [
            {
                "id": a.pk,
                "name": a.name,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
                "created_at": a.created_at,
            }
            for a in case.attachments.all()
        ]

    def get_exception(self, case: Case) -> dict | None:
        if not case.exception_kind:
            return None
        return {
            "kind": case.exception_kind,
            "occurrences": case.occurrences,
            "last_occurred_at": case.last_occurred_at,
            "error": case.error_details,
            "next_action": case.next_action,
            "recovery": {
                "action": case.recovery_action,
                "communication": case.recovery_communication.public_id
                if case.recovery_communication
                else None,
                "delivery": case.recovery_delivery_id,
            }
            if case.recovery_action
            else None,
        }

    def get_allowed_actions(self, case: Case) -> list[str]:
        return services.allowed_actions(case)


class CaseOpenSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=CaseType.choices)
    subject = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    customer = serializers.CharField(required=False, help_text="The customer's external reference")
    source_system = serializers.CharField(default="default")
    priority = serializers.ChoiceField(choices=Priority.choices, required=False)
    team = serializers.ChoiceField(choices=Team.choices, required=False)
    details = serializers.DictField(required=False, help_text="What the case type needs")
    received_at = serializers.DateTimeField(required=False, help_text="Starts the SLA clock")
    assignee = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        required=False,
    )


class TransitionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=list(services.ACTIONS))
    assignee = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        required=False,
        help_text="assign: who takes the case",
    )
    reason = serializers.CharField(required=False, default="", help_text="wait, reopen: why")
    resolution = serializers.CharField(required=False, default="", help_text="resolve: how")

    def validate(self, attrs):
        needs = {"assign": "assignee", "wait": "reason", "resolve": "resolution"}
        wanted = needs.get(attrs["action"])
        if wanted and not attrs.get(wanted):
            raise serializers.ValidationError({wanted: [f"'{attrs['action']}' needs {wanted}."]})
        return attrs


class MilestoneReachSerializer(serializers.Serializer):
    data = serializers.DictField(  # type: ignore[assignment]
        required=False, default=dict, help_text="Letter data beyond what the case supplies"
    )


class RegenerateSerializer(serializers.Serializer):
    data = serializers.DictField(  # type: ignore[assignment]
        help_text="The corrected data, in full"
    )


class ResendSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=list(RESENDABLE_CHANNELS))
    address = serializers.JSONField(
        help_text="An email address or phone number, or postal address lines for print"
    )

    def validate_address(self, value):
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise serializers.ValidationError("Give an address string, or a list of address lines.")


class TimelineEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    kind = serializers.CharField()
    action = serializers.CharField()
    actor = serializers.CharField()
    detail = serializers.DictField()


# --- views -----------------------------------------------------------------------------------

BOOL_CHOICES = {"true": True, "1": True, "false": False, "0": False}
LIST_PARAMETERS = [
    OpenApiParameter("type", str, enum=CaseType.values),
    OpenApiParameter("state", str, enum=CaseState.values),
    OpenApiParameter("team", str, enum=Team.values),
    OpenApiParameter("assignee", str, description="username"),
    OpenApiParameter("customer", str, description="the customer's external reference"),
    OpenApiParameter("flagged", bool, description="approaching or past a deadline"),
    OpenApiParameter("overdue", bool, description="past its next deadline now"),
]


def _choice_param(request, name: str, choices: list[str]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise serializers.ValidationError({name: [f"Use one of: {', '.join(choices)}."]})
    return raw


def _bool_param(request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() not in BOOL_CHOICES:
        raise serializers.ValidationError({name: ["Use true or false."]})
    return BOOL_CHOICES[raw.lower()]


class CaseListCreateView(CcmGenericAPIView, generics.ListAPIView):
    permission_classes = PERMISSIONS
    required_scopes = SCOPES
    serializer_class = CaseSerializer
    session_perms = {"GET": ("cases.view_case",), "POST": ("cases.add_case",)}

    def get_queryset(self):
        params = self.request.query_params
        return selectors.case_list(
            within=_cases(self.request),
            case_type=_choice_param(self.request, "type", CaseType.values),
            state=_choice_param(self.request, "state", CaseState.values),
            team=_choice_param(self.request, "team", Team.values),
            assignee=params.get("assignee"),
            customer=params.get("customer"),
            flagged=_bool_param(self.request, "flagged"),
            overdue=_bool_param(self.request, "overdue"),
        )

    @extend_schema(parameters=LIST_PARAMETERS, summary="Cases, newest first, with filters")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=CaseOpenSerializer, responses={201: CaseDetailSerializer}, summary="Open a case"
    )
    def post(self, request):
        body = CaseOpenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        params = dict(body.validated_data)
        customer = None
        if params.get("customer"):
            customer = Customer.objects.filter(
                source_system=params["source_system"], external_ref=params["customer"]
            ).first()
            if customer is None:
                raise Unprocessable(
                    f"There is no customer {params['customer']!r}; "
                    "create it with POST /api/v1/customers.",
                    code="unknown_customer",
                    errors=[{"field": "customer", "message": "unknown customer"}],
                )
        with problems(data_field="details"):
            case = services.case_open(
                case_type=params["type"],
                subject=params["subject"],
                description=params["description"],
                customer=customer,
                priority=params.get("priority"),
                team=params.get("team"),
                details=params.get("details"),
                received_at=params.get("received_at"),
                assignee=params.get("assignee"),
                by=request.user,
            )
        return Response(CaseDetailSerializer(case).data, status=status.HTTP_201_CREATED)


class CaseDetailView(CaseAPIView):
    @extend_schema(responses=CaseDetailSerializer, summary="A case with its milestones and links")
    def get(self, request, ref: str):
        return Response(CaseDetailSerializer(_case(request, ref)).data)


TRANSITIONS: dict[str, Callable[..., Case]] = {
    "assign": lambda case, by, p: services.case_assign(case=case, assignee=p["assignee"], by=by),
    "start": lambda case, by, p: services.case_start(case=case, by=by),
    "wait": lambda case, by, p: services.case_wait(case=case, by=by, reason=p["reason"]),
    "resume": lambda case, by, p: services.case_resume(case=case, by=by),
    "resolve": lambda case, by, p: services.case_resolve(
        case=case, by=by, resolution=p["resolution"]
    ),
    "close": lambda case, by, p: services.case_close(case=case, by=by),
    "reopen": lambda case, by, p: services.case_reopen(case=case, by=by, reason=p["reason"]),
}


class CaseTransitionView(CaseAPIView):
    @extend_schema(
        request=TransitionSerializer,
        responses=CaseDetailSerializer,
        summary="Move a case: assign, start, wait (stops the clock), resume, resolve, close, "
        "reopen. A move its state does not allow is a 409 naming the possible ones.",
    )
    def post(self, request, ref: str):
        case = _case(request, ref)
        body = TransitionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with problems():
            moved = TRANSITIONS[body.validated_data["action"]](
                case, request.user, body.validated_data
            )
        return Response(CaseDetailSerializer(moved).data)


class CaseNoteView(CaseAPIView):
    @extend_schema(request=NoteSerializer, responses={201: NoteSerializer}, summary="Add a note")
    def post(self, request, ref: str):
        case = _case(request, ref)
        body = NoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with problems():
            note = services.case_note_add(
                case=case, body=body.validated_data["body"], by=request.user
            )
        return Response(NoteSerializer(note).data, status=status.HTTP_201_CREATED)


class MilestoneReachView(CaseAPIView):
    @extend_schema(
        request=MilestoneReachSerializer,
        responses=MilestoneSerializer,
        summary="Reach a milestone; one with a letter requests it (422 names missing data)",
    )
    def post(self, request, ref: str, code: str):
        case = _case(request, ref)
        get_object_or_404(case.milestones, code=code)
        body = MilestoneReachSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with problems():
            milestone = services.milestone_reach(
                case=case, code=code, by=request.user, data=body.validated_data["data"]
            )
        return Response(MilestoneSerializer(milestone).data)


class CaseTimelineView(CaseAPIView):
    @extend_schema(
        responses=TimelineEntrySerializer(many=True),
        summary="Everything that happened to the case and its communications, oldest first",
    )
    def get(self, request, ref: str):
        entries = selectors.case_timeline(_case(request, ref))
        return Response(TimelineEntrySerializer(entries, many=True).data)


class ExceptionActionView(CaseAPIView):
    session_perms = {"POST": ("cases.change_case", "cases.handle_exception")}


class CaseRegenerateView(ExceptionActionView):
    @extend_schema(
        request=RegenerateSerializer,
        responses={202: CaseDetailSerializer, 422: OpenApiTypes.OBJECT},
        summary="Compose the failed communication again with corrected data",
    )
    def post(self, request, ref: str):
        case = _case(request, ref)
        body = RegenerateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with problems():
            case = exception_cases.exception_regenerate(
                case=case, data=body.validated_data["data"], by=request.user
            )
        return Response(CaseDetailSerializer(case).data, status=status.HTTP_202_ACCEPTED)


class CaseResendView(ExceptionActionView):
    @extend_schema(
        request=ResendSerializer,
        responses={202: CaseDetailSerializer},
        summary="Send the communication again on another channel or address",
    )
    def post(self, request, ref: str):
        case = _case(request, ref)
        body = ResendSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with problems():
            case = exception_cases.exception_resend(
                case=case,
                channel=body.validated_data["channel"],
                address=body.validated_data["address"],
                by=request.user,
            )
        return Response(CaseDetailSerializer(case).data, status=status.HTTP_202_ACCEPTED)


# --- erasure -------------------------------------------------------------------------------


class ErasureCreateSerializer(serializers.Serializer):
    grounds = serializers.CharField(
        max_length=300, help_text="The request: who asked, how and when (kept with the outcome)"
    )


class ErasureSerializer(serializers.ModelSerializer):
    class Meta:
        model = ErasureRequest
        fields = ["id", "state", "grounds", "reason", "due_at", "erased", "requested_at", "done_at"]


class CustomerErasureView(CcmAPIView):
    """The customer's right to erasure (a staff session needs `cases.add_erasurerequest`)."""

    permission_classes = PERMISSIONS
    required_scopes = ("customers:write",)
    session_perms = {"POST": ("cases.add_erasurerequest",)}

    @extend_schema(
        request=ErasureCreateSerializer,
        parameters=[
            OpenApiParameter("source_system", str, default="default", description="Whose ref")
        ],
        responses={200: ErasureSerializer, 202: ErasureSerializer, 409: OpenApiTypes.OBJECT},
        summary="Erase a customer's personal data",
        description=(
            "200: erased (every personal datum emptied or pseudonymised, documents and "
            "attachments deleted from storage; ids, states and hashes kept). 202: deferred to "
            "`due_at`, because communications kept by law are within their retention (`reason` "
            "says which); it is carried out then. 409: refused, because a legal hold stands "
            "(the problem's detail gives it); ask again once it is released."
        ),
    )
    def post(self, request, ref: str):
        source_system = request.query_params.get("source_system", "default")
        if "\x00" in ref or "\x00" in source_system:
            raise serializers.ValidationError({"source_system": ["Must not contain NUL."]})
        customer = get_object_or_404(Customer, source_system=source_system, external_ref=ref)
        body = ErasureCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        done = erasure.customer_erase(
            customer=customer, by=request.user, grounds=body.validated_data["grounds"]
        )
        if done.state == ErasureState.REFUSED:
            raise Conflict(done.reason, code="legal_hold")
        code = status.HTTP_200_OK if done.state == ErasureState.DONE else status.HTTP_202_ACCEPTED
        return Response(ErasureSerializer(done).data, status=code)

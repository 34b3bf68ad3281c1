"""Customers, consent and communications over the API."""

from __future__ import annotations

import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from ccm.api.auth import visible_to_caller
from ccm.api.errors import Conflict, Unprocessable
from ccm.api.filters import IsoDateTimeFilter
from ccm.api.idempotency import HEADER, client_of
from ccm.api.schema import final_states_declare
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from documents.api import composition_problem
from documents.composition import CompositionError
from documents.models import Category
from notifications import selectors
from notifications.api_examples import (
    CANCEL_EXAMPLE,
    CANCELLED_EXAMPLE,
    COMMUNICATION_ACCEPTED_EXAMPLE,
    COMMUNICATION_DETAIL_EXAMPLE,
    COMMUNICATION_EXAMPLE,
    COMMUNICATION_REQUEST_EXAMPLE,
    CUSTOMER_EXAMPLE,
    CUSTOMER_WRITE_EXAMPLE,
)
from notifications.campaigns import services as campaign_services
from notifications.customers import services as customer_services
from notifications.customers.api import SOURCE_PARAM, customer_or_404
from notifications.errors import IntakeError
from notifications.models import (
    Channel,
    CommState,
    Communication,
    ConsentRecord,
    ContactKind,
    Customer,
    DeliveryState,
    EventType,
    LegalBasis,
)
from notifications.pipeline import history, services
from notifications.pipeline.api import CommunicationRequestSerializer

# A delivery is a plain state field (not a state machine): a bounce may still follow "delivered".
final_states_declare(DeliveryState, final=[DeliveryState.BOUNCED, DeliveryState.FAILED])


class ContactPointSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ContactKind.choices)
    value = serializers.CharField()
    is_primary = serializers.BooleanField()
    valid = serializers.BooleanField()
    invalid_reason = serializers.CharField()


class CustomerSerializer(serializers.ModelSerializer):
    contacts = ContactPointSerializer(many=True, read_only=True)

    class Meta:
        model = Customer
        fields = [
            "source_system",
            "external_ref",
            "name",
            "salutation",
            "language",
            "time_zone",
            "postal_address",
            "postal_address_valid",
            "attributes",
            "contacts",
            "created_at",
            "updated_at",
        ]


class CustomerWriteSerializer(serializers.Serializer):
    external_ref = serializers.CharField(max_length=100)
    source_system = serializers.CharField(max_length=100, default="default")
    name = serializers.CharField(max_length=200)
    salutation = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="How letters greet the customer, e.g. 'Ms Hartley' (default: the name)",
    )
    language = serializers.RegexField(r"^[a-z]{2}$", required=False)
    time_zone = serializers.CharField(
        max_length=64,
        required=False,
        allow_blank=True,
        help_text="IANA time zone, e.g. Europe/Berlin (blank: the business's); campaign send "
        "windows can be read in it",
    )
    postal_address = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=8, required=False
    )
    emails = serializers.ListField(child=serializers.CharField(max_length=254), required=False)
    phones = serializers.ListField(child=serializers.CharField(max_length=40), required=False)
    # Replaces the customer's attributes (what campaign segments filter on) when given.
    attributes = serializers.DictField(required=False)

    def validate_emails(self, value: list[str]) -> list[str]:
        return self._each(value, customer_services.normalise_email)

    def validate_time_zone(self, value: str) -> str:
        try:
            return customer_services.time_zone_checked(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc

    def validate_phones(self, value: list[str]) -> list[str]:
        return self._each(value, customer_services.normalise_phone)

    @staticmethod
    def _each(values: list[str], normalise) -> list[str]:
        out, errors = [], {}
        for i, raw in enumerate(values):
            try:
                out.append(normalise(raw))
            except DjangoValidationError as exc:
                errors[i] = exc.messages
        if errors:
            raise serializers.ValidationError(errors)  # type: ignore[arg-type]
        return out


class CustomerUpsertView(CcmAPIView):
    required_scopes = ("customers:write",)

    @extend_schema(
        request=CustomerWriteSerializer,
        responses={200: CustomerSerializer, 201: CustomerSerializer},
        summary="Create or update a customer by external reference",
        description="Creates the customer (201) or, when `source_system` + `external_ref` "
        "already exist, updates it (200). Emails and phone numbers are normalised (phones to "
        "E.164); an invalid one is a 400 naming it, e.g. `emails[1]`.",
        examples=[CUSTOMER_WRITE_EXAMPLE, CUSTOMER_EXAMPLE],
    )
    def post(self, request):
        body = CustomerWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        attributes = fields.pop("attributes", None)
        with transaction.atomic():
            customer, created = customer_services.customer_upsert(**fields, by=request.user)
            if attributes is not None:
                campaign_services.customer_attributes_set(
                    customer=customer, attributes=attributes, by=request.user
                )
        return Response(
            CustomerSerializer(customer).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class CustomerDetailView(CcmAPIView):
    required_scopes = {"GET": ("customers:read",), "PATCH": ("customers:write",)}

    @extend_schema(
        responses=CustomerSerializer,
        parameters=[SOURCE_PARAM],
        summary="A customer, with contact points",
        examples=[CUSTOMER_EXAMPLE],
    )
    def get(self, request, ref: str):
        return Response(CustomerSerializer(customer_or_404(request, ref)).data)

    @extend_schema(
        request=CustomerWriteSerializer(partial=True),
        responses=CustomerSerializer,
        parameters=[SOURCE_PARAM],
        summary="Change some of a customer's details",
        description="Only the fields given change; `external_ref` cannot be changed.",
        examples=[
            OpenApiExample(
                "A new postal address",
                request_only=True,
                value={"postal_address": ["2 Difference Lane", "Cambridge", "CB1 2AB"]},
            ),
            CUSTOMER_EXAMPLE,
        ],
    )
    def patch(self, request, ref: str):
        customer = customer_or_404(request, ref)
        body = CustomerWriteSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        fields = {k: v for k, v in body.validated_data.items() if k not in {"external_ref"}}
        fields.setdefault("name", customer.name)
        fields["source_system"] = customer.source_system
        attributes = fields.pop("attributes", None)
        with transaction.atomic():
            updated, _ = customer_services.customer_upsert(
                external_ref=customer.external_ref, **fields, by=request.user
            )
            if attributes is not None:
                campaign_services.customer_attributes_set(
                    customer=updated, attributes=attributes, by=request.user
                )
        return Response(CustomerSerializer(updated).data)


class ConsentSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConsentRecord
        fields = [
            "channel",
            "category",
            "granted",
            "legal_basis",
            "source",
            "recorded_at",
            "actor_label",
            "evidence",
        ]
        read_only_fields = ["recorded_at", "actor_label"]


class ConsentWriteSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=Channel.choices)
    category = serializers.ChoiceField(choices=Category.choices)
    granted = serializers.BooleanField()
    legal_basis = serializers.ChoiceField(choices=LegalBasis.choices)
    source = serializers.CharField(max_length=50, default="api")  # type: ignore[assignment]
    evidence = serializers.JSONField(required=False)


class PreferenceSerializer(serializers.Serializer):
    category = serializers.ChoiceField(choices=Category.choices)
    channel = serializers.ChoiceField(choices=Channel.choices)
    allowed = serializers.BooleanField()


class CustomerConsentView(CcmAPIView):
    required_scopes = {"GET": ("customers:read",), "POST": ("customers:write",)}

    @extend_schema(
        responses=ConsentSerializer(many=True),
        parameters=[SOURCE_PARAM],
        summary="The customer's consent ledger (the latest 500 records)",
    )
    def get(self, request, ref: str):
        customer = customer_or_404(request, ref)
        return Response(ConsentSerializer(customer.consents.all()[:500], many=True).data)

    @extend_schema(
        request=ConsentWriteSerializer,
        responses={201: ConsentSerializer},
        parameters=[SOURCE_PARAM],
        summary="Record an opt-in or opt-out (appended to the consent ledger)",
    )
    def post(self, request, ref: str):
        customer = customer_or_404(request, ref)
        body = ConsentWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        record = customer_services.consent_record(
            customer=customer, **body.validated_data, by=request.user
        )
        return Response(ConsentSerializer(record).data, status=status.HTTP_201_CREATED)


class CustomerPreferencesView(CcmAPIView):
    required_scopes = ("customers:read",)

    @extend_schema(
        responses=PreferenceSerializer(many=True),
        parameters=[SOURCE_PARAM],
        summary="The customer's channel preferences, per category",
    )
    def get(self, request, ref: str):
        customer = customer_or_404(request, ref)
        return Response(
            PreferenceSerializer(
                customer.preferences.order_by("category", "channel"), many=True
            ).data
        )


# --- communications -------------------------------------------------------------------------


# One checker for every request (as the batch endpoint has one for every item): DRF deep-copies
# a serializer's fields for each instance it builds, which cost more than the check itself. It
# keeps no state of a request (`run_validation` returns the data or raises with the fields).
_REQUEST_CHECK = CommunicationRequestSerializer()


class CommunicationAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=CommState.choices)
    url = serializers.CharField(help_text="Where to GET the communication")


class DeliveryEventSerializer(serializers.Serializer):
    event_type = serializers.ChoiceField(choices=EventType.choices)
    provider = serializers.CharField()
    occurred_at = serializers.DateTimeField()
    description = serializers.CharField()


class DeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    channel = serializers.ChoiceField(choices=Channel.choices)
    address = serializers.CharField()
    state = serializers.ChoiceField(choices=DeliveryState.choices)
    message_id = serializers.CharField()
    provider_message_id = serializers.CharField()
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    sent_at = serializers.DateTimeField(allow_null=True)
    meta = serializers.JSONField(help_text="Channel details: SMS segments, print batch, device")
    events = DeliveryEventSerializer(many=True)


class CommunicationSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    status = serializers.ChoiceField(source="state", choices=CommState.choices)
    template = serializers.CharField(source="template.code")
    template_version = serializers.IntegerField(source="template_version.number", allow_null=True)
    customer = serializers.CharField(source="customer.external_ref")

    class Meta:
        model = Communication
        fields = [
            "id",
            "status",
            "template",
            "template_version",
            "customer",
            "category",
            "urgency",
            "source",
            "correlation_id",
            "created_at",
            "sent_at",
            "viewed_at",
            "actioned_at",
            "failure_reason",
            "failure_errors",
        ]


class CommunicationDetailSerializer(CommunicationSerializer):
    decision_trace = serializers.JSONField()
    deliveries = DeliverySerializer(many=True)
    documents = serializers.SerializerMethodField()
    timeline = serializers.SerializerMethodField()
    consent_applied = serializers.SerializerMethodField()

    class Meta(CommunicationSerializer.Meta):
        fields = [
            *CommunicationSerializer.Meta.fields,
            "decision_trace",
            "deliveries",
            "documents",
            "timeline",
            "consent_applied",
        ]

    def get_documents(self, communication) -> list[dict]:
        if communication.document_id is None:
            return []
        request = self.context["request"]
        return [
            {
                "id": communication.document.public_id,
                "sha256": communication.document.sha256,
                "pdf_url": request.build_absolute_uri(
                    f"/api/v1/documents/{communication.document.public_id}/pdf"
                ),
            }
        ]

    def get_timeline(self, communication) -> list[dict]:
        return [
            {"at": e.created_at, "action": e.action, "actor": e.actor_label, "detail": e.after}
            for e in history.communication_history(communication)
        ]

    def get_consent_applied(self, communication) -> list[dict]:
        return selectors.consent_applied(communication)


class CommunicationFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(field_name="state", choices=CommState.choices)
    template = django_filters.CharFilter(field_name="template__code")
    customer = django_filters.CharFilter(field_name="customer__external_ref")
    correlation_id = django_filters.CharFilter()
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Communication
        fields = ["status", "template", "customer", "correlation_id", "category", "source"]


@extend_schema_view(
    get=extend_schema(
        summary="List communications, newest first",
        description="Filter by `status`, `template`, `customer`, `correlation_id`, `category`, "
        "`source` and creation time; an unknown status, category or source is a 400 naming "
        "the parameter.",
        examples=[COMMUNICATION_EXAMPLE],
    )
)
class CommunicationListCreateView(CcmGenericAPIView, generics.ListAPIView):
    required_scopes = {"GET": ("communications:read",), "POST": ("communications:write",)}
    serializer_class = CommunicationSerializer
    filterset_class = CommunicationFilter

    def get_queryset(self):
        # A list row shows the version's number: its content (tens of KB) is left unread, and
        # so are the communication's own data, rendition and decision trace.
        return (
            _communications(self.request)
            .select_related("template", "template_version", "customer")
            .defer("data", "rendered", "decision_trace", "template_version__content")
        )

    @extend_schema(
        request=CommunicationRequestSerializer,
        responses={202: CommunicationAcceptedSerializer},
        summary="Request a communication (composed and sent in the background)",
        description="The data is checked against the template's schema at once: what it "
        "refuses is a 422 whose `errors[].field` are paths under `data`. Accepted requests "
        "answer 202 with the communication's id; follow its status with GET or a webhook. "
        "Send an `Idempotency-Key` so a retry never sends the notice twice.",
        examples=[COMMUNICATION_REQUEST_EXAMPLE, COMMUNICATION_ACCEPTED_EXAMPLE],
    )
    def post(self, request):
        params = _REQUEST_CHECK.run_validation(request.data)
        customer = selectors.customer_by_reference(
            source_system=params["source_system"], external_ref=params["customer"]
        )
        if customer is None:
            raise Unprocessable(
                f"There is no customer {params['customer']!r}; "
                "create it with POST /api/v1/customers.",
                code="unknown_customer",
                errors=[{"field": "customer", "message": "unknown customer"}],
            )
        try:
            communication, _ = services.communication_request(
                template_code=params["template"],
                customer=customer,
                data=params["data"],
                client=client_of(request),
                by=request.user,
                idempotency_key=request.headers.get(HEADER),
                category=params.get("category"),
                urgency=params["urgency"],
                channel_override=params["channel"],
                correlation_id=params["correlation_id"],
            )
        except IntakeError as exc:
            raise Unprocessable(
                str(exc),
                code="unknown_template",
                errors=[{"field": exc.field, "message": str(exc)}],
            ) from exc
        except CompositionError as exc:
            problem = composition_problem(exc)
            problem.errors = [
                {**e, "field": f"data.{e['field']}".rstrip(".")} for e in problem.errors or []
            ]
            raise problem from exc
        return Response(
            {
                "id": communication.public_id,
                "status": communication.state,
                "url": request.build_absolute_uri(
                    f"/api/v1/communications/{communication.public_id}"
                ),
            },
            status=status.HTTP_202_ACCEPTED,
        )


def _communications(request):
    """The communications the caller may see (an API key: its own and its source systems')."""
    return visible_to_caller(
        Communication.objects.all(), request, source_system="customer__source_system"
    )


@extend_schema_view(
    get=extend_schema(
        summary="A communication: its status, deliveries, documents and history",
        examples=[COMMUNICATION_DETAIL_EXAMPLE],
    )
)
class CommunicationDetailView(CcmGenericAPIView, generics.RetrieveAPIView):
    required_scopes = ("communications:read",)
    serializer_class = CommunicationDetailSerializer
    lookup_field = "public_id"

    def get_queryset(self):
        return (
            _communications(self.request)
            .select_related("template", "template_version", "customer", "document")
            .prefetch_related("deliveries__events")
        )


class CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class CommunicationCancelView(CcmAPIView):
    required_scopes = ("communications:write",)

    @extend_schema(
        request=CancelSerializer,
        responses=CommunicationSerializer,
        summary="Cancel a communication that has not been sent",
        description="Possible until it is dispatched; later it is a 409 saying its status.",
        examples=[CANCEL_EXAMPLE, CANCELLED_EXAMPLE],
    )
    def post(self, request, public_id):
        communication = get_object_or_404(_communications(request), public_id=public_id)
        body = CancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            cancelled = services.communication_cancel(
                communication=communication, by=request.user, reason=body.validated_data["reason"]
            )
        except IntakeError as exc:
            raise Conflict(str(exc), code="not_cancellable") from exc
        return Response(CommunicationSerializer(cancelled).data)

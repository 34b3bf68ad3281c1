"""Webhook subscriptions and their delivery log over the API; the webhook's own OpenAPI entry.

A caller sees and changes only its own subscriptions (those made with its API key, or its
session); another client's are answered with 404, as if they did not exist."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    OpenApiWebhook,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from ccm.api.errors import Conflict
from ccm.api.idempotency import client_of
from ccm.api.schema import final_states_declare
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from ccm.models import ApiKey
from notifications.models import (
    Channel,
    CommState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEvent,
    WebhookSubscription,
)
from notifications.webhooks import services as webhooks

# Replaying an event moves its delivery back to pending, whatever state it reached.
final_states_declare(WebhookDeliveryState, final=[])

SUBSCRIPTION_EXAMPLE_VALUE = {
    "id": 12,
    "url": "https://crm.example.com/hooks/ccm",
    "events": ["sent", "delivered", "failed"],
    "description": "CRM status feed",
    "active": True,
    "created_at": "2026-05-01T09:30:00Z",
    "updated_at": "2026-05-01T09:30:00Z",
}
SUBSCRIPTION_EXAMPLE = OpenApiExample(
    "A subscription", response_only=True, value=SUBSCRIPTION_EXAMPLE_VALUE
)

READ = ("webhooks:read",)
WRITE = ("webhooks:write",)


class WebhookSubscriptionSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookSubscription
        fields = ["id", "url", "events", "description", "active", "created_at", "updated_at"]


class WebhookSubscriptionCreatedSerializer(WebhookSubscriptionSerializer):
    secret = serializers.CharField(
        help_text="Signs every event (CCM-Webhook-Signature). Shown only in this response."
    )

    class Meta(WebhookSubscriptionSerializer.Meta):
        fields = [*WebhookSubscriptionSerializer.Meta.fields, "secret"]


class WebhookSubscriptionWriteSerializer(serializers.Serializer):
    url = serializers.CharField(
        max_length=500, help_text="Where events are POSTed: https://, a public address"
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.choices),
        allow_empty=False,
        required=False,
        help_text="The events to receive; all of them when left out",
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)


@contextmanager
def _field_errors() -> Iterator[None]:
    """The service's refusals as field errors (400 problem, `errors[].field` = url/events)."""
    try:
        yield
    except webhooks.WebhookUrlRefused as exc:
        raise serializers.ValidationError({"url": [str(exc)]}) from exc
    except webhooks.WebhookError as exc:
        raise serializers.ValidationError({"events": [str(exc)]}) from exc


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "attempted_at", "status_code", "error", "duration_ms"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    communication = serializers.UUIDField(source="communication.public_id", read_only=True)
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "event_type",
            "communication",
            "state",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "response_excerpt",
            "created_at",
            "delivered_at",
            "replayed_at",
            "replay_count",
            "payload",
            "attempt_log",
        ]


def _subscriptions(request):
    return WebhookSubscription.objects.filter(
        client=client_of(request), deleted_at__isnull=True
    ).select_related("api_key")


@extend_schema_view(
    get=extend_schema(summary="Your webhook subscriptions", examples=[SUBSCRIPTION_EXAMPLE])
)
class WebhookListCreateView(CcmGenericAPIView, generics.ListAPIView):
    required_scopes = {"GET": READ, "POST": WRITE}
    serializer_class = WebhookSubscriptionSerializer

    def get_queryset(self):
        return _subscriptions(self.request)

    @extend_schema(
        request=WebhookSubscriptionWriteSerializer,
        responses={201: WebhookSubscriptionCreatedSerializer},
        summary="Subscribe a URL to status events of your communications",
        description="The response carries the signing secret; it is never shown again. "
        "The URL must be https:// and reach a public address. Leave `events` out for all "
        "of them.",
        examples=[
            OpenApiExample(
                "Status events for a CRM",
                request_only=True,
                value={
                    "url": "https://crm.example.com/hooks/ccm",
                    "events": ["sent", "delivered", "failed"],
                    "description": "CRM status feed",
                },
            ),
            OpenApiExample(
                "Subscribed",
                response_only=True,
                status_codes=["201"],
                value={
                    **SUBSCRIPTION_EXAMPLE_VALUE,
                    "secret": "whsec_4q8ZlN0pV2xYc7Rk1mT9bW3sF6hJ5dGa",
                },
            ),
        ],
    )
    def post(self, request):
        body = WebhookSubscriptionWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with _field_errors():
            subscription = webhooks.webhook_subscription_create(
                **body.validated_data,
                client=client_of(request),
                api_key=request.auth if isinstance(request.auth, ApiKey) else None,
                by=request.user,
            )
        data = WebhookSubscriptionSerializer(subscription).data | {"secret": subscription.secret}
        return Response(data, status=status.HTTP_201_CREATED)


class WebhookDetailView(CcmAPIView):
    required_scopes = {"GET": READ, "PATCH": WRITE, "DELETE": WRITE}

    @extend_schema(
        responses=WebhookSubscriptionSerializer,
        summary="A subscription",
        examples=[SUBSCRIPTION_EXAMPLE],
    )
    def get(self, request, pk: int):
        subscription = get_object_or_404(_subscriptions(request), pk=pk)
        return Response(WebhookSubscriptionSerializer(subscription).data)

    @extend_schema(
        request=WebhookSubscriptionWriteSerializer(partial=True),
        responses=WebhookSubscriptionSerializer,
        summary="Change the URL, the events, or pause it (active: false)",
        examples=[
            OpenApiExample("Pause it", request_only=True, value={"active": False}),
            OpenApiExample(
                "Paused",
                response_only=True,
                value={**SUBSCRIPTION_EXAMPLE_VALUE, "active": False},
            ),
        ],
    )
    def patch(self, request, pk: int):
        subscription = get_object_or_404(_subscriptions(request), pk=pk)
        body = WebhookSubscriptionWriteSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        with _field_errors():
            updated = webhooks.webhook_subscription_update(
                subscription=subscription, by=request.user, **body.validated_data
            )
        return Response(WebhookSubscriptionSerializer(updated).data)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Delete a subscription (its delivery log is kept)",
    )
    def delete(self, request, pk: int):
        subscription = get_object_or_404(_subscriptions(request), pk=pk)
        webhooks.webhook_subscription_delete(subscription=subscription, by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=WebhookDeliveryState.choices)
    event_type = django_filters.ChoiceFilter(choices=WebhookEvent.choices)
    communication = django_filters.NumberFilter()

    class Meta:
        model = WebhookDelivery
        fields = ["state", "event_type", "communication"]


class WebhookDeliveryListView(CcmGenericAPIView, generics.ListAPIView):
    required_scopes = READ
    serializer_class = WebhookDeliverySerializer
    filterset_class = WebhookDeliveryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return WebhookDelivery.objects.none()
        subscription = get_object_or_404(_subscriptions(self.request), pk=self.kwargs["pk"])
        return subscription.deliveries.prefetch_related("attempt_log")

    @extend_schema(summary="The events sent to a subscription, newest first, with attempts")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class WebhookReplayView(CcmAPIView):
    required_scopes = WRITE

    @extend_schema(
        request=None,
        responses={202: WebhookDeliverySerializer},
        summary="Send an event again, with the same event id",
    )
    def post(self, request, pk: int, delivery_id: int):
        subscription = get_object_or_404(_subscriptions(request), pk=pk)
        delivery = get_object_or_404(subscription.deliveries, pk=delivery_id)
        try:
            replayed = webhooks.webhook_delivery_replay(delivery=delivery, by=request.user)
        except webhooks.WebhookError as exc:
            raise Conflict(str(exc), code="webhook_not_replayable") from exc
        return Response(WebhookDeliverySerializer(replayed).data, status=status.HTTP_202_ACCEPTED)


# --- what the receiver gets (OpenAPI 3.1 `webhooks`) ------------------------------------------


class WebhookEventDataSerializer(serializers.Serializer):
    communication_id = serializers.UUIDField(
        help_text="The communication's id in the API (GET /api/v1/communications/<id>)"
    )
    status = serializers.ChoiceField(
        choices=CommState.choices, help_text="The communication's status the event reports"
    )
    template_code = serializers.CharField()
    customer_ref = serializers.CharField(help_text="The customer's external reference")
    customer_source_system = serializers.CharField()
    correlation_id = serializers.CharField(help_text="As given when requesting it; may be empty")
    channel = serializers.ChoiceField(
        choices=Channel.choices,
        allow_null=True,
        help_text="sent, delivered, failed: the channel concerned",
    )
    reason = serializers.CharField(
        allow_null=True, help_text="failed, undeliverable: why, in words"
    )
    delivery_id = serializers.IntegerField(
        allow_null=True, help_text="failed: the delivery that failed (null: composition failed)"
    )


class WebhookEventSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="The event id (= CCM-Webhook-Id): dedupe by it")
    type = serializers.ChoiceField(choices=WebhookEvent.choices)
    created_at = serializers.DateTimeField(help_text="When it happened")
    data = WebhookEventDataSerializer()  # type: ignore[assignment]


WEBHOOK_DESCRIPTION = """\
CCM POSTs this JSON to each subscription's URL when one of your communications reaches
`composed`, `sent`, `delivered`, `viewed`, `actioned` or `undeliverable`, or fails for good
(`failed`: a delivery failed, or composition did — then `data.status` is `compose_failed`).

Headers:

- `CCM-Webhook-Id`: the event id (the body's `id`), the same on every retry and replay.
- `CCM-Webhook-Timestamp`: Unix seconds when this attempt was signed.
- `CCM-Webhook-Signature`: `v1=` + hex HMAC-SHA256 keyed with the subscription's secret (its
  UTF-8 bytes, `whsec_` included) over `{timestamp}.{raw body}`.

To verify: take the raw request body as bytes (before any JSON parsing), compute
`hmac_sha256(secret, timestamp + "." + body)`, compare its hex digest with every `v1=` value
in the signature header (space-separated; there may be more than one) in constant time, and
refuse timestamps more than 5 minutes from your clock. Answer any 2xx quickly; anything else,
a redirect or no answer within 5 s is retried with exponential backoff for up to 24 hours
(defaults that the operator may change).
Events can arrive more than once and out of order: dedupe by id, order by `created_at`."""

COMMUNICATION_STATUS_WEBHOOK = OpenApiWebhook(
    name="communicationStatus",
    decorator=extend_schema(
        summary="A communication changed status (sent to your subscription's URL)",
        description=WEBHOOK_DESCRIPTION,
        request=WebhookEventSerializer,
        responses={
            200: OpenApiResponse(description="Any 2xx: received; not sent again"),
            500: OpenApiResponse(description="Anything else: retried later"),
        },
    ),
)

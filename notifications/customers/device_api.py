"""Customers' push devices over the API: register (with the push opt-in), list, revoke."""

from __future__ import annotations

import binascii

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from py_vapid.utils import b64urldecode  # type: ignore[import-untyped]
from rest_framework import serializers, status
from rest_framework.response import Response

from ccm.api.views import CcmAPIView
from documents.models import Category
from notifications.customers.api import SOURCE_PARAM, customer_or_404
from notifications.customers.devices import device_deactivate, device_register
from notifications.models import Device, Platform


def _b64url_bytes(value: str, *, length: int, what: str) -> str:
    try:
        raw = b64urldecode(value.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != length:
        raise serializers.ValidationError(
            f"Give {what}, base64url-encoded ({length} bytes), as the browser's "
            "PushSubscription.toJSON() has it."
        )
    return value


class SubscriptionKeysSerializer(serializers.Serializer):
    p256dh = serializers.CharField(max_length=200)
    auth = serializers.CharField(max_length=100)

    def validate_p256dh(self, value: str) -> str:
        return _b64url_bytes(value, length=65, what="the browser's P-256 public key")

    def validate_auth(self, value: str) -> str:
        return _b64url_bytes(value, length=16, what="the subscription's auth secret")


class SubscriptionSerializer(serializers.Serializer):
    endpoint = serializers.URLField(max_length=2048)
    keys = SubscriptionKeysSerializer()

    def validate_endpoint(self, value: str) -> str:
        # Push services are only reached over TLS; anything else would make CCM post to
        # whatever address a caller registers.
        if not value.startswith("https://"):
            raise serializers.ValidationError("A Web Push endpoint is an https:// URL.")
        return value


class DeviceRegisterSerializer(serializers.Serializer):
    platform = serializers.ChoiceField(choices=Platform.choices)
    app = serializers.CharField(
        max_length=200, help_text="The app id: Android package, iOS bundle id or web origin"
    )
    token = serializers.CharField(
        max_length=2048, required=False, help_text="The FCM registration token (android, ios)"
    )
    subscription = SubscriptionSerializer(
        required=False, help_text="The browser's PushSubscription as JSON (web)"
    )
    opt_in = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The customer's answer to the push prompt, recorded in the consent ledger; "
        "leave it out when only the token changed",
    )
    categories = serializers.ListField(
        child=serializers.ChoiceField(choices=Category.choices),
        required=False,
        default=list,
        help_text="The categories the opt-in (or opt-out) covers",
    )

    def validate(self, attrs: dict) -> dict:
        if attrs["platform"] == Platform.WEB:
            subscription = attrs.pop("subscription", None)
            if subscription is None:
                raise serializers.ValidationError(
                    {"subscription": ["A web device is registered with its PushSubscription."]}
                )
            if attrs.get("token") not in (None, subscription["endpoint"]):
                raise serializers.ValidationError(
                    {"token": ["Leave it out for web: the subscription's endpoint is the token."]}
                )
            attrs.update(token=subscription["endpoint"], **subscription["keys"])
        else:
            if "subscription" in attrs:
                raise serializers.ValidationError(
                    {"subscription": ["Only web devices have a subscription; send the token."]}
                )
            if not attrs.get("token"):
                raise serializers.ValidationError(
                    {"token": ["An app device is registered with its FCM registration token."]}
                )
        if attrs["opt_in"] is not None and not attrs["categories"]:
            raise serializers.ValidationError(
                {"categories": ['Say which categories the opt-in covers, e.g. ["service"].']}
            )
        if attrs["opt_in"] is None and attrs["categories"]:
            raise serializers.ValidationError(
                {"opt_in": ["Give the customer's answer (true or false) for these categories."]}
            )
        return attrs


class DeviceSerializer(serializers.ModelSerializer):
    address = serializers.CharField(read_only=True, help_text="What push deliveries name")

    class Meta:
        model = Device
        fields = [
            "id",
            "address",
            "platform",
            "app",
            "token",
            "active",
            "created_at",
            "last_seen_at",
            "deactivated_at",
            "deactivated_reason",
        ]


class CustomerDevicesView(CcmAPIView):
    """A customer's push devices. Registering sends the app's FCM token (android, ios) or the
    browser's PushSubscription (web); the customer's answer to the push prompt (`opt_in`, for
    `categories`) is appended to the consent ledger."""

    required_scopes = {"GET": ("customers:read",), "POST": ("customers:write",)}

    @extend_schema(
        responses=DeviceSerializer(many=True),
        parameters=[SOURCE_PARAM],
        summary="The customer's push devices (the latest 500)",
    )
    def get(self, request, ref: str):
        customer = customer_or_404(request, ref)
        return Response(DeviceSerializer(customer.devices.all()[:500], many=True).data)

    @extend_schema(
        request=DeviceRegisterSerializer,
        responses={201: DeviceSerializer, 200: DeviceSerializer},
        parameters=[SOURCE_PARAM],
        summary="Register a device for push (the same token again refreshes or reactivates it)",
    )
    def post(self, request, ref: str):
        customer = customer_or_404(request, ref)
        body = DeviceRegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        device, created = device_register(customer=customer, **body.validated_data, by=request.user)
        return Response(
            DeviceSerializer(device).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class CustomerDeviceView(CcmAPIView):
    """One of a customer's devices."""

    required_scopes = ("customers:write",)

    @extend_schema(
        request=None,
        responses={200: DeviceSerializer},
        parameters=[SOURCE_PARAM],
        summary="Revoke a device: nothing more is pushed to it (its history is kept)",
    )
    def delete(self, request, ref: str, pk: int):
        device = get_object_or_404(Device, pk=pk, customer=customer_or_404(request, ref))
        device_deactivate(
            device=device,
            reason=f"revoked through the API by {request.user.get_username()}",
            by=request.user,
        )
        return Response(DeviceSerializer(device).data)

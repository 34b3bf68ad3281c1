"""What every API endpoint under /customers/{ref}/ shares: the customer the path names.

The customer endpoints (notifications/api.py) and the device endpoints (device_api.py) both
find the customer this way, so both import it from the package that owns customers.
"""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from notifications.models import Customer

SOURCE_PARAM = OpenApiParameter(
    "source_system", str, description="The customer's source system (default: 'default')"
)


def customer_or_404(request, ref: str) -> Customer:
    """The customer `ref` of the request's `source_system` (default "default"), or a 404."""
    source_system = request.query_params.get("source_system", "default")
    # NUL is the one character a PostgreSQL text column refuses: no customer has it.
    if "\x00" in source_system:
        raise serializers.ValidationError({"source_system": ["Must not contain NUL."]})
    if "\x00" in ref:
        raise Http404
    return get_object_or_404(Customer, source_system=source_system, external_ref=ref)

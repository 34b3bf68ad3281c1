"""Assets and service points over the API: bulk upserts (all or nothing, errors per item)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from ccm.api.errors import Unprocessable
from ccm.api.views import CcmAPIView
from notifications.customers.assets import services
from notifications.customers.assets.services import MAX_ITEMS


def _items(request) -> list[dict]:
    body = request.data
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise Unprocessable(
            'Send {"items": [ {...}, … ]}.',
            code="items_required",
            errors=[{"field": "items", "message": "a list of objects"}],
        )
    if len(items) > MAX_ITEMS:
        raise Unprocessable(
            f"At most {MAX_ITEMS} items a call.",
            code="too_many_items",
            errors=[{"field": "items", "message": f"at most {MAX_ITEMS}"}],
        )
    return items


def _upsert(request, service) -> Response:
    try:
        result = service(items=_items(request), by=request.user)
    except services.UpsertError as exc:
        errors = [
            {"field": f"items[{e['index']}].{e['field']}", "message": e["message"]}
            for e in exc.errors
        ]
        raise Unprocessable(str(exc), code="invalid_items", errors=errors) from exc
    return Response(result, status=status.HTTP_200_OK)


class AssetUpsertView(CcmAPIView):
    """POST {"items": [{"code", "kind", "parent", "name"}]}: create or update by code."""

    required_scopes = ("customers:write",)

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Create or update up to 1,000 assets by code (all or nothing)",
        description='Send `{"items": [{"code", "kind", "parent", "name"}, …]}`. Each asset is '
        "created, or updated when its `code` exists. If any item is refused nothing is "
        "stored, and the 422 names each fault as `items[i].field`.",
    )
    def post(self, request):
        return _upsert(request, services.assets_upsert)


class ServicePointUpsertView(CcmAPIView):
    """POST {"items": [{"code", "customer", "asset", "address", "postcode"}]}."""

    required_scopes = ("customers:write",)

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Create or update up to 1,000 service points by code (all or nothing)",
        description='Send `{"items": [{"code", "customer", "asset", "address", "postcode"}, '
        "…]}`. Each service point is created, or updated when its `code` exists. If any item "
        "is refused nothing is stored, and the 422 names each fault as `items[i].field`.",
    )
    def post(self, request):
        return _upsert(request, services.service_points_upsert)

"""The project's URLs plus two bench-only endpoints to compare `POST /api/v1/communications`
with (mounted only by bench/settings_api.py):

- `POST /bench/bare`: what a minimal Django endpoint costs — parse a small JSON body, check its
  fields, one INSERT;
- `POST /bench/floor`: the same work behind the project's own API base view (DRF, the Api-Key
  authentication, the scope check, the rate limits): the least any authenticated CCM endpoint
  costs before it does anything of its own."""

from __future__ import annotations

import json

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from rest_framework.response import Response

from ccm.api.views import CcmAPIView
from ccm.urls import handler404, handler500  # noqa: F401
from ccm.urls import urlpatterns as project_urlpatterns

TABLE = "bench_bare_request"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, template varchar(100), "
    "customer varchar(100), data jsonb, created_at timestamptz DEFAULT now())"
)


@csrf_exempt
@require_POST
def bare(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body)
    except ValueError:
        return JsonResponse({"detail": "not JSON"}, status=400)
    if not _well_formed(body):
        return JsonResponse({"detail": "give template, customer and data"}, status=400)
    return JsonResponse({"id": _insert(body), "status": "received"}, status=202)


def _well_formed(body) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("template"), str)
        and isinstance(body.get("customer"), str)
        and isinstance(body.get("data"), dict)
    )


def _insert(body: dict) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (template, customer, data) VALUES (%s, %s, %s) RETURNING id",  # noqa: S608
            [body["template"], body["customer"], json.dumps(body["data"])],
        )
        (pk,) = cursor.fetchone()
    return pk


class Floor(CcmAPIView):
    required_scopes = ("communications:write",)

    def post(self, request):
        body = request.data
        if not _well_formed(body):
            return Response({"detail": "give template, customer and data"}, status=400)
        return Response({"id": _insert(body), "status": "received"}, status=202)


urlpatterns = [
    path("bench/bare", bare),
    path("bench/floor", Floor.as_view()),
    *project_urlpatterns,
]

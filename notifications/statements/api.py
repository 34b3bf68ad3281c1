"""Readings intake and statement runs over the API."""

from __future__ import annotations

from datetime import date

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.response import Response

from ccm.api.errors import ApiProblem, Conflict, Unprocessable
from ccm.api.views import CcmAPIView
from notifications.campaigns.models import Segment
from notifications.statements import readings, selectors, services
from notifications.statements.models import StatementRun


class CSVParser(BaseParser):
    """text/csv: the body's bytes as they came, under "csv" (the readings intake streams them
    into COPY)."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None) -> dict[str, bytes]:
        return {"csv": stream.read() if stream is not None else b""}


# A CSV body of MAX_READINGS rows (~50 bytes each) with room to spare. JSON bodies stay within
# Django's DATA_UPLOAD_MAX_MEMORY_SIZE (they are read whole before parsing).
MAX_BODY_BYTES = 12 * 1024 * 1024

READINGS_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "title": "objects",
            "required": ["readings"],
            "properties": {
                "readings": {
                    "type": "array",
                    "maxItems": readings.MAX_READINGS,
                    "items": {
                        "type": "object",
                        "required": ["meter", "start", "value"],
                        "properties": {
                            "meter": {"type": "string", "description": "the meter's serial"},
                            "start": {"type": "string", "format": "date-time"},
                            "value": {"type": ["string", "number", "null"]},
                            "quality": {
                                "type": "string",
                                "enum": ["actual", "estimated", "customer", "missing"],
                            },
                        },
                    },
                }
            },
        },
        {
            "type": "object",
            "title": "rows",
            "required": ["rows"],
            "properties": {
                "rows": {
                    "type": "array",
                    "maxItems": readings.MAX_READINGS,
                    "description": "[meter, start, value, quality] a reading; quality may be "
                    "null (actual)",
                    "items": {"type": "array", "minItems": 3, "maxItems": 4},
                }
            },
        },
    ]
}


class ReadingsView(CcmAPIView):
    """POST up to 100,000 readings a call, as objects, arrays or CSV."""

    required_scopes = ("readings:write",)
    parser_classes = [JSONParser, CSVParser]

    @extend_schema(
        operation_id="readings_create",
        request={
            "application/json": READINGS_SCHEMA,
            "text/csv": {
                "type": "string",
                "description": "A header row naming meter, start, value and optionally "
                "quality (any order), then one reading a row.",
                "example": "meter,start,value,quality\nE-1,2026-01-01T00:00:00Z,0.235,actual\n",
            },
        },
        responses={200: OpenApiTypes.OBJECT, 413: OpenApiTypes.OBJECT},
        summary=f"Send up to {readings.MAX_READINGS:,} meter readings "
        "(idempotent per meter and interval)",
        description="Three shapes of one call: objects "
        '`{"readings": [{"meter": serial, "start": ISO time with offset, '
        '"value": number, "quality": "actual"|"estimated"|"customer"|"missing"}, …]}`; '
        'arrays `{"rows": [[serial, start, value, quality], …]}` (a third of the bytes); or '
        "`text/csv` with a header row `meter,start,value,quality` (the fastest: the body goes "
        "straight to the database). "
        "A reading is identified by its meter and the start of its interval: the same reading "
        "again changes nothing; another value replaces it and the earlier one is kept as a "
        "correction; within a call the last row for an interval wins. All or nothing: if any "
        "row is refused nothing is stored and the 422 names each fault as "
        "`readings[i].field` (objects) or `rows[i].field` (arrays; CSV, counting data rows "
        f"from 0). More than {readings.MAX_READINGS:,} readings, a CSV body over "
        f"{MAX_BODY_BYTES // 2**20} MB or a JSON body over the server's request limit "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB by default: ~30,000 objects or ~45,000 arrays) "
        "is refused with 413. The answer counts what was inserted, corrected and unchanged.",
    )
    def post(self, request):
        if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_BODY_BYTES:
            raise ApiProblem(
                status_code=413,
                title="Content too large",
                detail=f"The body is larger than {MAX_BODY_BYTES:,} bytes; "
                "send the readings in smaller calls.",
                code="too_large",
            )
        body = request.data
        prefix = "rows"
        try:
            if isinstance(body, dict) and isinstance(body.get("csv"), bytes):
                result = readings.readings_ingest_csv(data=body["csv"])
            elif isinstance(body, dict) and isinstance(body.get("rows"), list):
                result = readings.readings_ingest_rows(rows=body["rows"])
            elif isinstance(body, dict) and isinstance(body.get("readings"), list):
                prefix = "readings"
                result = readings.readings_ingest(rows=body["readings"])
            else:
                raise Unprocessable(
                    'Send {"readings": [{...}, …]}, {"rows": [[...], …]} or text/csv.',
                    code="readings_required",
                    errors=[{"field": "readings", "message": "a list of readings"}],
                )
        except readings.TooManyReadings as exc:
            raise ApiProblem(
                status_code=413, title="Content too large", detail=str(exc), code="too_many"
            ) from exc
        except readings.ReadingsRefused as exc:
            errors = [
                {
                    "field": prefix
                    if e["row"] is None
                    else f"{prefix}[{e['row']}]" + (f".{e['field']}" if e["field"] else ""),
                    "message": e["message"],
                }
                for e in exc.errors[:1000]
            ]
            raise Unprocessable(str(exc), code="invalid_readings", errors=errors) from exc
        return Response(result.as_dict(), status=status.HTTP_200_OK)


def _date(body: dict, name: str) -> date:
    try:
        return date.fromisoformat(str(body.get(name)))
    except ValueError:
        raise Unprocessable(
            f"{name}: an ISO date, e.g. 2026-01-31.",
            code="invalid_run",
            errors=[{"field": name, "message": "an ISO date"}],
        ) from None


class StatementRunListView(CcmAPIView):
    required_scopes = {"GET": ("statements:read",), "POST": ("statements:write",)}

    @extend_schema(
        operation_id="statement_runs_list",
        responses=OpenApiTypes.OBJECT,
        summary="Statement runs, newest first",
    )
    def get(self, request):
        runs = StatementRun.objects.all()[:100]
        return Response({"results": [selectors.run_summary(run) for run in runs]})

    @extend_schema(
        operation_id="statement_runs_create",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Create a statement run for a period and a segment (or everyone with readings)",
        description='Send `{"period_start": "2026-01-01", "period_end": "2026-01-31", '
        '"segment": id or null, "start": true}`.',
    )
    def post(self, request):
        body = request.data if isinstance(request.data, dict) else {}
        segment = None
        if body.get("segment") is not None:
            given = body.get("segment")
            wanted = given if isinstance(given, int) and not isinstance(given, bool) else None
            segment = Segment.objects.filter(pk=wanted).first() if wanted else None
            if segment is None:
                raise Unprocessable(
                    "segment: no such segment.",
                    code="invalid_run",
                    errors=[{"field": "segment", "message": "the id of a segment"}],
                )
        try:
            run = services.statement_run_create(
                period_start=_date(body, "period_start"),
                period_end=_date(body, "period_end"),
                segment=segment,
                by=request.user,
            )
            if body.get("start", True):
                run = services.statement_run_start(run=run, by=request.user)
        except services.RunError as exc:
            raise Unprocessable(str(exc), code="invalid_run") from exc
        return Response(selectors.run_summary(run), status=status.HTTP_201_CREATED)


class StatementRunView(CcmAPIView):
    required_scopes = ("statements:read",)

    @extend_schema(
        operation_id="statement_run_report",
        responses=OpenApiTypes.OBJECT,
        summary="A run's progress and report",
    )
    def get(self, request, pk: int):
        run = get_object_or_404(StatementRun, pk=pk)
        return Response(selectors.run_report(run))


class StatementRunActionView(CcmAPIView):
    required_scopes = ("statements:write",)
    ACTIONS = {
        "start": services.statement_run_start,
        "pause": services.statement_run_pause,
        "resume": services.statement_run_resume,
        "cancel": services.statement_run_cancel,
    }

    @extend_schema(
        operation_id="statement_run_action",
        request=None,
        responses=OpenApiTypes.OBJECT,
        summary="start, pause, resume or cancel a statement run",
    )
    def post(self, request, pk: int, action: str):
        run = get_object_or_404(StatementRun, pk=pk)
        if action not in self.ACTIONS:
            raise Http404(f"No action {action!r}.")
        try:
            run = self.ACTIONS[action](run=run, by=request.user)
        except services.RunError as exc:
            raise Conflict(str(exc), code="run_state") from exc
        return Response(selectors.run_summary(run))

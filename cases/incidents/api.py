"""Events over the API: `POST /api/v1/events` with one event, or {"events": [...]} (at most
1,000). Idempotent on (source, event_id): a replay answers `duplicate` and changes nothing.
Planned maintenance: `POST /api/v1/maintenance` schedules one."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from cases.incidents import maintenance, services
from ccm.api.errors import PROBLEM_CONTENT_TYPE, Unprocessable, problem
from ccm.api.views import CcmAPIView


class EventIntakeView(CcmAPIView):
    """One event → 201 (stored) or 200 (already received); a bad event → 422 naming the field.
    A batch → 200 with a result per event; if any is refused, 422 listing `events[i].field`
    errors (the good events of the batch are stored; sending the batch again is safe)."""

    required_scopes = ("events:write",)

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Report one event, or a batch of up to 1,000",
        description="One event object → 201 when stored, 200 when it was already received "
        "(idempotent on `source` and `event_id`: a replay answers `duplicate` and changes "
        'nothing); an invalid event → 422 naming the field. A batch `{"events": [...]}` → '
        "200 with a result per event; if any is refused, 422 listing `events[i].field` errors "
        "(the valid events of the batch are stored, so sending the batch again is safe).",
    )
    def post(self, request):
        body = request.data
        if not isinstance(body, dict):
            raise Unprocessable(
                'Send one event object, or {"events": [...]}.',
                code="invalid_body",
                errors=[{"field": "", "message": "a JSON object"}],
            )
        if "events" not in body:
            (result,) = services.events_ingest(items=[body], by=request.user)
            if result.errors:
                raise Unprocessable(
                    "The event is invalid; nothing was stored.",
                    code="invalid_event",
                    errors=result.errors,
                )
            created = result.status == "created"
            return Response(
                {"status": result.status, "incident": result.incident or None},
                status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
            )
        items = body["events"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise Unprocessable(
                "`events` must be a list of objects.",
                code="invalid_body",
                errors=[{"field": "events", "message": "a list of objects"}],
            )
        if len(items) > services.MAX_EVENTS:
            raise Unprocessable(
                f"At most {services.MAX_EVENTS} events a call.",
                code="too_many_events",
                errors=[{"field": "events", "message": f"at most {services.MAX_EVENTS}"}],
            )
        results = services.events_ingest(items=items, by=request.user)
        shaped = [
            {
                "index": r.index,
                "status": r.status,
                "incident": r.incident or None,
                "errors": r.errors,
            }
            for r in results
        ]
        counts = {
            s: sum(1 for r in results if r.status == s) for s in ("created", "duplicate", "refused")
        }
        if counts["refused"]:
            body = problem(
                status_code=422,
                detail=f"{counts['refused']} of {len(items)} events are invalid and were not "
                "stored; the others were.",
                code="invalid_events",
                errors=[
                    {"field": f"events[{r.index}].{e['field']}", "message": e["message"]}
                    for r in results
                    for e in r.errors
                ],
                request=request,
            )
            return Response(
                {**body, "results": shaped, **counts},
                status=422,
                content_type=PROBLEM_CONTENT_TYPE,
            )
        return Response({"results": shaped, **counts}, status=status.HTTP_200_OK)


class MaintenanceView(CcmAPIView):
    """Schedule planned maintenance → 201 with its reference; a bad field → 422 naming it."""

    required_scopes = ("events:write",)

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Schedule planned maintenance",
        description="`title`, `service` (electricity | gas), `assets` (codes), `start` and "
        "`end` (ISO 8601 with an offset), `work` (what is done, completing 'This is because "
        "...'), `reminder_hours` (default 24). The customers under the assets are told now, "
        "reminded `reminder_hours` before the start, and told when it starts and ends.",
    )
    def post(self, request):
        body = request.data if isinstance(request.data, dict) else {}

        def when(name: str):
            value = body.get(name)
            return parse_datetime(value) if isinstance(value, str) else None

        try:
            incident = maintenance.maintenance_schedule(
                title=body.get("title", ""),
                service=body.get("service", ""),
                assets=body.get("assets"),  # type: ignore[arg-type]
                start=when("start"),  # type: ignore[arg-type]
                end=when("end"),  # type: ignore[arg-type]
                work=body.get("work", ""),
                reminder_hours=body.get("reminder_hours", 24),
                by=request.user,
            )
        except maintenance.MaintenanceInvalid as exc:
            raise Unprocessable(
                "The maintenance is invalid; nothing was scheduled.",
                code="invalid_maintenance",
                errors=exc.errors,
            ) from exc
        return Response(
            {"reference": incident.reference, "state": incident.state},
            status=status.HTTP_201_CREATED,
        )

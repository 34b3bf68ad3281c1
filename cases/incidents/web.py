"""The incidents screens for operations: the list, and an incident with its events, the
customers it affects by region, the notices of each update and their delivery, and the actions
(acknowledge, hold notices, send an update, resolve, mark a false alarm)."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from cases.incidents import maintenance, selectors, services
from cases.incidents.models import Incident
from cases.web.views import HANDLE, WORK, staff_only

PAGE_SIZE = 50
EVENTS_SHOWN = 100


@require_GET
@staff_only(WORK, HANDLE)
def incident_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request)


def _list_page(
    request: HttpRequest, *, errors: dict[str, str] | None = None, status: int = 200
) -> HttpResponse:
    """The list with the maintenance form; refused, the form keeps what was typed and says
    what to fix next to each field."""
    page = Paginator(selectors.incident_list(), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "errors": errors or {},
        "typed": request.POST if errors else {"reminder_hours": "24"},
    }
    return render(request, "cases/incidents/list.html", context, status=status)


def _incident(ref: str) -> Incident:
    return get_object_or_404(Incident.objects.select_related("asset"), reference=ref)


@require_GET
@staff_only(WORK, HANDLE)
def incident_detail(request: HttpRequest, ref: str) -> HttpResponse:
    incident = _incident(ref)
    context = {
        "incident": incident,
        "events": incident.events.select_related("asset").order_by("-occurred_at")[:EVENTS_SHOWN],
        "event_count": incident.events.count(),
        "regions": selectors.affected_by_region(incident=incident),
        "updates": selectors.updates_with_delivery(incident=incident),
    }
    return render(request, "cases/incidents/detail.html", context)


@require_POST
@staff_only(WORK, HANDLE)
def incident_action(request: HttpRequest, ref: str) -> HttpResponse:
    incident = _incident(ref)
    action = request.POST.get("action", "")
    text = request.POST.get("message", "").strip()[:1000]
    try:
        if action == "acknowledge":
            services.incident_acknowledge(incident=incident, by=request.user)
        elif action in ("hold", "release"):
            services.incident_hold(incident=incident, held=action == "hold", by=request.user)
        elif action == "update":
            if not text:
                raise services.IncidentError("Write what the update tells customers.")
            services.incident_update_send_now(
                incident=incident, message={"text": text}, by=request.user
            )
        elif action == "resolve":
            services.incident_resolve(incident=incident, by=request.user, cause=text)
        elif action == "false_alarm":
            services.incident_false_alarm(incident=incident, by=request.user, note=text)
        else:
            raise services.IncidentError(f"There is no action {action!r}.")
    except services.IncidentError as exc:
        messages.error(request, str(exc))
        return redirect("incident-detail", ref)
    messages.success(request, f"{incident.reference}: {action.replace('_', ' ')} done.")
    return redirect("incident-detail", ref)


def _local(value: str):
    """A datetime-local field's value, in the site's time zone."""
    parsed = parse_datetime(value) if value else None
    if parsed is not None and parsed.tzinfo is None:
        parsed = timezone.make_aware(parsed)
    return parsed


@require_POST
@staff_only(WORK, HANDLE)
def maintenance_schedule(request: HttpRequest) -> HttpResponse:
    post = request.POST
    try:
        hours = int(post.get("reminder_hours") or 24)
    except ValueError:
        hours = 0
    try:
        incident = maintenance.maintenance_schedule(
            title=post.get("title", ""),
            service=post.get("service", ""),
            assets=[a.strip() for a in post.get("assets", "").split(",") if a.strip()],
            start=_local(post.get("start", "")),  # type: ignore[arg-type]
            end=_local(post.get("end", "")),  # type: ignore[arg-type]
            work=post.get("work", ""),
            reminder_hours=hours,
            by=request.user,
        )
    except maintenance.MaintenanceInvalid as exc:
        errors: dict[str, str] = {}
        for error in exc.errors:
            errors.setdefault(error["field"], error["message"])
        return _list_page(request, errors=errors, status=422)
    messages.success(request, f"{incident.reference}: maintenance scheduled, customers told.")
    return redirect("incident-detail", incident.reference)

"""Operations dashboard, compliance page, reconciliation, drill-down lists and report screens."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Max
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from ccm.health import cluster_state
from notifications.progress import work_in_progress
from notifications.reporting import selectors
from notifications.reporting.charts import svg_chart
from notifications.reporting.models import DailyStat, ReportDefinition, ReportRun
from notifications.reporting.reconciliation import Scope, reconcile
from notifications.reporting.reports import report_run_request
from notifications.reporting.rollups import local_today

VIEW_STATS = "notifications.view_dailystat"
ITEMS_PAGE_SIZE = 50


def staff_only(*perms: str):
    """Signed-out people go to the login form; signed-in people without the role get a 403."""

    def decorate(view):
        return login_required(permission_required(perms, raise_exception=True)(view))

    return decorate


def _period(days: int = 30) -> selectors.StatFilter:
    # The last complete days (today is shown live, beside them).
    yesterday = local_today() - timedelta(days=1)
    return selectors.StatFilter(start=yesterday - timedelta(days=days - 1), end=yesterday)


def volume_chart(flt: selectors.StatFilter) -> dict:
    series = selectors.daily_series(flt)
    labels = [d.strftime("%d %b") for d in series["days"]]
    links = {
        channel: [
            selectors.items_url("delivery", selectors.StatFilter(start=d, end=d, channel=channel))
            for d in series["days"]
        ]
        for channel in series["volume"]
    }
    return {
        "series": series,
        "volume_svg": svg_chart(
            "stacked",
            labels,
            dict(sorted(series["volume"].items())),
            title="Deliveries per day by channel",
            links=links,
            chart_id="volume",
        ),
        "rates_svg": svg_chart(
            "line",
            labels,
            {
                "Email bounce rate": series["bounce_pct"],
                "Email complaint rate": series["complaint_pct"],
                "Bounce limit": [100 * _limit("CCM_BOUNCE_RATE_LIMIT")] * len(labels),
                "Complaint limit": [100 * _limit("CCM_COMPLAINT_RATE_LIMIT")] * len(labels),
            },
            title="Email bounce and complaint rates (%) against mailbox-provider limits",
            value_suffix=" %",
            chart_id="rates",
        ),
    }


def _limit(name: str) -> float:
    from django.conf import settings

    return float(getattr(settings, name))


def processing_chart(flt: selectors.StatFilter) -> dict:
    proc = selectors.processing_series(flt)
    labels = [d.strftime("%d %b") for d in proc["days"]]
    return {
        **proc,
        "composed_share_pct": selectors.percent(proc["composed_share"]),
        "dispatched_share_pct": selectors.percent(proc["dispatched_share"]),
        "svg": svg_chart(
            "line",
            labels,
            {"p50": proc["p50"], "p95": proc["p95"]},
            title="Time from request to handed to a provider (seconds)",
            value_suffix=" s",
            chart_id="processing",
        ),
    }


def _rollup_section(flt: selectors.StatFilter) -> dict:
    """The period's figures and charts. They change only when the rollups do, so they are
    cached under the newest rollup time of the period (drawing the charts is the slow part)."""
    stamp = DailyStat.objects.filter(day__gte=flt.start, day__lte=flt.end).aggregate(
        newest=Max("computed_at")
    )["newest"]
    key = f"reporting:period:{flt.start}:{flt.end}:{stamp.timestamp() if stamp else 0}"
    section = cache.get_or_set(
        key,
        lambda: {
            "channels": selectors.channel_summary(flt),
            "charts": volume_chart(flt),
            "processing": processing_chart(flt),
            "failures": selectors.failure_reasons(flt),
        },
        timeout=6 * 3600,
    )
    assert isinstance(section, dict)
    return section


@require_GET
@staff_only(VIEW_STATS)
def dashboard(request: HttpRequest) -> HttpResponse:
    flt = _period()
    today = selectors.today_summary()
    context = {
        "period": flt,
        "today": today,
        **_rollup_section(flt),
        "queues": selectors.queue_depths(),
        "cap": selectors.COUNT_CAP,
        "tasks": selectors.task_queue(),
        "print_batches": selectors.print_batches(),
        "panels": selectors.dashboard_panels(),
        "cluster": cluster_state(),
        "work": work_in_progress(user=request.user),
        "reconciliation": reconcile(Scope(start=flt.start, end=flt.end)),
        "limits": {
            "bounce": selectors.percent(_limit("CCM_BOUNCE_RATE_LIMIT")),
            "complaint": selectors.percent(_limit("CCM_COMPLAINT_RATE_LIMIT")),
        },
    }
    return render(request, "reporting/dashboard.html", context)


@require_GET
@staff_only(VIEW_STATS)
def progress(request: HttpRequest) -> JsonResponse:
    """The long work under way (what the dashboard's bars show), for its script to poll."""
    return JsonResponse({"work": work_in_progress(user=request.user)})


@require_GET
@staff_only(VIEW_STATS)
def compliance(request: HttpRequest) -> HttpResponse:
    flt = _period()
    regulatory = selectors.StatFilter(start=flt.start, end=flt.end, category="regulatory")
    section = _rollup_section(flt)
    context = {
        "period": flt,
        "channels": section["channels"],
        "charts": section["charts"],
        "reconciliation": reconcile(Scope(start=flt.start, end=flt.end)),
        "regulatory_channels": selectors.channel_summary(regulatory),
        "runs": selectors.report_runs()[:20],
        "cap": selectors.COUNT_CAP,
        "limits": {
            "bounce": selectors.percent(_limit("CCM_BOUNCE_RATE_LIMIT")),
            "complaint": selectors.percent(_limit("CCM_COMPLAINT_RATE_LIMIT")),
        },
    }
    return render(request, "reporting/compliance.html", context)


@require_GET
@staff_only(VIEW_STATS)
def reconciliation(request: HttpRequest) -> HttpResponse:
    error = ""
    try:
        flt = selectors.stat_filter_parse(request.GET)
    except ValueError as exc:
        error = str(exc)
        flt = _period()
    scope = Scope(
        start=flt.start,
        end=flt.end,
        source=flt.source,
        template=flt.template,
        reference=(request.GET.get("reference") or "")[:100],
    )
    context = {
        "result": reconcile(scope),
        "scope": scope,
        "error": error,
        "cap": selectors.COUNT_CAP,
    }
    return render(request, "reporting/reconciliation.html", context, status=400 if error else 200)


@require_GET
@staff_only(VIEW_STATS)
def items(request: HttpRequest) -> HttpResponse:
    level = request.GET.get("level", "communication")
    error = ""
    if level not in ("communication", "delivery"):
        error = "level must be communication or delivery"
        level = "communication"
    try:
        flt = selectors.stat_filter_parse(request.GET)
    except ValueError as exc:
        error = str(exc)
        flt = _period()
    page = Paginator(selectors.items_for(level=level, flt=flt), ITEMS_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    described = [
        f"{name} {value}"
        for name, value in (
            ("channel", flt.channel),
            ("status", flt.status or flt.extra.get("states", "")),
            ("outcome", flt.extra.get("outcome", "")),
            ("source", flt.source),
            ("category", flt.category),
            ("template", flt.template),
            ("reason", flt.reason),
            ("reference", flt.extra.get("reference", "")),
        )
        if value
    ]
    if flt.extra.get("failed"):
        described.append("failed")
    if flt.extra.get("stuck"):
        described.append("stuck")
    if flt.extra.get("no_delivery"):
        described.append("without any delivery")
    context = {
        "level": level,
        "flt": flt,
        "page": page,
        "described": described,
        "live": bool(flt.extra.get("live")),
        "error": error,
        "query": _without_page(request),
    }
    return render(request, "reporting/items.html", context, status=400 if error else 200)


def _without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


# --- reports -----------------------------------------------------------------------------------

VIEW_REPORTS = "notifications.view_reportrun"
RUN_REPORTS = "notifications.add_reportrun"


@require_GET
@staff_only(VIEW_REPORTS)
def reports(request: HttpRequest) -> HttpResponse:
    definitions = ReportDefinition.objects.order_by("name")
    context = {
        "definitions": definitions,
        "runs": selectors.report_runs()[:30],
        "max_attempts": settings.CCM_REPORT_RUN_ATTEMPTS,
    }
    return render(request, "reporting/reports.html", context)


@require_http_methods(["GET", "POST"])
@staff_only(VIEW_REPORTS)
def report_detail(request: HttpRequest, pk: int) -> HttpResponse:
    definition = get_object_or_404(ReportDefinition, pk=pk)
    if request.method == "POST":
        if not request.user.has_perm(RUN_REPORTS):
            raise PermissionDenied("Running reports needs the operations role.")
        run = report_run_request(definition=definition, by=request.user, trigger="manual")
        messages.success(
            request, f"Run {run.pk} is queued; it appears below when the task cluster has run it."
        )
        return redirect("reporting-report", pk=definition.pk)
    page = Paginator(selectors.report_runs(definition.pk), ITEMS_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    context = {
        "definition": definition,
        "page": page,
        "can_run": request.user.has_perm(RUN_REPORTS),
        "max_attempts": settings.CCM_REPORT_RUN_ATTEMPTS,
    }
    return render(request, "reporting/report.html", context)


@require_GET
@staff_only(VIEW_REPORTS)
def run_file(request: HttpRequest, pk: int, fmt: str) -> FileResponse:
    run = get_object_or_404(ReportRun, pk=pk)
    field = {"pdf": run.pdf_file, "csv": run.csv_file}.get(fmt)
    if not field:
        raise Http404("This run has no such file.")
    response = FileResponse(
        field.open("rb"),
        as_attachment=True,
        filename=field.name.rsplit("/", 1)[-1],
        content_type="application/pdf" if fmt == "pdf" else "text/csv",
    )
    response["X-Content-SHA256"] = run.pdf_sha256 if fmt == "pdf" else run.csv_sha256
    return response

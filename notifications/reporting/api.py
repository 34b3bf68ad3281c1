"""The rollups and report runs over the API: `GET /api/v1/stats`, `GET /api/v1/reports/runs`."""

from __future__ import annotations

from django.db.models import Sum
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, serializers
from rest_framework.response import Response

from ccm.api.errors import ApiProblem
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from notifications.reporting import selectors
from notifications.reporting.models import DailyStat, ReportRun, ReportRunAttempt

# Dimensions a caller may group by; the rollup row's columns.
GROUP_FIELDS = {
    "day": "day",
    "level": "level",
    "template": "template__code",
    "template_version": "template_version__number",
    "channel": "channel",
    "category": "category",
    "source": "source",
    "status": "status",
    "outcome": "outcome",
}
DEFAULT_GROUP_BY = ("day", "level", "channel", "status")


class BadStatsQuery(ApiProblem):
    def __init__(self, detail: str):
        super().__init__(
            status_code=400, title="Bad query parameter", detail=detail, code="invalid_query"
        )


class HasPerm(permissions.BasePermission):
    perm = ""

    def has_permission(self, request, view) -> bool:
        if not request.user.has_perm(self.perm):
            self.message = f"This needs the {self.perm} permission (operations or compliance)."
            return False
        return True


class CanViewStats(HasPerm):
    perm = "notifications.view_dailystat"


class CanViewReports(HasPerm):
    perm = "notifications.view_reportrun"


@extend_schema(
    summary="Daily figures: volumes and outcomes by template, channel, source and status",
    description="The daily rollups summed over the dimensions named in `group_by`, over a range "
    "of days (default: the last 30), optionally narrowed to one template, channel, status, "
    "source, category or level.",
    parameters=[
        OpenApiParameter("start", OpenApiTypes.DATE, description="First day (default: 30 days)"),
        OpenApiParameter("end", OpenApiTypes.DATE, description="Last day, inclusive (today)"),
        *[
            OpenApiParameter(name, str)
            for name in ("template", "channel", "status", "source", "category", "level")
        ],
        OpenApiParameter(
            "group_by",
            str,
            description="Comma-separated: "
            + ", ".join(GROUP_FIELDS)
            + " (default "
            + ",".join(DEFAULT_GROUP_BY)
            + ")",
        ),
    ],
    responses={200: OpenApiTypes.OBJECT},
)
class StatsView(CcmAPIView):
    """Counts from the daily rollups (recomputed nightly over the trailing days), summed over
    the chosen dimensions. Level `communication` counts communications by their state (with
    `outcome`, their latest delivery's state), `delivery` every delivery by its state, `event`
    deliveries that got a complaint, open or click."""

    permission_classes = [*CcmAPIView.permission_classes, CanViewStats]
    required_scopes = ("stats:read",)

    def get(self, request):
        try:
            flt = selectors.stat_filter_parse(request.query_params)
        except ValueError as exc:
            raise BadStatsQuery(str(exc)) from None
        group_by = [g for g in (request.query_params.get("group_by") or "").split(",") if g]
        group_by = group_by or list(DEFAULT_GROUP_BY)
        unknown = [g for g in group_by if g not in GROUP_FIELDS]
        if unknown:
            raise BadStatsQuery(
                f"group_by: unknown {', '.join(unknown)}; choose from {', '.join(GROUP_FIELDS)}"
            )
        level = request.query_params.get("level", "")
        stats = selectors.stats_filter(DailyStat.objects.all(), flt, level=level or None)
        columns = [GROUP_FIELDS[g] for g in group_by]
        rows = stats.values(*columns).annotate(total=Sum("count")).order_by(*columns)
        results = [
            {**{g: row[GROUP_FIELDS[g]] for g in group_by}, "count": row["total"]} for row in rows
        ]
        for result in results:
            if "day" in result:
                result["day"] = result["day"].isoformat()
        return Response(
            {
                "start": flt.start.isoformat(),
                "end": flt.end.isoformat(),
                "group_by": group_by,
                "results": results,
            }
        )


class ReportRunAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReportRunAttempt
        fields = ["number", "started_at", "finished_at", "outcome", "error"]


class ReportRunSerializer(serializers.ModelSerializer):
    report = serializers.CharField(source="definition.name")
    kind = serializers.CharField(source="definition.kind")
    duration_s = serializers.FloatField(allow_null=True)
    pdf_url = serializers.SerializerMethodField()
    csv_url = serializers.SerializerMethodField()
    attempt_log = ReportRunAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = ReportRun
        fields = [
            "id",
            "report",
            "kind",
            "state",
            "trigger",
            "period_start",
            "period_end",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_s",
            "attempts",
            "next_attempt_at",
            "attempt_log",
            "recipients",
            "emailed_at",
            "summary",
            "error",
            "pdf_sha256",
            "csv_sha256",
            "pdf_url",
            "csv_url",
        ]

    def _url(self, run: ReportRun, fmt: str) -> str | None:
        if not (run.pdf_sha256 if fmt == "pdf" else run.csv_sha256):
            return None
        return self.context["request"].build_absolute_uri(f"/ops/reports/runs/{run.pk}/{fmt}/")

    def get_pdf_url(self, run) -> str | None:
        return self._url(run, "pdf")

    def get_csv_url(self, run) -> str | None:
        return self._url(run, "csv")


@extend_schema(
    summary="Production report runs, newest first",
    description="Each run's state, duration, recipients and its archived files (PDF, CSV) with "
    "their SHA-256 and download URLs. `report` narrows the list to one report definition.",
    parameters=[OpenApiParameter("report", int, description="A report definition's id")],
)
class ReportRunListView(CcmGenericAPIView, generics.ListAPIView):
    """Runs of the production reports, newest first, with their files' SHA-256."""

    permission_classes = [*CcmGenericAPIView.permission_classes, CanViewReports]
    required_scopes = ("reports:read",)
    serializer_class = ReportRunSerializer

    def get_queryset(self):
        report = self.request.query_params.get("report")
        if report and not report.isdigit():
            raise BadStatsQuery("report must be a report definition's id (a number)")
        return selectors.report_runs(int(report) if report else None)

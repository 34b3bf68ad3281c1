"""/metrics: Prometheus' text format, for a scraper with `Authorization: Bearer
<CCM_METRICS_TOKEN>` or a signed-in member of operations."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ccm import metrics
from notifications.reporting import selectors
from notifications.reporting.models import DailyStat, StatLevel
from notifications.reporting.rollups import day_bounds, delivery_counts, local_today


def notification_metrics() -> Iterable[GaugeMetricFamily]:
    """Deliveries by channel and result (rolled-up days plus today, live), and waiting items."""
    today = local_today()
    totals: dict[tuple[str, str], int] = {}
    rolled = (
        DailyStat.objects.filter(level=StatLevel.DELIVERY, day__lt=today)
        .values_list("channel", "status")
        .annotate(n=Sum("count"))
        .order_by()
    )
    for channel, status, n in rolled:
        totals[channel, status] = totals.get((channel, status), 0) + n
    start, end = day_bounds(today)
    for row in delivery_counts(selectors.todays_deliveries(start, end)):
        key = (row["channel"], row["status"])
        totals[key] = totals.get(key, 0) + row["count"]
    sends = GaugeMetricFamily(
        "ccm_deliveries",
        "Deliveries by channel and their current state (returned = a letter sent back)",
        labels=["channel", "result"],
    )
    for (channel, status), n in sorted(totals.items()):
        sends.add_metric([channel, status], n)
    yield sends
    waiting = GaugeMetricFamily(
        "ccm_items_waiting", "Communications and deliveries waiting per stage", labels=["stage"]
    )
    oldest = GaugeMetricFamily(
        "ccm_items_oldest_waiting_seconds", "Age of the oldest item per stage", labels=["stage"]
    )
    for queue in selectors.queue_depths():
        stage = f"{queue['level']}_{queue['stage']}"
        waiting.add_metric([stage], queue["count"])
        oldest.add_metric([stage], queue["oldest_age_s"] or 0)
    yield waiting
    yield oldest


def register() -> None:
    metrics.metrics_register_collector(notification_metrics)


def _allowed(request: HttpRequest) -> bool:
    token = settings.CCM_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode())
    return request.user.is_authenticated and request.user.has_perm("notifications.view_dailystat")


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        response = HttpResponse(
            "Metrics need 'Authorization: Bearer <CCM_METRICS_TOKEN>' or an operations login.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)

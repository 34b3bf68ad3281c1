"""Prometheus metrics of the web process, and the registry /metrics exposes.

Request counts are kept in process; figures read from the database (task queue, sends by
channel and result, heartbeats) are collected at scrape time by collectors that apps register
(`metrics_register_collector`), so a lower layer never imports a higher one."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "ccm_http_requests",
    "HTTP requests answered, by method and status",
    ["method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "ccm_http_request_duration_seconds",
    "Time to answer a request, by view",
    ["view"],
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class _FromDatabase(Collector):
    def __init__(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._collect = collect

    def collect(self):
        yield from self._collect()

    def describe(self):
        return []  # collected at scrape time only


def metrics_register_collector(collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
    REGISTRY.register(_FromDatabase(collect))


def kernel_metrics() -> Iterable[GaugeMetricFamily]:
    """The task queue and the clusters' heartbeats."""
    from ccm.health import cluster_state

    state = cluster_state()
    from django.utils import timezone
    from django_q.models import OrmQ

    now = timezone.now()
    depth = GaugeMetricFamily("ccm_task_queue_depth", "Queued tasks", labels=["state"])
    depth.add_metric(["due"], OrmQ.objects.filter(lock__lte=now).count())
    depth.add_metric(["in_progress"], OrmQ.objects.filter(lock__gt=now).count())
    yield depth
    yield GaugeMetricFamily(
        "ccm_task_queue_oldest_due_seconds",
        "Age of the oldest task that is due and not picked up",
        value=state["oldest_due_task_age_s"],
    )
    beats = GaugeMetricFamily(
        "ccm_cluster_heartbeat_age_seconds",
        "Seconds since each task cluster last ran its heartbeat",
        labels=["cluster", "host"],
    )
    last_task = GaugeMetricFamily(
        "ccm_host_last_task_age_seconds",
        "Seconds since a worker on each host last ran a task",
        labels=["cluster", "host"],
    )
    stale = GaugeMetricFamily(
        "ccm_host_stale",
        "1 when neither a heartbeat nor a task ran on the host within the bound",
        labels=["cluster", "host"],
    )
    for beat in state["heartbeats"]:
        labels = [beat["cluster"], beat["host"]]
        beats.add_metric(labels, beat["age_s"])
        if beat["last_task_age_s"] is not None:
            last_task.add_metric(labels, beat["last_task_age_s"])
        stale.add_metric(labels, 1 if beat["stale"] else 0)
    yield beats
    yield last_task
    yield stale
    yield GaugeMetricFamily(
        "ccm_cluster_healthy", "1 when the cluster takes due work", value=1 if state["ok"] else 0
    )


metrics_register_collector(kernel_metrics)

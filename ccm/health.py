"""Readiness checks for /healthz: database, task broker, document storage, task cluster."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.utils import timezone


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def check_broker() -> dict:
    from django_q.brokers import get_broker

    broker = get_broker()
    if not broker.ping():
        raise RuntimeError("broker did not answer ping")
    return {"broker": broker.info(), "queued": broker.queue_size()}


def check_storage() -> dict:
    name = default_storage.save(f"healthz/{uuid.uuid4().hex}.txt", ContentFile(b"ok"))
    try:
        with default_storage.open(name) as fh:
            if fh.read() != b"ok":
                raise RuntimeError("storage returned other bytes than written")
    finally:
        default_storage.delete(name)
    return {"backend": type(getattr(default_storage, "_wrapped", default_storage)).__name__}


def cluster_state(*, now: datetime | None = None) -> dict:
    """What the task cluster has done lately: each cluster's last heartbeat, the oldest task
    that is due and not picked up, and whether that is within the configured bounds."""
    from django_q.models import OrmQ

    from ccm.models import ClusterHeartbeat

    now = now or timezone.now()
    heartbeats = [
        {
            "cluster": beat.cluster,
            "host": beat.host,
            "beat_at": beat.beat_at.isoformat(),
            "age_s": round((now - beat.beat_at).total_seconds(), 1),
        }
        for beat in ClusterHeartbeat.objects.order_by("-beat_at")
    ]
    oldest_due = (
        OrmQ.objects.filter(lock__lte=now).order_by("lock").values_list("lock", flat=True).first()
    )
    due_age = round((now - oldest_due).total_seconds(), 1) if oldest_due else 0.0
    problems = []
    # No heartbeat yet means no cluster has run since install: due tasks still tell. Each
    # queue (the default one and every named one) needs a live cluster.
    newest: dict[str, float] = {}
    for beat in ClusterHeartbeat.objects.order_by("-beat_at").values("cluster", "beat_at"):
        newest.setdefault(beat["cluster"], round((now - beat["beat_at"]).total_seconds(), 1))
    from django_q.conf import Conf

    for cluster in (Conf.PREFIX, *settings.CCM_TASK_QUEUES):
        age_s = newest.get(cluster)
        if age_s is not None and age_s > settings.CCM_HEALTH_HEARTBEAT_MAX_AGE_S:
            problems.append(
                f"no heartbeat for {age_s:.0f} s from the clusters of queue {cluster} "
                f"(bound {settings.CCM_HEALTH_HEARTBEAT_MAX_AGE_S} s)"
            )
    if due_age > settings.CCM_HEALTH_DUE_TASK_MAX_AGE_S:
        problems.append(
            f"a task has been due for {due_age:.0f} s "
            f"(bound {settings.CCM_HEALTH_DUE_TASK_MAX_AGE_S} s)"
        )
    return {
        "ok": not problems,
        "problems": problems,
        "heartbeats": heartbeats,
        "oldest_due_task_age_s": due_age,
    }


def check_cluster() -> dict:
    state = cluster_state()
    if not state["ok"]:
        raise RuntimeError("task cluster is not taking work: " + "; ".join(state["problems"]))
    return {k: v for k, v in state.items() if k != "ok"}


CHECKS: dict[str, Callable[[], dict]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "cluster": check_cluster,
}


def run_checks() -> tuple[bool, dict]:
    results: dict[str, dict] = {}
    healthy = True
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            detail = check()
            results[name] = {"ok": True, **detail}
        except Exception as exc:  # a failing dependency is the answer, not a crash
            healthy = False
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return healthy, results


class ClusterWatchdog:
    """Probes the task cluster on this host with a heartbeat task and says when it is wedged:
    a probe that has not run within `stale_after` seconds.

    Why: django-q2 workers block in `multiprocessing.Queue.get()`, which holds the queue's read
    lock while waiting; a worker SIGKILLed while idle never releases it, so the reincarnated
    workers wait on the lock forever and the cluster takes no more work (django-q2 issue #23).
    Restarting the cluster is the only safe cure (`run_ccm` does it)."""

    def __init__(self, *, interval: float, stale_after: float, queue: str | None = None) -> None:
        self.interval = interval
        self.stale_after = stale_after
        self.queue = queue  # a named queue's cluster; None for the default queue's
        self.reset()

    def reset(self) -> None:
        self._next_probe = time.monotonic() + self.interval
        self._outstanding_since: datetime | None = None

    def wedged(self) -> bool:
        """Call often; probes every `interval` and answers whether the cluster is wedged."""
        import socket

        from django.db import close_old_connections
        from django_q.conf import Conf
        from django_q.tasks import async_task

        from ccm.models import ClusterHeartbeat

        if time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + self.interval
        close_old_connections()
        now = timezone.now()
        if self._outstanding_since is not None:
            beat_at = (
                ClusterHeartbeat.objects.filter(
                    cluster=self.queue or Conf.PREFIX or "default", host=socket.gethostname()
                )
                .values_list("beat_at", flat=True)
                .first()
            )
            if beat_at is not None and beat_at >= self._outstanding_since:
                self._outstanding_since = None
            elif (now - self._outstanding_since).total_seconds() > self.stale_after:
                return True
        if self._outstanding_since is None:
            self._outstanding_since = now
            async_task("ccm.tasks.cluster_heartbeat", cluster=self.queue)
        return False

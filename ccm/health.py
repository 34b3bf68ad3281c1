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


def _age(now: datetime, then: datetime | None) -> float | None:
    return round((now - then).total_seconds(), 1) if then else None


def cluster_state(*, now: datetime | None = None) -> dict:
    """What the task cluster has done lately: each cluster's last heartbeat, the oldest task
    that is due and not picked up, and whether that is within the configured bounds; per host,
    its heartbeat, the last task it ran, its cluster's queue, and whether it has gone stale."""
    from django.db.models import Count, Min, Q
    from django_q.models import OrmQ

    from ccm.models import ClusterHeartbeat

    now = now or timezone.now()
    # Per queue (an OrmQ key is the cluster name a task was sent to): due now, being worked on.
    queues = {
        row["key"]: row
        for row in OrmQ.objects.values("key")
        .annotate(
            due=Count("id", filter=Q(lock__lte=now)),
            in_progress=Count("id", filter=Q(lock__gt=now)),
            oldest=Min("lock", filter=Q(lock__lte=now)),
        )
        .order_by()
    }
    heartbeats = []
    for beat in ClusterHeartbeat.objects.order_by("-beat_at"):
        queue = queues.get(beat.cluster, {})
        alive_age = _age(now, beat.alive_at) or 0.0
        heartbeats.append(
            {
                "cluster": beat.cluster,
                "host": beat.host,
                "pid": beat.pid,
                "beat_at": beat.beat_at.isoformat(),
                "age_s": _age(now, beat.beat_at),
                "last_task": beat.last_task,
                "last_task_at": beat.last_task_at.isoformat() if beat.last_task_at else None,
                "last_task_age_s": _age(now, beat.last_task_at),
                "queue_due": queue.get("due", 0),
                "queue_in_progress": queue.get("in_progress", 0),
                "queue_oldest_due_age_s": _age(now, queue.get("oldest")),
                "stale": alive_age > settings.CCM_HEALTH_HOST_STALE_AFTER_S,
            }
        )
    oldest_due = min((q["oldest"] for q in queues.values() if q["oldest"]), default=None)
    due_age = _age(now, oldest_due) or 0.0
    problems = []
    # No heartbeat yet means no cluster has run since install: due tasks still tell. Each
    # queue (the default one and every named one) needs a live cluster.
    newest: dict[str, float] = {}
    for row in heartbeats:  # newest first
        newest.setdefault(row["cluster"], row["age_s"] or 0.0)
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
        # Flagged, not failing: the other hosts still take the work (a host taken out of
        # service on purpose is forgotten after CCM_HEALTH_HOST_FORGET_AFTER_S).
        "stale_hosts": [f"{b['cluster']}@{b['host']}" for b in heartbeats if b["stale"]],
        "oldest_due_task_age_s": due_age,
    }


class CheckFailed(RuntimeError):
    """A check that failed and still has details to show (the cluster's hosts)."""

    def __init__(self, message: str, detail: dict) -> None:
        super().__init__(message)
        self.detail = detail


def check_cluster() -> dict:
    state = cluster_state()
    detail = {k: v for k, v in state.items() if k != "ok"}
    if not state["ok"]:
        raise CheckFailed(
            "task cluster is not taking work: " + "; ".join(state["problems"]), detail
        )
    return detail


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
            results[name] = {
                **getattr(exc, "detail", {}),
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
            }
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
            beat = ClusterHeartbeat.objects.filter(
                cluster=self.queue or Conf.PREFIX or "default", host=socket.gethostname()
            ).first()
            # The probe ran here, or this host's workers ran another task since it was sent
            # (with several hosts on one queue, another host may take the probe).
            if beat is not None and beat.alive_at >= self._outstanding_since:
                self._outstanding_since = None
            elif (now - self._outstanding_since).total_seconds() > self.stale_after:
                return True
        if self._outstanding_since is None:
            self._outstanding_since = now
            async_task("ccm.tasks.cluster_heartbeat", cluster=self.queue)
        return False

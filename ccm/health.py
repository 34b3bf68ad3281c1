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
    # No heartbeat yet means no cluster has run since install: due tasks still tell.
    if heartbeats and heartbeats[0]["age_s"] > settings.CCM_HEALTH_HEARTBEAT_MAX_AGE_S:
        problems.append(
            f"no heartbeat for {heartbeats[0]['age_s']:.0f} s "
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

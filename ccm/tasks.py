"""Background work: enqueue after commit, and sweep rows stuck between states.

Tasks take ids, re-fetch, and must be safe to run twice (django-q2's ORM broker delivers at least
once). `enqueue` waits for the surrounding transaction to commit, so a rolled-back request
enqueues nothing; a crash between commit and enqueue is covered by a registered sweep, which
re-enqueues rows that have sat in an intermediate state for too long.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from django.conf import settings
from django.db import connections, models, transaction
from django.utils import timezone
from django_q.tasks import async_task

from ccm import context

logger = logging.getLogger(__name__)

# The keyword `enqueue` adds to a task so the worker knows which request asked for it; the
# pre_execute handler takes it out again before the task function is called.
REQUEST_ID_KWARG = "ccm_request_id"


class Queue(StrEnum):
    """Named queues: each is served by its own clusters (`qcluster` with Q_CLUSTER_NAME set to
    its name), so a backlog of one kind of work does not hold up another. A task not routed to
    one of them, or routed to one this deployment does not run (settings.CCM_TASK_QUEUES),
    goes to the default queue (Q_CLUSTER["name"]), whose clusters also run the schedules."""

    RENDER = "render"  # PDFs: composing communications that archive a letter, print streams
    DISPATCH = "dispatch"  # text composition, the release gate, sending, reconciling
    WEBHOOKS = "webhooks"  # calls to integrators' endpoints, which may be slow or down


# Task path → the queue it goes to (apps register theirs in AppConfig.ready()).
_task_queues: dict[str, Queue] = {}
# Task path → the name under which its first argument (an id or a list of ids) is logged.
_task_log_ids: dict[str, str] = {}


def register_task(task: str, *, queue: Queue | None = None, log_id: str = "") -> None:
    """Route `task` to `queue`; with `log_id`, every line the task logs carries its first
    argument under that name (e.g. communication_ids=[…] for a chunk)."""
    if queue is not None:
        _task_queues[task] = queue
    if log_id:
        _task_log_ids[task] = log_id


def queue_for(task: str, queue: Queue | None = None) -> str | None:
    """The queue `task` goes to (`queue` overrides its registered one); None is the default
    queue."""
    chosen = queue or _task_queues.get(task)
    return str(chosen) if chosen and str(chosen) in settings.CCM_TASK_QUEUES else None


def enqueue(
    task: str,
    *args: int | str | list[int],
    group: str | None = None,
    queue: Queue | None = None,
    **kwargs,
) -> None:
    """Enqueue dotted-path `task` with `args` (ids, or a chunk of ids) once the current
    transaction commits, on its queue (`queue`, else the one registered for the task). The
    request id of the enqueueing request travels with it, so the task's log lines and audit
    events carry it too."""
    rid = context.request_id()
    if rid:
        kwargs[REQUEST_ID_KWARG] = rid
    options: dict[str, str] = {"group": group} if group else {}
    if cluster := queue_for(task, queue):
        options["cluster"] = cluster

    def _send() -> None:
        async_task(task, *args, q_options=dict(options), **kwargs)

    transaction.on_commit(_send, robust=False)


_heap_frozen = False


def _worker_heap_freeze() -> None:
    """Once per worker process, before its first task: what is loaded by then (Django, the
    project's modules, settings, caches) lives as long as the worker, so it is moved out of
    the cyclic garbage collector's sight (`gc.freeze`). A pipeline chunk makes thousands of
    short-lived objects, and every full collection they trigger would walk that whole heap
    again: about 15 % of a chunk's CPU. Not in sync mode (`make run` without a cluster, the
    tests): there the task runs inside a web process, whose requests' objects would then never
    be collected."""
    global _heap_frozen
    if not _heap_frozen and not settings.Q_CLUSTER.get("sync"):
        _heap_frozen = True
        gc.collect()
        gc.freeze()


# What the worker had before each running task set its own context (a stack: a task run in
# sync mode runs inside the request that enqueued it and must give the request its id back).
_outer_request_ids: list[str | None] = []
_outer_log_ids: list[dict] = []


def _queries_forget() -> None:
    """With DEBUG on Django keeps every statement's text until the next request starts, and a
    worker serves no requests: each task starts with none kept, as a request does. A log that
    somebody is reading (a `CaptureQueriesContext` around a task run inline) is left alone."""
    for conn in connections.all(initialized_only=True):
        if not conn.force_debug_cursor:
            conn.queries_log.clear()


def task_context_enter(sender, func=None, task: dict | None = None, **kwargs) -> None:
    """django-q2's pre_execute: the task runs under the request id it was enqueued with."""
    _worker_heap_freeze()
    _queries_forget()
    task = task or {}
    rid = task.get("kwargs", {}).pop(REQUEST_ID_KWARG, None)
    _outer_request_ids.append(context.request_id())
    context.set_request_id(rid)
    # The ids the task works on (a chunk of communications, a delivery) go on its log lines.
    _outer_log_ids.append(context.set_log_ids(_task_ids(task)))
    # The first line under the task's request id (django-q's own comes before it is set).
    logger.info("task %s started: %s", task.get("id", ""), task.get("func", ""))


def task_context_exit(sender, func=None, task: dict | None = None, **kwargs) -> None:
    """django-q2's post_execute_in_worker: restore what was there before the task."""
    context.set_request_id(_outer_request_ids.pop() if _outer_request_ids else None)
    context.set_log_ids(_outer_log_ids.pop() if _outer_log_ids else {})


def _task_ids(task: dict) -> dict[str, int | list[int]]:
    from django_q.utils import get_func_repr

    name = _task_log_ids.get(get_func_repr(task.get("func")) if task.get("func") else "")
    args = task.get("args") or ()
    if not name or not args or not isinstance(args[0], int | list | tuple):
        return {}
    first = args[0]
    return {name: list(first) if isinstance(first, list | tuple) else first}


@dataclass(frozen=True)
class Sweep:
    """Rows of `queryset()` untouched for `older_than` that no live task carries get `task`
    again. A live task is a queued or running one (a broker row) of `task` or of one of
    `covered_by` whose arguments carry the row's id: a backlog waiting in the queue is not
    stuck, and sweeping it would only pile duplicate tasks on it. With `chunk`, ids are sent
    `chunk` at a time as one list argument."""

    name: str
    queryset: Callable[[], models.QuerySet]
    task: str
    older_than: timedelta
    timestamp_field: str = "updated_at"
    limit: int = 500
    covered_by: tuple[str, ...] = ()
    chunk: int = 0


_sweeps: dict[str, Sweep] = {}


def register_sweep(sweep: Sweep) -> None:
    """Register a sweep; apps call this in `AppConfig.ready()`."""
    _sweeps[sweep.name] = sweep


def registered_sweeps() -> list[Sweep]:
    return list(_sweeps.values())


def live_task_ids() -> dict[str, set[int]] | None:
    """Task path → the ids its queued or running tasks carry (an id, or a list of ids as first
    argument), read from the ORM broker's rows; None when the broker is not the ORM (the
    queue cannot be read, so every old row counts as stuck)."""
    from django_q.conf import Conf
    from django_q.models import OrmQ
    from django_q.utils import get_func_repr

    if not Conf.ORM:
        return None
    live: dict[str, set[int]] = {}
    # Only the payloads: a backlog of thousands decodes in tens of milliseconds.
    for row in OrmQ.objects.only("payload").iterator(chunk_size=2000):
        task = row.task
        args = task.get("args") or ()
        if not args:
            continue
        first = args[0]
        ids = live.setdefault(get_func_repr(task.get("func")), set())
        if isinstance(first, int):
            ids.add(first)
        elif isinstance(first, list | tuple):
            ids.update(x for x in first if isinstance(x, int))
    return live


def sweep_run(sweep: Sweep, *, now=None, live: dict[str, set[int]] | None = None) -> int:
    """Re-enqueue `sweep.task` for its rows that are old and carried by no live task."""
    cutoff = (now or timezone.now()) - sweep.older_than
    stuck = sweep.queryset().filter(**{f"{sweep.timestamp_field}__lt": cutoff})
    if live is None:
        live = live_task_ids()
    carried: set[int] = set()
    for func in (sweep.task, *sweep.covered_by):
        carried |= (live or {}).get(func, set())
    ids: list[int] = []
    for pk in stuck.order_by(sweep.timestamp_field).values_list("pk", flat=True).iterator():
        if pk not in carried:
            ids.append(pk)
            if len(ids) >= sweep.limit:
                break
    options = {"cluster": cluster} if (cluster := queue_for(sweep.task)) else {}
    if sweep.chunk:
        for start in range(0, len(ids), sweep.chunk):
            async_task(sweep.task, ids[start : start + sweep.chunk], q_options=dict(options))
    else:
        for pk in ids:
            async_task(sweep.task, pk, q_options=dict(options))
    if ids:
        logger.warning("sweep %s re-enqueued %d stuck rows", sweep.name, len(ids))
    return len(ids)


def sweep_all() -> dict[str, int]:
    """The periodic task: run every registered sweep (the queue is read once for all)."""
    live = live_task_ids()
    return {sweep.name: sweep_run(sweep, live=live) for sweep in registered_sweeps()}


def _host_row():
    """This host's heartbeat row in this cluster (made on first use)."""
    import socket

    from django_q.conf import Conf

    from ccm.models import ClusterHeartbeat

    heartbeat, _ = ClusterHeartbeat.objects.get_or_create(
        cluster=Conf.CLUSTER_NAME or "default",
        host=socket.gethostname(),
        defaults={"beat_at": timezone.now()},
    )
    return heartbeat


def cluster_heartbeat() -> int:
    """Record that this cluster ran a scheduled task now (see `ccm.health.check_cluster`), and
    forget hosts silent for longer than CCM_HEALTH_HOST_FORGET_AFTER_S (taken out of service)."""
    import os

    from django.conf import settings

    from ccm.models import ClusterHeartbeat

    heartbeat = _host_row()
    now = timezone.now()
    ClusterHeartbeat.objects.filter(pk=heartbeat.pk).update(
        beat_at=now, pid=os.getpid(), beats=models.F("beats") + 1
    )
    forget = now - timedelta(seconds=settings.CCM_HEALTH_HOST_FORGET_AFTER_S)
    ClusterHeartbeat.objects.filter(beat_at__lt=forget).exclude(last_task_at__gte=forget).delete()
    return heartbeat.pk


# A worker stamps its host's row with the task it ran at most this often (one UPDATE per
# worker process every few seconds, whatever the task rate).
HOST_TASK_RECORD_EVERY_S = 5.0
_host_task_recorded_at = -HOST_TASK_RECORD_EVERY_S


def host_task_record(sender, func=None, task: dict | None = None, **kwargs) -> None:
    """django-q2's post_execute_in_worker: record on this host's heartbeat row the task a
    worker just ran. Not in sync mode (no worker host: the task ran inside a request)."""
    global _host_task_recorded_at
    import time

    from django.db import DatabaseError
    from django_q.conf import Conf
    from django_q.utils import get_func_repr

    if Conf.SYNC:
        return
    now = time.monotonic()
    if now - _host_task_recorded_at < HOST_TASK_RECORD_EVERY_S:
        return
    _host_task_recorded_at = now
    from ccm.models import ClusterHeartbeat

    name = get_func_repr(func) if func is not None else str((task or {}).get("func", ""))
    try:
        ClusterHeartbeat.objects.filter(pk=_host_row().pk).update(
            last_task=name[:200], last_task_at=timezone.now()
        )
    except DatabaseError:  # a sign of life is not worth failing a worker for
        logger.warning("could not record the last task of this host", exc_info=True)


def idempotency_records_purge() -> int:
    from ccm.models import IdempotencyRecord

    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted


# Periodic tasks the kernel schedules (name → (dotted path, minutes between runs or a cron
# expression evaluated in settings.TIME_ZONE)).
SCHEDULES: dict[str, tuple[str, int | str]] = {
    "ccm.sweep_all": ("ccm.tasks.sweep_all", 1),
    "ccm.idempotency_records_purge": ("ccm.tasks.idempotency_records_purge", 60),
    "ccm.cluster_heartbeat": ("ccm.tasks.cluster_heartbeat", 1),
}


def register_schedule(name: str, func: str, minutes: int | str) -> None:
    """Declare a periodic task every `minutes`, or at the times of a cron expression (a str);
    `schedules_sync` (run after every migrate) creates its row."""
    SCHEDULES[name] = (func, minutes)


def schedules_sync() -> None:
    from django.conf import settings
    from django_q.models import Schedule

    for name, (func, every) in SCHEDULES.items():
        timing: dict = (
            {"schedule_type": Schedule.CRON, "cron": every, "minutes": None}
            if isinstance(every, str)
            else {"schedule_type": Schedule.MINUTES, "minutes": every, "cron": None}
        )
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "repeats": -1, **timing}
        )
    # Each named queue's clusters run their own heartbeat (a schedule for that cluster), so
    # /healthz sees a queue whose clusters stopped.
    for queue in settings.CCM_TASK_QUEUES:
        Schedule.objects.update_or_create(
            name=f"ccm.cluster_heartbeat.{queue}",
            defaults={
                "func": "ccm.tasks.cluster_heartbeat",
                "repeats": -1,
                "schedule_type": Schedule.MINUTES,
                "minutes": 1,
                "cluster": queue,
            },
        )

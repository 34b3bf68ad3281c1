from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from ccm import tasks
from ccm.models import IdempotencyRecord


def _queued_funcs() -> list[str]:
    return [q.func() for q in OrmQ.objects.all()]


@pytest.mark.django_db(transaction=True)
def test_enqueue_waits_for_commit():
    with transaction.atomic():
        tasks.enqueue("ccm.tasks.idempotency_records_purge")
        assert _queued_funcs() == []  # not before the commit
    assert _queued_funcs() == ["ccm.tasks.idempotency_records_purge"]


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_enqueues_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.enqueue("ccm.tasks.idempotency_records_purge")
        raise RuntimeError("the request failed after enqueueing")
    assert _queued_funcs() == []


@pytest.mark.django_db(transaction=True)
def test_sweep_reenqueues_only_rows_stuck_long_enough():
    # given one row stuck in progress for an hour and one that just started
    now = timezone.now()
    old = IdempotencyRecord.objects.create(
        client="c", key="old", method="POST", path="/", request_hash="h", expires_at=now
    )
    IdempotencyRecord.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=1))
    IdempotencyRecord.objects.create(
        client="c", key="new", method="POST", path="/", request_hash="h", expires_at=now
    )
    sweep = tasks.Sweep(
        name="test",
        queryset=lambda: IdempotencyRecord.objects.filter(state="in_progress"),
        task="ccm.tasks.idempotency_records_purge",
        older_than=timedelta(minutes=5),
        timestamp_field="created_at",
    )
    # when
    assert tasks.sweep_run(sweep) == 1
    # then the task was enqueued for the stuck row only
    queued = OrmQ.objects.get()
    assert queued.task["args"] == (old.pk,)


def test_periodic_tasks_are_scheduled_after_migrate(db):
    names = set(Schedule.objects.values_list("name", flat=True))
    assert {"ccm.sweep_all", "ccm.idempotency_records_purge"} <= names


def test_q_cluster_settings_are_bounded(settings):
    q = settings.Q_CLUSTER
    assert q["timeout"] > 0
    assert q["retry"] > q["timeout"]
    assert 0 < q["max_attempts"] < 10
    assert q["ack_failures"] is True


def test_a_task_starts_with_no_sql_text_kept_from_the_last(db, settings):
    # With DEBUG on Django keeps statement texts until a request starts; a cluster worker
    # serves none, so each task starts the log afresh (a long-lived worker grew by it).
    from django.db import connection

    settings.DEBUG = True
    IdempotencyRecord.objects.exists()
    assert connection.queries_log
    tasks.task_context_enter(None, task={"id": "t", "func": "ccm.tasks.sweep_all"})
    try:
        assert not connection.queries_log
    finally:
        tasks.task_context_exit(None, task={})


def test_a_task_run_inside_a_web_process_leaves_its_heap_collectable(settings, monkeypatch):
    # A cluster worker freezes what it loaded before its first task (gc.freeze); a task run in
    # sync mode runs inside a web process, whose request objects must stay collectable.
    import gc

    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}  # Q_SYNC=1
    gc.unfreeze()
    monkeypatch.setattr(tasks, "_heap_frozen", False)
    tasks.task_context_enter(None, task={"id": "t", "func": "ccm.tasks.sweep_all"})
    try:
        assert gc.get_freeze_count() == 0
    finally:
        tasks.task_context_exit(None, task={})
        gc.unfreeze()


def test_a_cluster_worker_freezes_its_heap_before_its_first_task(settings, monkeypatch):
    import gc

    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": False}
    gc.unfreeze()
    monkeypatch.setattr(tasks, "_heap_frozen", False)
    tasks.task_context_enter(None, task={"id": "t", "func": "ccm.tasks.sweep_all"})
    try:
        assert gc.get_freeze_count() > 0
    finally:
        tasks.task_context_exit(None, task={})
        gc.unfreeze()

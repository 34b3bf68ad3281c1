"""Tasks queued or scheduled before the modules moved into capability packages run after the
upgrade: ccm's migrations 0011 to 0013 rewrite the dotted paths stored in django-q2's rows."""

from __future__ import annotations

import importlib
import pydoc

from django.apps import apps
from django_q.brokers import get_broker
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage

from .test_pipeline import request

moved = importlib.import_module("ccm.migrations.0011_task_paths_moved")
intake_moved = importlib.import_module("ccm.migrations.0012_gmail_intake_task_moved")
split = importlib.import_module("ccm.migrations.0013_pipeline_chunk_tasks_moved")


def _queued(func: str, *args) -> OrmQ:
    task = {"id": "t-1", "name": "old-task", "func": func, "args": args, "kwargs": {}}
    return OrmQ.objects.create(
        key=get_broker().list_key, payload=SignedPackage.dumps(task), lock=None
    )


def test_a_task_queued_under_an_old_path_runs_after_the_upgrade(letter, customer, integrator):
    # given: a communication waiting for composition, its task queued by the old code
    communication, _ = request(customer, integrator)
    assert communication.state == "received"
    row = _queued("notifications.tasks.communication_compose", communication.pk)
    Schedule.objects.create(name="old-sweep", func="notifications.bulk.compose_drain")
    assert pydoc.locate("notifications.tasks.communication_compose") is None
    # when: the upgrade migrates
    moved.rewrite(apps, None)
    # then: the worker finds the function (as django-q2's worker does) and the task runs
    task = SignedPackage.loads(OrmQ.objects.get(pk=row.pk).payload)
    assert task["func"] == "notifications.pipeline.tasks.communication_compose"
    pydoc.locate(task["func"])(*task["args"], **task["kwargs"])
    communication.refresh_from_db()
    assert communication.state not in {"received", "composing"}
    assert Schedule.objects.get(name="old-sweep").func == (
        "notifications.pipeline.bulk.compose_drain"
    )


def test_the_rewrite_leaves_new_and_unknown_paths_alone_and_goes_back(db):
    row = _queued("notifications.webhooks.send.webhook_delivery_send", 1)
    Schedule.objects.create(name="kept", func="ccm.tasks.sweep_all")
    Schedule.objects.create(name="moved", func="cases.request_tasks.reprint_fulfil")
    moved.rewrite(apps, None)
    task = SignedPackage.loads(OrmQ.objects.get(pk=row.pk).payload)
    assert task["func"] == "notifications.webhooks.send.webhook_delivery_send"
    assert Schedule.objects.get(name="kept").func == "ccm.tasks.sweep_all"
    assert Schedule.objects.get(name="moved").func == "cases.requests.tasks.reprint_fulfil"
    # every new path names a function that exists
    assert pydoc.locate("cases.requests.tasks.reprint_fulfil") is not None
    moved.rewrite_back(apps, None)
    assert Schedule.objects.get(name="moved").func == "cases.request_tasks.reprint_fulfil"


def test_the_mailbox_intake_queued_under_its_old_path_runs_after_the_upgrade(db):
    row = _queued("cases.requests.tasks.gmail_intake")
    Schedule.objects.create(name="intake", func="cases.requests.tasks.gmail_intake")
    assert pydoc.locate("cases.requests.tasks.gmail_intake") is None
    intake_moved.forwards(apps, None)
    task = SignedPackage.loads(OrmQ.objects.get(pk=row.pk).payload)
    assert task["func"] == "cases.inbox.tasks.gmail_intake"
    assert Schedule.objects.get(name="intake").func == "cases.inbox.tasks.gmail_intake"
    assert pydoc.locate(task["func"]) is not None
    intake_moved.backwards(apps, None)
    assert Schedule.objects.get(name="intake").func == "cases.requests.tasks.gmail_intake"


def test_a_chunk_queued_before_the_pipeline_split_runs_after_the_upgrade(
    letter, customer, integrator
):
    # given: a communication waiting for composition, its chunk queued under the old module
    communication, _ = request(customer, integrator)
    row = _queued("notifications.pipeline.bulk.compose_chunk", [communication.pk])
    Schedule.objects.create(name="drain", func="notifications.pipeline.bulk.compose_drain")
    assert pydoc.locate("notifications.pipeline.bulk.compose_chunk") is None
    # when: the upgrade migrates
    split.forwards(apps, None)
    # then: every moved task names a function that exists, and the queued chunk runs
    assert all(pydoc.locate(new) is not None for new in split.MOVED.values())
    task = SignedPackage.loads(OrmQ.objects.get(pk=row.pk).payload)
    assert task["func"] == "notifications.pipeline.compose.compose_chunk"
    pydoc.locate(task["func"])(*task["args"], **task["kwargs"])
    communication.refresh_from_db()
    assert communication.state not in {"received", "composing"}
    assert Schedule.objects.get(name="drain").func == "notifications.pipeline.compose.compose_drain"
    split.backwards(apps, None)
    assert Schedule.objects.get(name="drain").func == "notifications.pipeline.bulk.compose_drain"

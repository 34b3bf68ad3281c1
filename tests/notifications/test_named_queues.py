"""Named queues: rendering, dispatch and webhooks are served by their own clusters, so a backlog
of letters to render never stands between an urgent SMS and its provider.

A real `manage.py qcluster` for the dispatch queue only (Q_CLUSTER_NAME=dispatch, as a
deployment runs it) shares the test database; the render queue's clusters are not running, so
its backlog stays where it is — the worst case of a render backlog."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django_q.conf import Conf
from django_q.models import OrmQ

from deploy import stack
from notifications.models import CommState, Communication, Delivery, DeliveryState
from notifications.pipeline import intake
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

ROOT = Path(__file__).resolve().parents[2]
DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
QUEUES = ["render", "dispatch", "webhooks"]

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: a real cluster process shares the test database",
    ),
    pytest.mark.django_db(transaction=True),
]


def test_a_render_backlog_does_not_delay_an_urgent_sms(
    author, reviewer, customer, integrator, settings, monkeypatch, tmp_path
):
    settings.CCM_TASK_QUEUES = QUEUES
    settings.CCM_BULK_CHUNK = 10
    monkeypatch.setattr(Conf, "SYNC", False)
    publish(letter_bundle(), author=author, reviewer=reviewer)  # prints, attaches its PDF
    publish(
        letter_bundle("urgent_sms", channels=["sms"], delivery="portal_link"),
        author=author,
        reviewer=reviewer,
    )
    # given a backlog of 60 letters waiting for a PDF each
    letters = intake.communications_intake(
        items=[{"template": "letter", "customer": customer, "data": DATA}] * 60,
        client="statements",
        by=integrator,
    )
    assert all(r.accepted for r in letters)
    # when an urgent SMS comes in after them
    [urgent] = intake.communications_intake(
        items=[{"template": "urgent_sms", "customer": customer, "data": DATA, "urgency": "urgent"}],
        client="alerts",
        by=integrator,
    )
    # then the letters are queued for rendering, the SMS for dispatch
    assert sorted(OrmQ.objects.values_list("key", flat=True)) == ["dispatch"] + ["render"] * 6
    # and a dispatch cluster sends it while every letter still waits for its renderer
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CCM_TASK_QUEUES": ",".join(QUEUES),
        "Q_CLUSTER_NAME": "dispatch",
        "Q_DISPATCH_WORKERS": "1",
        "Q_SYNC": "false",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "CCM_SMS_BACKEND": "notifications.channels.sms.ConsoleSmsBackend",
        "LOG_LEVEL": "WARNING",
    }
    cluster = stack.start(
        [sys.executable, "manage.py", "qcluster"], env=env, log=tmp_path / "dispatch.log"
    )
    started = time.monotonic()
    try:
        sms = Delivery.objects.filter(communication_id=urgent.communication_id, channel="sms")
        while not sms.filter(state=DeliveryState.SENT).exists():
            assert cluster.poll() is None, (tmp_path / "dispatch.log").read_text()[-3000:]
            assert time.monotonic() - started < 90, "the urgent SMS was not sent in 90 s"
            time.sleep(0.2)
    finally:
        stack.stop(cluster)
    waiting = Communication.objects.filter(template__code="letter", state=CommState.RECEIVED)
    assert waiting.count() == 60
    assert OrmQ.objects.filter(key="render").count() == 6


def test_without_named_queues_everything_goes_to_the_default_queue(
    letter, customer, integrator, settings, monkeypatch
):
    settings.CCM_TASK_QUEUES = []
    monkeypatch.setattr(Conf, "SYNC", False)
    intake.communications_intake(
        items=[{"template": "letter", "customer": customer, "data": DATA}],
        client="t",
        by=integrator,
    )
    assert list(OrmQ.objects.values_list("key", flat=True)) == [Conf.PREFIX]


def test_a_settings_typo_in_the_queues_is_refused_at_start(tmp_path):
    env = {**os.environ, "CCM_TASK_QUEUES": "render,dispach"}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "CCM_TASK_QUEUES names ['dispach']" in done.stderr

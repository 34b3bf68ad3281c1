"""Exactly once under faults, through the public API: communications asked for over HTTP (the
batch endpoint and single POSTs, served by gunicorn), sent by a real django-q2 cluster that is
SIGKILLed several times mid-dispatch, to a Postmark stub that fails 30 % of the calls (429 /
500), leaves 5 % unanswered, and accepts 10 % but answers after the client's timeout. Every
communication must be delivered exactly once (counted at the stub by Message-ID) or have failed
with a reason; none left in between; the task queue drained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ

from bench.postmark_stub import PostmarkStub
from bench.serve import Client, start_gunicorn, stop
from ccm.api.auth import api_key_create
from ccm.tasks import registered_sweeps, sweep_run
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.models import CommState, Communication, Customer, Delivery, DeliveryState
from tests.notifications.conftest import publish

ROOT = Path(__file__).resolve().parents[2]
N_BATCH = 30
N_SINGLE = 30
KILLS = 5
# Give-up bound for the whole run (it ends as soon as everything is settled; generous, for a
# loaded machine), so `make test` stays bounded.
BUDGET_S = 300
ENDED = {
    CommState.SENT,
    CommState.DELIVERED,
    CommState.UNDELIVERABLE,
    CommState.COMPOSE_FAILED,
    CommState.CANCELLED,
}

pytestmark = [
    pytest.mark.faults,
    pytest.mark.postgres,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: gunicorn and a real qcluster share the test database",
    ),
    pytest.mark.django_db(transaction=True),
]

SETTINGS = """from ccm.settings import *  # noqa: F403
from ccm.settings import ANYMAIL

# The client gives up after 0.5 s; the stub holds late and unanswered sends for 1 s.
ANYMAIL = {**ANYMAIL, "REQUESTS_TIMEOUT": 0.5}
CCM_POSTMARK_BATCH = 5
CCM_BULK_CHUNK = 10
CCM_DISPATCH_MAX_ATTEMPTS = 30
"""


def data(i: int) -> dict:
    return {
        "customer": {"name": f"Customer {i}"},
        "reference": f"DOC-{i}",
        "document_title": "Your statement",
        "document_date": "2026-04-12",
        "portal_url": f"https://portal.example/d/{i}",
    }


def start_cluster(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def sweep_as_if_late() -> None:
    """What the periodic sweeps do once their thresholds have passed, and what the backoff
    allows once it has elapsed, without waiting minutes for either."""
    Delivery.objects.filter(state=DeliveryState.PENDING).update(next_attempt_at=timezone.now())
    later = timezone.now() + timedelta(minutes=10)
    for sweep in registered_sweeps():
        if sweep.name.startswith("notifications."):
            sweep_run(sweep, now=later)


def unsettled() -> int:
    return (
        Communication.objects.exclude(state__in=ENDED).count()
        + Delivery.objects.filter(state__in=[DeliveryState.PENDING, DeliveryState.SENDING]).count()
    )


def test_every_communication_is_sent_exactly_once_or_fails_with_a_reason(
    author, reviewer, tmp_path
):
    # given customers, the published template, a faulty provider, the API and a cluster
    publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)
    customers = Customer.objects.bulk_create(
        [Customer(external_ref=f"X-{i}", name=f"Customer {i}") for i in range(N_BATCH + N_SINGLE)]
    )
    for i, customer in enumerate(customers):
        customer.contacts.create(kind="email", value=f"x{i}@example.org", is_primary=True)
    key = api_key_create(name="faults", scopes=["communications:write"]).key
    (tmp_path / "faults_settings.py").write_text(SETTINGS)
    db = connection.settings_dict
    stub = PostmarkStub(timeout_delay_s=1.0, max_lifetime_s=BUDGET_S + 60).start()
    stub.configure(
        failure_ratio=0.30,
        faults=["429", "500"],
        unanswered_ratio=0.05,
        late_ratio=0.10,
        timeout_delay_s=1.0,
        seed=5,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "faults_settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        # Tasks this process enqueues (the sweeps) are signed with its key.
        "SECRET_KEY": django_settings.SECRET_KEY,
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "POSTMARK_SERVER_TOKEN": stub.token,
        "POSTMARK_API_URL": stub.url,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "Q_WORKERS": "2",
        "Q_SYNC": "false",
        # A task lost with a killed worker is handed out again after 10 s.
        "Q_TIMEOUT": "8",
        "Q_RETRY": "10",
        "CCM_SENDING_STALE_AFTER_S": "3",
        "CCM_SWEEP_AFTER_SECONDS": "5",
        "LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    web = cluster = None
    kills = 0
    try:
        web, port = start_gunicorn(env, tmp_path / "gunicorn.log", workers=2)
        cluster = start_cluster(env)
        api = Client(port, headers={"Authorization": f"Api-Key {key}"}, timeout=30)
        # when integrators ask over both entry points
        batch = api.request(
            "POST",
            "/api/v1/communications/batch",
            {
                "items": [
                    {"template": "document_ready", "customer": f"X-{i}", "data": data(i)}
                    for i in range(N_BATCH)
                ]
            },
        )
        assert batch.status == 202, batch.body
        for i in range(N_BATCH, N_BATCH + N_SINGLE):
            single = api.request(
                "POST",
                "/api/v1/communications",
                {"template": "document_ready", "customer": f"X-{i}", "data": data(i)},
            )
            assert single.status == 202, single.body
        # and the cluster is killed mid-dispatch, several times, and restarted
        last_kill = time.monotonic()
        # (until the kills are done, or nothing is left to be killed in the middle of)
        while kills < KILLS and time.monotonic() - started < BUDGET_S / 2 and unsettled():
            sending = Delivery.objects.filter(state=DeliveryState.SENDING).exists()
            if sending and time.monotonic() - last_kill > 2:
                kill(cluster)
                kills += 1
                cluster = start_cluster(env)
                last_kill = time.monotonic()
            time.sleep(0.1)
        # then the sweeps and retries bring every communication to an end
        while unsettled() and time.monotonic() - started < BUDGET_S:
            sweep_as_if_late()
            time.sleep(3)
        drained_by = time.monotonic() + 60
        while OrmQ.objects.exists() and time.monotonic() < drained_by:
            time.sleep(0.5)
        queued = OrmQ.objects.count()
    finally:
        if cluster is not None and cluster.poll() is None:
            kill(cluster)
        stop(web)
        received = stub.message_ids()
        faulted = stub.stats()["faulted"]
        stub.stop()

    assert kills >= 3, f"only {kills} kills happened mid-dispatch"
    assert sum(faulted.values()) > 0, faulted
    assert Communication.objects.count() == N_BATCH + N_SINGLE
    # Every way it can go wrong, listed together: what the pipeline's owner needs to see.
    problems = []
    for communication in Communication.objects.prefetch_related("deliveries"):
        deliveries = list(communication.deliveries.all())
        facts = [
            (d.pk, d.state, d.attempts, d.last_error[:80], received.get(d.message_id, 0))
            for d in deliveries
        ]
        sent = [d for d in deliveries if d.state == DeliveryState.SENT]
        if communication.state not in ENDED:
            problems.append(f"{communication.pk} left {communication.state}: {facts}")
        elif communication.state in {CommState.SENT, CommState.DELIVERED}:
            if len(sent) != 1 or received.get(sent[0].message_id) != 1:
                problems.append(f"{communication.pk} sent, but: {facts}")
        elif not communication.failure_reason:
            problems.append(f"{communication.pk} {communication.state} without a reason")
        for d in deliveries:
            if received.get(d.message_id, 0) > 1:
                problems.append(f"{communication.pk}: delivery {d.pk} sent twice: {facts}")
            elif received.get(d.message_id) and d.state != DeliveryState.SENT:
                problems.append(f"{communication.pk}: the provider has {d.pk} ({d.state})")
    if queued:
        problems.append(f"{queued} tasks still queued")
    assert problems == [], "\n".join(problems)

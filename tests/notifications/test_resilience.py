"""The bulk path against a misbehaving provider and a dying worker, counted at a loopback
Postmark stub (bench/postmark_stub.py) by Message-ID: nothing lost, nothing sent twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core import mail
from django.db import connection, transaction
from django_q.conf import Conf

from bench.postmark_stub import PostmarkStub
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.models import Communication, Customer, Delivery
from notifications.pipeline import compose, dispatch, intake, services
from tests.notifications.conftest import publish

ROOT = Path(__file__).resolve().parents[2]
N = 40


@pytest.fixture
def document_ready(author, reviewer):
    return publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)


@pytest.fixture
def many_customers(db):
    customers = Customer.objects.bulk_create(
        [Customer(external_ref=f"R-{i}", name=f"Customer {i}") for i in range(N)]
    )
    for i, customer in enumerate(customers):
        customer.contacts.create(kind="email", value=f"r{i}@example.org", is_primary=True)
    return customers


@pytest.fixture
def stub(settings):
    with PostmarkStub(timeout_delay_s=0.6, max_lifetime_s=120) as running:
        settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
        settings.ANYMAIL = {**running.anymail_settings(), "REQUESTS_TIMEOUT": 0.3}
        yield running


def items(customers):
    return [
        {
            "customer": c,
            "data": {
                "customer": {"name": c.name},
                "reference": f"DOC-{i}",
                "document_title": "Your statement",
                "document_date": "2026-04-12",
                "portal_url": f"https://portal.example/d/{i}",
            },
        }
        for i, c in enumerate(customers)
    ]


def request(customers, integrator) -> list[int]:
    return intake.communications_request_bulk(
        template_code="document_ready", items=items(customers), client="t", by=integrator
    )


def settle(settings, *, rounds: int = 30) -> None:
    """What the sweeps do, until nothing is left to do: reconcile `sending`, retry `pending`
    (with next_attempt_at forced to now)."""
    settings.CCM_SENDING_STALE_AFTER_S = 0
    for _ in range(rounds):
        stuck = list(Delivery.objects.filter(state="sending").values_list("pk", flat=True))
        for pk in stuck:
            services.delivery_reconcile_run(pk)
        Delivery.objects.filter(state="pending").update(next_attempt_at=None)
        pending = list(Delivery.objects.filter(state="pending").values_list("pk", flat=True))
        if not stuck and not pending:
            return
        if pending:
            dispatch.dispatch_chunk(pending)
    raise AssertionError("deliveries still unsettled after every round")


def counted(stub) -> tuple[int, int]:
    """(lost, duplicated) at the stub, by Message-ID."""
    expected = set(Delivery.objects.values_list("message_id", flat=True))
    received = stub.message_ids()
    lost = len(expected - set(received))
    duplicated = sum(1 for mid, n in received.items() if n > 1)
    return lost, duplicated


@pytest.mark.parametrize("batch", [1, 4], ids=["one-call-per-message", "postmark-batch"])
def test_flaky_provider_everything_sent_exactly_once(
    batch, document_ready, many_customers, integrator, stub, settings, monkeypatch
):
    # given a provider failing 30 % of the calls: 429, 500, or accepted-then-timed-out
    settings.CCM_POSTMARK_BATCH = batch
    settings.CCM_DISPATCH_INLINE_RETRIES = 1
    settings.CCM_DISPATCH_MAX_ATTEMPTS = 50
    monkeypatch.setattr(dispatch, "backoff_seconds", lambda *a, **k: 0)
    stub.configure(failure_ratio=0.3, seed=11)
    # when the pipeline runs and the sweeps retry what is left
    ids = request(many_customers, integrator)
    compose.compose_chunk(ids)
    dispatch.dispatch_chunk(list(Delivery.objects.values_list("pk", flat=True)))
    settle(settings)
    # then
    stats = stub.stats()
    assert sum(stats["faulted"].values()) > 0, stats
    assert set(Delivery.objects.values_list("state", flat=True)) == {"sent"}
    assert set(Communication.objects.values_list("state", flat=True)) == {"sent"}
    assert counted(stub) == (0, 0)
    received = stub.message_ids()
    assert len(received) == N
    # the provider's own id is what was recorded for each delivery
    assert all(d.provider_message_id for d in Delivery.objects.all())


@pytest.mark.parametrize("batch", [1, 10], ids=["one-call-per-message", "postmark-batch"])
def test_permanent_rejection_fails_with_the_providers_reason(
    batch, document_ready, many_customers, integrator, stub, settings
):
    settings.CCM_POSTMARK_BATCH = batch
    stub.configure(reject=True)
    ids = request(many_customers[:3], integrator)
    compose.compose_chunk(ids)
    result = dispatch.dispatch_chunk(list(Delivery.objects.values_list("pk", flat=True)))
    assert result["failed"] == 3
    for delivery in Delivery.objects.all():
        assert delivery.state == "failed"
        assert f"Invalid 'To' address: '{delivery.address}'" in delivery.last_error
        assert delivery.attempts == 1
    assert stub.message_ids() == {}


def test_rolled_back_bulk_request_sends_nothing(
    document_ready, many_customers, integrator, sync_tasks
):
    def doomed():
        with transaction.atomic():
            request(many_customers[:3], integrator)
            raise RuntimeError("the caller's transaction failed")

    with pytest.raises(RuntimeError):
        sync_tasks(doomed)
    assert not Communication.objects.exists()
    assert mail.outbox == []


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: a real qcluster process shares the test database",
)
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_dispatch_sends_each_message_once(
    document_ready, many_customers, integrator, stub, settings, monkeypatch, tmp_path
):
    # given a slow provider and a real cluster sending in batches of 5
    stub.configure(delay_s=0.2)
    (tmp_path / "resilience_settings.py").write_text(
        "from ccm.settings import *  # noqa: F403\nCCM_POSTMARK_BATCH = 5\nCCM_BULK_CHUNK = 100\n"
    )
    db = connection.settings_dict
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "resilience_settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "POSTMARK_SERVER_TOKEN": stub.token,
        "POSTMARK_API_URL": stub.url,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "Q_WORKERS": "2",
        "Q_SYNC": "false",
        "LOG_LEVEL": "WARNING",
    }
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        request(many_customers, integrator)  # commits: the chunk task reaches the cluster
        # when the cluster is killed while some deliveries are in `sending`
        deadline = time.monotonic() + 45
        while not (
            Delivery.objects.filter(state="sending").exists() and stub.stats()["received"] >= 5
        ):
            assert time.monotonic() < deadline, "the cluster never started sending"
            assert cluster.poll() is None, "the cluster died by itself"
            time.sleep(0.05)
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=10)
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=10)
    in_flight = Delivery.objects.filter(state="sending").count()
    before = stub.stats()["received"]
    assert in_flight > 0
    assert before < N, "everything was sent before the kill; nothing was tested"
    # then the sweeps' work (reconcile, then re-dispatch) sends the rest, and only the rest
    stub.configure(delay_s=0)
    monkeypatch.setattr(Conf, "SYNC", True)
    settle(settings)
    assert set(Delivery.objects.values_list("state", flat=True)) == {"sent"}
    assert set(Communication.objects.values_list("state", flat=True)) == {"sent"}
    assert counted(stub) == (0, 0)
    assert stub.stats()["lookups"] >= in_flight

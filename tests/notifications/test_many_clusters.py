"""Many machines, one database: two gunicorn web processes and two django-q2 clusters (separate
process groups, as on separate machines) against one PostgreSQL and one S3 server (moto, on
loopback). Communications come in through the API on both web processes; one cluster is killed
(SIGKILL of its whole process group) mid-run; every communication is still delivered exactly
once at the Postmark stub, and every document is in the bucket with its recorded hash."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from bench.postmark_stub import PostmarkStub
from deploy import stack
from notifications.models import Communication, Customer, Delivery
from tests import s3

s3_server = s3.s3_server

N = 200
# Give-up bounds only (generous: a loaded shared machine makes everything slower); what the
# test checks does not depend on them.
BOUND_S = 420
START_S = 180
DATA = {"customer": {"name": "Customer"}, "balance": 12.5, "as_of": "2026-05-01"}

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: the web processes and clusters share the test database",
    ),
    pytest.mark.django_db(transaction=True),
]


def post(base: str, key: str, i: int) -> int:
    body = json.dumps({"template": "letter", "customer": f"M-{i}", "data": DATA}).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{base}/api/v1/communications",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Api-Key {key}",
            "Content-Type": "application/json",
            # A client that retries (a timeout, a web process restarting) sends the same key.
            "Idempotency-Key": f"many-{i}",
        },
    )
    deadline = time.monotonic() + START_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return response.status
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"communication {i} was never accepted") from None
            time.sleep(1)


def test_two_web_processes_and_two_clusters_deliver_each_once_when_one_cluster_dies(
    letter, s3_server, tmp_path
):
    # given customers, an integrator's key, a Postmark stub and a bucket
    Customer.objects.bulk_create(
        [Customer(external_ref=f"M-{i}", name=f"Customer {i}") for i in range(N)]
    )
    for i, customer in enumerate(Customer.objects.filter(external_ref__startswith="M-")):
        customer.contacts.create(kind="email", value=f"m{i}@example.org", is_primary=True)
    out = StringIO()
    call_command(
        "create_api_key",
        "many-clusters",
        "--scopes",
        "communications:write,communications:read",
        stdout=out,
        stderr=StringIO(),
    )
    key = out.getvalue().strip().splitlines()[-1]
    bucket = s3_server.bucket_create()
    db = connection.settings_dict
    with PostmarkStub(max_lifetime_s=BOUND_S + 120) as stub:
        stub.configure(delay_s=0.05)
        env = stack.production_env(
            DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            **s3_server.env(bucket),
            CACHE_URL="rediscache://127.0.0.1:6379/11",
            EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
            POSTMARK_SERVER_TOKEN=stub.token,
            POSTMARK_API_URL=stub.url,
            CCM_ENABLED_CHANNELS="email",
            # Small chunks: the stub sees the messages arrive in many steps, so the kill below
            # lands mid-send however fast the pipeline is (one chunk of 200 went out whole).
            CCM_BULK_CHUNK="10",
            API_THROTTLE_API_KEY="100000/min",
            LOG_LEVEL="WARNING",
            # A dead cluster's tasks come back to the queue after Q_RETRY; its deliveries left
            # in `sending` are reconciled with the provider after CCM_SENDING_STALE_AFTER_S.
            Q_TIMEOUT="30",
            Q_RETRY="40",
            CCM_SENDING_STALE_AFTER_S="20",
            CCM_SWEEP_AFTER_SECONDS="20",
        )
        ports = [stack.free_port(), stack.free_port()]
        processes = {
            "web-1": stack.gunicorn(port=ports[0], env=env, log=tmp_path / "web-1.log", workers=1),
            "web-2": stack.gunicorn(port=ports[1], env=env, log=tmp_path / "web-2.log", workers=1),
            "cluster-a": stack.qcluster(env=env, log=tmp_path / "cluster-a.log", workers=2),
            "cluster-b": stack.qcluster(env=env, log=tmp_path / "cluster-b.log", workers=2),
        }
        try:
            bases = [f"http://127.0.0.1:{port}" for port in ports]
            for base, name in zip(bases, ("web-1", "web-2"), strict=True):
                status = stack.wait_http(
                    f"{base}/healthz", process=processes[name], timeout=START_S
                )
                assert status == 200
            started = time.monotonic()
            # when communications come in through both web processes
            with ThreadPoolExecutor(max_workers=8) as pool:
                posted = [pool.submit(post, bases[i % 2], key, i) for i in range(N)]
                # and cluster A dies mid-run, with its workers, as a machine losing power (watched
                # while the requests still come in: a fast pipeline sends as they arrive)
                while stub.stats()["distinct"] < N // 4:
                    assert time.monotonic() - started < BOUND_S, "nothing was being sent"
                    time.sleep(0.1)
                stack.kill(processes["cluster-a"])
                killed_at = stub.stats()["distinct"]
                statuses = [future.result() for future in posted]
            assert set(statuses) == {202}
            # then cluster B finishes the work, including what A had taken
            while Communication.objects.exclude(state="sent").exists():
                waited = time.monotonic() - started
                assert waited < BOUND_S, (
                    f"after {waited:.0f} s: {Communication.objects.filter(state='sent').count()}"
                    f" of {N} sent; deliveries "
                    f"{sorted(Delivery.objects.values_list('state', flat=True).distinct())}"
                )
                assert processes["cluster-b"].poll() is None, "cluster B died"
                time.sleep(0.5)
        finally:
            for process in processes.values():
                stack.stop(process)
        stats = stub.stats()
        received = stub.message_ids()
    # every communication delivered exactly once at the provider
    assert killed_at < N, "everything was sent before the kill; nothing was tested"
    expected = set(Delivery.objects.values_list("message_id", flat=True))
    assert len(expected) == N
    assert set(received) == expected
    assert [mid for mid, count in received.items() if count > 1] == []
    assert stats["distinct"] == N
    # and every document is in the bucket with the hash recorded when it was archived
    documents = Communication.objects.values_list("document__file", "document__sha256")
    client = s3_server.client()
    for name, sha256 in documents:
        body = client.get_object(Bucket=bucket, Key=name)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha256, name

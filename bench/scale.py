"""Scale-out benchmark through the public entry points: the same traffic with one and with two
dispatch clusters, as a deployment runs them.

    .venv/bin/python bench/scale.py                   # 2,000 messages per run (~2-3 min)
    .venv/bin/python bench/scale.py --messages 300    # a quick run

The project is served by gunicorn with deploy/gunicorn.conf.py and production settings (DEBUG
off, JSON logs, named queues CCM_TASK_QUEUES=render,dispatch,webhooks) on a throwaway PostgreSQL
database. An integrator's API key posts "document ready" emails to
`POST /api/v1/communications/batch` (250 items a call, 2 connections). The clusters are started
as a deployment starts them, each its own process group as on its own machine: one for the
default queue (schedules, sweeps) and 1, then 2, for the dispatch queue (`Q_CLUSTER_NAME=dispatch
manage.py qcluster`, 2 workers each), where these text-only messages are composed and sent.
Each message is one Postmark call (CCM_POSTMARK_BATCH=1) to a loopback stub
(bench/postmark_stub.py, its own process) answering after --provider-latency-s, as a provider
over the internet does.

The dispatch stage's rate is n / (last sent_at - first sent_at) of the run's deliveries; end to
end is from the first POST until all are sent. Lost and duplicated messages are counted at the
stub by Message-ID.

Last line:
scale: dispatch 1 cluster=<msg/s> 2 clusters=<msg/s> factor=<x> end_to_end_factor=<x>
       lost=<n> duplicated=<n>   (one line)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import dispatch as bench  # noqa: E402 - bench/dispatch.py: database, stub, customers
from serve import Client, machine_line, run_pool, sql_admin, throwaway_database_drop  # noqa: E402

from deploy import stack  # noqa: E402

BATCH = 250
CONNECTIONS = 2
TIMEOUT_S = 600


def dispatch_cluster(env: dict, log: Path) -> subprocess.Popen:
    return stack.qcluster(env={**env, "Q_CLUSTER_NAME": "dispatch"}, log=log, workers=2)


def wait_for_clusters(processes: list, *, queue: str | None) -> None:
    """Until a trivial task has gone through `queue`'s clusters (workers forked, polling)."""
    from django_q.models import Success
    from django_q.tasks import async_task

    options = {"save": True, **({"cluster": queue} if queue else {})}
    task_id = async_task("math.floor", 1.5, q_options=options)
    # A cluster starts in seconds on a quiet machine, in minutes on one at load 30: the wait
    # ends early if a cluster's process exits, so a long deadline only costs a broken start.
    deadline = time.monotonic() + float(os.environ.get("BENCH_CLUSTER_START_S", "600"))
    while not Success.objects.filter(id=task_id).exists():
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise SystemExit(f"the {queue or 'default'} cluster did not start; see its log")
        time.sleep(0.2)


def run(n: int, first: int, clusters: int, env: dict, port: int, workdir: Path):
    """Customers first…first+n through the API with `clusters` dispatch clusters."""
    from django.db.models import Max, Min

    from ccm.api.auth import api_key_lookup
    from ccm.api.idempotency import api_key_client
    from notifications.models import Delivery

    processes = [
        dispatch_cluster(env, workdir / f"run{clusters}-dispatch{i}.log") for i in range(clusters)
    ]
    try:
        wait_for_clusters(processes, queue="dispatch")
        time.sleep(2)  # every cluster's workers forked and polling
        key = bench.api_key()
        label = api_key_client(api_key_lookup(key))
        client = Client(port, headers={"Authorization": f"Api-Key {key}"})
        calls = [
            [bench.item(i) for i in range(start, min(first + n, start + BATCH))]
            for start in range(first, first + n, BATCH)
        ]
        started = time.perf_counter()
        results = run_pool(
            lambda items: client.request("POST", "/api/v1/communications/batch", {"items": items}),
            calls,
            connections=CONNECTIONS,
        )
        refused = [r for r in results if r.status != 202]
        if refused:
            raise SystemExit(f"{len(refused)} calls refused: {refused[0].body[:300]!r}")
        mine = Delivery.objects.filter(communication__client=label)
        while mine.filter(state="sent").count() < n:
            if time.perf_counter() - started > TIMEOUT_S:
                raise SystemExit(f"timed out with {mine.filter(state='sent').count()} of {n}")
            if any(p.poll() is not None for p in processes):
                raise SystemExit("a cluster died; see its log")
            time.sleep(0.2)
        end_to_end = n / (time.perf_counter() - started)
        span = mine.aggregate(first=Min("sent_at"), last=Max("sent_at"))
        dispatch_rate = n / max((span["last"] - span["first"]).total_seconds(), 1e-3)
    finally:
        for process in processes:
            stack.stop(process)
    print(
        f"  {clusters} dispatch cluster(s): dispatch {dispatch_rate:.0f} msg/s, "
        f"end to end {end_to_end:.0f} msg/s",
        flush=True,
    )
    return dispatch_rate, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--provider-latency-s", type=float, default=0.05)
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers")
    args = parser.parse_args()
    n = args.messages
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-scale-"))
    db_name = f"ccm_scale_{os.getpid()}"
    stub = web = default = None
    created = False
    try:
        stub, stub_url = bench.start_stub(workdir, TIMEOUT_S * 3)
        from postmark_stub import RemoteStub

        remote = RemoteStub(stub_url, bench.TOKEN)
        remote.configure(delay_s=args.provider_latency_s)
        sql_admin(f'CREATE DATABASE "{db_name}"')
        created = True
        env = stack.production_env(
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db_name}",
            EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
            POSTMARK_SERVER_TOKEN=bench.TOKEN,
            POSTMARK_API_URL=stub_url,
            MEDIA_ROOT=str(workdir / "media"),
            LOG_LEVEL="WARNING",
            CCM_TASK_QUEUES="render,dispatch,webhooks",
            CCM_BULK_CHUNK="50",
            CCM_POSTMARK_BATCH="1",
            # The benchmark measures capacity, not an integrator's quota.
            API_THROTTLE_USER="10000000/min",
            API_THROTTLE_API_KEY="10000000/min",
        )
        os.environ.update(env)
        bench.setup_django()
        print(machine_line())
        print(
            f"{n} messages per run through POST /api/v1/communications/batch ({BATCH} a call) "
            f"on gunicorn ({args.web_workers} workers); provider latency "
            f"{args.provider_latency_s * 1000:.0f} ms per call, one call per message; chunks "
            "of 50; 2 workers per dispatch cluster",
            flush=True,
        )
        bench.prepare(2 * n)
        port = stack.free_port()
        web = stack.gunicorn(
            port=port, env=env, log=workdir / "gunicorn.log", workers=args.web_workers
        )
        stack.wait_http(f"http://127.0.0.1:{port}/healthz", process=web)
        default = stack.qcluster(env=env, log=workdir / "default-cluster.log", workers=1)
        wait_for_clusters([default], queue=None)
        one, one_e2e = run(n, 0, 1, env, port, workdir)
        two, two_e2e = run(n, n, 2, env, port, workdir)
        from notifications.models import Delivery

        expected = set(Delivery.objects.values_list("message_id", flat=True))
        received = remote.message_ids()
        lost = len(expected - set(received))
        duplicated = sum(1 for mid, count in received.items() if mid in expected and count > 1)
        print(
            f"scale: dispatch 1 cluster={one:.0f} 2 clusters={two:.0f} factor={two / one:.2f} "
            f"end_to_end_factor={two_e2e / one_e2e:.2f} lost={lost} duplicated={duplicated}"
        )
    finally:
        stack.stop(web)
        stack.stop(default)
        bench.stop(stub)
        throwaway_database_drop(db_name, created=created)


if __name__ == "__main__":
    main()

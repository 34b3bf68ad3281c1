"""Scale-out benchmark: the same pipeline with one and with two task clusters.

    .venv/bin/python bench/scale.py                   # 2,000 messages per run
    .venv/bin/python bench/scale.py --messages 300    # a quick run

Each run: "document ready" emails for n customers through the bulk intake (this process), then
compose_chunk → dispatch_chunk by 1 or 2 `manage.py qcluster` processes (Q_WORKERS=2 each,
separate process groups as on separate machines) on one throwaway PostgreSQL database, sending
one Postmark call per message (CCM_POSTMARK_BATCH=1) to a loopback stub (bench/postmark_stub.py,
its own process) that answers after --provider-latency-s, as a real provider over the internet
does. The dispatch stage's rate is n / (last sent_at - first sent_at) of the run's deliveries;
end to end is from the first intake call until all are sent. Lost and duplicated messages are
counted at the stub by Message-ID.

Last line:
scale: dispatch 1 cluster=<msg/s> 2 clusters=<msg/s> factor=<x> end_to_end_factor=<x>
       lost=<n> duplicated=<n>   (one line)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import dispatch as bench  # noqa: E402 - bench/dispatch.py: database, stub, customers

from deploy import stack  # noqa: E402

TOKEN = bench.TOKEN


def run(n: int, clusters: int, env: dict, workdir: Path) -> tuple[float, float]:
    from django.contrib.auth import get_user_model
    from django.db.models import Max, Min

    from notifications import bulk
    from notifications.models import Customer, Delivery

    processes = [
        stack.qcluster(env=env, log=workdir / f"run{clusters}-cluster{i}.log", workers=2)
        for i in range(clusters)
    ]
    try:
        for process in processes:
            bench.wait_for_cluster(process)
        time.sleep(2)  # every cluster's workers forked and polling
        by = get_user_model().objects.get(username="integrator")
        first = Delivery.objects.aggregate(m=Max("pk"))["m"] or 0
        customers = list(Customer.objects.order_by("pk").values_list("pk", flat=True))[:n]
        items = [{"customer": pk, "data": bench.item_data(i)} for i, pk in enumerate(customers)]
        started = time.perf_counter()
        for start in range(0, n, bench.INTAKE_BATCH):
            bulk.communications_request_bulk(
                template_code="document_ready",
                items=items[start : start + bench.INTAKE_BATCH],
                client=f"scale-{clusters}",
                by=by,
            )
        mine = Delivery.objects.filter(pk__gt=first)
        while mine.filter(state="sent").count() < n:
            if time.perf_counter() - started > bench.TIMEOUT_S:
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
        f"  {clusters} cluster(s): dispatch {dispatch_rate:.0f} msg/s, "
        f"end to end {end_to_end:.0f} msg/s"
    )
    return dispatch_rate, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--provider-latency-s", type=float, default=0.05)
    args = parser.parse_args()
    n = args.messages
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-scale-"))
    db_name = f"ccm_scale_{os.getpid()}"
    stub = None
    created = False
    try:
        stub, stub_url = bench.start_stub(workdir)
        from postmark_stub import RemoteStub

        remote = RemoteStub(stub_url, TOKEN)
        remote.configure(delay_s=args.provider_latency_s)
        bench.sql_admin(f'CREATE DATABASE "{db_name}"')
        created = True
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
            "DJANGO_SETTINGS_MODULE": "ccm.settings",
            "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
            "POSTMARK_SERVER_TOKEN": TOKEN,
            "POSTMARK_API_URL": stub_url,
            "MEDIA_ROOT": str(workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "Q_SYNC": "false",
            "CCM_BULK_CHUNK": "50",
            "CCM_POSTMARK_BATCH": "1",
        }
        os.environ.update(env)
        bench.setup_django()
        print(
            f"machine: {os.cpu_count()} cores; {n} messages per run; provider latency "
            f"{args.provider_latency_s * 1000:.0f} ms per call; one call per message; "
            "chunks of 50; 2 workers per cluster"
        )
        bench.prepare(n)
        one, one_e2e = run(n, 1, env, workdir)
        two, two_e2e = run(n, 2, env, workdir)
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
        bench.stop(stub)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - Django may not be set up when setup itself failed
            pass
        if created:
            bench.sql_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()

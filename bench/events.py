"""Events benchmark: event intake through the bulk endpoint, and time to the first notice.

    .venv/bin/python bench/events.py                  # 20,000 events, 2,000 customers
    .venv/bin/python bench/events.py --events 5000 --customers 500   # quick

On a throwaway PostgreSQL database (created and dropped here), with the outage templates
published through sign-off:

1. intake: `--events` events from `--devices` meters under one feeder, posted 1,000 a call to
   `POST /api/v1/events` through Django's test client (the whole API stack: auth, scope,
   parsing, validation, one asset query, INSERT … ON CONFLICT DO NOTHING, grouping). Tasks are
   queued, not run, as a web process does. Then the same events again (a replay).
2. first notice: a feeder with `--customers` customers (SMS), group_wait 0; one event is posted
   and the queued tasks run in this process (intake → evaluate → notices → compose → dispatch);
   timed until the first SMS is handed to the provider backend, and until the last.

Last line:
events: intake=<events/s> replay=<events/s> first_notice_s=<s> all_notices_s=<s> rss_mb=<MB>
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
BATCH = 1000


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(*, devices: int, customers: int, workdir: Path) -> list[str]:
    from django.core.management import call_command

    from ccm.demo import seed_users
    from documents.demo import LIBRARY, seed_library
    from notifications.customers.assets import services as assets
    from notifications.models import ContactPoint, Customer

    call_command("migrate", verbosity=0)
    seed_users()
    library = workdir / "library"
    for name in ("_shared", "outage_notice", "outage_update", "outage_restored"):
        shutil.copytree(LIBRARY / name, library / name)
    seed_library(library)
    meters = [f"m{i:05d}" for i in range(devices)]
    assets.assets_upsert(
        items=[
            {"code": "north", "kind": "region"},
            {"code": "feeder-a", "kind": "feeder", "parent": "north"},
            {"code": "feeder-b", "kind": "feeder", "parent": "north"},
            {"code": "b-meter", "kind": "meter", "parent": "feeder-b"},
            *[{"code": m, "kind": "meter", "parent": "feeder-a"} for m in meters],
        ]
    )
    made = Customer.objects.bulk_create(
        [
            Customer(
                external_ref=f"B-{i:06d}", name=f"Customer {i}", postal_address=["1 Row", "LS6"]
            )
            for i in range(customers)
        ],
        batch_size=5000,
    )
    ContactPoint.objects.bulk_create(
        [
            ContactPoint(customer=c, kind="phone", value=f"+44770{i:07d}", is_primary=True)
            for i, c in enumerate(made)
        ],
        batch_size=5000,
    )
    assets.service_points_upsert(
        items=[
            {"code": f"sp-{i}", "customer": c.external_ref, "asset": "b-meter"}
            for i, c in enumerate(made)
        ]
    )
    return meters


def event(meter: str, n: int, t0: datetime, event_type: str = "power_outage") -> dict:
    return {
        "source": "bench",
        "event_id": f"{meter}-{n}",
        "event_type": event_type,
        "severity": "warning",
        "asset": meter,
        "occurred_at": (t0 + timedelta(milliseconds=n)).isoformat(),
        "action": "trigger",
        "payload": {"v": n},
    }


def intake(client, meters: list[str], total: int) -> float:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    items = [event(meters[n % len(meters)], n, t0) for n in range(total)]
    started = time.perf_counter()
    for start in range(0, total, BATCH):
        response = client.post(
            "/api/v1/events", {"events": items[start : start + BATCH]}, format="json"
        )
        assert response.status_code == 200, response.content[:500]
    return total / (time.perf_counter() - started)


def first_notice(client, *, render: bool) -> tuple[float, float]:
    from django.conf import settings
    from django.utils.module_loading import import_string
    from django_q.models import OrmQ

    from ccm.tasks import REQUEST_ID_KWARG, Queue
    from notifications.channels import sms

    settings.CCM_INCIDENT_RULES = {"power_outage": {"group_wait": 0}}
    OrmQ.objects.all().delete()  # the intake's evaluations: not part of this measurement
    stamps: list[float] = []
    original = sms.LocmemSmsBackend.send

    def timed(self, message):
        stamps.append(time.perf_counter())
        if len(stamps) == 1:  # printed now: a long run may be stopped before its summary
            print(f"first SMS handed to the provider after {stamps[0] - started:.2f}s", flush=True)
        return original(self, message)

    sms.LocmemSmsBackend.send = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    response = client.post(
        "/api/v1/events",
        event("b-meter", 1, datetime.now(UTC) - timedelta(seconds=1)),
        format="json",
    )
    assert response.status_code == 201, response.content[:500]
    # The queue, drained by this process the way one worker per queue would: the dispatch
    # queue's cluster (text composition, sending) does not wait behind rendering (Queue.RENDER)
    # or the default queue, so its tasks go first. The render queue (the durable copies' PDFs,
    # after the SMS) runs on its own cluster: drained here only with `render`.
    queued = OrmQ.objects.all() if render else OrmQ.objects.exclude(key=Queue.RENDER.value)
    while True:
        rows = list(OrmQ.objects.filter(key=Queue.DISPATCH.value).order_by("id")[:50]) or list(
            queued.order_by("id")[:50]
        )
        if not rows:
            break
        OrmQ.objects.filter(pk__in=[r.pk for r in rows]).delete()
        for row in rows:
            task = row.task
            func = task["func"]
            kwargs = {k: v for k, v in task["kwargs"].items() if k != REQUEST_ID_KWARG}
            (import_string(func) if isinstance(func, str) else func)(*task["args"], **kwargs)
    assert stamps, "no notice was sent"
    left = OrmQ.objects.filter(key=Queue.RENDER.value).count()
    print(f"render queue: {left} tasks left (durable copies, composed after the SMS)")
    return stamps[0] - started, stamps[-1] - started


def rss_now_mb() -> float:
    """The resident set now (not the peak): pages times the page size, from /proc."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(client, meters: list[str], total: int) -> None:
    """Post `total` new events in bulk calls, sampling RSS every tenth of the way: flat means
    intake holds nothing per event."""
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    step = max(BATCH, total // 10 // BATCH * BATCH)
    samples = [rss_now_mb()]
    started = time.perf_counter()
    for start in range(0, total, BATCH):
        items = [
            {**event(meters[n % len(meters)], n, t0), "event_id": f"mem-{n}"}
            for n in range(start, min(start + BATCH, total))
        ]
        response = client.post("/api/v1/events", {"events": items}, format="json")
        assert response.status_code == 200, response.content[:500]
        if (start + BATCH) % step == 0:
            samples.append(rss_now_mb())
    rate = total / (time.perf_counter() - started)
    print(
        f"memory: {total} events at {rate:.0f}/s, RSS MB every {step}: "
        + " ".join(f"{s:.0f}" for s in samples)
    )
    print(f"memory: rss_first_mb={samples[1]:.0f} rss_last_mb={samples[-1]:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="profile the intake, then stop")
    parser.add_argument(
        "--render", action="store_true", help="also run the render queue (PDFs) in the drain"
    )
    parser.add_argument(
        "--memory",
        type=int,
        default=0,
        help="post this many more events (bulk calls) and sample this process's RSS",
    )
    args = parser.parse_args()
    name = f"ccm_bench_events_{os.getpid()}"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccm.settings")
    os.environ["CCM_SMS_BACKEND"] = "notifications.channels.sms.LocmemSmsBackend"
    os.environ["CCM_ENABLED_CHANNELS"] = "email,sms,push,print"
    # Named queues, as a deployment runs them: text composition and sending on "dispatch".
    os.environ["CCM_TASK_QUEUES"] = "render,dispatch"
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
    sql_admin(f"CREATE DATABASE {name}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-"))
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.test.utils import setup_test_environment
        from rest_framework.test import APIClient

        from ccm.api.auth import api_key_create

        setup_test_environment()
        settings.ALLOWED_HOSTS = ["*"]
        settings.MEDIA_ROOT = workdir / "media"
        meters = prepare(devices=args.devices, customers=args.customers, workdir=workdir)
        client = APIClient()
        client.credentials(
            HTTP_AUTHORIZATION=f"Api-Key {api_key_create(name='b', scopes=['events:write']).key}"
        )
        rss_before = rss_mb()
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(intake, client, meters, args.events)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return
        rate = intake(client, meters, args.events)
        print(f"intake: {args.events} events in batches of {BATCH}: {rate:.0f} events/s")
        replay = intake(client, meters, args.events)
        print(f"replay: {replay:.0f} events/s (all duplicates)")
        rss_after = rss_mb()
        if args.memory:
            memory(client, meters, args.memory)
        first, last = first_notice(client, render=args.render)
        print(f"notices: {args.customers} customers, first SMS {first:.2f}s, last {last:.2f}s")
        print(
            f"events: intake={rate:.0f} replay={replay:.0f} first_notice_s={first:.2f} "
            f"all_notices_s={last:.2f} rss_mb={rss_after:.0f} "
            f"rss_growth_mb={rss_after - rss_before:.0f}"
        )
    finally:
        from django.db import connections

        connections.close_all()
        sql_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Events benchmark through the public entry points: event intake over HTTP, the time to the
first notice at the SMS provider, and memory over a long intake.

    .venv/bin/python bench/events.py                                # 20,000 events, 2,000 customers
    .venv/bin/python bench/events.py --events 5000 --customers 500  # quick
    .venv/bin/python bench/events.py --events 20000 --customers 10000 --memory 1000000
    .venv/bin/python bench/events.py --proof --customers 3000       # the issue's proof

On a throwaway PostgreSQL database (created and dropped here), prepared directly (migrations, the
outage templates published through sign-off, `--devices` meters under feeder-a, `--customers`
customers with a phone under feeder-b: setup, not measured), CCM is served as deployed: gunicorn
with production settings (deploy/gunicorn.conf.py's gthread workers, Redis cache), named queues
CCM_TASK_QUEUES=render,dispatch and one `manage.py qcluster` per queue as `run_ccm` starts them
(default, `Q_CLUSTER_NAME=dispatch`, `Q_CLUSTER_NAME=render`), sending SMS with CCM's
TwilioSmsBackend to a loopback Twilio stub (tests/notifications/twilio_stub.py) in this process.
Settings: bench/settings_events.py (the outage rule's group_wait, default 0).

1. intake: `--events` events posted 1,000 a call to `POST /api/v1/events` over HTTP (4
   keep-alive connections), then the same events again (a replay: all duplicates).
2. first notice: one power_outage event for b-meter (under feeder-b, the `--customers`
   customers) posted over HTTP; timed until the stub accepts its first message, and until it has
   one for every customer (at most `--timeout` s). Lost / duplicated are counted per phone
   number at the stub. The PDF follow-ups this queues on the render queue are then dropped, so
   hours of rendering do not run under the memory phase.
3. memory (`--memory N`): N new events over HTTP, all grouped into one open incident; the intake
   rate and the resident set (VmRSS) of every gunicorn process and every cluster process (their
   forked workers included) every 100,000 events.

`--proof` runs bench/events_proof.py instead of the three phases: the issue's end-to-end proof
for `--customers` customers under one feeder of `--devices` meters (SMS, Web Push to a loopback
push service, email to the loopback Postmark stub), ending with its own `proof:` line.

Last lines: the machine, the load (as `uptime`), and
events: intake=<events/s> replay=<events/s> first_notice_s=<s> all_notices_s=<s> lost=<n>
        duplicated=<n> memory_rate=<first→last events/s> web_rss_mb=<first→last>
        cluster_rss_mb=<first→last>   (one line)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import events_proof  # noqa: E402
from postmark_stub import PostmarkStub  # noqa: E402
from scale import wait_for_clusters  # noqa: E402
from serve import (  # noqa: E402
    Client,
    cache_url,
    machine_line,
    production_env,
    run_pool,
    sql_admin,
    start_cluster,
    start_gunicorn,
    stop,
    throwaway_database_drop,
)

from tests.notifications.twilio_stub import TwilioStub  # noqa: E402

BATCH = 1000
MEMORY_STEP = 100_000  # events between two readings of the memory phase
CONNECTIONS = 4
QUEUES = ("render", "dispatch")  # named queues; the default queue's cluster runs too
TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "bench-twilio-token"  # noqa: S105 - the loopback stub's token
POSTMARK_TOKEN = "bench-postmark-token"  # noqa: S105 - the loopback stub's token


class TimedStub(TwilioStub):
    """The Twilio stub, noting when it accepted its first and last message and how many each
    number got."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.by_to: Counter[str] = Counter()

    def accept(self, form: dict[str, str], authorization: str) -> dict[str, Any]:
        message = super().accept(form, authorization)
        now = time.perf_counter()
        with self.lock:
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            self.by_to[form.get("To", "")] += 1
        return message


def load() -> str:
    one, five, fifteen = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    return f"load average: {one}, {five}, {fifteen}"


def prepare_database(workdir: Path) -> None:
    """Migrated, the demo users, and the outage templates published through sign-off."""
    from django.core.management import call_command

    from ccm.demo import seed_users
    from documents.demo import LIBRARY, seed_library

    call_command("migrate", verbosity=0)
    seed_users()
    library = workdir / "library"
    for name in ("_shared", "outage_notice", "outage_update", "outage_restored"):
        shutil.copytree(LIBRARY / name, library / name)
    seed_library(library)


def prepare(*, devices: int, customers: int) -> tuple[list[str], set[str]]:
    """The meters under feeder-a, and the phone numbers of the customers under feeder-b."""
    from notifications.customers.assets import services as assets
    from notifications.models import ContactPoint, Customer

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
    phones = [f"+44770{i:07d}" for i in range(customers)]
    ContactPoint.objects.bulk_create(
        [
            ContactPoint(customer=c, kind="phone", value=phone, is_primary=True)
            for c, phone in zip(made, phones, strict=True)
        ],
        batch_size=5000,
    )
    assets.service_points_upsert(
        items=[
            {"code": f"sp-{i}", "customer": c.external_ref, "asset": "b-meter"}
            for i, c in enumerate(made)
        ]
    )
    return meters, set(phones)


def event(meter: str, n: int, t0: datetime, prefix: str = "") -> dict:
    return {
        "source": "bench",
        "event_id": f"{prefix}{meter}-{n}",
        "event_type": "power_outage",
        "severity": "warning",
        "asset": meter,
        "occurred_at": (t0 + timedelta(milliseconds=n)).isoformat(),
        "action": "trigger",
        "payload": {"v": n},
    }


def post_events(client: Client, meters: list[str], first: int, last: int, prefix: str) -> float:
    """Events first…last-1 posted 1,000 a call over CONNECTIONS connections; events/s."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)

    def call(start: int):
        items = [
            event(meters[n % len(meters)], n, t0, prefix)
            for n in range(start, min(start + BATCH, last))
        ]
        return client.request("POST", "/api/v1/events", {"events": items})

    started = time.perf_counter()
    results = run_pool(call, range(first, last, BATCH), connections=CONNECTIONS)
    elapsed = time.perf_counter() - started
    refused = [r for r in results if r.status != 200]
    if refused:
        raise SystemExit(
            f"{len(refused)} calls refused: {refused[0].status} {refused[0].body[:300]!r}"
        )
    return (last - first) / elapsed


def queue_drained(timeout_s: float) -> float:
    """Seconds until the task queue is empty (the intake's incident evaluations done)."""
    from django_q.models import OrmQ

    started = time.perf_counter()
    while OrmQ.objects.exists() and time.perf_counter() - started < timeout_s:
        time.sleep(0.5)
    return time.perf_counter() - started


def first_notice(
    client: Client, stub: TimedStub, phones: set[str], clusters: list, timeout_s: float
) -> tuple[float, float, int, int]:
    """(first s, all s, lost, duplicated) for one event reaching every customer under
    feeder-b."""
    from django_q.models import Failure, OrmQ

    with stub.lock:
        stub.first_at = stub.last_at = None
        stub.by_to.clear()
    started = time.perf_counter()
    response = client.request(
        "POST", "/api/v1/events", event("b-meter", 1, datetime.now(UTC) - timedelta(seconds=1))
    )
    if response.status != 201:
        raise SystemExit(f"the event was refused: {response.status} {response.body[:300]!r}")
    last_print = 0.0
    while True:
        elapsed = time.perf_counter() - started
        with stub.lock:
            got = len(phones & stub.by_to.keys())
            first_at = stub.first_at
        if first_at is not None and last_print == 0.0:
            print(f"  first SMS at the provider after {first_at - started:.2f} s", flush=True)
            last_print = elapsed
        if got >= len(phones) or elapsed > timeout_s:
            break
        if elapsed - last_print >= 10:
            print(f"  {elapsed:6.1f} s: {got} of {len(phones)} numbers reached", flush=True)
            last_print = elapsed
        if any(c.poll() is not None for c in clusters):
            raise SystemExit("a cluster died; see its log")
        time.sleep(0.1)
    with stub.lock:
        by_to = dict(stub.by_to)
        first_s = (stub.first_at - started) if stub.first_at else float("nan")
        all_s = (stub.last_at - started) if got >= len(phones) and stub.last_at else float("nan")
    lost = len(phones - by_to.keys())
    duplicated = sum(1 for to, n in by_to.items() if to in phones and n > 1)
    failed = Failure.objects.count()
    render = OrmQ.objects.filter(key="render")
    print(
        f"  {got} of {len(phones)} numbers reached in {elapsed:.2f} s; failed tasks: {failed}; "
        f"render queue: {render.count()} tasks (the durable copies' PDFs), dropped",
        flush=True,
    )
    render.delete()
    return first_s, all_s, lost, duplicated


def group_rss_mb(pgid: int) -> float:
    """VmRSS summed over the processes of one process group (a server and what it forked);
    shared pages count once per process, as `ps` shows them."""
    total_kb = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being read
    return total_kb / 1024


def memory(
    client: Client, meters: list[str], total: int, web, clusters: list
) -> tuple[list[float], list[float], list[float]]:
    """`total` new events over HTTP, all into one open incident; the intake rate and the RSS of
    gunicorn and of the clusters every MEMORY_STEP events (a rate that falls as the incident
    grows shows per-call work proportional to its size)."""
    step = min(MEMORY_STEP, total)
    web_mb = [group_rss_mb(web.pid)]
    cluster_mb = [sum(group_rss_mb(c.pid) for c in clusters)]
    rates: list[float] = []
    started = time.perf_counter()
    for first in range(0, total, step):
        rates.append(post_events(client, meters, first, min(first + step, total), "mem-"))
        web_mb.append(group_rss_mb(web.pid))
        cluster_mb.append(sum(group_rss_mb(c.pid) for c in clusters))
        print(
            f"  {min(first + step, total)} events: {rates[-1]:.0f} events/s, "
            f"web {web_mb[-1]:.0f} MB, clusters {cluster_mb[-1]:.0f} MB; {load()}",
            flush=True,
        )
    rate = total / (time.perf_counter() - started)
    print(f"memory: {total} events at {rate:.0f}/s; every {step} events:")
    print("  events/s: " + " ".join(f"{r:.0f}" for r in rates))
    print("  web MB:      " + " ".join(f"{s:.0f}" for s in web_mb))
    print("  clusters MB: " + " ".join(f"{s:.0f}" for s in cluster_mb))
    print(
        f"  growth: web {web_mb[-1] - web_mb[1]:+.0f} MB, clusters "
        f"{cluster_mb[-1] - cluster_mb[1]:+.0f} MB (from the first step to the last)"
    )
    return rates, web_mb, cluster_mb


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=600, help="s to wait for all notices")
    parser.add_argument("--memory", type=int, default=0, help="events for the memory phase")
    parser.add_argument(
        "--proof",
        action="store_true",
        help="instead of the phases: the issue's end-to-end proof (bench/events_proof.py) for "
        "--customers customers under one feeder of --devices meters",
    )
    parser.add_argument(
        "--durable-timeout",
        type=float,
        default=3600,
        help="--proof: s to wait for the notices' PDFs (the durable copies) after the rest",
    )
    parser.add_argument(
        "--web-workers",
        type=int,
        default=(os.cpu_count() or 1) * 2 + 1,
        help="gunicorn workers (deploy/gunicorn.conf.py's default: 2 per core + 1)",
    )
    parser.add_argument(
        "--database", default="ccm_bench_events", help="name prefix of the throwaway database"
    )
    parser.add_argument("--cache", default="redis", help="redis (default), db, or a CACHE_URL")
    args = parser.parse_args()
    # Killed from outside: still stop what was started and drop the database (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    name = f"{args.database}_{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-"))
    stub = TimedStub(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN).start()
    postmark = PostmarkStub(token=POSTMARK_TOKEN, max_lifetime_s=24 * 3600).start()
    loopback = contextlib.ExitStack()
    web = None
    clusters: list[subprocess.Popen] = []
    created = False
    try:
        sql_admin(f'CREATE DATABASE "{name}"')
        created = True
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
            "DJANGO_SETTINGS_MODULE": "bench.settings_events",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "CACHE_URL": cache_url(args.cache, name),
            "MEDIA_ROOT": str(workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "Q_SYNC": "false",
            "CCM_TASK_QUEUES": ",".join(QUEUES),
            "CCM_ENABLED_CHANNELS": "email,sms,push,print",
            "CCM_SMS_BACKEND": "notifications.channels.sms.TwilioSmsBackend",
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_FROM_NUMBER": "+447700900000",
            "TWILIO_API_BASE_URL": stub.url,
            # The benchmark measures capacity, not an integrator's quota.
            "API_THROTTLE_USER": "10000000/min",
            "API_THROTTLE_API_KEY": "10000000/min",
            # Email and Web Push to loopback stubs (the proof's customers use them).
            "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
            "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
            "POSTMARK_API_URL": postmark.url,
            "CCM_PUSH_BACKEND": "notifications.channels.push.FcmWebPushBackend",
            "CCM_VAPID_PRIVATE_KEY": events_proof.vapid_pem(),
            "CCM_VAPID_SUBJECT": "mailto:operations@northwind.example",
            "BENCH_GROUP_INTERVAL": "0" if args.proof else "1800",
        }
        os.environ.update(env)
        import django

        django.setup()
        from ccm.api.auth import api_key_create
        from tests.notifications.test_webpush import PushService  # the loopback push service

        push = loopback.enter_context(PushService())

        print(machine_line())
        print(
            f"setup: {events_proof.EVENTS if args.proof else args.events} events from "
            f"{args.devices} meters, {args.customers} "
            f"customers, gunicorn workers={args.web_workers}, clusters: default + "
            f"{' + '.join(QUEUES)}, Twilio stub at {stub.url}, cache={args.cache}; {load()}",
            flush=True,
        )
        prepare_database(workdir)
        if args.proof:
            reach = events_proof.prepare(
                devices=args.devices, customers=args.customers, push_url=push.url
            )
        else:
            meters, phones = prepare(devices=args.devices, customers=args.customers)
        served = production_env(env)
        web, port = start_gunicorn(served, workdir / "gunicorn.log", workers=args.web_workers)
        for queue in (None, *QUEUES):
            queue_env = {**served, "Q_CLUSTER_NAME": queue} if queue else served
            clusters.append(
                start_cluster(queue_env, workdir / f"qcluster-{queue or 'default'}.log")
            )
        for queue in (None, *QUEUES):
            wait_for_clusters(clusters, queue=queue)
        key = api_key_create(name="bench", scopes=["events:write"]).key
        client = Client(port, headers={"Authorization": f"Api-Key {key}"})
        if args.proof:
            ledger = events_proof.Ledger(reach, stub, push, postmark)
            line = events_proof.run(
                client,
                ledger,
                devices=args.devices,
                timeout_s=args.timeout,
                alive=lambda: all(c.poll() is None for c in clusters),
                durable_timeout_s=args.durable_timeout,
            )
            print(machine_line())
            print(load())
            print(line)
            return

        rate = post_events(client, meters, 0, args.events, "")
        print(f"intake: {args.events} events, {BATCH} a call: {rate:.0f} events/s", flush=True)
        replay = post_events(client, meters, 0, args.events, "")
        print(f"replay: {replay:.0f} events/s (all duplicates)", flush=True)
        drained = queue_drained(120)
        print(f"the intake's tasks done {drained:.1f} s after the replay; {load()}", flush=True)

        print(f"first notice: one event for {args.customers} customers (SMS), group_wait 0")
        first, last, lost, duplicated = first_notice(client, stub, phones, clusters, args.timeout)
        print(f"  first SMS {first:.2f} s, all {last:.2f} s, lost={lost} duplicated={duplicated}")

        rates, web_mb, cluster_mb = [0.0], [0.0, 0.0], [0.0, 0.0]
        if args.memory:
            queue_drained(120)
            print(f"memory: {args.memory} events over HTTP; {load()}", flush=True)
            rates, web_mb, cluster_mb = memory(client, meters, args.memory, web, clusters)
        print(machine_line())
        print(load())
        print(
            f"events: intake={rate:.0f} replay={replay:.0f} first_notice_s={first:.2f} "
            f"all_notices_s={last:.2f} lost={lost} duplicated={duplicated} "
            f"memory_rate={rates[0]:.0f}→{rates[-1]:.0f} "
            f"web_rss_mb={web_mb[1]:.0f}→{web_mb[-1]:.0f} "
            f"cluster_rss_mb={cluster_mb[1]:.0f}→{cluster_mb[-1]:.0f}"
        )
    finally:
        stop(web)
        for cluster in clusters:
            stop(cluster)
        stub.stop()
        postmark.stop()
        loopback.close()
        throwaway_database_drop(name, created=created)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

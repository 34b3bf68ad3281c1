"""Dispatch benchmark through the public HTTP API: "document ready" emails end to end.

    .venv/bin/python bench/dispatch.py                              # 20,000 batch + 5,000 single
    .venv/bin/python bench/dispatch.py --batch 2000 --single 500    # a quick run

The project is served by gunicorn with production settings (DEBUG off, a generated SECRET_KEY,
ALLOWED_HOSTS=127.0.0.1) on a throwaway PostgreSQL database, with a real django-q2 cluster
(`manage.py qcluster`, ORM broker, Q_WORKERS=2) sending through Anymail's Postmark backend to a
loopback Postmark stub (bench/postmark_stub.py, its own process). An integrator's API key calls:

- batch: `POST /api/v1/communications/batch` with 1,000 items per call (4 connections);
- single: `POST /api/v1/communications`, one per message (16 keep-alive connections).

Each mode is timed from its first request until every delivery of its communications is `sent`
in the database. Lost and duplicated messages are counted at the stub by Message-ID. Each mode
also prints the CPU its messages cost, per part (gunicorn, the cluster with its workers, the
stub, the PostgreSQL sessions), from /proc: where the two cores went.

post_office: the same messages rendered by the same composer and queued with
`post_office.mail.send(..., priority="medium")`, then `manage.py send_queued_mail --processes 2`
through the same Anymail backend and stub. Timed from the first `mail.send` to the command's end.

Last lines:
dispatch batch: ccm=<msg/s> post_office=<msg/s> ratio=<ccm/post_office> lost=<n> duplicated=<n>
dispatch single: ccm=<msg/s> post_office=<msg/s> ratio=<ccm/post_office> lost=<n> duplicated=<n>
(`complete=no sent=<k>/<n>` is added to a mode that ran out of time: its rate is k / timeout.)
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import (  # noqa: E402
    Client,
    cache_url,
    cpu_used,
    free_port,
    machine_line,
    process_cpu_seconds,
    production_env,
    run_pool,
    sql_admin,
    start_cluster,
    start_gunicorn,
    stop,
    throwaway_database_drop,
)

TOKEN = "bench-server-token"  # noqa: S105 - the loopback stub's token
BATCH_SIZE = 1000
BATCH_CONNECTIONS = 4
SINGLE_CONNECTIONS = 16
TIMEOUT_S = 900  # for post_office's send_queued_mail


def start_stub(workdir: Path, lifetime_s: float) -> tuple[subprocess.Popen, str]:
    stub = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "postmark_stub.py"),
            "--token",
            TOKEN,
            "--max-lifetime-s",
            str(lifetime_s),
            "--port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert stub.stdout is not None
    port = int(stub.stdout.readline())
    return stub, f"http://127.0.0.1:{port}/"


def setup_django() -> None:
    import django

    django.setup()


def prepare(n: int) -> None:
    """Migrate, publish the library, and make n customers with one email address each."""
    from django.core.management import call_command
    from django.db import connection

    from ccm.demo import seed_users
    from documents.demo import seed_library
    from notifications.models import ContactPoint, Customer

    call_command("migrate", verbosity=0)
    seed_users()
    seed_library()
    customers = Customer.objects.bulk_create(
        [Customer(external_ref=f"B-{i:06d}", name=f"Customer {i}") for i in range(n)],
        batch_size=5000,
    )
    ContactPoint.objects.bulk_create(
        [
            ContactPoint(customer=c, kind="email", value=f"c{i}@example.org", is_primary=True)
            for i, c in enumerate(customers)
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        # As a deployment's customer tables have: the planner's statistics (a table loaded a
        # moment ago has none until autovacuum gets to it).
        cursor.execute("ANALYZE")


def item_data(i: int) -> dict:
    return {
        "customer": {"name": f"Customer {i}", "salutation": f"Customer {i}"},
        "reference": f"DOC-2026-{i:07d}",
        "document_title": "Your annual energy summary 2025/26",
        "document_date": "2026-04-12",
        "portal_url": f"https://my.northwind.example/documents/DOC-2026-{i:07d}",
        "available_until": "2027-04-12",
    }


def wait_for_cluster(cluster: subprocess.Popen) -> None:
    """Until a trivial task has gone through the cluster: workers forked and polling."""
    from django_q.models import Success
    from django_q.tasks import async_task

    task_id = async_task("math.floor", 1.5, q_options={"save": True})  # kept despite save_limit
    deadline = time.monotonic() + 60
    while not Success.objects.filter(id=task_id).exists():
        if cluster.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the q cluster did not start; see its log")
        time.sleep(0.2)


def api_key() -> str:
    from ccm.api.auth import api_key_create

    return api_key_create(
        name=f"bench-{time.monotonic_ns()}",
        scopes=["communications:read", "communications:write"],
    ).key


def item(i: int) -> dict:
    return {"template": "document_ready", "customer": f"B-{i:06d}", "data": item_data(i)}


def wait_sent(
    client_label: str, n: int, started: float, servers: dict, received_before: int, timeout_s: float
) -> int:
    """Until every delivery of this client's n communications is `sent`; the number sent.

    While the stub has received fewer than n more messages than `received_before`, only the
    stub is asked (a cheap count in its own process); the database's count — a join over
    every delivery, ~70 ms of PostgreSQL on the cores the run is measured on — once the
    provider has them all, to see CCM record them as sent."""
    from django_q.models import Failure
    from postmark_stub import RemoteStub

    from notifications.models import Delivery

    stub = RemoteStub(servers["stub_url"], TOKEN)
    last_print = 0.0
    at_provider = 0
    while True:
        elapsed = time.perf_counter() - started
        if at_provider < n:
            at_provider = stub.stats()["distinct"] - received_before
            sent = 0
        if at_provider >= n:
            sent = Delivery.objects.filter(communication__client=client_label, state="sent").count()
            if sent >= n:
                return sent
        if elapsed - last_print >= 5:
            print(f"  {elapsed:6.1f} s: {min(at_provider, n)} of {n} at the provider", flush=True)
            last_print = elapsed
        if servers["cluster"].poll() is not None:
            raise SystemExit("the q cluster died; see its log")
        failed = Failure.objects.values_list("func", "result").first()
        if failed:
            raise SystemExit(f"a task failed: {failed}")
        if elapsed > timeout_s:
            sent = Delivery.objects.filter(communication__client=client_label, state="sent").count()
            print(f"  timed out after {elapsed:.0f} s with {sent} of {n} sent")
            return sent
        time.sleep(0.25)


def run_mode(mode: str, first: int, n: int, servers: dict, timeout_s: float):
    """Send customers first…first+n through the API; (messages/s, sent, client label).
    `servers`: the port, the web server's, cluster's and stub's processes, the stub's URL."""
    from postmark_stub import RemoteStub

    from ccm.api.auth import api_key_lookup
    from ccm.api.idempotency import api_key_client

    key = api_key()
    label = api_key_client(api_key_lookup(key))
    client = Client(servers["port"], headers={"Authorization": f"Api-Key {key}"})
    parts = {name: servers[name].pid for name in ("web", "cluster", "stub")}
    cpu_before = process_cpu_seconds(groups=parts.values())
    received_before = RemoteStub(servers["stub_url"], TOKEN).stats()["distinct"]
    started = time.perf_counter()
    if mode == "batch":
        calls = [
            [item(i) for i in range(start, min(first + n, start + BATCH_SIZE))]
            for start in range(first, first + n, BATCH_SIZE)
        ]
        results = run_pool(
            lambda items: client.request("POST", "/api/v1/communications/batch", {"items": items}),
            calls,
            connections=BATCH_CONNECTIONS,
        )
    else:
        results = run_pool(
            lambda i: client.request("POST", "/api/v1/communications", item(i)),
            range(first, first + n),
            connections=SINGLE_CONNECTIONS,
        )
    refused = [r for r in results if r.status != 202]
    if refused:
        raise SystemExit(
            f"{len(refused)} calls refused, e.g. {refused[0].status} {refused[0].body[:300]!r}"
        )
    intake = time.perf_counter() - started
    latencies = sorted(r.seconds for r in results)
    print(
        f"  intake: {n} communications in {intake:.2f} s ({n / intake:.0f}/s), "
        f"{len(results)} calls, p50 {latencies[len(latencies) // 2] * 1000:.0f} ms",
        flush=True,
    )
    sent = wait_sent(label, n, started, servers, received_before, timeout_s)
    elapsed = time.perf_counter() - started
    print(f"  {sent} of {n} sent in {elapsed:.2f} s")
    used = cpu_used(cpu_before, process_cpu_seconds(groups=parts.values()))
    # Where the machine's two cores went, per message: what to make cheaper next.
    shares = {name: used.get(pid, 0.0) for name, pid in parts.items()}
    shares["postgres"] = used.get("db", 0.0)
    print(
        "  CPU per message: "
        + ", ".join(f"{name} {1000 * t / max(sent, 1):.2f} ms" for name, t in shares.items())
        + f"; all {1000 * sum(shares.values()) / max(sent, 1):.2f} ms"
        + f" ({sum(shares.values()) / elapsed:.2f} of the {os.cpu_count()} cores)"
    )
    return sent / elapsed, sent, label


def run_post_office(n: int, env: dict, log: Path) -> float:
    from django.conf import settings
    from post_office import mail

    from documents import services as documents
    from documents.bundle import locale_for
    from documents.composition import composer_for
    from documents.models import Template

    version = Template.objects.get(code="document_ready").published_version
    composer = composer_for(documents.version_sources(version, "en"), locale=locale_for("en"))
    started = time.perf_counter()
    for i in range(n):
        email = composer.email(item_data(i))
        mail.send(
            recipients=[f"Customer {i} <c{i}@example.org>"],
            sender=settings.DEFAULT_FROM_EMAIL,
            subject=email.subject,
            message=email.text,
            html_message=email.html,
            headers={"Message-ID": f"<po.{i}@bench.localhost>"},
            priority="medium",
        )
    queued = time.perf_counter() - started
    print(f"  queued {n} with mail.send in {queued:.2f} s ({n / queued:.0f}/s)")
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "manage.py", "send_queued_mail", "--processes", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=TIMEOUT_S,
        )
    elapsed = time.perf_counter() - started
    from post_office.models import STATUS, Email

    sent = Email.objects.filter(status=STATUS.sent).count()
    print(f"  send_queued_mail done: {sent} of {n} sent, {elapsed:.2f} s in all")
    return n / elapsed


def count_at_stub(stub_url: str, expected: set[str]) -> tuple[int, int]:
    from postmark_stub import RemoteStub

    received = RemoteStub(stub_url, TOKEN).message_ids()
    lost = len(expected - set(received))
    duplicated = sum(1 for mid, count in received.items() if mid in expected and count > 1)
    return lost, duplicated


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--batch", type=int, default=20000, help="messages through the batch endpoint"
    )
    parser.add_argument("--single", type=int, default=5000, help="messages through single POSTs")
    parser.add_argument(
        "--post-office", type=int, default=None, help="messages for post_office (default: --batch)"
    )
    parser.add_argument(
        "--chunk", type=int, help="CCM_BULK_CHUNK (default: the project's, ccm/settings.py)"
    )
    parser.add_argument(
        "--postmark-batch",
        type=int,
        default=500,
        help="messages per Postmark batch call (1: one Anymail send per message)",
    )
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mode at most")
    parser.add_argument("--skip-post-office", action="store_true", help="CCM only")
    parser.add_argument(
        "--cache",
        default="redis",
        help="CACHE_URL of the served project: redis (loopback, as deployed; default), db (the "
        "database cache, CCM's default without CACHE_URL), or a URL",
    )
    args = parser.parse_args()
    po_n = args.batch if args.post_office is None else args.post_office
    n_customers = args.batch + args.single
    # Killed from outside: still stop what was started and drop the database (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-dispatch-"))
    db_name = f"ccm_bench_{os.getpid()}"
    stub = cluster = web = None
    created = False
    try:
        stub, stub_url = start_stub(workdir, args.timeout * 4)
        sql_admin(f'CREATE DATABASE "{db_name}"')
        created = True
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
            "DJANGO_SETTINGS_MODULE": "bench.settings_dispatch",
            "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
            "POSTMARK_SERVER_TOKEN": TOKEN,
            "POSTMARK_API_URL": stub_url,
            "MEDIA_ROOT": str(workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "Q_WORKERS": "2",
            "Q_SYNC": "false",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "CACHE_URL": cache_url(args.cache, db_name),
            **({"CCM_BULK_CHUNK": str(args.chunk)} if args.chunk else {}),
            "CCM_POSTMARK_BATCH": str(args.postmark_batch),
            # The benchmark measures capacity, not an integrator's quota.
            "API_THROTTLE_USER": "10000000/min",
            "API_THROTTLE_API_KEY": "10000000/min",
        }
        os.environ.update(env)
        setup_django()
        from django.conf import settings

        print(machine_line())
        print(
            f"setup: {args.batch} batch + {args.single} single messages, "
            f"chunk={settings.CCM_BULK_CHUNK}, "
            f"postmark batch={args.postmark_batch}, gunicorn workers={args.web_workers}, "
            f"stub at {stub_url}, cache={args.cache}"
        )
        prepare(n_customers)
        served = production_env(env)
        web, port = start_gunicorn(served, workdir / "gunicorn.log", workers=args.web_workers)
        po = 0.0
        if not args.skip_post_office and po_n:
            # First, with no cluster running: post_office has the machine to itself.
            print(
                f"post_office: mail.send (medium) for {po_n}, then send_queued_mail --processes 2"
            )
            po = run_post_office(po_n, env, workdir / "send_queued_mail.log")
            po_lost, po_dup = count_at_stub(
                stub_url, {f"<po.{i}@bench.localhost>" for i in range(po_n)}
            )
            print(f"  at the stub: lost={po_lost} duplicated={po_dup}")
        cluster = start_cluster(served, workdir / "qcluster.log")
        wait_for_cluster(cluster)

        from notifications.models import Delivery

        lines = []
        first = 0
        for mode, n in (("batch", args.batch), ("single", args.single)):
            if not n:
                continue
            print(f"ccm {mode}: {n} messages through the API (gunicorn) → qcluster → stub")
            servers = {
                "port": port,
                "web": web,
                "cluster": cluster,
                "stub": stub,
                "stub_url": stub_url,
            }
            rate, sent, label = run_mode(mode, first, n, servers, args.timeout)
            first += n
            # Lost: recorded as sent, never received. (A run that timed out still has messages
            # in flight; they are neither lost nor sent.)
            expected = set(
                Delivery.objects.filter(communication__client=label, state="sent").values_list(
                    "message_id", flat=True
                )
            )
            lost, duplicated = count_at_stub(stub_url, expected)
            print(f"  at the stub: lost={lost} duplicated={duplicated}")
            ratio = rate / po if po else 0.0
            digits = 0 if rate >= 10 else 2  # a few messages a second still shows
            line = (
                f"dispatch {mode}: ccm={rate:.{digits}f} post_office={po:.0f} "
                f"ratio={ratio:.{digits + 2}f} lost={lost} duplicated={duplicated}"
            )
            if sent < n:
                line += f" complete=no sent={sent}/{n}"
            lines.append(line)
        print("targets: batch >= 1000 msg/s and >= 4 x post_office; single >= 200 msg/s")
        for line in lines:
            print(line)
    finally:
        stop(web)
        stop(cluster)
        stop(stub)
        throwaway_database_drop(db_name, created=created)


if __name__ == "__main__":
    main()

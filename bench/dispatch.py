"""Dispatch benchmark: "document ready" emails end to end, CCM's bulk path against post_office.

    .venv/bin/python bench/dispatch.py                     # 20,000 messages
    .venv/bin/python bench/dispatch.py --messages 2000     # a quick run

CCM: `notifications.bulk.communications_request_bulk` (in batches, from this process) →
`compose_chunk` → `dispatch_chunk`, run by a real django-q2 cluster (`manage.py qcluster`, ORM
broker, Q_WORKERS=2) on a throwaway PostgreSQL database, sending through Anymail's Postmark
backend to a loopback Postmark stub (bench/postmark_stub.py, its own process). Timed from the
first intake call until every delivery is `sent` in the database.

post_office: the same messages rendered by the same composer and queued with
`post_office.mail.send(..., priority="medium")`, then `manage.py send_queued_mail --processes 2`
through the same Anymail backend and stub. Timed from the first `mail.send` to the command's end.

Lost and duplicated messages are counted at the stub by Message-ID.

Last line:
dispatch: ccm=<messages/s> post_office=<messages/s> ratio=<ccm/post_office> lost=<n> duplicated=<n>
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-server-token"  # noqa: S105 - the loopback stub's token
INTAKE_BATCH = 1000
TIMEOUT_S = 900


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def start_stub(workdir: Path) -> tuple[subprocess.Popen, str]:
    stub = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "postmark_stub.py"),
            "--token",
            TOKEN,
            "--max-lifetime-s",
            str(TIMEOUT_S * 3),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert stub.stdout is not None
    port = int(stub.stdout.readline())
    return stub, f"http://127.0.0.1:{port}/"


def stop(process: subprocess.Popen | None, *, group: bool = True) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def setup_django() -> None:
    import django

    django.setup()


def prepare(n: int) -> None:
    """Migrate, publish the library, and make n customers with one email address each."""
    from django.core.management import call_command

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


def item_data(i: int) -> dict:
    return {
        "customer": {"name": f"Customer {i}", "salutation": f"Customer {i}"},
        "reference": f"DOC-2026-{i:07d}",
        "document_title": "Your annual energy summary 2025/26",
        "document_date": "2026-04-12",
        "portal_url": f"https://my.northwind.example/documents/DOC-2026-{i:07d}",
        "available_until": "2027-04-12",
    }


def start_cluster(env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def run_ccm(n: int, cluster: subprocess.Popen) -> float:
    from django.contrib.auth import get_user_model
    from django_q.models import Failure

    from notifications import bulk
    from notifications.models import Customer, Delivery

    by = get_user_model().objects.get(username="integrator")
    customers = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    items = [{"customer": pk, "data": item_data(i)} for i, pk in enumerate(customers[:n])]
    started = time.perf_counter()
    for start in range(0, n, INTAKE_BATCH):
        bulk.communications_request_bulk(
            template_code="document_ready",
            items=items[start : start + INTAKE_BATCH],
            client="bench",
            by=by,
        )
    intake = time.perf_counter() - started
    print(f"  intake: {n} communications in {intake:.2f} s ({n / intake:.0f}/s)")
    last_print = 0.0
    while True:
        sent = Delivery.objects.filter(state="sent").count()
        elapsed = time.perf_counter() - started
        if sent >= n:
            break
        if elapsed - last_print >= 2:
            print(f"  {elapsed:5.1f} s: {sent} of {n} sent")
            last_print = elapsed
        if cluster.poll() is not None:
            raise SystemExit("the q cluster died; see its log")
        if Failure.objects.exists():
            raise SystemExit(f"a task failed: {Failure.objects.values_list('result')[0][0]}")
        if elapsed > TIMEOUT_S:
            raise SystemExit(f"timed out with {sent} of {n} sent")
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    from notifications.models import Communication

    states = set(Communication.objects.values_list("state", flat=True).distinct())
    print(f"  all {n} sent in {elapsed:.2f} s; communication states: {sorted(states)}")
    return n / elapsed


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
    parser.add_argument("--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--chunk", type=int, default=250, help="CCM_BULK_CHUNK")
    parser.add_argument(
        "--postmark-batch",
        type=int,
        default=500,
        help="messages per Postmark batch call (1: one Anymail send per message)",
    )
    parser.add_argument("--skip-post-office", action="store_true", help="CCM only")
    args = parser.parse_args()
    n = args.messages
    # Killed from outside: still stop what was started and drop the database (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-dispatch-"))
    db_name = f"ccm_bench_{os.getpid()}"
    stub = cluster = None
    created = False
    try:
        stub, stub_url = start_stub(workdir)
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
            "CCM_BULK_CHUNK": str(args.chunk),
            "CCM_POSTMARK_BATCH": str(args.postmark_batch),
        }
        os.environ.update(env)
        setup_django()
        from importlib.metadata import version

        import django

        print(
            f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"Django {django.get_version()}, Anymail {version('django-anymail')}, "
            f"django-q2 {version('django-q2')}, post_office {version('django-post-office')}, "
            f"psycopg {version('psycopg')}"
        )
        print(
            f"setup: {n} customers, chunk={args.chunk}, postmark batch={args.postmark_batch}, "
            f"stub at {stub_url}"
        )
        prepare(n)

        print("ccm: bulk intake → compose_chunk → dispatch_chunk on qcluster (2 workers)")
        cluster = start_cluster(env, workdir / "qcluster.log")
        wait_for_cluster(cluster)
        ccm = run_ccm(n, cluster)
        stop(cluster)
        cluster = None
        from notifications.models import Delivery

        expected = set(Delivery.objects.values_list("message_id", flat=True))
        lost, duplicated = count_at_stub(stub_url, expected)
        print(f"  at the stub: lost={lost} duplicated={duplicated}")

        if args.skip_post_office:
            po = 0.0
        else:
            print("post_office: mail.send (medium) for each, then send_queued_mail --processes 2")
            po = run_post_office(n, env, workdir / "send_queued_mail.log")
            po_lost, po_dup = count_at_stub(
                stub_url, {f"<po.{i}@bench.localhost>" for i in range(n)}
            )
            print(f"  at the stub: lost={po_lost} duplicated={po_dup}")
        ratio = ccm / po if po else 0.0
        print(f"ccm {ccm:.0f} messages/s (target >= 1000); ratio {ratio:.2f} (target >= 2)")
        print(
            f"dispatch: ccm={ccm:.0f} post_office={po:.0f} ratio={ratio:.2f} "
            f"lost={lost} duplicated={duplicated}"
        )
    finally:
        stop(cluster)
        stop(stub)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - Django may not be set up when setup itself failed
            pass
        if created and os.environ.get("BENCH_KEEP_DB") != "1":
            sql_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()

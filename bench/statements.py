"""Statements benchmark: readings intake through the API, bill-run throughput with PDFs against
the project's own render rate, and memory over the run.

    .venv/bin/python bench/statements.py                          # 200 customers, ~3 minutes
    .venv/bin/python bench/statements.py --customers 50 --intake 100000   # quick
    .venv/bin/python bench/statements.py --issue-size             # the issue's run: 10,000
                                                                  # customers, a year each

On a throwaway PostgreSQL database (created and dropped here; 127.0.0.1:5432, trust auth), with
the library's `usage_statement` template and recommendation rules published through sign-off:

1. intake: `--intake` half-hourly readings (of the run's meters, then further back in time) posted
   25,000 a call to `POST /api/v1/readings` through Django's test client (the whole API stack:
   auth, scope, JSON parsing, validation per row, COPY and the merge), then the same readings
   again (all unchanged): readings per second. The issue's target is >= 50,000/s.
2. bill run: `--customers` customers, each with `--days` days of readings (at least the period
   and the profile weeks before it; the intake's readings count), a flat or a day/night tariff,
   1 % with a day missing (held) and 1 % with a spike (held). A StatementRun for the last month
   is started through the service and its chunks are worked in this process with django-q2 in
   sync mode (compute, hold, intake, compose with the PDF in the render worker, dispatch to
   locmem email): statements per second from start to the last composed document.
3. render baseline: `document_compose` of the same template's sample, `--render` times (what
   bench/render.py measures for the project path): the bill run's rate is compared with it.
4. memory: this process's RSS after each chunk; growth from the first to the last quarter.

Last line:
statements: intake=<readings/s> replay=<readings/s> run=<statements/s> render=<docs/s>
run_vs_render=<ratio> held=<n> rss_first_mb=<MB> rss_last_mb=<MB>
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
CALL = 25_000
PERIOD = (date(2026, 1, 1), date(2026, 1, 31))


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def rss_mb() -> float:
    """The current resident set (not the peak), from /proc."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


CUSTOMERS_SQL = """
INSERT INTO notifications_customer
  (source_system, external_ref, name, salutation, language, postal_address,
   postal_address_valid, attributes, created_at, updated_at)
SELECT 'bench', 'S-' || g, 'Customer ' || g, '', CASE WHEN g % 5 = 0 THEN 'de' ELSE 'en' END,
  jsonb_build_array(g || ' Main Street', 'Leeds LS' || (g % 10) || ' 1AA'), true, '{}'::jsonb,
  now(), now()
FROM generate_series(1, %(n)s) AS g;
INSERT INTO notifications_contactpoint (customer_id, kind, value, is_primary, valid,
  invalid_reason, created_at)
SELECT id, 'email', 'c' || id || '@example.org', true, true, '', now()
  FROM notifications_customer WHERE source_system = 'bench';
INSERT INTO notifications_asset (code, kind, name, path, updated_at)
  VALUES ('bench-region', 'region', 'Bench', 'bench-region/', now());
INSERT INTO notifications_asset (code, kind, name, parent_id, path, updated_at)
SELECT 'am-' || c.id, 'meter', '', a.id, 'bench-region/am-' || c.id || '/', now()
  FROM notifications_customer c, notifications_asset a
 WHERE c.source_system = 'bench' AND a.code = 'bench-region';
INSERT INTO notifications_servicepoint (code, customer_id, asset_id, address, postcode, updated_at)
SELECT 'sp-' || c.id, c.id, a.id, c.id || ' Main Street, Leeds', 'LS1 1AA', now()
  FROM notifications_customer c JOIN notifications_asset a ON a.code = 'am-' || c.id;
INSERT INTO notifications_meter (serial, service_point_id, unit, kind, interval_minutes,
  register_digits, max_interval_value, created_at)
SELECT 'M-' || c.id, sp.id, 'kWh', 'interval', 30, 6, 50, now()
  FROM notifications_customer c JOIN notifications_servicepoint sp ON sp.customer_id = c.id;
INSERT INTO notifications_customertariff (customer_id, tariff_id, valid_from)
SELECT c.id, t.id, DATE '2024-01-01'
  FROM notifications_customer c
  JOIN notifications_tariff t ON t.code = CASE WHEN c.id % 3 = 0 THEN 'e7' ELSE 'flat' END
 WHERE c.source_system = 'bench';
"""

# A year (or --days) of half-hours per meter in SQL, ending with the period: the bulk of the
# run's history, which the intake step does not need to carry.
READINGS_SQL = """
INSERT INTO notifications_reading (meter_id, start, value, quality, received_at)
SELECT m.id, ts,
  round((0.12 + 0.3 * (extract(hour from ts) BETWEEN 17 AND 21)::int
         + 0.05 * sin(extract(epoch from ts) / 3600 + m.id))::numeric, 3),
  'actual', now()
  FROM notifications_meter m,
       generate_series(%(first)s::timestamptz, %(last)s::timestamptz, interval '30 minutes') ts
ON CONFLICT DO NOTHING
"""


def prepare(*, customers: int, days: int, workdir: Path):

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from ccm.demo import seed_users
    from documents.demo import LIBRARY, seed_library
    from notifications.statements import demo as statements_demo
    from notifications.statements import recommendations, services

    call_command("migrate", verbosity=0)
    seed_users()
    library = workdir / "library"
    for name in ("_shared", "usage_statement"):
        shutil.copytree(LIBRARY / name, library / name)
    seed_library(library)
    statements_demo._tariffs(PERIOD[0])
    User = get_user_model()
    author, reviewer = User.objects.get(username="author"), User.objects.get(username="reviewer")
    rules = services.rule_set_create(rules=recommendations.DEFAULT_RULES, by=author)
    from ccm import approvals

    approvals.approval_decide(
        approval=services.rule_set_submit(rule_set=rules, by=author),
        by=reviewer,
        decision="approve",
    )
    with connection.cursor() as cursor:
        cursor.execute(CUSTOMERS_SQL.replace("%(n)s", str(int(customers))))
        end = datetime(2026, 2, 1, tzinfo=UTC)
        first = end - timedelta(days=days)
        step = timedelta(days=30)
        moment = first
        while moment < end:  # a month at a time keeps each statement's work bounded
            upto = min(moment + step, end) - timedelta(minutes=30)
            cursor.execute(READINGS_SQL, {"first": moment, "last": upto})
            moment = upto + timedelta(minutes=30)
        # 1 % with a day missing, 1 % with a spike: held for review.
        cursor.execute(
            "DELETE FROM notifications_reading r USING notifications_meter m "
            "WHERE r.meter_id = m.id AND m.id % 100 = 7 "
            "AND r.start >= '2026-01-14T00:00Z' AND r.start < '2026-01-15T00:00Z'"
        )
        cursor.execute(
            "UPDATE notifications_reading r SET value = 40 FROM notifications_meter m "
            "WHERE r.meter_id = m.id AND m.id % 100 = 13 AND r.start = '2026-01-20T03:00Z'"
        )
        cursor.execute("ANALYZE")
    return User.objects.get(username="ops")


def intake(client, meters: list[str], total: int, *, before: datetime) -> float:
    """Post `total` half-hourly readings spread over `meters`, ending at `before`."""
    per_meter = max(1, total // len(meters))
    rows = []
    for serial in meters:
        start = before - timedelta(minutes=30 * per_meter)
        for n in range(per_meter):
            rows.append(
                {
                    "meter": serial,
                    "start": (start + timedelta(minutes=30 * n)).isoformat(),
                    "value": f"{0.1 + (n % 17) / 100:.3f}",
                }
            )
    rows = rows[:total]
    started = time.perf_counter()
    for i in range(0, len(rows), CALL):
        response = client.post("/api/v1/readings", {"readings": rows[i : i + CALL]}, format="json")
        assert response.status_code == 200, response.content[:500]
    return len(rows) / (time.perf_counter() - started)


def render_rate(n: int) -> float:
    from documents import selectors
    from documents import services as documents

    version = selectors.version_for_sending(code="usage_statement")
    assert version is not None
    sample = version.content["samples"]["default"]
    documents.document_compose(version=version, data=sample, language="en")  # warm
    started = time.perf_counter()
    for _ in range(n):
        documents.document_compose(version=version, data=sample, language="en")
    return n / (time.perf_counter() - started)


def bill_run(ops) -> tuple[float, int, int, list[float]]:
    from django.db import transaction

    from notifications.models import Communication
    from notifications.statements import selectors, services
    from notifications.statements.models import StatementRun

    run = services.statement_run_create(period_start=PERIOD[0], period_end=PERIOD[1], by=ops)
    rss = []
    started = time.perf_counter()
    from django_q.conf import Conf

    Conf.SYNC = False  # the start's task stays queued: this process works the chunks below
    with transaction.atomic():
        services.statement_run_start(run=run, by=ops)
    Conf.SYNC = True  # each chunk's compose and dispatch tasks run inline, as they commit
    while True:
        outcome = services.statement_run_chunk(run.pk)  # compose + dispatch inline (sync)
        rss.append(rss_mb())
        if not outcome.more:
            break
    elapsed = time.perf_counter() - started
    run = StatementRun.objects.get(pk=run.pk)
    counts = selectors.run_counts(run)
    composed = Communication.objects.filter(source="statement_run", document__isnull=False).count()
    assert composed == counts["handed"], (composed, counts)
    return counts["handed"] / elapsed, counts["handed"], counts["held"], rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--days", type=int, default=62, help="readings per meter, in days")
    parser.add_argument("--intake", type=int, default=300_000, help="readings posted")
    parser.add_argument("--render", type=int, default=40, help="documents for the baseline")
    parser.add_argument(
        "--issue-size",
        action="store_true",
        help="the issue's run: 10,000 customers with a year of half-hourly readings",
    )
    parser.add_argument("--profile", action="store_true", help="profile one intake call, stop")
    args = parser.parse_args()
    if args.issue_size:
        args.customers, args.days = 10_000, 366
    name = f"ccm_bench_statements_{os.getpid()}"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccm.settings")
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Inline tasks are held to the cluster's timeout; a chunk's compose (100 PDFs) on a loaded
    # machine can take longer than the default 120 s.
    os.environ["Q_TIMEOUT"] = str(24 * 3600)
    os.environ["Q_RETRY"] = str(24 * 3600 + 60)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()} (loaded machine)")
    sql_admin(f"CREATE DATABASE {name}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-statements-"))
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.test.utils import setup_test_environment
        from django_q.conf import Conf
        from rest_framework.test import APIClient

        from ccm.api.auth import api_key_create
        from notifications.statements.models import Meter

        setup_test_environment()
        settings.ALLOWED_HOSTS = ["*"]
        settings.MEDIA_ROOT = workdir / "media"
        Conf.SYNC = True
        if args.profile:
            import cProfile
            import pstats

            ops = prepare(customers=args.customers, days=args.days, workdir=workdir)
            client = APIClient()
            key = api_key_create(name="mdm", scopes=["readings:write"]).key
            client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
            meters = list(Meter.objects.order_by("pk").values_list("serial", flat=True))
            before = datetime(2026, 2, 1, tzinfo=UTC) - timedelta(days=args.days)
            profiler = cProfile.Profile()
            profiler.runcall(intake, client, meters, CALL, before=before)
            pstats.Stats(profiler).sort_stats("cumtime").print_stats(30)
            return
        t0 = time.perf_counter()
        ops = prepare(customers=args.customers, days=args.days, workdir=workdir)
        print(
            f"prepared {args.customers} customers x {args.days} days of half-hours "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        client = APIClient()
        key = api_key_create(name="mdm", scopes=["readings:write"]).key
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        meters = list(Meter.objects.order_by("pk").values_list("serial", flat=True))
        before = datetime(2026, 2, 1, tzinfo=UTC) - timedelta(days=args.days)
        rate = intake(client, meters, args.intake, before=before)
        replay = intake(client, meters, args.intake, before=before)
        print(
            f"intake: {args.intake} readings, {CALL:,} a call: {rate:,.0f}/s; again {replay:,.0f}/s"
        )
        render = render_rate(args.render)
        print(f"render baseline: {render:.1f} documents/s (document_compose, usage_statement)")
        run_rate, handed, held, rss = bill_run(ops)
        quarter = max(1, len(rss) // 4)
        first_q, last_q = max(rss[:quarter]), max(rss[-quarter:])
        print(
            f"bill run: {handed} statements handed and composed with PDF, {held} held: "
            f"{run_rate:.1f}/s; RSS first quarter {first_q:.0f} MB, last quarter {last_q:.0f} MB"
        )
        print(
            f"statements: intake={rate:.0f} replay={replay:.0f} run={run_rate:.2f} "
            f"render={render:.2f} run_vs_render={run_rate / render:.2f} held={held} "
            f"rss_first_mb={first_q:.0f} rss_last_mb={last_q:.0f}"
        )
    finally:
        from django.db import connections

        connections.close_all()
        sql_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

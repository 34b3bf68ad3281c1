"""Statements benchmark: readings intake through the API, bill-run throughput with PDFs against
the project's own render rate, and memory over the run.

    .venv/bin/python bench/statements.py                          # 200 customers, ~3 minutes
    .venv/bin/python bench/statements.py --customers 50 --intake 100000   # quick
    .venv/bin/python bench/statements.py --issue-size --intake 0 --render 0
        # the issue's run: 10,000 customers with a year of half-hours (175 M readings made with
        # generate_series); every statement computed, held or handed, PDFs left queued but for
        # a --sample of the first chunk, one of which is reprinted byte for byte

On a throwaway PostgreSQL database (created and dropped here; 127.0.0.1:5432, trust auth), with
the library's `usage_statement` template and recommendation rules published through sign-off:

1. intake: `--intake` half-hourly readings (of the run's meters, then further back in time) posted
   `--call` a request (100,000) as `--shape` (csv, rows or objects) to `POST /api/v1/readings`
   through Django's test client (the whole API stack: auth, scope, parsing, the set-based
   check, COPY and the merge), then the same readings again (all unchanged): readings per
   second. The issue's target is >= 50,000/s.
2. bill run: `--customers` customers, each with `--days` days of readings (at least the period
   and the profile weeks before it; the intake's readings count), a flat or a day/night tariff,
   1 % with a day missing (held) and 1 % with a spike (held). A StatementRun for the last month
   is started through the service and its chunks are worked in this process with django-q2 in
   sync mode (compute, hold, intake, compose with the PDF in the render worker, dispatch to
   locmem email): statements per second from start to the last composed document.
3. render baseline: `document_compose` of the same template's sample, `--render` times (what
   bench/render.py measures for the project path): the bill run's rate is compared with it.
4. memory: this process's RSS after each chunk; growth from the first to the last quarter.
With --no-compose (implied by --issue-size) the run's PDFs stay queued: the rate is the run's
own work, and --sample statements of the first chunk are composed (not counted in the rate).

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
# run's history, which the intake step does not need to carry. The issue's run is 175 M rows, so
# the table's secondary indexes are dropped for the load and built once afterwards (a sort
# instead of 175 M random index inserts), and the load runs without the foreign-key trigger
# (session_replication_role; the meters are this script's own) - the usual way to bulk-load.
READINGS_SQL = """
INSERT INTO notifications_reading (meter_id, start, value, quality, received_at)
SELECT m.id, ts,
  round((0.12 + 0.3 * (extract(hour from ts) BETWEEN 17 AND 21)::int
         + 0.05 * sin(extract(epoch from ts) / 3600 + m.id))::numeric, 3),
  'actual', now()
  FROM notifications_meter m,
       generate_series(%(first)s::timestamptz, %(last)s::timestamptz, interval '30 minutes') ts
 WHERE m.id BETWEEN %(lo)s AND %(hi)s
 ORDER BY m.id, ts
"""
READING_UNIQUE = "reading_meter_start_unique"
METERS_A_STATEMENT = 200  # 200 meters x a year = 3.5 M rows an INSERT


def readings_generate(cursor, *, first: datetime, last: datetime) -> int:
    """Every meter's half-hours from `first` to `last` (inclusive), with generate_series."""
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'notifications_reading' "
        "AND indexname NOT IN ('notifications_reading_pkey', %s)",
        [READING_UNIQUE],
    )
    others = cursor.fetchall()
    # Unlogged (this database is thrown away): 175 M rows write no WAL. A permanent table may
    # not refer to an unlogged one, so the corrections go first.
    cursor.execute("ALTER TABLE notifications_readingcorrection SET UNLOGGED")
    cursor.execute("ALTER TABLE notifications_reading SET UNLOGGED")
    cursor.execute(f"ALTER TABLE notifications_reading DROP CONSTRAINT {READING_UNIQUE}")
    for name, _definition in others:
        cursor.execute(f'DROP INDEX "{name}"')
    cursor.execute("SET session_replication_role = replica")
    cursor.execute("SELECT min(id), max(id) FROM notifications_meter")
    lo, hi = cursor.fetchone()
    rows = 0
    for start in range(lo, hi + 1, METERS_A_STATEMENT):
        cursor.execute(
            READINGS_SQL,
            {"first": first, "last": last, "lo": start, "hi": start + METERS_A_STATEMENT - 1},
        )
        rows += cursor.rowcount
    cursor.execute("SET session_replication_role = DEFAULT")
    cursor.execute("SET maintenance_work_mem = '1GB'")
    cursor.execute(
        f"ALTER TABLE notifications_reading ADD CONSTRAINT {READING_UNIQUE} "
        "UNIQUE (meter_id, start)"
    )
    for _name, definition in others:
        cursor.execute(definition)
    cursor.execute("RESET maintenance_work_mem")
    return rows


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
        loaded = time.perf_counter()
        rows = readings_generate(
            cursor, first=end - timedelta(days=days), last=end - timedelta(minutes=30)
        )
        print(f"generated {rows:,} readings in {time.perf_counter() - loaded:.0f} s")
        # 1 % with a day missing, 1 % with a spike: held for review.
        cursor.execute("ANALYZE")  # the two statements below go through the (meter, start) index
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


def intake(client, meters: list[str], total: int, *, before: datetime, shape: str, call: int):
    """Post `total` half-hourly readings spread over `meters`, ending at `before`, `call` a
    request, as CSV, arrays or objects. The bodies are built first: the rate is the server's."""
    per_meter = max(1, total // len(meters))
    rows = []
    for serial in meters:
        start = before - timedelta(minutes=30 * per_meter)
        for n in range(per_meter):
            rows.append(
                [
                    serial,
                    (start + timedelta(minutes=30 * n)).isoformat(),
                    f"{0.1 + (n % 17) / 100:.3f}",
                ]
            )
    rows = rows[:total]
    bodies = []
    for i in range(0, len(rows), call):
        part = rows[i : i + call]
        if shape == "csv":
            text = "meter,start,value\n" + "".join(f"{m},{s},{v}\n" for m, s, v in part)
            bodies.append({"data": text.encode(), "content_type": "text/csv"})
        elif shape == "rows":
            bodies.append(
                {"data": {"rows": [[m, s, v, None] for m, s, v in part]}, "format": "json"}
            )
        else:
            objects = [{"meter": m, "start": s, "value": v} for m, s, v in part]
            bodies.append({"data": {"readings": objects}, "format": "json"})
    started = time.perf_counter()
    for body in bodies:
        response = client.post("/api/v1/readings", **body)
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


def bill_run(ops, *, compose: bool = True, after_first=None) -> tuple[float, int, int, list[float]]:
    """Start a run for the period and work its chunks here. With `compose`, each chunk's
    compose and dispatch tasks run inline (the PDFs are part of the rate); without, they stay
    queued and the rate is the run's own work: compute, validate, hold, hand to the intake."""
    from django.db import transaction
    from django_q.conf import Conf

    from notifications.models import Communication
    from notifications.statements import selectors, services
    from notifications.statements.models import StatementRun

    run = services.statement_run_create(period_start=PERIOD[0], period_end=PERIOD[1], by=ops)
    rss = []
    started = time.perf_counter()
    Conf.SYNC = False  # the start's task stays queued: this process works the chunks below
    with transaction.atomic():
        services.statement_run_start(run=run, by=ops)
    Conf.SYNC = compose
    chunks = 0
    aside = 0.0
    while True:
        outcome = services.statement_run_chunk(run.pk)
        rss.append(rss_mb())
        chunks += 1
        if chunks == 1 and after_first is not None:  # not counted in the run's time
            moment = time.perf_counter()
            after_first()
            aside += time.perf_counter() - moment
        if chunks % 10 == 0:
            done = chunks * services.CHUNK
            spent = time.perf_counter() - started - aside
            print(
                f"  chunk {chunks}: {done} customers in {spent:.0f} s ({done / spent:.2f}/s), "
                f"RSS {rss[-1]:.0f} MB",
                flush=True,
            )
        if not outcome.more:
            break
    elapsed = time.perf_counter() - started - aside
    Conf.SYNC = True
    run = StatementRun.objects.get(pk=run.pk)
    counts = selectors.run_counts(run)
    if compose:
        composed = Communication.objects.filter(
            source="statement_run", document__isnull=False
        ).count()
        assert composed == counts["handed"], (composed, counts)
    return counts["handed"] / elapsed, counts["handed"], counts["held"], rss


def sample_and_reprint(ops, sample: int) -> tuple[float, bool]:
    """Compose `sample` of the run's queued statements (the render worker's task, inline), then
    reprint one from its stored inputs: the PDF must come back byte for byte."""
    from notifications.models import Communication
    from notifications.pipeline import bulk
    from notifications.statements import services
    from notifications.statements.models import Statement

    ids = list(
        Communication.objects.filter(source="statement_run", state="received")
        .order_by("?")
        .values_list("pk", flat=True)[:sample]
    )
    started = time.perf_counter()
    bulk.compose_chunk(ids)
    rate = len(ids) / (time.perf_counter() - started)
    statement = Statement.objects.filter(
        communication_id__in=ids, communication__document__isnull=False
    ).first()
    assert statement is not None, "no sampled statement was composed"
    original = statement.communication.document
    copy = services.statement_reprint(statement=statement, by=ops)  # raises on a mismatch
    check = original.checks.order_by("-pk").first()
    return rate, bool(copy is not None and check is not None and check.matched)


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
    parser.add_argument(
        "--shape", choices=["csv", "rows", "objects"], default="csv", help="intake body"
    )
    parser.add_argument("--call", type=int, default=100_000, help="readings a call")
    parser.add_argument("--intake-only", action="store_true", help="stop after the intake")
    parser.add_argument(
        "--no-compose",
        action="store_true",
        help="the run computes, holds and hands every statement; only --sample are rendered",
    )
    parser.add_argument("--sample", type=int, default=5, help="PDFs rendered with --no-compose")
    args = parser.parse_args()
    if args.issue_size:
        args.customers, args.days, args.no_compose = 10_000, 366, True
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
            profiler.runcall(
                intake, client, meters, args.call, before=before, shape=args.shape, call=args.call
            )
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
        rate = replay = 0.0
        if args.intake:
            sent = {"before": before, "shape": args.shape, "call": args.call}
            rate = intake(client, meters, args.intake, **sent)
            replay = intake(client, meters, args.intake, **sent)
            print(
                f"intake: {args.intake} readings as {args.shape}, {args.call:,} a call: "
                f"{rate:,.0f}/s; again {replay:,.0f}/s"
            )
        if args.intake_only:
            return
        render = render_rate(args.render) if args.render else 0.0
        print(f"render baseline: {render:.2f} documents/s (document_compose, usage_statement)")
        sampled, identical = 0.0, False

        def sample() -> None:
            nonlocal sampled, identical
            sampled, identical = sample_and_reprint(ops, args.sample)
            print(
                f"sample: {args.sample} of the run's first chunk composed with PDF at "
                f"{sampled:.2f}/s; reprint byte-identical: {identical}",
                flush=True,
            )

        run_rate, handed, held, rss = bill_run(
            ops, compose=not args.no_compose, after_first=sample if args.no_compose else None
        )
        quarter = max(1, len(rss) // 4)
        first_q, last_q = max(rss[:quarter]), max(rss[-quarter:])
        what = "computed and handed (PDFs queued)" if args.no_compose else "composed with PDF"
        print(
            f"bill run: {handed} statements {what}, {held} held: {run_rate:.2f}/s; "
            f"RSS first quarter {first_q:.0f} MB, last quarter {last_q:.0f} MB, "
            f"max {max(rss):.0f} MB over {len(rss)} chunks"
        )
        extra = ""
        if args.no_compose:
            extra = f" sample_render={sampled:.2f} reprint_identical={identical}"
        print(
            f"statements: intake={rate:.0f} replay={replay:.0f} run={run_rate:.2f} "
            f"render={render:.2f} run_vs_render={run_rate / (render or 1):.2f} handed={handed} "
            f"held={held} rss_first_mb={first_q:.0f} rss_last_mb={last_q:.0f}{extra}"
        )
    finally:
        from django.db import connections

        connections.close_all()
        sql_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
